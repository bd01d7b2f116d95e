//! The controller's decisions, table-tested like the scheduler: each case builds a replicated
//! state with the real state machine, gives the controller what the leader observes, and checks
//! the actions it returns (bootstrap, a node lost with and without fencing, an in-flight start
//! holding back a new plan until its result or its timeout, learner promotion, the campaign
//! after a leader loss, the witness' vote in a split).

use phalanx_core::controller::{witness_round, CampaignView, ControlAction, Controller, Observed, WITNESS_ID};
use phalanx_core::scheduler::ActionKind;
use phalanx_core::state::CallOutcome;
use phalanx_core::{ClusterState, Command, Config, Liveness, Outcome, Timings};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WEB: &str = "[[resource]]\nid = \"web\"\nagent = \"ocf:heartbeat:Dummy\"\nstart_timeout = \"20s\"\n";

fn config(fencing: &str, extra: &str) -> Config {
    let mut src = format!("[cluster]\nname = \"t\"\nfencing = \"{fencing}\"\n");
    if fencing == "required" {
        src += "[[fence_device]]\nname = \"pdu\"\nagent = \"fence_dummy\"\n";
    }
    for i in 1..=3 {
        src += &format!(
            "[[node]]\nname = \"n{i}\"\nlinks = [\"127.0.0.1:{}\"]\napi = \"127.0.0.1:{}\"\n",
            7400 + i,
            7480 + i
        );
    }
    phalanx_core::config::parse(&(src + extra)).expect("a valid config")
}

fn names(ns: &[&str]) -> BTreeSet<String> {
    ns.iter().map(|n| n.to_string()).collect()
}

/// What n2, leading, observes: `reachable` both ways, long after its start.
fn observed(reachable: &[&str]) -> Observed {
    Observed {
        me: "n2".into(),
        now_ms: 1_000_000,
        uptime: Duration::from_secs(60),
        reachable: names(reachable),
        lost: BTreeMap::new(),
        witness_backs_me: false,
        raft_members: [1, 2, 3].into(),
        voters: [1, 2, 3].into(),
        last_log: 10,
        matched: BTreeMap::new(),
    }
}

/// Apply every Write the controller returned, as the shell would.
fn apply(state: &mut ClusterState, actions: &[ControlAction]) {
    for a in actions {
        if let ControlAction::Write(cmd) = a {
            assert!(matches!(state.apply(cmd), Outcome::Ok | Outcome::Unchanged), "{cmd:?}");
        }
    }
}

/// A bootstrapped cluster, every node online, through the controller itself.
fn bootstrapped(cfg: &Config) -> ClusterState {
    let t = Timings::from(&cfg.cluster);
    let mut s = ClusterState::default();
    let mut c = Controller::default();
    for _ in 0..2 {
        let a = c.reconcile(&observed(&["n1", "n2", "n3"]), &s, cfg, &t);
        apply(&mut s, &a);
    }
    assert!(s.nodes.values().all(|r| r.liveness == Liveness::Online));
    s
}

/// The write that records n1 lost at the observed time (1,000,000 ms).
fn n1_lost() -> [ControlAction; 1] {
    [ControlAction::Write(Command::SetLiveness {
        name: "n1".into(),
        liveness: Liveness::Offline,
        at_ms: 1_000_000,
    })]
}

/// Whether `a` records `name` lost.
fn marks_lost(a: &[ControlAction], name: &str) -> bool {
    a.iter().any(|a| {
        matches!(a, ControlAction::Write(Command::SetLiveness { name: n, liveness: Liveness::Offline, .. }) if n == name)
    })
}

fn plan_of(actions: &[ControlAction]) -> Option<&Vec<phalanx_core::scheduler::Action>> {
    actions.iter().find_map(|a| match a {
        ControlAction::Write(
            Command::SetPlan { actions, .. }
            | Command::SetPlanAfter { actions, .. }
            | Command::SetPlanNotify { actions, .. },
        ) => Some(actions),
        _ => None,
    })
}

#[test]
fn bootstrap_records_the_configured_members_in_one_command() {
    let cfg = config("off", "");
    let a = Controller::default().reconcile(
        &observed(&["n2"]),
        &ClusterState::default(),
        &cfg,
        &Timings::from(&cfg.cluster),
    );
    let [ControlAction::Write(Command::Bootstrap { nodes })] = a.as_slice() else {
        panic!("{a:?}")
    };
    let ids: Vec<(String, u64)> = nodes.iter().map(|n| (n.name.clone(), n.id)).collect();
    assert_eq!(ids, [("n1".into(), 1), ("n2".into(), 2), ("n3".into(), 3)]);
}

