//! Secrets stay secret (issue 17) on 3 real daemons: a password written inline in a resource's
//! params is `"***"` in `config show`, in an apply's diff and in a backup, and in no event or
//! log line; a config shown, edited and applied keeps the committed password (the resource's
//! agent still gets it); a rollback takes the secrets of the version it goes back to; a `***`
//! with nothing committed at its place is refused, naming it; a daemon refuses a key file that
//! its group or others may read.

use phalanx::harness::{LocalCluster, Spec};
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A process resource whose command prints the param it got: the agent's environment shows
/// what the cluster hands it.
fn resource(dir: &std::path::Path, secret: &str) -> String {
    let out = dir.join("got");
    format!(
        "\n[[resource]]\nid = \"db\"\nagent = \"process\"\nparams = {{ command = \"sh -c 'echo $OCF_RESKEY_db_password > {}; exec sleep 1000'\", db_password = \"{secret}\" }}\n",
        out.display()
    )
}

fn cli(c: &LocalCluster, args: &[&str]) -> String {
    let (code, out, err) = c.cli(args).unwrap();
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_secrets_are_redacted_everywhere_and_kept_across_applies() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let scratch = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::create(Spec::loopback(3, exe, resource(scratch.path(), "s3cret-v1"))).unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let got = scratch.path().join("got");
    let read_got = || std::fs::read_to_string(&got).unwrap_or_default().trim().to_string();
    let deadline = std::time::Instant::now() + T;
    while read_got() != "s3cret-v1" {
        assert!(std::time::Instant::now() < deadline, "db got {:?}", read_got());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Shown redacted; edited and applied: the committed password stays, the edit lands.
    let shown = cli(&c, &["config", "show"]);
    assert!(
        shown.contains("db_password = \"***\"") && !shown.contains("s3cret"),
        "{shown}"
    );
    let edited = scratch.path().join("edited.toml");
    std::fs::write(&edited, shown.replace("exec sleep 1000", "exec sleep 1001")).unwrap();
    let _ = std::fs::remove_file(&got);
    let applied = cli(&c, &["config", "apply", edited.to_str().unwrap(), "--yes"]);
    assert!(!applied.contains("s3cret"), "{applied}");
    // The agent was restarted with the new command and still got the committed password.
    let deadline = std::time::Instant::now() + T;
    while read_got() != "s3cret-v1" {
        assert!(
            std::time::Instant::now() < deadline,
            "db got {:?} after the apply",
            read_got()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new password written out is applied (its diff shows stars), and a rollback to version 2
    // (the edited command, the first password) takes version 2's password back, not the
    // current one.
    std::fs::write(&edited, shown.replace("\"***\"", "\"s3cret-v2\"")).unwrap();
    let _ = std::fs::remove_file(&got);
    let applied = cli(&c, &["config", "apply", edited.to_str().unwrap(), "--yes"]);
    assert!(!applied.contains("s3cret"), "{applied}");
    let deadline = std::time::Instant::now() + T;
    while read_got() != "s3cret-v2" {
        assert!(std::time::Instant::now() < deadline, "db got {:?} with v2", read_got());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(&got);
    cli(&c, &["config", "rollback", "2", "--yes"]);
    let deadline = std::time::Instant::now() + T;
    while read_got() != "s3cret-v1" {
        assert!(
            std::time::Instant::now() < deadline,
            "db got {:?} after the rollback",
            read_got()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Only a password changed: the diff says so (with no value) and the apply commits it.
    let now = cli(&c, &["config", "show"]);
    std::fs::write(&edited, now.replace("\"***\"", "\"s3cret-v3\"")).unwrap();
    let applied = cli(&c, &["config", "apply", edited.to_str().unwrap(), "--yes"]);
    assert!(
        applied.contains("a secret changed") && !applied.contains("s3cret"),
        "{applied}"
    );
    let v: serde_json::Value = serde_json::from_str(&cli(&c, &["--json", "config", "show"])).unwrap();
    assert_eq!(v["version"], 5, "{v}");

    // A *** with nothing committed at its place is refused, naming it.
    let bad = scratch.path().join("bad.toml");
    std::fs::write(
        &bad,
        shown.replace(
            "db_password = \"***\"",
            "db_password = \"***\", admin_password = \"***\"",
        ),
    )
    .unwrap();
    let (code, out, err) = c.cli(&["config", "apply", bad.to_str().unwrap(), "--yes"]).unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("resource[db].params.admin_password is \"***\""),
        "{out}{err}"
    );

    // No secret in a backup, the events, or any log.
    let backup = scratch.path().join("backup.json");
    cli(&c, &["backup", backup.to_str().unwrap()]);
    let b = std::fs::read_to_string(&backup).unwrap();
    assert!(!b.contains("s3cret") && b.contains("***"), "a secret in the backup");
    let events = cli(&c, &["events", "--json"]);
    assert!(!events.contains("s3cret"), "a secret in the events");
    for n in ["n1", "n2", "n3"] {
        let log = std::fs::read_to_string(c.log_path(n)).unwrap();
        assert!(!log.contains("s3cret"), "a secret in {n}'s log");
    }

    // A key file others may read: the daemon refuses to start, saying how to fix it.
    c.kill("n3").unwrap();
    let key = c.dir().join("phalanx.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["daemon", "--config"])
        .arg(c.dir().join("cluster.toml"))
        .args(["--node", "n3", "--data-dir"])
        .arg(c.dir().join("n3"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is readable by group or others (mode 0644): chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    c.stop_all();
}
