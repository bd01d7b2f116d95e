//! The session store on a node (issue 15): the `sessions` Raft group (`raft::sessions`), run
//! on its own runtime ([`runtime`], threads at a lowered priority like the balancer's) so that
//! a storm of session writes never delays the cluster group, heartbeats or plans.
//! - The write path: every write request is queued to one batcher per node; on the leader it
//!   proposes what has gathered as one entry (one fsynced append for many writes), a follower
//!   forwards its batches to the leader, several at once, and the leader's batcher merges them
//!   with its own (a connection has one submission in flight at a time, so its writes keep
//!   their order).
//! - The read path: a read waits for a read index. The leader confirms its leadership with a
//!   quorum once for every read that arrived before the round began, or reads on the lease
//!   such a round gave it (`leader_read_index`; while it holds, `read_point` answers at once,
//!   without the gate: `leased_point`), never below a commit index it sent its followers
//!   (`commit_sent`); a follower asks the leader for the index and its time, waits until it has
//!   applied it, and answers from its own copy.
//! - Upkeep (`Sessions::upkeep`): heartbeats and elections on only while `[sessions]` is
//!   configured, the group's members following the cluster's, leader and eviction events.
//! - Between nodes, the group's appends and votes, forwarded writes and read-index requests go
//!   over one long-lived stream per peer (`stream`), not an HTTP request each.
//! - The applied store lives in memory (the log persists every change); a node snapshots it
//!   once its log since the last snapshot is long enough ([`SNAPSHOT_LOG_BYTES`]), which also
//!   bounds what a restarted node applies again.
//!
//! The memcached listener is `listener`; its connections run on threads of their own
//! ([`clients_runtime`]).

pub mod listener;
pub mod stream;

use crate::raft::network::{decode, encode, HttpNetwork, RpcError};
use crate::raft::sessions::{Answers, Batch, SessionsGroup, SessionsRaft, SessionsSm};
use crate::raft::{BasicNode, NodeId};
use openraft::ChangeMembers;
use phalanx_core::config::SessionsConfig;
use phalanx_core::events::{EventKind, Note};
use phalanx_core::sessions::protocol::Request;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a write or a read waits for a leader, a commit or a read index before the client
/// gets `SERVER_ERROR` (a leader election takes a few hundred ms).
pub const WAIT: Duration = Duration::from_secs(3);
/// The most requests, and bytes of them, one logged batch carries.
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Entries the leader has proposed and not yet committed (beyond this, its batcher waits and
/// the queue grows into the next entry). openraft 0.9 appends, and so fsyncs, each proposal on
/// its own: many small entries in flight cost an fsync each, while two let one entry be
/// fsynced and replicated while the next gathers everything queued meanwhile (group commit).
const IN_FLIGHT: usize = 2;
/// Batches a follower has forwarded and not yet had answered (the leader merges them).
const FORWARDS_IN_FLIGHT: usize = 8;
/// A node snapshots the store (and its log is then purged behind it) once the log since its
/// last snapshot holds this many bytes or [`SNAPSHOT_LOG_ENTRIES`] entries, as etcd snapshots
/// every 100,000 writes. Building one copies, encodes and stores the whole store (about 200 ms
/// of a core for 10,000 items of 100-1000 B on the benchmark's machine, on every node at once):
/// the earlier 5,000 entries, whatever their size, did that every 15 s under the benchmark's
/// load and set its p99 at half load. A snapshot is also what a restarted node loads: it
/// applies again at most this much log after it (times its [`snapshot_share`]).
const SNAPSHOT_LOG_BYTES: u64 = 128 << 20;
const SNAPSHOT_LOG_ENTRIES: u64 = 100_000;
/// Log entries kept behind a snapshot when the log is purged (a follower that far behind
/// catches up from the log, not a snapshot).
const KEPT_BEHIND_SNAPSHOT: u64 = 1000;

/// A test knob: with this variable set to 1 the node's session log is small — segments of
/// 16 KiB, a snapshot every 400 entries (times [`snapshot_share`]), 50 entries kept behind
/// it — so that a test's few thousand writes cross snapshots, purges, segment removals and
/// snapshot installs. Never set it on a real cluster (snapshots would cost a core).
pub const SMALL_LOG: &str = "PHALANX_TEST_SESSIONS_SMALL_LOG";

/// A test knob: with this variable set to N, the node applies each batch of the session log N
/// ms late, so that a test can hold a committed write unapplied on the leader while its
/// followers apply it. Never set it on a real cluster.
pub const APPLY_DELAY: &str = "PHALANX_TEST_SESSIONS_APPLY_DELAY_MS";

/// When the node's session log is snapshotted and purged, and its segments' size.
#[derive(Debug, Clone, Copy)]
pub struct LogBounds {
    pub snapshot_bytes: u64,
    pub snapshot_entries: u64,
    pub kept_behind: u64,
    pub segment_bytes: u64,
    /// Between two snapshots asked for (one in progress shows in the metrics once built).
    pub pause: Duration,
}

impl LogBounds {
    /// Whether [`SMALL_LOG`] is set.
    pub fn small() -> bool {
        std::env::var(SMALL_LOG).is_ok_and(|v| v == "1")
    }

    /// The bounds in force: the constants above, or [`SMALL_LOG`]'s.
    pub fn get() -> LogBounds {
        if Self::small() {
            LogBounds {
                snapshot_bytes: 4 << 20,
                snapshot_entries: 400,
                kept_behind: 50,
                segment_bytes: 16 << 10,
                pause: Duration::from_secs(1),
            }
        } else {
            LogBounds {
                snapshot_bytes: SNAPSHOT_LOG_BYTES,
                snapshot_entries: SNAPSHOT_LOG_ENTRIES,
                kept_behind: KEPT_BEHIND_SNAPSHOT,
                segment_bytes: crate::raft::filelog::SEGMENT_BYTES,
                pause: Duration::from_secs(5),
            }
        }
    }
}

/// A node snapshots at `snapshot_share(id)` quarters of the bounds above (4 to 7: node 1 at
/// 1.25 ×, 2 at 1.5 ×, 3 at 1.75 ×, 4 at 1 ×, …), so that the nodes of a group, which see the same
/// log, do not all snapshot at once: with the same bound a 61 MB store's snapshot held every
/// commit on the three nodes of a playground for most of a second (each node copying, encoding
/// and storing it at the same time; a log append of 248 ms logged on two nodes at once), while
/// a majority of nodes not snapshotting goes on committing.
fn snapshot_share(id: NodeId) -> u64 {
    4 + id % 4
}

/// The peer routes a follower sends writes and read-index requests to (postcard bodies).
pub const WRITE_PATH: &str = "/sessions/write";
pub const READ_PATH: &str = "/sessions/read";
/// A planted bug for the linearizability check to catch (`tests/lab/session-check
/// --plant-stale-reads`): with this variable set to 1, a follower answers reads from its own
/// copy without a read index. Never set it on a real cluster.
pub const PLANT_STALE_READS: &str = "PHALANX_TEST_STALE_READS";

/// Why the session store could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting the sessions runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("reading the session store: {0}")]
    Store(#[from] crate::raft::store::StoreError),
    #[error("the sessions group's raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("starting the sessions group: {0}")]
    Raft(#[from] openraft::error::Fatal<NodeId>),
    #[error("{0}")]
    Transport(#[from] crate::transport::TransportError),
    #[error("the sessions runtime: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("reading the session log: {0}")]
    Log(String),
}

/// Why a write or a read got no answer (the client gets `SERVER_ERROR` and the reason).
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum SessionsError {
    #[error("no leader")]
    NoLeader,
    #[error("not committed: {0}")]
    NotCommitted(String),
    #[error("no answer in time: the write may or may not have been committed")]
    Timeout,
    #[error("the leader did not answer: {0}")]
    Unreachable(String),
    /// Not sent: the leader known here refused the connection (it may be gone); safe to send
    /// again once another leads.
    #[error("the leader could not be reached: {0}")]
    NotDelivered(String),
    /// The node asked no longer leads: nothing was logged; safe to send again.
    #[error("the node asked no longer leads the session store")]
    NotLeader,
    #[error("the session store is stopping")]
    Stopped,
}

/// The threads the session store's Raft group runs on ([`group_threads`], lowered like the
/// balancer's), made at the first start and kept for the process.
pub fn runtime() -> std::io::Result<tokio::runtime::Handle> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    lowered_runtime(&RT, "phalanx-sessions", group_threads())
}

/// The threads client connections are served on (made when the first listener opens): apart
/// from the group's, so that a commit's steps (propose, append, log, apply, answer) do not
/// queue behind every connection's reads (with one runtime, a 1-voter store under 50 busy
/// connections took 16 ms per set at p50; with two, 6 ms).
pub fn clients_runtime() -> std::io::Result<tokio::runtime::Handle> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    lowered_runtime(&RT, "phalanx-mc", 2)
}

/// The environment variable that sets the group runtime's thread count (1..=64, read at the
/// first start).
pub const THREADS_ENV: &str = "PHALANX_SESSIONS_THREADS";

/// The group runtime's threads: [`THREADS_ENV`] if set, else one on a machine of one or two
/// cores, else two. The group's work is mostly one task after another (openraft's core, the
/// applies, the batcher), which two threads hand back and forth: three nodes sharing two cores
/// served 48,000–53,000 ops/s in the 90/10 benchmark with two, 63,000–70,000 with one. (One
/// thread for the connections too gave no more, 65,000–67,000, and open-loop p99s of 14 and
/// 93 ms in two of four runs against 5–7 ms: the connections keep two.)
fn group_threads() -> usize {
    let default = match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        ..=2 => 1,
        _ => 2,
    };
    crate::priority::threads_from_env(THREADS_ENV, 64, default)
}

