//! `phalanx status` at crm_mon's level and `/metrics` at ha_cluster_exporter's, on 3 real
//! daemons: `status --check` exits 0 healthy, 1 degraded (a node lost), 2 critical (no quorum,
//! then nobody answering), each with its one Nagios line; `--json` validates against
//! `docs/status.schema.json`; maintenance shows in human and JSON output; a node without quorum
//! shows every placement unknown (never a stale "Started"); a move, a resource failure and a
//! fence each change the expected series, scraped without a token from `metrics_listen`, and
//! `promtool check metrics` accepts the text; after the leader is killed (and fenced) the new
//! leader is recorded as the fence device's checker.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_core::scheduler::Role;
use phalanx_node::StatusReport;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

const WEB: &str = r#"
[[resource]]
id = "web"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }
migration_threshold = 3
failure_timeout = "10m"
"#;

fn free_port() -> u16 {
    phalanx_node::ports::free_tcp_port().expect("a free port")
}

/// GET /metrics from `addr` with no token (the `metrics_listen` router).
fn scrape(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("scrape answered {head}")));
    }
    Ok(body.to_string())
}

/// The value of series `name` whose labels include every one of `labels`.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (lab, v) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, want)| lab.split(',').any(|p| p == format!("{k}=\"{want}\"")))
            .then(|| v.trim().parse().ok())?
    })
}

