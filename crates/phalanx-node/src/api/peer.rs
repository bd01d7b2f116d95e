//! The peer router: what nodes send each other over HTTP. Raft RPCs of each Raft group
//! (`/raft/{group}/{append,vote,snapshot}`, e.g. `/raft/cluster/vote`; postcard bodies up to
//! `raft::RAFT_BODY_LIMIT`; dispatched through the node's `raft::Groups`, see `raft::group` and
//! `raft::network`; an unknown group or RPC is a 404) and writes forwarded by a follower to the
//! leader (`/peer/write`, JSON, see `forward`). A forwarded write is accepted only when a node
//! may forward it (`Command::forwardable`: operator requests, agent results, claims); a
//! leader's decision (bootstrap, liveness, plan) is refused with 403 and a reason, whoever
//! sends it, because only the leader's own controller may write those, on its own view. The
//! session store's peers talk over a stream that opens here (`GET /sessions/stream`, an HTTP
//! upgrade, see `sessions::stream`), its per-request routes kept for peers that do not.

use super::{parse_json, ApiError};
use crate::forward::FORWARD_PATH;
use crate::node::Node;
use crate::raft::network::RpcError;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use phalanx_core::Command;
use std::sync::Arc;

/// The peer router alone (`/raft/{group}/{rpc}` and forwarding), authenticated, for node `node`.
pub fn router(node: Arc<Node>) -> Router {
    super::finish(routes(), node)
}

/// The peer routes, without authentication or state (`api::app` merges them with the others).
pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/raft/{group}/{rpc}",
            post(raft_rpc).layer(DefaultBodyLimit::max(crate::raft::RAFT_BODY_LIMIT)),
        )
        .route(FORWARD_PATH, post(forwarded_write))
        .route(
            crate::sessions::WRITE_PATH,
            post(sessions_write).layer(DefaultBodyLimit::max(crate::raft::RAFT_BODY_LIMIT)),
        )
        .route(crate::sessions::READ_PATH, post(sessions_read))
        .route(crate::sessions::stream::STREAM_PATH, get(sessions_stream))
        .route(CERT_PATH, post(certificate))
}

/// Where a node that holds no CA key asks a peer that does for its renewed certificate.
pub const CERT_PATH: &str = "/peer/certificate";

/// Body of [`CERT_PATH`]: a signing request (`pki::request`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRequest {
    pub csr: String,
}

/// Answer of [`CERT_PATH`]: the certificate (PEM).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CertAnswer {
    pub cert: String,
}

/// A member's renewal, signed here when this node holds the CA key: for the name of the
/// certificate the caller presented (a node renews its own certificate only), at the addresses
/// the cluster has for it (whatever the request asks for).
async fn certificate(State(node): State<Arc<Node>>, req: axum::extract::Request) -> Result<Json<CertAnswer>, ApiError> {
    let name = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::transport::Peer>>()
        .and_then(|p| p.0.cert.clone())
        .ok_or_else(|| ApiError::Forbidden("a renewal needs the node's current certificate".into()))?;
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .map_err(|e| ApiError::BadInput(format!("reading the request: {e}")))?;
    let r: CertRequest = parse_json(&body)?;
    let paths = node
        .pki
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this node has no cluster CA".into()))?;
    // The CA the cluster issues from now (a rotation's new one from its second step).
    let issuer = node.with_state(|sm| sm.cluster.trust.issuer_pem().map(str::to_string));
    let ca = crate::pki::issuer(&paths, issuer.as_deref())
        .ok_or_else(|| ApiError::Unavailable("this node does not hold the issuing CA's key".into()))?;
    let ips = node.cert_ips(&name);
    let cert = crate::pki::issue_for_request(
        &ca,
        &r.csr,
        &name,
        &ips,
        std::time::SystemTime::now(),
        crate::pki::node_lifetime(),
    )
    .map_err(|e| ApiError::BadInput(e.to_string()))?;
    tracing::info!(node = %name, ?ips, "signed a peer's renewed certificate");
    Ok(Json(CertAnswer { cert }))
}

fn sessions_of(node: &Node) -> Result<Arc<crate::sessions::Sessions>, ApiError> {
    node.sessions
        .clone()
        .ok_or_else(|| ApiError::NotFound("this node hosts no session store".into()))
}

