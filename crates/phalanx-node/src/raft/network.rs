//! Raft RPC over HTTP: a pooled client (built by `transport`) posts postcard bodies to
//! `/raft/{append,vote,snapshot}` on the peer's API address, with the cluster's bearer token;
//! `serve_rpc` is the other end, mounted by the peer router (`api::peer`). Unreachable peers map
//! to openraft's `Unreachable` so replication backs off instead of spinning.

use super::{BasicNode, NodeId, Raft, TypeConfig};
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
        self.call("append", &req, &option).await
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
