//! Fencing for real, on 3 daemon processes: Debian's `fence_dummy` (fence-agents) is every
//! node's level-1 device, called exactly as Pacemaker calls it. Kill the node running `web`: it
//! is fenced through fence_dummy, and `web` starts elsewhere only after that fence is recorded
//! (checked on every status poll). With a device that always fails, `web` stays stopped and the
//! cluster keeps retrying, with backoff, saying why. A device that cannot be reached is
//! reported by its monitor in every node's status. A stop that fails gets its node fenced (the
//! harness's power switch kills it) before the resource starts elsewhere.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_node::StatusReport;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

const WEB: &str = r#"
[[resource]]
id = "web"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }
"#;

/// `device` is level 1 of every node (the harness's power switch is not used).
fn levels(device: &str) -> String {
    (1..=3)
        .map(|i| format!("\n[[fence_level]]\ntarget = \"n{i}\"\nlevel = 1\ndevices = [\"{device}\"]\n"))
        .collect()
}

/// One cluster at a time: four 3-node clusters starting at once on a 2-core machine miss
/// heartbeats, and with fencing a missed-heartbeat suspicion gets a node shot.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster(extra: &str) -> LocalCluster {
    assert!(
        std::path::Path::new("/usr/sbin/fence_dummy").is_file(),
        "Debian's fence-agents is not installed (.ci/run installs it)"
    );
    let mut c = LocalCluster::create(Spec {
        nodes: 3,
        heartbeat: Duration::from_millis(100),
        links: 1,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        keep: std::env::var_os("PHALANX_KEEP").is_some(),
        extra_config: extra.to_string(),
        cluster_extra: String::new(),
    })
    .unwrap();
    c.start_all().unwrap();
    c
}

/// Where `rsc` runs in one node's view.
fn runs_on(s: &StatusReport, rsc: &str) -> Option<String> {
    s.resources
        .iter()
        .find(|r| r.id == rsc)
        .and_then(|r| r.running.keys().next().cloned())
}

fn web_on(s: &StatusReport) -> Option<String> {
    runs_on(s, "web")
}

fn fence_of<'a>(s: &'a StatusReport, node: &str) -> Option<&'a phalanx_core::state::FenceRecord> {
    s.nodes.iter().find(|n| n.name == node).map(|n| &n.fence)
}