/// A follower's batch of session writes (postcard `Vec<Request>`), on the leader: logged and
/// answered (postcard `Result<Answers, SessionsError>`), on the sessions runtime.
async fn sessions_write(State(node): State<Arc<Node>>, body: Bytes) -> Result<Vec<u8>, ApiError> {
    let s = sessions_of(&node)?;
    let rt = s.rt.clone();
    rt.spawn(async move { s.serve_write(&body).await })
        .await
        .map_err(|_| ApiError::Internal("the sessions runtime stopped"))?
        .map_err(rpc_error)
}

/// A peer opens its stream of session-store RPCs (`sessions::stream`): an HTTP upgrade to
/// [`crate::sessions::stream::PROTOCOL`], served on the sessions runtime. The certificate the
/// peer presented is checked again before each of its requests.
async fn sessions_stream(
    State(node): State<Arc<Node>>,
    mut req: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    use crate::sessions::stream::PROTOCOL;
    use axum::http::header::{CONNECTION, UPGRADE};
    let s = sessions_of(&node)?;
    if req.headers().get(UPGRADE).and_then(|v| v.to_str().ok()) != Some(PROTOCOL) {
        return Err(ApiError::BadInput(format!(
            "a sessions stream is an upgrade to {PROTOCOL}"
        )));
    }
    let on_upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::BadInput("this connection cannot be upgraded".into()))?;
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::transport::Peer>>()
        .map(|p| p.0.clone());
    let cert = peer.as_ref().and_then(|p| p.cert.clone());
    let handler = s.stream_handler();
    s.rt.spawn(async move {
        match on_upgrade.await {
            Ok(io) => {
                // The socket moves to the store's runtime, which reads and writes it from now on
                // (`transport::Mover`; a plain-TCP API, TLS off, keeps it where it is).
                if let Some(p) = peer {
                    p.mover.request();
                }
                let admitted = move || cert.as_deref().is_none_or(|name| node.tls.admits(name));
                crate::sessions::stream::serve(hyper_util::rt::TokioIo::new(io), handler, admitted).await
            }
            Err(e) => tracing::debug!(error = %e, "sessions stream: the upgrade failed"),
        }
    });
    axum::response::Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, PROTOCOL)
        .body(axum::body::Body::empty())
        .map_err(|_| ApiError::Internal("building the upgrade's answer failed"))
}

/// A follower's read-index request, on the leader (postcard `Result<ReadPoint, SessionsError>`).
async fn sessions_read(State(node): State<Arc<Node>>) -> Result<Vec<u8>, ApiError> {
    let s = sessions_of(&node)?;
    let rt = s.rt.clone();
    rt.spawn(async move { s.serve_read().await })
        .await
        .map_err(|_| ApiError::Internal("the sessions runtime stopped"))?
        .map_err(rpc_error)
}

async fn raft_rpc(
    State(node): State<Arc<Node>>,
    Path((group, rpc)): Path<(String, String)>,
    body: Bytes,
) -> Result<Vec<u8>, ApiError> {
    node.raft_groups().serve(&group, &rpc, &body).await.map_err(rpc_error)
}

/// How a peer RPC that failed here is answered: 404, 400, or 500 (logged).
fn rpc_error(e: RpcError) -> ApiError {
    match e {
        RpcError::UnknownGroup(_) | RpcError::UnknownRpc(_) => ApiError::NotFound(e.to_string()),
        RpcError::Malformed { .. } => ApiError::BadInput(e.to_string()),
        RpcError::Encode { .. } | RpcError::Stopped(_) => {
            tracing::error!(error = %e, "peer rpc");
            ApiError::Internal("encoding the answer failed")
        }
    }
}

/// A write a follower forwards: committed here (or forwarded on, if leadership moved), and
/// its outcome returned as data (a rejected command is a 200 carrying `Rejected`: the
/// forwarding node maps it for its own caller), with the log index it was committed at in
/// `forward::INDEX_HEADER` (the follower answers its operator once it applied that index).
async fn forwarded_write(State(node): State<Arc<Node>>, body: Bytes) -> Result<axum::response::Response, ApiError> {
    let cmd: Command = parse_json(&body)?;
    if !cmd.forwardable() {
        tracing::warn!(command = cmd.name(), "refused a forwarded leader's decision");
        return Err(ApiError::Forbidden(format!(
            "{} is a leader's decision: only the leader's own controller writes it, it is never forwarded",
            cmd.name()
        )));
    }
    let (outcome, index) = node.write_indexed(cmd).await?;
    let mut answer = Json(outcome).into_response();
    if let Some(i) = index {
        answer.headers_mut().insert(crate::forward::INDEX_HEADER, i.into());
    }
    Ok(answer)
}
