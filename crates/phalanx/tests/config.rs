//! The cluster's config lives in Raft (`phalanx config apply`), with real daemons: the first
//! leader commits its local file as version 1 and every node runs the committed version, whatever
//! its own file says (drift can no longer get a node fenced or make two nodes run one resource
//! with different params); an apply reloads or restarts only what it changed; a stale
//! `--expect-version` is refused; rollback restores an earlier text; a node down during an apply
//! runs the new version when it rejoins; a text with errors commits nothing.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_node::StatusReport;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

const RESOURCES: &str = r#"
[[resource]]
id = "dummy"
agent = "ocf:heartbeat:Dummy"
params = { fake = "1" }

[[resource]]
id = "p1"
agent = "process"
params = { command = "sleep 1001" }
monitor = { interval = "1s", timeout = "10s" }

[[resource]]
id = "p2"
agent = "process"
params = { command = "sleep 1002" }
monitor = { interval = "1s", timeout = "10s" }
"#;

fn cluster() -> LocalCluster {
    assert!(
        std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").is_file(),
        "Debian's resource-agents is not installed (.ci/run installs it)"
    );
    LocalCluster::create(Spec {
        nodes: 3,
        heartbeat: Duration::from_millis(100),
        links: 1,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        keep: std::env::var_os("PHALANX_KEEP").is_some(),
        extra_config: RESOURCES.into(),
        cluster_extra: String::new(),
    })
    .unwrap()
}

/// Where each resource runs, once every node agrees, all three run and nothing is pending.
fn placement(st: &BTreeMap<String, StatusReport>) -> Option<BTreeMap<String, String>> {
    let first = st.values().next()?;
    let p: BTreeMap<String, String> = first
        .resources
        .iter()
        .filter_map(|r| r.running.keys().next().map(|n| (r.id.clone(), n.clone())))
        .collect();
    let agreed = st.values().all(|s| {
        s.plan_pending == 0
            && s.resources
                .iter()
                .all(|r| r.running.len() == 1 && p.get(&r.id) == r.running.keys().next())
    });
    (agreed && p.len() == first.resources.len()).then_some(p)
}

/// The pid of process resource `rsc` on `node` (its pid file).
fn pid_of(c: &LocalCluster, node: &str, rsc: &str) -> Option<u32> {
    let f = c.node(node).ok()?.data_dir.join(format!("agents/{rsc}.pid"));
    std::fs::read_to_string(f).ok()?.lines().next()?.trim().parse().ok()
}

