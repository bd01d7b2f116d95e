//! The routes of `phalanx ca rotate` and `phalanx key rotate` (admin role): `GET /v1/trust`
//! (the replicated trust record, by ids, and what this node trusts, holds and presents),
//! `POST /v1/trust` (commit a step: the record read and the whole new one, checked against what this node
//! runs with so that a typo cannot cut it off), `PUT /v1/trust/ca-next` `{cert, key}` (keep a
//! rotation's new CA on a node that holds the CA key) and `PUT /v1/trust/key-next` `{key}`
//! (keep a rotation's new heartbeat key). The node's side of each step is `rotation`'s.

use super::{outcome, parse_json, ApiError, Origin};
use crate::node::Node;
use crate::rotation::{self, TrustView};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use phalanx_core::state::Trust;
use phalanx_core::{Command, Outcome};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/trust", get(show).post(commit))
        .route("/v1/trust/ca-next", put(ca_next))
        .route("/v1/trust/key-next", put(key_next))
}

/// One CA of the record, as `GET /v1/trust` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaView {
    pub id: String,
    pub name: String,
    pub not_after_ms: u64,
}

/// Answer of `GET /v1/trust`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustReport {
    /// The replicated record (its CAs as PEM, so that the CLI builds the next step from it).
    pub record: Trust,
    /// Its CAs, read.
    pub cas: Vec<CaView>,
    /// This node's side.
    pub node: TrustView,
}

async fn show(State(node): State<Arc<Node>>) -> Json<TrustReport> {
    let record = node.with_state(|sm| sm.cluster.trust.clone());
    let cas = record
        .cas
        .iter()
        .filter_map(|pem| crate::pki::inspect_pem(pem).ok())
        .map(|i| CaView {
            id: i.key_id.unwrap_or_default(),
            name: i.name,
            not_after_ms: i
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        })
        .collect();
    Json(TrustReport {
        record,
        cas,
        node: rotation::view(&node),
    })
}

/// Why this node would be cut off by `t` (None: it would not). Each node checks the same when it
/// takes the record in; here the one asked refuses before anything is committed.
fn cut_off(node: &Node, t: &Trust) -> Option<String> {
    let domain = crate::pki::domain(&node.config().cluster.name);
    for pem in &t.cas {
        match crate::pki::inspect_pem(pem) {
            Ok(i) if i.is_ca && i.permitted_dns.iter().any(|d| d == &domain) => {}
            Ok(i) => return Some(format!("{:?} is not a CA of this cluster (domain {domain})", i.name)),
            Err(e) => return Some(format!("a CA certificate: {e}")),
        }
    }
    let ids = rotation::ids(&t.cas);
    if !t.cas.is_empty() {
        if let Some(mine) = node.tls.presented_issuer() {
            if !ids.contains(&mine) {
                return Some(format!(
                    "{}'s certificate is issued by CA {mine}, which the record drops: rotate in steps (`phalanx ca rotate`)",
                    node.name
                ));
            }
        }
    }
    let (held, _, sending) = node.key.ids();
    if let Some(id) = t.keys.iter().find(|id| !held.contains(id)) {
        return Some(format!(
            "{} does not hold heartbeat key {id}: push it first (`phalanx key rotate` does)",
            node.name
        ));
    }
    if !t.keys.is_empty() && !t.keys.contains(&sending) {
        return Some(format!(
            "{} signs with heartbeat key {sending}, which the record drops: rotate in steps (`phalanx key rotate`)",
            node.name
        ));
    }
    None
}

/// Body of `POST /v1/trust`: the record as the caller read it, and what it is to be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustStep {
    pub expected: Trust,
    pub trust: Trust,
}

async fn commit(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    body: Bytes,
) -> Result<Json<Outcome>, ApiError> {
    let TrustStep { expected, trust } = parse_json(&body)?;
    if let Some(why) = trust.invalid() {
        return Err(ApiError::BadInput(why));
    }
    if let Some(why) = cut_off(&node, &trust) {
        return Err(ApiError::Refused(why));
    }
    outcome(origin.write(&node, Command::SetTrust { expected, trust }).await?)
}

/// Body of `PUT /v1/trust/ca-next`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextCa {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for NextCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NextCa { cert, key: *** }")
    }
}

async fn ca_next(State(node): State<Arc<Node>>, body: Bytes) -> Result<Json<TrustView>, ApiError> {
    let req: NextCa = parse_json(&body)?;
    let paths = node
        .pki
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this node keeps no CA files".into()))?;
    let domain = crate::pki::domain(&node.config().cluster.name);
    match crate::pki::inspect_pem(&req.cert) {
        Ok(i) if i.permitted_dns.iter().any(|d| d == &domain) => {}
        Ok(_) => {
            return Err(ApiError::BadInput(format!(
                "not a CA of this cluster (domain {domain})"
            )))
        }
        Err(e) => return Err(ApiError::BadInput(e)),
    }
    rotation::keep_next_ca(&paths, &req.cert, &req.key).map_err(ApiError::BadInput)?;
    tracing::info!(ca = ?crate::pki::ca_id(&req.cert), "keeping the next CA of a rotation");
    Ok(Json(rotation::view(&node)))
}

/// Body of `PUT /v1/trust/key-next`: the key in hex.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextKey {
    pub key: String,
}

impl std::fmt::Debug for NextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NextKey { key: *** }")
    }
}

async fn key_next(State(node): State<Arc<Node>>, body: Bytes) -> Result<Json<TrustView>, ApiError> {
    let req: NextKey = parse_json(&body)?;
    let key = crate::key::ClusterKey::from_hex(&req.key)
        .ok_or_else(|| ApiError::BadInput("key: 64 or more hex characters".into()))?;
    let id = key.id();
    rotation::keep_next_key(&node, key).map_err(|e| {
        tracing::error!(error = %e, "keeping the next heartbeat key");
        ApiError::Internal("the next key could not be written (see the node's log)")
    })?;
    tracing::info!(key = %id, "keeping the next heartbeat key of a rotation");
    Ok(Json(rotation::view(&node)))
}
