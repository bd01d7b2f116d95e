//! `phalanx balancer status [ID]`: the load balancers and their backends. The cluster state
//! says where each balancer runs (a resource with the agent `balancer`); the node running it
//! is asked (`GET /v1/balancers`), since its backend table (connections, what its live
//! traffic saw) lives there; health verdicts and operator states are cluster state.
//! `phalanx balancer drain|ready|maint|weight BACKEND`: the operator's state or weight of a
//! backend, committed through the API (`POST /v1/balancers/{id}/backends/{backend}`), then with
//! `--wait` watched on the node running the balancer until it holds no connection to it.

use crate::client::Client;
use anyhow::{bail, Context, Result};
use phalanx_core::lb::AdminState;
use phalanx_core::scheduler::Role;
use phalanx_node::api::operator::{BackendAdminReq, WeightReq};
use phalanx_node::lb::BalancerStatus;
use phalanx_node::StatusReport;
use std::time::{Duration, Instant};

/// A balancer of the state and, when it runs, its status from the node running it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    pub id: String,
    /// The node running it (None: it runs nowhere now).
    pub node: Option<String>,
    pub status: Option<BalancerStatus>,
    /// Why the status is missing although it runs (the node did not answer).
    pub error: Option<String>,
}

/// The balancers in `st` (only `only`, if given), each asked of the node running it.
pub async fn status(client: &Client, st: &StatusReport, only: Option<&str>) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    for r in st.resources.iter().filter(|r| r.agent == "balancer") {
        if only.is_some_and(|o| o != r.id) {
            continue;
        }
        let node = r
            .running
            .iter()
            .find(|(_, role)| **role != Role::Failed)
            .map(|(n, _)| n.clone());
        let mut found = Found {
            id: r.id.clone(),
            node: node.clone(),
            status: None,
            error: None,
        };
        if let Some(n) = &node {
            match st.nodes.iter().find(|x| &x.name == n) {
                None => found.error = Some(format!("{n} is not a member")),
                Some(ns) => match client.get::<Vec<BalancerStatus>>(&ns.api, "/v1/balancers").await {
                    Ok(list) => {
                        found.status = list.into_iter().find(|b| b.id == r.id);
                        if found.status.is_none() {
                            found.error = Some(format!("{n} does not run it (yet)"));
                        }
                    }
                    Err(e) => found.error = Some(format!("{n} did not answer: {e:#}")),
                },
            }
        }
        out.push(found);
    }
    if let (Some(o), true) = (only, out.is_empty()) {
        bail!("no balancer {o} in the cluster's config");
    }
    Ok(out)
}

/// HTTP mode's counters: the requests and the proxy's own answers, then per backend.
fn render_http(h: &phalanx_node::lb::stats::HttpStatus) -> String {
    let answers: Vec<String> = h.proxy_answers.iter().map(|(code, n)| format!("{code} x{n}")).collect();
    let answers = if answers.is_empty() {
        "none".to_string()
    } else {
        answers.join(", ")
    };
    let mut s = format!(
        "  http: {} requests; answered by the proxy: {answers}\n",
        h.requests_total
    );
    s.push_str(&format!(
        "  {:<20} {:>7} {:>10} {:>7} {:>13}\n",
        "BACKEND", "REQ/S", "RESPONSES", "5XX", "FAILED TRIES"
    ));
    for (name, be) in &h.backends {
        s.push_str(&format!(
            "  {:<20} {:>7} {:>10} {:>7} {:>13}\n",
            name, be.req_per_s, be.responses_total, be.responses_5xx_total, be.failed_tries_total
        ));
    }
    s
}

/// For a person: one block per balancer, one row per backend.
pub fn render(found: &[Found]) -> String {
    if found.is_empty() {
        return "No balancers configured.\n".into();
    }
    let mut s = String::new();
    for f in found {
        match (&f.node, &f.status) {
            (None, _) => s.push_str(&format!("{}: stopped (runs nowhere)\n", f.id)),
            (Some(n), None) => s.push_str(&format!(
                "{} on {n}: {}\n",
                f.id,
                f.error.as_deref().unwrap_or("no status")
            )),
            (Some(n), Some(b)) => {
                let sticky = match (b.sticky_entries, b.sticky_committed) {
                    (Some(n), Some(c)) => format!(", source affinity ({n} clients, {c} committed)"),
                    (Some(n), None) => format!(", source affinity ({n} clients)"),
                    _ => String::new(),
                };
                s.push_str(&format!(
                    "{} on {n}: {} listening on {}, {}{sticky}\n",
                    b.id,
                    b.mode,
                    b.listen.join(", "),
                    b.algorithm
                ));
                s.push_str(&format!(
                    "  {:<20} {:<22} {:<6} {:<6} {:>6} {:>9} {:>11} {:>7}  {}\n",
                    "BACKEND", "ADDRESS", "STATE", "ADMIN", "WEIGHT", "IN-FLIGHT", "CONNECTIONS", "ERRORS", "CHECK"
                ));
                for be in &b.backends {
                    let weight = format!("{:.2}", f64::from(be.effective_weight) / 16.0);
                    let check = match (&be.last_check, be.last_check_ms_ago, &be.last_check_by) {
                        (Some(c), Some(ago), Some(by)) => format!("{c} (by {by}, {:.0} s ago)", ago as f64 / 1000.0),
                        _ => "not checked yet".into(),
                    };
                    let checker = match &be.checker {
                        Some(n) => format!("; checked by {n}"),
                        None => "; no node online to check it".into(),
                    };
                    s.push_str(&format!(
                        "  {:<20} {:<22} {:<6} {:<6} {:>6} {:>9} {:>11} {:>7}  {check}{checker}\n",
                        be.name,
                        be.address,
                        be.state,
                        be.admin,
                        weight,
                        be.in_flight,
                        be.connections_total,
                        be.errors_total,
                    ));
                    if let Some(d) = &be.disagreement {
                        s.push_str(&format!("    DISAGREES: {d}\n"));
                    }
                    if let Some(by) = &be.admin_by {
                        s.push_str(&format!("    admin state set by {by}\n"));
                    }
                }
                if let Some(h) = &b.http {
                    s.push_str(&render_http(h));
                }
            }
        }
    }
    s
}

