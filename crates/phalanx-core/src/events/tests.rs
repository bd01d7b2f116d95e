use super::*;
use crate::scheduler::OperatorConstraint;
use crate::state::test_support::{act, bootstrapped};

fn stamped(node: &str, at_ms: u64, cmd: Command) -> Command {
    Command::Stamped {
        stamp: Stamp {
            at_ms,
            node: node.into(),
            ..Stamp::default()
        },
        cmd: Box::new(cmd),
    }
}

fn by(node: &str, at_ms: u64, who: &str, cmd: Command) -> Command {
    Command::Stamped {
        stamp: Stamp {
            at_ms,
            node: node.into(),
            by: Some(who.into()),
            from: Some("10.0.0.9".into()),
            call: None,
        },
        cmd: Box::new(cmd),
    }
}

fn with_call(node: &str, at_ms: u64, call: CallReport, cmd: Command) -> Command {
    Command::Stamped {
        stamp: Stamp {
            at_ms,
            node: node.into(),
            call: Some(call),
            ..Stamp::default()
        },
        cmd: Box::new(cmd),
    }
}

fn run(state: &mut ClusterState, log: &mut EventLog, cmds: &[Command]) -> Vec<Outcome> {
    cmds.iter()
        .map(|c| apply_logged(state, log, c, &mut Touched::default()))
        .collect()
}

fn kinds(log: &EventLog) -> Vec<&'static str> {
    log.since(0).map(|e| e.kind.as_str()).collect()
}

/// n1 runs web and is lost: the leader (n2) records it offline, plans a fence and the start,
/// n3 fences, n2 starts.
fn failover() -> Vec<Command> {
    let fence = Action {
        reason: "n1 lost".into(),
        ..act(ActionKind::Fence, "n1", "n3")
    };
    let start = act(ActionKind::Start, "web", "n2");
    vec![
        stamped(
            "n2",
            1_000,
            Command::SetLiveness {
                name: "n1".into(),
                liveness: Liveness::Offline,
                at_ms: 990,
            },
        ),
        stamped(
            "n2",
            1_001,
            Command::SetPlan {
                actions: vec![fence.clone(), start.clone()],
                edges: vec![(0, 1)],
            },
        ),
        with_call(
            "n3",
            1_500,
            CallReport::new(Some(0), 480, ""),
            Command::ActionResult {
                plan_id: 1,
                index: 0,
                action: fence,
                outcome: CallOutcome::Ok,
                at_ms: 1_490,
                reason: Some("level 1: pdu".into()),
            },
        ),
        with_call(
            "n2",
            1_700,
            CallReport::new(Some(0), 120, "starting\n"),
            Command::ActionResult {
                plan_id: 1,
                index: 1,
                action: start,
                outcome: CallOutcome::Ok,
                at_ms: 1_690,
                reason: None,
            },
        ),
    ]
}

fn online(names: &[&str]) -> ClusterState {
    let mut s = bootstrapped(names);
    for n in names {
        s.apply(&Command::SetLiveness {
            name: n.to_string(),
            liveness: Liveness::Online,
            at_ms: 1,
        });
    }
    s
}

#[test]
fn a_failover_reads_in_order_with_times_nodes_and_details() {
    let (mut s, mut log) = (online(&["n1", "n2", "n3"]), EventLog::default());
    let out = run(&mut s, &mut log, &failover());
    assert!(out.iter().all(|o| *o == Outcome::Ok), "{out:?}");
    assert_eq!(
        kinds(&log),
        [
            "node_lost",
            "fence_requested",
            "plan_committed",
            "fence_succeeded",
            "resource_started"
        ]
    );
    let seqs: Vec<u64> = log.since(0).map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let lost = log.get(1).unwrap();
    assert_eq!(
        (lost.node.as_str(), lost.time_ms, lost.reporter.as_str()),
        ("n1", 990, "n2")
    );
    let requested = log.get(2).unwrap();
    assert_eq!(requested.node, "n1");
    assert!(
        requested.summary.contains("n1 lost") && requested.summary.contains("n3"),
        "{}",
        requested.summary
    );
    let plan = log.get(3).unwrap();
    assert_eq!(plan.details, ["fence n1 (run by n3): n1 lost", "start web on n2"]);
    let fenced = log.get(4).unwrap();
    assert_eq!(
        (fenced.node.as_str(), fenced.exec_ms, fenced.time_ms),
        ("n1", Some(480), 1_490)
    );
    assert!(fenced.summary.contains("level 1: pdu"), "{}", fenced.summary);
    assert_eq!((fenced.level, fenced.device.as_deref()), (Some(1), Some("pdu")));
    let started = log.get(5).unwrap();
    assert_eq!(started.resource.as_deref(), Some("web"));
    assert_eq!(
        (started.node.as_str(), started.rc, started.exec_ms),
        ("n2", Some(0), Some(120))
    );
    assert_eq!(started.details, ["starting"]);
}

