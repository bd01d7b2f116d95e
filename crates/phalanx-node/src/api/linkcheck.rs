//! `GET /v1/link-check?seconds=S[&max_loss_pct=P]` (`phalanx link-check`): how reliable this
//! node's heartbeat links to each peer are, measured from the mesh over the next S seconds with
//! no extra traffic (heartbeats carry echoes of each other: see `mesh::wire`): per peer and
//! link the loss, round-trip p50/p99/max, jitter and reorders, a verdict against the loss
//! threshold, and how often the cluster's `heartbeat_interval` × `dead_after` would declare the
//! link (and the peer, every link at once) dead at that loss though nothing failed. The
//! arithmetic is `phalanx_core::linkcheck`'s.

use super::ApiError;
use crate::node::Node;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use phalanx_core::linkcheck::{self, LinkReport, Window, DEFAULT_MAX_LOSS_PCT};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The longest window one request may measure.
pub const MAX_SECONDS: u64 = 600;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new().route("/v1/link-check", get(link_check))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    seconds: Option<u64>,
    max_loss_pct: Option<f64>,
}

/// The answer: this node's view of every peer's links over the window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkCheck {
    pub node: String,
    pub seconds: u64,
    pub heartbeat_interval_ms: u64,
    pub dead_after: u32,
    pub max_loss_pct: f64,
    pub peers: Vec<PeerCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerCheck {
    pub peer: String,
    pub links: Vec<LinkCheckRow>,
    /// Expected false declarations of the peer's death per day (every link at once).
    pub false_death_per_day: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkCheckRow {
    pub link: usize,
    pub address: String,
    #[serde(flatten)]
    pub report: LinkReport,
}

async fn link_check(
    State(node): State<Arc<Node>>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LinkCheck>, ApiError> {
    let Query(p) = query.map_err(|e| ApiError::BadInput(e.body_text()))?;
    let seconds = p.seconds.unwrap_or(10);
    if seconds == 0 || seconds > MAX_SECONDS {
        return Err(ApiError::BadInput(format!("seconds must be 1..={MAX_SECONDS}")));
    }
    let max_loss = p.max_loss_pct.unwrap_or(DEFAULT_MAX_LOSS_PCT);
    if !(0.0..=100.0).contains(&max_loss) {
        return Err(ApiError::BadInput("max_loss_pct must be 0..=100".into()));
    }
    let mesh = node.mesh.clone();
    let t0 = mesh.elapsed();
    let before = mesh.meters(t0);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = mesh.meters(t0);
    let (interval, dead_after) = (node.timings.heartbeat, node.timings.dead_after);
    let addresses = mesh.peers();
    let mut peers: Vec<PeerCheck> = Vec::new();
    for a in after {
        // The window: what changed since `before` (all of it if the peer restarted meanwhile).
        let b = before
            .iter()
            .find(|b| b.peer == a.peer && b.link == a.link && b.incarnation == a.incarnation);
        let w = Window {
            received: a.received - b.map_or(0, |b| b.received),
            expected: a.expected - b.map_or(0, |b| b.expected),
            reorders: a.reorders - b.map_or(0, |b| b.reorders),
            rtts_us: a.rtts_us,
        };
        let row = LinkCheckRow {
            link: a.link,
            address: addresses
                .get(&a.peer)
                .and_then(|p| p.links.get(a.link))
                .map(|l| l.address.clone())
                .unwrap_or_default(),
            report: linkcheck::check(&w, max_loss, interval, dead_after),
        };
        match peers.iter_mut().find(|p| p.peer == a.peer) {
            Some(p) => p.links.push(row),
            None => peers.push(PeerCheck {
                peer: a.peer,
                links: vec![row],
                false_death_per_day: 0.0,
            }),
        }
    }
    for p in &mut peers {
        let losses: Vec<f64> = p.links.iter().map(|l| l.report.loss_pct / 100.0).collect();
        p.false_death_per_day = linkcheck::false_deaths_per_day(&losses, interval, dead_after);
    }
    Ok(Json(LinkCheck {
        node: node.name.clone(),
        seconds,
        heartbeat_interval_ms: interval.as_millis() as u64,
        dead_after,
        max_loss_pct: max_loss,
        peers,
    }))
}
