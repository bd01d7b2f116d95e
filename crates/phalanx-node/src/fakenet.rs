//! An in-process network for multi-node tests on paused tokio time: heartbeats and Raft RPCs
//! between nodes of one process go through here, where a test can partition sets of nodes
//! (directed cuts) and drop a seeded fraction of datagrams. Raft RPCs (the cluster group's) are
//! handed to the target's Raft handle directly, not encoded for `/raft/cluster/…`. It is a test
//! seam for the IO shell, used by tests only; production nodes use UDP and HTTP. A node can be
//! taken off the network entirely (`set_down`: crashed, powered off or paused), and a
//! follower's forwarded writes reach the leader's node through here too (`forwarder`), subject
//! to the same cuts.

use crate::forward::{FakeForward, ForwardError, ForwardSeam};
use crate::mesh::{DatagramOut, Inbound};
use crate::node::Node;
use crate::raft::{BasicNode, NodeId, Raft, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use phalanx_core::Command;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::mpsc;

#[derive(Default)]
struct NetState {
    /// Heartbeat address → (node, its inbound queue, link index).
    udp: BTreeMap<SocketAddr, (String, mpsc::Sender<Inbound>, usize)>,
    rafts: BTreeMap<NodeId, (String, Raft)>,
    /// Directed cuts: (from, to) pairs that deliver nothing.
    cut: BTreeSet<(String, String)>,
    /// Percentage of heartbeat datagrams dropped at random (seeded).
    loss_percent: u32,
    rng: Option<rand::rngs::StdRng>,
    /// Nodes off the network: they send and receive nothing.
    down: BTreeSet<String>,
    /// API address → (node, the node itself), for forwarded writes.
    apis: BTreeMap<String, (String, Weak<Node>)>,
}

impl NetState {
    /// Whether a message from `from` gets to `to` (neither is down, no cut between them).
    fn delivers(&self, from: &str, to: &str) -> bool {
        !self.down.contains(from) && !self.down.contains(to) && !self.cut.contains(&(from.to_string(), to.to_string()))
    }
}

/// The shared fake network.
#[derive(Clone, Default)]
pub struct FakeNet {
    st: Arc<Mutex<NetState>>,
}

#[derive(Debug)]
struct Cut;
impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("partitioned")
    }
}
impl std::error::Error for Cut {}

impl FakeNet {
    pub fn new(seed: u64) -> Self {
        let n = FakeNet::default();
        n.lock().rng = Some(rand::rngs::StdRng::seed_from_u64(seed));
        n
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a node's heartbeat links; returns its sending side and inbound queue.
    pub fn attach(&self, node: &str, links: &[SocketAddr]) -> (Arc<dyn DatagramOut>, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(1024);
        let mut st = self.lock();
        for (i, a) in links.iter().enumerate() {
            st.udp.insert(*a, (node.to_string(), tx.clone(), i));
        }
        (
            Arc::new(FakeOut {
                net: self.clone(),
                node: node.to_string(),
                links: links.to_vec(),
            }),
            rx,
        )
    }

    pub fn register_raft(&self, id: NodeId, node: &str, raft: Raft) {
        self.lock().rafts.insert(id, (node.to_string(), raft));
    }

    /// Register a started node: its Raft, and its API address for forwarded writes (a
    /// restarted node replaces its earlier incarnation).
    pub fn register_node(&self, node: &Arc<Node>) {
        let mut st = self.lock();
        st.rafts.insert(node.id, (node.name.clone(), node.raft.clone()));
        st.apis
            .insert(node.api.to_string(), (node.name.clone(), Arc::downgrade(node)));
    }

    /// Take `node` off the network (crashed, powered off, paused) or put it back.
    pub fn set_down(&self, node: &str, down: bool) {
        let mut st = self.lock();
        if down {
            st.down.insert(node.to_string());
        } else {
            st.down.remove(node);
        }
    }

    /// Whether `node` is off the network.
    pub fn is_down(&self, node: &str) -> bool {
        self.lock().down.contains(node)
    }

    /// Every directed cut in force, as (from, to).
    pub fn cuts(&self) -> BTreeSet<(String, String)> {
        self.lock().cut.clone()
    }

    /// How `node`'s writes reach the leader (see [`crate::node::Seams`]).
    pub fn forwarder(&self, node: &str) -> Arc<dyn ForwardSeam> {
        Arc::new(FakeForwarder {
            net: self.clone(),
            from: node.to_string(),
        })
    }

    /// The Raft transport of `node`.
    pub fn raft_network(&self, node: &str) -> FakeRaftNetwork {
        FakeRaftNetwork {
            net: self.clone(),
            from: node.to_string(),
        }
    }

    /// Split the nodes into groups that cannot talk to each other (both directions).
    pub fn partition(&self, groups: &[&[&str]]) {
        let mut st = self.lock();
        st.cut.clear();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for x in a.iter() {
                        for y in b.iter() {
                            st.cut.insert((x.to_string(), y.to_string()));
                        }
                    }
                }
            }
        }
    }

    /// Cut one direction only: `from` can no longer reach `to`.
    pub fn cut_one_way(&self, from: &str, to: &str) {
        self.lock().cut.insert((from.to_string(), to.to_string()));
    }

    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    pub fn set_loss_percent(&self, p: u32) {
        self.lock().loss_percent = p.min(100);
    }

    /// Whether `from` can currently send to `to`.
    pub fn can_reach(&self, from: &str, to: &str) -> bool {
        self.lock().delivers(from, to)
    }

    fn raft_of(&self, from: &str, target: NodeId) -> Result<Raft, Unreachable> {
        let st = self.lock();
        let (to, raft) = st.rafts.get(&target).ok_or_else(|| Unreachable::new(&Cut))?;
        // A request must get through and its answer must come back.
        if !st.delivers(from, to) || !st.delivers(to, from) {
            return Err(Unreachable::new(&Cut));
        }
        Ok(raft.clone())
    }
}