#[test]
fn every_node_derives_the_same_history() {
    let cmds = failover();
    let (mut a, mut la) = (online(&["n1", "n2", "n3"]), EventLog::default());
    let (mut b, mut lb) = (online(&["n1", "n2", "n3"]), EventLog::default());
    run(&mut a, &mut la, &cmds);
    run(&mut b, &mut lb, &cmds);
    assert_eq!(la, lb);
}

#[test]
fn refused_and_idle_commands_leave_no_event() {
    let (mut s, mut log) = (online(&["n1", "n2"]), EventLog::default());
    let again = stamped(
        "n1",
        5,
        Command::SetLiveness {
            name: "n2".into(),
            liveness: Liveness::Online,
            at_ms: 5,
        },
    );
    let stale = stamped(
        "n1",
        6,
        Command::ApplyConfig {
            record: crate::state::ConfigRecord {
                version: 0,
                text: "not toml [".into(),
                sha256: "x".into(),
                author: "a".into(),
                time_ms: 6,
            },
            expect_version: None,
        },
    );
    let out = run(&mut s, &mut log, &[again, stale]);
    assert_eq!(out[0], Outcome::Unchanged);
    assert!(matches!(out[1], Outcome::Rejected(_)));
    assert!(log.is_empty());
    assert_eq!(log.next_seq(), 1);
}

#[test]
fn an_operator_command_names_its_author_and_origin() {
    let (mut s, mut log) = (online(&["n1", "n2"]), EventLog::default());
    let standby = by(
        "n1",
        10,
        "alice@desk",
        Command::SetStandby {
            name: "n2".into(),
            standby: true,
        },
    );
    let ban = by(
        "n2",
        11,
        "bob@laptop",
        Command::OperatorBy {
            constraint: OperatorConstraint {
                rsc: "web".into(),
                node: "n1".into(),
                prefer: false,
                expires_ms: None,
            },
            by: "bob@laptop".into(),
            at_ms: 11,
            unit: vec![],
        },
    );
    run(&mut s, &mut log, &[standby, ban]);
    let e: Vec<&Event> = log.since(0).collect();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].kind, EventKind::OperatorCommand);
    assert_eq!(
        (e[0].by.as_deref(), e[0].from.as_deref()),
        (Some("alice@desk"), Some("10.0.0.9"))
    );
    assert_eq!(e[0].summary, "alice@desk: standby n2");
    assert_eq!((e[0].node.as_str(), e[0].task.as_deref()), ("n2", Some("standby")));
    assert_eq!(e[1].summary, "bob@laptop: ban web from n1");
    assert_eq!(e[1].resource.as_deref(), Some("web"));
}

/// `action`, planned alone on n1 at 1 ms, fails at 2 ms (soft, `reason`) after `call`: the
/// state after it and the event of its result.
fn fails_alone(action: Action, call: CallReport, reason: &str) -> (ClusterState, Event) {
    let (mut s, mut log) = (online(&["n1"]), EventLog::default());
    run(
        &mut s,
        &mut log,
        &[
            stamped(
                "n1",
                1,
                Command::SetPlan {
                    actions: vec![action.clone()],
                    edges: vec![],
                },
            ),
            with_call(
                "n1",
                2,
                call,
                Command::ActionResult {
                    plan_id: 1,
                    index: 0,
                    action,
                    outcome: CallOutcome::Soft,
                    at_ms: 2,
                    reason: Some(reason.into()),
                },
            ),
        ],
    );
    let e = log.get(2).unwrap().clone();
    (s, e)
}

#[test]
fn a_failed_start_keeps_exit_code_reason_and_the_last_stderr_lines() {
    let stderr = (1..=8).map(|i| format!("line {i}")).collect::<Vec<_>>().join("\n");
    let (_, e) = fails_alone(
        act(ActionKind::Start, "db", "n1"),
        CallReport::new(Some(1), 33, &stderr),
        "cannot bind",
    );
    assert_eq!(e.kind, EventKind::ResourceFailed);
    assert_eq!(
        (e.rc, e.exec_ms, e.exit_reason.as_deref()),
        (Some(1), Some(33), Some("cannot bind"))
    );
    assert_eq!(e.details, ["line 4", "line 5", "line 6", "line 7", "line 8"]);
    assert_eq!(e.summary, "start of db failed on n1 in 33 ms, rc=1: error: cannot bind");
}

/// A failed clone notification is `notify_failed`, not `resource_failed`: the resource did not
/// fail (it counts no failure, and availability and status do not read it as one).
#[test]
fn a_failed_notification_is_not_a_failed_resource() {
    let notify = ActionKind::Notify {
        when: crate::notify::When::Pre,
        op: crate::notify::Op::Start,
    };
    let (s, e) = fails_alone(
        act(notify, "db", "n1"),
        CallReport::new(Some(1), 5, ""),
        "no such notification",
    );
    assert_eq!(e.kind, EventKind::NotifyFailed, "{e:?}");
    assert_eq!(
        e.summary,
        "notify of db failed on n1 in 5 ms, rc=1: error: no such notification"
    );
    assert!(
        s.resources.get("db").is_none_or(|r| r.failures.is_empty()),
        "no failure counted"
    );
}

