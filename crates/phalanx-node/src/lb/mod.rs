//! The load balancer's proxy (issue 14) over `phalanx_core::lb`: the built-in agent
//! `balancer` starts, stops and monitors the `[[balancer]]`s this node runs. A running balancer
//! has its listeners (`tcp`, or `http` with `headers` and `stats`), its backend table (`pool`),
//! filled by `discovery` from the config and the replicated state and refreshed on every
//! applied entry, and its passive observations (`health`). Active checks (`probe`) are cluster
//! state: every node runs `checker`, which checks the backends assigned to it and commits their
//! verdicts, which every balancer adopts.
//!
//! Everything a balancer does runs on its own multi-threaded runtime ([`runtime`], threads
//! `phalanx-lb`), never on the daemon's (Raft, the API, the controller) nor on the heartbeat
//! mesh's: a saturated proxy cannot delay a heartbeat or a Raft deadline through the scheduler
//! (issue 14, item 8); and its threads run at nice 5 while the heartbeat thread runs real-time
//! (see `priority`), so a proxy saturating the CPU yields it to the control plane.

pub mod checker;
pub mod discovery;
pub mod headers;
pub mod health;
pub mod http;
pub mod pool;
pub mod probe;
pub mod stats;
pub mod tcp;

use crate::agents::AgentCall;
use crate::node::Node;
use phalanx_core::config::{BalancerConfig, BalancerMode};
use phalanx_core::ocf::{self, AgentAction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;

pub use pool::BackendStatus;

/// Why a balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("the node is not running")]
    NoNode,
    #[error("no [[balancer]] {0} in the config this node runs")]
    Unknown(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("starting the balancer runtime: {0}")]
    Runtime(std::io::Error),
}

impl LbError {
    /// The OCF exit code a start reports: a config that cannot run anywhere is fatal (6), a
    /// bind failure is this node's (1).
    fn ocf(&self) -> i32 {
        match self {
            LbError::Unknown(_) => ocf::OCF_ERR_CONFIGURED,
            _ => ocf::OCF_ERR_GENERIC,
        }
    }
}

/// One balancer as `GET /v1/balancers` and `phalanx balancer status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerStatus {
    pub id: String,
    /// The node running it (the one answering).
    pub node: String,
    pub listen: Vec<String>,
    pub mode: String,
    pub algorithm: String,
    /// Clients in the stick table (None: no stickiness), and how many of them the cluster's
    /// replicated table holds (committed: a balancer taking over knows them).
    pub sticky_entries: Option<usize>,
    pub sticky_committed: Option<usize>,
    pub backends: Vec<BackendStatus>,
    /// HTTP mode's request counters (None in TCP mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<stats::HttpStatus>,
}

/// The environment variable that sets the proxy runtime's thread count (read once, at the first
/// balancer start; `phalanx-lab bench lb` sets it to match HAProxy's `nbthread`).
pub const THREADS_ENV: &str = "PHALANX_LB_THREADS";

/// The proxy runtime's threads: [`THREADS_ENV`] if set to 1..=256, else the cores, up to 4.
fn threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    crate::priority::threads_from_env(THREADS_ENV, 256, cores)
}

/// The runtime every balancer runs on, made at the first start and kept for the process.
pub fn runtime() -> Result<tokio::runtime::Handle, LbError> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt.handle().clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads())
        .thread_name("phalanx-lb")
        .on_thread_start(crate::priority::lower_lb_thread)
        .enable_all()
        .build()
        .map_err(LbError::Runtime)?;
    // Two first starts at once: one runtime wins; the other must not be dropped in async code
    // (a runtime may not be dropped inside another's context): a plain thread drops it.
    if let Err(lost) = RT.set(rt) {
        std::thread::spawn(move || drop(lost));
    }
    RT.get()
        .map(|rt| rt.handle().clone())
        .ok_or_else(|| LbError::Runtime(std::io::Error::other("the balancer runtime vanished")))
}

