//! `phalanx drill switchover` on 3 real daemons running the demo HTTP service (a `process`
//! resource answering on 127.0.10.K on node nK; the probe is a client that tries every node's
//! address): each run moves the service to another node, measures from the client's side, and
//! clears its move; kill-service SIGKILLs the service and kill-node powers its node off; bad
//! flags, an unhealthy service and a second drill at once are refused before anything moves;
//! the runs are in the history and /metrics, and availability counts their outages as planned.

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
            vec!["drill", "lb-backend-down", "--resource", "web", "--probe", &probe],
            "web is not a balancer: lb-backend-down takes a backend of a [[balancer]] down (balancers: none)",
        ),
        (
            vec![
                "drill",
                "kill-node",
                "--resource",
                "web",
                "--node",
                "n9",
                "--probe",
                &probe,
            ],
            "no node named \"n9\" (nodes: n1, n2, n3)",
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

    // Every run is in the event history, between its drill's begin and end, and in /metrics.
    let (code, out, err) = c
        .cli(&["events", "--kind", "drill_started,drill_run,drill_ended", "--json"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want = [
        "drill_started",
        "drill_run",
        "drill_run",
        "drill_ended",
        "drill_started",
        "drill_run",
        "drill_ended",
    ];
    assert_eq!(kinds, want, "{out}");
    assert!(out.contains("\"rto_ms="), "{out}");
    let api = c.node("n1").unwrap().api.clone();
    let token = c.api_token().unwrap();
    let http = c.operator_http().unwrap();
    let metrics = c.api_get("n1", "/metrics").await.unwrap();
    assert!(
        metrics.contains("phalanx_drill_rto_seconds_count{scenario=\"switchover\"} 3"),
        "{metrics}"
    );

    // One drill at a time: while another operator's drill holds the slot, a drill is refused
    // and moves nothing; once that drill ends, drills run again.
    let begin = http
        .post(LocalCluster::url(&api, "/v1/drills/42"))
        .bearer_auth(&token)
        .header("x-phalanx-operator", "alice@ops")
        .body(r#"{"scenario":"switchover","resource":"web","node":"n1","bound_ms":600000}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(begin.status(), 200, "{}", begin.text().await.unwrap());
    let before = c.statuses().await.values().next().and_then(|s| runs_on(s, "web"));
    let (code, _, err) = c
        .cli(&["drill", "switchover", "--resource", "web", "--probe", &probe])
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("drill switchover of web is running (started by alice@ops"),
        "{err}"
    );
    let after = c.statuses().await.values().next().and_then(|s| runs_on(s, "web"));
    assert_eq!(before, after, "a refused drill moved nothing");
    let end = http
        .post(LocalCluster::url(&api, "/v1/drills/42/steps"))
        .bearer_auth(&token)
        .body(r#"{"scenario":"switchover","resource":"web","step":{"End":{"aborted":null}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(end.status(), 200, "{}", end.text().await.unwrap());

    // kill-service: web's process is SIGKILLed on its node; its monitor finds it gone and the
    // cluster restarts it.
    let (code, out, err) = c
        .cli(&[
            "drill",
            "kill-service",
            "--resource",
            "web",
            "--probe",
            &probe,
            "--json",
        ])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rto = r["runs"][0]["rto_ms"].as_u64().expect("the service came back");
    assert!(rto > 0 && r["runs"][0]["failed"].as_u64().unwrap() > 0, "{r:#}");

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

    // Availability counts every drill outage as planned: computed here by hand from the events
    // (web down from its stop, or the loss of its node, to its next start), it is the report's.
    let (code, out, err) = c.cli(&["events", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (mut on, mut down_since, mut planned, mut outages) = (None::<String>, None::<u64>, 0u64, 0);
    for e in &events {
        let (kind, node, t) = (
            e["kind"].as_str().unwrap(),
            e["node"].as_str().unwrap(),
            e["time_ms"].as_u64().unwrap(),
        );
        let web = e["resource"].as_str() == Some("web");
        match kind {
            "resource_started" if web => {
                if let Some(since) = down_since.take() {
                    planned += t - since;
                    outages += 1;
                }
                on = Some(node.to_string());
            }
            "resource_stopped" | "monitor_failed" if web && on.as_deref() == Some(node) => {
                down_since.get_or_insert(t);
                on = None;
            }
            "node_lost" | "fence_succeeded" if on.as_deref() == Some(node) => {
                down_since.get_or_insert(t);
                on = None;
            }
            _ => {}
        }
    }
    let (code, out, err) = c.cli(&["availability", "--resource", "web", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let web = &r["resources"][0];
    assert_eq!(outages, 5, "3 switchovers, a killed service and a killed node: {out}");
    assert_eq!(web["planned_down_ms"].as_u64(), Some(planned), "{out}");
    assert_eq!(
        (web["down_ms"].as_u64(), web["failures"].as_u64()),
        (Some(0), Some(0)),
        "{out}"
    );
}

/// cut-link and pause-node on fresh 3-node clusters (two links each) with the session store
/// on: the drill's session writer writes through every node's memcached port meanwhile. One
/// link of web's node down moves nothing and fails no probe; every link down isolates it: it
/// is fenced (the power switch acts on it) and web comes back elsewhere, with no acknowledged
/// session write lost. A paused daemon likewise, and a killed node whose first fence fails
/// (fence-fail: recovered by the retry); a fence that keeps failing beyond the settle bound
/// aborts the drill, which says why and heals the devices, and the cluster then recovers.
/// `--plot` writes the SVG timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_link_and_pause_node_fence_the_node_and_lose_no_session_write() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let port = phalanx::demo::service_port(3).unwrap();
    let (sessions, _) = phalanx::demo::sessions_section(3).unwrap();
    let extra = phalanx::demo::service_resource(&exe, "web", port) + &sessions;
    let probe: Vec<String> = (1..=3)
        .map(|i| format!("http://{}/", phalanx::demo::service_addr(&format!("n{i}"), port)))
        .collect();
    let probe = probe.join(",");
    for scenario in ["cut-link", "pause-node", "fence-fail", "fence-fail-forever"] {
        let spec = Spec {
            links: 2,
            ..Spec::loopback(3, exe.clone(), extra.clone())
        };
        let mut c = LocalCluster::create(spec).unwrap();
        c.start_all().unwrap();
        c.wait_stable(T).await.unwrap();
        let victim = c
            .wait_for(T, "web runs", |st| {
                let s = st.values().next()?;
                runs_on(s, "web").filter(|_| s.plan_pending == 0)
            })
            .await
            .unwrap();
        // The `process` agent's start returns once the service runs, not once it listens: the
        // drill refuses a service that does not answer, so wait until it does (a loaded run
        // once probed it first).
        let url = format!("http://{}/", phalanx::demo::service_addr(&victim, port));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let deadline = std::time::Instant::now() + T;
        while !http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(std::time::Instant::now() < deadline, "web does not answer at {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if scenario == "fence-fail-forever" {
            // The fence devices fail beyond the settle bound: the drill aborts, says why, heals
            // them, and the cluster's next fence recovers web.
            let (code, _, err) = c
                .cli(&[
                    "drill",
                    "fence-fail",
                    "--resource",
                    "web",
                    "--probe",
                    &probe,
                    "--fence-failures",
                    "100",
                    "--settle",
                    "3s",
                ])
                .unwrap();
            assert_ne!(code, 0);
            assert!(
                err.contains("web did not settle within 3s: the drill is aborted (the fence devices healed)"),
                "{err}"
            );
            c.wait_for(T, "web recovered once the devices healed", |st| {
                st.values()
                    .next()
                    .and_then(|s| runs_on(s, "web"))
                    .filter(|n| *n != victim)
            })
            .await
            .unwrap();
            let (_, out, _) = c
                .cli(&["events", "--kind", "drill_ended,fence_failed", "--json"])
                .unwrap();
            assert!(out.contains("aborted=web did not settle"), "{out}");
            assert!(out.contains("fence_failed"), "{out}");
            continue;
        }
        let plot = c.dir().join(format!("{scenario}.svg"));
        let (code, out, err) = c
            .cli(&[
                "drill",
                scenario,
                "--resource",
                "web",
                "--probe",
                &probe,
                "--plot",
                plot.to_str().unwrap(),
                "--json",
            ])
            .unwrap();
        assert_eq!(code, 0, "{scenario}: {err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        let runs = r["runs"].as_array().unwrap();
        assert_eq!(runs.len(), if scenario == "cut-link" { 2 } else { 1 }, "{r:#}");
        if scenario == "fence-fail" {
            assert!(
                runs[0]["fence_failures"].as_u64().unwrap() >= 1,
                "a fence failed first: {r:#}"
            );
        }
        if scenario == "cut-link" {
            let one = &runs[0];
            assert_eq!(one["fault"], format!("link 0 of {victim} down"), "{r:#}");
            assert_eq!(
                (&one["from"], one["failed"].as_u64()),
                (&one["to"], Some(0)),
                "nothing moves: {r:#}"
            );
        }
        let out_run = runs.last().unwrap();
        assert_eq!(out_run["from"].as_str(), Some(victim.as_str()), "{r:#}");
        assert_ne!(out_run["to"], out_run["from"], "{r:#}");
        assert!(out_run["fenced_ms"].as_u64().is_some(), "the node was fenced: {r:#}");
        assert!(out_run["rto_ms"].as_u64().is_some(), "the service came back: {r:#}");
        assert!(out_run["session_writes_acked"].as_u64().unwrap() > 0, "{r:#}");
        assert_eq!(
            r["rpo_writes"].as_u64(),
            Some(0),
            "no acknowledged session write lost: {r:#}"
        );
        assert!(
            c.fence_events().iter().any(|(_, plug, _)| *plug == victim),
            "the power switch acted on {victim}"
        );
        let svg = std::fs::read_to_string(&plot).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains(&format!("drill {scenario} of web")),
            "{svg}"
        );
    }
}

/// A balancer `lb` (TCP, round robin) over a clone of the demo service on the 3 nodes:
/// `lb-backend-down` kills one instance's process; probed through the balancer, the clients see
/// no outage (connections the dead backend refuses are tried on another), and the run ends once
/// the monitor restarted it and the balancer's checks took it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lb_backend_down_drill_measures_the_clients_of_the_balancer() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let port = phalanx::demo::service_port(3).unwrap();
    let listen = std::net::TcpListener::bind("127.0.12.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = format!(
        r#"{}
[[clone]]
id = "webs"
resource = "web"

[[balancer]]
id = "lb"
listen = ["{listen}"]
algorithm = "roundrobin"
backends = "webs"
port = {port}
addresses = {{ n1 = "127.0.10.1", n2 = "127.0.10.2", n3 = "127.0.10.3" }}
check = {{ interval = "200ms", rise = 2, fall = 3, timeout = "100ms" }}
"#,
        phalanx::demo::service_resource(&exe, "web", port)
    );
    let mut c = LocalCluster::create(Spec::loopback(3, exe, extra)).unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    // Every instance up behind the balancer.
    wait_backends_up(&c, 3).await;
    let probe = format!("http://{listen}/");
    for (args, says) in [
        (
            vec![
                "drill",
                "lb-backend-down",
                "--resource",
                "lb",
                "--node",
                "n7",
                "--probe",
                &probe,
            ],
            "no node named \"n7\"",
        ),
        (
            vec!["drill", "lb-backend-down", "--resource", "web", "--probe", &probe],
            "web is not a balancer",
        ),
    ] {
        let (code, _, err) = c.cli(&args).unwrap();
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, out, err) = c
        .cli(&[
            "drill",
            "lb-backend-down",
            "--resource",
            "lb",
            "--node",
            "n2",
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
    for run in runs {
        assert_eq!(run["from"], "web@n2", "{r:#}");
        assert_eq!(run["to"], "web@n2", "back in rotation: {r:#}");
        assert_eq!(run["fault"], "backend web@n2 down", "{r:#}");
        // Seen by the monitor or the balancer's checks, restarted, never fenced.
        let (detected, started) = (run["detected_ms"].as_u64(), run["started_ms"].as_u64());
        assert!(detected.is_some() && started.is_some(), "{r:#}");
        assert!(started >= detected, "{r:#}");
        assert!(run["fenced_ms"].is_null(), "{r:#}");
        assert_eq!(run["rto_bound_ms"], 100, "{r:#}");
        // The balancer's clients: no outage (a probe caught in flight by the kill may fail).
        assert!(run["failed"].as_u64().unwrap() <= 2, "{r:#}");
        assert!(run["probes"].as_u64().unwrap() > 10, "{r:#}");
    }
    // The instance was restarted where it ran, and the history holds the runs.
    let st = c.statuses().await;
    let web = st
        .values()
        .next()
        .unwrap()
        .resources
        .iter()
        .find(|r| r.id == "web")
        .unwrap()
        .clone();
    assert!(web.running.contains_key("n2"), "{web:?}");
    assert_eq!(web.failures.get("n2"), Some(&2), "{web:?}");
    let (code, out, err) = c.cli(&["events", "--kind", "drill_run", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("drill lb-backend-down of lb"), "{out}");
    // A backend that is not up, and the last one up, are refused.
    for n in ["n3", "n1"] {
        let (code, _, err) = c.cli(&["resource", "ban", "web", "--node", n]).unwrap();
        assert_eq!(code, 0, "{err}");
    }
    wait_backends_up(&c, 1).await;
    let (code, _, err) = c
        .cli(&[
            "drill",
            "lb-backend-down",
            "--resource",
            "lb",
            "--node",
            "n3",
            "--probe",
            &probe,
        ])
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("no backend of lb runs on n3") || err.contains("backend web@n3 of lb is down now"),
        "{err}"
    );
    let (code, _, err) = c
        .cli(&["drill", "lb-backend-down", "--resource", "lb", "--probe", &probe])
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("lb has 1 backend(s) up: taking web@n2 down would be an outage"),
        "{err}"
    );
    c.stop_all();
}

/// Wait until balancer `lb` has exactly `n` backends up (`phalanx balancer status`).
async fn wait_backends_up(c: &LocalCluster, n: usize) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, out, _) = c.cli(&["balancer", "status", "lb", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let up = v[0]["status"]["backends"]
            .as_array()
            .map_or(0, |b| b.iter().filter(|b| b["state"] == "up").count());
        if up == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{n} backends up: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
