//! Prometheus metrics at `/metrics` (and, without a token, at a node's `metrics_listen`):
//! heartbeat counters and drops by reason, per-peer link state and heartbeat age, Raft term,
//! leadership, log and apply positions, quorum and votes; and, at the level of ClusterLabs'
//! ha_cluster_exporter, nodes by status and type, resources by role, node and state, fail counts
//! with their expiry and migration thresholds, operator moves and bans with their expiry, fence
//! records, device health and attempts, the config version each node runs, and the event
//! sequence. The registry is built from a status snapshot at each scrape (scrapes are rare, and
//! it keeps the hot paths free of metric bookkeeping beyond the mesh's and fencer's own
//! counters). Every label set the config allows is emitted, with 0 where nothing holds, so that a
//! series never vanishes (a resource stopping sets its role series to 0); the answering node
//! serves them without quorum too, with every placement marked `unknown` then.

use crate::fence::FenceAttempts;
use crate::lb::BalancerStatus;
use crate::node::{Node, StatusReport};
use phalanx_core::config::Config;
use phalanx_core::scheduler::Role;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Peer {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLink {
    peer: String,
    link: String,
}

/// Labels as (name, value) pairs, in the order given.
type Labels = Vec<(&'static str, String)>;

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// A gauge family with every label set in `sets`, each set to its value.
fn family(sets: impl IntoIterator<Item = (Labels, i64)>) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    for (labels, v) in sets {
        f.get_or_create(&labels).set(v);
    }
    f
}

fn secs(ms: Option<u64>) -> i64 {
    ms.map(|m| (m / 1000) as i64).unwrap_or(0)
}

/// Node statuses a `phalanx_nodes` series exists for, per node.
pub const NODE_STATUSES: [&str; 9] = [
    "online",
    "standby",
    "maintenance",
    "offline",
    "unclean",
    "leaving",
    "stopped",
    "unknown",
    "leader",
];

/// States a `phalanx_resource_state` series exists for, per resource.
pub const RESOURCE_STATES: [&str; 4] = ["started", "stopped", "failed", "unknown"];

/// The metrics of `node`, as Prometheus text.
pub fn render(node: &Node) -> Result<String, std::fmt::Error> {
    let lb = node.balancers.statuses(node);
    let mut reg = Registry::with_prefix("phalanx");
    register(&mut reg, &node.status(), &node.config(), &node.fencer.attempts(), &lb);
    if let Some(s) = &node.sessions {
        let st = node.with_state(|sm| s.status(&node.name, |id| node.name_of(sm, id).unwrap_or_default()));
        sessions(&mut reg, &st);
    }
    drills(
        &mut reg,
        &node.with_state(|sm| phalanx_core::drill::rtos(sm.events.since(0))),
    );
    let refused = Family::<Reason, Counter>::default();
    let counts = node.tls_refusals();
    for reason in crate::transport::REFUSAL_REASONS {
        refused
            .get_or_create(&Reason { reason: reason.into() })
            .inc_by(counts.get(reason).copied().unwrap_or(0));
    }
    reg.register(
        "tls_refused",
        "Connections refused at the TLS handshake, by reason",
        refused,
    );
    if let Some(t) = node.tls.not_after() {
        let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
        reg.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate this node presents expires (unix seconds; it renews itself at 2/3 of its life)",
            ConstGauge::new(secs),
        );
    }
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(prometheus_text(&out))
}

/// The metrics of a status report made with `config`, and this node's fence attempts.
pub fn render_report(st: &StatusReport, config: &Config, attempts: &FenceAttempts) -> Result<String, std::fmt::Error> {
    render_with(st, config, attempts, &[])
}

/// [`render_report`] and the balancers running on the node.
fn render_with(
    st: &StatusReport,
    config: &Config,
    attempts: &FenceAttempts,
    lb: &[BalancerStatus],
) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("phalanx");
    register(&mut reg, st, config, attempts, lb);
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(prometheus_text(&out))
}

fn register(reg: &mut Registry, st: &StatusReport, config: &Config, attempts: &FenceAttempts, lb: &[BalancerStatus]) {
    heartbeats(reg, st);
    raft(reg, st);
    nodes(reg, st);
    resources(reg, st, config);
    fencing(reg, st, config, attempts);
    balancers(reg, lb);
}