/// A listener on `addr`, with `IP_FREEBIND` (`IPV6_FREEBIND`): it binds even before the
/// address is up on this node (a VIP the balancer is not grouped with, or one that comes up a
/// moment later), as HAProxy's `transparent`/`freebind` bind option; and `SO_REUSEADDR`, so a
/// balancer restarting here is not refused by its former connections in TIME_WAIT. (The session
/// store's memcached listener binds the same way.)
pub(crate) fn listen_freebind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if addr.is_ipv4() {
        sock.set_freebind_v4(true)?;
    } else {
        sock.set_freebind_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    tokio::net::TcpListener::from_std(sock.into())
}

/// A balancer running here.
struct Running {
    config: BalancerConfig,
    pool: Arc<pool::Pool>,
    /// The accept loops: the balancer is healthy while they all run.
    listeners: Vec<JoinHandle<()>>,
    /// The refresh from the config and the replicated state.
    helpers: Vec<JoinHandle<()>>,
    /// Tells open connections to finish within the grace (see `tcp`).
    stopping: tokio::sync::watch::Sender<bool>,
    /// HTTP mode's counters.
    stats: Option<Arc<stats::Stats>>,
}

impl Running {
    fn alive(&self) -> bool {
        self.listeners.iter().all(|l| !l.is_finished()) && self.helpers.iter().all(|h| !h.is_finished())
    }

    fn stop(self) {
        for t in self.listeners.iter().chain(&self.helpers) {
            t.abort();
        }
        let _ = self.stopping.send(true);
    }
}

/// The balancers this node runs (the agent `balancer`'s state).
#[derive(Default)]
pub struct Balancers {
    node: OnceLock<Weak<Node>>,
    running: Mutex<BTreeMap<String, Running>>,
}

impl std::fmt::Debug for Balancers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Balancers")
    }
}

