//! The playground and backup/restore as an operator runs them (issue 13), through the real
//! binary: `playground up --json`, CLI commands against it with `PHALANX_CONFIG` set, `down`
//! leaving no process behind; and a backup of a playground whose config was changed and a
//! resource moved, a node added, restored onto a fresh playground in another folder, which then
//! has the same config text, membership, move, standby and attribute. Bad backup files are refused and
//! change nothing.

use phalanx::playground::UpReport;
use phalanx_node::StatusReport;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_phalanx"))
}

/// Run the CLI, with `PHALANX_CONFIG=config` when given.
fn cli(config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(exe());
    cmd.env_remove("PHALANX_CONFIG")
        .env_remove("PHALANX_API")
        .env_remove("PHALANX_PLAYGROUND");
    if let Some(c) = config {
        cmd.env("PHALANX_CONFIG", c);
    }
    cmd.args(args).output().unwrap()
}

/// Run the CLI and expect success; its stdout.
fn ok(config: Option<&Path>, args: &[&str]) -> String {
    let out = cli(config, args);
    assert!(
        out.status.success(),
        "phalanx {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(config: Option<&Path>, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ok(config, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("phalanx {args:?}: not JSON ({e}): {out}"))
}

/// A process with this pid exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next());
        !matches!(state, Some('Z') | Some('X'))
    })
}

/// Live processes whose command line mentions `dir`.
fn mentioning(dir: &Path) -> Vec<(u32, String)> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != std::process::id() && alive(*p))
        .filter_map(|p| {
            let raw = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&raw).replace('\0', " ");
            c.contains(&dir).then_some((p, c))
        })
        .collect()
}

/// The services the daemons started (the process agent's pid files: the pid is the first line).
fn service_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .flat_map(|n| services_of(&n.path()))
        .collect()
}

/// The services the daemon with data dir `data_dir` started.
fn services_of(data_dir: &Path) -> Vec<u32> {
    let Ok(files) = std::fs::read_dir(data_dir.join("agents")) else {
        return Vec::new();
    };
    files
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|f| {
            std::fs::read_to_string(f.path())
                .ok()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

/// Poll `phalanx status --json` until `cond` holds (or fail after `T`).
fn wait_status(config: &Path, what: &str, cond: impl Fn(&StatusReport) -> bool) -> StatusReport {
    let deadline = Instant::now() + T;
    loop {
        let out = cli(Some(config), &["--json", "status"]);
        let st: Option<StatusReport> = out
            .status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten();
        if let Some(st) = st {
            if cond(&st) {
                return st;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every member of group shop runs on `node`, nothing pending.
fn shop_on(st: &StatusReport, node: &str) -> bool {
    st.plan_pending == 0
        && ["db", "web"].iter().all(|id| {
            st.resources
                .iter()
                .any(|r| r.id == *id && r.running.len() == 1 && r.running.contains_key(node))
        })
}

/// Runs `playground down` when dropped (a failed test leaves no cluster running).
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.join("playground.json").exists() {
            let _ = cli(None, &["playground", "down", "--dir", self.0.to_str().unwrap()]);
        }
    }
}

/// `playground up --json --dir dir`: the report, checked to have exactly the documented fields.
fn up(dir: &Path) -> UpReport {
    let v = json(None, &["playground", "up", "--dir", dir.to_str().unwrap()]);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["config", "dir", "nodes", "token_file"], "{v}");
    for n in v["nodes"].as_array().unwrap() {
        let keys: Vec<&String> = n.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["api", "name", "pid"], "{v}");
    }
    serde_json::from_value(v).unwrap()
}

/// `down`, then nothing of the playground is left: no pid of it, no service, no process whose
/// command line mentions the folder, and no folder (or, for a config `up` did not write, only
/// that config, its key, its CA and the certificates it issued).
fn down_and_check_nothing_left(dir: &Path, report: &UpReport, config_owned: bool) {
    let services = service_pids(dir);
    let switch: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("playground.json")).unwrap()).unwrap();
    let switch = switch["power_switch"].as_u64().unwrap() as u32;
    let down = json(None, &["playground", "down", "--dir", dir.to_str().unwrap()]);
    assert_eq!(down["removed"], config_owned, "{down}");
    for n in &report.nodes {
        assert!(!alive(n.pid), "{} (pid {}) still runs after down", n.name, n.pid);
    }
    assert!(!alive(switch), "the power switch still runs");
    for p in services {
        assert!(!alive(p), "a service (pid {p}) still runs after down");
    }
    assert_eq!(mentioning(dir), vec![], "processes of the playground left");
    if config_owned {
        assert!(!dir.exists(), "down left the folder");
    } else {
        let mut left: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // The user's: the config, the key, the CA, and the node certificates it issued.
        assert_eq!(left, ["ca.crt", "ca.key", "certs", "cluster.toml", "phalanx.key"]);
    }
}

