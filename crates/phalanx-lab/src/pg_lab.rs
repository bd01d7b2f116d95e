//! PostgreSQL in the network-namespace lab (issue 18): three lab nodes run Debian's
//! PostgreSQL 15, managed either by phalanx (the built-in `pgsql` agent, `sync = "on"`, a write
//! VIP colocated with the primary) or by Patroni (Debian's patroni on a 3-member etcd in the
//! same namespaces, `synchronous_mode`), and a writer in the client namespace commits one row
//! per transaction through the write address, recording every acknowledged commit. The
//! primary's node crashes (every process frozen, killed, its links unplugged); the writer's
//! log gives the write outage (first failed commit → first commit acknowledged after it), and
//! the new primary's table the acknowledged commits that are missing. The crashed node is then
//! revived and must rejoin as a replica. `phalanx-lab bench pg-failover` (`tests/lab/pg-failover`)
//! and the lab tests drive it.

use crate::lab::{cluster_in, in_netns, Lab, VIP};
use anyhow::{bail, Context, Result};
use phalanx::harness::LocalCluster;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BINDIR: &str = "/usr/lib/postgresql/15/bin";
pub const PATRONI: &str = "/usr/bin/patroni";
/// Every node's PostgreSQL port (one per namespace, so the same everywhere).
pub const PG_PORT: u16 = 5432;
/// How long one commit may take before the writer counts it failed (a commit in flight to a
/// crashed primary never answers: this bounds how late the writer notices), and one connection
/// attempt (on a LAN a connection takes well under a millisecond; nobody holding the write
/// VIP yet means no answer at all).
const OP_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

fn postgres_user() -> Result<nix::unistd::User> {
    if !Path::new(BINDIR).join("initdb").is_file() {
        bail!("PostgreSQL 15 is not installed (apt-get install postgresql-15; tests/run does)");
    }
    nix::unistd::User::from_name("postgres")?.context("no postgres user (apt-get install postgresql-15)")
}

/// Run a PostgreSQL program as the postgres user, failing with its output.
fn pg(program: &str, args: &[&str]) -> Result<String> {
    let u = postgres_user()?;
    let out = Command::new(Path::new(BINDIR).join(program))
        .args(args)
        .current_dir("/")
        .env("LANG", "C")
        .uid(u.uid.as_raw())
        .gid(u.gid.as_raw())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), text.trim());
    }
    Ok(text)
}

/// The folders of a PostgreSQL lab: `ROOT/nI` per node (owned by postgres: the socket and
/// log live there), data in `ROOT/nI/data`. Removed on drop unless `PHALANX_KEEP` is set.
pub struct PgDirs {
    pub root: PathBuf,
}

impl PgDirs {
    pub fn create(nodes: usize) -> Result<PgDirs> {
        use std::os::unix::fs::PermissionsExt as _;
        let u = postgres_user()?;
        let root = std::env::temp_dir().join(format!("phalanx-pglab-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let d = PgDirs { root };
        for i in 1..=nodes {
            std::fs::create_dir_all(d.node_dir(i))?;
            std::os::unix::fs::chown(d.node_dir(i), Some(u.uid.as_raw()), Some(u.gid.as_raw()))?;
        }
        Ok(d)
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("n{i}"))
    }

    pub fn data(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("data")
    }

    /// `initdb` on node `i` as the README says (checksums on, so `pg_rewind` works), open to
    /// the lab's network without passwords (the lab is closed; authentication is not under test).
    pub fn initdb(&self, i: usize) -> Result<()> {
        let data = self.data(i).display().to_string();
        pg(
            "initdb",
            &["-D", &data, "--data-checksums", "-A", "trust", "-U", "postgres"],
        )?;
        let hba = self.data(i).join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba)?;
        text += "host all all 10.77.0.0/16 trust\nhost replication all 10.77.0.0/16 trust\n";
        std::fs::write(&hba, text)?;
        Ok(())
    }

