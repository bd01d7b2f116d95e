//! Prometheus metrics at `/metrics`: heartbeat counters and drops by reason, per-peer link state
//! and heartbeat age, Raft term, leadership, log and apply positions, and quorum. The registry is
//! built from a snapshot at each scrape: scrapes are rare, and it keeps the hot paths free of
//! metric bookkeeping beyond the mesh's own counters.

use crate::node::Node;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

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

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

pub fn render(node: &Node) -> Result<String, std::fmt::Error> {
    let st = node.status();
    let mut reg = Registry::with_prefix("phalanx");
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
    reg.register("raft_term", "Current Raft term", ConstGauge::new(st.term as i64));
    reg.register(
        "raft_leader",
        "1 if this node is the Raft leader",
        ConstGauge::new(i64::from(st.leader_id == Some(node.id))),
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
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}