/// Upper bounds of `phalanx_drill_rto_seconds`'s buckets: a switchover's tens of ms to a slow
/// takeover's minute.
const RTO_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// `phalanx_drill_rto_seconds{scenario}`: the RTO of every drill run in the event history
/// (series exist once a drill ran).
fn drills(reg: &mut Registry, rtos: &[(String, f64)]) {
    if rtos.is_empty() {
        return;
    }
    let family = Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(RTO_BUCKETS));
    for (scenario, s) in rtos {
        family.get_or_create(&vec![("scenario", scenario.clone())]).observe(*s);
    }
    reg.register(
        "drill_rto_seconds",
        "RTO measured by drills (first failed probe to first success), from the event history",
        family,
    );
}

/// The session store on this node (series exist while `[sessions]` is configured):
/// `phalanx_sessions_leader`, `_items`, `_bytes`, `_connections`, `_applied_index`, and the
/// counters `_evictions_total`, `_gets_total`, `_get_hits_total`, `_writes_total`,
/// `_write_errors_total`, `_refused_connections_total`, `_peer_stream_calls_total`,
/// `_peer_http_calls_total`, and the histogram `_log_append_seconds`.
fn sessions(reg: &mut Registry, s: &crate::sessions::SessionsStatus) {
    if !s.enabled {
        return;
    }
    let one = |v: i64| family([(Labels::new(), v)]);
    let gauges: [(&str, &str, i64); 6] = [
        (
            "sessions_leader",
            "1 while this node leads the session store's Raft group",
            i64::from(s.leader.as_deref() == Some(s.node.as_str())),
        ),
        ("sessions_items", "Items in the session store", s.items as i64),
        (
            "sessions_bytes",
            "Bytes the session store holds (keys, values, per-item overhead)",
            s.bytes as i64,
        ),
        (
            "sessions_memory_limit_bytes",
            "The session store's memory_limit",
            s.memory_limit as i64,
        ),
        (
            "sessions_connections",
            "Client connections open to this node's memcached port",
            s.connections as i64,
        ),
        (
            "sessions_applied_index",
            "The last entry of the session store's log this node applied",
            s.applied_index.unwrap_or(0) as i64,
        ),
    ];
    for (name, help, v) in gauges {
        reg.register(name, help, one(v));
    }
    let counters: [(&str, &str, u64); 8] = [
        (
            "sessions_refused_connections",
            "Client connections closed because [sessions] allow does not name their address",
            s.refused_connections,
        ),
        (
            "sessions_evictions",
            "Items evicted to stay under memory_limit (the same on every replica)",
            s.evictions,
        ),
        ("sessions_gets", "Keys asked by gets on this node", s.gets),
        (
            "sessions_get_hits",
            "Keys asked by gets on this node and found",
            s.get_hits,
        ),
        ("sessions_writes", "Write requests received on this node", s.writes),
        (
            "sessions_peer_stream_calls",
            "Calls to peers (Raft appends and votes, forwarded writes, read indexes) answered over their stream",
            s.peer_stream_calls,
        ),
        (
            "sessions_peer_http_calls",
            "Calls to peers made over HTTP because the peer took no stream (an older version)",
            s.peer_http_calls,
        ),
        (
            "sessions_write_errors",
            "Write requests received on this node and answered SERVER_ERROR",
            s.write_errors,
        ),
    ];
    for (name, help, v) in counters {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        reg.register(name, help, c);
    }
    let mut appends = ConstHistograms::new(&crate::raft::filelog::APPEND_BUCKETS);
    appends
        .rows
        .push((Labels::new(), s.log_append.buckets.clone(), s.log_append.sum_us));
    reg.register(
        "sessions_log_append_seconds",
        "Time of each append to the session store's Raft log (write and fdatasync): every write waits for one",
        appends,
    );
}