#[test]
fn nobody_is_declared_offline_before_the_detector_settled() {
    let cfg = config("off", "");
    let t = Timings::from(&cfg.cluster);
    let mut s = bootstrapped(&cfg);
    s.apply(&Command::SetLiveness {
        name: "n1".into(),
        liveness: Liveness::Offline,
        at_ms: 1,
    });
    let mut obs = observed(&["n2", "n3"]);
    obs.uptime = t.startup_settle / 2;
    // n1 is not heard yet: nothing is said of it; n2 and n3 are as recorded.
    assert!(Controller::default().reconcile(&obs, &s, &cfg, &t).is_empty());
    obs.uptime = t.startup_settle + Duration::from_millis(1);
    s.apply(&Command::SetLiveness {
        name: "n1".into(),
        liveness: Liveness::Online,
        at_ms: 2,
    });
    let a = Controller::default().reconcile(&obs, &s, &cfg, &t);
    assert_eq!(a, n1_lost());
}

/// The leader's own links fail: it loses n1, then n3 a moment later. While it still reaches
/// n3, n3's word that it reaches n1 keeps n1 online; alone, the leader declares nobody lost.
/// n1 is declared lost once n3 says it lost n1 too.
#[test]
fn a_leader_losing_its_own_links_gets_no_healthy_node_fenced() {
    let cfg = config("required", WEB);
    let t = Timings::from(&cfg.cluster);
    let s = bootstrapped(&cfg);
    let mut c = Controller::default();
    let offline = |a: &[ControlAction]| ["n1", "n2", "n3"].iter().any(|n| marks_lost(a, n));
    let mut obs = observed(&["n2", "n3"]);
    obs.lost.insert("n3".into(), Some(names(&[])));
    assert!(!offline(&c.reconcile(&obs, &s, &cfg, &t)), "n3 still reaches n1");
    obs.reachable = names(&["n2"]);
    assert!(!offline(&c.reconcile(&obs, &s, &cfg, &t)), "n2 alone is no majority");
    obs.reachable = names(&["n2", "n3"]);
    obs.lost.insert("n3".into(), Some(names(&["n1"])));
    let a = c.reconcile(&obs, &s, &cfg, &t);
    assert_eq!(a, n1_lost());
}

/// Two voters and the witness, split from each other while both reach it: the witness hears
/// both (it lists nobody lost), and its vote decides: backing this side, it agrees the other
/// is lost.
#[test]
fn the_witness_agrees_to_a_loss_by_backing_this_side() {
    let cfg = config("required", "");
    let t = Timings::from(&cfg.cluster);
    let s = bootstrapped(&cfg);
    let n1_offline = |a: &[ControlAction]| marks_lost(a, "n1");
    let mut obs = observed(&["n2", "witness"]);
    obs.voters = [1, 2, phalanx_core::controller::WITNESS_ID].into();
    obs.lost.insert("witness".into(), Some(names(&[])));
    assert!(!n1_offline(&Controller::default().reconcile(&obs, &s, &cfg, &t)));
    obs.witness_backs_me = true;
    assert!(n1_offline(&Controller::default().reconcile(&obs, &s, &cfg, &t)));
}

/// web runs on n1; n1 is lost. First round: only the liveness change. Next round: the plan.
fn lose_n1_holding_web(fencing: &str) -> Vec<ControlAction> {
    let cfg = config(fencing, WEB);
    let t = Timings::from(&cfg.cluster);
    let mut s = bootstrapped(&cfg);
    s.resources
        .entry("web".into())
        .or_default()
        .running
        .insert("n1".into(), phalanx_core::scheduler::Role::Started);
    let mut c = Controller::default();
    let obs = observed(&["n2", "n3"]);
    let a = c.reconcile(&obs, &s, &cfg, &t);
    assert_eq!(
        a,
        n1_lost(),
        "a liveness change is committed alone: the plan is made on the new liveness"
    );
    apply(&mut s, &a);
    c.reconcile(&obs, &s, &cfg, &t)
}

