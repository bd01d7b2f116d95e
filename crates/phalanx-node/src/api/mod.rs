//! The node's HTTP endpoint (axum), as two routers on one port: the operator router
//! (`operator`: `/v1/*` JSON and `/metrics`) and the peer router (`peer`: Raft RPCs under
//! `/raft/{group}/` and writes forwarded between nodes). Each is built by a function taking the node
//! handle, so tests drive it in-process with `tower::ServiceExt::oneshot`; `app` is both, as
//! served. The peer routes need the cluster key's token; the operator routes a token whose role
//! allows the request (`phalanx_core::tokens`: 401 for a missing, unknown, revoked or expired
//! token, 403 with the role needed), or the cluster key's token until an admin token exists.
//! Bodies are parsed by
//! hand so that malformed JSON is a 400 with serde's reason. One `ApiError` maps every failure
//! to a status and a JSON body `{"error": KIND, "reason": TEXT}`: retryable (no leader,
//! forwarding failed, Raft busy) 503 with `Retry-After`, refused 409, forbidden 403, unknown
//! 404 (405 for a known route with the wrong method), bad input 400; the reason is one human
//! line, never a debug dump of internals (faults inside the node are logged, not returned).

pub mod config;
pub mod drills;
pub mod events;
pub mod linkcheck;
pub mod operator;
pub mod peer;
pub mod pg;
pub mod tokens;
pub mod trust;
pub mod ui;

pub use operator::{AddNode, ResourceOp};

use crate::node::{Node, NodeError};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use phalanx_core::Outcome;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Seconds a client is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Every way an API request fails, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// A token that is not (or no longer) accepted, with why.
    #[error("{0}")]
    Denied(String),
    /// The request itself is wrong (malformed JSON, a bad address...): do not repeat it.
    #[error("{0}")]
    BadInput(String),
    /// It names something that does not exist (a node, a resource, a route).
    #[error("{0}")]
    NotFound(String),
    /// The route exists, not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Never allowed on this route (a leader's decision sent to be forwarded).
    #[error("{0}")]
    Forbidden(String),
    /// Refused by the cluster state (the command was valid, the state says no).
    #[error("{0}")]
    Refused(String),
    /// Cannot be done right now (no leader, forwarding failed): retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A fault inside this node; the details are in its log.
    #[error("{0}")]
    Internal(&'static str),
}

impl ApiError {
    /// The `error` field of the body: a stable, machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized | ApiError::Denied(_) => "unauthorized",
            ApiError::BadInput(_) => "bad_input",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Refused(_) => "refused",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::Denied(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadInput(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Refused(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.kind(), "reason": self.to_string() }));
        let mut resp = (self.status(), body).into_response();
        if matches!(self, ApiError::Unavailable(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        use openraft::error::ChangeMembershipError;
        match e {
            NodeError::NoLeader => ApiError::Unavailable(e.to_string()),
            NodeError::NotLeader { .. } => {
                ApiError::Unavailable("the leadership moved while committing: try again".into())
            }
            NodeError::Forward(f) if f.retryable() => ApiError::Unavailable(f.to_string()),
            NodeError::Forward(f) => ApiError::Refused(f.to_string()),
            NodeError::Membership(ChangeMembershipError::InProgress(_)) => {
                ApiError::Unavailable("a membership change is in progress: try again".into())
            }
            NodeError::Membership(m) => ApiError::Refused(m.to_string()),
            NodeError::NotForwardable { .. } => ApiError::Forbidden(e.to_string()),
            NodeError::RaftStopped(_)
            | NodeError::RaftConfig(_)
            | NodeError::Transport(_)
            | NodeError::Store(_)
            | NodeError::Sessions(_) => {
                tracing::error!(error = %e, "an API request failed inside the node");
                ApiError::Unavailable("this node cannot commit right now (its log says why)".into())
            }
        }
    }
}

/// Parse a JSON body; malformed JSON or unknown fields are bad input, with serde's reason.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadInput(format!("malformed JSON body: {e}")))
}

/// An outcome as an answer: refused → 409, an unknown node → 404, else 200 with the outcome.
pub(crate) fn outcome(o: Outcome) -> Result<Json<Outcome>, ApiError> {
    match o {
        Outcome::Rejected(reason) => Err(ApiError::Refused(reason.to_string())),
        Outcome::NoSuchNode(reason) => Err(ApiError::NotFound(reason)),
        o => Ok(Json(o)),
    }
}

/// The header a caller names itself in (the CLI sends `user@host`).
pub const OPERATOR_HEADER: &str = "x-phalanx-operator";

/// Who is calling, as it named itself (see [`OPERATOR_HEADER`]), and from which address: put
/// on every authenticated request, so that each operator command is logged and recorded in the
/// event history with both.
#[derive(Debug, Clone)]
pub struct Origin {
    pub by: String,
    pub from: String,
}

