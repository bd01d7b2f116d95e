//! `phalanx balancer status [ID]`: the load balancers and their backends. The cluster state
//! says where each balancer runs (a resource with the agent `balancer`); the node running it
//! is asked (`GET /v1/balancers`), since its backend table (health, connections) lives there.

use crate::client::Client;
use anyhow::{bail, Result};
use phalanx_core::scheduler::Role;
use phalanx_node::lb::BalancerStatus;
use phalanx_node::StatusReport;

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
                s.push_str(&format!(
                    "{} on {n}: {} listening on {}, {}\n",
                    b.id,
                    b.mode,
                    b.listen.join(", "),
                    b.algorithm
                ));
                s.push_str(&format!(
                    "  {:<20} {:<22} {:<6} {:>6} {:>9} {:>11} {:>7}  {}\n",
                    "BACKEND", "ADDRESS", "STATE", "WEIGHT", "IN-FLIGHT", "CONNECTIONS", "ERRORS", "LAST CHECK"
                ));
                for be in &b.backends {
                    let weight = format!("{:.2}", f64::from(be.effective_weight) / 16.0);
                    let check = match (&be.last_check, be.last_check_ms_ago) {
                        (Some(c), Some(ago)) => format!("{c} ({ago} ms ago)"),
                        _ => "-".into(),
                    };
                    s.push_str(&format!(
                        "  {:<20} {:<22} {:<6} {:>6} {:>9} {:>11} {:>7}  {}\n",
                        be.name,
                        be.address,
                        be.state,
                        weight,
                        be.in_flight,
                        be.connections_total,
                        be.errors_total,
                        check
                    ));
                }
                if let Some(h) = &b.http {
                    s.push_str(&render_http(h));
                }
            }
        }
    }
    s
}