/// A log without its colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(ch) = it.next() {
        if ch == '\x1b' {
            for c in it.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn cli_json(c: &LocalCluster, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (code, out, err) = c.cli(&a).unwrap();
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_restarts_or_reloads_only_what_it_changed_and_history_diff_rollback_work() {
    let mut c = cluster();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    c.wait_for(T, "version 1 committed and run everywhere", |st| {
        st.values()
            .all(|s| s.config.as_ref().is_some_and(|v| v.version == 1) && s.running_config_version == 1)
            .then_some(())
    })
    .await
    .unwrap();
    let before = c.wait_for(T, "all three placed", placement).await.unwrap();
    let (p1_node, p2_node) = (before["p1"].clone(), before["p2"].clone());
    let (p1_pid, p2_pid) = (pid_of(&c, &p1_node, "p1").unwrap(), pid_of(&c, &p2_node, "p2").unwrap());

    // One param of p1 and one (reloadable) of dummy change; p2 does not.
    let v1 = std::fs::read_to_string(&c.config_path).unwrap();
    let v2 = v1
        .replace("sleep 1001", "sleep 1003")
        .replace("fake = \"1\"", "fake = \"2\"");
    let file = c.dir().join("v2.toml");
    std::fs::write(&file, &v2).unwrap();
    let dry = cli_json(&c, &["config", "apply", file.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry["committed"], false);
    let diff: Vec<String> = serde_json::from_value(dry["diff"].clone()).unwrap();
    assert_eq!(diff.len(), 2, "{diff:?}");
    assert!(
        diff.iter()
            .any(|l| l.contains("resource p1") && l.contains("sleep 1003")),
        "{diff:?}"
    );
    // The preview says what the switch does to what runs, before it is applied.
    let plan: Vec<String> = serde_json::from_value(dry["plan"].clone()).unwrap();
    assert!(
        plan.contains(&format!("Restart p1 on {p1_node} (params changed: command)"))
            && plan
                .iter()
                .any(|l| l.starts_with(&format!("Reload dummy on {}", before["dummy"]))),
        "{plan:?}"
    );
    let applied = cli_json(&c, &["config", "apply", file.to_str().unwrap(), "--yes"]);
    assert_eq!(
        (applied["committed"].as_bool(), applied["version"].as_u64()),
        (Some(true), Some(2))
    );
    // p1 restarts in place with its new command; p2 keeps its pid; dummy is reloaded, not
    // restarted.
    let deadline = std::time::Instant::now() + T;
    loop {
        let p1_now = pid_of(&c, &p1_node, "p1");
        let cmdline = p1_now
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok())
            .unwrap_or_default();
        if p1_now.is_some_and(|p| p != p1_pid) && cmdline.contains("1003") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "p1 was not restarted with its new command"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pid_of(&c, &p2_node, "p2"), Some(p2_pid), "p2 was touched");
    let dummy_log = c.log_path(&before["dummy"]);
    c.wait_for(T, "dummy reloaded", |_| {
        let log = strip_ansi(&std::fs::read_to_string(&dummy_log).ok()?);
        log.contains("rsc=dummy change=Reload(Reload)").then_some(())
    })
    .await
    .unwrap();
    // Both are in the event history: p1 restarted, dummy reloaded, and nothing about p2.
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, out, _) = c.cli(&["events", "--kind", "resource_reloaded"]).unwrap();
        if out.contains("p1 restarted on") && out.contains("dummy reloaded on") {
            assert!(!out.contains("p2"), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reload events: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = c.wait_for(T, "the same placement", placement).await.unwrap();
    assert_eq!(after, before);
    c.wait_for(T, "every node runs version 2", |st| {
        st.values().all(|s| s.running_config_version == 2).then_some(())
    })
    .await
    .unwrap();

    // Someone else's apply meanwhile: an apply that read version 1 is refused and changes nothing.
    let (code, out, err) = c
        .cli(&[
            "config",
            "apply",
            c.config_path.to_str().unwrap(),
            "--expect-version",
            "1",
            "--yes",
        ])
        .unwrap();
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("changed since version 1") && err.contains("409"), "{err}");
    // Errors: every one, with FILE:LINE:COL, and nothing committed.
    let bad = c.dir().join("bad.toml");
    std::fs::write(
        &bad,
        v2.replace("agent = \"process\"", "agent = \"process\"\non_fail = \"explode\""),
    )
    .unwrap();
    let (code, _, err) = c.cli(&["config", "apply", bad.to_str().unwrap(), "--yes"]).unwrap();
    assert_ne!(code, 0);
    let bad_name = bad.display().to_string();
    assert_eq!(
        err.matches(&format!("{bad_name}:")).count(),
        2,
        "both errors with their place: {err}"
    );
    let shown = cli_json(&c, &["config", "show"]);
    assert_eq!(
        (shown["version"].as_u64(), shown["text"].as_str()),
        (Some(2), Some(v2.as_str()))
    );

    let history = cli_json(&c, &["config", "history"]);
    let versions: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    assert_eq!(versions, vec![1, 2]);
    assert!(
        history[0]["author"].as_str().unwrap().starts_with("bootstrap"),
        "{history}"
    );
    let d = cli_json(&c, &["config", "diff", "1", "2"]);
    assert_eq!(d["diff"].as_array().unwrap().len(), 2, "{d}");
    // Rollback: version 3 is version 1's text, and p1 runs its first command again.
    let r = cli_json(&c, &["config", "rollback", "1", "--yes"]);
    assert_eq!(r["version"].as_u64(), Some(3), "{r}");
    let v3 = cli_json(&c, &["config", "show", "--version", "3"]);
    assert_eq!(v3["text"].as_str(), Some(v1.as_str()));
    c.wait_for(T, "p1 back on its first command", |_| {
        let p = pid_of(&c, &p1_node, "p1")?;
        std::fs::read_to_string(format!("/proc/{p}/cmdline"))
            .ok()
            .filter(|l| l.contains("1001"))
            .map(|_| ())
    })
    .await
    .unwrap();
    assert!(c.fence_events().is_empty(), "{:?}", c.fence_events());
}

/// Drift: n3's own file has another heartbeat interval, lacks a resource the others have (with a
/// location on n3) and gives p2 another param. Started after the others committed version 1, it
/// runs version 1: nothing is fenced, p2 runs with one command wherever it runs, and status says
/// that n3's local file differs. A node stopped during an apply runs the new version when it
/// comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_drifted_file_runs_the_committed_config_and_is_not_fenced() {
    let mut c = cluster();
    let v1 = std::fs::read_to_string(&c.config_path).unwrap();
    let v1 = format!("{v1}\n[[constraint]]\nlocation = \"dummy\"\nnode = \"n3\"\nscore = \"INFINITY\"\n");
    std::fs::write(&c.config_path, &v1).unwrap();
    // n3's file: an older one, without dummy and its location, another heartbeat, another p2.
    let dummy = "[[resource]]\nid = \"dummy\"\nagent = \"ocf:heartbeat:Dummy\"\nparams = { fake = \"1\" }\n";
    let drifted = v1
        .split("[[constraint]]")
        .next()
        .unwrap()
        .replace(dummy, "")
        .replace("heartbeat_interval = \"100ms\"", "heartbeat_interval = \"300ms\"")
        .replace("sleep 1002", "sleep 1009");
    assert_ne!(drifted, v1);
    c.set_local_config("n3", &drifted).unwrap();
    c.start("n1").unwrap();
    c.start("n2").unwrap();
    c.wait_for(T, "version 1 committed by n1 or n2", |st| {
        (st.len() == 2 && st.values().all(|s| s.running_config_version == 1)).then_some(())
    })
    .await
    .unwrap();
    c.start("n3").unwrap();
    let placed = c
        .wait_for(T, "all placed, dummy on n3", |st| {
            let p = placement(st).filter(|_| st.len() == 3)?;
            (p.get("dummy").map(String::as_str) == Some("n3")).then_some(p)
        })
        .await
        .unwrap();
    let n3 = c.status("n3").await.unwrap();
    assert_eq!((n3.running_config_version, n3.heartbeat_interval_ms), (1, 100));
    assert_eq!(n3.local_config_differs, Some(1));
    let (_, human, _) = c.cli(&["--api", &c.node("n3").unwrap().api.clone(), "status"]).unwrap();
    assert!(human.contains("local config differs from cluster v1"), "{human}");
    let p2 = pid_of(&c, &placed["p2"], "p2").unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{p2}/cmdline")).unwrap();
    assert!(cmdline.contains("1002"), "{cmdline}");

    // n2 stops cleanly; version 2 (a slower heartbeat) is applied; n2 runs it when back.
    let status = c.terminate("n2", T).await.unwrap();
    assert!(status.success());
    let v2 = v1.replace("heartbeat_interval = \"100ms\"", "heartbeat_interval = \"150ms\"");
    let file = c.dir().join("v2.toml");
    std::fs::write(&file, &v2).unwrap();
    let applied = cli_json(
        &c,
        &[
            "--api",
            &c.node("n1").unwrap().api.clone(),
            "config",
            "apply",
            file.to_str().unwrap(),
            "--yes",
        ],
    );
    assert_eq!(applied["version"].as_u64(), Some(2));
    c.start("n2").unwrap();
    c.wait_for(T, "n2 back, running version 2 at 150 ms", |st| {
        let s = st.get("n2")?;
        (st.len() == 3
            && st
                .values()
                .all(|s| s.running_config_version == 2 && s.heartbeat_interval_ms == 150))
        .then_some(s.clone())
    })
    .await
    .unwrap();
    assert!(c.fence_events().is_empty(), "{:?}", c.fence_events());
}