impl Balancers {
    /// Give the registry its node (once, right after the node is made).
    pub fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }

    fn node(&self) -> Option<Arc<Node>> {
        self.node.get()?.upgrade()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Running>) -> R) -> R {
        f(&mut self.running.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The agent `balancer`: (OCF exit code, reason).
    pub async fn call(&self, c: &AgentCall<'_>) -> (i32, Option<String>) {
        let id = c.instance.to_string();
        match c.action {
            AgentAction::Start => match self.start(&id).await {
                Ok(()) => (ocf::OCF_SUCCESS, None),
                Err(e) => (e.ocf(), Some(e.to_string())),
            },
            AgentAction::Stop => {
                if let Some(r) = self.with(|m| m.remove(&id)) {
                    r.stop();
                    tracing::info!(balancer = %id, "balancer stopped");
                }
                (ocf::OCF_SUCCESS, None)
            }
            AgentAction::Monitor => self.with(|m| match m.get(&id) {
                None => (ocf::OCF_NOT_RUNNING, None),
                Some(r) if r.alive() => (ocf::OCF_SUCCESS, None),
                Some(_) => (ocf::OCF_ERR_GENERIC, Some(format!("balancer {id}: a listener stopped"))),
            }),
            AgentAction::MetaData | AgentAction::ValidateAll | AgentAction::Notify => (ocf::OCF_SUCCESS, None),
            other => (
                ocf::OCF_ERR_GENERIC,
                Some(format!("the balancer agent has no {} action", other.as_str())),
            ),
        }
    }

    async fn start(&self, id: &str) -> Result<(), LbError> {
        if self.with(|m| m.get(id).is_some_and(Running::alive)) {
            return Ok(());
        }
        if let Some(dead) = self.with(|m| m.remove(id)) {
            dead.stop();
        }
        let node = self.node().ok_or(LbError::NoNode)?;
        let config = node.config();
        let b = config
            .balancer(id)
            .cloned()
            .ok_or_else(|| LbError::Unknown(id.into()))?;
        let rt = runtime()?;
        // Bound on the balancer runtime, so that their IO is driven there.
        let addrs = b.listen.clone();
        let bound = rt
            .spawn(async move {
                let mut out = Vec::new();
                for addr in addrs {
                    out.push(listen_freebind(addr).map_err(|source| LbError::Bind { addr, source })?);
                }
                Ok::<_, LbError>(out)
            })
            .await
            .map_err(|e| LbError::Runtime(std::io::Error::other(e.to_string())))??;
        let pool = Arc::new(pool::Pool::new(b.algorithm(), b.check.health.clone(), b.max_conn));
        let (targets, records) = node.with_state(|sm| {
            (
                discovery::targets(&b, &config, &sm.cluster.resources),
                sm.cluster.balancers.get(id).cloned(),
            )
        });
        pool.update(&b, targets, records.as_ref());
        let table = node.with_state(|sm| sm.cluster.sticks.get(id).cloned());
        pool.set_sticky(b.sticky.as_ref().map(|s| s.table.clone()), table);
        let weak = Arc::downgrade(&node);
        let on_change: health::OnChange = Arc::new(move |balancer, backend, t, why| {
            let Some(node) = weak.upgrade() else { return };
            if t.to != phalanx_core::lb::BackendState::Down {
                return;
            }
            let mut verdict = node.with_state(|sm| {
                sm.cluster
                    .balancers
                    .get(balancer)
                    .and_then(|r| r.backends.get(backend))
                    .map(|r| r.verdict())
                    .unwrap_or_default()
            });
            verdict.up = false;
            checker::propose(&node, balancer, backend, verdict, format!("{why} on {}", node.name));
        });
        let view: Arc<dyn health::HealthView> = Arc::new(health::LocalHealth {
            balancer: id.to_string(),
            pool: pool.clone(),
            on_change: Some(on_change),
        });
        let (stopping, stop_rx) = tokio::sync::watch::channel(false);
        let settings = Arc::new(Mutex::new(b.clone()));
        let read = {
            let s = settings.clone();
            move || s.lock().unwrap_or_else(|p| p.into_inner()).clone()
        };
        let (listeners, stats) = if b.mode == BalancerMode::Http {
            let stats = Arc::new(stats::Stats::default());
            let shared = Arc::new(http::Shared::new(
                id.to_string(),
                pool.clone(),
                view.clone(),
                b.connect_timeout,
                Box::new({
                    let read = read.clone();
                    move || read().http
                }),
                stop_rx,
                stats.clone(),
            ));
            let listeners = bound
                .into_iter()
                .map(|l| rt.spawn(http::accept_loop(l, shared.clone())))
                .collect();
            (listeners, Some(stats))
        } else {
            let shared = Arc::new(tcp::Shared {
                balancer: id.to_string(),
                pool: pool.clone(),
                health: view.clone(),
                connect_timeout: Box::new({
                    let read = read.clone();
                    move || read().connect_timeout
                }),
                stopping: stop_rx,
            });
            let listeners = bound
                .into_iter()
                .map(|l| rt.spawn(tcp::accept_loop(l, shared.clone())))
                .collect();
            (listeners, None)
        };
        let refresh = rt.spawn(refresh(Arc::downgrade(&node), id.to_string(), pool.clone(), settings));
        let sticks = rt.spawn(commit_sticks(Arc::downgrade(&node), id.to_string(), pool.clone()));
        tracing::info!(balancer = %id, listen = ?b.listen, algorithm = %b.algorithm(), "balancer started");
        self.with(|m| {
            m.insert(
                id.to_string(),
                Running {
                    config: b,
                    pool,
                    listeners,
                    helpers: vec![refresh, sticks],
                    stopping,
                    stats,
                },
            )
        });
        Ok(())
    }

    /// Every balancer running here, with the node that checks each backend (from `node`'s
    /// replica).
    pub fn statuses(&self, node: &Node) -> Vec<BalancerStatus> {
        let online: Vec<String> = node.with_state(|sm| {
            sm.cluster
                .nodes
                .iter()
                .filter(|(_, r)| r.liveness == phalanx_core::Liveness::Online)
                .map(|(n, _)| n.clone())
                .collect()
        });
        let online: Vec<&str> = online.iter().map(String::as_str).collect();
        self.with(|m| {
            m.values()
                .map(|r| {
                    let id = r.config.id.as_str();
                    BalancerStatus {
                        id: id.to_string(),
                        node: node.name.clone(),
                        listen: r.config.listen.iter().map(|a| a.to_string()).collect(),
                        mode: r.config.mode.as_str().to_string(),
                        algorithm: r.config.algorithm().to_string(),
                        sticky_entries: r.pool.sticky_entries(),
                        sticky_committed: r
                            .config
                            .sticky
                            .as_ref()
                            .map(|_| node.with_state(|sm| sm.cluster.sticks.get(id).map_or(0, |t| t.len()))),
                        backends: r
                            .pool
                            .status(|be| phalanx_core::lb::checker(id, be, &online).map(str::to_string)),
                        http: r.stats.as_ref().map(|s| s.status()),
                    }
                })
                .collect()
        })
    }

    /// Stop every balancer (the node is going away).
    pub fn stop_all(&self) {
        for (_, r) in self.with(std::mem::take) {
            r.stop();
        }
    }
}

/// How often the backends are derived again even when nothing was applied (a committed config
/// switches after its entry was applied).
const REFRESH: Duration = Duration::from_secs(1);

/// Keep `pool` in line with the config and the replicated state (backends, verdicts, operator
/// states): at every applied entry, and every [`REFRESH`]; `settings` follows the config.
async fn refresh(node: Weak<Node>, id: String, pool: Arc<pool::Pool>, settings: Arc<Mutex<BalancerConfig>>) {
    let Some(mut applied) = node.upgrade().map(|n| n.applied()) else {
        return;
    };
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(REFRESH, applied.changed()).await {
            // The state machine is gone (the node is stopping): poll until the node is too.
            tokio::time::sleep(REFRESH).await;
        }
        let Some(node) = node.upgrade() else { return };
        let config = node.config();
        let Some(b) = config.balancer(&id) else { continue };
        let (targets, records) = node.with_state(|sm| {
            (
                discovery::targets(b, &config, &sm.cluster.resources),
                sm.cluster.balancers.get(&id).cloned(),
            )
        });
        pool.update(b, targets, records.as_ref());
        pool.set_sticky(b.sticky.as_ref().map(|s| s.table.clone()), None);
        *settings.lock().unwrap_or_else(|p| p.into_inner()) = b.clone();
    }
}

