//! PostgreSQL failed over by three daemons with the built-in `pgsql` agent (issue 18), on
//! Debian's PostgreSQL 15: instances prepared as the README says (`initdb` on one node,
//! `pg_basebackup -R` to the others), one promoted, a switchover by the operator, then the
//! primary's node losing power: a replica is promoted after the fence, and every row committed
//! and replicated before is there; the old primary's node back, it rejoins as a replica.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_core::scheduler::Role;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BINDIR: &str = "/usr/lib/postgresql/15/bin";
const T: Duration = Duration::from_secs(60);

fn user() -> nix::unistd::User {
    assert!(
        Path::new(BINDIR).join("initdb").is_file(),
        "PostgreSQL 15 is not installed (apt-get install postgresql-15; .ci/run does)"
    );
    nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres user")
}

/// Run a PostgreSQL program as its user: its exit status and output.
fn pg(program: &str, args: &[&str]) -> (bool, String) {
    let u = user();
    let out = std::process::Command::new(Path::new(BINDIR).join(program))
        .args(args)
        .current_dir("/")
        .env("LANG", "C")
        .env("PGCONNECT_TIMEOUT", "3")
        .uid(u.uid.as_raw())
        .gid(u.gid.as_raw())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.trim().to_string())
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, out) = pg(program, args);
    assert!(ok, "{program} {args:?}: {out}");
    out
}

struct Db {
    dir: PathBuf,
    ports: Vec<u16>,
}

