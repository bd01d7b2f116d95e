//! One running phalanx node: it wires the heartbeat mesh, Raft and the replicated state
//! together, starts the controller loop (`controller.rs`) and the executor, and answers status.
//! It commits writes: operator requests, results and claims (forwarded to the leader), and the
//! leader's own decisions (never forwarded).

use crate::mesh::{self, DatagramOut, Inbound, Mesh, MeshSettings, MeshStats, PeerStatus};
use crate::raft::store::{LogStore, SmData, StateMachine};
use crate::raft::{raft_config, BasicNode, Groups, NodeId, Raft, Request, TypeConfig, WITNESS_ID, WITNESS_NAME};
use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, RaftError};
use openraft::network::RaftNetworkFactory;
use openraft::ServerState;
use phalanx_core::config::Config;
use phalanx_core::events::{CallReport, Stamp};
use phalanx_core::quorum::{self, MAX_VOTERS};
use phalanx_core::timings::ms;
use phalanx_core::{ClusterState, Command, Liveness, NodeRecord, Outcome, Timings};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

/// How long an operator's forwarded write waits for this node to apply it before answering
/// (see [`Node::write_by`]); the leader pushes the commit index out as it answers, so this is
/// milliseconds unless the node is cut off.
const READ_YOUR_WRITE: std::time::Duration = std::time::Duration::from_secs(2);

/// What can go wrong starting a node or committing through it. openraft's error kinds are kept
/// (the API tells a retryable one from a refusal by the variant).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the Raft settings derived from [cluster] are invalid: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    /// Raft stopped on this node (storage failure, panic or shutdown).
    #[error("raft has stopped on this node: {0}")]
    RaftStopped(#[from] Fatal<NodeId>),
    #[error("no leader is known right now (the cluster may have no quorum)")]
    NoLeader,
    /// openraft's ForwardToLeader where forwarding is not wanted: a leader's decision or a
    /// membership change, attempted by a node that is not (or no longer) the leader.
    #[error("this node is not the leader (a leader's decision is never forwarded)")]
    NotLeader { leader: Option<NodeId> },
    #[error("forwarding to the leader: {0}")]
    Forward(#[from] crate::forward::ForwardError),
    #[error("changing the Raft membership: {0}")]
    Membership(#[from] ChangeMembershipError<NodeId>),
    /// Only the leader's own controller writes this command (see `Command::forwardable`).
    #[error("{command} is a leader's decision: only the leader's own controller writes it")]
    NotForwardable { command: &'static str },
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("storage: {0}")]
    Store(#[from] crate::raft::store::StoreError),
    #[error("the session store: {0}")]
    Sessions(#[from] crate::sessions::StartError),
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> for NodeError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader { leader: f.leader_id },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => NodeError::Membership(c),
            RaftError::Fatal(f) => NodeError::RaftStopped(f),
        }
    }
}

/// Everything a node needs to start.
pub struct NodeOptions {
    pub config: Config,
    /// The text `config` was read from (the daemon's local file); None in tests that build a
    /// config in code: then nothing is committed and the node runs `config` as given.
    pub config_text: Option<String>,
    pub name: String,
    pub id: NodeId,
    pub links: Vec<SocketAddr>,
    pub api: SocketAddr,
    /// The heartbeat keys (`Keys::load`: the key file's, and a rotation's next one).
    pub key: crate::key::Keys,
    /// Listed in the config file: may bootstrap the cluster with the other listed nodes.
    pub bootstrap: bool,
    /// Runs this node's resource agents (None: the node runs none, e.g. in network tests).
    pub runner: Option<crate::agents::Runner>,
    /// What replaces the fence devices and the forwarding client in tests (default: nothing).
    pub seams: Seams,
    /// Where the heartbeat mesh runs (`mesh::dedicated_runtime`, the daemon's); None: on the
    /// caller's runtime (tests, the simulation on paused time).
    pub mesh_runtime: Option<tokio::runtime::Handle>,
    /// The session store's database (`raft-sessions.redb`, see `raft::group::db_file`); None:
    /// the node hosts no session store (tests on a fake network).
    pub sessions_store: Option<crate::raft::sessions::Storage>,
    /// Whom the node trusts and what it presents on every node-to-node connection (its
    /// certificate from `pki`; `Tls::ephemeral` in tests).
    pub tls: crate::transport::Tls,
    /// Where the cluster CA is on this machine (None: tests): a node holding its key signs the
    /// renewals of peers that do not (`api::peer`'s certificate route).
    pub pki: Option<crate::pki::Paths>,
}

/// Test seams (the simulation, `testing`): in-process stand-ins for the fence devices and for
/// the HTTP hop of a forwarded write. `Seams::default()`, the product's, replaces nothing.
#[derive(Clone, Default)]
pub struct Seams {
    pub fence: Option<Arc<dyn crate::fence::FenceSeam>>,
    pub forward: Option<Arc<dyn crate::forward::ForwardSeam>>,
}

/// One member as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub id: u64,
    /// online | offline | standby | unknown, as seen by the answering node.
    pub state: String,
    pub voter: bool,
    pub is_self: bool,
    pub standby: bool,
    /// As recorded in the replicated state by the leader.
    pub liveness: Liveness,
    pub api: String,
    pub attrs: BTreeMap<String, String>,
    /// The answering node's view of its heartbeat links to this node (empty for itself).
    pub links: Vec<mesh::LinkStatus>,
    pub last_heartbeat_ms_ago: Option<u64>,
    pub changed_at_unix_ms: Option<u64>,
    /// The peer says it hears the answering node (None for itself; false while alive: the link
    /// works one way only, and the peer does not count toward quorum).
    #[serde(default)]
    pub hears_me: Option<bool>,
    /// Its fencing record (fenced since lost? failed attempts?), as replicated.
    #[serde(default)]
    pub fence: phalanx_core::state::FenceRecord,
    /// In maintenance: nothing on it is managed (its resources keep running, unmonitored).
    #[serde(default)]
    pub maintenance: bool,
    /// The committed config version it runs, as it recorded it (None: not recorded yet).
    #[serde(default)]
    pub config_version: Option<u64>,
}

/// The answer of `/v1/status` (`phalanx status --json`), schema version `schema`
/// (`docs/status.schema.json`; see `crate::status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The version of this JSON's layout ([`crate::status::STATUS_SCHEMA`]; 0: a node older
    /// than the versioned schema).
    #[serde(default)]
    pub schema: u32,
    /// When the answering node made this report (unix ms, its clock): expiries and ages are
    /// relative to it.
    #[serde(default)]
    pub generated_ms: u64,
    pub cluster: String,
    pub node: String,
    pub node_id: u64,
    pub leader: Option<String>,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub raft_state: String,
    pub quorum: bool,
    pub votes: usize,
    pub votes_needed: usize,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// Wall-clock ms when this node last became leader (None if it never was).
    pub leader_since_unix_ms: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub config_version: u64,
    pub heartbeat_interval_ms: u64,
    pub dead_after: u32,
    pub no_quorum_policy: String,
    /// required | watchdog | off.
    #[serde(default)]
    pub fencing: String,
    pub disabled_links: Vec<usize>,
    pub nodes: Vec<NodeStatus>,
    pub mesh: MeshStats,
    /// Every configured primitive and where it runs.
    #[serde(default)]
    pub resources: Vec<ResourceStatus>,
    /// Actions of the current plan not finished yet.
    #[serde(default)]
    pub plan_pending: usize,
    /// Every fence device and what its last monitor found (None: not checked yet).
    #[serde(default)]
    pub fence_devices: Vec<(String, Option<phalanx_core::state::DeviceHealth>)>,
    /// The witness, when the config has one, as this node sees it.
    #[serde(default)]
    pub witness: Option<WitnessStatus>,
    /// The cluster's committed config (its text aside: `GET /v1/config`), if any.
    #[serde(default)]
    pub config: Option<crate::api::config::ConfigView>,
    /// The committed version this node runs (0: its local file, nothing committed yet).
    #[serde(default)]
    pub running_config_version: u64,
    /// This node's local config file differs from the committed version (that version).
    #[serde(default)]
    pub local_config_differs: Option<u64>,
    /// Cluster-wide maintenance: nothing is managed (resources keep running, unmonitored).
    #[serde(default)]
    pub maintenance: bool,
    /// The answering node has quorum, so its record of what runs where is current; false:
    /// every resource's placement is unknown here (`resources[].state` = "unknown").
    #[serde(default)]
    pub placement_known: bool,
    /// Operator moves and bans, with who made them and when they expire.
    #[serde(default)]
    pub constraints: Vec<phalanx_core::state::OperatorEntry>,
    /// Failures cleanup has not cleared, most recent first.
    #[serde(default)]
    pub failed_actions: Vec<crate::status::FailedAction>,
    /// Every node's fencing record that has anything in it.
    #[serde(default)]
    pub fence_history: Vec<crate::status::FenceHistory>,
    /// Every fence device's health, who checks it and when this node last did.
    #[serde(default)]
    pub devices: Vec<crate::status::DeviceStatus>,
    /// The newest events of the history (`status::RECENT_EVENTS`), oldest first, each as
    /// `phalanx events --json` prints it.
    #[serde(default)]
    pub recent_events: Vec<serde_json::Value>,
    /// The sequence number of the newest event (0: none yet).
    #[serde(default)]
    pub last_event_seq: u64,
}