    /// n1 initialized ([`initdb`](Self::initdb)) and copied with `pg_basebackup` to the other
    /// `nodes`, as the agents written for Pacemaker expect their data prepared.
    pub fn initdb_and_copy(&self, nodes: usize) -> Result<()> {
        self.initdb(1)?;
        // n1 up on its socket only (this is the root namespace), to be copied.
        let sock = self.node_dir(1).display().to_string();
        let data1 = self.data(1).display().to_string();
        // WAL kept for the copies: a replica must find every segment after its copy's start.
        let opts = format!("-c listen_addresses='' -c wal_keep_size=512MB -k {sock} -p {PG_PORT}");
        pg("pg_ctl", &["start", "-D", &data1, "-w", "-o", &opts, "-l", "/dev/null"])?;
        let copied = (2..=nodes).try_for_each(|i| {
            let data = self.data(i).display().to_string();
            pg(
                "pg_basebackup",
                &[
                    "-D",
                    &data,
                    "-h",
                    &sock,
                    "-p",
                    &PG_PORT.to_string(),
                    "-U",
                    "postgres",
                    "-X",
                    "stream",
                ],
            )
            .map(|_| ())
        });
        pg("pg_ctl", &["stop", "-D", &data1, "-m", "fast", "-w"])?;
        copied
    }
}

impl Drop for PgDirs {
    fn drop(&mut self) {
        if std::env::var_os("PHALANX_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("kept {}", self.root.display());
        }
    }
}

/// The phalanx config of the PostgreSQL lab: clone `db` of `pg` (promotable, `sync`), each
/// node's data and socket in its folder, listening on every address (the write VIP included),
/// and `write-ip` ([`VIP`]) on the primary.
pub fn phalanx_config(dirs: &PgDirs, nodes: usize, sync: &str) -> String {
    let mut params = vec![
        "replication_user = \"postgres\"".to_string(),
        format!("sync = \"{sync}\""),
        "listen = \"*\"".to_string(),
    ];
    for i in 1..=nodes {
        params.push(format!("\"pgdata@n{i}\" = \"{}\"", dirs.data(i).display()));
        params.push(format!("\"socket_dir@n{i}\" = \"{}\"", dirs.node_dir(i).display()));
    }
    format!(
        r#"
[[resource]]
id = "pg"
agent = "pgsql"
start_timeout = "120s"
monitor = {{ interval = "1s", timeout = "10s" }}
params = {{ {} }}

[[clone]]
id = "db"
resource = "pg"
promotable = true
"#,
        params.join(", ")
    ) + &write_vip("db")
}

/// The write VIP ([`VIP`], resource `write-ip`) on the primary of promotable clone `clone`.
fn write_vip(clone: &str) -> String {
    format!(
        r#"
[[resource]]
id = "write-ip"
agent = "vip"
params = {{ address = "{VIP}/24" }}
monitor = {{ interval = "1s", timeout = "5s" }}

[[constraint]]
colocate = "write-ip"
with = "{clone}"
with_role = "promoted"
"#
    )
}

/// A started 3-node phalanx cluster in `lab` (100 ms heartbeats) running `extra_config`.
fn start_cluster(lab: &Lab, exe: &Path, extra_config: String) -> Result<LocalCluster> {
    let mut cluster = cluster_in(crate::lab::spec(lab, lab.nodes, exe, extra_config), lab)?;
    // Every node answers Patroni's health endpoints token-free on its health port.
    let text = std::fs::read_to_string(&cluster.config_path)?;
    let text = (1..=lab.nodes).fold(text, |t, i| {
        let ip = lab.node_ip(i, 0);
        t.replace(
            &format!("api = \"{ip}:7480\"\n"),
            &format!("api = \"{ip}:7480\"\nmetrics_listen = \"{ip}:{HEALTH_PORT}\"\n"),
        )
    });
    std::fs::write(&cluster.config_path, text)?;
    cluster.start_all()?;
    Ok(cluster)
}

/// The port each lab node answers Patroni's health endpoints on without a token: its
/// `metrics_listen`, where HAProxy's checks reach them as they reach Patroni's 8008.
pub const HEALTH_PORT: u16 = 9664;

/// Where [`PatroniHaproxy`] takes connections for the primary and for the replicas (port
/// [`PG_PORT`], in the client namespace).
pub const HAPROXY_PRIMARY: &str = "127.0.0.1";
pub const HAPROXY_REPLICAS: &str = "127.0.0.2";

/// HAProxy in the client namespace with the configuration Patroni documents (its
/// `haproxy.cfg`: `mode tcp`, `option httpchk OPTIONS /primary`, `http-check expect status
/// 200`, `on-marked-down shutdown-sessions`, each server checked on its node's health port),
/// pointed at the lab's nodes; only the check interval is shorter (`inter 500ms`, not 3 s) to
/// keep tests short. `primary` on [`HAPROXY_PRIMARY`], `replicas` (`/replica`) on
/// [`HAPROXY_REPLICAS`]. Stopped on drop.
pub struct PatroniHaproxy {
    _haproxy: crate::bench_lb::Killed,
}