fn lowered_runtime(
    rt: &'static OnceLock<tokio::runtime::Runtime>,
    name: &str,
    threads: usize,
) -> std::io::Result<tokio::runtime::Handle> {
    if let Some(rt) = rt.get() {
        return Ok(rt.handle().clone());
    }
    let made = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .on_thread_start(crate::priority::lower_lb_thread)
        .enable_all()
        .build()?;
    if let Err(lost) = rt.set(made) {
        std::thread::spawn(move || drop(lost));
    }
    rt.get()
        .map(|rt| rt.handle().clone())
        .ok_or_else(|| std::io::Error::other("a sessions runtime vanished"))
}

fn now_ms() -> u64 {
    crate::mesh::unix_ms()
}

/// Where a read may be answered: once the local copy has applied `index`, at the leader's
/// time `now_ms`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReadPoint {
    pub index: u64,
    pub now_ms: u64,
}

/// What a leader's quorum round that began at `since`'s instant in `term` allows: reads without
/// a round until `until`, at an index of at least `index` (the round's read index).
#[derive(Debug, Clone, Copy)]
struct Lease {
    term: u64,
    until: std::time::Instant,
    index: u64,
}

/// Writes of one connection submitted together (they go into one batch, in order), and where
/// their answers go.
struct Pending {
    requests: Vec<Request>,
    tx: Reply,
}

type Reply = oneshot::Sender<Result<Vec<Vec<u8>>, SessionsError>>;

/// The answers of a submission, once committed.
pub type Submitted = oneshot::Receiver<Result<Vec<Vec<u8>>, SessionsError>>;

type ReadWaiter = oneshot::Sender<Result<ReadPoint, SessionsError>>;

/// Counters for status and metrics.
#[derive(Default)]
pub struct Counters {
    pub gets: AtomicU64,
    pub get_hits: AtomicU64,
    pub writes: AtomicU64,
    pub write_errors: AtomicU64,
    pub read_errors: AtomicU64,
    /// Sum of commit latencies (µs) of batches proposed here, and their count.
    pub commit_us: AtomicU64,
    pub commits: AtomicU64,
    pub connections: AtomicU64,
    /// Read rounds run here (`read_round`), the reads that waited for them, and the µs the
    /// rounds that got a read point spent getting its index and applying it ([`ReadRounds`]).
    pub read_rounds: AtomicU64,
    pub round_reads: AtomicU64,
    pub read_index_us: AtomicU64,
    pub read_apply_us: AtomicU64,
    /// Connections from clients `[sessions] allow` does not name, closed at once, and, with
    /// `[sessions] tls`, connections whose TLS handshake failed (a plain client, say).
    pub refused: AtomicU64,
}