/// The witness as one node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WitnessStatus {
    pub address: String,
    /// Its heartbeats reach this node.
    pub reachable: bool,
    /// The node whose partition it backs, as its last heartbeat said.
    pub vote: Option<String>,
    /// Its vote counts for this node's partition.
    pub granted: bool,
}

/// One primitive as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub id: String,
    pub agent: String,
    /// Its group or clone, if any.
    pub parent: Option<String>,
    /// Where it runs, on nodes the cluster sees online.
    pub running: BTreeMap<String, phalanx_core::scheduler::Role>,
    /// Nodes that were running it when they were lost: its state there is unknown until the
    /// node is fenced or comes back and probes.
    #[serde(default)]
    pub lost: Vec<String>,
    /// Failures per node (unexpired or not: cleanup resets them).
    pub failures: BTreeMap<String, usize>,
    pub banned: Vec<String>,
    pub fatal: bool,
    pub last_error: Option<String>,
    /// started | stopped | failed | unknown (the answering node has no quorum: `running` is
    /// its last record, possibly stale).
    #[serde(default)]
    pub state: String,
    /// Failures per node with their expiry (`failure_timeout`).
    #[serde(default)]
    pub fail_counts: Vec<crate::status::FailCount>,
    /// Failures on a node before it is banned there (None: never).
    #[serde(default)]
    pub migration_threshold: Option<u32>,
    #[serde(default)]
    pub failure_timeout_ms: Option<u64>,
    /// Its last operation, as far as the state records it.
    #[serde(default)]
    pub last_op: Option<crate::status::LastOp>,
    /// What its agent is doing, per node, while an action runs there ("rejoining
    /// (pg_rewind)": see `status::in_progress`).
    #[serde(default)]
    pub in_progress: BTreeMap<String, String>,
    /// How often its monitor runs (None: not monitored).
    #[serde(default)]
    pub monitor_interval_ms: Option<u64>,
}