#[test]
fn a_lost_node_is_fenced_before_its_resources_start_elsewhere() {
    let a = lose_n1_holding_web("required");
    let ControlAction::NewPlan(summary) = &a[0] else {
        panic!("{a:?}")
    };
    assert!(summary[0].starts_with("Fence n1 (by n2)"), "{summary:?}");
    let actions = plan_of(&a).expect("a plan");
    assert_eq!((actions[0].kind, actions[0].node.as_str()), (ActionKind::Fence, "n2"));
    assert!(actions
        .iter()
        .any(|x| x.kind == ActionKind::Start && x.rsc == "web" && x.node != "n1"));
}

#[test]
fn without_fencing_a_lost_nodes_resources_start_elsewhere_at_once() {
    let a = lose_n1_holding_web("off");
    let actions = plan_of(&a).expect("a plan");
    assert!(actions.iter().all(|x| x.kind != ActionKind::Fence), "{actions:?}");
    assert!(actions
        .iter()
        .any(|x| x.kind == ActionKind::Start && x.rsc == "web" && x.node != "n1"));
}

/// `node stop n1` while n1 runs web: web moves away (a plan stops it on n1 and starts it
/// elsewhere, no fence); once the stop is reported n1 holds nothing, and when it goes the leader
/// records it `Stopped` (not lost, not unclean: no fence, ever). Had it gone still holding web, it
/// would be lost and fenced like any lost node.
#[test]
fn a_leaving_node_is_moved_away_from_then_recorded_stopped_without_a_fence() {
    use phalanx_core::scheduler::Role;
    let cfg = config("required", WEB);
    let t = Timings::from(&cfg.cluster);
    let mut s = bootstrapped(&cfg);
    s.resources
        .entry("web".into())
        .or_default()
        .running
        .insert("n1".into(), Role::Started);
    assert_eq!(
        s.apply(&Command::SetLeaving {
            name: "n1".into(),
            leaving: true,
            lock: false
        }),
        Outcome::Ok
    );
    assert_eq!(s.nodes["n1"].liveness, Liveness::Leaving);
    let mut c = Controller::default();
    // Still reachable: nothing changes in its liveness, and the plan moves web away, no fence.
    let all = observed(&["n1", "n2", "n3"]);
    let a = c.reconcile(&all, &s, &cfg, &t);
    let actions = plan_of(&a).expect("a plan").clone();
    assert!(actions.iter().all(|x| x.kind != ActionKind::Fence), "{actions:?}");
    assert!(
        actions.iter().any(|x| x.kind == ActionKind::Stop && x.node == "n1"),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|x| x.kind == ActionKind::Start && x.node != "n1"),
        "{actions:?}"
    );
    // Gone while web is still recorded there: lost (a stop to leave cannot be made up).
    let gone = observed(&["n2", "n3"]);
    let a = c.reconcile(&gone, &s, &cfg, &t);
    assert_eq!(a, n1_lost());
    let refused = s.clone().apply(&Command::SetLiveness {
        name: "n1".into(),
        liveness: Liveness::Stopped,
        at_ms: 1,
    });
    assert!(matches!(refused, Outcome::Rejected(_)), "{refused:?}");
    // Its stop done: it holds nothing, and when it goes it is Stopped, clean, and no plan fences it.
    s.resources.get_mut("web").unwrap().running.remove("n1");
    let a = c.reconcile(&gone, &s, &cfg, &t);
    assert_eq!(
        a,
        [ControlAction::Write(Command::SetLiveness {
            name: "n1".into(),
            liveness: Liveness::Stopped,
            at_ms: 1_000_000
        })]
    );
    apply(&mut s, &a);
    let a = c.reconcile(&gone, &s, &cfg, &t);
    assert!(
        plan_of(&a).is_none_or(|p| p.iter().all(|x| x.kind != ActionKind::Fence)),
        "{a:?}"
    );
    assert!(
        !a.iter()
            .any(|x| matches!(x, ControlAction::Write(Command::SetLiveness { .. }))),
        "{a:?}"
    );
    // Back: online again, a new life.
    let a = c.reconcile(&all, &s, &cfg, &t);
    assert_eq!(
        a,
        [ControlAction::Write(Command::SetLiveness {
            name: "n1".into(),
            liveness: Liveness::Online,
            at_ms: 1_000_000
        })]
    );
}

