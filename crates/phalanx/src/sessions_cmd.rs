//! `phalanx sessions status`: every node's view of the session store (`GET /v1/sessions`),
//! merged: the leader, what the store holds (items, bytes, evictions), how it is used (hit
//! ratio, ops/s, commit latency, summed over the nodes that answered) and each node's lag
//! behind the leader's log. A node that does not answer is listed as such.

use crate::client::Client;
use phalanx_node::sessions::SessionsStatus;
use serde::Serialize;

/// One node's line.
#[derive(Debug, Serialize)]
pub struct NodeLine {
    pub node: String,
    /// None: it did not answer (then `error` says why).
    pub status: Option<SessionsStatus>,
    /// Entries of the leader's log it has not applied yet.
    pub lag: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub enabled: bool,
    pub leader: Option<String>,
    pub items: Option<usize>,
    pub bytes: Option<usize>,
    pub memory_limit: Option<u64>,
    pub evictions: Option<u64>,
    pub hit_ratio: Option<f64>,
    pub ops_per_s: f64,
    pub commit_ms: Option<f64>,
    pub nodes: Vec<NodeLine>,
}

/// Ask every API in `apis` (one per node).
pub async fn status(client: &Client, apis: &[String]) -> Report {
    let mut lines = Vec::new();
    for api in apis {
        match client.get::<SessionsStatus>(api, "/v1/sessions").await {
            Ok(s) => lines.push(NodeLine {
                node: s.node.clone(),
                status: Some(s),
                lag: None,
                error: None,
            }),
            Err(e) => lines.push(NodeLine {
                node: api.clone(),
                status: None,
                lag: None,
                error: Some(format!("{e:#}")),
            }),
        }
    }
    let answered: Vec<SessionsStatus> = lines.iter().filter_map(|l| l.status.clone()).collect();
    // The leader's own view if it answered, else the view of the newest term.
    let leader_view = answered
        .iter()
        .find(|s| s.leader.as_deref() == Some(s.node.as_str()))
        .or_else(|| answered.iter().max_by_key(|s| s.term))
        .cloned();
    let leader_last = leader_view
        .as_ref()
        .filter(|s| s.leader.as_deref() == Some(s.node.as_str()))
        .and_then(|s| s.last_log_index);
    for l in &mut lines {
        if let (Some(s), Some(last)) = (&l.status, leader_last) {
            l.lag = Some(last.saturating_sub(s.applied_index.unwrap_or(0)));
        }
    }
    let (gets, hits): (u64, u64) = answered.iter().fold((0, 0), |(g, h), s| (g + s.gets, h + s.get_hits));
    let commits: Vec<f64> = answered.iter().filter_map(|s| s.commit_ms).collect();
    Report {
        enabled: answered.iter().any(|s| s.enabled),
        leader: leader_view.as_ref().and_then(|s| s.leader.clone()),
        items: leader_view.as_ref().map(|s| s.items),
        bytes: leader_view.as_ref().map(|s| s.bytes),
        memory_limit: leader_view.as_ref().map(|s| s.memory_limit),
        evictions: leader_view.as_ref().map(|s| s.evictions),
        hit_ratio: (gets > 0).then(|| hits as f64 / gets as f64),
        ops_per_s: answered.iter().map(|s| s.ops_per_s).sum(),
        commit_ms: (!commits.is_empty()).then(|| commits.iter().sum::<f64>() / commits.len() as f64),
        nodes: lines,
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The human table.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    if !r.enabled {
        out += "session store: off (no [sessions] in the committed config)\n";
    }
    out += &format!(
        "leader: {}   items: {}   bytes: {} of {}   evictions: {}\nhit ratio: {}   ops/s: {:.0}   commit latency: {}\n\n",
        r.leader.as_deref().unwrap_or("none"),
        opt(r.items),
        opt(r.bytes),
        opt(r.memory_limit),
        opt(r.evictions),
        r.hit_ratio.map_or("-".into(), |h| format!("{:.1} %", h * 100.0)),
        r.ops_per_s,
        r.commit_ms.map_or("-".into(), |c| format!("{c:.2} ms")),
    );
    out += &format!(
        "{:<12} {:<8} {:>10} {:>8} {:>8} {:>10} {:>11}  {}\n",
        "NODE", "ROLE", "APPLIED", "LAG", "CONNS", "OPS/S", "APPEND P99", "LISTEN"
    );
    for l in &r.nodes {
        match &l.status {
            Some(s) => {
                let role = if s.leader.as_deref() == Some(s.node.as_str()) {
                    "leader"
                } else if s.voters.contains(&s.node) {
                    "voter"
                } else {
                    "learner"
                };
                // The bucket the 99th percentile of this node's log appends fell in.
                let append = match s.log_append.append_quantile(0.99) {
                    None => "-".to_string(),
                    Some(le) if le.is_infinite() => "> 1 s".to_string(),
                    Some(le) => format!("≤ {} ms", (le * 1e6).round() / 1e3),
                };
                out += &format!(
                    "{:<12} {:<8} {:>10} {:>8} {:>8} {:>10.0} {:>11}  {}\n",
                    s.node,
                    role,
                    opt(s.applied_index),
                    opt(l.lag),
                    s.connections,
                    s.ops_per_s,
                    append,
                    s.listen.join(", ")
                );
            }
            None => out += &format!("{:<12} no answer: {}\n", l.node, l.error.as_deref().unwrap_or("?")),
        }
    }
    out
}