/// The session store of one node.
pub struct Sessions {
    pub id: NodeId,
    pub raft: SessionsRaft,
    pub sm: SessionsSm,
    /// The group's log (how much of it a snapshot would let go: see [`SNAPSHOT_LOG_BYTES`]).
    log: crate::raft::filelog::FileLog<SessionsGroup>,
    /// When the log is snapshotted and purged.
    bounds: LogBounds,
    pub rt: tokio::runtime::Handle,
    writes: mpsc::Sender<Pending>,
    reads: mpsc::Sender<ReadWaiter>,
    http: reqwest::Client,
    /// The peer streams this node's forwards, read-index requests and Raft appends go over.
    stream: Arc<stream::StreamClient>,
    /// The node's keys (requests carry the signing key's token).
    keys: crate::key::Keys,
    /// The `[sessions]` in force (None: off): what the listener, the limit and upkeep follow.
    config: std::sync::RwLock<Option<SessionsConfig>>,
    pub counters: Counters,
    /// See [`PLANT_STALE_READS`].
    stale_reads: bool,
    /// The leader's read lease from its last quorum round (see `leader_read_index`), and how
    /// long a round's lease lasts.
    lease: std::sync::Mutex<Option<Lease>>,
    lease_for: Duration,
    /// The stored vote's term and the log's last index when this node started: leading that
    /// term again, it reads no lower (see `leader_read_index`).
    started: (u64, u64),
    /// The highest commit index this node sent a peer, plus one (see `leader_read_index`).
    commit_sent: Arc<AtomicU64>,
    rate: std::sync::Mutex<Rate>,
    /// The addresses the listener holds now.
    pub(crate) listening: std::sync::Mutex<BTreeSet<std::net::SocketAddr>>,
    /// `[sessions] allow`: the clients served (empty: any), as the listener last read it.
    pub(crate) allow: std::sync::Mutex<Vec<ipnet::IpNet>>,
    /// The node's TLS: its certificate serves `[sessions] tls` clients.
    pub(crate) tls: crate::transport::Tls,
}

/// What `start` needs.
pub struct Options {
    pub id: NodeId,
    pub storage: crate::raft::sessions::Storage,
    pub raft_config: openraft::Config,
    pub keys: crate::key::Keys,
    pub tls: crate::transport::Tls,
    pub config: Option<SessionsConfig>,
}

impl Sessions {
    /// Start the group (on [`runtime`]); its tasks start with [`Sessions::run`].
    ///
    /// Every member may lead it, the witness too: with two nodes and the witness, the survivor
    /// and the witness must be able to elect one of them.
    pub async fn start(o: Options) -> Result<(Arc<Sessions>, Receivers), StartError> {
        let rt = runtime()?;
        let limit = o
            .config
            .as_ref()
            .map_or(phalanx_core::config::DEFAULT_MEMORY_LIMIT, |c| c.memory_limit);
        let sm = SessionsSm::load(&o.storage, limit)?;
        let mut rc = o.raft_config;
        rc.cluster_name = format!("{}-sessions", rc.cluster_name);
        // Snapshots are asked for by `upkeep` (see `SNAPSHOT_LOG_BYTES`).
        rc.snapshot_policy = openraft::SnapshotPolicy::Never;
        let bounds = LogBounds::get();
        if LogBounds::small() {
            tracing::warn!("{SMALL_LOG}=1: the session log is snapshotted every few hundred entries (a test knob)");
        }
        rc.max_in_snapshot_log_to_keep = bounds.kept_behind;
        // Off until `[sessions]` is configured (see `upkeep`): an unused group costs nothing.
        rc.enable_heartbeat = false;
        rc.enable_elect = false;
        let rc = Arc::new(rc.validate()?);
        let lease_for = Duration::from_millis(rc.election_timeout_min / 2);
        let tls = o.tls.clone();
        let http = rt.spawn(async move { crate::transport::raft_client(&tls) }).await??;
        let stream = Arc::new(stream::StreamClient::new(http.clone(), o.keys.clone()));
        let started = {
            use openraft::storage::RaftLogStorage;
            let mut log = o.storage.log.clone();
            let log_error = |e: crate::raft::StorageError| StartError::Log(e.to_string());
            let term = log
                .read_vote()
                .await
                .map_err(log_error)?
                .map_or(0, |v| v.leader_id().term);
            let last = log
                .get_log_state()
                .await
                .map_err(log_error)?
                .last_log_id
                .map_or(0, |l| l.index);
            (term, last)
        };
        let commit_sent = Arc::new(AtomicU64::new(0));
        let sent = commit_sent.clone();
        let (log, sm2, keys, tls, st) = (
            o.storage.log.clone(),
            sm.clone(),
            o.keys.clone(),
            o.tls.clone(),
            stream.clone(),
        );
        let raft = rt
            .spawn(async move {
                let net = HttpNetwork::<SessionsGroup>::new(keys, &tls)?
                    .with_stream(st)
                    .with_commit_sent(sent);
                let raft = openraft::Raft::new(o.id, rc, net, log, sm2).await?;
                Ok::<_, StartError>(raft)
            })
            .await??;
        if let Some(d) = crate::raft::sessions::apply_delay() {
            tracing::warn!(
                ?d,
                "{APPLY_DELAY} is set: the session log is applied late (a test knob)"
            );
        }
        if std::env::var(PLANT_STALE_READS).is_ok_and(|v| v == "1") {
            tracing::error!("{PLANT_STALE_READS}=1: followers answer session reads from their own copy (a planted bug for the linearizability check)");
        }
        let (wtx, wrx) = mpsc::channel(4096);
        let (rtx, rrx) = mpsc::channel(4096);
        let s = Arc::new(Sessions {
            id: o.id,
            raft,
            sm,
            log: o.storage.log.clone(),
            bounds,
            rt,
            writes: wtx,
            reads: rtx,
            http,
            stream,
            keys: o.keys,
            config: std::sync::RwLock::new(o.config),
            counters: Counters::default(),
            stale_reads: std::env::var(PLANT_STALE_READS).is_ok_and(|v| v == "1"),
            lease: Default::default(),
            lease_for,
            started,
            commit_sent,
            rate: Default::default(),
            listening: Default::default(),
            allow: Default::default(),
            tls: o.tls.clone(),
        });
        Ok((
            s,
            Receivers {
                writes: wrx,
                reads: rrx,
            },
        ))
    }