/// A running node.
pub struct Node {
    pub name: String,
    pub id: NodeId,
    /// The configuration this node runs: the committed version once there is one (see
    /// `config_watch`), before that the local file. Read it with [`Node::config`].
    config: std::sync::RwLock<Arc<Config>>,
    /// The committed version `config` is (0: the local file, nothing committed yet).
    pub(crate) config_version: AtomicU64,
    /// The local file's text: what the first leader commits as version 1, and what status
    /// compares with the committed version.
    pub(crate) local_config: Option<String>,
    /// This node's agents (None: it runs none): what `config apply` checks a text against.
    pub(crate) runner: Option<crate::agents::Runner>,
    /// Every timing derived from `[cluster]` (the one owner: `phalanx_core::timings`).
    pub timings: Timings,
    pub api: SocketAddr,
    /// The cluster group's Raft.
    pub raft: Raft,
    /// Every Raft group this node serves (today the cluster group alone), by name: the peer
    /// router serves `/raft/{group}/{rpc}` through it.
    groups: Groups,
    pub mesh: Mesh,
    /// This process's incarnation (grows with every start): names its claims of plan actions.
    pub incarnation: u64,
    /// Runs the fence devices of the config.
    pub fencer: crate::fence::Fencer,
    state: Arc<RwLock<SmData>>,
    /// Changes after every applied entry (see `StateMachine::applied`).
    applied: tokio::sync::watch::Receiver<u64>,
    http: reqwest::Client,
    /// The node's TLS (its certificate and the cluster CA; see `transport`).
    pub tls: crate::transport::Tls,
    /// The cluster's keys this node holds: they sign heartbeats and derive the node routes'
    /// token (a break-glass request proves it holds one; see `api::tokens`).
    pub(crate) key: crate::key::Keys,
    /// See [`NodeOptions::pki`].
    pub(crate) pki: Option<crate::pki::Paths>,
    /// Connections refused at the TLS handshake since start, by reason.
    tls_refused: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    leader_since: AtomicU64,
    /// The event notes only this node makes (authentication failures).
    pub(crate) notes: crate::events::Notes,
    pub(crate) started: tokio::time::Instant,
    /// The controller's memory between rounds (campaign window, plan wait): see
    /// `phalanx_core::controller`.
    pub(crate) control: std::sync::Mutex<phalanx_core::controller::Controller>,
    /// On the witness: the node id it backs (0: nobody).
    pub(crate) vote: AtomicU64,
    /// Carries forwarded writes instead of HTTP (tests only; see [`Seams`]).
    forward: Option<Arc<dyn crate::forward::ForwardSeam>>,
    /// Every task this node spawned and that may still run ([`Node::crash`] aborts them).
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// Where a stop of this node stands (see `lifecycle`).
    pub(crate) stop: tokio::sync::watch::Sender<crate::lifecycle::StopState>,
    /// Counts the trust record's changes this node took in (see `rotation`).
    pub(crate) trust_changed: tokio::sync::watch::Sender<u64>,
    /// Rounds the controller loop has run (systemd's watchdog is fed while it grows).
    pub(crate) rounds: AtomicU64,
    /// When this node last checked each fence device (unix ms; it checks them while it leads):
    /// not replicated, so that a check costs no log entry (see `state::DeviceHealth`).
    device_checks: std::sync::Mutex<BTreeMap<String, u64>>,
    /// The load balancers running here (the agent `balancer`'s; see `lb`).
    pub balancers: Arc<crate::lb::Balancers>,
    /// The session store (the `sessions` Raft group and its memcached listener), if hosted.
    pub sessions: Option<Arc<crate::sessions::Sessions>>,
}

