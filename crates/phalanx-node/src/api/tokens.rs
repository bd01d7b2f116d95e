//! The API's tokens (`phalanx token create|list|revoke`, admin role): `POST /v1/tokens`
//! `{name, role, hash, ttl_ms}` records a token made by the CLI (the CLI draws the secret and
//! sends only its SHA-256, so the secret never crosses the network nor reaches the state);
//! `GET /v1/tokens` lists them (never a hash); `DELETE /v1/tokens/{name}` revokes one. Each is
//! an operator command in the history with who asked. Checking presented tokens is
//! `api::authorize`'s. `POST /v1/tokens/break-glass` `{name, hash, at_ms, proof}` makes an
//! admin token without any token, for whoever proves to hold the cluster key (an HMAC of the
//! three under it, made within a minute of the node's clock): the way back in when every admin
//! token is lost, recorded loudly.

use super::{outcome, parse_json, ApiError, Origin};
use crate::node::Node;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use phalanx_core::tokens::{hash_ok, name_ok, Role, TokenRecord, MAX_NAME};
use phalanx_core::{Command, Outcome};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The longest lifetime a token may be given (10 years).
pub const MAX_TTL_MS: u64 = 10 * 366 * 86_400_000;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/tokens", get(list).post(create))
        .route(BREAK_GLASS_PATH, axum::routing::post(break_glass))
        .route("/v1/tokens/{name}", delete(revoke))
}

/// The route of a break-glass request (it needs no token: see [`BreakGlass`]).
pub const BREAK_GLASS_PATH: &str = "/v1/tokens/break-glass";
/// How far a break-glass request's time may be from the node's (a replay later is refused; one
/// within it makes nothing new: the name exists by then).
pub const BREAK_GLASS_WINDOW_MS: u64 = 60_000;

/// Body of `POST /v1/tokens/break-glass`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    pub name: String,
    /// SHA-256 of the new admin token's secret, lowercase hex.
    pub hash: String,
    /// When it was asked (unix ms, the asker's clock).
    pub at_ms: u64,
    /// `ClusterKey::break_glass_proof(name, hash, at_ms)`.
    pub proof: String,
}

async fn break_glass(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    body: Bytes,
) -> Result<Json<Outcome>, ApiError> {
    let req: BreakGlass = parse_json(&body)?;
    if !name_ok(&req.name) || !hash_ok(&req.hash) {
        return Err(ApiError::BadInput(
            "a valid token name and its secret's SHA-256 (lowercase hex)".into(),
        ));
    }
    let now = crate::mesh::unix_ms();
    if now.abs_diff(req.at_ms) > BREAK_GLASS_WINDOW_MS {
        node.auth_failed(&origin.from, BREAK_GLASS_PATH);
        return Err(ApiError::Denied(format!(
            "break-glass request made at unix ms {} is more than {} s from this node's clock ({now}): make a new one",
            req.at_ms,
            BREAK_GLASS_WINDOW_MS / 1000
        )));
    }
    if !node.key.verify_break_glass(&req.name, &req.hash, req.at_ms, &req.proof) {
        node.auth_failed(&origin.from, BREAK_GLASS_PATH);
        return Err(ApiError::Denied(
            "break-glass proof does not match the cluster key".into(),
        ));
    }
    tracing::warn!(token = %req.name, by = %origin.by, from = %origin.from, "break-glass: an admin token made with the cluster key");
    let token = TokenRecord {
        role: Role::Admin,
        hash: req.hash,
        created_ms: now,
        created_by: origin.by.clone(),
        expires_ms: None,
    };
    outcome(
        origin
            .write(&node, Command::CreateToken { name: req.name, token })
            .await?,
    )
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret, lowercase hex.
    pub hash: String,
    /// None: it never expires.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// One token as `GET /v1/tokens` lists it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TokenView {
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    pub created_by: String,
    pub expires_ms: Option<u64>,
    pub expired: bool,
}

async fn create(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    body: Bytes,
) -> Result<Json<Outcome>, ApiError> {
    let req: NewToken = parse_json(&body)?;
    if !name_ok(&req.name) {
        return Err(ApiError::BadInput(format!(
            "token name {:?}: 1 to {MAX_NAME} letters, digits, '.', '_', '-' or '@'",
            req.name
        )));
    }
    if !hash_ok(&req.hash) {
        return Err(ApiError::BadInput("hash: the secret's SHA-256 in lowercase hex".into()));
    }
    if req.ttl_ms.is_some_and(|t| t == 0 || t > MAX_TTL_MS) {
        return Err(ApiError::BadInput("ttl_ms: from 1 ms to 10 years".into()));
    }
    let now = crate::mesh::unix_ms();
    let token = TokenRecord {
        role: req.role,
        hash: req.hash,
        created_ms: now,
        created_by: origin.by.clone(),
        expires_ms: req.ttl_ms.map(|t| now + t),
    };
    outcome(
        origin
            .write(&node, Command::CreateToken { name: req.name, token })
            .await?,
    )
}

async fn list(State(node): State<Arc<Node>>) -> Json<Vec<TokenView>> {
    let now = crate::mesh::unix_ms();
    Json(node.with_state(|sm| {
        sm.cluster
            .tokens
            .iter()
            .map(|(name, t)| TokenView {
                name: name.clone(),
                role: t.role,
                created_ms: t.created_ms,
                created_by: t.created_by.clone(),
                expires_ms: t.expires_ms,
                expired: t.expired(now),
            })
            .collect()
    }))
}

async fn revoke(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path(name): Path<String>,
) -> Result<Json<Outcome>, ApiError> {
    match origin.write(&node, Command::RevokeToken { name: name.clone() }).await? {
        Outcome::Rejected(phalanx_core::RejectReason::NoToken { .. }) => {
            Err(ApiError::NotFound(format!("no token named {name:?}")))
        }
        o => outcome(o),
    }
}