    /// Run the batcher, the read gate, upkeep and the listener (on the sessions runtime).
    pub fn run(self: &Arc<Self>, rx: Receivers, node: Weak<crate::node::Node>) -> Vec<tokio::task::AbortHandle> {
        vec![
            self.rt.spawn(self.clone().batcher(rx.writes)).abort_handle(),
            self.rt.spawn(self.clone().read_gate(rx.reads)).abort_handle(),
            self.rt.spawn(self.clone().upkeep(node.clone())).abort_handle(),
            self.rt.spawn(listener::run(self.clone(), node)).abort_handle(),
        ]
    }

    pub fn config(&self) -> Option<SessionsConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn limit(&self) -> u64 {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(phalanx_core::config::DEFAULT_MEMORY_LIMIT, |c| c.memory_limit)
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// The API address of the group's leader (None: none known, or it is this node).
    fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader.filter(|l| *l != self.id)?;
        let addr = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, n)| n.addr.clone());
        addr
    }

    /// Wait (up to [`WAIT`]) until some node leads the group.
    async fn await_leader(&self) -> Result<NodeId, SessionsError> {
        let mut m = self.raft.metrics();
        let wait = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(l) = m.borrow_and_update().current_leader {
                    return Ok(l);
                }
                if m.changed().await.is_err() {
                    return Err(SessionsError::Stopped);
                }
            }
        });
        wait.await.map_err(|_| SessionsError::NoLeader)?
    }

    /// Log `request` (a write) and give its answer: committed on a majority and applied.
    pub async fn write(&self, request: Request) -> Result<Vec<u8>, SessionsError> {
        let rx = self.submit(vec![request]).await?;
        let mut answers = rx.await.map_err(|_| SessionsError::Stopped)??;
        answers.pop().ok_or(SessionsError::NotCommitted("no answer".into()))
    }

    /// Queue `requests` (writes of one connection): they are logged together, in order, in one
    /// batch; the receiver gives their answers. Two submissions may be logged in either order
    /// (batches are forwarded concurrently): a connection waits for one before the next.
    pub async fn submit(&self, requests: Vec<Request>) -> Result<Submitted, SessionsError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(Pending { requests, tx })
            .await
            .map_err(|_| SessionsError::Stopped)?;
        Ok(rx)
    }

    async fn batcher(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let forward_slots = Arc::new(tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let mut bytes: usize = first.requests.iter().map(request_size).sum();
            let mut count = first.requests.len();
            let mut batch = vec![first];
            while count < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.requests.iter().map(request_size).sum::<usize>();
                        count += p.requests.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let mut requests = Vec::with_capacity(count);
            let mut txs = Vec::with_capacity(batch.len());
            for p in batch {
                txs.push((p.requests.len(), p.tx));
                requests.extend(p.requests);
            }
            self.counters.writes.fetch_add(count as u64, Ordering::Relaxed);
            if let Err(e) = self.await_leader().await {
                self.fail(txs, e);
                continue;
            }
            let leading = self.is_leader();
            let pool = if leading { &slots } else { &forward_slots };
            let Ok(permit) = pool.clone().acquire_owned().await else {
                return;
            };
            let started = std::time::Instant::now();
            if leading {
                let batch = Batch {
                    now_ms: now_ms(),
                    limit: self.limit(),
                    requests,
                };
                // Proposed here, in queue order; the commit is awaited beside.
                match self.raft.client_write_ff(batch).await {
                    Ok(answer) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            let r = match tokio::time::timeout(WAIT, answer).await {
                                Err(_) => Err(SessionsError::Timeout),
                                Ok(Err(_)) => Err(SessionsError::Stopped),
                                Ok(Ok(Err(e))) => Err(SessionsError::NotCommitted(e.to_string())),
                                Ok(Ok(Ok(resp))) => Ok(resp.data),
                            };
                            me.note_commit(started);
                            drop(permit);
                            me.deliver(txs, r);
                        });
                    }
                    Err(e) => self.fail(txs, SessionsError::NotCommitted(e.to_string())),
                }
            } else {
                // Forwarded, several batches at once (a connection has one submission at a
                // time, so no connection's writes can pass each other).
                let me = self.clone();
                tokio::spawn(async move {
                    let r = me.forward_write(requests).await;
                    me.note_commit(started);
                    drop(permit);
                    me.deliver(txs, r);
                });
            }
        }
    }

    fn note_commit(&self, started: std::time::Instant) {
        self.counters
            .commit_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, txs: Vec<(usize, Reply)>, e: SessionsError) {
        let n: usize = txs.iter().map(|(n, _)| n).sum();
        self.counters.write_errors.fetch_add(n as u64, Ordering::Relaxed);
        for (_, tx) in txs {
            let _ = tx.send(Err(e.clone()));
        }
    }

    /// Hand each submission its answers (a batch's answers are its requests', in order).
    fn deliver(&self, txs: Vec<(usize, Reply)>, r: Result<Answers, SessionsError>) {
        let expected: usize = txs.iter().map(|(n, _)| n).sum();
        match r {
            Ok(Answers(answers)) if answers.len() == expected => {
                let mut answers = answers.into_iter();
                for (n, tx) in txs {
                    let _ = tx.send(Ok(answers.by_ref().take(n).collect()));
                }
            }
            Ok(other) => self.fail(
                txs,
                SessionsError::NotCommitted(format!("{} answers for {expected} requests", other.0.len())),
            ),
            Err(e) => self.fail(txs, e),
        }
    }

    /// A follower's batch, on the leader: queued to this node's batcher like its own clients'
    /// writes (kept together, in order), so that one entry — one fsync — carries the writes of
    /// every node, at this node's time.
    pub async fn leader_write(&self, requests: Vec<Request>) -> Result<Answers, SessionsError> {
        if !self.is_leader() {
            return Err(SessionsError::NotLeader);
        }
        let rx = self.submit(requests).await?;
        match tokio::time::timeout(WAIT, rx).await {
            Err(_) => Err(SessionsError::Timeout),
            Ok(Err(_)) => Err(SessionsError::Stopped),
            Ok(Ok(r)) => r.map(Answers),
        }
    }

    /// Send `body` to the leader's `path`; sent again (until [`WAIT`]) while it surely was not
    /// acted on: the connection refused, or the node asked no longer leading.
    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T, SessionsError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut metrics = self.raft.metrics();
        loop {
            if self.is_leader() {
                // The caller does it here.
                return Err(SessionsError::NotLeader);
            }
            match self.post_once(path, body.clone()).await {
                Err(SessionsError::NotDelivered(_) | SessionsError::NotLeader | SessionsError::NoLeader)
                    if tokio::time::Instant::now() < deadline =>
                {
                    // Until the group's view changes (a new leader), or a moment.
                    let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
                }
                r => return r,
            }
        }
    }

    async fn post_once<T: serde::de::DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T, SessionsError> {
        let addr = self.leader_addr().ok_or(SessionsError::NoLeader)?;
        let kind = if path == WRITE_PATH {
            stream::Kind::Write
        } else {
            stream::Kind::Read
        };
        let bytes = match self.stream.call(&addr, kind, &body, WAIT).await {
            Ok(bytes) => bytes,
            Err(stream::StreamError::Fallback(_)) => self.post_http(&addr, path, body).await?.to_vec(),
            Err(e @ stream::StreamError::NotDelivered(_)) => return Err(SessionsError::NotDelivered(e.to_string())),
            Err(e) => return Err(SessionsError::Unreachable(e.to_string())),
        };
        let r: Result<T, SessionsError> =
            postcard::from_bytes(&bytes).map_err(|e| SessionsError::Unreachable(format!("unreadable answer: {e}")))?;
        r
    }

    /// [`Sessions::post_once`] as an HTTP request (a peer that takes no stream): the answer's body.
    async fn post_http(&self, addr: &str, path: &str, body: Vec<u8>) -> Result<axum::body::Bytes, SessionsError> {
        let resp = self
            .http
            .post(crate::transport::url(addr, path))
            .bearer_auth(self.keys.token())
            .timeout(WAIT)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    SessionsError::NotDelivered(e.to_string())
                } else {
                    SessionsError::Unreachable(e.to_string())
                }
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(SessionsError::Unreachable(format!("{status}: {text}")));
        }
        resp.bytes()
            .await
            .map_err(|e| SessionsError::Unreachable(e.to_string()))
    }

    /// A follower's batch of writes, on the leader (postcard `Vec<Request>` → postcard
    /// `Result<Answers, SessionsError>`), for its HTTP route and its stream alike.
    pub async fn serve_write(&self, body: &[u8]) -> Result<Vec<u8>, RpcError> {
        let requests: Vec<Request> = decode("session writes", body)?;
        encode("session writes", &self.leader_write(requests).await)
    }

    /// A follower's read-index request, on the leader (postcard `Result<ReadPoint,
    /// SessionsError>`), for its HTTP route and its stream alike.
    pub async fn serve_read(&self) -> Result<Vec<u8>, RpcError> {
        encode("read index", &self.leader_read().await)
    }

    /// What serves the requests of a peer's stream here (the peer routes' work, on this
    /// runtime): Raft appends and votes, a follower's writes, its read-index requests.
    pub fn stream_handler(self: &Arc<Self>) -> stream::Handler {
        let me = Arc::downgrade(self);
        Arc::new(move |kind, body| {
            let me = me.clone();
            Box::pin(async move {
                use crate::raft::group::GroupRpc;
                let s = me.upgrade().ok_or("the session store is stopping")?;
                match kind {
                    stream::Kind::Append => s.raft.serve("append", &body).await,
                    stream::Kind::Vote => s.raft.serve("vote", &body).await,
                    stream::Kind::Write => s.serve_write(&body).await,
                    stream::Kind::Read => s.serve_read().await,
                }
                .map_err(|e| e.to_string())
            })
        })
    }

    async fn forward_write(&self, requests: Vec<Request>) -> Result<Answers, SessionsError> {
        let body = postcard::to_allocvec(&requests).map_err(|e| SessionsError::NotCommitted(e.to_string()))?;
        match self.post(WRITE_PATH, body).await {
            // This node was elected meanwhile: nothing was logged elsewhere, log it here.
            Err(SessionsError::NotLeader) if self.is_leader() => self.leader_write(requests).await,
            r => r,
        }
    }

    /// Wait until a read may be answered here (see [`ReadPoint`]): at once on the leader while
    /// its lease holds ([`Sessions::leased_point`]), else through the read gate.
    pub async fn read_point(&self) -> Result<ReadPoint, SessionsError> {
        if let Some(p) = self.leased_point() {
            return Ok(p);
        }
        let (tx, rx) = oneshot::channel();
        self.reads.send(tx).await.map_err(|_| SessionsError::Stopped)?;
        rx.await.map_err(|_| SessionsError::Stopped)?
    }

    /// Every read that arrived before a round began shares it; those arriving during it wait
    /// for the next (a round that began earlier may not cover a write acknowledged since).
    async fn read_gate(self: Arc<Self>, mut rx: mpsc::Receiver<ReadWaiter>) {
        while let Some(first) = rx.recv().await {
            let mut waiters = vec![first];
            while let Ok(w) = rx.try_recv() {
                waiters.push(w);
            }
            let r = self.read_round().await;
            self.counters.read_rounds.fetch_add(1, Ordering::Relaxed);
            self.counters
                .round_reads
                .fetch_add(waiters.len() as u64, Ordering::Relaxed);
            if r.is_err() {
                self.counters
                    .read_errors
                    .fetch_add(waiters.len() as u64, Ordering::Relaxed);
            }
            for w in waiters {
                let _ = w.send(r.clone());
            }
        }
    }

    async fn read_round(&self) -> Result<ReadPoint, SessionsError> {
        if self.stale_reads && !self.is_leader() {
            // The planted bug: the local copy as it is.
            return Ok(ReadPoint {
                index: 0,
                now_ms: now_ms(),
            });
        }
        let began = std::time::Instant::now();
        self.await_leader().await?;
        let point = match self.post::<ReadPoint>(READ_PATH, Vec::new()).await {
            // Asked of itself (`post` sends only to another node), or elected meanwhile.
            Err(SessionsError::NoLeader | SessionsError::NotLeader) if self.is_leader() => ReadPoint {
                index: self.leader_read_index().await?,
                now_ms: now_ms(),
            },
            r => r?,
        };
        let indexed = std::time::Instant::now();
        self.raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(point.index), "a session read")
            .await
            .map_err(|_| SessionsError::Timeout)?;
        let c = &self.counters;
        c.read_index_us
            .fetch_add(indexed.duration_since(began).as_micros() as u64, Ordering::Relaxed);
        c.read_apply_us
            .fetch_add(indexed.elapsed().as_micros() as u64, Ordering::Relaxed);
        let logged = self.sm.lock().logged_now_ms();
        Ok(ReadPoint {
            now_ms: point.now_ms.max(logged),
            ..point
        })
    }

    /// The leader's read index. A quorum round (openraft's `get_read_log_id`: a heartbeat to
    /// every follower) that began at T0 in term T also gives a lease: every follower that
    /// acknowledged it refuses to vote until `election_timeout_max` after it heard from this
    /// leader (openraft's leader lease), so no other leader can exist before T0 + that. Until
    /// T0 + `lease_for` (half of `election_timeout_min`: margin for the clocks' rates) and
    /// while still leading in term T, a read needs no round: its index is what this leader has
    /// applied (a write is acknowledged only once the leader has applied it, and the term's first
    /// round waited for everything committed before the term).
    ///
    /// Never below what the leader told a follower was committed (`commit_sent`): a follower
    /// applies that at once, and a read through it may return it, while the leader, whose own
    /// apply comes a moment later, has not — a read on the lease answered from its applied
    /// index then gave the value before (a test holding the leader's apply caught it: reads on
    /// the leader after a read through a follower returned the older value).
    ///
    /// openraft's read index is the greater of its commit index and its term's first entry. A
    /// leader killed and restarted before its followers gave up on it comes back leading its
    /// old term (openraft 0.9) with the commit index of its snapshot (none is stored): both can
    /// be far below writes it acknowledged before the kill, which a read must see. So, leading
    /// the term it started in, it reads no lower than its log's last entry then (all of which
    /// it commits, being the leader) — a stale read the test of a restart at once caught.
    async fn leader_read_index(&self) -> Result<u64, SessionsError> {
        let term = self.raft.metrics().borrow().current_term;
        let last = self.sm.lock().last_applied().map_or(0, |l| l.index);
        if let Some(lease) = self.valid_lease(term) {
            return Ok(last.max(lease.index).max(self.commit_sent()));
        }
        let t0 = std::time::Instant::now();
        let (read, _) = tokio::time::timeout(WAIT, self.raft.get_read_log_id())
            .await
            .map_err(|_| SessionsError::Timeout)?
            .map_err(|e| SessionsError::NotCommitted(e.to_string()))?;
        let floor = if self.started.0 == term { self.started.1 } else { 0 };
        let index = read.map_or(0, |l| l.index).max(floor).max(self.commit_sent());
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(Lease {
            term,
            until: t0 + self.lease_for,
            index,
        });
        Ok(index)
    }

    /// The highest commit index this node sent a peer (0: none).
    fn commit_sent(&self) -> u64 {
        self.commit_sent.load(Ordering::SeqCst).saturating_sub(1)
    }

    /// The lease, if it holds now: this node leads in `term`, the lease's term.
    fn valid_lease(&self, term: u64) -> Option<Lease> {
        let lease = (*self.lease.lock().unwrap_or_else(|p| p.into_inner()))?;
        (lease.term == term && std::time::Instant::now() < lease.until && self.is_leader()).then_some(lease)
    }

    /// A read point without a round trip through the read gate: on the leader, while its lease
    /// holds and it has applied what the lease's round asked for and every commit index it
    /// sent (so the point covers every write acknowledged, or read through a follower, before
    /// now). None: ask [`Sessions::read_point`].
    fn leased_point(&self) -> Option<ReadPoint> {
        let term = self.raft.metrics().borrow().current_term;
        let lease = self.valid_lease(term)?;
        let sent = self.commit_sent();
        let (applied, logged) = {
            let sm = self.sm.lock();
            (sm.last_applied().map_or(0, |l| l.index), sm.logged_now_ms())
        };
        (applied >= lease.index.max(sent)).then(|| ReadPoint {
            index: applied,
            now_ms: now_ms().max(logged),
        })
    }

    /// A follower's read-index request, on the leader.
    pub async fn leader_read(&self) -> Result<ReadPoint, SessionsError> {
        if !self.is_leader() {
            return Err(SessionsError::NotLeader);
        }
        self.read_point().await
    }

    /// Follow the node: `[sessions]` on or off (heartbeats and elections with it), and, on
    /// the group's leader, the group's members after the cluster's (its voters, or
    /// `[sessions] voters`), one change at a time.
    async fn upkeep(self: Arc<Self>, node: Weak<crate::node::Node>) {
        let mut on = false;
        let mut led = false;
        // Evictions already reported, and when the last report was made.
        let mut evictions_noted = self.sm.lock().store.meta().evictions;
        let mut evictions_at: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut snapshot_asked: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            if snapshot_asked.is_none_or(|t| t.elapsed() >= self.bounds.pause) && self.snapshot_due() {
                snapshot_asked = Some(tokio::time::Instant::now());
                if let Err(e) = self.raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "sessions: could not start a snapshot");
                }
            }
            self.rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sample(&self.counters);
            let Some(node) = node.upgrade() else { return };
            let config = node.config().sessions.clone();
            *self.config.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
            if config.is_some() != on {
                on = config.is_some();
                self.raft.runtime_config().heartbeat(on);
                self.raft.runtime_config().elect(on);
                tracing::info!(on, "session store");
            }
            if !on || !self.is_leader() {
                led = false;
                continue;
            }
            let (term, acked) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                (m.current_term, m.millis_since_quorum_ack)
            };
            // A node restarted with its own committed vote comes back as the leader of its old
            // term until it hears of a newer one (openraft 0.9): only a leadership a quorum has
            // acknowledged is an event ("n2 leads (term 2)" came after "n1 leads (term 3)").
            if !led && acked.is_some() {
                led = true;
                self.note(
                    &node,
                    EventKind::SessionsLeaderChanged,
                    format!("{} leads the session store (term {term})", node.name),
                );
            }
            let evictions = self.sm.lock().store.meta().evictions;
            if evictions > evictions_noted && evictions_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                let limit = self.limit();
                self.note(
                    &node,
                    EventKind::SessionsEvicted,
                    format!(
                        "the session store evicted {} items (the least recently written) to stay under memory_limit {limit} bytes",
                        evictions - evictions_noted
                    ),
                );
                evictions_noted = evictions;
                evictions_at = Some(tokio::time::Instant::now());
            }
            let cluster = node.raft.metrics().borrow().membership_config.clone();
            let want_nodes: BTreeMap<NodeId, BasicNode> = cluster.nodes().map(|(id, n)| (*id, n.clone())).collect();
            let mut want_voters: BTreeSet<NodeId> = cluster.voter_ids().collect();
            if let Some(named) = config.as_ref().filter(|c| !c.voters.is_empty()).map(|c| &c.voters) {
                let ids: BTreeSet<NodeId> = node.with_state(|sm| {
                    sm.cluster
                        .nodes
                        .iter()
                        .filter(|(name, _)| named.contains(name))
                        .map(|(_, n)| n.id)
                        .collect()
                });
                if !ids.is_empty() {
                    want_voters = ids;
                }
            }
            let have = self.raft.metrics().borrow().membership_config.clone();
            let have_nodes: BTreeSet<NodeId> = have.nodes().map(|(id, _)| *id).collect();
            let have_voters: BTreeSet<NodeId> = have.voter_ids().collect();
            let r = if let Some((id, n)) = want_nodes.iter().find(|(id, _)| !have_nodes.contains(id)) {
                tracing::info!(node = id, "session store: adding a learner");
                self.raft.add_learner(*id, n.clone(), false).await.map(|_| ())
            } else if want_voters != have_voters && want_voters.iter().all(|v| have_nodes.contains(v)) {
                tracing::info!(voters = ?want_voters, "session store: voters follow the cluster's");
                self.raft
                    .change_membership(ChangeMembers::ReplaceAllVoters(want_voters), false)
                    .await
                    .map(|_| ())
            } else if let Some(gone) = Some(
                have_nodes
                    .iter()
                    .filter(|id| !want_nodes.contains_key(id) && !have_voters.contains(id))
                    .copied()
                    .collect::<BTreeSet<_>>(),
            )
            .filter(|g| !g.is_empty())
            {
                tracing::info!(nodes = ?gone, "session store: removing nodes the cluster removed");
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(gone), false)
                    .await
                    .map(|_| ())
            } else {
                Ok(())
            };
            if let Err(e) = r {
                tracing::info!(error = %e, "session store: membership change not made (will retry)");
            }
        }
    }
}

