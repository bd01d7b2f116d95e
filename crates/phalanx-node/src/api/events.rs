//! `GET /v1/events`: the event history with filters (`since`, `since_ms`, `resource`, `node`,
//! `kind`, `limit`) as one JSON page, or with `follow=1` as Server-Sent Events that stream every
//! new matching event in order (`id:` is its sequence number, `data:` its JSON) until the client
//! goes. Every node serves the same history (it is part of the replicated state), so a client
//! whose node died resumes on another from the last `id` it saw, with no gap and no repeat. A
//! reader that fell further behind than the history keeps is told so (`event: gap`).

use super::ApiError;
use crate::events::{read, EventView, Filter};
use crate::node::Node;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use phalanx_core::events::EventKind;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/availability", get(availability))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AvailabilityQuery {
    /// From this unix ms (default: the oldest event the history holds).
    since_ms: Option<u64>,
    /// The objective in percent (default: `[cluster] slo`, else 99.95).
    slo: Option<f64>,
}

/// `GET /v1/availability[?since_ms=&slo=]`: `phalanx_core::availability`'s report over the
/// history this node holds, up to now (the dashboard's; the CLI computes the same from
/// `/v1/events`).
async fn availability(
    State(node): State<Arc<Node>>,
    query: Result<Query<AvailabilityQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use phalanx_core::availability;
    let Query(q) = query.map_err(|e| ApiError::BadInput(e.body_text()))?;
    let config = node.config();
    let now = crate::mesh::unix_ms();
    let events: Vec<phalanx_core::events::Event> = node.with_state(|sm| sm.events.since(0).cloned().collect());
    let from_ms = q
        .since_ms
        .unwrap_or_else(|| events.first().map_or(now, |e| e.time_ms.min(now)));
    let slo = q.slo.or(config.cluster.slo()).unwrap_or(99.95);
    let report = availability::report(
        &events,
        &availability::Options {
            from_ms,
            to_ms: now,
            slo: slo / 100.0,
            resource: None,
            parents: availability::parents(&config),
        },
    )
    .map_err(|e| ApiError::BadInput(e.to_string()))?;
    Ok(Json(report).into_response())
}

async fn events(
    State(node): State<Arc<Node>>,
    query: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(f) = query.map_err(|e| ApiError::BadInput(e.body_text()))?;
    let kinds = f.kinds().map_err(|k| {
        let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        ApiError::BadInput(format!("unknown event kind {k:?} (kinds: {})", all.join(", ")))
    })?;
    if !f.follow {
        return Ok(Json(read(&node, &f, f.since.unwrap_or(0), &kinds)).into_response());
    }
    // Following: from `since`, or from the next event.
    let next = f.since.unwrap_or_else(|| node.with_state(|sm| sm.events.next_seq()));
    let follow = Follow {
        node: node.clone(),
        applied: node.applied(),
        filter: Filter { limit: None, ..f },
        kinds,
        next,
        pending: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(follow, |mut s| async move {
        let ev = s.next_event().await?;
        Some((Ok::<_, Infallible>(ev), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// A follower's position: the next sequence number to look at, and what was read but not sent.
struct Follow {
    node: Arc<Node>,
    applied: tokio::sync::watch::Receiver<u64>,
    filter: Filter,
    kinds: Option<Vec<EventKind>>,
    next: u64,
    pending: VecDeque<SseEvent>,
}

impl Follow {
    /// The next SSE event to send, waiting for the history to grow (None: the node is going).
    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            // Mark as seen before reading: an apply after the read wakes the wait below.
            self.applied.borrow_and_update();
            let page = read(&self.node, &self.filter, self.next, &self.kinds);
            if page.first_seq > self.next && self.next < page.next_seq {
                self.pending.push_back(SseEvent::default().event("gap").data(format!(
                    "events {}..{} were dropped from the history",
                    self.next, page.first_seq
                )));
            }
            if page.next_seq > self.next {
                self.next = page.next_seq;
            }
            self.pending.extend(page.events.iter().map(sse));
            if self.pending.is_empty() && self.applied.changed().await.is_err() {
                return None;
            }
        }
    }
}

fn sse(e: &EventView) -> SseEvent {
    let data = serde_json::to_string(e).unwrap_or_default();
    SseEvent::default().id(e.event.seq.to_string()).data(data)
}
