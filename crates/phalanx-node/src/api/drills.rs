//! The drill routes (`phalanx drill`): `POST /v1/drills/{id}` begins drill `id` (refused, 409,
//! while another drill is active: one drill at a time in a cluster), `POST
//! /v1/drills/{id}/steps` records one run's figures or the drill's end, and `GET /v1/drills`
//! lists the active drill and the runs in the history (the dashboard's). Each step is a
//! `Command::Drill`, so it lands in the event history, where `phalanx availability` counts a
//! drill's outages as planned and `/metrics` exports its RTOs. The API node stamps the time;
//! names are checked against the config and the members before anything is written. And the
//! fault of `kill-service`: `POST /v1/resources/{rsc}/kill-service`, sent to the node running
//! the resource, SIGKILLs its process (see `crate::agents::kill_service`).

use super::{outcome, parse_json, ApiError, Origin};
use crate::node::Node;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use phalanx_core::drill::{DrillNote, DrillStep, SCENARIOS};
use phalanx_core::events::EventKind;
use phalanx_core::{Command, Outcome};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The longest a drill may hold the cluster's one drill slot, and the longest reason kept.
const MAX_BOUND_MS: u64 = 24 * 3600 * 1000;
const MAX_TEXT: usize = 300;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/drills", get(list))
        .route("/v1/drills/{id}", post(begin))
        .route("/v1/drills/{id}/steps", post(step))
        .route("/v1/fence-fail", post(fence_fail))
}

/// Body of `POST /v1/drills/{id}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Begin {
    pub scenario: String,
    pub resource: String,
    /// The node the drill acts on.
    pub node: String,
    /// How long the drill may hold the slot if it never ends (its CLI died), in ms.
    pub bound_ms: u64,
}

/// Body of `POST /v1/drills/{id}/steps`: a `Run` or an `End`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub scenario: String,
    pub resource: String,
    pub step: DrillStep,
}

fn check_names(node: &Node, scenario: &str, resource: &str) -> Result<(), ApiError> {
    if !SCENARIOS.contains(&scenario) {
        return Err(ApiError::BadInput(format!(
            "unknown scenario {scenario:?}: one of {}",
            SCENARIOS.join(", ")
        )));
    }
    if !node.config().resources.contains(resource) {
        return Err(ApiError::NotFound(format!(
            "no resource {resource:?} in the cluster's config"
        )));
    }
    Ok(())
}

async fn begin(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path(id): Path<u64>,
    body: Bytes,
) -> Result<Json<Outcome>, ApiError> {
    let req: Begin = parse_json(&body)?;
    check_names(&node, &req.scenario, &req.resource)?;
    if !node.with_state(|sm| sm.cluster.nodes.contains_key(&req.node)) {
        return Err(ApiError::NotFound(format!("no node named {:?}", req.node)));
    }
    if req.bound_ms == 0 || req.bound_ms > MAX_BOUND_MS {
        return Err(ApiError::BadInput(format!("bound_ms must be 1..={MAX_BOUND_MS}")));
    }
    let at_ms = crate::mesh::unix_ms();
    let note = DrillNote {
        id,
        at_ms,
        scenario: req.scenario,
        resource: req.resource,
        step: DrillStep::Begin {
            node: req.node,
            expires_ms: at_ms + req.bound_ms,
        },
    };
    outcome(origin.write(&node, Command::Drill(note)).await?)
}

async fn step(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path(id): Path<u64>,
    body: Bytes,
) -> Result<Json<Outcome>, ApiError> {
    let req: Step = parse_json(&body)?;
    check_names(&node, &req.scenario, &req.resource)?;
    let long = |s: &str| s.len() > MAX_TEXT;
    match &req.step {
        DrillStep::Begin { .. } => {
            return Err(ApiError::BadInput(format!("a drill begins with POST /v1/drills/{id}")));
        }
        DrillStep::Run { from, to, .. } if long(from) || long(to) => {
            return Err(ApiError::BadInput(format!("node names are at most {MAX_TEXT} bytes")));
        }
        DrillStep::End { aborted: Some(why) } if long(why) => {
            return Err(ApiError::BadInput(format!("a reason is at most {MAX_TEXT} bytes")));
        }
        _ => {}
    }
    let started = node.with_state(|sm| {
        sm.events
            .newest_first()
            .any(|e| e.kind == EventKind::DrillStarted && phalanx_core::drill::detail(e, "id") == Some(&id.to_string()))
    });
    if !started {
        return Err(ApiError::NotFound(format!("no drill {id} in the history")));
    }
    let note = DrillNote {
        id,
        at_ms: crate::mesh::unix_ms(),
        scenario: req.scenario,
        resource: req.resource,
        step: req.step,
    };
    outcome(origin.write(&node, Command::Drill(note)).await?)
}