impl Sessions {
    /// Whether the log since the last snapshot is long enough for another (see
    /// [`SNAPSHOT_LOG_BYTES`] and [`snapshot_share`]).
    fn snapshot_due(&self) -> bool {
        let (snapshot, last) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.snapshot.map(|l| l.index), m.last_log_index)
        };
        let entries = last.unwrap_or(0).saturating_sub(snapshot.unwrap_or(0));
        let share = |bound: u64| bound / 4 * snapshot_share(self.id);
        let b = &self.bounds;
        entries >= share(b.snapshot_entries) || self.log.bytes_after(snapshot) >= share(b.snapshot_bytes)
    }

    /// Record an event the group's leader observed (committed in the cluster group, in the
    /// background: a note must not hold up upkeep).
    fn note(&self, node: &Arc<crate::node::Node>, kind: EventKind, summary: String) {
        tracing::info!(kind = kind.as_str(), %summary, "session store");
        let n = Note {
            kind,
            node: node.name.clone(),
            summary,
            at_ms: now_ms(),
        };
        // The cluster group may have no leader yet, or have lost it with the node that led
        // both groups: `commit_note` tries again for a while.
        let node = node.clone();
        self.rt.spawn(async move { crate::events::commit_note(&node, n).await });
    }
}

/// The receiving ends of a node's queues, handed to [`Sessions::run`].
pub struct Receivers {
    writes: mpsc::Receiver<Pending>,
    reads: mpsc::Receiver<ReadWaiter>,
}