impl PatroniHaproxy {
    pub fn start(lab: &Lab, dir: &Path) -> Result<PatroniHaproxy> {
        let haproxy = crate::bench_lb::HAPROXY;
        if !Path::new(haproxy).is_file() {
            bail!("{haproxy} not found (apt-get install haproxy; tests/run does)");
        }
        let mut cfg = String::from(
            "global\n    maxconn 100\n\ndefaults\n    mode tcp\n    retries 2\n    timeout client 30m\n    timeout connect 4s\n    timeout server 30m\n    timeout check 5s\n",
        );
        for (name, bind, path) in [
            ("primary", HAPROXY_PRIMARY, "/primary"),
            ("replicas", HAPROXY_REPLICAS, "/replica"),
        ] {
            cfg += &format!(
                "\nlisten {name}\n    bind {bind}:{PG_PORT}\n    option httpchk OPTIONS {path}\n    http-check expect status 200\n    default-server inter 500ms fall 3 rise 2 on-marked-down shutdown-sessions\n"
            );
            for i in 1..=lab.nodes {
                cfg += &format!(
                    "    server n{i} {}:{PG_PORT} maxconn 100 check port {HEALTH_PORT}\n",
                    lab.node_ip(i, 0)
                );
            }
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, cfg)?;
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let child = phalanx::netns::command_in(&lab.client_ns(), haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy")?;
        Ok(PatroniHaproxy {
            _haproxy: crate::bench_lb::Killed(child),
        })
    }
}

/// Whether the PostgreSQL that answers at `host` (from the client namespace) is in recovery (a
/// replica); None if none answers.
pub fn in_recovery_at(lab: &Lab, host: &str) -> Result<Option<bool>> {
    let host = host.to_string();
    in_client(lab, move || async move {
        let Some(c) = connect(&host, false).await else {
            return Ok(None);
        };
        let row = tokio::time::timeout(OP_TIMEOUT, c.query_one("select pg_is_in_recovery()", &[])).await;
        Ok(match row {
            Ok(Ok(r)) => Some(r.get::<_, bool>(0)),
            _ => None,
        })
    })
}

/// A connection from the client namespace's thread to `host`'s PostgreSQL, if it answers
/// within [`OP_TIMEOUT`] and is the primary (when `primary` is asked for).
async fn connect(host: &str, primary: bool) -> Option<tokio_postgres::Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(PG_PORT)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(CONNECT_TIMEOUT);
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(tokio_postgres::NoTls))
        .await
        .ok()?
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    if primary {
        let row = tokio::time::timeout(OP_TIMEOUT, client.query_one("select pg_is_in_recovery()", &[]))
            .await
            .ok()?
            .ok()?;
        if row.get::<_, bool>(0) {
            return None;
        }
    }
    Some(client)
}

/// The first of `hosts` that answers as the primary, asked all at once (libpq's
/// `target_session_attrs=read-write` asks one after the other: this is the faster client).
async fn connect_primary(hosts: &[String]) -> Option<tokio_postgres::Client> {
    let mut set = tokio::task::JoinSet::new();
    for h in hosts {
        let h = h.clone();
        set.spawn(async move { connect(&h, true).await });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Some(c)) = r {
            return Some(c);
        }
    }
    None
}