/// prometheus-client writes OpenMetrics, where a counter's family is named without the
/// `_total` its sample carries; the Prometheus text format we serve (0.0.4, what `promtool
/// check metrics` checks) names HELP and TYPE after the sample. Rename those lines, and drop
/// OpenMetrics' `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn heartbeats(reg: &mut Registry, st: &StatusReport) {
    reg.register("heartbeats_sent", "Heartbeat datagrams sent", counter(st.mesh.sent));
    reg.register(
        "heartbeats_received",
        "Heartbeat datagrams accepted",
        counter(st.mesh.received),
    );
    let dropped = Family::<Reason, Counter>::default();
    for (reason, v) in [
        ("malformed", st.mesh.dropped_malformed),
        ("auth", st.mesh.dropped_auth),
        ("replay", st.mesh.dropped_replay),
        ("unknown_sender", st.mesh.dropped_unknown_sender),
        ("other_cluster", st.mesh.dropped_other_cluster),
        ("link_disabled", st.mesh.dropped_link_disabled),
        ("send_error", st.mesh.send_errors),
    ] {
        dropped.get_or_create(&Reason { reason: reason.into() }).inc_by(v);
    }
    reg.register("heartbeats_dropped", "Heartbeat datagrams dropped, by reason", dropped);
    let alive = Family::<Peer, Gauge>::default();
    let link_up = Family::<PeerLink, Gauge>::default();
    let age = Family::<PeerLink, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for n in st.nodes.iter().filter(|n| !n.is_self) {
        alive
            .get_or_create(&Peer { peer: n.name.clone() })
            .set(i64::from(n.state == "online" || n.state == "standby"));
        for l in &n.links {
            let key = PeerLink {
                peer: n.name.clone(),
                link: l.index.to_string(),
            };
            link_up.get_or_create(&key).set(i64::from(l.up));
            if let Some(ms) = l.last_heartbeat_ms_ago {
                age.get_or_create(&key).set(ms as f64 / 1000.0);
            }
        }
    }
    reg.register(
        "peer_alive",
        "1 if this node sees the peer alive on at least one link",
        alive,
    );
    reg.register("link_up", "1 if the link to the peer carries heartbeats", link_up);
    reg.register(
        "heartbeat_age_seconds",
        "Seconds since the last heartbeat on the link",
        age,
    );
}

fn raft(reg: &mut Registry, st: &StatusReport) {
    reg.register("raft_term", "Current Raft term", ConstGauge::new(st.term as i64));
    reg.register(
        "raft_leader",
        "1 if this node is the Raft leader",
        ConstGauge::new(i64::from(st.leader_id == Some(st.node_id))),
    );
    reg.register(
        "raft_last_log_index",
        "Index of the last Raft log entry",
        ConstGauge::new(st.last_log_index.unwrap_or(0) as i64),
    );
    reg.register(
        "raft_last_applied_index",
        "Index of the last applied Raft log entry",
        ConstGauge::new(st.last_applied_index.unwrap_or(0) as i64),
    );
    reg.register(
        "quorum",
        "1 if this node's partition holds a majority of voters",
        ConstGauge::new(i64::from(st.quorum)),
    );
    reg.register(
        "voters",
        "Number of Raft voters",
        ConstGauge::new(st.voters.len() as i64),
    );
    reg.register(
        "quorum_votes",
        "Votes this node's partition counts (reachable voters, and the witness when it counts)",
        ConstGauge::new(st.votes as i64),
    );
    reg.register(
        "quorum_votes_needed",
        "Votes needed for quorum",
        ConstGauge::new(st.votes_needed as i64),
    );
    reg.register(
        "placement_known",
        "1 if this node has quorum, so its record of what runs where is current",
        ConstGauge::new(i64::from(st.placement_known)),
    );
    reg.register(
        "events_last_seq",
        "Sequence number of the last event in the cluster's event history (0: none yet)",
        ConstGauge::new(st.last_event_seq as i64),
    );
}

fn nodes(reg: &mut Registry, st: &StatusReport) {
    let mut sets = Vec::new();
    let mut versions = Vec::new();
    for n in &st.nodes {
        let kind = if n.voter { "voter" } else { "learner" };
        let unclean = n.liveness == phalanx_core::Liveness::Offline && !n.fence.fenced && st.fencing == "required";
        for status in NODE_STATUSES {
            let on = match status {
                "maintenance" => n.maintenance,
                "unclean" => unclean,
                "leader" => st.leader.as_deref() == Some(n.name.as_str()),
                s => n.state == s,
            };
            sets.push((
                vec![
                    ("node", n.name.clone()),
                    ("type", kind.into()),
                    ("status", status.into()),
                ],
                i64::from(on),
            ));
        }
        versions.push((vec![("node", n.name.clone())], n.config_version.unwrap_or(0) as i64));
    }
    reg.register(
        "nodes",
        "1 if the node has the status (as the answering node sees it), for every member and status",
        family(sets),
    );
    reg.register(
        "nodes_configured",
        "Number of members",
        ConstGauge::new(st.nodes.len() as i64),
    );
    reg.register(
        "maintenance",
        "1 if the whole cluster is in maintenance",
        ConstGauge::new(i64::from(st.maintenance)),
    );
    reg.register(
        "config_version",
        "The committed config version each node runs, as it recorded it (0: not recorded)",
        family(versions),
    );
    reg.register(
        "config_committed_version",
        "The cluster's committed config version (0: none)",
        ConstGauge::new(st.config.as_ref().map(|c| c.version).unwrap_or(0) as i64),
    );
}

