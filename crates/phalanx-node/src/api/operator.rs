//! The operator router: the cluster's JSON API under `/v1/` (status, members, attributes,
//! links, resource moves/bans/cleanups and the list of moves and bans, maintenance, why) and
//! Prometheus text at `/metrics`. Handlers validate their input and build the state command
//! themselves; there is no route that takes a raw state command (the old `/v1/write` is gone:
//! a follower's forwarding goes to the peer router, and refuses the leader's decisions). What
//! the cluster cannot do is refused before anything is written, with the reason: a move to a
//! node the scheduler would not place the resource on, adding a node no fence device covers,
//! removing a lost node nothing confirmed down. A move or ban records who made it: the caller
//! names itself in the `x-phalanx-operator` header (the CLI sends `user@host`); the API token
//! is the cluster's, so that name is the caller's word, not an authenticated identity.

pub use super::OPERATOR_HEADER;
use super::{outcome, parse_json, ApiError, Origin};
use crate::node::Node;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use phalanx_core::config::DEFAULT_API_PORT;
use phalanx_core::{Command, Outcome};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// The operator router alone (`/v1/*` and `/metrics`), authenticated, for node `node`.
pub fn router(node: Arc<Node>) -> Router {
    super::finish(routes(), node)
}

/// The operator routes, without authentication or state (`api::app` merges them with the others).
pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/state", get(cluster_state))
        .route("/v1/nodes", get(list_nodes).post(add_node))
        .route("/v1/nodes/{name}", delete(remove_node))
        .route("/v1/nodes/{name}/standby", post(set_standby))
        .route("/v1/nodes/{name}/stop", post(stop_node))
        .route("/v1/nodes/{name}/power-off", post(power_off))
        .route("/v1/nodes/{name}/pause", post(pause))
        .route("/v1/nodes/{name}/attrs/{key}", put(set_attr).delete(delete_attr))
        .route("/v1/links/{index}", post(set_link))
        .route("/v1/resources/{rsc}/{op}", post(resource_op))
        .route("/v1/constraints", get(constraints))
        .route("/v1/maintenance", post(maintenance))
        .route("/v1/why/{rsc}", get(why))
        .route("/v1/balancers", get(balancers))
        .route("/v1/sessions", get(sessions))
        .route("/v1/balancers/{id}/backends/{backend}", post(backend_admin))
        .route("/metrics", get(metrics))
}

async fn status(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(node.status())
}

/// The replicated cluster state as this node applied it (what `simulate --live` plans on).
async fn cluster_state(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(node.members())
}

async fn list_nodes(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(node.members().nodes)
}

/// Body of `POST /v1/nodes`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    pub name: String,
    pub links: Vec<String>,
    #[serde(default)]
    pub api: Option<String>,
    /// Add it even though no fence device covers it (`--no-fence-check`).
    #[serde(default)]
    pub no_fence_check: bool,
}

async fn add_node(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: AddNode = parse_json(&body)?;
    if req.name.is_empty() || !req.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ApiError::BadInput(format!(
            "node name {:?} must be A-Z a-z 0-9 - _ .",
            req.name
        )));
    }
    if req.links.is_empty() {
        return Err(ApiError::BadInput("a node needs at least one link".into()));
    }
    let mut links = Vec::new();
    for l in &req.links {
        let a: SocketAddr = l
            .parse()
            .map_err(|_| ApiError::BadInput(format!("link {l:?} is not an IP:PORT address")))?;
        links.push(a);
    }
    let api = match &req.api {
        Some(a) => a
            .parse::<SocketAddr>()
            .map_err(|_| ApiError::BadInput(format!("api {a:?} is not an IP:PORT address")))?,
        None => SocketAddr::new(links[0].ip(), DEFAULT_API_PORT),
    };
    // A node nothing can fence cannot be recovered from safely: with fencing required, what it
    // held would wait for a fence that never comes. (A name already taken is left to the state
    // machine, which says so.)
    let cfg = node.config();
    if cfg.cluster.fencing == phalanx_core::config::Fencing::Required
        && !req.no_fence_check
        && !cfg.fence.can_fence(&req.name)
        && !node.members().nodes.contains_key(&req.name)
    {
        return Err(ApiError::Refused(format!(
            "no fence device covers {name} (fencing = \"required\"): add a [[fence_device]] whose \
             host_map names {name} (or a [[fence_level]] for it) to the config first, or add it \
             with --no-fence-check",
            name = req.name
        )));
    }
    // The state machine assigns the id when the command is applied (node.write forwards it
    // to the leader if need be), so a lagging replica or a leader change cannot make it stale.
    let cmd = Command::AddNode {
        name: req.name.clone(),
        id: None,
        links: links.iter().map(|l| l.to_string()).collect(),
        api: api.to_string(),
    };
    let o = origin.write(&node, cmd).await?;
    Ok((StatusCode::CREATED, outcome(o)?).into_response())
}

