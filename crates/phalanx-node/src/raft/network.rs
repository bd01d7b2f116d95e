//! Raft RPC over HTTP, for any Raft group (`group`): a pooled client (built by `transport`)
//! posts postcard bodies to `/raft/{group}/{append,vote,snapshot}` on the peer's API address,
//! with the cluster's bearer token (snapshots in chunks of `SNAPSHOT_CHUNK`, appends cut to
//! `APPEND_BUDGET`, both far below the peer router's `RAFT_BODY_LIMIT`). The other end is
//! [`GroupRpc`], implemented here for every group's `openraft::Raft`; the peer router
//! (`api::peer`) reaches it through the node's `Groups`. Unreachable peers map to openraft's
//! `Unreachable` so replication backs off instead of spinning. A group given a stream client
//! (`HttpNetwork::with_stream`: the session store's) sends its appends and votes over the
//! peer's stream (`sessions::stream`), and over HTTP only to a peer that refuses one.

use super::group::{Group, GroupId, GroupRpc};
use super::{BasicNode, LogId, NodeId};
use crate::sessions::stream::{Kind, StreamClient, StreamError};
use futures_util::future::BoxFuture;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::RaftLogId;
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Errors of the server side of an RPC (finding the group, decoding the request).
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("unknown raft group {0:?}")]
    UnknownGroup(String),
    #[error("unknown raft rpc {0:?}")]
    UnknownRpc(String),
    #[error("malformed {rpc} request: {source}")]
    Malformed { rpc: &'static str, source: postcard::Error },
    #[error("encoding the {rpc} answer: {source}")]
    Encode { rpc: &'static str, source: postcard::Error },
    #[error("the group's runtime did not serve it: {0}")]
    Stopped(String),
}

/// Creates one connection handle per peer for group `C` (its requests go to
/// `/raft/{C::ID}/…`); all share one pooled HTTP client.
pub struct HttpNetwork<C> {
    client: reqwest::Client,
    /// The node's keys: requests carry the signing key's token (it changes in a rotation).
    keys: crate::key::Keys,
    /// The session store's peer streams: its appends and votes go there (see
    /// `sessions::stream`); None: every RPC is an HTTP request.
    stream: Option<Arc<StreamClient>>,
    /// See [`HttpNetwork::with_commit_sent`].
    commit_sent: Option<Arc<AtomicU64>>,
    _group: PhantomData<C>,
}

impl<C: Group> HttpNetwork<C> {
    pub fn new(keys: crate::key::Keys, tls: &crate::transport::Tls) -> Result<Self, crate::transport::TransportError> {
        Ok(HttpNetwork {
            client: crate::transport::raft_client(tls)?,
            keys,
            stream: None,
            commit_sent: None,
            _group: PhantomData,
        })
    }

    /// Raise `sent` to every commit index this node tells a peer (plus one: 0 is none), before
    /// it is sent: a follower applies nothing beyond it, so a read index no lower than it sees
    /// whatever a read through a follower could have seen (see `sessions::leader_read_index`).
    pub fn with_commit_sent(self, sent: Arc<AtomicU64>) -> Self {
        HttpNetwork {
            commit_sent: Some(sent),
            ..self
        }
    }

    /// Appends and votes over `stream` (snapshots stay HTTP requests).
    pub fn with_stream(self, stream: Arc<StreamClient>) -> Self {
        HttpNetwork {
            stream: Some(stream),
            ..self
        }
    }
}

pub struct HttpConn<C> {
    client: reqwest::Client,
    keys: crate::key::Keys,
    stream: Option<Arc<StreamClient>>,
    commit_sent: Option<Arc<AtomicU64>>,
    target: NodeId,
    addr: String,
    _group: PhantomData<C>,
}

impl<C: Group> RaftNetworkFactory<C> for HttpNetwork<C> {
    type Network = HttpConn<C>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpConn<C> {
        HttpConn {
            client: self.client.clone(),
            keys: self.keys.clone(),
            stream: self.stream.clone(),
            commit_sent: self.commit_sent.clone(),
            target,
            addr: node.addr.clone(),
            _group: PhantomData,
        }
    }
}

/// The path of RPC `rpc` of group `group` on a peer: `/raft/{group}/{rpc}`.
pub fn rpc_path(group: GroupId, rpc: &str) -> String {
    format!("/raft/{group}/{rpc}")
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// An append request cut to its longest prefix of entries (at least one) that fits in `budget`
/// bytes, and the last log id of that prefix when it was cut (None: the whole request fits).
fn fit_append<C: Group>(mut req: AppendEntriesRequest<C>, budget: usize) -> (AppendEntriesRequest<C>, Option<LogId>) {
    let sizes: Vec<usize> = req
        .entries
        .iter()
        .map(|e| postcard::to_allocvec(e).map_or(usize::MAX, |b| b.len()))
        .collect();
    if sizes.iter().fold(0usize, |a, b| a.saturating_add(*b)) <= budget {
        return (req, None);
    }
    let mut total = 0usize;
    let n = sizes
        .iter()
        .take_while(|s| {
            total = total.saturating_add(**s);
            total <= budget
        })
        .count()
        .max(1);
    req.entries.truncate(n);
    let last = req.entries.last().map(|e| *e.get_log_id());
    (req, last)
}

/// A call to a peer that failed before it answered, naming the peer. openraft logs these (four
/// lines a second per unreachable peer); the log's rate limit groups them by the `target=ID`
/// they carry (`crate::logging::peer_of`).
#[derive(Debug, thiserror::Error)]
#[error("target={target} ({addr}): {detail}")]
pub struct PeerCallError {
    pub target: NodeId,
    pub addr: String,
    /// The error and its sources, joined.
    pub detail: String,
}

impl PeerCallError {
    fn new(target: NodeId, addr: &str, e: &dyn std::error::Error) -> Self {
        let mut detail = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            detail.push_str(&format!(": {s}"));
            source = s.source();
        }
        PeerCallError {
            target,
            addr: addr.to_string(),
            detail,
        }
    }
}

impl<C: Group> HttpConn<C> {
    async fn call<Req, Resp, E>(&self, rpc: &str, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let kind = match rpc {
            "append" => Some(Kind::Append),
            "vote" => Some(Kind::Vote),
            _ => None,
        };
        if let (Some(stream), Some(kind)) = (&self.stream, kind) {
            match stream.call(&self.addr, kind, &body, option.hard_ttl()).await {
                Ok(bytes) => return self.answer(&bytes),
                Err(StreamError::Fallback(_)) => {}
                Err(e) => {
                    let failed = PeerCallError::new(self.target, &self.addr, &e);
                    return Err(match e {
                        // Never sent, or unanswered in time: back off, as for HTTP.
                        StreamError::NotDelivered(_) | StreamError::Timeout(_) => {
                            RPCError::Unreachable(Unreachable::new(&failed))
                        }
                        _ => RPCError::Network(NetworkError::new(&failed)),
                    });
                }
            }
        }
        let resp = self
            .client
            .post(crate::transport::url(&self.addr, &rpc_path(C::ID, rpc)))
            .bearer_auth(self.keys.token())
            .timeout(option.hard_ttl())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let failed = PeerCallError::new(self.target, &self.addr, &e);
                if e.is_connect() || e.is_timeout() {
                    RPCError::Unreachable(Unreachable::new(&failed))
                } else {
                    RPCError::Network(NetworkError::new(&failed))
                }
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !status.is_success() {
            let msg = String::from_utf8_lossy(&bytes).to_string();
            return Err(RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
                "peer answered {status}: {msg}"
            )))));
        }
        self.answer(&bytes)
    }

    /// A peer's answer (postcard `Result<Resp, RaftError>`).
    // openraft's RPCError is the error type its network trait requires.
    #[allow(clippy::result_large_err)]
    fn answer<Resp, E>(&self, bytes: &[u8]) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let res: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<C: Group> RaftNetwork<C> for HttpConn<C> {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // Most requests fit; a long batch of large entries goes as a prefix, and openraft
        // sends the rest next (a partial success names the last entry the follower took).
        if let (Some(sent), Some(c)) = (&self.commit_sent, &req.leader_commit) {
            sent.fetch_max(c.index + 1, Ordering::SeqCst);
        }
        let (req, cut) = fit_append(req, super::APPEND_BUDGET);
        match (self.call("append", &req, &option).await?, cut) {
            (AppendEntriesResponse::Success, Some(last)) => Ok(AppendEntriesResponse::PartialSuccess(Some(last))),
            (other, _) => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("snapshot", &req, &option).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call("vote", &req, &option).await
    }

    /// How long replication to an unreachable peer waits before it tries again: openraft's
    /// default is 500 ms, so a node back from a restart got nothing for up to half a second, and
    /// a move planned onto it in that time (a rolling restart's next step) waited for it: a
    /// 170-210 ms planned move instead of 20-60 ms (seen in the lab's rolling restart, 2 runs
    /// in 30). A refused connection costs next to nothing to retry.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(REPLICATION_BACKOFF))
    }
}

