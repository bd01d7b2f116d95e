//! The event history on 3 real daemons: the leader runs a group and is killed (kill -9); the
//! survivors record, in order, the node lost, the fence requested and done (through the
//! harness's power switch), the group's starts and the plan, and both give the same history,
//! number for number. A `phalanx events --follow --json` reading from the leader when it dies
//! carries on from another node with no gap and no repeat. The operator's move appears with its
//! author, and a request with a wrong token is recorded.

use phalanx::harness::{runs_on, LocalCluster, Spec};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// One cluster at a time: two 3-node clusters, one of them frozen and thawed, on a 2-core
/// machine miss heartbeats.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GROUP: &str = r#"
[[resource]]
id = "a"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }

[[resource]]
id = "b"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }

[[group]]
id = "g"
members = ["a", "b"]
"#;

fn cluster() -> LocalCluster {
    let mut c = LocalCluster::create(Spec::loopback(
        3,
        PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        GROUP.to_string(),
    ))
    .unwrap();
    c.start_all().unwrap();
    c
}

/// The events one node serves, as JSON values.
fn events_of(c: &LocalCluster, api: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = c.cli(&["--api", api, "events", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn field<'a>(e: &'a serde_json::Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or("")
}

/// The position of the first event matching `f` after position `from`.
fn find_after(events: &[serde_json::Value], from: usize, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> usize {
    events
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| f(e))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no {what} after #{from} in {:#?}", &events[from.min(events.len())..]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_kill_reads_the_same_in_order_everywhere_and_follow_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = cluster();
    c.wait_stable(T).await.unwrap();
    // Every node online as the replicated state records it, in every view, and g placed.
    let leader = c
        .wait_for(T, "all online, g placed", |st| {
            let leader = c.agreed_leader(st)?;
            (st.len() == 3
                && st.values().all(|s| {
                    s.plan_pending == 0
                        && runs_on(s, "b").is_some()
                        && s.nodes.iter().all(|n| n.liveness == phalanx_core::Liveness::Online)
                }))
            .then_some(leader)
        })
        .await
        .unwrap();
    let api_of = |c: &LocalCluster, n: &str| c.node(n).unwrap().api.clone();
    // The follower reads from the leader first, then the others.
    let others: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .filter(|n| **n != leader)
        .map(|n| n.to_string())
        .collect();
    let apis = std::iter::once(api_of(&c, &leader))
        .chain(others.iter().map(|n| api_of(&c, n)))
        .collect::<Vec<_>>()
        .join(",");
    let mut follower = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .arg("--config")
        .arg(c.dir().join("cluster.toml"))
        .args(["--api", &apis, "events", "--follow", "--json", "--since", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let reader = {
        let seen = seen.clone();
        let out = follower.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    seen.lock().unwrap().push(v);
                }
            }
        })
    };
    // The operator moves the group onto the leader (an event with its author), and it runs there.
    let (code, _, err) = c.cli(&["resource", "move", "g", "--to", &leader]).unwrap();
    assert_eq!(code, 0, "{err}");
    c.wait_for(T, "g on the leader", |st| {
        (st.len() == 3
            && st
                .values()
                .all(|s| s.plan_pending == 0 && runs_on(s, "b").as_deref() == Some(leader.as_str())))
        .then_some(())
    })
    .await
    .unwrap();
    // A wrong token, recorded (as an event of the node it was sent to).
    let bad = c
        .operator_http()
        .unwrap()
        .get(LocalCluster::url(&api_of(&c, &others[0]), "/v1/status"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let deadline = Instant::now() + T;
    while !events_of(&c, &api_of(&c, &others[0]))
        .iter()
        .any(|e| field(e, "kind") == "auth_failed")
    {
        assert!(
            Instant::now() < deadline,
            "the authentication failure was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    c.kill(&leader).unwrap();
    let survivor = others[0].clone();
    let moved = c
        .wait_for(T, "g restarted off the dead leader", |st| {
            let s = st.get(&survivor)?;
            let to = runs_on(s, "b").filter(|n| *n != leader && s.plan_pending == 0)?;
            let fenced = s.nodes.iter().find(|n| n.name == leader)?.fence.fenced;
            fenced.then_some(to)
        })
        .await
        .unwrap();

    // Both survivors serve the same history (wait until both applied the same last event).
    let deadline = Instant::now() + T;
    let (a, b) = loop {
        let a = events_of(&c, &api_of(&c, &others[0]));
        let b = events_of(&c, &api_of(&c, &others[1]));
        if a == b {
            break (a, b);
        }
        assert!(Instant::now() < deadline, "the survivors disagree:\n{a:#?}\n{b:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(a, b);
    let seqs: Vec<u64> = a.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gap-free from 1");

    // The operator's move, with its author.
    let mv = find_after(&a, 0, "operator move", |e| {
        field(e, "kind") == "operator_command" && field(e, "task") == "move"
    });
    assert!(field(&a[mv], "by").contains('@'), "{:#?}", a[mv]);
    assert!(
        field(&a[mv], "summary").contains(&format!("move g to {leader}")),
        "{:#?}",
        a[mv]
    );
    let auth = find_after(&a, 0, "auth failure", |e| field(e, "kind") == "auth_failed");
    assert!(field(&a[auth], "summary").contains("127.0.0.1"), "{:#?}", a[auth]);
    // The failover, in order.
    let lost = find_after(&a, mv, "node_lost", |e| {
        field(e, "kind") == "node_lost" && field(e, "node") == leader
    });
    let requested = find_after(&a, lost, "fence_requested", |e| {
        field(e, "kind") == "fence_requested" && field(e, "node") == leader
    });
    let plan = find_after(&a, lost, "plan_committed", |e| field(e, "kind") == "plan_committed");
    assert!(
        a[plan]["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("fence")),
        "{:#?}",
        a[plan]
    );
    let fenced = find_after(&a, requested, "fence_succeeded", |e| {
        field(e, "kind") == "fence_succeeded" && field(e, "node") == leader
    });
    assert_eq!(
        (a[fenced]["device"].as_str(), a[fenced]["level"].as_u64()),
        (Some("power"), Some(1)),
        "{:#?}",
        a[fenced]
    );
    assert!(a[fenced]["exec_ms"].as_u64().is_some(), "{:#?}", a[fenced]);
    let started_a = find_after(&a, fenced, "start of a", |e| {
        field(e, "kind") == "resource_started" && field(e, "resource") == "a" && field(e, "node") == moved
    });
    let started_b = find_after(&a, started_a, "start of b", |e| {
        field(e, "kind") == "resource_started" && field(e, "resource") == "b"
    });
    assert!(a[started_b]["exec_ms"].as_u64().is_some(), "{:#?}", a[started_b]);
    assert!(a[started_b]["rc"].as_i64() == Some(0), "{:#?}", a[started_b]);

    // `phalanx availability` gives what the events say, computed here by hand: b was down,
    // unplanned, from its node's loss to its start on the survivor (one failure, explained by
    // the loss); planned, between each stop of b before that (the operator's move of its group)
    // and its next start.
    let ms = |i: usize| a[i]["time_ms"].as_u64().unwrap();
    let mut planned = 0;
    let mut stopped_at = None;
    for (i, e) in a.iter().enumerate().take(lost) {
        match (field(e, "kind"), field(e, "resource")) {
            ("resource_stopped", "b") => stopped_at = Some(ms(i)),
            ("resource_started", "b") => planned += stopped_at.take().map_or(0, |t| ms(i) - t),
            _ => {}
        }
    }
    let (code, out, err) = c
        .cli(&[
            "--api",
            &api_of(&c, &others[0]),
            "availability",
            "--resource",
            "b",
            "--json",
        ])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &report["resources"][0];
    assert_eq!(r["resource"], "b", "{report:#}");
    assert_eq!(r["failures"], 1, "{report:#}");
    assert_eq!(r["down_ms"].as_u64(), Some(ms(started_b) - ms(lost)), "{report:#}");
    assert_eq!(r["planned_down_ms"].as_u64(), Some(planned), "{report:#}");
    let unplanned: Vec<&serde_json::Value> = r["outages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["planned"] == false)
        .collect();
    assert_eq!(unplanned.len(), 1, "{report:#}");
    assert_eq!(unplanned[0]["cause_seq"], a[lost]["seq"], "{report:#}");
    let up = r["up_ms"].as_u64().unwrap();
    let down = r["down_ms"].as_u64().unwrap();
    let want = up as f64 / (up + down) as f64;
    assert!((r["availability"].as_f64().unwrap() - want).abs() < 1e-9, "{report:#}");
    let (code, out, _) = c
        .cli(&["--api", &api_of(&c, &others[0]), "availability", "--resource", "b"])
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        out.contains("unplanned") && out.contains(&format!("{leader} lost")),
        "{out}"
    );

    // The follower printed every one of them exactly once, in order, across the leader's death.
    let last = *seqs.last().unwrap();
    let deadline = Instant::now() + T;
    loop {
        let got: Vec<u64> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        if got.last().is_some_and(|l| *l >= last) {
            assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>(), "no gap, no repeat");
            let printed = seen.lock().unwrap()[..a.len()].to_vec();
            assert_eq!(printed, a, "the follower printed what the nodes hold");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower stopped at {:?} of {last}",
            got.last()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let _ = reader.join();
}

/// A node that loses quorum cannot commit anything; once quorum is back it records both, the
/// loss with the time it happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_loss_is_recorded_once_quorum_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = LocalCluster::create(Spec::loopback(
        3,
        PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        String::new(),
    ))
    .unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let signal = |c: &LocalCluster, n: &str, s: nix::sys::signal::Signal| {
        let pid = c.node(n).unwrap().pid().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s).unwrap();
    };
    // n2 and n3 freeze: n1 is alone, without quorum.
    let frozen_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for n in ["n2", "n3"] {
        signal(&c, n, nix::sys::signal::Signal::SIGSTOP);
    }
    // Until n1 noticed (its log says so), however long that takes on a loaded machine.
    let deadline = Instant::now() + T;
    while !std::fs::read_to_string(c.log_path("n1"))
        .unwrap_or_default()
        .contains("quorum lost (recorded")
    {
        assert!(Instant::now() < deadline, "n1 never noticed its quorum loss");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in ["n2", "n3"] {
        signal(&c, n, nix::sys::signal::Signal::SIGCONT);
    }
    let deadline = Instant::now() + T;
    let (lost, back) = loop {
        let ev = events_of(&c, &c.node("n1").unwrap().api);
        let find = |k: &str| {
            ev.iter()
                .find(|e| field(e, "kind") == k && field(e, "node") == "n1")
                .cloned()
        };
        if let (Some(l), Some(b)) = (find("quorum_lost"), find("quorum_regained")) {
            break (l, b);
        }
        assert!(Instant::now() < deadline, "no quorum events for n1: {ev:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (lost_ms, back_ms) = (lost["time_ms"].as_u64().unwrap(), back["time_ms"].as_u64().unwrap());
    assert!(
        lost_ms >= frozen_at && lost_ms < back_ms,
        "lost at {lost_ms}, back at {back_ms}"
    );
    assert!(lost["seq"].as_u64() < back["seq"].as_u64());
}