fn resources(reg: &mut Registry, st: &StatusReport, config: &Config) {
    let names: Vec<&String> = st.nodes.iter().map(|n| &n.name).collect();
    let (mut roles, mut states, mut fails, mut expiry, mut thresholds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &st.resources {
        let base = r.id.split(':').next().unwrap_or(&r.id);
        let promotable = config
            .resources
            .clone_of(base)
            .or_else(|| {
                config
                    .resources
                    .group_of(base)
                    .and_then(|g| config.resources.clone_of(&g.id))
            })
            .is_some_and(|c| c.promotable);
        let mut kinds = vec!["started", "failed", "unknown"];
        if promotable {
            kinds.push("promoted");
        }
        for n in &names {
            let here = r.running.get(*n);
            for kind in &kinds {
                let on = match (*kind, here) {
                    ("unknown", h) => !st.placement_known && (h.is_some() || r.lost.contains(n)),
                    (_, _) if !st.placement_known => false,
                    ("started", Some(Role::Started)) => true,
                    ("promoted", Some(Role::Promoted)) => true,
                    ("failed", Some(Role::Failed)) => true,
                    _ => false,
                };
                roles.push((
                    vec![
                        ("resource", r.id.clone()),
                        ("node", (*n).clone()),
                        ("role", (*kind).into()),
                        ("agent", r.agent.clone()),
                    ],
                    i64::from(on),
                ));
            }
            let fc = r.fail_counts.iter().find(|f| &f.node == *n);
            let labels = vec![("resource", r.id.clone()), ("node", (*n).clone())];
            fails.push((labels.clone(), fc.map(|f| f.live as i64).unwrap_or(0)));
            expiry.push((labels, secs(fc.and_then(|f| f.expires_ms))));
        }
        for s in RESOURCE_STATES {
            states.push((
                vec![("resource", r.id.clone()), ("state", s.into())],
                i64::from(r.state == s),
            ));
        }
        thresholds.push((
            vec![("resource", r.id.clone())],
            i64::from(r.migration_threshold.unwrap_or(0)),
        ));
    }
    reg.register(
        "resources",
        "1 if the resource runs on the node in the role (unknown: recorded there, but this node has no quorum)",
        family(roles),
    );
    reg.register(
        "resource_state",
        "1 if the resource is in the state (started, stopped, failed, unknown without quorum)",
        family(states),
    );
    reg.register(
        "resources_configured",
        "Number of resource instances the config defines",
        ConstGauge::new(st.resources.len() as i64),
    );
    reg.register(
        "resource_failures",
        "Failures of the resource on the node not expired by its failure_timeout (its fail count)",
        family(fails),
    );
    reg.register(
        "resource_failures_expiry_timestamp_seconds",
        "When the resource's last live failure on the node expires (unix seconds; 0: never or none)",
        family(expiry),
    );
    reg.register(
        "migration_threshold",
        "Failures on a node before the resource is banned there (0: never)",
        family(thresholds),
    );
    // Operator constraints: every id a move or ban may name, on every node, both kinds.
    let r = &config.resources;
    let ids: BTreeSet<&String> = r
        .primitives
        .keys()
        .chain(r.groups.keys())
        .chain(r.clones.keys())
        .collect();
    let (mut active, mut expires) = (Vec::new(), Vec::new());
    for id in ids {
        for n in &names {
            for kind in ["move", "ban"] {
                let c = st
                    .constraints
                    .iter()
                    .find(|c| &c.resource == id && &c.node == *n && c.kind == kind);
                let labels = vec![("resource", id.clone()), ("node", (*n).clone()), ("kind", kind.into())];
                active.push((labels.clone(), i64::from(c.is_some_and(|c| !c.expired))));
                expires.push((labels, secs(c.and_then(|c| c.expires_ms))));
            }
        }
    }
    reg.register(
        "operator_constraint",
        "1 if an operator move or ban of the resource on the node is in force",
        family(active),
    );
    reg.register(
        "operator_constraint_expiry_timestamp_seconds",
        "When the operator move or ban expires (unix seconds; 0: none, or never)",
        family(expires),
    );
}

fn fencing(reg: &mut Registry, st: &StatusReport, config: &Config, attempts: &FenceAttempts) {
    let (mut fenced, mut failures, mut last) = (Vec::new(), Vec::new(), Vec::new());
    for n in &st.nodes {
        let f = &n.fence;
        let labels = vec![("node", n.name.clone())];
        fenced.push((labels.clone(), i64::from(f.fenced)));
        failures.push((labels.clone(), i64::from(f.failures)));
        last.push((labels, secs(f.fenced_at_ms)));
    }
    reg.register(
        "node_fenced",
        "1 if the node was fenced since it was last lost",
        family(fenced),
    );
    reg.register(
        "node_fence_failures",
        "Fence attempts of the node that failed at every level since its last fence or return",
        family(failures),
    );
    reg.register(
        "node_last_fenced_timestamp_seconds",
        "When the node was last fenced (unix seconds; 0: never)",
        family(last),
    );
    // Every (device, level) some node's levels use, both results: counters start at 0.
    let attempt = Family::<Labels, Counter>::default();
    let mut pairs: BTreeSet<(String, u32)> = BTreeSet::new();
    for n in &st.nodes {
        for (i, level) in config.fence.levels_for(&n.name).iter().enumerate() {
            pairs.extend(level.iter().map(|d| (d.name.clone(), i as u32 + 1)));
        }
    }
    pairs.extend(attempts.keys().map(|(d, l, _)| (d.clone(), *l)));
    for (device, level) in pairs {
        for result in ["success", "failure"] {
            let v = attempts.get(&(device.clone(), level, result)).copied().unwrap_or(0);
            attempt
                .get_or_create(&vec![
                    ("device", device.clone()),
                    ("level", level.to_string()),
                    ("result", result.into()),
                ])
                .inc_by(v);
        }
    }
    reg.register(
        "fence_attempts",
        "Fence device calls this node ran since it started, by device, level and result",
        attempt,
    );
    let (mut health, mut checked) = (Vec::new(), Vec::new());
    for d in &st.devices {
        for s in ["ok", "unreachable", "unchecked"] {
            health.push((
                vec![("device", d.name.clone()), ("state", s.into())],
                i64::from(d.state == s),
            ));
        }
        checked.push((vec![("device", d.name.clone())], secs(d.last_checked_ms)));
    }
    reg.register(
        "fence_device",
        "1 if the fence device's last check found it in the state (ok, unreachable, unchecked)",
        family(health),
    );
    reg.register(
        "fence_device_last_check_timestamp_seconds",
        "When this node last checked the device (unix seconds; 0: another node checks it)",
        family(checked),
    );
}

/// Per backend of each balancer running on this node (series exist while it runs here):
/// `phalanx_balancer_backend_up`, `_connections_total`, `_in_flight`, `_errors_total`.
fn balancers(reg: &mut Registry, lb: &[BalancerStatus]) {
    let labels = |b: &BalancerStatus, be: &crate::lb::BackendStatus| -> Labels {
        vec![("balancer", b.id.clone()), ("backend", be.name.clone())]
    };
    let each = || lb.iter().flat_map(|b| b.backends.iter().map(move |be| (b, be)));
    reg.register(
        "balancer_backend_up",
        "1 while the backend takes new connections (state up), else 0",
        family(each().map(|(b, be)| (labels(b, be), i64::from(be.state == "up")))),
    );
    reg.register(
        "balancer_backend_state",
        "1 for the backend's state (up, drain, maint, down: the cluster's verdict and the operator's state), 0 for the others",
        family(each().flat_map(|(b, be)| {
            ["up", "drain", "maint", "down"].into_iter().map(move |s| {
                let mut l = labels(b, be);
                l.push(("state", s.to_string()));
                (l, i64::from(be.state == s))
            })
        })),
    );
    reg.register(
        "balancer_backend_weight",
        "The backend's weight in force (the operator's, else the config's)",
        family(each().map(|(b, be)| (labels(b, be), i64::from(be.weight)))),
    );
    reg.register(
        "balancer_in_flight",
        "Connections open to the backend through the balancer",
        family(each().map(|(b, be)| (labels(b, be), i64::from(be.in_flight)))),
    );
    let total = Family::<Labels, Counter>::default();
    let errors = Family::<Labels, Counter>::default();
    for (b, be) in each() {
        total.get_or_create(&labels(b, be)).inc_by(be.connections_total);
        errors.get_or_create(&labels(b, be)).inc_by(be.errors_total);
    }
    reg.register(
        "balancer_connections",
        "Connections the balancer sent to the backend",
        total,
    );
    reg.register(
        "balancer_errors",
        "Connections to the backend that failed (refused, reset, timed out)",
        errors,
    );
    balancers_http(reg, lb);
}

/// HTTP mode's series: `phalanx_balancer_requests_total` and `_proxy_responses_total{code}` per
/// balancer; per backend `phalanx_balancer_backend_responses_total`, `_backend_5xx_total`,
/// `_backend_req_per_second` and the `phalanx_balancer_backend_response_seconds` histogram
/// (time to the response head).
fn balancers_http(reg: &mut Registry, lb: &[BalancerStatus]) {
    let http = || lb.iter().filter_map(|b| b.http.as_ref().map(|h| (b, h)));
    let requests = Family::<Labels, Counter>::default();
    let answers = Family::<Labels, Counter>::default();
    let responses = Family::<Labels, Counter>::default();
    let fives = Family::<Labels, Counter>::default();
    let mut histograms = ConstHistograms::new(&crate::lb::stats::BUCKETS);
    let mut rates = Vec::new();
    for (b, h) in http() {
        requests
            .get_or_create(&vec![("balancer", b.id.clone())])
            .inc_by(h.requests_total);
        for (code, n) in &h.proxy_answers {
            answers
                .get_or_create(&vec![("balancer", b.id.clone()), ("code", code.to_string())])
                .inc_by(*n);
        }
        for (name, be) in &h.backends {
            let labels: Labels = vec![("balancer", b.id.clone()), ("backend", name.clone())];
            responses.get_or_create(&labels).inc_by(be.responses_total);
            fives.get_or_create(&labels).inc_by(be.responses_5xx_total);
            rates.push((labels.clone(), be.req_per_s as i64));
            histograms
                .rows
                .push((labels, be.latency_buckets.clone(), be.latency_sum_us));
        }
    }
    reg.register(
        "balancer_requests",
        "HTTP requests the balancer answered (from a backend or by itself)",
        requests,
    );
    reg.register(
        "balancer_proxy_responses",
        "Answers the HTTP balancer made itself, by status (400, 408, 431, 502, 503, 504)",
        answers,
    );
    reg.register(
        "balancer_backend_responses",
        "HTTP responses from the backend",
        responses,
    );
    reg.register("balancer_backend_5xx", "HTTP 5xx responses from the backend", fives);
    reg.register(
        "balancer_backend_req_per_second",
        "HTTP responses from the backend in the last whole second",
        family(rates),
    );
    reg.register(
        "balancer_backend_response_seconds",
        "Time from sending a request to the backend to its response head",
        histograms,
    );
}

/// Histograms already counted (per bucket of `bounds`, +Inf last, not cumulative; the sum in
/// microseconds), encoded as a family.
#[derive(Debug)]
struct ConstHistograms {
    bounds: &'static [f64],
    rows: Vec<(Labels, Vec<u64>, u64)>,
}

impl ConstHistograms {
    fn new(bounds: &'static [f64]) -> Self {
        ConstHistograms {
            bounds,
            rows: Vec::new(),
        }
    }
}

impl prometheus_client::metrics::TypedMetric for ConstHistograms {
    const TYPE: prometheus_client::metrics::MetricType = prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for ConstHistograms {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, counts, sum_us) in &self.rows {
            let uppers = self.bounds.iter().copied().chain([f64::MAX]);
            // Nothing counted yet (no bucket at all): every bucket at 0.
            let buckets: Vec<(f64, u64)> = uppers.zip(counts.iter().copied().chain(std::iter::repeat(0))).collect();
            let count = buckets.iter().map(|(_, n)| n).sum();
            encoder
                .encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    *sum_us as f64 / 1e6,
                    count,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_after_their_samples_in_the_prometheus_text_format() {
        let mut reg = Registry::with_prefix("phalanx");
        reg.register("heartbeats_sent", "Heartbeat datagrams sent", counter(3));
        reg.register("quorum", "Quorum", ConstGauge::new(1));
        let mut om = String::new();
        encode(&mut om, &reg).unwrap();
        assert!(om.contains("# TYPE phalanx_heartbeats_sent counter") && om.ends_with("# EOF\n"));
        assert_eq!(
            prometheus_text(&om),
            "# HELP phalanx_heartbeats_sent_total Heartbeat datagrams sent.\n\
             # TYPE phalanx_heartbeats_sent_total counter\n\
             phalanx_heartbeats_sent_total 3\n\
             # HELP phalanx_quorum Quorum.\n\
             # TYPE phalanx_quorum gauge\n\
             phalanx_quorum 1\n"
        );
    }
}