fn request_size(r: &Request) -> usize {
    use phalanx_core::sessions::protocol::{MetaRequest, TextRequest};
    match r {
        Request::Text(TextRequest::Store { data, .. }) | Request::Meta(MetaRequest::Set { data, .. }) => {
            data.len() + 64
        }
        _ => 64,
    }
}

/// One node's view of the session store (`GET /v1/sessions`; `phalanx sessions status` asks
/// every node and shows each one's lag behind the leader's log).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionsStatus {
    /// `[sessions]` is configured (the group runs only then).
    pub enabled: bool,
    pub node: String,
    /// The group's leader (a node name), if known.
    pub leader: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub listen: Vec<String>,
    pub items: usize,
    pub bytes: usize,
    pub memory_limit: u64,
    pub evictions: u64,
    /// Keys asked by gets on this node, and those found.
    pub gets: u64,
    pub get_hits: u64,
    pub hit_ratio: Option<f64>,
    /// Write requests received on this node, and those answered SERVER_ERROR.
    pub writes: u64,
    pub write_errors: u64,
    pub read_errors: u64,
    /// Requests per second over the last second (gets and writes received here).
    pub ops_per_s: f64,
    /// Mean time to commit a batch proposed or forwarded here, over the last second (ms).
    pub commit_ms: Option<f64>,
    pub connections: u64,
    /// Connections refused by `[sessions] allow`.
    #[serde(default)]
    pub refused_connections: u64,
    /// Calls to peers answered over their stream (`sessions::stream`), and calls made over
    /// HTTP because the peer took no stream (an older version).
    #[serde(default)]
    pub peer_stream_calls: u64,
    #[serde(default)]
    pub peer_http_calls: u64,
    /// How long this node's appends to the group's log took (write and fdatasync), since it
    /// started: what every write waits for, as etcd's `wal_fsync_duration_seconds`.
    #[serde(default)]
    pub log_append: crate::raft::filelog::Histogram,
    /// The read rounds this node ran since it started (reads on the leader's lease need none).
    #[serde(default)]
    pub read_rounds: ReadRounds,
}