/// See `HttpConn::backoff`.
const REPLICATION_BACKOFF: std::time::Duration = std::time::Duration::from_millis(25);

pub(crate) fn decode<T: DeserializeOwned>(rpc: &'static str, body: &[u8]) -> Result<T, RpcError> {
    postcard::from_bytes(body).map_err(|source| RpcError::Malformed { rpc, source })
}

pub(crate) fn encode<T: Serialize>(rpc: &'static str, v: &T) -> Result<Vec<u8>, RpcError> {
    postcard::to_allocvec(v).map_err(|source| RpcError::Encode { rpc, source })
}

/// Serve one incoming RPC of group `C`: decode, hand to the local Raft, encode its answer.
async fn serve_rpc<C: Group>(raft: &openraft::Raft<C>, rpc: &str, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    match rpc {
        "append" => encode("append", &raft.append_entries(decode("append", body)?).await),
        "vote" => encode("vote", &raft.vote(decode("vote", body)?).await),
        "snapshot" => encode("snapshot", &raft.install_snapshot(decode("snapshot", body)?).await),
        other => Err(RpcError::UnknownRpc(other.to_string())),
    }
}

impl<C: Group> GroupRpc for openraft::Raft<C> {
    fn serve<'a>(&'a self, rpc: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, RpcError>> {
        Box::pin(serve_rpc(self, rpc, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, Request, TypeConfig};
    use openraft::{CommittedLeaderId, EntryPayload, Vote};
    use phalanx_core::Command;

    fn append(sizes: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        let entries = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 10),
                payload: EntryPayload::Normal(Request(Command::SetAttr {
                    name: "n1".into(),
                    key: format!("k{i}"),
                    value: Some("x".repeat(*n)),
                })),
            })
            .collect();
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 9)),
            leader_commit: None,
            entries,
        }
    }

    #[test]
    fn the_cluster_groups_rpcs_go_to_raft_cluster() {
        assert_eq!(rpc_path(<TypeConfig as Group>::ID, "vote"), "/raft/cluster/vote");
    }

    #[test]
    fn a_long_append_goes_as_a_prefix_that_fits() {
        let (whole, cut) = fit_append(append(&[10, 10, 10]), 1000);
        assert_eq!((whole.entries.len(), cut), (3, None), "fits: sent whole");
        let (prefix, last) = fit_append(append(&[400, 400, 400, 400]), 1000);
        assert_eq!(prefix.entries.len(), 2);
        assert_eq!(last.map(|l| l.index), Some(11));
        assert_eq!(prefix.prev_log_id.map(|l| l.index), Some(9));
        let (alone, last) = fit_append(append(&[5000, 10]), 1000);
        assert_eq!(
            (alone.entries.len(), last.map(|l| l.index)),
            (1, Some(10)),
            "one large entry goes alone"
        );
    }
}