/// How often a balancer commits its stick-table changes.
const STICK_COMMIT: Duration = Duration::from_millis(500);

/// Commit `pool`'s stick-table changes every [`STICK_COMMIT`], in batches the state accepts. A
/// batch that fails (no quorum) is not retried: its entries are sent again at their next use.
async fn commit_sticks(node: Weak<Node>, id: String, pool: Arc<pool::Pool>) {
    loop {
        tokio::time::sleep(STICK_COMMIT).await;
        let Some((config, entries)) = pool.take_sticky_changes() else {
            continue;
        };
        let Some(node) = node.upgrade() else { return };
        for chunk in entries.chunks(phalanx_core::state::MAX_STICK_BATCH) {
            let cmd = phalanx_core::Command::Stick {
                balancer: id.clone(),
                at_ms: crate::mesh::unix_ms(),
                config: config.clone(),
                entries: chunk.to_vec(),
            };
            if let Err(e) = node.write(cmd).await {
                tracing::warn!(balancer = %id, error = %e, entries = chunk.len(), "stick table changes not committed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_binds_an_address_not_up_here_yet() {
        // TEST-NET-1: never configured on a machine; bound only, nothing is sent.
        let addr: SocketAddr = "192.0.2.1:0".parse().unwrap();
        assert!(
            std::net::TcpListener::bind(addr).is_err(),
            "the address is not local here (else the test says nothing)"
        );
        let l = listen_freebind(addr).expect("freebind binds it");
        assert_eq!(l.local_addr().unwrap().ip(), addr.ip());
        let taken = listen_freebind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(
            listen_freebind(taken.local_addr().unwrap()).is_err(),
            "a port in use is still refused"
        );
    }
}