#[test]
fn the_history_is_bounded_and_says_what_a_batch_changed() {
    let (mut s, mut log) = (online(&["n1"]), EventLog::default());
    log.set_limit(3);
    let mark = log.mark();
    for i in 0..5u64 {
        let note = Command::Note(Note {
            kind: EventKind::AuthFailed,
            node: "n1".into(),
            summary: format!("bad token #{i}"),
            at_ms: i,
        });
        assert_eq!(
            apply_logged(&mut s, &mut log, &stamped("n1", i, note), &mut Touched::default()),
            Outcome::Ok
        );
    }
    assert_eq!((log.first_seq(), log.next_seq(), log.len()), (3, 6, 3));
    assert_eq!(log.get(2), None);
    assert_eq!(log.get(4).map(|e| e.summary.as_str()), Some("bad token #3"));
    assert_eq!(log.since(5).count(), 1);
    assert_eq!(log.since(1).count(), 3);
    let c = log.changed_since(mark);
    assert_eq!((c.added, c.removed), (vec![3, 4, 5], 1..3));
}

#[test]
fn alert_cursors_never_move_back() {
    let (mut s, mut log) = (online(&["n1"]), EventLog::default());
    let at = |seq| Command::AlertsDelivered {
        recipient: "file".into(),
        seq,
    };
    let out = run(&mut s, &mut log, &[at(5), at(3), at(5), at(7)]);
    assert_eq!(out, [Outcome::Ok, Outcome::Unchanged, Outcome::Unchanged, Outcome::Ok]);
    assert_eq!(log.delivered.get("file"), Some(&7));
    assert!(log.is_empty());
}

#[test]
fn a_stamp_cannot_hold_a_stamp() {
    let (mut s, mut log) = (online(&["n1"]), EventLog::default());
    let inner = stamped(
        "n1",
        1,
        Command::SetStandby {
            name: "n1".into(),
            standby: true,
        },
    );
    let nested = stamped("n1", 2, inner);
    assert!(!nested.forwardable());
    let o = apply_logged(&mut s, &mut log, &nested, &mut Touched::default());
    assert_eq!(o, Outcome::Rejected(crate::RejectReason::NestedStamp));
    assert!(log.is_empty() && !s.nodes["n1"].standby);
}

#[test]
fn a_stamped_command_is_forwarded_as_its_inner_command_would_be() {
    let standby = Command::SetStandby {
        name: "n1".into(),
        standby: true,
    };
    assert!(stamped("n1", 1, standby).forwardable());
    let plan = Command::SetPlan {
        actions: vec![],
        edges: vec![],
    };
    assert!(!stamped("n1", 1, plan).forwardable());
}

#[test]
fn every_kind_has_a_json_name_that_reads_back() {
    for k in EventKind::ALL {
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{}\"", k.as_str()));
        assert_eq!(EventKind::parse(k.as_str()), Some(k));
    }
}

#[test]
fn a_second_drill_is_refused_while_one_is_active() {
    use crate::drill::{DrillNote, DrillStep};
    let note = |id, at_ms, step| {
        Command::Drill(DrillNote {
            id,
            at_ms,
            scenario: "switchover".into(),
            resource: "web".into(),
            step,
        })
    };
    let begin = |id, at_ms| {
        by(
            "n1",
            at_ms,
            "ops@a",
            note(
                id,
                at_ms,
                DrillStep::Begin {
                    node: "n1".into(),
                    expires_ms: at_ms + 1_000,
                },
            ),
        )
    };
    let (mut state, mut log) = (bootstrapped(&["n1", "n2"]), EventLog::default());
    let out = run(
        &mut state,
        &mut log,
        &[
            begin(1, 100),
            begin(2, 200),
            begin(1, 300),
            note(1, 400, DrillStep::End { aborted: None }),
            begin(2, 500),
            begin(3, 1_600),
        ],
    );
    let refused = Outcome::Rejected(crate::outcome::RejectReason::DrillRunning {
        scenario: "switchover".into(),
        resource: "web".into(),
        by: "ops@a".into(),
        expires_ms: 1_100,
    });
    // The second is refused; the first may repeat its begin; after its end another begins; an
    // expired drill blocks nothing.
    assert_eq!(
        out,
        vec![Outcome::Ok, refused, Outcome::Ok, Outcome::Ok, Outcome::Ok, Outcome::Ok]
    );
    let drills: Vec<&str> = kinds(&log).into_iter().filter(|k| k.starts_with("drill")).collect();
    assert_eq!(
        drills,
        [
            "drill_started",
            "drill_started",
            "drill_ended",
            "drill_started",
            "drill_started"
        ]
    );
    assert!(log
        .since(0)
        .all(|e| e.kind != EventKind::DrillStarted || e.resource.as_deref() == Some("web")));
}
