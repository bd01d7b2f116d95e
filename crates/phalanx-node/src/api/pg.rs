//! PostgreSQL as the cluster sees it (issue 18): `GET /v1/pg` (`phalanx pg status`: every
//! `pgsql` resource's primary, synchronous standby, and each node's role, timeline, LSN and
//! lag), and Patroni's health endpoints for this node (`/primary`, `/replica?lag=`,
//! `/read-only`, `/sync`, `/async`, `/health`, `/liveness`, `/readiness`, with Patroni's
//! 200/503 meaning: `phalanx_core::pgsql::health`), served with the other routes and, without
//! a token (read-only, no secret), on `metrics_listen`, where HAProxy's health checks reach
//! them as they reach Patroni's port. Everything comes from the replicated state: what the
//! monitors found, at most one monitor interval old.

use super::ApiError;
use crate::node::Node;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use phalanx_core::pgsql::{self, NodeView};
use phalanx_core::resources::AgentSpec;
use phalanx_core::scheduler::Role;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Patroni's paths (and their aliases).
const HEALTH_PATHS: &[&str] = &[
    "/primary",
    "/master",
    "/leader",
    "/read-write",
    "/replica",
    "/read-only",
    "/sync",
    "/synchronous",
    "/async",
    "/asynchronous",
    "/health",
    "/liveness",
    "/readiness",
];

/// The Patroni-compatible health routes alone (also on the token-free `metrics_listen`), for
/// GET, HEAD and OPTIONS as Patroni answers them: Patroni's HAProxy template checks with
/// `option httpchk OPTIONS /primary`.
pub(crate) fn health_routes() -> Router<Arc<Node>> {
    HEALTH_PATHS
        .iter()
        .fold(Router::new(), |r, p| r.route(p, get(health).options(health)))
}

pub(super) fn routes() -> Router<Arc<Node>> {
    health_routes().route("/v1/pg", get(status))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthQuery {
    /// The most a replica may be behind (`1048576`, `16kB`, `1MB`).
    lag: Option<String>,
    /// Which `pgsql` resource (needed only when there are several).
    resource: Option<String>,
}

/// The `pgsql` resource a request is about: the one named, or the only one.
fn resource_of(node: &Node, named: Option<&str>) -> Result<String, ApiError> {
    let config = node.config();
    let all: Vec<String> = config
        .resources
        .primitives
        .values()
        .filter(|p| p.agent == AgentSpec::Pgsql)
        .map(|p| p.id.clone())
        .collect();
    match named {
        Some(r) if all.iter().any(|a| a == r) => Ok(r.to_string()),
        Some(r) => Err(ApiError::NotFound(format!(
            "no pgsql resource {r:?} (there are: {})",
            all.join(", ")
        ))),
        None => match all.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ApiError::NotFound("no pgsql resource is configured".into())),
            _ => Err(ApiError::BadInput(format!(
                "several pgsql resources ({}): say which with ?resource=",
                all.join(", ")
            ))),
        },
    }
}

/// Every member's view of resource `rsc`.
fn views(node: &Node, rsc: &str) -> (Vec<NodeView>, Option<String>) {
    node.with_state(|sm| {
        let c = &sm.cluster;
        let running = c.resources.get(rsc).map(|r| r.running.clone()).unwrap_or_default();
        let up = |n: &str| c.nodes.get(n).is_some_and(|r| r.liveness.up());
        let attr = |n: &str, k: &str| c.nodes.get(n).and_then(|r| r.attrs.get(k)).cloned();
        let position = |n: &str| attr(n, &pgsql::position_attr(rsc)).and_then(|v| pgsql::parse_position(&v));
        let primary = running
            .iter()
            .find(|(n, r)| **r == Role::Promoted && up(n))
            .map(|(n, _)| n.clone());
        let sync_key = pgsql::sync_attr(rsc);
        let sync = c
            .nodes
            .values()
            .filter_map(|r| r.attrs.get(&sync_key))
            .filter_map(|v| pgsql::parse_sync(v).map(|(tl, n)| (tl, n.to_string())))
            .max()
            .map(|(_, n)| n)
            // Just after a switchover the newest record may still be the old primary's, naming
            // the new primary itself (its own record follows at its next monitor): no standby.
            .filter(|n| !n.is_empty() && Some(n) != primary.as_ref());
        let views = c
            .nodes
            .keys()
            .map(|n| NodeView {
                node: n.clone(),
                role: running.get(n).copied().filter(|_| up(n)),
                position: position(n),
                primary_position: primary.as_deref().and_then(position),
                sync_standby: sync.clone(),
            })
            .collect();
        (views, primary)
    })
}