impl Node {
    /// Start Raft, the mesh and the controller. `db` is the cluster group's database
    /// (`raft::group::db_file`), `net` carries its Raft RPCs, `out`/`inbound` carry heartbeats;
    /// the caller serves the API (see `crate::api::app`).
    pub async fn start<N: RaftNetworkFactory<TypeConfig>>(
        opts: NodeOptions,
        db: Arc<redb::Database>,
        net: N,
        out: Arc<dyn DatagramOut>,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Result<Arc<Node>, NodeError> {
        let mut opts = opts;
        let balancers = Arc::new(crate::lb::Balancers::default());
        if let Some(r) = opts.runner.as_mut() {
            r.balancers = Some(balancers.clone());
        }
        let incarnation = crate::raft::store::next_incarnation(&db, mesh::unix_ms())?;
        let sm = StateMachine::load(db.clone())?;
        // The committed config, if the cluster has one: the node runs it from the start (its
        // local file only bootstraps a new cluster; see `config_watch`).
        let committed = sm
            .shared()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .cluster
            .current_config()
            .cloned();
        let mut config_version = 0;
        if let Some(rec) = committed {
            match crate::config_watch::derive(&rec.text, opts.runner.as_ref()).await {
                Ok(c) => {
                    opts.config = c;
                    config_version = rec.version;
                }
                Err(e) => {
                    tracing::error!(version = rec.version, error = %e, "cannot run the committed config: running the local file")
                }
            }
        }
        let timings = Timings::from(&opts.config.cluster);
        let mut rc = raft_config(&opts.config.cluster);
        // The witness campaigns only when it alone holds the newest entries (`witness_round`).
        rc.enable_elect = opts.id != WITNESS_ID;
        let cfg = Arc::new(rc.validate()?);
        let state = sm.shared();
        let applied = sm.applied();
        let raft = Raft::new(opts.id, cfg, net, LogStore::new(db), sm).await?;
        let mut groups = Groups::default().with(raft.clone());
        let sessions = match opts.sessions_store.clone() {
            Some(storage) => {
                let (s, rx) = crate::sessions::Sessions::start(crate::sessions::Options {
                    id: opts.id,
                    storage,
                    raft_config: raft_config(&opts.config.cluster),
                    keys: opts.key.clone(),
                    tls: opts.tls.clone(),
                    config: opts.config.sessions.clone(),
                })
                .await?;
                groups = groups.with_on(s.raft.clone(), s.rt.clone());
                Some((s, rx))
            }
            None => None,
        };
        let mesh = Mesh::new(MeshSettings {
            cluster: opts.config.cluster.name.clone(),
            me: opts.name.clone(),
            links: opts.links.clone(),
            interval: timings.heartbeat,
            dead_after: timings.dead_after,
            incarnation,
            key: opts.key.clone(),
        });
        let node = Arc::new(Node {
            name: opts.name.clone(),
            id: opts.id,
            api: opts.api,
            raft,
            groups,
            mesh: mesh.clone(),
            incarnation,
            fencer: {
                let f = crate::fence::Fencer::new(opts.config.fence.clone(), crate::transport::device_client()?);
                match opts.seams.fence {
                    Some(fake) => f.with_fake(fake),
                    None => f,
                }
            },
            state,
            applied,
            http: crate::transport::forward_client(&opts.tls)?,
            leader_since: AtomicU64::new(0),
            notes: Default::default(),
            tls: opts.tls.clone(),
            tls_refused: Default::default(),
            key: opts.key.clone(),
            pki: opts.pki.clone(),
            started: tokio::time::Instant::now(),
            control: std::sync::Mutex::default(),
            vote: AtomicU64::new(0),
            forward: opts.seams.forward,
            tasks: std::sync::Mutex::default(),
            stop: tokio::sync::watch::Sender::new(Default::default()),
            trust_changed: tokio::sync::watch::Sender::new(0),
            rounds: AtomicU64::new(0),
            device_checks: std::sync::Mutex::default(),
            timings,
            config: std::sync::RwLock::new(Arc::new(opts.config)),
            config_version: AtomicU64::new(config_version),
            local_config: opts.config_text,
            runner: opts.runner.clone(),
            balancers,
            sessions: sessions.as_ref().map(|(s, _)| s.clone()),
        });
        if let Some((s, rx)) = sessions {
            for t in s.run(rx, Arc::downgrade(&node)) {
                node.track(t);
            }
        }
        node.balancers.attach(&node);
        node.spawn(crate::lb::checker::run(Arc::downgrade(&node)));
        node.refresh_peers();
        match &opts.mesh_runtime {
            Some(rt) => node.track(rt.spawn(mesh.run(out, inbound)).abort_handle()),
            None => node.spawn(mesh.run(out, inbound)),
        }

        if opts.bootstrap && !node.raft.is_initialized().await? {
            // Every listed node initializes with the same membership: openraft allows this and
            // it means the cluster forms whichever nodes come up first.
            let config = node.config();
            let witness = config.witness.as_ref();
            let mut members: BTreeMap<NodeId, BasicNode> = config
                .nodes
                .iter()
                .enumerate()
                .take(MAX_VOTERS - usize::from(witness.is_some()))
                .map(|(i, n)| (i as u64 + 1, BasicNode::new(n.api.to_string())))
                .collect();
            if let Some(w) = witness {
                members.insert(WITNESS_ID, BasicNode::new(w.address.to_string()));
            }
            if let Some(s) = &node.sessions {
                // The session store's group forms with the cluster, on the same members, so
                // that it is founded once (its upkeep then follows the cluster's members).
                if !s.raft.is_initialized().await? {
                    if let Err(e) = s.raft.initialize(members.clone()).await {
                        tracing::info!(error = %e, "not initializing the session store");
                    }
                }
            }
            if let Err(e) = node.raft.initialize(members).await {
                tracing::info!(error = %e, "not initializing the cluster");
            }
        }
        node.spawn(node.clone().controller());
        node.spawn(crate::lifecycle::run(node.clone()));
        node.spawn(crate::config_watch::run(node.clone(), opts.runner.clone()));
        if let Some(runner) = opts.runner {
            node.spawn(crate::executor::run(node.clone(), runner));
        }
        node.spawn(node.clone().metrics_watch());
        node.spawn(node.clone().members_watch());
        node.spawn(crate::rotation::watch(node.clone()));
        node.spawn(crate::events::watch_quorum(node.clone()));
        node.spawn(crate::events::watch_burn(node.clone()));
        node.spawn(crate::alerts::run(node.clone()));
        Ok(node)
    }

    /// Spawn one of this node's tasks (the loops, and the executor's actions and checks), so
    /// that [`Node::crash`] can stop it.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.track(tokio::spawn(task).abort_handle());
    }

    /// Remember a task this node started (see [`Node::spawn`]).
    pub(crate) fn track(&self, handle: tokio::task::AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// The configuration this node runs now (it changes when a new version is committed).
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Run `config` from now on (the committed version `version`).
    pub(crate) fn set_config(&self, config: Config, version: u64) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.config_version.store(version, Ordering::SeqCst);
    }

    /// The token this node's requests to its peers carry (its signing key's).
    pub fn token(&self) -> String {
        self.key.token()
    }