/// A plan starting web on n1, claimed by n1 (so it may be running), then n1 is put in standby:
/// the scheduler now wants web elsewhere.
fn claimed_start_then_standby() -> (Config, Timings, ClusterState) {
    let cfg = config(
        "off",
        &(WEB.to_string() + "[[constraint]]\nlocation = \"web\"\nnode = \"n1\"\nscore = 100\n"),
    );
    let t = Timings::from(&cfg.cluster);
    let mut s = bootstrapped(&cfg);
    let a = Controller::default().reconcile(&observed(&["n1", "n2", "n3"]), &s, &cfg, &t);
    apply(&mut s, &a);
    let i = s
        .plan
        .actions
        .iter()
        .position(|x| x.kind == ActionKind::Start && x.node == "n1")
        .expect("start on n1");
    let claim = Command::ClaimAction {
        plan_id: s.plan.id,
        indices: vec![i],
        node: "n1".into(),
        incarnation: 7,
    };
    assert_eq!(s.apply(&claim), Outcome::Ok);
    s.apply(&Command::SetStandby {
        name: "n1".into(),
        standby: true,
    });
    (cfg, t, s)
}

#[test]
fn an_in_flight_start_holds_back_a_new_plan_until_its_timeout() {
    let (cfg, t, s) = claimed_start_then_standby();
    let mut c = Controller::default();
    let mut obs = observed(&["n1", "n2", "n3"]);
    let wait = [ControlAction::WaitForInFlight { plan_id: s.plan.id }];
    assert_eq!(c.reconcile(&obs, &s, &cfg, &t), wait);
    // Still waiting just before the start's timeout (20 s) plus one detection time.
    obs.uptime += Duration::from_secs(20) + t.detection - Duration::from_millis(1);
    assert_eq!(c.reconcile(&obs, &s, &cfg, &t), wait);
    // Then the report that never came is given up on: a new plan.
    obs.uptime += Duration::from_millis(1);
    assert!(plan_of(&c.reconcile(&obs, &s, &cfg, &t)).is_some());
}

#[test]
fn an_in_flight_start_holds_back_a_new_plan_until_its_result() {
    let (cfg, t, mut s) = claimed_start_then_standby();
    let mut c = Controller::default();
    let obs = observed(&["n1", "n2", "n3"]);
    assert!(matches!(
        c.reconcile(&obs, &s, &cfg, &t)[..],
        [ControlAction::WaitForInFlight { .. }]
    ));
    let i = s
        .plan
        .actions
        .iter()
        .position(|x| x.kind == ActionKind::Start)
        .expect("start");
    let result = Command::ActionResult {
        plan_id: s.plan.id,
        index: i,
        action: s.plan.actions[i].clone(),
        outcome: CallOutcome::Ok,
        at_ms: 5,
        reason: None,
    };
    assert_eq!(s.apply(&result), Outcome::Ok);
    let a = c.reconcile(&obs, &s, &cfg, &t);
    let actions = plan_of(&a).expect("a new plan once the start is reported");
    assert!(
        actions.iter().any(|x| x.kind == ActionKind::Stop && x.node == "n1"),
        "{actions:?}"
    );
}

#[test]
fn learners_are_added_then_promoted_once_caught_up_and_reachable() {
    let cfg = config("off", "");
    let t = Timings::from(&cfg.cluster);
    let mut s = bootstrapped(&cfg);
    s.apply(&Command::AddNode {
        name: "n4".into(),
        id: None,
        links: vec!["127.0.0.1:7404".into()],
        api: "127.0.0.1:7484".into(),
    });
    let id = s.nodes["n4"].id;
    let mut c = Controller::default();
    let mut obs = observed(&["n1", "n2", "n3"]);
    s.apply(&Command::SetLiveness {
        name: "n4".into(),
        liveness: Liveness::Offline,
        at_ms: 1,
    });
    assert_eq!(
        c.reconcile(&obs, &s, &cfg, &t),
        [ControlAction::AddLearner {
            id,
            api: "127.0.0.1:7484".into()
        }]
    );
    obs.raft_members.insert(id);
    // Not reachable, then reachable but behind: not promoted.
    assert!(c.reconcile(&obs, &s, &cfg, &t).is_empty());
    obs.reachable.insert("n4".into());
    s.apply(&Command::SetLiveness {
        name: "n4".into(),
        liveness: Liveness::Online,
        at_ms: 2,
    });
    obs.matched.insert(id, 5);
    assert!(c.reconcile(&obs, &s, &cfg, &t).is_empty());
    obs.matched.insert(id, 9);
    assert_eq!(
        c.reconcile(&obs, &s, &cfg, &t),
        [ControlAction::PromoteVoters([id].into())]
    );
    // Removed from the member list: removed from Raft too (a voter by now).
    obs.voters.insert(id);
    s.apply(&Command::RemoveNode { name: "n4".into() });
    assert_eq!(
        c.reconcile(&obs, &s, &cfg, &t),
        [ControlAction::RemoveVoters([id].into())]
    );
}

