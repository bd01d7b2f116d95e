//! Raft RPC over HTTP: a pooled client (built by `transport`) posts postcard bodies to
//! `/raft/{append,vote,snapshot}` on the peer's API address, with the cluster's bearer token
//! (snapshots in chunks of `SNAPSHOT_CHUNK`, appends cut to `APPEND_BUDGET`, both far below the
//! peer router's `RAFT_BODY_LIMIT`);
//! `serve_rpc` is the other end, mounted by the peer router (`api::peer`). Unreachable peers map
//! to openraft's `Unreachable` so replication backs off instead of spinning.

use super::{BasicNode, LogId, NodeId, Raft, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};

/// Errors of the server side of an RPC (decoding the request).
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("unknown raft rpc {0:?}")]
    UnknownRpc(String),
    #[error("malformed {rpc} request: {source}")]
    Malformed { rpc: &'static str, source: postcard::Error },
    #[error("encoding the {rpc} answer: {source}")]
    Encode { rpc: &'static str, source: postcard::Error },
}

/// Creates one connection handle per peer; all share one pooled HTTP client.
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    token: String,
}

impl HttpNetwork {
    pub fn new(token: String) -> Result<Self, crate::transport::TransportError> {
        Ok(HttpNetwork {
            client: crate::transport::raft_client()?,
            token,
        })
    }
}

pub struct HttpConn {
    client: reqwest::Client,
    token: String,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpConn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpConn {
        HttpConn {
            client: self.client.clone(),
            token: self.token.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// An append request cut to its longest prefix of entries (at least one) that fits in `budget`
/// bytes, and the last log id of that prefix; None when the whole request fits.
fn fit_append(
    req: &AppendEntriesRequest<TypeConfig>,
    budget: usize,
) -> Option<(AppendEntriesRequest<TypeConfig>, LogId)> {
    let sizes: Vec<usize> = req
        .entries
        .iter()
        .map(|e| postcard::to_allocvec(e).map_or(usize::MAX, |b| b.len()))
        .collect();
    if sizes.iter().fold(0usize, |a, b| a.saturating_add(*b)) <= budget {
        return None;
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
    let entries = req.entries[..n].to_vec();
    let last = entries.last()?.log_id;
    Some((
        AppendEntriesRequest {
            vote: req.vote,
            prev_log_id: req.prev_log_id,
            leader_commit: req.leader_commit,
            entries,
        },
        last,
    ))
}

impl HttpConn {
    async fn call<Req, Resp, E>(&self, rpc: &str, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let resp = self
            .client
            .post(crate::transport::url(&self.addr, &format!("/raft/{rpc}")))
            .bearer_auth(&self.token)
            .timeout(option.hard_ttl())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
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
        let res: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for HttpConn {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // Most requests fit; a long batch of large entries goes as a prefix, and openraft
        // sends the rest next (a partial success names the last entry the follower took).
        let Some((prefix, last)) = fit_append(&req, super::APPEND_BUDGET) else {
            return self.call("append", &req, &option).await;
        };
        match self.call("append", &prefix, &option).await? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(Some(last))),
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
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
}

fn decode<T: DeserializeOwned>(rpc: &'static str, body: &[u8]) -> Result<T, RpcError> {
    postcard::from_bytes(body).map_err(|source| RpcError::Malformed { rpc, source })
}

fn encode<T: Serialize>(rpc: &'static str, v: &T) -> Result<Vec<u8>, RpcError> {
    postcard::to_allocvec(v).map_err(|source| RpcError::Encode { rpc, source })
}

/// Serve one incoming RPC: decode, hand to the local Raft, encode its answer.
pub async fn serve_rpc(raft: &Raft, rpc: &str, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    match rpc {
        "append" => encode("append", &raft.append_entries(decode("append", body)?).await),
        "vote" => encode("vote", &raft.vote(decode("vote", body)?).await),
        "snapshot" => encode("snapshot", &raft.install_snapshot(decode("snapshot", body)?).await),
        other => Err(RpcError::UnknownRpc(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, Request};
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
    fn a_long_append_goes_as_a_prefix_that_fits() {
        assert!(fit_append(&append(&[10, 10, 10]), 1000).is_none(), "fits: sent whole");
        let (prefix, last) = fit_append(&append(&[400, 400, 400, 400]), 1000).unwrap();
        assert_eq!(prefix.entries.len(), 2);
        assert_eq!(last.index, 11);
        assert_eq!(prefix.prev_log_id.map(|l| l.index), Some(9));
        let (alone, last) = fit_append(&append(&[5000, 10]), 1000).unwrap();
        assert_eq!((alone.entries.len(), last.index), (1, 10), "one large entry goes alone");
    }
}