    /// The Raft groups this node serves (see `raft::group`).
    pub fn raft_groups(&self) -> &Groups {
        &self.groups
    }

    /// A connection refused at the TLS handshake: counted (`phalanx_tls_refused_total`) and
    /// recorded as an authentication failure (one event per source a minute).
    pub fn tls_refused(self: &Arc<Self>, r: crate::transport::Refused) {
        *self
            .tls_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(r.reason)
            .or_default() += 1;
        tracing::warn!(from = %r.from, reason = r.reason, detail = %r.detail, "connection refused at the TLS handshake");
        self.notes.auth_failed(
            self,
            &r.from.ip().to_string(),
            &format!("TLS handshake: {}", r.reason),
            mesh::unix_ms(),
        );
    }

    /// The addresses member `name`'s certificate names: its links and API as replicated, its
    /// metrics address in the config, the session store's for its clients (the witness: its
    /// configured address).
    pub fn cert_ips(&self, name: &str) -> Vec<std::net::IpAddr> {
        let config = self.config();
        let mut ips: Vec<std::net::IpAddr> = self.with_state(|sm| {
            sm.cluster
                .nodes
                .get(name)
                .map(|r| {
                    r.links
                        .iter()
                        .chain([&r.api])
                        .filter_map(|a| a.parse::<SocketAddr>().ok())
                        .map(|a| a.ip())
                        .collect()
                })
                .unwrap_or_default()
        });
        if name == crate::raft::WITNESS_NAME {
            ips.extend(config.witness.iter().map(|w| w.address.ip()));
        }
        crate::pki::addresses(&config, name, ips)
    }

    /// Connections refused at the TLS handshake, by reason.
    pub fn tls_refusals(&self) -> BTreeMap<&'static str, u64> {
        self.tls_refused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The node's pooled HTTP client (forwarding to the leader; built by `transport`).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Whether this node reaches a majority of the votes (through the mesh, itself included).
    pub fn quorate(&self) -> bool {
        self.quorum_view().0.quorate
    }

    /// The witness backs this node's partition (its vote counts with ours).
    pub(crate) fn witness_backs_me(&self) -> bool {
        self.quorum_view().1.is_some_and(|w| w.granted)
    }

    /// Rounds the controller loop has run so far (see `systemd`: the watchdog).
    pub fn controller_rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// This is the witness process, not a node.
    pub fn is_witness(&self) -> bool {
        self.id == WITNESS_ID
    }