/// Run `f` with a client-namespace runtime (a thread of its own: its sockets live there).
fn in_client<T: Send + 'static, F>(lab: &Lab, f: impl FnOnce() -> F + Send + 'static) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    in_netns(&lab.client_ns(), move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// SQL statements on the primary (found among `hosts`), from the client namespace: the first
/// column of the last one's rows, as text.
pub fn sql_primary(lab: &Lab, hosts: &[String], statements: &[&str]) -> Result<Vec<String>> {
    let hosts = hosts.to_vec();
    let statements: Vec<String> = statements.iter().map(|s| s.to_string()).collect();
    in_client(lab, move || async move {
        let c = connect_primary(&hosts).await.context("no primary answers")?;
        let mut last = Vec::new();
        for s in &statements {
            last = c
                .simple_query(s)
                .await
                .with_context(|| s.clone())?
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect();
        }
        Ok(last)
    })
}

/// Which of the lab's nodes (1-based) is the primary, as each node's PostgreSQL says: exactly
/// one primary and `replicas` streaming to it, one of them synchronous if `sync`; else None.
pub fn primary_with_replicas(lab: &Lab, replicas: usize, sync: bool) -> Result<Option<usize>> {
    let hosts: Vec<String> = (1..=lab.nodes).map(|i| lab.node_ip(i, 0).to_string()).collect();
    in_client(lab, move || async move {
        let mut primaries = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            if let Some(c) = connect(h, true).await {
                // Replicas only (their application_name is their node's name): a copy in
                // progress (pg_basebackup) streams too.
                let q = "select count(*) filter (where state = 'streaming'), count(*) filter (where sync_state = 'sync') from pg_stat_replication where application_name ~ '^n[0-9]+$'";
                let Ok(Ok(row)) = tokio::time::timeout(OP_TIMEOUT, c.query_one(q, &[])).await else {
                    continue;
                };
                let (streaming, n_sync): (i64, i64) = (row.get(0), row.get(1));
                primaries.push((i + 1, streaming as usize == replicas && (!sync || n_sync == 1)));
            }
        }
        Ok(match primaries.as_slice() {
            [(i, true)] => Some(*i),
            _ => None,
        })
    })
}

/// One SQL query on lab node `i`'s PostgreSQL (primary or not): each row's columns joined by
/// `|` (diagnostics).
pub fn sql_on(lab: &Lab, i: usize, q: &str) -> Result<Vec<String>> {
    let (host, q) = (lab.node_ip(i, 0).to_string(), q.to_string());
    in_client(lab, move || async move {
        let c = connect(&host, false).await.context("no answer")?;
        Ok(c.simple_query(&q)
            .await?
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|k| r.get(k).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect())
    })
}