/// Query of `DELETE /v1/nodes/{name}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    /// The operator confirms the node is down (powered off): needed to remove a lost node that
    /// was not fenced since.
    #[serde(default)]
    confirm_down: bool,
}

async fn remove_node(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path(name): Path<String>,
    query: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Outcome>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadInput(e.body_text()))?;
    if !q.confirm_down {
        let why = node
            .members()
            .removal_needs_confirmation(&name, crate::mesh::unix_ms(), &node.config().cluster);
        if let Some(why) = why {
            return Err(ApiError::Refused(why));
        }
    }
    outcome(origin.write(&node, Command::RemoveNode { name }).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Standby {
    standby: bool,
}

async fn set_standby(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Outcome>, ApiError> {
    let req: Standby = parse_json(&body)?;
    outcome(
        origin
            .write(
                &node,
                Command::SetStandby {
                    name,
                    standby: req.standby,
                },
            )
            .await?,
    )
}

/// Node `name`'s liveness (None: no such node), the voters that would be up without it, and
/// the quorum they need (what stopping or powering a node off must not go below).
fn without(node: &Node, name: &str) -> (Option<phalanx_core::Liveness>, usize, usize) {
    node.with_state(|sm| {
        let c = &sm.cluster;
        let voters: Vec<u64> = sm.membership.membership().voter_ids().collect();
        let up_after = voters
            .iter()
            .filter(|id| match c.node_by_id(**id) {
                Some((n, r)) => n != name && r.liveness == phalanx_core::Liveness::Online,
                // The witness: a vote while it is there.
                None => **id == crate::raft::WITNESS_ID,
            })
            .count();
        (c.nodes.get(name).map(|r| r.liveness), up_after, voters.len() / 2 + 1)
    })
}

/// `POST /v1/nodes/{name}/power-off` (`phalanx drill kill-node`): power a node off through the
/// cluster's own fence devices, as a real failure would take it (the cluster then detects the
/// loss, fences and recovers as it always does). Refused for the node that receives it (it
/// could not answer), for an unknown or offline node, and when the voters left up would be too
/// few for quorum. The request is recorded as an operator command first.
async fn power_off(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (liveness, up_after, needed) = without(&node, &name);
    let Some(liveness) = liveness else {
        return Err(ApiError::NotFound(format!("no node named {name:?}")));
    };
    if name == node.name {
        return Err(ApiError::BadInput(format!(
            "{name} cannot power itself off and answer: send this to another node's API"
        )));
    }
    if liveness != phalanx_core::Liveness::Online {
        return Err(ApiError::Refused(format!("{name} is not online: nothing to power off")));
    }
    if up_after < needed {
        return Err(ApiError::Refused(format!(
            "powering {name} off would leave {up_after} voter(s) up where quorum needs {needed}: the cluster would stop \
             every resource"
        )));
    }
    if node.config().cluster.fencing == phalanx_core::model::Fencing::Off {
        return Err(ApiError::Refused(
            "fencing is off: there is no fence device to power a node off with".into(),
        ));
    }
    origin
        .write(
            &node,
            Command::Note(phalanx_core::events::Note {
                kind: phalanx_core::events::EventKind::OperatorCommand,
                node: name.clone(),
                summary: format!("drill: power {name} off through the fence devices"),
                at_ms: crate::mesh::unix_ms(),
            }),
        )
        .await?;
    let by = node
        .fencer
        .fence(&name, crate::mesh::unix_ms())
        .await
        .map_err(|e| ApiError::Unavailable(format!("powering {name} off failed: {e}")))?;
    Ok(Json(serde_json::json!({ "node": name, "by": by })))
}

/// Body of `POST /v1/nodes/{name}/pause`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    /// How long the daemon stays stopped unless the cluster fences it first (1..=600).
    pub seconds: u64,
}

/// `POST /v1/nodes/{name}/pause` (`phalanx drill pause-node`): SIGSTOP this node's daemon for
/// `seconds`, as a stalled machine would (a hung disk, a VM paused): its peers declare it lost
/// and fence it, and if it comes back unfenced it must find out it was replaced. Only the node
/// itself can do it (sent to its own API: it answers first, then stops 200 ms later, through a
/// detached `sh` that also resumes it); refused when the voters left up would be too few for
/// quorum. Recorded as an operator command first.
async fn pause(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req: Pause = parse_json(&body)?;
    if req.seconds == 0 || req.seconds > 600 {
        return Err(ApiError::BadInput("seconds must be 1..=600".into()));
    }
    let (liveness, up_after, needed) = without(&node, &name);
    if liveness.is_none() {
        return Err(ApiError::NotFound(format!("no node named {name:?}")));
    }
    if name != node.name {
        return Err(ApiError::BadInput(format!(
            "a pause acts on the node that receives it: send it to {name}'s own API"
        )));
    }
    if up_after < needed {
        return Err(ApiError::Refused(format!(
            "pausing {name} would leave {up_after} voter(s) up where quorum needs {needed}: the cluster would stop \
             every resource"
        )));
    }
    origin
        .write(
            &node,
            Command::Note(phalanx_core::events::Note {
                kind: phalanx_core::events::EventKind::OperatorCommand,
                node: name.clone(),
                summary: format!("drill: pause {name}'s daemon for {} s (SIGSTOP)", req.seconds),
                at_ms: crate::mesh::unix_ms(),
            }),
        )
        .await?;
    let pid = std::process::id();
    let script = format!("sleep 0.2; kill -STOP {pid}; sleep {}; kill -CONT {pid}", req.seconds);
    let mut child = tokio::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| ApiError::Unavailable(format!("starting the pause: {e}")))?;
    // Reaped once it has resumed us (no zombie left behind).
    node.spawn(async move {
        let _ = child.wait().await;
    });
    tracing::warn!(seconds = req.seconds, by = %origin.by, "drill: this daemon stops (SIGSTOP) in 200 ms");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "node": name, "pid": pid, "seconds": req.seconds })),
    ))
}