#[test]
fn after_a_leader_loss_the_reachable_voter_with_the_longest_log_campaigns_in_its_window() {
    let t = Timings::from(&config("off", "").cluster);
    let lost = |me: u64| CampaignView {
        me,
        voters: [1, 2, 3].into(),
        leader: Some(1),
        leader_reachable: false,
        leader_seen_alive: true,
        reachable_voters: vec![(2, 40), (3, 41)],
    };
    let now = Duration::from_secs(100);
    let (mut c2, mut c3) = (Controller::default(), Controller::default());
    assert!(!c2.campaign(&lost(2), now, &t), "n2's log is shorter: n3 campaigns");
    assert!(c3.campaign(&lost(3), now, &t));
    assert!(c3.campaigning(now));
    // The window closes: Raft's own timers rule again.
    let late = now + t.campaign_window;
    assert!(!c3.campaign(&lost(3), late, &t));
    // A leader that is reachable, or a minority: nobody campaigns.
    let mut v = lost(3);
    v.leader_reachable = true;
    assert!(!Controller::default().campaign(&v, now, &t));
    let mut v = lost(3);
    v.reachable_voters = vec![(3, 41)];
    assert!(!Controller::default().campaign(&v, now, &t));
    // A leader never seen alive opens no window.
    let mut v = lost(3);
    v.leader_seen_alive = false;
    assert!(!Controller::default().campaign(&v, now, &t));
}

#[test]
fn the_witness_backs_exactly_one_side_of_a_split_and_stands_only_when_alone_up_to_date() {
    // Split n1 | n2 with the witness hearing both: it keeps backing the leader (n1).
    let both: BTreeSet<u64> = [1, 2].into();
    assert_eq!(
        witness_round(Some(1), Some(1), &both, 10, &[(true, Some(10)), (true, Some(10))]).0,
        Some(1)
    );
    // The witness hears only n2 (n1 lost): it moves its vote to n2, once.
    let only2: BTreeSet<u64> = [2].into();
    let (vote, elect) = witness_round(Some(1), Some(1), &only2, 10, &[(true, Some(10))]);
    assert_eq!(
        (vote, elect),
        (Some(2), false),
        "n2 is up to date: it is elected, not the witness"
    );
    // n2 is behind the witness' log and no leader lives: only the witness can be elected.
    let (_, elect) = witness_round(Some(2), None, &only2, 12, &[(true, Some(10))]);
    assert!(elect);
    // Leading witness: the first caught-up node takes over, at most once per election timeout.
    let t = Timings::from(&config("off", "").cluster);
    let mut c = Controller::default();
    let now = Duration::from_secs(5);
    assert!(!c.take_over(Some(WITNESS_ID), 10, Some(12), now, &t), "behind: not yet");
    assert!(c.take_over(Some(WITNESS_ID), 12, Some(12), now, &t));
    assert!(!c.take_over(Some(WITNESS_ID), 12, Some(12), now + t.election_max / 2, &t));
    assert!(c.take_over(Some(WITNESS_ID), 12, Some(12), now + t.election_max, &t));
    assert!(
        !Controller::default().take_over(Some(2), 12, Some(12), now, &t),
        "a node leads"
    );
}