/// A node's read rounds since it started (`Sessions::read_round`): every read that arrived
/// before a round began shares it. A round gets a read index (a follower: one request to the
/// leader; the leader: its lease, or a quorum round) and then waits until this node has applied
/// it; the two waits are summed apart, so a slow read shows which it waited for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadRounds {
    /// Rounds that ended (failed ones too; their reads count in `read_errors`).
    pub rounds: u64,
    /// Reads that waited for them.
    pub reads: u64,
    /// µs the rounds that got a read point spent getting its index, summed.
    pub index_us: u64,
    /// µs they spent waiting to apply it, summed.
    pub apply_us: u64,
}

impl Sessions {
    /// This node's view; `name_of` names node ids.
    pub fn status(&self, node: &str, name_of: impl Fn(NodeId) -> String) -> SessionsStatus {
        let m = self.raft.metrics().borrow().clone();
        let (items, bytes, evictions) = {
            let sm = self.sm.lock();
            (sm.store.len(), sm.store.bytes(), sm.store.meta().evictions)
        };
        let c = &self.counters;
        let (gets, get_hits) = (c.gets.load(Ordering::Relaxed), c.get_hits.load(Ordering::Relaxed));
        let voters: BTreeSet<NodeId> = m.membership_config.voter_ids().collect();
        let config = self.config();
        let rate = self.rate.lock().unwrap_or_else(|p| p.into_inner()).clone();
        SessionsStatus {
            enabled: config.is_some(),
            node: node.to_string(),
            leader: m.current_leader.map(&name_of),
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            voters: voters.iter().map(|id| name_of(*id)).collect(),
            learners: m
                .membership_config
                .nodes()
                .filter(|(id, _)| !voters.contains(id))
                .map(|(id, _)| name_of(*id))
                .collect(),
            listen: self
                .listening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|a| a.to_string())
                .collect(),
            items,
            bytes,
            memory_limit: self.limit(),
            evictions,
            gets,
            get_hits,
            hit_ratio: (gets > 0).then(|| get_hits as f64 / gets as f64),
            writes: c.writes.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            read_errors: c.read_errors.load(Ordering::Relaxed),
            ops_per_s: rate.ops_per_s,
            commit_ms: rate.commit_ms,
            connections: c.connections.load(Ordering::Relaxed),
            refused_connections: c.refused.load(Ordering::Relaxed),
            peer_stream_calls: self.stream.answered.load(Ordering::Relaxed),
            peer_http_calls: self.stream.fell_back.load(Ordering::Relaxed),
            log_append: self.log.append_times(),
            read_rounds: ReadRounds {
                rounds: c.read_rounds.load(Ordering::Relaxed),
                reads: c.round_reads.load(Ordering::Relaxed),
                index_us: c.read_index_us.load(Ordering::Relaxed),
                apply_us: c.read_apply_us.load(Ordering::Relaxed),
            },
        }
    }
}