/// `GET /v1/drills`: the active drill's begin event (if any) and every drill event in the
/// history, oldest first.
async fn list(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    node.with_state(|sm| {
        let now = crate::mesh::unix_ms();
        let active = phalanx_core::drill::active(sm.events.newest_first(), now).cloned();
        let drills: Vec<_> = sm
            .events
            .since(0)
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::DrillStarted | EventKind::DrillRun | EventKind::DrillEnded
                )
            })
            .cloned()
            .collect();
        Json(serde_json::json!({ "active": active, "events": drills }))
    })
}

/// `POST /v1/resources/{rsc}/kill-service` (`phalanx drill kill-service`): SIGKILL the
/// process of primitive `rsc` on this node, recorded first as an operator command. Refused for
/// a group or clone (name one primitive), for a resource this node does not run (with where it
/// runs), and for an agent whose process cannot be told (no pid file).
pub(super) async fn kill_service(node: &Arc<Node>, origin: &Origin, rsc: &str) -> Result<Response, ApiError> {
    let config = node.config();
    let r = &config.resources;
    if let Some(g) = r.groups.get(rsc) {
        return Err(ApiError::BadInput(format!(
            "{rsc} is a group: kill-service kills one primitive's process (one of {})",
            g.members.join(", ")
        )));
    }
    if let Some(c) = r.clones.get(rsc) {
        return Err(ApiError::BadInput(format!(
            "{rsc} is a clone: kill-service kills one primitive's process (its resource is {})",
            c.resource
        )));
    }
    let Some(p) = r.primitives.get(rsc) else {
        return Err(ApiError::NotFound(format!("no resource named {rsc:?}")));
    };
    let on: Vec<String> = node.with_state(|sm| {
        sm.cluster
            .resources
            .get(rsc)
            .map(|rec| rec.running.keys().cloned().collect())
            .unwrap_or_default()
    });
    if !on.contains(&node.name) {
        let where_ = if on.is_empty() {
            "nowhere".to_string()
        } else {
            on.join(", ")
        };
        return Err(ApiError::Refused(format!(
            "{rsc} does not run on {} (it runs on {where_}): send this to that node's API",
            node.name
        )));
    }
    let Some(runner) = node.runner.as_ref() else {
        return Err(ApiError::Refused(format!("{} runs no agents", node.name)));
    };
    let target = crate::agents::service_process(
        &runner.state_dir,
        rsc,
        &p.agent,
        &phalanx_core::resources::params_on(&p.params, &runner.node),
    )
    .map_err(ApiError::Refused)?;
    origin
        .write(
            node,
            Command::Note(phalanx_core::events::Note {
                kind: EventKind::OperatorCommand,
                node: node.name.clone(),
                summary: format!("drill: SIGKILL {rsc}'s process ({}) on {}", target.0, node.name),
                at_ms: crate::mesh::unix_ms(),
            }),
        )
        .await?;
    crate::agents::kill_service(target).map_err(ApiError::Refused)?;
    tracing::warn!(rsc, pid = target.0, by = %origin.by, "drill: SIGKILL sent to the resource's process");
    Ok(Json(serde_json::json!({ "resource": rsc, "node": node.name, "pid": target.0 })).into_response())
}

/// Body of `POST /v1/fence-fail`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FenceFail {
    /// How many of this node's next fence operations fail (0: heal).
    pub operations: u32,
}

/// `POST /v1/fence-fail` `{operations}` (`phalanx drill fence-fail`): this node's next
/// `operations` fence operations fail as if every device had (0 heals), recorded as an operator
/// command (in the background: it acts at once, also while there is no leader). The drill arms every surviving node after its own power-off and heals them
/// all when its run ends, also when it is aborted.
async fn fence_fail(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: FenceFail = parse_json(&body)?;
    if req.operations > 100 {
        return Err(ApiError::BadInput("operations must be 0..=100".into()));
    }
    // Armed at once (the cluster may be fencing within a heartbeat or two, with no leader to
    // commit to yet); recorded in the background, as a link change is.
    node.fencer.fail_next(req.operations);
    let what = match req.operations {
        0 => format!("drill: {}'s fence devices healed", node.name),
        n => format!("drill: {}'s next {n} fence operation(s) fail", node.name),
    };
    origin.note(&node, what);
    Ok(Json(
        serde_json::json!({ "node": node.name, "operations": req.operations }),
    ))
}