impl Db {
    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}", i + 1))
    }

    fn data(&self, i: usize) -> String {
        self.node_dir(i).join("data").display().to_string()
    }

    /// One SQL statement on node `i`'s instance.
    fn sql(&self, i: usize, q: &str) -> (bool, String) {
        let sock = self.node_dir(i).display().to_string();
        let port = self.ports[i].to_string();
        pg(
            "psql",
            &[
                "-X", "-A", "-t", "-q", "-h", &sock, "-p", &port, "-d", "postgres", "-c", q,
            ],
        )
    }

    fn wait_sql(&self, i: usize, q: &str, want: &str) {
        let deadline = Instant::now() + T;
        loop {
            let (_, got) = self.sql(i, q);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "n{}: {q} answered {got:?}, not {want:?}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The resource config: per-node data directory, socket folder and port.
    fn config(&self) -> String {
        let mut params = vec![
            "host = \"127.0.0.1\"".to_string(),
            "replication_user = \"postgres\"".to_string(),
        ];
        for i in 0..3 {
            let n = format!("n{}", i + 1);
            params.push(format!("\"pgdata@{n}\" = \"{}\"", self.data(i)));
            params.push(format!("\"socket_dir@{n}\" = \"{}\"", self.node_dir(i).display()));
            params.push(format!("\"port@{n}\" = \"{}\"", self.ports[i]));
        }
        format!(
            "[[resource]]\nid = \"pg\"\nagent = \"pgsql\"\nstart_timeout = \"60s\"\nmonitor = {{ interval = \"1s\", timeout = \"10s\" }}\nparams = {{ {} }}\n\n[[clone]]\nid = \"db\"\nresource = \"pg\"\npromotable = true\n",
            params.join(", ")
        )
    }
}

/// As the README says: `initdb` on n1 (checksums on), started once to copy it with
/// `pg_basebackup -R` to n2 and n3, then stopped.
fn prepare(root: &Path) -> Db {
    let db = prepare_one(root);
    let opts = format!(
        "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_keep_size=512MB",
        db.ports[0],
        db.node_dir(0).display()
    );
    must(
        "pg_ctl",
        &["start", "-D", &db.data(0), "-w", "-o", &opts, "-l", "/dev/null"],
    );
    for i in 1..3 {
        let port = db.ports[0].to_string();
        must(
            "pg_basebackup",
            &[
                "-D",
                &db.data(i),
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
            ],
        );
    }
    must("pg_ctl", &["stop", "-D", &db.data(0), "-m", "fast", "-w"]);
    db
}

fn primary_of(st: &std::collections::BTreeMap<String, phalanx_node::StatusReport>) -> Option<(String, usize)> {
    let s = st.values().next()?;
    let pg = s.resources.iter().find(|r| r.id == "pg")?;
    let p = pg.running.iter().find(|(_, r)| **r == Role::Promoted)?.0.clone();
    (s.plan_pending == 0).then_some((p, pg.running.len()))
}

fn index(node: &str) -> usize {
    node.trim_start_matches('n').parse::<usize>().unwrap() - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_is_promoted_switched_over_and_failed_over_with_its_rows() {
    let root = tempfile::tempdir().unwrap();
    let db = prepare(root.path());
    if std::env::var_os("PHALANX_KEEP").is_some() {
        eprintln!("PostgreSQL instances kept in {}", root.keep().display());
    }
    let mut c = LocalCluster::create(Spec::loopback(
        3,
        PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        db.config(),
    ))
    .unwrap();
    c.start_all().unwrap();
    let (p, _) = c
        .wait_for(T, "a primary and two replicas", |st| {
            primary_of(st).filter(|(_, n)| *n == 3)
        })
        .await
        .unwrap();
    let pi = index(&p);
    assert_eq!(db.sql(pi, "select pg_is_in_recovery()").1, "f");
    must_ok(&db, pi, "create table cart (id int primary key, item text)");
    must_ok(&db, pi, "insert into cart values (1, 'book')");
    for i in (0..3).filter(|i| *i != pi) {
        db.wait_sql(i, "select item from cart where id = 1", "book");
        assert_eq!(db.sql(i, "select pg_is_in_recovery()").1, "t");
    }

    // What the cluster says of it: `pg status`, and Patroni's health endpoints on each node.
    let (code, out, err) = c.cli(&["--json", "pg", "status"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status[0]["resource"], "pg");
    assert_eq!(status[0]["primary"], p.as_str());
    let http = c.operator_http().unwrap();
    let token = c.api_token().unwrap();
    for i in 0..3 {
        let name = format!("n{}", i + 1);
        let api = c.node(&name).unwrap().api.clone();
        // OPTIONS as Patroni's HAProxy template checks (`option httpchk OPTIONS /primary`).
        let want = if i == pi {
            [200, 503, 200, 400, 200]
        } else {
            [503, 200, 200, 400, 503]
        };
        // Each node answers from its own replica of the state: polled until it has caught up.
        let deadline = Instant::now() + T;
        loop {
            let mut codes = Vec::new();
            for (method, path) in [
                ("GET", "/primary"),
                ("GET", "/replica"),
                ("GET", "/health"),
                ("GET", "/replica?lag=nonsense"),
                ("OPTIONS", "/primary"),
            ] {
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let r = http
                    .request(method, LocalCluster::url(&api, path))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                codes.push(r.status().as_u16());
            }
            if codes == want {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: {codes:?}, not {want:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Switchover: the primary demoted, another promoted (it takes writes), the old one back
    // as a replica that catches up.
    let (code, out, err) = c.cli(&["--json", "resource", "switchover", "db"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let sw: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sw["from"], p.as_str());
    assert_eq!(sw["rejoined"], true, "{sw}");
    let q = sw["to"].as_str().unwrap().to_string();
    assert_ne!(q, p);
    let qi = index(&q);
    c.wait_for(T, "three again", |st| {
        primary_of(st).filter(|(n, k)| *n == q && *k == 3)
    })
    .await
    .unwrap();
    must_ok(&db, qi, "insert into cart values (2, 'pen')");
    // A switchover to the primary itself is refused, saying why.
    let (code, _, err) = c.cli(&["resource", "switchover", "db", "--to", &q]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("already"), "{err}");
    for i in (0..3).filter(|i| *i != qi) {
        db.wait_sql(i, "select count(*) from cart", "2");
        assert_eq!(db.sql(i, "select pg_is_in_recovery()").1, "t", "n{}", i + 1);
    }

    // The primary's node loses power: fenced, then a replica is promoted with every row.
    c.kill(&q).unwrap();
    let (r, _) = c
        .wait_for(T, "a new primary after the fence", |st| {
            primary_of(st).filter(|(n, _)| *n != q)
        })
        .await
        .unwrap();
    let ri = index(&r);
    assert_eq!(db.sql(ri, "select count(*) from cart").1, "2");
    must_ok(&db, ri, "insert into cart values (3, 'ink')");
    let other = (0..3).find(|i| *i != qi && *i != ri).unwrap();
    db.wait_sql(other, "select count(*) from cart", "3");

    // Its node back, the old primary rejoins by itself (pg_rewind) as a replica of the new one.
    c.start(&q).unwrap();
    c.wait_for(T, "the old primary back as a replica", |st| {
        primary_of(st).filter(|(n, k)| *n == r && *k == 3)
    })
    .await
    .unwrap();
    db.wait_sql(qi, "select count(*) from cart", "3");
    assert_eq!(db.sql(qi, "select pg_is_in_recovery()").1, "t");
    // The history says how it came back.
    let (code, events, err) = c.cli(&["events"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        events.contains(&format!("rejoined as a replica of {r} (pg_rewind)")),
        "{events}"
    );
    must_ok(&db, ri, "insert into cart values (4, 'pad')");
    db.wait_sql(qi, "select count(*) from cart", "4");
}

fn must_ok(db: &Db, i: usize, q: &str) {
    let (ok, out) = db.sql(i, q);
    assert!(ok, "n{}: {q}: {out}", i + 1);
}

/// `initdb` on n1 only: n2 and n3 copy it from the primary at their first start.
fn prepare_one(root: &Path) -> Db {
    let u = user();
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Below the ephemeral range: a port the kernel handed out for `:0` was once taken by an
    // outgoing connection before PostgreSQL bound it (the full suite, cold caches).
    let ports: Vec<u16> = (0..3).map(|_| phalanx_node::ports::free_tcp_port().unwrap()).collect();
    let db = Db {
        dir: root.to_path_buf(),
        ports,
    };
    for i in 0..3 {
        std::fs::create_dir_all(db.node_dir(i)).unwrap();
        std::os::unix::fs::chown(db.node_dir(i), Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
    }
    must(
        "initdb",
        &["-D", &db.data(0), "--data-checksums", "-A", "trust", "-U", "postgres"],
    );
    db
}

/// Synchronous replication, RPO = 0: a writer commits rows one by one through whichever node
/// is primary and records each acknowledged one; the primary's node loses power mid-stream.
/// The replica promoted is the synchronous standby the primary had recorded, and every
/// acknowledged row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sync_on_no_acknowledged_commit_is_lost_when_the_primary_loses_power() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let root = tempfile::tempdir().unwrap();
    let db = prepare_one(root.path());
    let config = db.config().replace(
        "replication_user = \"postgres\"",
        "replication_user = \"postgres\", sync = \"on\"",
    );
    let mut c = LocalCluster::create(Spec::loopback(3, PathBuf::from(env!("CARGO_BIN_EXE_phalanx")), config)).unwrap();
    c.start_all().unwrap();
    // n1 holds the only data: it is the primary; n2 and n3 copy it.
    let (p, _) = c
        .wait_for(T, "a primary and two replicas", |st| {
            primary_of(st).filter(|(_, n)| *n == 3)
        })
        .await
        .unwrap();
    assert_eq!(p, "n1");
    must_ok(&db, 0, "create table cart (id int primary key)");
    // The synchronous standby the primary chose (recorded first, then named).
    let deadline = Instant::now() + T;
    let sync = loop {
        let (_, s) = db.sql(
            0,
            "select application_name from pg_stat_replication where sync_state = 'sync'",
        );
        if !s.is_empty() {
            break s;
        }
        assert!(Instant::now() < deadline, "no synchronous standby");
        std::thread::sleep(Duration::from_millis(100));
    };

    // The writer: one row per commit, through the node it is told is primary.
    let target = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<u32>::new()));
    let db = Arc::new(db);
    let writer = {
        let (target, stop, acked, db) = (target.clone(), stop.clone(), acked.clone(), db.clone());
        std::thread::spawn(move || {
            let mut id = 0u32;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                let (ok, _) = db.sql(
                    target.load(Ordering::SeqCst),
                    &format!("insert into cart values ({id})"),
                );
                if ok {
                    acked.lock().unwrap().push(id);
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    let deadline = Instant::now() + T;
    while acked.lock().unwrap().len() < 50 {
        assert!(Instant::now() < deadline, "the writer is not acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill("n1").unwrap();
    let (r, _) = c
        .wait_for(T, "a new primary after the fence", |st| {
            primary_of(st).filter(|(n, _)| n != "n1")
        })
        .await
        .unwrap();
    assert_eq!(r, sync, "the synchronous standby is promoted");
    let ri = index(&r);
    target.store(ri, Ordering::SeqCst);
    let before = acked.lock().unwrap().len();
    let deadline = Instant::now() + T;
    while acked.lock().unwrap().len() < before + 20 {
        assert!(Instant::now() < deadline, "no write acknowledged by the new primary");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let (ok, rows) = db.sql(ri, "select id from cart order by id");
    assert!(ok, "{rows}");
    let present: std::collections::BTreeSet<u32> = rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<u32> = acked.iter().copied().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged commits lost: {lost:?}", lost.len());
    eprintln!("{} acknowledged commits, none lost", acked.len());
}