/// The rates status shows, sampled once a second by upkeep.
#[derive(Debug, Clone, Default)]
struct Rate {
    at: Option<std::time::Instant>,
    ops: u64,
    commit_us: u64,
    commits: u64,
    ops_per_s: f64,
    commit_ms: Option<f64>,
}

impl Rate {
    fn sample(&mut self, c: &Counters) {
        let now = std::time::Instant::now();
        let ops = c.gets.load(Ordering::Relaxed) + c.writes.load(Ordering::Relaxed);
        let (us, n) = (c.commit_us.load(Ordering::Relaxed), c.commits.load(Ordering::Relaxed));
        if let Some(at) = self.at {
            let dt = now.duration_since(at).as_secs_f64();
            if dt < 1.0 {
                return;
            }
            self.ops_per_s = (ops - self.ops) as f64 / dt;
            self.commit_ms =
                (n > self.commits).then(|| (us - self.commit_us) as f64 / 1000.0 / (n - self.commits) as f64);
        }
        *self = Rate {
            at: Some(now),
            ops,
            commit_us: us,
            commits: n,
            ..self.clone()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_nodes_snapshot_at_different_points_within_twice_the_bound() {
        let shares: BTreeSet<u64> = (1..=4).map(snapshot_share).collect();
        assert_eq!(shares.len(), 4, "{shares:?}");
        for id in 0..64 {
            let at = SNAPSHOT_LOG_BYTES / 4 * snapshot_share(id);
            assert!(
                (SNAPSHOT_LOG_BYTES..2 * SNAPSHOT_LOG_BYTES).contains(&at),
                "node {id}: {at}"
            );
        }
    }
}