/// Where `rsc` runs once every view agrees, nothing is pending, and it stayed so for a
/// heartbeat round (start-up placement can still shift while late nodes join).
async fn placed(c: &LocalCluster, rsc: &str) -> String {
    let on = |s: &StatusReport| runs_on(s, rsc);
    let agreed = |st: &BTreeMap<String, StatusReport>| {
        let first = on(st.values().next()?)?;
        (st.len() == 3
            && st
                .values()
                .all(|s| s.plan_pending == 0 && on(s).as_deref() == Some(first.as_str())))
        .then_some(first)
    };
    loop {
        let n = c.wait_for(T, &format!("{rsc} placed"), agreed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if agreed(&c.statuses().await).as_deref() == Some(n.as_str()) {
            return n;
        }
    }
}

async fn web_placed(c: &LocalCluster) -> String {
    placed(c, "web").await
}

/// Every view that shows `web` off `victim` must also show `victim` fenced (DESIGN.md §3.3).
fn check_fenced_first(st: &BTreeMap<String, StatusReport>, victim: &str) {
    for (who, s) in st {
        if let Some(n) = web_on(s).filter(|n| n != victim) {
            assert!(
                fence_of(s, victim).is_some_and(|f| f.fenced),
                "{who} shows web on {n} while {victim} is not fenced: {:?}",
                fence_of(s, victim)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_dummy_fences_a_lost_node_before_its_resources_move() {
    let _one = ONE_AT_A_TIME.lock().await;
    let status_file = std::env::temp_dir().join(format!("phalanx-fence-dummy-{}.status", std::process::id()));
    // `ghost` is in no level: only its monitor runs, and fails (no such program).
    let mut c = cluster(&format!(
        "{WEB}\n[[fence_device]]\nname = \"dummy\"\nagent = \"fence_dummy\"\nparams = {{ status_file = \"{}\" }}\n\n[[fence_device]]\nname = \"ghost\"\nagent = \"/nonexistent/fence_ghost\"\nmonitor_interval = \"1s\"\n{}",
        status_file.display(),
        levels("dummy")
    ));
    let victim = web_placed(&c).await;
    c.kill(&victim).unwrap();
    let deadline = Instant::now() + T;
    let (by, moved_to) = loop {
        let st = c.statuses().await;
        check_fenced_first(&st, &victim);
        let done = st.values().find_map(|s| {
            let f = fence_of(s, &victim)?;
            let to = web_on(s).filter(|n| *n != victim && s.plan_pending == 0)?;
            f.fenced.then(|| (f.fenced_by.clone(), to))
        });
        if let Some(d) = done {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "web never moved off {victim} after a fence: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(by.as_deref(), Some("level 1: dummy"), "fenced through fence_dummy");
    assert_ne!(moved_to, victim);
    // fence_dummy's own record: it switched the (dummy) power off and on (reboot).
    let recorded = std::fs::read_to_string(&status_file).unwrap_or_default();
    assert!(!recorded.trim().is_empty(), "fence_dummy wrote no status");
    let _ = std::fs::remove_file(status_file);
    // The monitors: fence_dummy answers, the ghost device does not.
    c.wait_for(T, "device monitors reported", |st| {
        let s = st.values().next()?;
        let health = |n: &str| s.fence_devices.iter().find(|(d, _)| d == n)?.1.clone();
        (health("dummy")?.ok && !health("ghost")?.ok).then_some(())
    })
    .await
    .unwrap();
    let (_, out, _) = c.cli(&["status"]).unwrap();
    assert!(out.contains("ghost") && out.contains("UNREACHABLE"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_level_fails_the_resources_stay_stopped_and_fencing_retries() {
    let _one = ONE_AT_A_TIME.lock().await;
    // fence_dummy's `fail` type never succeeds; the 1 s timeout ends each attempt.
    let mut c = cluster(&format!(
        "{WEB}\n[[fence_device]]\nname = \"broken\"\nagent = \"fence_dummy\"\nparams = {{ type = \"fail\" }}\ntimeout = \"1s\"\nretries = 0\n{}",
        levels("broken")
    ));
    let victim = web_placed(&c).await;
    c.kill(&victim).unwrap();
    let deadline = Instant::now() + T;
    let record = loop {
        let st = c.statuses().await;
        for (who, s) in &st {
            assert!(
                web_on(s).is_none_or(|n| n == victim),
                "{who}: web started elsewhere although {victim} was never fenced"
            );
        }
        if let Some(f) = st
            .values()
            .find_map(|s| fence_of(s, &victim).filter(|f| f.failures >= 2))
        {
            break f.clone();
        }
        assert!(Instant::now() < deadline, "fencing was not retried: {st:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!record.fenced);
    let err = record.last_error.unwrap_or_default();
    assert!(
        err.contains("failed at every level") && err.contains("timed out"),
        "{err}"
    );
    // Status says so, for the operator.
    let (code, out, _) = c.cli(&["status"]).unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("NOT FENCED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stop_fences_the_node_before_the_resource_starts_elsewhere() {
    let _one = ONE_AT_A_TIME.lock().await;
    // `db` can start and be monitored, but its stop always fails. Fenced by the harness's power
    // switch (the default levels: its only device), which kills the node's processes.
    let dir = std::env::temp_dir().join(format!("phalanx-failed-stop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = format!("{}/db-${{OCF_RESKEY_CRM_meta_on_node}}", dir.display());
    let c = cluster(&format!(
        "\n[[resource]]\nid = \"db\"\nagent = \"exec\"\nparams = {{ start = \"touch {file}\", stop = \"echo cannot stop >&2; exit 1\", monitor = \"test -f {file} || exit 7\" }}\nmonitor = {{ interval = \"1s\", timeout = \"5s\" }}\n"
    ));
    let db_on = |s: &StatusReport| runs_on(s, "db");
    let from = placed(&c, "db").await;
    let to = if from == "n1" { "n2" } else { "n1" };
    let (code, out, err) = c.cli(&["resource", "move", "db", "--to", to]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let deadline = Instant::now() + T;
    let fence = loop {
        let st = c.statuses().await;
        for (who, s) in &st {
            if let Some(n) = db_on(s).filter(|n| n != &from) {
                assert!(
                    fence_of(s, &from).is_some_and(|f| f.fenced || f.fenced_at_ms.is_some()),
                    "{who} shows db on {n} before {from} was fenced"
                );
            }
        }
        let done = st.values().find_map(|s| {
            let f = fence_of(s, &from)?.clone();
            (db_on(s).as_deref() == Some(to) && f.fenced_at_ms.is_some()).then_some(f)
        });
        if let Some(f) = done {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "db never moved to {to} after a fence: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(fence.fenced_by.as_deref(), Some("level 1: power"));
    // The power switch took the node down: its daemon no longer answers.
    assert!(c.status(&from).await.is_err(), "{from} still answers after its fence");
    let _ = std::fs::remove_dir_all(dir);
}

/// Storage failure (the seeds' "testing failover" list): the resource's state directory on its
/// node turns read-only under it (a bind mount remounted read-only: root ignores permissions).
/// Its monitor writes there and fails; its stop cannot remove its file either, so the node is
/// fenced, and the resource is recovered on a node whose storage works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failure_moves_the_resource_after_fencing_its_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    if std::env::var_os("PHALANX_NO_LAB").is_some() {
        eprintln!("SKIPPED: PHALANX_NO_LAB is set (this test mounts, as root)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("phalanx-storage-{}", std::process::id()));
    let d = format!("{}/${{OCF_RESKEY_CRM_meta_on_node}}", dir.display());
    let c = cluster(&format!(
        "\n[[resource]]\nid = \"store\"\nagent = \"exec\"\nparams = {{ start = \"mkdir -p {d} && date > {d}/alive\", stop = \"rm -f {d}/alive\", monitor = \"test -f {d}/alive || exit 7; date > {d}/alive\" }}\nmonitor = {{ interval = \"500ms\", timeout = \"5s\" }}\nmigration_threshold = 1\n"
    ));
    let store_on = |s: &StatusReport| runs_on(s, "store");
    let from = placed(&c, "store").await;
    let node_dir = dir.join(&from);
    // Retried for a while: remounting read-only fails ("mount point is busy") while a file in it
    // is open for writing, which the monitor's write every 500 ms sometimes is at that instant.
    let mount = |args: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = std::process::Command::new("mount")
                .args(args)
                .status()
                .map(|s| s.success());
            if matches!(ok, Ok(true)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mount {args:?} failed (this test needs root)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let p = node_dir.display().to_string();
    mount(&["--bind", &p, &p]);
    mount(&["-o", "remount,bind,ro", &p]);
    let deadline = Instant::now() + T;
    let result = loop {
        let st = c.statuses().await;
        let moved = st.values().find_map(|s| {
            let to = store_on(s).filter(|n| *n != from && s.plan_pending == 0)?;
            Some((to, fence_of(s, &from)?.clone()))
        });
        if let Some(m) = moved {
            break Ok(m);
        }
        if Instant::now() > deadline {
            break Err(format!("store never left {from}: {st:#?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = std::process::Command::new("umount").arg(&p).status();
    let _ = std::fs::remove_dir_all(&dir);
    let (to, fence) = result.unwrap();
    assert_ne!(to, from);
    assert!(
        fence.fenced_at_ms.is_some(),
        "the failed stop on {from} was not fenced: {fence:?}"
    );
}

/// `simulate --live` runs the leader's own controller on the live cluster's state (`GET
/// /v1/state`): with nothing pretended, nothing new is planned; with the holder of web pretended
/// down, the plan starts with its fence, as the live cluster's would. The live cluster itself
/// is left alone (web stays where it is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_live_plans_on_the_live_state_and_fences_first() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = cluster(WEB);
    let holder = web_placed(&c).await;
    let (code, out, err) = c.cli(&["simulate", "--live"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the leader commits nothing new"), "{out}");
    let (code, out, err) = c.cli(&["simulate", "--live", "--node-down", &holder]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("Plan:\n  Fence {holder} (by ")),
        "the plan must start with the fence: {out}"
    );
    assert!(out.contains(&format!("Recover web ({holder} -> ")), "{out}");
    let (code, _, err) = c.cli(&["simulate", "--live", "--node-down", "nosuch"]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("no such node"), "{err}");
    assert_eq!(web_placed(&c).await, holder, "a simulation changes nothing");
}