    /// Quorum as this node sees it: the node voters it reaches, plus the witness' vote when the
    /// witness backs this partition. Also what status shows of the witness.
    fn quorum_view(&self) -> (quorum::QuorumView, Option<WitnessStatus>) {
        let m = self.raft.metrics().borrow().clone();
        let sm = self.cluster_state();
        let voters: BTreeSet<String> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != WITNESS_ID)
            .map(|id| self.name_of(&sm, id).unwrap_or_else(|| format!("#{id}")))
            .collect();
        let reachable = self.reachable();
        let witness = self.config().witness.as_ref().map(|w| {
            let peers = self.mesh.peers();
            let (reachable_w, vote) = if self.is_witness() {
                (true, Some(self.vote.load(Ordering::SeqCst)))
            } else {
                let p = peers.get(WITNESS_NAME);
                (p.is_some_and(|p| p.alive), p.and_then(|p| p.vote))
            };
            let vote = vote.filter(|v| *v != 0).and_then(|id| self.name_of(&sm, id));
            let grace = ms(self.timings.witness_grace);
            let now = mesh::unix_ms();
            let recently_lost: BTreeSet<String> = peers
                .iter()
                .filter(|(_, p)| !p.alive && p.changed_at_unix_ms.is_some_and(|t| now.saturating_sub(t) <= grace))
                .map(|(n, _)| n.clone())
                .collect();
            WitnessStatus {
                address: w.address.to_string(),
                reachable: reachable_w,
                granted: quorum::witness_grants(reachable_w, vote.as_deref(), &reachable, &recently_lost),
                vote,
            }
        });
        let q = quorum::evaluate(&voters, &reachable, witness.as_ref().map(|w| w.granted));
        (q, witness)
    }

    /// A receiver that changes after every applied log entry.
    /// Changes whenever this node took in a new trust record (a step of a rotation).
    pub fn trust_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.trust_changed.subscribe()
    }

    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.clone()
    }

    /// A consistent copy of the replicated state, without the event history (see
    /// `SmData::without_events`).
    pub fn cluster_state(&self) -> SmData {
        self.with_state(SmData::without_events)
    }

    /// Read the applied state in place (no copy: the state can be tens of MB), under its lock:
    /// `f` must not block (applying waits for it).
    pub fn with_state<R>(&self, f: impl FnOnce(&SmData) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The peers to heartbeat: the replicated members once there are any, else the config; and
    /// the witness when there is one. The witness has one link, and hears the nodes' first.
    pub(crate) fn refresh_peers(&self) {
        let st = self.cluster_state();
        let mut peers: BTreeMap<String, Vec<SocketAddr>> = if st.cluster.max_node_id == 0 {
            self.config()
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.links.clone()))
                .collect()
        } else {
            st.cluster
                .nodes
                .iter()
                .map(|(n, r)| (n.clone(), r.links.iter().filter_map(|l| l.parse().ok()).collect()))
                .collect()
        };
        if self.is_witness() {
            peers.values_mut().for_each(|links| links.truncate(1));
        } else if let Some(w) = &self.config().witness {
            peers.insert(WITNESS_NAME.to_string(), vec![w.address]);
        }
        self.mesh.set_peers(peers);
    }

    /// The name of node `id`: from the replicated state, else from the config file (ids of
    /// listed nodes are their position + 1), so it is known before the state is applied.
    pub(crate) fn name_of(&self, sm: &SmData, id: NodeId) -> Option<String> {
        if id == WITNESS_ID {
            return Some(WITNESS_NAME.to_string());
        }
        sm.cluster.node_by_id(id).map(|(n, _)| n.clone()).or_else(|| {
            self.config()
                .nodes
                .get((id as usize).checked_sub(1)?)
                .map(|n| n.name.clone())
        })
    }

    /// The current leader's name, if known.
    pub fn leader_name(&self) -> Option<String> {
        let leader = self.raft.metrics().borrow().current_leader?;
        self.with_state(|sm| self.name_of(sm, leader))
    }

    pub(crate) fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == ServerState::Leader
    }

    /// Follow Raft's metrics: advertise our last log index in heartbeats, and record when this
    /// node became leader (for status and the demo's failover figure).
    async fn metrics_watch(self: Arc<Self>) {
        let mut rx = self.raft.metrics();
        let mut was_leader = false;
        loop {
            let (is_leader, last_log) = {
                let m = rx.borrow_and_update();
                (m.state == ServerState::Leader, m.last_log_index.unwrap_or(0))
            };
            self.mesh.set_log_index(last_log);
            if is_leader && !was_leader {
                self.leader_since.store(mesh::unix_ms(), Ordering::SeqCst);
                tracing::info!(term = rx.borrow().current_term, "became leader");
            }
            was_leader = is_leader;
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Keep the TLS's admitted names equal to the replicated members (and the witness), from
    /// each applied entry on: a removed node's certificate is refused from the entry that
    /// removed it (`Tls::set_members`). Nothing is enforced before the cluster bootstrapped.
    async fn members_watch(self: Arc<Self>) {
        let mut applied = self.applied.clone();
        let mut current: Option<BTreeSet<String>> = None;
        loop {
            let members: Option<BTreeSet<String>> = self.with_state(|sm| {
                (!sm.cluster.nodes.is_empty()).then(|| {
                    let mut m: BTreeSet<String> = sm.cluster.nodes.keys().cloned().collect();
                    m.insert(crate::raft::WITNESS_NAME.to_string());
                    m
                })
            });
            if members != current {
                tracing::debug!(?members, "node certificates admitted");
                self.tls.set_members(members.clone());
                current = members;
            }
            if applied.changed().await.is_err() {
                return;
            }
        }
    }

    /// Names of every node this node can reach both ways, itself included.
    pub(crate) fn reachable(&self) -> BTreeSet<String> {
        let mut r = self.mesh.two_way_peers();
        r.insert(self.name.clone());
        r
    }

    /// Commit an operator request, an agent's result or a claim through Raft, forwarding it
    /// to the leader when this node is not it. A leader's decision (`Command::forwardable` is
    /// false) is refused here, whoever asks: it goes through `write_as_leader` only.
    pub async fn write(&self, cmd: Command) -> Result<Outcome, NodeError> {
        Ok(self.write_indexed(cmd).await?.0)
    }

    /// [`write`](Self::write), with the log index the command was committed at when known (the
    /// peer route hands it back to the follower that forwarded it).
    pub(crate) async fn write_indexed(&self, cmd: Command) -> Result<(Outcome, Option<u64>), NodeError> {
        self.write_stamped(self.stamp(cmd, None, None)).await
    }

    /// [`write`](Self::write) an operator's command: the event history names who asked and from
    /// where, and the command is logged here. Forwarded, it is answered once this node has
    /// applied it too (within [`READ_YOUR_WRITE`]): the operator's next request to this node
    /// sees it — a token revoked here is refused here, a move shows in this node's status.
    pub async fn write_by(&self, cmd: Command, by: &str, from: &str) -> Result<Outcome, NodeError> {
        tracing::info!(operator = %by, from = %from, command = cmd.name(), ?cmd, "operator command");
        let (outcome, index) = self.write_stamped(self.stamp(cmd, Some((by, from)), None)).await?;
        if let Some(index) = index {
            // Past the bound (this node cut off from the leader right after), the command is
            // committed all the same: answer, and this node catches up when it hears the leader.
            let wait = self.raft.wait(Some(READ_YOUR_WRITE));
            if let Err(e) = wait.applied_index_at_least(Some(index), "an operator's write").await {
                tracing::warn!(index, error = %e, "answering an operator before applying its committed write here");
            }
        }
        Ok(outcome)
    }

    /// [`write`](Self::write) what an agent call found, with its exit code, duration and stderr
    /// for the event history.
    pub async fn write_reported(&self, cmd: Command, call: Option<CallReport>) -> Result<Outcome, NodeError> {
        Ok(self.write_stamped(self.stamp(cmd, None, call)).await?.0)
    }

    /// An API request without the right token, from `from` (see `events::Notes`).
    pub(crate) fn auth_failed(self: &Arc<Self>, from: &str, path: &str) {
        self.notes.auth_failed(self, from, path, mesh::unix_ms());
    }

    /// `cmd` stamped with this node's name and clock (a forwarded command keeps its origin's).
    fn stamp(&self, cmd: Command, by: Option<(&str, &str)>, call: Option<CallReport>) -> Command {
        if matches!(cmd, Command::Stamped { .. }) {
            return cmd;
        }
        Command::Stamped {
            stamp: Stamp {
                at_ms: mesh::unix_ms(),
                node: self.name.clone(),
                by: by.map(|b| b.0.to_string()),
                from: by.map(|b| b.1.to_string()),
                call,
            },
            cmd: Box::new(cmd),
        }
    }

    /// Commit `cmd` here or through the leader: its outcome and the log index it was committed
    /// at (None: a leader that did not say, of an older build).
    async fn write_stamped(&self, cmd: Command) -> Result<(Outcome, Option<u64>), NodeError> {
        if !cmd.forwardable() {
            return Err(NodeError::NotForwardable { command: cmd.name() });
        }
        match self.raft.client_write(Request(cmd.clone())).await {
            Ok(resp) => Ok((self.committed(resp.data.0).await, Some(resp.log_id.index))),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let Some(leader) = f.leader_node else {
                    return Err(NodeError::NoLeader);
                };
                if let Some(fake) = &self.forward {
                    return Ok(fake.forward(&leader.addr, &cmd).await?);
                }
                Ok(crate::forward::to_leader(&self.http, &self.token(), &leader.addr, &cmd).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Commit a decision this node took as leader (liveness, plan, bootstrap), only while it
    /// is the leader: never forwarded. A node that believes it leads may have been deposed
    /// without knowing yet (say, restarted with its old vote into a healed partition); it
    /// decided on a stale view (peers it cannot reach both ways yet look offline), and the real
    /// leader must not commit that. Found by the nemesis: such a forwarded "n2 offline" made
    /// n2, the real leader, forget what it ran and start web's VIP a second time elsewhere.
    pub(crate) async fn write_as_leader(&self, cmd: Command) -> Result<Outcome, NodeError> {
        match self.raft.client_write(Request(self.stamp(cmd, None, None))).await {
            Ok(resp) => Ok(self.committed(resp.data.0).await),
            Err(e) => Err(e.into()),
        }
    }

    async fn committed(&self, outcome: Outcome) -> Outcome {
        // Followers learn the new commit index with the leader's next append; without one it
        // would ride on the next heartbeat, up to an interval later, and every plan step handed
        // from one node to another would wait for it.
        let _ = self.raft.trigger().heartbeat().await;
        outcome
    }

    /// The API address of the current leader, if known.
    pub fn leader_api(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// This node checked fence device `device` at `at_ms` (see `executor::monitors`).
    pub(crate) fn device_checked(&self, device: &str, at_ms: u64) {
        self.device_checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.to_string(), at_ms);
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> StatusReport {
        let m = self.raft.metrics().borrow().clone();
        let sm = self.cluster_state();
        let membership = m.membership_config.membership().clone();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let name_of = |id: NodeId| -> String { self.name_of(&sm, id).unwrap_or_else(|| format!("#{id}")) };
        let voters: BTreeSet<String> = voter_ids.iter().map(|id| name_of(*id)).collect();
        let learners: Vec<String> = membership.learner_ids().map(name_of).collect();
        let (q, witness) = self.quorum_view();
        // A leader cut off from the majority does not step down by itself in openraft 0.9: it
        // only counts as leader while a majority acked it within an election timeout, and no
        // node names a leader while its own partition has no quorum.
        let election_max = ms(self.timings.election_max);
        let leader_valid = match m.state {
            ServerState::Leader => m.millis_since_quorum_ack.map(|ms| ms <= election_max).unwrap_or(false),
            _ => true,
        };
        let leader_id = m.current_leader.filter(|_| q.quorate && leader_valid);
        let peers: BTreeMap<String, PeerStatus> = self.mesh.peers();
        let mut nodes = Vec::new();
        let members: BTreeMap<String, NodeRecord> = if sm.cluster.max_node_id == 0 {
            // Not bootstrapped yet: show the configured members.
            self.config()
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let rec = NodeRecord {
                        id: i as u64 + 1,
                        links: n.links.iter().map(|l| l.to_string()).collect(),
                        api: n.api.to_string(),
                        standby: false,
                        liveness: Liveness::Unknown,
                        liveness_since_ms: 0,
                        attrs: BTreeMap::new(),
                        maintenance: false,
                        fence: Default::default(),
                        online_since_plan: 0,
                    };
                    (n.name.clone(), rec)
                })
                .collect()
        } else {
            sm.cluster.nodes.clone()
        };
        for (name, rec) in members {
            let NodeRecord {
                id,
                standby,
                liveness,
                api,
                mut attrs,
                fence,
                maintenance,
                ..
            } = rec;
            let is_self = name == self.name;
            // Shown as `config_version`, not among the operator's attributes.
            let recorded = crate::status::config_version_of(&attrs);
            attrs.remove(crate::status::CONFIG_VERSION_ATTR);
            let config_version = match is_self {
                true if !self.is_witness() => Some(self.running_config_version()).filter(|v| *v > 0),
                _ => recorded,
            };
            let peer = peers.get(&name);
            let online = is_self || peer.map(|p| p.alive).unwrap_or(false);
            let state = match (online, standby) {
                (_, _) if liveness == Liveness::Stopped && !online => "stopped",
                (true, _) if liveness == Liveness::Leaving => "leaving",
                (true, true) => "standby",
                (true, false) => "online",
                (false, _) if peer.is_none() && !is_self => "unknown",
                (false, _) => "offline",
            };
            nodes.push(NodeStatus {
                state: state.to_string(),
                voter: voter_ids.contains(&id),
                is_self,
                standby,
                liveness,
                api,
                attrs,
                links: peer.map(|p| p.links.clone()).unwrap_or_default(),
                last_heartbeat_ms_ago: peer.and_then(|p| p.last_heartbeat_ms_ago),
                changed_at_unix_ms: peer.and_then(|p| p.changed_at_unix_ms),
                hears_me: peer.map(|p| p.hears_me),
                fence,
                maintenance,
                config_version,
                name,
                id,
            });
        }
        let now_ms = mesh::unix_ms();
        let config = self.config();
        let (last_ops, recent_events, last_event_seq) = self.with_state(|sm| {
            let mut recent: Vec<serde_json::Value> = sm
                .events
                .newest_first()
                .take(crate::status::RECENT_EVENTS)
                .filter_map(|e| serde_json::to_value(crate::events::EventView::of(e)).ok())
                .collect();
            recent.reverse();
            (
                crate::status::last_ops_from_events(&sm.events),
                recent,
                sm.events.next_seq() - 1,
            )
        });
        let r = &config.resources;
        let resources: Vec<ResourceStatus> = r
            .instances()
            .into_iter()
            .map(|(id, p)| {
                let rec = sm.cluster.resources.get(&id).cloned().unwrap_or_default();
                let parent = r
                    .group_of(&p.id)
                    .map(|g| g.id.clone())
                    .or_else(|| r.clone_of(&p.id).map(|c| c.id.clone()));
                let online = |n: &String| {
                    sm.cluster
                        .nodes
                        .get(n)
                        .map(|r| !matches!(r.liveness, Liveness::Offline | Liveness::Stopped))
                        .unwrap_or(false)
                };
                let (running, lost): (BTreeMap<_, _>, BTreeMap<_, _>) =
                    rec.running.clone().into_iter().partition(|(n, _)| online(n));
                let meta = crate::status::unit_meta(&config, &id);
                ResourceStatus {
                    state: crate::status::resource_state(q.quorate, &running, rec.fatal).into(),
                    fail_counts: crate::status::fail_counts(&rec, meta, now_ms),
                    migration_threshold: meta.and_then(|m| m.migration_threshold),
                    failure_timeout_ms: meta.and_then(|m| m.failure_timeout).map(|d| d.as_millis() as u64),
                    last_op: last_ops
                        .get(&id)
                        .cloned()
                        .or_else(|| crate::status::last_op(&sm.cluster, &id)),
                    monitor_interval_ms: p.monitor.as_ref().map(|m| m.interval.as_millis() as u64),
                    in_progress: crate::status::in_progress(&sm.cluster, &id),
                    id,
                    agent: p.agent.to_string(),
                    parent,
                    running,
                    lost: lost.into_keys().collect(),
                    failures: rec.failures.iter().map(|(n, f)| (n.clone(), f.len())).collect(),
                    banned: rec.banned.into_iter().collect(),
                    fatal: rec.fatal,
                    last_error: rec.last_error,
                }
            })
            .collect();
        let plan_pending = sm.cluster.plan.pending_keys().len();
        let since = self.leader_since.load(Ordering::SeqCst);
        let checked = self.device_checks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        StatusReport {
            schema: crate::status::STATUS_SCHEMA,
            generated_ms: now_ms,
            maintenance: sm.cluster.maintenance,
            placement_known: q.quorate,
            constraints: sm.cluster.operator_entries(now_ms),
            failed_actions: crate::status::failed_actions(&sm.cluster),
            fence_history: crate::status::fence_history(&sm.cluster),
            devices: crate::status::devices(&config, &sm.cluster, &self.name, &checked),
            recent_events,
            last_event_seq,
            cluster: self.config().cluster.name.clone(),
            node: self.name.clone(),
            node_id: self.id,
            leader: leader_id.map(name_of),
            leader_id,
            term: m.current_term,
            raft_state: format!("{:?}", m.state),
            quorum: q.quorate,
            votes: q.votes,
            votes_needed: q.needed,
            voters: voters.into_iter().collect(),
            learners,
            leader_since_unix_ms: (since > 0).then_some(since),
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            config_version: sm.cluster.config_version,
            heartbeat_interval_ms: self.config().cluster.heartbeat_interval.as_millis() as u64,
            dead_after: self.config().cluster.dead_after,
            no_quorum_policy: self.config().cluster.no_quorum_policy.as_str().to_string(),
            fencing: self.config().cluster.fencing.to_string(),
            fence_devices: self
                .config()
                .fence
                .devices
                .iter()
                .map(|d| (d.name.clone(), sm.cluster.fence_devices.get(&d.name).cloned()))
                .collect(),
            disabled_links: self.mesh.disabled_links().into_iter().collect(),
            nodes,
            mesh: self.mesh.stats(),
            resources,
            plan_pending,
            witness,
            config: sm
                .cluster
                .current_config()
                .map(|r| crate::api::config::ConfigView::of(r, false)),
            running_config_version: self.running_config_version(),
            local_config_differs: self.local_config_differs(),
        }
    }

    /// The replicated member list.
    pub fn members(&self) -> ClusterState {
        self.cluster_state().cluster
    }

    pub async fn shutdown(&self) {
        if let Some(s) = &self.sessions {
            let _ = s.raft.shutdown().await;
        }
        let _ = self.raft.shutdown().await;
    }

    /// Stop this node at once, as a power cut or `kill -9` would: abort every task it spawned
    /// (its loops, agent calls and reports in flight) and stop Raft. What Raft persisted stays
    /// in its database, from which a test starts the node again (a restarted machine keeps its
    /// disk). Tests only: the product stops with [`Node::shutdown`] or by exiting.
    pub async fn crash(&self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for t in tasks {
            t.abort();
        }
        self.balancers.stop_all();
        let _ = self.raft.shutdown().await;
    }
}