/// What each node's PostgreSQL says about replication (for a failure's message).
pub fn replication_report(lab: &Lab) -> String {
    (1..=lab.nodes)
        .map(|i| {
            let q = "select 'sender', application_name, state, sync_state from pg_stat_replication union all select 'receiver', sender_host, status, coalesce(latest_end_lsn::text, '') from pg_stat_wal_receiver union all select 'recovery', pg_is_in_recovery()::text, '', ''";
            format!("n{i}: {:?}", sql_on(lab, i, q).map_err(|e| format!("{e:#}")))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lab nodes (1-based) whose PostgreSQL answers as a primary.
pub fn primaries(lab: &Lab) -> Result<Vec<usize>> {
    let hosts: Vec<String> = (1..=lab.nodes).map(|i| lab.node_ip(i, 0).to_string()).collect();
    in_client(lab, move || async move {
        let mut found = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            if connect(h, true).await.is_some() {
                found.push(i + 1);
            }
        }
        Ok(found)
    })
}

/// Poll [`primary_with_replicas`] until it answers, or fail after `within`.
pub fn wait_primary(lab: &Lab, replicas: usize, sync: bool, within: Duration) -> Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(p) = primary_with_replicas(lab, replicas, sync)? {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("no primary with {replicas} streaming replicas (synchronous: {sync}) within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One commit attempt of the writer: when it was sent, when it ended, and whether it was
/// acknowledged (the row's id) or failed (a connection that could not be made counts too).
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub sent: Instant,
    pub done: Instant,
    pub acked: Option<i64>,
}

/// A writer in the client namespace: one `insert` per transaction (ids from `first_id` up),
/// through the primary among `hosts` (the write VIP alone for phalanx), reconnecting after
/// every failure; every attempt logged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Op>>>,
    handle: std::thread::JoinHandle<Result<()>>,
}

impl Writer {
    pub fn start(lab: &Lab, hosts: Vec<String>, first_id: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let handle = in_netns(&lab.client_ns(), move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(write_loop(hosts, first_id, s, l));
            Ok(())
        });
        Writer { stop, log, handle }
    }

    pub fn acked(&self) -> usize {
        self.log
            .lock()
            .map(|l| l.iter().filter(|o| o.acked.is_some()).count())
            .unwrap_or(0)
    }

    /// Acknowledged commits that ended after `t`.
    pub fn acked_after(&self, t: Instant) -> usize {
        self.log
            .lock()
            .map(|l| l.iter().filter(|o| o.acked.is_some() && o.done > t).count())
            .unwrap_or(0)
    }

    /// Poll until `n` commits were acknowledged after `t`, or fail after `within`.
    pub fn wait_acked_after(&self, t: Instant, n: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while self.acked_after(t) < n {
            if Instant::now() > deadline {
                bail!(
                    "the writer had {} commits acknowledged, not {n}, within {within:?}",
                    self.acked_after(t)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Poll until the writer failed after `from` and then had `n` commits acknowledged, or
    /// fail after `within`.
    pub fn wait_recovered(&self, from: Instant, n: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let back = self
                .log
                .lock()
                .ok()
                .and_then(|l| outage_bounds(&l, from))
                .map(|(_, b)| b);
            if back.is_some_and(|b| self.acked_after(b) >= n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no commit acknowledged after a failure within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn finish(self) -> Result<Vec<Op>> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
        let log = self.log.lock().map_err(|_| anyhow::anyhow!("the writer's log"))?;
        Ok(log.clone())
    }
}

async fn write_loop(hosts: Vec<String>, first_id: i64, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Op>>>) {
    let mut id = first_id;
    let mut client: Option<tokio_postgres::Client> = None;
    let push = |op: Op| {
        if let Ok(mut l) = log.lock() {
            l.push(op);
        }
    };
    // Connection attempts in flight: a new one every 20 ms while none succeeds, so that one
    // hanging on an address nobody holds yet (up to its timeout) does not hide the moment the
    // write address answers again.
    let mut attempts = tokio::task::JoinSet::new();
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let Some(c) = client.as_ref() else {
            let h = hosts.clone();
            attempts.spawn(async move { connect_primary(&h).await });
            let tick = tokio::time::sleep(Duration::from_millis(20));
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    Some(r) = attempts.join_next() => {
                        if let Ok(Some(c)) = r {
                            client = Some(c);
                            attempts.abort_all();
                            break;
                        }
                    }
                    _ = &mut tick => break,
                }
            }
            if client.is_none() {
                push(Op {
                    sent,
                    done: Instant::now(),
                    acked: None,
                });
            }
            continue;
        };
        id += 1;
        let r = tokio::time::timeout(OP_TIMEOUT, c.execute("insert into acks values ($1)", &[&id])).await;
        let done = Instant::now();
        if matches!(r, Ok(Ok(1))) {
            push(Op {
                sent,
                done,
                acked: Some(id),
            });
        } else {
            push(Op {
                sent,
                done,
                acked: None,
            });
            client = None;
        }
    }
}

/// The write outage after `from`: the first failed attempt that ended after it (when it was
/// sent) and the first acknowledged commit sent after that one (when it ended); None: no
/// failure, or no recovery yet.
fn outage_bounds(log: &[Op], from: Instant) -> Option<(Instant, Instant)> {
    let first_fail = log.iter().find(|o| o.acked.is_none() && o.done >= from)?;
    let back = log.iter().find(|o| o.acked.is_some() && o.sent > first_fail.sent)?;
    Some((first_fail.sent, back.done))
}

/// The write outage after `from` (see `outage_bounds`).
pub fn write_outage(log: &[Op], from: Instant) -> Option<Duration> {
    outage_bounds(log, from).map(|(a, b)| b.saturating_duration_since(a))
}

/// The acknowledged commits of `log` missing from the table as the primary among `hosts`
/// answers now.
pub fn lost_commits(lab: &Lab, hosts: &[String], log: &[Op]) -> Result<Vec<i64>> {
    let acked: Vec<i64> = log.iter().filter_map(|o| o.acked).collect();
    let (Some(lo), Some(hi)) = (acked.iter().min(), acked.iter().max()) else {
        return Ok(Vec::new());
    };
    let present: std::collections::BTreeSet<i64> = sql_primary(
        lab,
        hosts,
        &[&format!("select id from acks where id between {lo} and {hi}")],
    )?
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect();
    Ok(acked.into_iter().filter(|id| !present.contains(id)).collect())
}

/// A phalanx cluster running PostgreSQL in `lab` (3 nodes, 2 links, 100 ms heartbeats): n1
/// initialized, n2 and n3 copying it at their first start; the write VIP on the primary.
pub struct PhalanxPg {
    pub cluster: LocalCluster,
    pub dirs: PgDirs,
}

impl PhalanxPg {
    pub async fn start(lab: &Lab, exe: &Path, sync: &str) -> Result<PhalanxPg> {
        let dirs = PgDirs::create(lab.nodes)?;
        dirs.initdb(1)?;
        let cluster = start_cluster(lab, exe, phalanx_config(&dirs, lab.nodes, sync))?;
        Ok(PhalanxPg { cluster, dirs })
    }

    /// The write address.
    pub fn write_hosts() -> Vec<String> {
        vec![VIP.to_string()]
    }
}

/// An agent written for Pacemaker (`ocf:heartbeat:KIND`) as resource `id` with `params`: a
/// promotable clone `pgsql-ha` with `notify = true`, and the write VIP on its primary.
fn pacemaker_agent_config(id: &str, kind: &str, params: &[String]) -> String {
    format!(
        r#"
[[resource]]
id = "{id}"
agent = "ocf:heartbeat:{kind}"
start_timeout = "60s"
stop_timeout = "60s"
monitor = {{ interval = "2s", timeout = "10s" }}
params = {{ {} }}

[[clone]]
id = "pgsql-ha"
resource = "{id}"
promotable = true
notify = true
"#,
        params.join(", ")
    ) + &write_vip("pgsql-ha")
}

/// PostgreSQL run by PAF (Debian's `resource-agents-paf`: `ocf:heartbeat:pgsqlms`, written for
/// Pacemaker) under phalanx, unchanged: the data prepared as PAF's documentation says (n1
/// initialized, copied with `pg_basebackup` to n2 and n3, each with `primary_conninfo` naming
/// the write VIP and its own `application_name`, `recovery_target_timeline = 'latest'`,
/// synchronous replication to any one standby, `synchronous_standby_names = '*'`: PAF does not
/// manage it, and without it a crash may lose the last acknowledged commits, which the lab
/// test once saw), a promotable clone with `notify = true`, and the write VIP on the primary.
pub struct PafPg {
    pub cluster: LocalCluster,
    pub dirs: PgDirs,
}

pub const PAF: &str = "/usr/lib/ocf/resource.d/heartbeat/pgsqlms";

impl PafPg {
    pub async fn start(lab: &Lab, exe: &Path) -> Result<PafPg> {
        if !Path::new(PAF).is_file() {
            bail!("{PAF} not found (apt-get install resource-agents-paf; tests/run does)");
        }
        let dirs = PgDirs::create(lab.nodes)?;
        dirs.initdb_and_copy(lab.nodes)?;
        for i in 1..=lab.nodes {
            let conf = dirs.data(i).join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf)?;
            text += &format!(
                "\n# the PostgreSQL lab (PAF)\nlisten_addresses = '*'\nport = {PG_PORT}\nunix_socket_directories = '{}'\nwal_keep_size = '512MB'\nlogging_collector = on\nrecovery_target_timeline = 'latest'\nprimary_conninfo = 'host={VIP} port={PG_PORT} user=postgres application_name=n{i}'\nsynchronous_standby_names = '*'\n",
                dirs.node_dir(i).display()
            );
            std::fs::write(&conf, text)?;
        }
        let mut params = vec![format!("bindir = \"{BINDIR}\""), format!("pgport = \"{PG_PORT}\"")];
        for i in 1..=lab.nodes {
            params.push(format!("\"pgdata@n{i}\" = \"{}\"", dirs.data(i).display()));
            params.push(format!("\"pghost@n{i}\" = \"{}\"", dirs.node_dir(i).display()));
        }
        let cluster = start_cluster(lab, exe, pacemaker_agent_config("pgsqld", "pgsqlms", &params))?;
        Ok(PafPg { cluster, dirs })
    }
}

/// PostgreSQL run by Debian's `ocf:heartbeat:pgsql` (resource-agents, written for Pacemaker)
/// under phalanx, unchanged, as its documentation sets it up for replication: n1 initialized
/// and copied to the others, `rep_mode = "sync"`, `node_list` naming the
/// three nodes, `master_ip` the write VIP (the agent writes `primary_conninfo` itself, in
/// `tmpdir`, and includes it in `postgresql.conf`), a promotable clone with `notify = true`, and
/// the write VIP on the primary. The agent reads `crm_mon -1 --output-as=xml` and
/// `crm_attribute`, which the daemon provides (`phalanx::pcmk_shim`).
pub struct OcfPgsql {
    pub cluster: LocalCluster,
    pub dirs: PgDirs,
}

pub const OCF_PGSQL: &str = "/usr/lib/ocf/resource.d/heartbeat/pgsql";

impl OcfPgsql {
    pub async fn start(lab: &Lab, exe: &Path) -> Result<OcfPgsql> {
        if !Path::new(OCF_PGSQL).is_file() {
            bail!("{OCF_PGSQL} not found (apt-get install resource-agents; tests/run does)");
        }
        let dirs = PgDirs::create(lab.nodes)?;
        // Every node starts from the same files (copies of n1's, never started), so that the
        // agent's own choice of the newest at first start may fall on any of them. With
        // `pg_basebackup` copies n1's shutdown checkpoint puts it ahead of the others, and a
        // node whose monitors finished counting before n1 published its position claimed the
        // master right, was promoted, and n1 could not follow it (1 full run in 3).
        dirs.initdb(1)?;
        for i in 2..=lab.nodes {
            let ok = Command::new("cp")
                .arg("-a")
                .arg(dirs.data(1))
                .arg(dirs.data(i))
                .status()?
                .success();
            if !ok {
                bail!("copying n1's data to n{i} failed");
            }
        }
        let mut params = vec![
            format!("pgctl = \"{BINDIR}/pg_ctl\""),
            format!("psql = \"{BINDIR}/psql\""),
            format!("pgport = \"{PG_PORT}\""),
            "rep_mode = \"sync\"".to_string(),
            format!(
                "node_list = \"{}\"",
                (1..=lab.nodes).map(|i| format!("n{i}")).collect::<Vec<_>>().join(" ")
            ),
            format!("master_ip = \"{VIP}\""),
            "repuser = \"postgres\"".to_string(),
            "restart_on_promote = \"false\"".to_string(),
        ];
        for i in 1..=lab.nodes {
            let conf = dirs.data(i).join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf)?;
            text += &format!(
                "\n# the PostgreSQL lab (ocf:heartbeat:pgsql)\nlisten_addresses = '*'\nport = {PG_PORT}\nunix_socket_directories = '{}'\nwal_keep_size = '512MB'\nlogging_collector = on\n",
                dirs.node_dir(i).display()
            );
            std::fs::write(&conf, text)?;
            params.push(format!("\"pgdata@n{i}\" = \"{}\"", dirs.data(i).display()));
            params.push(format!("\"socketdir@n{i}\" = \"{}\"", dirs.node_dir(i).display()));
            params.push(format!(
                "\"tmpdir@n{i}\" = \"{}\"",
                dirs.node_dir(i).join("tmp").display()
            ));
        }
        let cluster = start_cluster(lab, exe, pacemaker_agent_config("pgsql", "pgsql", &params))?;
        Ok(OcfPgsql { cluster, dirs })
    }
}

/// Patroni's timing: `ttl`, `loop_wait`, `retry_timeout` (seconds).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PatroniTiming {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl PatroniTiming {
    /// Patroni's defaults.
    pub const DEFAULT: PatroniTiming = PatroniTiming {
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
    };
    /// The fastest its documentation allows: the minimums (ttl 20, loop_wait 1, retry_timeout
    /// 3), which keep its rule loop_wait + 2 × retry_timeout ≤ ttl.
    pub const FASTEST: PatroniTiming = PatroniTiming {
        ttl: 20,
        loop_wait: 1,
        retry_timeout: 3,
    };
}