struct FakeOut {
    net: FakeNet,
    node: String,
    links: Vec<SocketAddr>,
}

impl DatagramOut for FakeOut {
    fn send(&self, link: usize, to: SocketAddr, data: &[u8]) -> bool {
        let Some(from) = self.links.get(link).copied() else {
            return false;
        };
        let mut st = self.net.lock();
        let Some((dest, tx, dest_link)) = st.udp.get(&to).cloned() else {
            return true; // sent into the void, as UDP does
        };
        if !st.delivers(&self.node, &dest) {
            return true;
        }
        let loss = st.loss_percent;
        if loss > 0 {
            if let Some(rng) = st.rng.as_mut() {
                if rng.gen_range(0..100) < loss {
                    return true;
                }
            }
        }
        let _ = tx.try_send(Inbound {
            link: dest_link,
            from,
            data: data.to_vec(),
        });
        true
    }
}

/// Raft transport over the fake network: calls the target's Raft handle directly.
#[derive(Clone)]
pub struct FakeRaftNetwork {
    net: FakeNet,
    from: String,
}

pub struct FakeConn {
    net: FakeNet,
    from: String,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for FakeRaftNetwork {
    type Network = FakeConn;
    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> FakeConn {
        FakeConn {
            net: self.net.clone(),
            from: self.from.clone(),
            target,
        }
    }
}

type Rpc<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl RaftNetwork<TypeConfig> for FakeConn {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let raft = self.net.raft_of(&self.from, self.target)?;
        raft.append_entries(req)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let raft = self.net.raft_of(&self.from, self.target)?;
        raft.install_snapshot(req)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        _o: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>, openraft::error::Infallible> {
        let raft = self.net.raft_of(&self.from, self.target)?;
        raft.vote(req)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// A follower's forwarded write, handed to the leader's node as its peer route would: refused
/// when it is a leader's decision, committed there (or forwarded on), its error mapped to the
/// status the route would answer. The request and the answer each need the path open.
struct FakeForwarder {
    net: FakeNet,
    from: String,
}

impl ForwardSeam for FakeForwarder {
    fn forward(&self, leader: &str, cmd: &Command) -> FakeForward {
        let (net, from, leader, cmd) = (self.net.clone(), self.from.clone(), leader.to_string(), cmd.clone());
        Box::pin(async move {
            let target = {
                let st = net.lock();
                st.apis
                    .get(&leader)
                    .filter(|(to, _)| st.delivers(&from, to))
                    .and_then(|(to, n)| Some((to.clone(), n.upgrade()?)))
            };
            let Some((to, node)) = target else {
                return Err(ForwardError::NotDelivered { leader });
            };
            if !cmd.forwardable() {
                return Err(ForwardError::Refused {
                    leader,
                    status: 403,
                    reason: format!("{} is a leader's decision", cmd.name()),
                });
            }
            let answer = node.write_indexed(cmd).await;
            if !net.lock().delivers(&to, &from) {
                return Err(ForwardError::NotDelivered { leader });
            }
            answer.map_err(|e| {
                let e = crate::api::ApiError::from(e);
                let (status, reason) = (e.status().as_u16(), e.to_string());
                if (400..500).contains(&status) {
                    ForwardError::Refused { leader, status, reason }
                } else {
                    ForwardError::Failed { leader, status, reason }
                }
            })
        })
    }
}