async fn health(State(node): State<Arc<Node>>, uri: Uri, Query(q): Query<HealthQuery>) -> Result<Response, ApiError> {
    let rsc = resource_of(&node, q.resource.as_deref())?;
    let lag = match q.lag.as_deref() {
        None => None,
        Some(s) => Some(
            pgsql::parse_size(s)
                .ok_or_else(|| ApiError::BadInput(format!("lag {s:?} is not a size (1048576, 16kB, 1MB)")))?,
        ),
    };
    let (views, _) = views(&node, &rsc);
    let me = views
        .into_iter()
        .find(|v| v.node == node.name)
        .unwrap_or_else(|| NodeView {
            node: node.name.clone(),
            ..NodeView::default()
        });
    let Some((code, body)) = pgsql::health(uri.path(), lag, &me) else {
        return Err(ApiError::NotFound(format!("no route {}", uri.path())));
    };
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    Ok((status, Json(body)).into_response())
}

/// One node's line of `GET /v1/pg`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PgNode {
    pub node: String,
    /// primary | replica | failed | stopped
    pub role: String,
    pub timeline: Option<u32>,
    /// The LSN its monitor last published (written, or received), as PostgreSQL writes it.
    pub lsn: Option<String>,
    /// Bytes behind the primary (replicas, same timeline).
    pub lag_bytes: Option<u64>,
    pub sync_standby: bool,
}

/// One `pgsql` resource in `GET /v1/pg`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PgResource {
    pub resource: String,
    /// off | on | strict
    pub sync: String,
    pub primary: Option<String>,
    pub sync_standby: Option<String>,
    pub nodes: Vec<PgNode>,
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

async fn status(State(node): State<Arc<Node>>) -> Json<Vec<PgResource>> {
    let config = node.config();
    let mut out = Vec::new();
    for p in config
        .resources
        .primitives
        .values()
        .filter(|p| p.agent == AgentSpec::Pgsql)
    {
        let sync = node
            .with_state(|sm| sm.cluster.nodes.keys().cloned().collect::<Vec<_>>())
            .iter()
            .find_map(|n| pgsql::Params::parse(&phalanx_core::resources::params_on(&p.params, n)).ok())
            .map_or("off", |x| match x.sync {
                pgsql::Sync::Off => "off",
                pgsql::Sync::On => "on",
                pgsql::Sync::Strict => "strict",
            });
        let (views, primary) = views(&node, &p.id);
        let sync_standby = views.first().and_then(|v| v.sync_standby.clone());
        let nodes = views
            .iter()
            .map(|v| PgNode {
                node: v.node.clone(),
                role: match v.role {
                    Some(Role::Promoted) => "primary",
                    Some(Role::Started) => "replica",
                    Some(Role::Failed) => "failed",
                    None => "stopped",
                }
                .to_string(),
                timeline: v.position.map(|x| x.0),
                lsn: v.position.map(|x| lsn_text(x.1)),
                lag_bytes: (v.role == Some(Role::Started)).then(|| v.lag()).flatten(),
                sync_standby: sync_standby.as_deref() == Some(v.node.as_str()) && v.role == Some(Role::Started),
            })
            .collect();
        out.push(PgResource {
            resource: p.id.clone(),
            sync: sync.to_string(),
            primary,
            sync_standby,
            nodes,
        });
    }
    Json(out)
}