/// Patroni (with its etcd member) on every lab node, bootstrapping PostgreSQL itself.
pub struct PatroniPg {
    pub dirs: PgDirs,
    timing: PatroniTiming,
    /// Per node: its etcd and its patroni (None once crashed).
    procs: Vec<Vec<Child>>,
}

impl PatroniPg {
    pub fn start(lab: &Lab, timing: PatroniTiming) -> Result<PatroniPg> {
        if !Path::new(PATRONI).is_file() {
            bail!("{PATRONI} not found (apt-get install patroni; tests/lab/pg-failover does)");
        }
        let dirs = PgDirs::create(lab.nodes)?;
        let mut p = PatroniPg {
            dirs,
            timing,
            procs: (0..lab.nodes).map(|_| Vec::new()).collect(),
        };
        for i in 1..=lab.nodes {
            p.start_node(lab, i, true)?;
        }
        Ok(p)
    }

    pub fn write_hosts(lab: &Lab) -> Vec<String> {
        (1..=lab.nodes).map(|i| lab.node_ip(i, 0).to_string()).collect()
    }

    fn config(&self, lab: &Lab, i: usize) -> String {
        let ip = lab.node_ip(i, 0);
        let etcd: Vec<String> = (1..=lab.nodes).map(|j| format!("{}:2379", lab.node_ip(j, 0))).collect();
        let dir = self.dirs.node_dir(i);
        let t = self.timing;
        format!(
            r#"scope: lab
name: n{i}
log:
  level: INFO
restapi:
  listen: {ip}:8008
  connect_address: {ip}:8008
etcd3:
  hosts: {etcd}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_keep_size: 512MB
  initdb:
  - encoding: UTF8
  - data-checksums
  pg_hba:
  - local all all trust
  - host all all 10.77.0.0/16 trust
  - host replication all 10.77.0.0/16 trust
postgresql:
  listen: 0.0.0.0:{PG_PORT}
  connect_address: {ip}:{PG_PORT}
  data_dir: {data}
  bin_dir: {BINDIR}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: lab
    replication:
      username: replicator
      password: lab
  parameters:
    unix_socket_directories: '{dir}'
"#,
            etcd = etcd.join(","),
            ttl = t.ttl,
            loop_wait = t.loop_wait,
            retry_timeout = t.retry_timeout,
            data = self.dirs.node_dir(i).join("patroni").display(),
            dir = dir.display(),
        )
    }