/// The balancer `backend` belongs to (`balancer` if given, checked), from the committed config:
/// its static servers and its resource's instance on every member.
pub async fn resolve(
    client: &Client,
    api: &str,
    st: &StatusReport,
    backend: &str,
    balancer: Option<&str>,
) -> Result<String> {
    let view = crate::config_cmd::show(client, api, None).await?;
    let text = view.text.context("the cluster answered without its config text")?;
    let config = phalanx_core::config::parse(&text).map_err(|e| anyhow::anyhow!("the committed config: {e}"))?;
    let members: Vec<String> = st.nodes.iter().map(|n| n.name.clone()).collect();
    let mut all = Vec::new();
    let mut hits = Vec::new();
    for b in &config.balancers {
        if balancer.is_some_and(|want| want != b.id) {
            continue;
        }
        let names = phalanx_node::lb::discovery::possible(b, &config, &members);
        if names.iter().any(|n| n == backend) {
            hits.push(b.id.clone());
        }
        all.extend(names.into_iter().map(|n| format!("{}/{n}", b.id)));
    }
    if let Some(want) = balancer {
        if config.balancer(want).is_none() {
            let ids: Vec<&str> = config.balancers.iter().map(|b| b.id.as_str()).collect();
            bail!(
                "no balancer {want:?} in the cluster's config (balancers: {})",
                or_none(&ids.join(", "))
            );
        }
    }
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => bail!("no backend {backend:?} (backends: {})", or_none(&all.join(", "))),
        _ => bail!(
            "backend {backend:?} is in several balancers ({}): name one with --balancer",
            hits.join(", ")
        ),
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "none"
    } else {
        s
    }
}

/// What to change: `drain`, `ready` or `maint`, or a weight (`config`: the config's again).
pub enum Change {
    Admin(AdminState),
    Weight(WeightReq),
}

/// Commit `change` of `balancer`/`backend`; the cluster's answer.
pub async fn set(
    client: &Client,
    api: &str,
    balancer: &str,
    backend: &str,
    change: Change,
) -> Result<serde_json::Value> {
    let req = match change {
        Change::Admin(a) => BackendAdminReq {
            admin: Some(a),
            weight: None,
        },
        Change::Weight(w) => BackendAdminReq {
            admin: None,
            weight: Some(w),
        },
    };
    client
        .post(api, &format!("/v1/balancers/{balancer}/backends/{backend}"), &req)
        .await
}

/// Wait until the node running `balancer` shows `backend` in `want` (adopted) and, unless it
/// is `ready`, with no connection in flight; how long it took. Shows the count meanwhile.
pub async fn wait(
    client: &Client,
    apis: &[String],
    balancer: &str,
    backend: &str,
    want: AdminState,
    within: Duration,
    json: bool,
) -> Result<Duration> {
    let began = Instant::now();
    let bar = crate::demo::spinner(json);
    let mut last = String::from("no answer yet");
    loop {
        if let Ok((_, st)) = client.first_answering(apis).await {
            let found = status(client, &st, Some(balancer)).await?;
            let be = found
                .first()
                .and_then(|f| f.status.as_ref())
                .and_then(|s| s.backends.iter().find(|b| b.name == backend));
            match (found.first(), be) {
                (Some(f), _) if f.node.is_none() => return Ok(began.elapsed()),
                (_, Some(b)) if b.admin == want.as_str() && (want == AdminState::Ready || b.in_flight == 0) => {
                    bar.finish_and_clear();
                    return Ok(began.elapsed());
                }
                (_, Some(b)) => last = format!("{} connection(s) in flight, state {}", b.in_flight, b.state),
                (Some(f), None) => last = f.error.clone().unwrap_or_else(|| "not in its table".into()),
                (None, _) => {}
            }
            bar.set_message(format!("{balancer}/{backend}: {last}"));
        }
        if began.elapsed() > within {
            bar.finish_and_clear();
            bail!(
                "{balancer}/{backend}: still {last} after {} s (the change is committed; see `phalanx balancer status {balancer}`)",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