/// `promtool check metrics` on `text` (Debian's prometheus package; `tests/run` installs it).
fn promtool_accepts(text: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!(
            "\n\n*** WARNING: promtool is not installed: `promtool check metrics` SKIPPED (tests/run installs Debian's prometheus package) ***\n\n"
        );
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Poll `f` until it answers Some, for at most `within`.
async fn until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn web_on(s: &StatusReport) -> Option<String> {
    let r = s.resources.iter().find(|r| r.id == "web")?;
    let (n, role) = r.running.iter().next()?;
    (r.running.len() == 1 && *role == Role::Started && s.plan_pending == 0).then(|| n.clone())
}

fn check(c: &LocalCluster) -> (i32, String) {
    let (code, out, err) = c.cli(&["status", "--check"]).expect("running phalanx");
    assert_eq!(out.lines().count(), 1, "one line: {out:?} (stderr {err})");
    (code, out.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_codes_schema_and_metrics_follow_moves_failures_fences_and_quorum_loss() {
    assert!(
        std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").is_file(),
        "Debian's resource-agents is not installed (tests/run installs it)"
    );
    let mut c = LocalCluster::create(Spec::loopback(3, PathBuf::from(env!("CARGO_BIN_EXE_phalanx")), WEB)).unwrap();
    // Every node serves /metrics without a token on its metrics_listen.
    let mut text = std::fs::read_to_string(&c.config_path).unwrap();
    let mut metrics = std::collections::BTreeMap::new();
    for n in ["n1", "n2", "n3"] {
        let addr = format!("127.0.0.1:{}", free_port());
        let api = c.node(n).unwrap().api.clone();
        text = text.replacen(
            &format!("api = \"{api}\"\n"),
            &format!("api = \"{api}\"\nmetrics_listen = \"{addr}\"\n"),
            1,
        );
        metrics.insert(n.to_string(), addr);
    }
    std::fs::write(&c.config_path, text).unwrap();
    c.start_all().unwrap();

    // Healthy: web placed, every node recorded the config version it runs, and the fence
    // device is recorded as checked by the leader.
    let (first, leader) = c
        .wait_for(T, "web placed, config versions and device checker recorded", |st| {
            let leader = c.agreed_leader(st)?;
            let s = st.values().next()?;
            let on = web_on(s)?;
            let recorded = st.values().all(|s| {
                s.nodes.len() == 3
                    && s.nodes.iter().all(|n| n.config_version == Some(1))
                    && s.devices
                        .iter()
                        .all(|d| d.checked_by.as_deref() == Some(leader.as_str()))
            });
            (recorded && st.values().all(|s| web_on(s).as_deref() == Some(on.as_str()))).then_some((on, leader))
        })
        .await
        .unwrap();
    let (code, line) = check(&c);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("PHALANX OK - quorum 3/3"), "{line}");
    // Only the leader checks devices, and says when it last did.
    let s = c.status(&leader).await.unwrap();
    assert!(s.devices.iter().all(|d| d.last_checked_ms.is_some()), "{:?}", s.devices);

    // --watch redraws in place: clear screen, the report, again every --interval.
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .arg("--config")
        .arg(&c.config_path)
        .args(["status", "--watch", "--interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut seen, mut buf) = (String::new(), [0u8; 4096]);
        while seen.matches("\x1b[H\x1b[2JCluster: demo").count() < 3 {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = reader.join().unwrap();
    assert!(
        seen.matches("\x1b[H\x1b[2JCluster: demo").count() >= 3 && seen.contains("Every 200ms"),
        "three redraws: {seen:?}"
    );

    // --json: schema 1, valid against docs/status.schema.json.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/status.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let (code, out, err) = c.cli(&["status", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "status --json against its schema: {errors:#?}\n{out}"
    );
    assert_eq!(json["schema"], 1);

    // Metrics, no token: every (resource, node, role) series present, web started where it runs.
    let m = scrape(&metrics["n1"]).unwrap();
    promtool_accepts(&m);
    for n in ["n1", "n2", "n3"] {
        let want = if n == first { 1.0 } else { 0.0 };
        let got = series(
            &m,
            "phalanx_resources",
            &[("resource", "web"), ("node", n), ("role", "started")],
        );
        assert_eq!(got, Some(want), "web started on {n}:\n{m}");
        assert_eq!(series(&m, "phalanx_config_version", &[("node", n)]), Some(1.0), "{m}");
        assert_eq!(
            series(&m, "phalanx_resource_failures", &[("resource", "web"), ("node", n)]),
            Some(0.0)
        );
    }
    assert_eq!(
        series(&m, "phalanx_migration_threshold", &[("resource", "web")]),
        Some(3.0)
    );
    assert_eq!(series(&m, "phalanx_quorum", &[]), Some(1.0));
    let last_seq = series(&m, "phalanx_events_last_seq", &[]).unwrap();
    assert!(last_seq >= 5.0, "the history has the cluster's formation: {last_seq}");
    assert_eq!(
        series(
            &m,
            "phalanx_fence_attempts_total",
            &[("device", "power"), ("level", "1"), ("result", "success")]
        ),
        Some(0.0),
        "fence attempt counters start at 0:\n{m}"
    );

    // A move: web goes to the leader (through another node first if it runs there already),
    // so that the fence below takes the leader and its successor checks the device.
    let on = |m: &str, n: &str| {
        series(
            m,
            "phalanx_resources",
            &[("resource", "web"), ("node", n), ("role", "started")],
        )
    };
    let target = leader.clone();
    let mut moves = vec![target.clone()];
    if first == target {
        let other = ["n1", "n2", "n3"].into_iter().find(|n| *n != target).unwrap();
        moves.insert(0, other.to_string());
    }
    for to in &moves {
        let (code, _, err) = c
            .cli(&["resource", "move", "web", "--to", to, "--lifetime", "1h"])
            .unwrap();
        assert_eq!(code, 0, "{err}");
        c.wait_for(T, "web moved", |st| {
            st.values()
                .all(|s| web_on(s).as_deref() == Some(to.as_str()))
                .then_some(())
        })
        .await
        .unwrap();
    }
    let watcher = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != target)
        .unwrap()
        .to_string();
    let m = scrape(&metrics[&watcher]).unwrap();
    let before = moves
        .len()
        .checked_sub(2)
        .map(|i| moves[i].clone())
        .unwrap_or(first.clone());
    assert_eq!((on(&m, &target), on(&m, &before)), (Some(1.0), Some(0.0)), "{m}");
    assert_eq!(
        series(
            &m,
            "phalanx_operator_constraint",
            &[("resource", "web"), ("node", &target), ("kind", "move")]
        ),
        Some(1.0),
        "{m}"
    );
    let expiry = series(
        &m,
        "phalanx_operator_constraint_expiry_timestamp_seconds",
        &[("resource", "web"), ("node", &target), ("kind", "move")],
    )
    .unwrap_or(0.0);
    assert!(expiry > 1.7e9, "the move's expiry is a unix time: {expiry}");
    let (_, human, _) = c.cli(&["status"]).unwrap();
    assert!(
        human.contains(&format!("move web to {target} (by ")) && human.contains("expires in 59m"),
        "{human}"
    );

    // Maintenance, in human and JSON output, and back.
    assert_eq!(c.cli(&["maintenance", "on"]).unwrap().0, 0);
    let (_, human, _) = c.cli(&["status"]).unwrap();
    let (_, json, _) = c.cli(&["status", "--json"]).unwrap();
    assert!(human.contains("MAINTENANCE: the whole cluster"), "{human}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["maintenance"],
        true
    );
    assert_eq!(c.cli(&["maintenance", "off"]).unwrap().0, 0);
    c.wait_for(T, "maintenance off", |st| {
        st.values().all(|s| !s.maintenance).then_some(())
    })
    .await
    .unwrap();

    // A resource failure: its state file gone, the monitor fails and web recovers.
    let state_file = c.node(&target).unwrap().data_dir.join("agents/rsctmp/Dummy-web.state");
    std::fs::remove_file(&state_file).unwrap();
    c.wait_for(T, "the failure recorded and web recovered", |st| {
        st.values()
            .all(|s| s.failed_actions.iter().any(|f| f.resource == "web" && f.node == target) && web_on(s).is_some())
            .then_some(())
    })
    .await
    .unwrap();
    let m = scrape(&metrics[&watcher]).unwrap();
    assert_eq!(
        series(
            &m,
            "phalanx_resource_failures",
            &[("resource", "web"), ("node", &target)]
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        series(
            &m,
            "phalanx_resource_failures_expiry_timestamp_seconds",
            &[("resource", "web"), ("node", &target)]
        )
        .is_some_and(|t| t > 1.7e9),
        "{m}"
    );
    let (_, human, _) = c.cli(&["status"]).unwrap();
    assert!(
        human.contains(&format!("fail counts: {target}=1")) && human.contains("expires in 9m"),
        "{human}"
    );
    assert!(
        human.contains(&format!(
            "Failed resource actions:\n  * web on {target}: 1 soft failure(s)"
        )),
        "{human}"
    );

    // A fence: the leader, running web, is killed; it is fenced through the power switch, web
    // moves, and the new leader records itself as the fence device's checker (it used to stay
    // "checked by" the old leader for good).
    let victim = c
        .wait_for(T, "web placed after recovery", |st| st.values().next().and_then(web_on))
        .await
        .unwrap();
    assert_eq!(victim, leader, "the move keeps web on the leader");
    c.kill(&victim).unwrap();
    let new_leader = c
        .wait_for(T, "victim fenced, web moved, the new leader checks the device", |st| {
            let l = c.agreed_leader(st)?;
            st.values()
                .all(|s| {
                    let fenced = s.nodes.iter().any(|n| n.name == victim && n.fence.fenced);
                    let checker = s.devices.iter().all(|d| d.checked_by.as_deref() == Some(l.as_str()));
                    fenced && checker && web_on(s).is_some_and(|n| n != victim)
                })
                .then_some(l)
        })
        .await
        .unwrap();
    assert_ne!(new_leader, victim);
    let (code, line) = check(&c);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("PHALANX WARNING - ") && line.contains(&format!("node {victim} offline")),
        "{line}"
    );
    let m = scrape(&metrics[&watcher]).unwrap();
    promtool_accepts(&m);
    assert_eq!(
        series(&m, "phalanx_node_fenced", &[("node", &victim)]),
        Some(1.0),
        "{m}"
    );
    assert!(series(&m, "phalanx_node_last_fenced_timestamp_seconds", &[("node", &victim)]).is_some_and(|t| t > 1.7e9));
    assert_eq!(
        series(&m, "phalanx_nodes", &[("node", &victim), ("status", "offline")]),
        Some(1.0),
        "{m}"
    );
    // The attempt is counted by the node that ran it, each node its own counter.
    let mut attempts = 0.0;
    for n in c.running() {
        let m = scrape(&metrics[&n]).unwrap();
        attempts += series(
            &m,
            "phalanx_fence_attempts_total",
            &[("device", "power"), ("result", "success")],
        )
        .unwrap_or(0.0);
    }
    assert!(attempts >= 1.0, "a successful fence attempt counted");
    let (_, human, _) = c.cli(&["status"]).unwrap();
    eprintln!("status after the fence:\n{human}");
    assert!(
        human.contains(&format!("Fencing history:\n  * {victim}: fenced ")) && human.contains("(level 1: power)"),
        "{human}"
    );
    assert!(
        human.contains(&format!("(checked by {new_leader} every 1m0s")),
        "{human}"
    );

    // The third node lost too: the last one has no quorum. CRITICAL, placement unknown, metrics
    // still served.
    let mut survivors = c.running();
    survivors.sort();
    let (last, gone) = (survivors[0].clone(), survivors[1].clone());
    c.kill(&gone).unwrap();
    let line = until(T, "no quorum", || {
        let (code, line) = check(&c);
        (code == 2).then_some(line)
    })
    .await;
    assert!(
        line.starts_with(&format!("PHALANX CRITICAL - no quorum on {last}")),
        "{line}"
    );
    let s = c.status(&last).await.unwrap();
    assert!(!s.placement_known && s.resources.iter().all(|r| r.state == "unknown"));
    let (_, human, _) = c.cli(&["status"]).unwrap();
    eprintln!("status without quorum:\n{human}");
    let web_line = human
        .lines()
        .find(|l| l.trim_start().starts_with("* web "))
        .unwrap_or_default();
    assert!(
        web_line.contains(&format!("UNKNOWN (no quorum on {last}")) && !web_line.contains("Started"),
        "{human}"
    );
    let m = scrape(&metrics[&last]).unwrap();
    assert_eq!(series(&m, "phalanx_quorum", &[]), Some(0.0));
    assert_eq!(series(&m, "phalanx_placement_known", &[]), Some(0.0));
    for n in ["n1", "n2", "n3"] {
        assert_eq!(on(&m, n), Some(0.0), "no Started series without quorum:\n{m}");
    }
    promtool_accepts(&m);

    // Nobody answers: CRITICAL, unreachable.
    c.kill(&last).unwrap();
    let (code, line) = check(&c);
    assert_eq!(code, 2, "{line}");
    assert!(line.starts_with("PHALANX CRITICAL - cluster unreachable"), "{line}");
}