    /// Start node `i`'s etcd member and Patroni (`new`: the etcd cluster's first start).
    fn start_node(&mut self, lab: &Lab, i: usize, new: bool) -> Result<()> {
        let ns = lab.node_ns(i);
        let dir = self.dirs.node_dir(i);
        let ip = lab.node_ip(i, 0);
        let peers: Vec<String> = (1..=lab.nodes)
            .map(|j| format!("n{j}=http://{}:2380", lab.node_ip(j, 0)))
            .collect();
        let log = |name: &str| -> Result<(std::fs::File, std::fs::File)> {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))?;
            Ok((f.try_clone()?, f))
        };
        let (o, e) = log("etcd.log")?;
        let etcd = phalanx::netns::command_in(&ns, crate::peer_etcd::ETCD)
            .args(["--name", &format!("n{i}")])
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &format!("http://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{ip}:2380")])
            .args(["--initial-cluster", &peers.join(",")])
            .args(["--initial-cluster-state", if new { "new" } else { "existing" }])
            .args(["--initial-cluster-token", "pglab"])
            .stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            .spawn()
            .context("starting etcd")?;
        let cfg = dir.join("patroni.yml");
        std::fs::write(&cfg, self.config(lab, i))?;
        let (o, e) = log("patroni.log")?;
        let patroni = phalanx::netns::command_in(&ns, "runuser")
            .args(["-u", "postgres", "--", PATRONI])
            .arg(&cfg)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            .spawn()
            .context("starting patroni")?;
        self.procs[i - 1] = vec![etcd, patroni];
        Ok(())
    }

    /// Node `i` back from a crash: its processes reaped, its etcd member and Patroni started.
    pub fn restart_node(&mut self, lab: &Lab, i: usize) -> Result<()> {
        for mut c in std::mem::take(&mut self.procs[i - 1]) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.start_node(lab, i, false)
    }
}

impl Drop for PatroniPg {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(sent_ms: u64, done_ms: u64, acked: bool, t0: Instant) -> Op {
        Op {
            sent: t0 + Duration::from_millis(sent_ms),
            done: t0 + Duration::from_millis(done_ms),
            acked: acked.then_some(sent_ms as i64),
        }
    }

    #[test]
    fn the_write_outage_runs_from_the_first_failure_to_the_next_acknowledged_commit() {
        let t0 = Instant::now();
        let log = [
            op(0, 5, true, t0),
            op(10, 1010, false, t0),
            op(1010, 1030, false, t0),
            op(1050, 1060, true, t0),
            op(1070, 1080, true, t0),
        ];
        assert_eq!(write_outage(&log, t0), Some(Duration::from_millis(1050)));
        // A failure before `from` that ended before it is not this fault's.
        assert_eq!(write_outage(&log, t0 + Duration::from_millis(1040)), None);
        assert_eq!(write_outage(&log[..3], t0), None, "never recovered");
    }
}
