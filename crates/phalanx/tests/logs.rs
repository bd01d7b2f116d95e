//! Logs (issue 13) of real `phalanx` processes: `--log-format json` writes one JSON object per
//! line; systemd's `JOURNAL_STREAM` naming stderr sends the lines to the journal, or, when its
//! socket does not answer (no systemd here), says so and writes plain lines; no colour on a
//! file. (The rate limit under a real partition is the lab test
//! `a_ten_second_partition_logs_a_few_lines_per_peer_and_no_escape_codes`.)

use phalanx::harness::{LocalCluster, Spec};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_phalanx"))
}

fn one_node() -> LocalCluster {
    LocalCluster::create(Spec {
        nodes: 1,
        heartbeat: Duration::from_millis(100),
        links: 1,
        exe: exe(),
        keep: std::env::var_os("PHALANX_KEEP").is_some(),
        extra_config: String::new(),
        cluster_extra: String::new(),
    })
    .unwrap()
}

/// Run a daemon of `c`'s n1 with `args` and `env`, its stderr into `log`, until its log has a
/// line containing `until` (60 s at most); then kill it. The log's text.
fn daemon_log(c: &LocalCluster, args: &[&str], env: &[(&str, String)], log: &std::path::Path, until: &str) -> String {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(exe());
    cmd.arg("daemon")
        .arg("--config")
        .arg(&c.config_path)
        .args(["--node", "n1", "--data-dir"])
        .arg(c.dir().join("n1"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(until) {
            break text;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("no {until:?} in the daemon's log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    text
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let c = one_node();
    let log = c.dir().join("json.log");
    let text = daemon_log(&c, &["--log-format", "json"], &[], &log, "phalanx node started");
    let mut started = false;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        started |= v["fields"]["message"] == "phalanx node started" && v["fields"]["node"] == "n1";
    }
    assert!(started, "{text}");
    assert!(!text.contains('\x1b'), "{text}");
}

/// `JOURNAL_STREAM` set to the log file's device:inode is how systemd says stderr is the
/// journal. Without journald (none on the test machines) the daemon says so and writes plain
/// text to stderr; with a `JOURNAL_STREAM` naming another file it writes plain text at once.
#[test]
fn journal_stream_without_a_journal_falls_back_to_plain_stderr() {
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("skipped: this machine runs journald (the lines would go there)");
        return;
    }
    let c = one_node();
    let log = c.dir().join("journal.log");
    std::fs::File::create(&log).unwrap();
    let m = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", m.dev(), m.ino());
    // daemon_log truncates the same file (same inode), so the stream still names it.
    let text = daemon_log(&c, &[], &[("JOURNAL_STREAM", stream)], &log, "phalanx node started");
    assert!(text.contains("the journal's socket does not answer"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
    let other = c.dir().join("other.log");
    let text = daemon_log(
        &c,
        &[],
        &[("JOURNAL_STREAM", "1:2".to_string())],
        &other,
        "phalanx node started",
    );
    assert!(!text.contains("journal"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
}