/// A config may name a node the membership does not have (applied with a `[[node]]` nobody
/// added, or one removed since): it is not a member and hosts nothing, even where a location
/// prefers it (the scheduler's default for an unlisted node, online, is for scenario files).
#[test]
fn a_node_the_config_names_but_the_membership_lacks_hosts_nothing() {
    let cfg = config("off", WEB);
    let t = Timings::from(&cfg.cluster);
    let s = bootstrapped(&cfg);
    let extra = "[[node]]\nname = \"n9\"\nlinks = [\"127.0.0.1:7409\"]\napi = \"127.0.0.1:7489\"\n[[constraint]]\nlocation = \"web\"\nnode = \"n9\"\nscore = \"INFINITY\"\n";
    let mut src = String::from("[cluster]\nname = \"t\"\nfencing = \"off\"\n");
    for i in 1..=3 {
        src += &format!(
            "[[node]]\nname = \"n{i}\"\nlinks = [\"127.0.0.1:{}\"]\napi = \"127.0.0.1:{}\"\n",
            7400 + i,
            7480 + i
        );
    }
    let with_n9 = phalanx_core::config::parse(&(src + extra + WEB)).expect("a valid config");
    let a = Controller::default().reconcile(&observed(&["n1", "n2", "n3"]), &s, &with_n9, &t);
    let actions = plan_of(&a).expect("a plan");
    assert!(
        actions.iter().all(|x| x.node != "n9") && actions.iter().any(|x| x.kind == ActionKind::Start),
        "{actions:?}"
    );
}

/// A promotable clone with `notify = true`: one plan carries the starts, the promotion and the
/// notifications around them (with their lists, in `SetPlanNotify`). Run action by action in
/// an order its edges allow, it is never replaced (a plan whose pre-notifications ran is not
/// one to send again), a failed notification holds nothing up and changes no record, and once
/// it is done nothing more is planned.
#[test]
fn a_notify_clones_plan_runs_to_its_end_without_being_replanned() {
    let cfg = config(
        "off",
        "[[resource]]\nid = \"pg\"\nagent = \"ocf:heartbeat:Stateful\"\n\
         [[clone]]\nid = \"db\"\nresource = \"pg\"\npromotable = true\nnotify = true\n",
    );
    let t = Timings::from(&cfg.cluster);
    let obs = observed(&["n1", "n2", "n3"]);
    let mut s = bootstrapped(&cfg);
    let mut c = Controller::default();
    let a = c.reconcile(&obs, &s, &cfg, &t);
    assert!(
        a.iter()
            .any(|x| matches!(x, ControlAction::Write(Command::SetPlanNotify { .. }))),
        "{a:?}"
    );
    apply(&mut s, &a);
    let plan_id = s.plan.id;
    assert_eq!(s.plan_notify["pg"]["notify_all_uname"], "n1 n2 n3");
    let notifications = s
        .plan
        .actions
        .iter()
        .filter(|x| matches!(x.kind, ActionKind::Notify { .. }))
        .count();
    assert_eq!(notifications, 9, "post-start, pre- and post-promote to all three");
    let mut ran = 0;
    loop {
        let p = &s.plan;
        let next = (0..p.actions.len()).find(|i| {
            !p.done.contains(i) && !p.failed.contains(i) && p.edges.iter().all(|(x, y)| y != i || p.done.contains(x))
        });
        let Some(i) = next else { break };
        let action = p.actions[i].clone();
        // Every other notification fails: the plan goes on.
        let notify = matches!(action.kind, ActionKind::Notify { .. });
        let outcome = if notify && ran % 2 == 0 {
            CallOutcome::Soft
        } else {
            CallOutcome::Ok
        };
        ran += 1;
        let before = s.resources.clone();
        let result = Command::ActionResult {
            plan_id,
            index: i,
            action,
            outcome,
            at_ms: 10 + ran,
            reason: None,
        };
        assert_eq!(s.apply(&result), Outcome::Ok);
        if notify {
            assert_eq!(s.resources, before, "a notification changed a record");
        }
        let a = c.reconcile(&obs, &s, &cfg, &t);
        assert!(plan_of(&a).is_none(), "replanned after {ran} results: {a:?}");
        apply(&mut s, &a);
        assert_eq!(s.plan.id, plan_id);
    }
    assert_eq!(s.plan.done.len(), s.plan.actions.len(), "every action ran");
    let roles: Vec<_> = s.resources["pg"].running.values().copied().collect();
    assert_eq!(roles.len(), 3);
    assert_eq!(
        roles
            .iter()
            .filter(|r| **r == phalanx_core::scheduler::Role::Promoted)
            .count(),
        1
    );
    assert!(
        plan_of(&c.reconcile(&obs, &s, &cfg, &t)).is_none(),
        "nothing more to do"
    );
}