impl Origin {
    /// The caller, and the token it used (None: the cluster key's), which the audit trail
    /// names: `alice@ops1 (token ops-alice)`.
    fn of(req: &Request, token: Option<&str>) -> Origin {
        let by = req
            .headers()
            .get(OPERATOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().filter(|c| !c.is_control()).take(128).collect::<String>())
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "unidentified API client".into());
        let by = match token {
            Some(t) => format!("{by} (token {t})"),
            None => by,
        };
        Origin { by, from: peer_of(req) }
    }

    /// Commit `cmd` as this caller's.
    pub(crate) async fn write(&self, node: &Node, cmd: phalanx_core::Command) -> Result<Outcome, NodeError> {
        node.write_by(cmd, &self.by, &self.from).await
    }

    /// Record an operator command that changes no replicated state (a link taken down here).
    pub(crate) fn note(&self, node: &Arc<Node>, what: String) {
        let note = phalanx_core::events::Note {
            kind: phalanx_core::events::EventKind::OperatorCommand,
            node: node.name.clone(),
            summary: format!("{}: {what}", self.by),
            at_ms: crate::mesh::unix_ms(),
        };
        let (node2, by, from) = (node.clone(), self.by.clone(), self.from.clone());
        node.spawn(async move {
            let _ = node2.write_by(phalanx_core::Command::Note(note), &by, &from).await;
        });
    }
}

/// The caller's address (`local` where there is no socket: in-process tests).
fn peer_of(req: &Request) -> String {
    let ext = req.extensions();
    ext.get::<axum::extract::ConnectInfo<crate::transport::Peer>>()
        .map(|c| c.0.addr.ip().to_string())
        .or_else(|| {
            ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string())
        })
        .unwrap_or_else(|| "local".into())
}

/// The node-to-node routes (Raft RPCs, forwarded writes, the session store's): the cluster
/// key's token only.
fn peer_path(path: &str) -> bool {
    path.starts_with("/raft/")
        || path == crate::forward::FORWARD_PATH
        || path == crate::sessions::WRITE_PATH
        || path == crate::sessions::READ_PATH
        || path == crate::sessions::stream::STREAM_PATH
        || path == peer::CERT_PATH
}

/// SHA-256 of a token's secret, in hex: what the state keeps of it.
pub fn token_hash(secret: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()))
}

