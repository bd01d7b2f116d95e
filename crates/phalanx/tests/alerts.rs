//! Alerts on 3 real daemons: Pacemaker's own `alert_file.sh.sample` (Debian's pacemaker-common),
//! copied and used unchanged, writes a line for a node loss, its fence and the recovery of the
//! group it ran; a webhook receiver gets every alertable event in order; an alert program that
//! hangs is killed at its timeout, recorded as `alert_failed`, and the next event still reaches
//! it.

use phalanx::harness::{runs_on, LocalCluster, Spec};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const SAMPLE: &str = "/usr/share/pacemaker/alerts/alert_file.sh.sample";

/// A webhook receiver on loopback: every JSON body POSTed to it, in arrival order.
fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let got2 = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let got = got2.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Ok(v) = serde_json::from_slice(&body) {
                        got.lock().unwrap().push(v);
                    }
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (url, got)
}

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacemakers_sample_agent_a_webhook_and_a_hanging_program_each_get_their_alerts() {
    assert!(
        Path::new(SAMPLE).is_file(),
        "Pacemaker's sample alert agent is missing: .ci/run installs Debian's pacemaker-common"
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let agent = dir.join("alert_file.sh");
    std::fs::copy(SAMPLE, &agent).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.join("alerts.log");
    // Hangs the first time it is called, then records each call.
    let hang = script(
        dir,
        "hang.sh",
        &format!(
            "#!/bin/sh\nif [ ! -e {d}/hung ]; then touch {d}/hung; sleep 60; fi\necho \"$CRM_alert_node_sequence $PHALANX_event_kind\" >> {d}/hang.log\n",
            d = dir.display()
        ),
    );
    let (url, hooked) = webhook();
    let extra = format!(
        r#"
[[resource]]
id = "a"
agent = "ocf:heartbeat:Dummy"

[[resource]]
id = "b"
agent = "ocf:heartbeat:Dummy"

[[group]]
id = "g"
members = ["a", "b"]

[[alert]]
id = "file"
path = "{agent}"
recipient = "{log}"
select_nodes = true
select_fencing = true
select_resources = true

[[alert]]
id = "hook"
webhook = "{url}"

[[alert]]
id = "hang"
path = "{hang}"
timeout = "1s"
retries = 0
kinds = ["node", "resource"]
"#,
        agent = agent.display(),
        log = log.display(),
        hang = hang.display()
    );
    let mut c = LocalCluster::create(Spec::loopback(3, PathBuf::from(env!("CARGO_BIN_EXE_phalanx")), extra)).unwrap();
    c.start_all().unwrap();
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
    // g on a node that is not the leader (the leader keeps delivering throughout).
    let victim = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap()
        .to_string();
    let (code, _, err) = c.cli(&["resource", "move", "g", "--to", &victim]).unwrap();
    assert_eq!(code, 0, "{err}");
    c.wait_for(T, "g on the victim", |st| {
        st.values()
            .all(|s| s.plan_pending == 0 && runs_on(s, "b").as_deref() == Some(victim.as_str()))
            .then_some(())
    })
    .await
    .unwrap();
    let (code, _, err) = c.cli(&["resource", "clear", "g"]).unwrap();
    assert_eq!(code, 0, "{err}");
    c.kill(&victim).unwrap();
    let moved = c
        .wait_for(T, "g restarted elsewhere after a fence", |st| {
            let s = st.get(&leader)?;
            let to = runs_on(s, "b").filter(|n| *n != victim && s.plan_pending == 0)?;
            s.nodes.iter().find(|n| n.name == victim)?.fence.fenced.then_some(to)
        })
        .await
        .unwrap();

    // Pacemaker's sample agent, unchanged, wrote the loss, the fence and the recovery.
    let want = [
        format!("Node '{victim}' is now 'lost'"),
        format!("Fencing Operation reboot of {victim} by "),
        format!("Resource operation 'start' for 'a' on '{moved}': OK"),
        format!("Resource operation 'start' for 'b' on '{moved}': OK"),
    ];
    let deadline = Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if want.iter().all(|w| text.contains(w.as_str())) {
            assert!(!text.contains("Unhandled"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alert_file.sh wrote:\n{text}\nwanted {want:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The webhook got every alertable event from its first on, in order, each once.
    let (code, out, _) = c
        .cli(&["--api", &c.node(&leader).unwrap().api, "events", "--json"])
        .unwrap();
    assert_eq!(code, 0);
    let history: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last_start = history
        .iter()
        .filter(|e| e["kind"] == "resource_started" && e["resource"] == "b")
        .map(|e| e["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    let deadline = Instant::now() + T;
    let hooked_seqs = loop {
        let seqs: Vec<u64> = hooked
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        if seqs.last().is_some_and(|l| *l >= last_start) {
            break seqs;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook got {seqs:?}, not up to #{last_start}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = hooked_seqs[0];
    let alertable: Vec<u64> = history
        .iter()
        .filter(|e| {
            let k = e["kind"].as_str().unwrap();
            k != "fence_requested" && k != "alert_failed"
        })
        .map(|e| e["seq"].as_u64().unwrap())
        .filter(|s| *s >= first && *s <= *hooked_seqs.last().unwrap())
        .collect();
    // At least once: a leader change during start-up may resend what the old leader sent last
    // (never out of order otherwise).
    let mut firsts = Vec::new();
    for s in &hooked_seqs {
        if firsts.last().is_none_or(|l| s > l) {
            firsts.push(*s);
        }
    }
    assert_eq!(
        firsts, alertable,
        "every alertable event, in order: got {hooked_seqs:?}"
    );
    let kinds: Vec<String> = hooked
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    for k in ["node_lost", "fence_succeeded", "resource_started", "operator_command"] {
        assert!(kinds.iter().any(|x| x == k), "the webhook never got {k}: {kinds:?}");
    }

    // The hanging program was killed at its timeout, recorded, and called again for later events.
    let deadline = Instant::now() + T;
    loop {
        let (_, out, _) = c
            .cli(&[
                "--api",
                &c.node(&leader).unwrap().api,
                "events",
                "--json",
                "--kind",
                "alert_failed",
            ])
            .unwrap();
        let calls = std::fs::read_to_string(dir.join("hang.log")).unwrap_or_default();
        if out.contains("alert hang could not deliver") && calls.contains("node_lost") {
            assert!(out.contains("did not finish within 1000 ms"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "alert_failed: {out}\nhang.log: {calls}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
