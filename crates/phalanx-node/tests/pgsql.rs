//! The built-in `pgsql` agent on Debian's PostgreSQL 15 for real (issue 18): two instances in
//! one temporary folder, on their own ports and sockets, driven through the agent runner as the
//! executor drives it. `.ci/run` installs postgresql-15; without it these tests fail saying so.

use phalanx_core::ocf::AgentAction;
use phalanx_core::resources::AgentSpec;
use phalanx_node::agents::{AgentCall, CallResult, Runner};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BINDIR: &str = "/usr/lib/postgresql/15/bin";

fn postgres_user() -> nix::unistd::User {
    assert!(
        Path::new(BINDIR).join("initdb").is_file(),
        "PostgreSQL 15 is not installed (apt-get install postgresql-15; .ci/run does)"
    );
    nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres user (postgresql-15 creates it)")
}

/// Run a PostgreSQL program as its user; panics with its output if it fails.
fn as_postgres(program: &str, args: &[&str]) -> String {
    let u = postgres_user();
    let out = std::process::Command::new(Path::new(BINDIR).join(program))
        .args(args)
        .current_dir("/")
        .env("LANG", "C")
        .uid(u.uid.as_raw())
        .gid(u.gid.as_raw())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    phalanx_node::ports::free_tcp_port().unwrap()
}

/// One node's instance: its folder (data directory `data`, socket in the folder) and port.
struct Instance {
    name: &'static str,
    dir: PathBuf,
    port: u16,
    runner: Runner,
}