/// Who may do what: the peer routes take the cluster key's token only; the operator routes a
/// token of the replicated state whose role allows the request, or the cluster key's token
/// while no admin token exists (an admin, the bootstrap's).
fn authorize(node: &Node, req: &Request) -> Result<Option<String>, ApiError> {
    use phalanx_core::tokens;
    // A break-glass request carries a proof of the cluster key instead (checked by its route).
    if req.uri().path() == self::tokens::BREAK_GLASS_PATH && req.method() == axum::http::Method::POST {
        return Ok(Some("break-glass with the cluster key".into()));
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let path = req.uri().path();
    let key_token = node.key.token_ok(presented);
    if peer_path(path) {
        // Over TLS, a node presents its certificate of this cluster (verified at the
        // handshake); an operator's client presents none and has no business here. (No
        // connection at all: an in-process test.)
        let tls_peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<crate::transport::Peer>>();
        match tls_peer.map(|p| &p.0.cert) {
            Some(None) => {
                return Err(ApiError::Forbidden(
                    "the node-to-node routes need a node certificate of this cluster".into(),
                ))
            }
            // On a connection opened before its node was removed.
            Some(Some(name)) if !node.tls.admits(name) => {
                return Err(ApiError::Forbidden(format!(
                    "the certificate of {name} is revoked: {name} is no member of the cluster"
                )))
            }
            _ => {}
        }
        return if key_token {
            Ok(None)
        } else {
            Err(ApiError::Unauthorized)
        };
    }
    let now = crate::mesh::unix_ms();
    let (who, role) = if key_token {
        if node.with_state(|sm| tokens::key_token_disabled(&sm.cluster.tokens, now)) {
            return Err(ApiError::Denied(tokens::Denied::KeyTokenDisabled.to_string()));
        }
        (None, tokens::Role::Admin)
    } else {
        let hash = token_hash(presented);
        let (name, role) = node
            .with_state(|sm| tokens::authorize(&sm.cluster.tokens, &hash, now).map(|(n, r)| (n.to_string(), r)))
            .map_err(|e| ApiError::Denied(e.to_string()))?;
        (Some(name), role)
    };
    let named = who
        .as_ref()
        .map_or("the cluster key's token".to_string(), |n| format!("token {n}"));
    tokens::allow(req.method().as_str(), path, &named, role).map_err(|e| ApiError::Forbidden(e.to_string()))?;
    Ok(who)
}

async fn auth(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    match authorize(&node, &req) {
        Ok(token) => {
            let origin = Origin::of(&req, token.as_deref());
            req.extensions_mut().insert(origin);
            next.run(req).await
        }
        Err(e) => {
            if matches!(e, ApiError::Forbidden(_)) {
                tracing::warn!(from = %peer_of(&req), path = %req.uri().path(), reason = %e, "API request refused: role");
            } else {
                node.auth_failed(&peer_of(&req), req.uri().path());
            }
            e.into_response()
        }
    }
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::NotFound(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn wrong_method(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not take {}", req.uri().path(), req.method()))
}

/// Routes → a servable router: unknown paths are a JSON 404 and wrong methods a JSON 405,
/// everything behind the token.
pub(crate) fn finish(routes: Router<Arc<Node>>, node: Arc<Node>) -> Router {
    routes
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(node.clone(), auth))
        .with_state(node)
}

/// Everything a node serves on its API port: the operator and the peer routers (each alone:
/// `operator::router`, `peer::router`), and the dashboard's static assets (`ui`, no token).
pub fn app(node: Arc<Node>) -> Router {
    ui::router().merge(finish(
        operator::routes()
            .merge(config::routes())
            .merge(drills::routes())
            .merge(linkcheck::routes())
            .merge(events::routes())
            .merge(tokens::routes())
            .merge(trust::routes())
            .merge(pg::routes())
            .merge(peer::routes()),
        node,
    ))
}

/// The read-only router of a node's `metrics_listen` address: `GET /metrics` and the
/// Patroni-compatible health endpoints (`pg`), without the token (they reveal the cluster's
/// shape, never a secret, and change nothing).
pub fn metrics_app(node: Arc<Node>) -> Router {
    operator::metrics_routes()
        .merge(pg::health_routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(node)
}

/// Serve [`metrics_app`] on `listener` until the process ends.
pub async fn serve_metrics(
    node: Arc<Node>,
    listener: crate::transport::Listener,
) -> Result<(), crate::transport::TransportError> {
    crate::transport::serve(listener, metrics_app(node)).await
}

/// Serve [`app`] on `listener` (from `transport::bind`) until the process ends.
pub async fn serve(
    node: Arc<Node>,
    listener: crate::transport::Listener,
) -> Result<(), crate::transport::TransportError> {
    if crate::transport::plaintext() {
        tracing::error!(
            "{}=1: serving plain HTTP, without TLS — for benchmarks only, never in production",
            crate::transport::NO_TLS_ENV
        );
        return crate::transport::serve(listener, app(node)).await;
    }
    let n = node.clone();
    crate::transport::serve_tls(listener, app(node.clone()), &node.tls, move |r| n.tls_refused(r)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::ForwardError;

    async fn answer(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn node_errors_map_to_status_kind_and_reason() {
        let (status, retry, body) = answer(NodeError::NoLeader.into()).await;
        assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
        assert_eq!(body["error"], "unavailable");
        assert!(body["reason"].as_str().unwrap().starts_with("no leader"), "{body}");

        let (status, retry, body) = answer(NodeError::NotLeader { leader: Some(2) }.into()).await;
        assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
        assert_eq!(body["error"], "unavailable");

        let failed = ForwardError::Failed {
            leader: "10.0.0.1:7480".into(),
            status: 503,
            reason: "no leader".into(),
        };
        let (status, _, _) = answer(NodeError::Forward(failed).into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        let refused = ForwardError::Refused {
            leader: "10.0.0.1:7480".into(),
            status: 403,
            reason: "SetPlan is a leader's decision".into(),
        };
        let (status, retry, body) = answer(NodeError::Forward(refused).into()).await;
        assert_eq!((status, retry), (StatusCode::CONFLICT, None));
        assert_eq!(body["error"], "refused");

        let (status, _, body) = answer(NodeError::NotForwardable { command: "SetPlan" }.into()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "forbidden");

        let stopped: ApiError = NodeError::RaftStopped(openraft::error::Fatal::Panicked).into();
        let (status, _, body) = answer(stopped).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !body["reason"].as_str().unwrap().contains("panicked"),
            "no internals: {body}"
        );
    }

    #[tokio::test]
    async fn outcomes_map_to_200_409_and_404() {
        assert!(outcome(Outcome::Ok).is_ok());
        assert!(outcome(Outcome::Unchanged).is_ok());
        let refused = outcome(Outcome::Rejected(phalanx_core::RejectReason::EmptyAttrKey)).unwrap_err();
        let (status, _, body) = answer(refused).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["reason"], "attribute key is empty");
        let unknown = outcome(Outcome::NoSuchNode("no node named \"zz\"".into())).unwrap_err();
        assert_eq!(answer(unknown).await.0, StatusCode::NOT_FOUND);
    }
}