#[test]
fn playground_up_commands_and_down_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pg");
    let _down = Down(dir.clone());
    let report = up(&dir);
    assert_eq!(report.dir, dir.canonicalize().unwrap());
    assert_eq!(report.nodes.len(), 3);
    assert_eq!(report.token_file, report.dir.join("phalanx.key"));
    for n in &report.nodes {
        assert!(alive(n.pid), "{} is not running", n.name);
        // Detached: a process group of its own, not the test's (a Ctrl-C of `up` spares it).
        assert_eq!(
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(n.pid as i32)))
                .unwrap()
                .as_raw(),
            n.pid as i32
        );
    }
    // A second `up` on it refuses, and changes nothing.
    let again = cli(None, &["playground", "up", "--dir", dir.to_str().unwrap()]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(report.nodes.iter().all(|n| alive(n.pid)));

    let config = report.config.as_path();
    let st = wait_status(config, "quorum and a leader", |s| s.quorum && s.leader.is_some());
    assert_eq!(st.nodes.len(), 3);
    let human = ok(Some(config), &["status"]);
    assert!(human.contains("n1") && human.contains("shop"), "{human}");
    ok(Some(config), &["resource", "move", "shop", "--to", "n2"]);
    wait_status(config, "shop on n2", |s| shop_on(s, "n2"));
    let out = ok(Some(config), &["node", "standby", "n2"]);
    assert!(!out.contains("Warning"), "{out}");
    let st = wait_status(config, "shop off n2 (standby)", |s| {
        s.plan_pending == 0 && ["n1", "n3"].iter().any(|n| shop_on(s, n))
    });
    assert!(st.nodes.iter().any(|n| n.name == "n2" && n.standby));
    // The last node out of service: allowed, with a warning naming what stops.
    ok(Some(config), &["node", "standby", "n1"]);
    let out = ok(Some(config), &["node", "standby", "n3"]);
    assert!(
        out.contains("Warning: no online node is out of standby: db, web"),
        "{out}"
    );
    for n in ["n1", "n2", "n3"] {
        ok(Some(config), &["node", "unstandby", n]);
    }
    wait_status(config, "shop runs again", |s| {
        s.plan_pending == 0 && ["n1", "n2", "n3"].iter().any(|n| shop_on(s, n))
    });
    ok(Some(config), &["resource", "clear", "shop"]);

    let pst = json(None, &["playground", "status", "--dir", dir.to_str().unwrap()]);
    assert_eq!(pst["running"], true, "{pst}");
    assert!(pst["processes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["alive"] == true && p["answering"] != false));
    assert_eq!(pst["cluster"]["quorum"], true);
    let human = ok(None, &["playground", "status", "--dir", dir.to_str().unwrap()]);
    assert!(human.contains("running") && human.contains("PHALANX_CONFIG"), "{human}");

    // SIGKILL the daemon that runs shop (not a power cut: its services outlive it, orphans):
    // status says so (exit 1), the cluster recovers shop elsewhere, fences the node (a reboot:
    // the power switch boots its daemon again, which rejoins), and `down` must still stop
    // whatever of the orphans is left, by their pid files.
    let st = wait_status(config, "shop running", |s| {
        ["n1", "n2", "n3"].iter().any(|n| shop_on(s, n))
    });
    let holder = ["n1", "n2", "n3"].into_iter().find(|n| shop_on(&st, n)).unwrap();
    let victim = report.nodes.iter().find(|n| n.name == holder).unwrap();
    let orphans = services_of(&dir.join(holder));
    assert_eq!(orphans.len(), 2, "db and web on {holder}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + T;
    let degraded = loop {
        let out = cli(
            None,
            &["--json", "playground", "status", "--dir", dir.to_str().unwrap()],
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let dead = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == holder && p["alive"] == false);
        if dead {
            break (out.status.code(), v);
        }
        assert!(Instant::now() < deadline, "status never showed {holder} down: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(degraded.0, Some(1), "{}", degraded.1);
    wait_status(config, "shop recovered on a survivor", |s| {
        ["n1", "n2", "n3"].iter().any(|n| *n != holder && shop_on(s, n))
    });
    let back = wait_status(config, "the fenced node rebooted and back", |s| {
        s.nodes.iter().all(|n| n.state == "online") && s.votes == 3
    });
    assert!(
        back.nodes
            .iter()
            .any(|n| n.name == holder && n.fence.fenced_at_ms.is_some()),
        "{holder} was fenced before it came back: {:?}",
        back.nodes
    );
    let pst = json(None, &["playground", "status", "--dir", dir.to_str().unwrap()]);
    let rebooted = pst["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == holder)
        .unwrap()
        .clone();
    assert!(
        rebooted["alive"] == true && rebooted["pid"].as_u64() != Some(u64::from(victim.pid)),
        "status follows the rebooted daemon: {pst}"
    );

    down_and_check_nothing_left(&dir, &report, true);
    for p in orphans {
        assert!(!alive(p), "an orphaned service (pid {p}) survived down");
    }
    // Safe to run twice.
    let twice = ok(None, &["playground", "down", "--dir", dir.to_str().unwrap()]);
    assert!(twice.contains("nothing to stop"), "{twice}");
}

/// The membership as the API lists it: name → (id, links, api).
fn membership(config: &Path) -> Vec<(String, u64, Value, String)> {
    let v = json(Some(config), &["node", "list"]);
    v.as_object()
        .unwrap()
        .iter()
        .map(|(n, r)| {
            (
                n.clone(),
                r["id"].as_u64().unwrap(),
                r["links"].clone(),
                r["api"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_backup_restored_onto_a_fresh_playground_has_the_same_config_and_membership() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let file = tmp.path().join("backup.json");
    let (_down_a, _down_b) = (Down(a.clone()), Down(b.clone()));
    let report = up(&a);
    let config = report.config.as_path();
    wait_status(config, "quorum", |s| s.quorum && s.running_config_version == 1);

    // A changed config (version 2), an operator move, a standby node and an attribute.
    let text = json(Some(config), &["config", "show"])["text"]
        .as_str()
        .unwrap()
        .to_string();
    let changed = text.replace("dead_after = 3", "dead_after = 4");
    assert_ne!(changed, text);
    let new_file = tmp.path().join("v2.toml");
    std::fs::write(&new_file, &changed).unwrap();
    ok(Some(config), &["config", "apply", new_file.to_str().unwrap(), "--yes"]);
    wait_status(config, "config version 2", |s| s.running_config_version == 2);
    ok(Some(config), &["resource", "move", "shop", "--to", "n2"]);
    wait_status(config, "shop on n2", |s| shop_on(s, "n2"));
    ok(Some(config), &["node", "standby", "n3"]);
    ok(Some(config), &["maintenance", "on", "--node", "n3"]);
    ok(
        Some(config),
        &["resource", "ban", "shop", "--node", "n1", "--lifetime", "1h"],
    );
    ok(Some(config), &["node", "attr", "n1", "rack", "r1"]);
    // A member that is not in the config file (never started: only its record matters here).
    let link = format!(
        "127.0.0.1:{}",
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let api = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    ok(
        Some(config),
        &["node", "add", "n4", "--link", &link, "--node-api", &api],
    );
    let members_before = membership(config);
    assert_eq!(members_before.len(), 4);

    let backed = json(Some(config), &["backup", file.to_str().unwrap()]);
    assert_eq!(backed["config_version"], 2, "{backed}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["format"], 1);
    assert_eq!(saved["cluster"], "demo");
    assert_eq!(saved["config"]["text"], changed.as_str());
    let key = std::fs::read(&report.token_file).unwrap();
    assert!(
        !String::from_utf8_lossy(&std::fs::read(&file).unwrap()).contains(String::from_utf8_lossy(&key).trim()),
        "the cluster key is in the backup"
    );
    bad_files_are_refused_and_change_nothing(tmp.path(), &file);

    // The seeds' disaster: the old cluster is gone; a fresh one comes from the backup.
    down_and_check_nothing_left(&a, &report, true);
    let restored = json(
        None,
        &[
            "restore",
            file.to_str().unwrap(),
            "--new-cluster",
            "--dir",
            b.to_str().unwrap(),
        ],
    );
    assert_eq!(restored["key"], "generated", "{restored}");
    assert_eq!(std::fs::read_to_string(b.join("cluster.toml")).unwrap(), changed);
    // Never over an existing config.
    let again = cli(
        None,
        &[
            "restore",
            file.to_str().unwrap(),
            "--new-cluster",
            "--dir",
            b.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    let report_b = up(&b);
    let config_b = report_b.config.as_path();
    assert_eq!(config_b, b.canonicalize().unwrap().join("cluster.toml"));
    let applied = json(Some(config_b), &["restore", file.to_str().unwrap(), "--apply-state"]);
    assert_eq!(applied["failed"], 0, "{applied}");
    assert!(applied.to_string().contains("add node n4"), "{applied}");
    let shown = json(Some(config_b), &["config", "show"]);
    assert_eq!(shown["text"].as_str().unwrap(), changed, "the restored config text");
    assert_eq!(shown["version"], 1, "a new cluster starts at version 1 of that text");
    assert_eq!(membership(config_b), members_before, "the restored membership");
    let st = wait_status(config_b, "shop on n2 again", |s| shop_on(s, "n2"));
    assert!(st.nodes.iter().any(|n| n.name == "n3" && n.standby));
    let constraints = json(Some(config_b), &["resource", "constraints"]);
    assert!(
        constraints
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["resource"] == "shop" && c["kind"] == "move" && c["node"] == "n2"),
        "{constraints}"
    );
    let ban = constraints
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["resource"] == "shop" && c["kind"] == "ban" && c["node"] == "n1")
        .unwrap_or_else(|| panic!("the ban is not restored: {constraints}"));
    let left = ban["expires_ms"].as_u64().unwrap() - ban["made_ms"].as_u64().unwrap();
    assert!(
        left <= 3_600_000 && left > 3_000_000,
        "the ban keeps the lifetime it had left: {ban}"
    );
    let nodes = json(Some(config_b), &["node", "list"]);
    assert_eq!(nodes["n1"]["attrs"]["rack"], "r1");
    assert_eq!(nodes["n3"]["maintenance"], true, "{nodes}");
    // A second --apply-state finds everything there already.
    let twice = json(Some(config_b), &["restore", file.to_str().unwrap(), "--apply-state"]);
    assert_eq!(twice["steps"], serde_json::json!([]), "{twice}");
    down_and_check_nothing_left(&b, &report_b, false);
}

/// A corrupted file, one of a newer format and one that is no backup are each refused with a
/// clear error, and nothing is written.
fn bad_files_are_refused_and_change_nothing(tmp: &Path, good: &Path) {
    let text = std::fs::read_to_string(good).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let corrupted = text.replacen("dead_after = 4", "dead_after = 5", 1);
    assert_ne!(corrupted, text);
    v["format"] = 2.into();
    let newer = v.to_string();
    for (name, content, says) in [
        ("corrupted.json", corrupted.as_str(), "corrupted"),
        ("newer.json", newer.as_str(), "newer than this phalanx"),
        ("not-json.json", "[cluster]\nname = \"x\"\n", "not a phalanx backup"),
        ("truncated.json", &text[..text.len() / 2], "not a phalanx backup"),
    ] {
        let f = tmp.join(name);
        std::fs::write(&f, content).unwrap();
        let target = tmp.join(format!("restore-{name}"));
        let out = cli(
            None,
            &[
                "restore",
                f.to_str().unwrap(),
                "--new-cluster",
                "--dir",
                target.to_str().unwrap(),
            ],
        );
        assert!(!out.status.success(), "{name} was restored");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{name}: {err}");
        assert!(!target.exists(), "{name}: restore wrote something");
    }
    let out = cli(None, &["restore", good.to_str().unwrap()]);
    assert!(!out.status.success(), "restore without --new-cluster or --apply-state");
}

/// On a playground a fence reboots the node: the power switch boots its daemon again, as a
/// machine's power returning would. So `phalanx drill kill-node --runs 3` runs three times:
/// each run powers off where shop runs, the cluster fences it and recovers shop elsewhere, and
/// the next run waits until the rebooted node is back.
#[test]
fn a_kill_node_drill_runs_again_once_the_fenced_node_rebooted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pg");
    let _down = Down(dir.clone());
    let report = up(&dir);
    let config = report.config.as_path();
    wait_status(config, "shop running", |s| {
        s.plan_pending == 0 && ["n1", "n2", "n3"].iter().any(|n| shop_on(s, n))
    });
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("playground.json")).unwrap()).unwrap();
    let port = state["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == "web")
        .and_then(|s| s[1].as_u64())
        .unwrap();
    let probe: Vec<String> = (1..=3).map(|i| format!("http://127.0.10.{i}:{port}/")).collect();
    let r = json(
        Some(config),
        &[
            "drill",
            "kill-node",
            "--resource",
            "shop",
            "--probe",
            &probe.join(","),
            "--runs",
            "3",
        ],
    );
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{r:#}");
    for (i, run) in runs.iter().enumerate() {
        assert_ne!(run["from"], run["to"], "{r:#}");
        assert!(run["fenced_ms"].is_u64() && run["rto_ms"].is_u64(), "{r:#}");
        assert_eq!(run["rpo_writes"], 0, "{r:#}");
        if i > 0 {
            assert_eq!(run["from"], runs[i - 1]["to"], "each run kills where shop went: {r:#}");
        }
    }
    // And the cluster is whole again afterwards.
    wait_status(config, "every node back", |s| {
        s.nodes.iter().all(|n| n.state == "online") && s.votes == 3
    });
    down_and_check_nothing_left(&dir, &report, true);
}