impl Instance {
    fn new(root: &Path, name: &'static str) -> Instance {
        let u = postgres_user();
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
        Instance {
            name,
            port: free_port(),
            runner: Runner {
                state_dir: root.join(format!("{name}-state")),
                ..Runner::new(name)
            },
            dir,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn params(&self) -> BTreeMap<String, String> {
        [
            ("pgdata", self.data().display().to_string()),
            ("port", self.port.to_string()),
            ("socket_dir", self.dir.display().to_string()),
            ("host", "127.0.0.1".to_string()),
            ("replication_user", "postgres".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `initdb` with what a replica set needs (checksums, replication allowed on loopback).
    fn init(&self) {
        let data = self.data().display().to_string();
        as_postgres(
            "initdb",
            &["-D", &data, "--data-checksums", "-A", "trust", "-U", "postgres"],
        );
        let hba = self.data().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text += "host replication all 127.0.0.1/32 trust\n";
        std::fs::write(&hba, text).unwrap();
    }

    async fn call(&self, action: AgentAction, upstream: Option<&Instance>) -> CallResult {
        self.call_with(&self.params(), action, upstream).await
    }

    async fn call_with(
        &self,
        params: &BTreeMap<String, String>,
        action: AgentAction,
        upstream: Option<&Instance>,
    ) -> CallResult {
        let mut meta = BTreeMap::new();
        if let Some(u) = upstream {
            meta.insert(phalanx_node::pgsql::UPSTREAM_NODE.to_string(), u.name.to_string());
            meta.insert(phalanx_node::pgsql::UPSTREAM_HOST.to_string(), "127.0.0.1".to_string());
            meta.insert(phalanx_node::pgsql::UPSTREAM_PORT.to_string(), u.port.to_string());
        }
        self.runner
            .call(&AgentCall {
                agent: &AgentSpec::Pgsql,
                instance: "pg",
                params,
                meta: &meta,
                action,
                timeout: Duration::from_secs(60),
                interval: None,
            })
            .await
    }

    fn sql(&self, q: &str) -> String {
        let dir = self.dir.display().to_string();
        let port = self.port.to_string();
        as_postgres(
            "psql",
            &[
                "-X", "-A", "-t", "-q", "-h", &dir, "-p", &port, "-d", "postgres", "-c", q,
            ],
        )
    }

    /// Poll `q` until it answers `want` (replication is asynchronous).
    fn wait_sql(&self, q: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let dir = self.dir.display().to_string();
            let port = self.port.to_string();
            let u = postgres_user();
            let out = std::process::Command::new(Path::new(BINDIR).join("psql"))
                .args([
                    "-X", "-A", "-t", "-q", "-h", &dir, "-p", &port, "-d", "postgres", "-c", q,
                ])
                .current_dir("/")
                .uid(u.uid.as_raw())
                .gid(u.gid.as_raw())
                .output()
                .unwrap();
            let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {q} answered {got:?}, not {want:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn code(r: &CallResult) -> Option<i32> {
    r.exit_code
}

/// n1 a primary with table `cart` holding row 1, n2 its streaming replica (copied from it).
async fn primary_and_replica(root: &Path) -> (Instance, Instance) {
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let n1 = Instance::new(root, "n1");
    let n2 = Instance::new(root, "n2");
    n1.init();
    assert_eq!(code(&n1.call(AgentAction::Start, None).await), Some(0));
    assert_eq!(code(&n1.call(AgentAction::Promote, None).await), Some(0));
    n1.sql("create table cart (id int primary key)");
    n1.sql("insert into cart values (1)");
    assert_eq!(code(&n2.call(AgentAction::Start, Some(&n1)).await), Some(0));
    n2.wait_sql("select count(*) from cart", "1");
    (n1, n2)
}

/// Start, monitor, promote, copy a replica, fail over and follow, stop: the agent's whole life
/// on two real instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_and_a_replica_start_promote_fail_over_and_follow() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let n1 = Instance::new(root.path(), "n1");
    let n2 = Instance::new(root.path(), "n2");
    n1.init();

    // Nothing runs: monitor 7, stop succeeds.
    assert_eq!(code(&n1.call(AgentAction::Monitor, None).await), Some(7));
    assert_eq!(code(&n1.call(AgentAction::Stop, None).await), Some(0));
    // Start is a replica (in recovery, following nobody yet); promote makes it the primary.
    let r = n1.call(AgentAction::Start, None).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    assert!(n1.data().join("standby.signal").is_file());
    assert_eq!(code(&n1.call(AgentAction::Monitor, None).await), Some(0));
    let r = n1.call(AgentAction::Promote, None).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    assert_eq!(code(&n1.call(AgentAction::Monitor, None).await), Some(8));
    n1.sql("create table cart (id int primary key, item text)");
    n1.sql("insert into cart values (1, 'book')");

    // n2 has no data: its start copies n1's and streams from it.
    let r = n2.call(AgentAction::Start, Some(&n1)).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    assert_eq!(code(&n2.call(AgentAction::Monitor, Some(&n1)).await), Some(0));
    n2.wait_sql("select item from cart where id = 1", "book");
    n1.sql("insert into cart values (2, 'pen')");
    n2.wait_sql("select count(*) from cart", "2");
    assert_eq!(n1.sql("select application_name from pg_stat_replication"), "n2");

    // Fail over: n1 stops, n2 is promoted and takes writes; n1 comes back as n2's replica.
    assert_eq!(code(&n1.call(AgentAction::Stop, None).await), Some(0));
    assert_eq!(code(&n1.call(AgentAction::Monitor, None).await), Some(7));
    let r = n2.call(AgentAction::Promote, None).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    assert_eq!(code(&n2.call(AgentAction::Monitor, None).await), Some(8));
    n2.sql("insert into cart values (3, 'ink')");
    let r = n1.call(AgentAction::Start, Some(&n2)).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    assert_eq!(code(&n1.call(AgentAction::Monitor, Some(&n2)).await), Some(0));
    n1.wait_sql("select count(*) from cart", "3");

    // Switch back: demote n2 (it restarts as n1's replica), promote n1.
    let r = n2.call(AgentAction::Demote, Some(&n1)).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    assert_eq!(code(&n2.call(AgentAction::Monitor, Some(&n1)).await), Some(0));
    let r = n1.call(AgentAction::Promote, None).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    n1.sql("insert into cart values (4, 'pad')");
    n2.wait_sql("select count(*) from cart", "4");

    for n in [&n1, &n2] {
        assert_eq!(code(&n.call(AgentAction::Stop, None).await), Some(0));
        assert_eq!(code(&n.call(AgentAction::Monitor, None).await), Some(7));
    }
}

/// A former primary still running when another was promoted (its node came back with
/// PostgreSQL running: a daemon crash, a fence that missed it) is demoted to follow the new
/// primary: its demote rewinds it (even its shutdown checkpoint is WAL the new primary never
/// had) and it streams. Before the fix it restarted as a replica as it was and never streamed
/// ("new timeline forked off … before current recovery point"), while monitors called it a
/// healthy replica (found in the playground).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_primary_still_running_is_demoted_by_a_rewind_and_streams() {
    let root = tempfile::tempdir().unwrap();
    let (n1, n2) = primary_and_replica(root.path()).await;
    // n2 is promoted while n1 still runs as a primary; n1 takes one more write n2 never sees.
    assert_eq!(code(&n2.call(AgentAction::Promote, None).await), Some(0));
    n1.sql("insert into cart values (100)");
    n2.sql("insert into cart values (2)");

    let r = n1.call(AgentAction::Demote, Some(&n2)).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    let why = r.exit_reason.clone().unwrap_or_default();
    assert!(why.contains("rejoined as a replica of n2 (pg_rewind)"), "{r:?}");
    assert_eq!(code(&n1.call(AgentAction::Monitor, Some(&n2)).await), Some(0));
    n2.sql("insert into cart values (3)");
    n1.wait_sql("select string_agg(id::text, ',' order by id) from cart", "1,2,3");
    n2.wait_sql(
        "select state from pg_stat_replication where application_name = 'n1'",
        "streaming",
    );
    for n in [&n1, &n2] {
        assert_eq!(code(&n.call(AgentAction::Stop, None).await), Some(0));
    }
}

/// A replica that replayed WAL the promoted one never had is found diverged and rewound (the
/// pg lab's crash flake): an asynchronous replica can be ahead of the one promoted when the
/// primary dies. Here n2 is stopped while n1 takes a write only n3 receives; n1 stops, n2 is
/// promoted and n3 is told to follow it. n3 can never stream ("new timeline forked off …
/// before current recovery point"); before the fix its monitors called it a healthy replica
/// forever. Now a monitor stops it and answers "not running" (a soft failure, recovered in
/// place) saying why, and the recovery's start rewinds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_ahead_of_the_promoted_one_is_found_diverged_and_rewound() {
    let root = tempfile::tempdir().unwrap();
    let (n1, n2) = primary_and_replica(root.path()).await;
    let n3 = Instance::new(root.path(), "n3");
    let r = n3.call(AgentAction::Start, Some(&n1)).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    n3.wait_sql("select count(*) from cart", "1");

    assert_eq!(code(&n2.call(AgentAction::Stop, None).await), Some(0));
    n1.sql("insert into cart values (100)");
    n3.wait_sql("select count(*) from cart", "2");
    assert_eq!(code(&n1.call(AgentAction::Stop, None).await), Some(0));
    assert_eq!(code(&n2.call(AgentAction::Start, None).await), Some(0));
    assert_eq!(code(&n2.call(AgentAction::Promote, None).await), Some(0));
    n2.sql("insert into cart values (2)");

    // n3's monitors, told to follow n2, fail within a deadline (a monitor while its WAL
    // receiver happens to stream gives no verdict).
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let r = n3.call(AgentAction::Monitor, Some(&n2)).await;
        if code(&r) != Some(0) {
            break r;
        }
        assert!(Instant::now() < deadline, "n3 still reported healthy: {r:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(code(&failed), Some(7), "{failed:?}");
    let why = failed.exit_reason.clone().unwrap_or_default();
    assert!(why.contains("diverged: replayed timeline 2"), "{failed:?}");
    assert!(n3.data().join(phalanx_node::pgsql::REWIND_MARKER).is_file());
    assert_eq!(code(&n3.call(AgentAction::Monitor, Some(&n2)).await), Some(7));

    assert_eq!(code(&n3.call(AgentAction::Stop, None).await), Some(0));
    let r = n3.call(AgentAction::Start, Some(&n2)).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    let did = r.exit_reason.clone().unwrap_or_default();
    assert!(did.contains("rejoined as a replica of n2 (pg_rewind)"), "{r:?}");
    assert!(!n3.data().join(phalanx_node::pgsql::REWIND_MARKER).exists());
    n2.sql("insert into cart values (3)");
    n3.wait_sql("select string_agg(id::text, ',' order by id) from cart", "1,2,3");
    n2.wait_sql(
        "select state from pg_stat_replication where application_name = 'n3'",
        "streaming",
    );
    assert_eq!(code(&n3.call(AgentAction::Monitor, Some(&n2)).await), Some(0));
    for n in [&n2, &n3] {
        assert_eq!(code(&n.call(AgentAction::Stop, None).await), Some(0));
    }
}

/// A former primary whose timeline cannot be rewound is not left broken: its `pg_rewind` fails
/// (here from a `bindir` whose `pg_rewind` exits 1 as the real one does when the WAL it needs
/// is gone; every other program is the real one), so its start sets the data directory aside
/// as `PGDATA.diverged`, copies the new primary's afresh, streams from it, and says all that
/// in its result (the event history's text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_primary_that_cannot_be_rewound_is_set_aside_and_copied_afresh() {
    let root = tempfile::tempdir().unwrap();
    let (n1, n2) = primary_and_replica(root.path()).await;
    // n1 stops, n2 is promoted and takes a write: n1's data last ran as a primary.
    assert_eq!(code(&n1.call(AgentAction::Stop, None).await), Some(0));
    assert_eq!(code(&n2.call(AgentAction::Promote, None).await), Some(0));
    n2.sql("insert into cart values (2)");

    let bin = root.path().join("bin-no-rewind");
    std::fs::create_dir(&bin).unwrap();
    for e in std::fs::read_dir(BINDIR).unwrap().flatten() {
        std::os::unix::fs::symlink(e.path(), bin.join(e.file_name())).unwrap();
    }
    let rewind = bin.join("pg_rewind");
    std::fs::remove_file(&rewind).unwrap();
    std::fs::write(
        &rewind,
        "#!/bin/sh\necho 'pg_rewind: error: could not find previous WAL record at 0/3000060' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&rewind, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut params = n1.params();
    params.insert("bindir".into(), bin.display().to_string());

    let r = n1.call_with(&params, AgentAction::Start, Some(&n2)).await;
    assert_eq!(code(&r), Some(0), "{r:?}");
    let why = r.exit_reason.clone().unwrap_or_default();
    assert!(
        why.contains("pg_rewind from n2 failed")
            && why.contains(".diverged")
            && why.contains("copied from n2 (pg_basebackup)"),
        "{r:?}"
    );
    let aside = n1.data().with_extension("diverged");
    assert!(aside.join("PG_VERSION").is_file(), "the old data is kept aside");
    assert!(n1.data().join("standby.signal").is_file(), "a replica now");
    assert_eq!(
        code(&n1.call_with(&params, AgentAction::Monitor, Some(&n2)).await),
        Some(0)
    );
    n1.wait_sql("select count(*) from cart", "2");
    assert_eq!(n2.sql("select application_name from pg_stat_replication"), "n1");
    for n in [&n1, &n2] {
        assert_eq!(code(&n.call(AgentAction::Stop, None).await), Some(0));
    }
}

/// Bad params and a missing installation are clear errors, and nothing is touched.
#[tokio::test]
async fn bad_params_and_a_wrong_bindir_are_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let n1 = Instance::new(root.path(), "n1");
    let mut p = n1.params();
    p.insert("bindir".into(), "/usr/lib/postgresql/99/bin".into());
    let r = n1.call_with(&p, AgentAction::Start, None).await;
    assert_eq!(code(&r), Some(5), "{r:?}");
    assert!(
        r.exit_reason.as_deref().unwrap_or("").contains("pg_ctl not found"),
        "{r:?}"
    );
    // Stopping what cannot run here succeeds: nothing runs.
    assert_eq!(code(&n1.call_with(&p, AgentAction::Stop, None).await), Some(0));
    let mut p = n1.params();
    p.insert("sync".into(), "sometimes".into());
    let r = n1.call_with(&p, AgentAction::Start, None).await;
    assert_eq!(code(&r), Some(6), "{r:?}");
    // No data and no primary to copy from: not running (a soft failure, tried again once there
    // is a primary), saying so, the folder left alone.
    let r = n1.call(AgentAction::Start, None).await;
    assert_eq!(code(&r), Some(7), "{r:?}");
    assert!(
        r.exit_reason.as_deref().unwrap_or("").contains("initialize it"),
        "{r:?}"
    );
    assert!(!n1.data().exists());
    // A replication password file that is not there: a configuration error naming it, and
    // nothing created (n2 stands for a primary; it is never reached).
    let n2 = Instance::new(root.path(), "n2");
    let mut p = n1.params();
    p.insert("replication_password_file".into(), "/etc/phalanx/no-such.pw".into());
    let r = n1.call_with(&p, AgentAction::Start, Some(&n2)).await;
    assert_eq!(code(&r), Some(6), "{r:?}");
    assert!(
        r.exit_reason
            .as_deref()
            .unwrap_or("")
            .contains("/etc/phalanx/no-such.pw"),
        "{r:?}"
    );
    assert!(!n1.data().exists());
}

/// A data directory of another cluster (its own `initdb`) never joins the primary's: its start
/// is a hard error for that node (exit 5, naming both system identifiers and what to do), and
/// the directory is left as it was (no rewind, nothing set aside, nothing copied over it).
#[tokio::test]
async fn a_data_directory_of_another_cluster_is_refused_and_left_alone() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let n1 = Instance::new(root.path(), "n1");
    let n2 = Instance::new(root.path(), "n2");
    n1.init();
    n2.init();
    assert_eq!(code(&n1.call(AgentAction::Start, None).await), Some(0));
    assert_eq!(code(&n1.call(AgentAction::Promote, None).await), Some(0));
    let r = n2.call(AgentAction::Start, Some(&n1)).await;
    assert_eq!(code(&r), Some(5), "{r:?}");
    let why = r.exit_reason.clone().unwrap_or_default();
    assert!(
        why.contains("belongs to another cluster") && why.contains("move it away"),
        "{r:?}"
    );
    assert!(
        n2.data().join("PG_VERSION").is_file(),
        "the data directory is left alone"
    );
    assert!(!n2.data().join("standby.signal").exists(), "not made a replica");
    assert!(!n2.data().with_extension("diverged").exists(), "nothing set aside");
    assert_eq!(code(&n2.call(AgentAction::Monitor, None).await), Some(7));
    assert_eq!(code(&n1.call(AgentAction::Stop, None).await), Some(0));
}