/// Body of `POST /v1/nodes/{name}/stop`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopNode {
    /// Exit at once, whatever still runs there (only on the node itself: send it to its API).
    #[serde(default)]
    pub now: bool,
    /// Stop it even though the voters left up would be too few for quorum.
    #[serde(default)]
    pub force: bool,
}

/// `phalanx node stop`: the node leaves cleanly (what it runs moves away, then it exits,
/// unfenced). Refused when the voters still up without it would be too few for quorum (the whole
/// cluster would stop its resources), unless `force`.
async fn stop_node(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: StopNode = if body.is_empty() {
        StopNode::default()
    } else {
        parse_json(&body)?
    };
    let (liveness, up_after, needed) = without(&node, &name);
    let Some(liveness) = liveness else {
        return Err(ApiError::NotFound(format!("no node named {name:?}")));
    };
    if !req.force && liveness == phalanx_core::Liveness::Online && up_after < needed {
        return Err(ApiError::Refused(format!(
            "stopping {name} would leave {up_after} voter(s) up where quorum needs {needed}: the cluster would stop \
             every resource (--force to stop it anyway)"
        )));
    }
    if name == node.name {
        node.request_stop(req.now);
    } else if req.now {
        return Err(ApiError::BadInput(format!(
            "--now acts on the node that receives it: send it to {name}'s own API"
        )));
    } else {
        // Refused (not online, say): the reason, as a 409.
        let _ = outcome(
            origin
                .write(
                    &node,
                    Command::SetLeaving {
                        name: name.clone(),
                        leaving: true,
                        lock: node.config().cluster.shutdown == phalanx_core::config::ShutdownMode::Stop,
                    },
                )
                .await?,
        )?;
    }
    tracing::warn!(node = %name, now = req.now, "node stop requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "node": name, "stopping": true, "now": req.now })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttrValue {
    value: String,
}

async fn set_attr(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path((name, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Outcome>, ApiError> {
    let req: AttrValue = parse_json(&body)?;
    outcome(
        origin
            .write(
                &node,
                Command::SetAttr {
                    name,
                    key,
                    value: Some(req.value),
                },
            )
            .await?,
    )
}

async fn delete_attr(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<Outcome>, ApiError> {
    outcome(origin.write(&node, Command::SetAttr { name, key, value: None }).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkAdmin {
    enabled: bool,
}

async fn set_link(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path(index): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: LinkAdmin = parse_json(&body)?;
    let i: usize = index
        .parse()
        .map_err(|_| ApiError::BadInput(format!("link index {index:?} is not a number")))?;
    if !node.mesh.set_link_enabled(i, req.enabled) {
        return Err(ApiError::NotFound(format!("this node has no link {i}")));
    }
    tracing::warn!(link = i, enabled = req.enabled, operator = %origin.by, from = %origin.from, "link administratively changed");
    origin.note(
        &node,
        format!(
            "link {i} of {} {}",
            node.name,
            if req.enabled { "enabled" } else { "disabled" }
        ),
    );
    Ok(Json(serde_json::json!({ "link": i, "enabled": req.enabled })))
}

/// The balancers this node runs, with their backends (the node running a balancer is found
/// from the state: see `phalanx balancer status`).
async fn balancers(State(node): State<Arc<Node>>) -> Json<Vec<crate::lb::BalancerStatus>> {
    Json(node.balancers.statuses(&node))
}

/// This node's view of the session store (404 where it hosts none: the witness in tests).
async fn sessions(State(node): State<Arc<Node>>) -> Result<Json<crate::sessions::SessionsStatus>, ApiError> {
    let s = node
        .sessions
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this node hosts no session store".into()))?;
    Ok(Json(node.with_state(|sm| {
        s.status(&node.name, |id| {
            node.name_of(sm, id).unwrap_or_else(|| format!("node {id}"))
        })
    })))
}

/// A weight in `POST /v1/balancers/{id}/backends/{backend}`: a number, or `"config"` (the
/// config's again).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum WeightReq {
    Set(u16),
    Config(String),
}

/// Body of `POST /v1/balancers/{id}/backends/{backend}`: the operator's state and/or weight.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BackendAdminReq {
    #[serde(default)]
    pub admin: Option<phalanx_core::lb::AdminState>,
    #[serde(default)]
    pub weight: Option<WeightReq>,
}

/// `phalanx balancer drain|ready|maint|weight`: the operator's state or weight of a backend, in
/// the replicated state (it survives leader changes, config applies and restarts). The
/// balancer must be in the committed config and the backend one it may have (a static server,
/// or its resource on a member: it may be drained before it first runs).
async fn backend_admin(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path((id, backend)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Outcome>, ApiError> {
    let req: BackendAdminReq = parse_json(&body)?;
    let weight = match req.weight {
        None => None,
        Some(WeightReq::Set(w)) if w <= phalanx_core::lb::MAX_WEIGHT => Some(Some(w)),
        Some(WeightReq::Set(w)) => {
            return Err(ApiError::BadInput(format!(
                "weight {w} is out of range (0..={})",
                phalanx_core::lb::MAX_WEIGHT
            )))
        }
        Some(WeightReq::Config(s)) if s == "config" => Some(None),
        Some(WeightReq::Config(s)) => {
            return Err(ApiError::BadInput(format!(
                "weight {s:?}: give a number 0..=256, or \"config\""
            )))
        }
    };
    if req.admin.is_none() && weight.is_none() {
        return Err(ApiError::BadInput("nothing to change: give admin and/or weight".into()));
    }
    let config = node.config();
    let Some(b) = config.balancer(&id) else {
        let ids: Vec<&str> = config.balancers.iter().map(|b| b.id.as_str()).collect();
        return Err(ApiError::NotFound(format!(
            "no balancer {id:?} in the cluster's config (balancers: {})",
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            }
        )));
    };
    let members: Vec<String> = node.with_state(|sm| sm.cluster.nodes.keys().cloned().collect());
    let names = crate::lb::discovery::possible(b, &config, &members);
    if !names.contains(&backend) {
        return Err(ApiError::NotFound(format!(
            "balancer {id} has no backend {backend:?} (its backends: {})",
            names.join(", ")
        )));
    }
    let cmd = Command::BackendAdmin {
        balancer: id,
        backend,
        change: phalanx_core::state::BackendAdminChange {
            admin: req.admin,
            weight,
        },
        by: Some(origin.by.clone()),
        at_ms: crate::mesh::unix_ms(),
    };
    outcome(origin.write(&node, cmd).await?)
}

/// `GET /metrics` alone (the token-free `metrics_listen` router, `api::metrics_app`).
pub(crate) fn metrics_routes() -> Router<Arc<Node>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let text = crate::metrics::render(&node).map_err(|_| ApiError::Internal("rendering the metrics failed"))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

/// Body of `POST /v1/resources/{rsc}/{move|ban|clear|cleanup}`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResourceOp {
    /// move: the target node (none: away from where it runs); ban: the node.
    #[serde(default)]
    pub node: Option<String>,
    /// How long a move or ban lasts (ms); none: until cleared.
    #[serde(default)]
    pub lifetime_ms: Option<u64>,
}

/// Every operator move and ban, with who made it, when, and when it expires.
async fn constraints(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(node.members().operator_entries(crate::mesh::unix_ms()))
}

async fn resource_op(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    Path((rsc, op)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if op == "kill-service" {
        return super::drills::kill_service(&node, &origin, &rsc).await;
    }
    let req: ResourceOp = if body.is_empty() {
        ResourceOp::default()
    } else {
        parse_json(&body)?
    };
    let r = &node.config().resources;
    let known = r.contains(&rsc);
    // One instance of a clone with clone_node_max > 1 ("web:1") can be cleaned up on its own.
    let instance = !known && r.primitive_of(&rsc).is_some();
    if !known && !instance {
        return Err(ApiError::NotFound(format!("no resource, group or clone named {rsc:?}")));
    }
    if instance && op != "cleanup" {
        return Err(ApiError::BadInput(format!(
            "{rsc} is one instance of a clone: {op} the clone or its resource instead"
        )));
    }
    let members = node.members();
    if let Some(n) = &req.node {
        if !members.nodes.contains_key(n) {
            return Err(ApiError::NotFound(format!("no node named {n:?}")));
        }
    }
    let now = crate::mesh::unix_ms();
    let expires_ms = req.lifetime_ms.map(|l| now + l);
    // Every id that names the same placement unit: a move through any of them replaces a move
    // through another, and clearing any of them clears them all.
    let unit = r.unit_ids(&rsc);
    let by = origin.by.clone();
    let constraint = |node: String, prefer: bool| Command::OperatorBy {
        constraint: phalanx_core::scheduler::OperatorConstraint {
            rsc: rsc.clone(),
            node,
            prefer,
            expires_ms,
        },
        by: by.clone(),
        at_ms: now,
        unit: unit.clone(),
    };
    let cmd = match op.as_str() {
        "move" => match req.node {
            Some(n) => {
                // Asked of the scheduler, on the state as this node has it: a move it would not
                // honour is refused, with its reasons, instead of being recorded to do nothing.
                let input = members.scheduler_input(now, &node.config().cluster, node.leader_name().as_deref());
                if let Some(why) = phalanx_core::scheduler::move_refusal(&node.config(), &input, &rsc, &n) {
                    return Err(ApiError::Refused(why));
                }
                constraint(n, true)
            }
            None => {
                // Pacemaker's move without a target: ban it from where it runs now.
                let prims = r
                    .groups
                    .get(&rsc)
                    .map(|g| g.members.clone())
                    .unwrap_or_else(|| vec![rsc.clone()]);
                let here = prims
                    .iter()
                    .find_map(|p| members.resources.get(p).and_then(|x| x.running.keys().next().cloned()))
                    .ok_or_else(|| ApiError::Refused(format!("{rsc} runs nowhere: say --to NODE")))?;
                constraint(here, false)
            }
        },
        "ban" => constraint(
            req.node.ok_or_else(|| ApiError::BadInput("ban needs a node".into()))?,
            false,
        ),
        "clear" => {
            // What it clears, as this node saw it just before.
            let cleared: Vec<_> = members
                .operator_entries(now)
                .into_iter()
                .filter(|e| unit.contains(&e.resource))
                .collect();
            let o = outcome(
                origin
                    .write(&node, Command::ClearOperators { rscs: unit.clone() })
                    .await?,
            )?;
            return Ok(Json(serde_json::json!({ "outcome": o.0, "unit": unit, "cleared": cleared })).into_response());
        }
        "cleanup" => {
            // A group or clone: clean every primitive in it.
            let prims: Vec<String> = if let Some(g) = r.groups.get(&rsc) {
                g.members.clone()
            } else if let Some(c) = r.clones.get(&rsc) {
                r.groups
                    .get(&c.resource)
                    .map(|g| g.members.clone())
                    .unwrap_or_else(|| vec![c.resource.clone()])
            } else {
                vec![rsc]
            };
            // A clone with clone_node_max > 1 tracks each instance.
            let prims: Vec<String> = prims
                .into_iter()
                .flat_map(|p| match r.instance_count(&p) {
                    Some(n) => (0..n).map(|i| format!("{p}:{i}")).collect(),
                    None => vec![p],
                })
                .collect();
            for p in &prims {
                let _ = outcome(origin.write(&node, Command::Cleanup { rsc: p.clone() }).await?)?;
            }
            return Ok(Json(Outcome::Ok).into_response());
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "unknown resource operation {other:?} (move, ban, clear, cleanup)"
            )))
        }
    };
    Ok(outcome(origin.write(&node, cmd).await?)?.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Maintenance {
    #[serde(default)]
    node: Option<String>,
    on: bool,
}

async fn maintenance(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    body: Bytes,
) -> Result<Json<Outcome>, ApiError> {
    let req: Maintenance = parse_json(&body)?;
    outcome(
        origin
            .write(
                &node,
                Command::SetMaintenance {
                    node: req.node,
                    on: req.on,
                },
            )
            .await?,
    )
}

/// Why a resource is where it is: the scheduler run on the current replicated state.
async fn why(State(node): State<Arc<Node>>, Path(rsc): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let r = &node.config().resources;
    let unit = if let Some(c) = r.clone_of(&rsc) {
        c.id.clone()
    } else if let Some(g) = r.group_of(&rsc) {
        r.clone_of(&g.id).map(|c| c.id.clone()).unwrap_or_else(|| g.id.clone())
    } else {
        rsc.clone()
    };
    let state = node.members();
    let plan = phalanx_core::scheduler::schedule(
        &node.config(),
        &state.scheduler_input(
            crate::mesh::unix_ms(),
            &node.config().cluster,
            node.leader_name().as_deref(),
        ),
    );
    let explain = plan
        .explain
        .get(&unit)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no resource, group or clone named {rsc:?}")))?;
    let pending: Vec<String> = plan
        .summary
        .iter()
        .filter(|l| l.contains(&format!(" {rsc} ")) || l.contains(&format!(" {unit} ")))
        .cloned()
        .collect();
    let record = state.resources.get(&rsc).cloned();
    Ok(Json(
        serde_json::json!({ "resource": rsc, "unit": unit, "explain": explain, "record": record, "next": pending }),
    ))
}
