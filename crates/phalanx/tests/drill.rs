//! `phalanx drill switchover` on 3 real daemons running the demo HTTP service (a `process`
//! resource answering on 127.0.10.K on node nK; the probe is a client that tries every node's
//! address): each run moves the service to another node, measures from the client's side, and
//! clears its move; bad flags and an unhealthy service are refused before anything moves.

use phalanx::harness::{runs_on, LocalCluster, Spec};
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_drill_measures_what_clients_saw_and_clears_its_move() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let port = phalanx::demo::service_port(3).unwrap();
    let extra = phalanx::demo::service_resource(&exe, "web", port);
    let mut c = LocalCluster::create(Spec::loopback(3, exe, extra)).unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let first = c
        .wait_for(T, "web runs", |st| {
            let s = st.values().next()?;
            runs_on(s, "web").filter(|_| s.plan_pending == 0)
        })
        .await
        .unwrap();
    let probe: Vec<String> = (1..=3)
        .map(|i| format!("http://{}/", phalanx::demo::service_addr(&format!("n{i}"), port)))
        .collect();
    let probe = probe.join(",");

    // Refused before anything moves: an unknown scenario, one not built yet, an unknown
    // resource, a service that does not answer.
    for (args, says) in [
        (
            vec!["drill", "switchovr", "--resource", "web", "--probe", &probe],
            "unknown scenario",
        ),
        (
            vec!["drill", "pause-node", "--resource", "web", "--probe", &probe],
            "not built yet",
        ),
        (
            vec!["drill", "switchover", "--resource", "wbe", "--probe", &probe],
            "no resource \"wbe\"",
        ),
        (
            vec![
                "drill",
                "switchover",
                "--resource",
                "web",
                "--probe",
                "tcp://127.0.0.1:1",
            ],
            "the service is not healthy now",
        ),
    ] {
        let (code, _, err) = c.cli(&args).unwrap();
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let st = c.statuses().await;
    assert!(
        st.values()
            .all(|s| runs_on(s, "web").as_deref() == Some(first.as_str())),
        "a refused drill moved nothing"
    );

    let (code, out, err) = c
        .cli(&[
            "drill",
            "switchover",
            "--resource",
            "web",
            "--probe",
            &probe,
            "--runs",
            "2",
            "--json",
        ])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{r:#}");
    assert_eq!(runs[0]["from"].as_str(), Some(first.as_str()), "{r:#}");
    assert_eq!(
        runs[1]["from"], runs[0]["to"],
        "the second run starts where the first left it: {r:#}"
    );
    for run in runs {
        assert_ne!(run["from"], run["to"], "{r:#}");
        // A process stopped on one node and started on another: the client saw an outage,
        // and then the service again.
        let rto = run["rto_ms"].as_u64().expect("the service came back");
        assert!(rto > 0 && run["failed"].as_u64().unwrap() > 0, "{r:#}");
        assert!(rto < T.as_millis() as u64, "{r:#}");
        assert!(run["probes"].as_u64().unwrap() > 10, "{r:#}");
        assert!(
            run["first_failure_ms"].as_u64().unwrap() >= run["fault_ms"].as_u64().unwrap(),
            "{r:#}"
        );
    }
    assert!(r["rto_p50_ms"].as_u64().is_some(), "{r:#}");
    // The drill's moves are cleared: no operator constraint is left.
    let (code, out, err) = c.cli(&["resource", "constraints", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let left: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(left.as_array().map(Vec::len), Some(0), "{left:#}");
    // And the human form says the same.
    let (code, out, _) = c
        .cli(&["drill", "switchover", "--resource", "web", "--probe", &probe])
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("RTO p50"), "{out}");

    // kill-node: the node running web is powered off through the cluster's fence device (the
    // harness's power switch), as a real failure; web comes back elsewhere.
    let victim = c
        .wait_for(T, "web settled", |st| {
            let s = st.values().next()?;
            runs_on(s, "web").filter(|_| s.plan_pending == 0)
        })
        .await
        .unwrap();
    let (code, out, err) = c
        .cli(&["drill", "kill-node", "--resource", "web", "--probe", &probe, "--json"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let run = &r["runs"][0];
    assert_eq!(run["from"].as_str(), Some(victim.as_str()), "{r:#}");
    assert_ne!(run["to"], run["from"], "{r:#}");
    let rto = run["rto_ms"].as_u64().expect("the service came back");
    assert!(rto > 0 && rto < T.as_millis() as u64, "{r:#}");
    assert!(
        c.fence_events().iter().any(|(_, plug, _)| *plug == victim),
        "the power switch acted on {victim}: {:?}",
        c.fence_events()
    );
    // With one node of three gone, powering another off would cost quorum: refused.
    let (code, _, err) = c
        .cli(&["drill", "kill-node", "--resource", "web", "--probe", &probe])
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("quorum needs 2"), "{err}");
}
