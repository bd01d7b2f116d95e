//! The README's runbooks, run as written: each `sh` block of its "Runbooks" section is read from
//! README.md and run by bash (`-euo pipefail`, the `phalanx` under test first on PATH,
//! `PHALANX_CONFIG` pointing at a 3-node loopback cluster of real daemons), then the test checks
//! that it did what the runbook says, from the cluster's own event history and status.

use phalanx::harness::{runs_on, LocalCluster, Spec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

const SHOP: &str = r#"
[[resource]]
id = "db"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }

[[resource]]
id = "web"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }

[[group]]
id = "shop"
members = ["db", "web"]
"#;

/// The `sh` block under `### {title}` in the README's Runbooks section.
fn runbook(title: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let section = readme
        .split("\n## Runbooks\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a Runbooks section");
    let book = section
        .split(&format!("\n### {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no runbook {title:?}"));
    let book = book.split("\n### ").next().unwrap();
    let block = book
        .split("```sh\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{title}: no sh block"));
    block.split("\n```").next().unwrap().to_string()
}

/// Run a runbook against `c`; its stdout. Fails the test if a command fails.
fn run(c: &LocalCluster, title: &str) -> String {
    let script = runbook(title);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("PHALANX_CONFIG", c.dir().join("cluster.toml"))
        .env_remove("PHALANX_API")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(
        out.status.success(),
        "runbook {title:?} failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout
}

fn cluster() -> LocalCluster {
    let mut c = LocalCluster::create(Spec::loopback(
        3,
        PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        SHOP.to_string(),
    ))
    .unwrap();
    c.start_all().unwrap();
    c
}

/// Every node up in every view, nothing pending, shop placed: where.
async fn settled(c: &LocalCluster, nodes: usize) -> String {
    c.wait_for(T, "settled", |st| {
        let first = runs_on(st.values().next()?, "web")?;
        (st.len() == nodes
            && st.values().all(|s| {
                s.plan_pending == 0
                    && runs_on(s, "web").as_deref() == Some(first.as_str())
                    && s.nodes
                        .iter()
                        .filter(|n| n.liveness == phalanx_core::Liveness::Online)
                        .count()
                        >= nodes
            }))
        .then_some(first)
    })
    .await
    .unwrap()
}

fn events(c: &LocalCluster, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["events", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = c.cli(&all).unwrap();
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Move shop to `to`, wait until it runs there in every view, and clear the move.
async fn move_shop(c: &LocalCluster, to: &str) {
    let (code, _, err) = c.cli(&["resource", "move", "shop", "--to", to]).unwrap();
    assert_eq!(code, 0, "{err}");
    c.wait_for(T, &format!("shop on {to}"), |st| {
        st.values()
            .all(|s| s.plan_pending == 0 && runs_on(s, "web").as_deref() == Some(to))
            .then_some(())
    })
    .await
    .unwrap();
    let (code, _, err) = c.cli(&["resource", "clear", "shop"]).unwrap();
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_maintenance_runbooks_do_what_they_say() {
    let mut c = cluster();
    settled(&c, 3).await;
    move_shop(&c, "n1").await;

    // Standby: shop left n1 before the runbook went on, then n1 came out of standby.
    let out = run(&c, "Taking a node out for maintenance");
    assert!(out.contains("nothing runs there any more"), "{out}");
    let ev = events(&c, &[]);
    let pos = |f: &dyn Fn(&serde_json::Value) -> bool| ev.iter().position(f);
    let standby = pos(&|e| e["task"] == "standby").expect("standby recorded");
    let stopped = pos(&|e| e["kind"] == "resource_stopped" && e["node"] == "n1" && e["resource"] == "web").unwrap();
    let unstandby = pos(&|e| e["task"] == "unstandby").expect("unstandby recorded");
    assert!(standby < stopped && stopped < unstandby, "{ev:#?}");
    let st = c.status("n1").await.unwrap();
    assert!(st.nodes.iter().all(|n| !n.standby));

    // Maintenance on and off, recorded with its author.
    run(&c, "Preventing failover during planned work");
    let ops: Vec<String> = events(&c, &["--kind", "operator_command"])
        .iter()
        .map(|e| e["summary"].as_str().unwrap().to_string())
        .collect();
    let on = ops
        .iter()
        .position(|s| s.ends_with("maintenance on for the whole cluster"))
        .expect("on");
    let off = ops
        .iter()
        .position(|s| s.ends_with("maintenance off for the whole cluster"))
        .expect("off");
    assert!(on < off && ops[on].contains('@'), "{ops:#?}");

    // A node added, listed and removed.
    let out = run(&c, "Adding and removing a node");
    assert!(out.contains("n4"), "node list shows n4: {out}");
    let kinds: Vec<(String, String)> = events(&c, &["--node", "n4"])
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(kinds.contains(&("node_added".into(), "n4".into())), "{kinds:?}");
    assert!(kinds.contains(&("node_removed".into(), "n4".into())), "{kinds:?}");
    assert!(c.status("n1").await.unwrap().nodes.iter().all(|n| n.name != "n4"));

    // n2 stopped cleanly: its daemon exits by itself, nothing fenced it.
    move_shop(&c, "n2").await;
    run(&c, "Stopping a node for a reboot, with no fence and no surprise");
    let exit = c.wait_exit("n2", T).await.unwrap();
    assert!(exit.success(), "n2's daemon exited with {exit}");
    assert!(
        events(&c, &["--kind", "fence_requested,fence_succeeded"]).is_empty(),
        "nothing was fenced"
    );
    c.wait_for(T, "n2 recorded stopped, shop elsewhere", |st| {
        let s = st.get("n1")?;
        let n2 = s.nodes.iter().find(|n| n.name == "n2")?;
        let on = runs_on(s, "web")?;
        (n2.liveness == phalanx_core::Liveness::Stopped && on != "n2").then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_fencing_failure_runbook_recovers_the_resources() {
    let mut c = cluster();
    settled(&c, 3).await;
    move_shop(&c, "n3").await;
    // The fence device dies, then n3 (the power switch was its only way to be fenced).
    let switch = c.power_switch_pid().expect("the power switch runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(switch as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.kill("n3").unwrap();
    let deadline = Instant::now() + T;
    while events(&c, &["--kind", "fence_failed"]).is_empty() {
        assert!(Instant::now() < deadline, "fencing n3 never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = c.status("n1").await.unwrap();
    let on = runs_on(&st, "web");
    assert!(
        on.is_none() || on.as_deref() == Some("n3"),
        "web started on {on:?} before a fence"
    );
    let out = run(&c, "When fencing fails");
    assert!(out.contains("fence_failed"), "the runbook shows the failures: {out}");
    c.wait_for(T, "shop recovered on n1 or n2", |st| {
        let s = st.get("n1")?;
        let on = runs_on(s, "web")?;
        (on != "n3" && s.plan_pending == 0).then_some(())
    })
    .await
    .unwrap();
}
