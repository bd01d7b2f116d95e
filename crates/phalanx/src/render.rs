//! Human output: a crm_mon-like view of a status report.

use phalanx_node::StatusReport;
use std::fmt::Write;

fn age(ms: Option<u64>) -> String {
    match ms {
        Some(ms) if ms < 10_000 => format!("{ms}ms ago"),
        Some(ms) => format!("{}s ago", ms / 1000),
        None => "never".into(),
    }
}

pub fn status(s: &StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Cluster: {}   heartbeat {}ms × {}   no-quorum-policy: {}",
        s.cluster, s.heartbeat_interval_ms, s.dead_after, s.no_quorum_policy
    );
    let _ = writeln!(
        o,
        "Leader: {}   term {}   Quorum: {} ({} of {} voter(s) reachable, {} needed)",
        s.leader.as_deref().unwrap_or("none"),
        s.term,
        if s.quorum { "yes" } else { "NO" },
        s.votes,
        s.voters.len(),
        s.votes_needed
    );
    let _ = writeln!(
        o,
        "Answered by: {} ({}, log {} applied {}, membership version {})",
        s.node,
        s.raft_state,
        s.last_log_index.map(|i| i.to_string()).unwrap_or("-".into()),
        s.last_applied_index.map(|i| i.to_string()).unwrap_or("-".into()),
        s.config_version
    );
    match &s.config {
        Some(c) => {
            let _ = writeln!(
                o,
                "Config: version {} (applied by {} at {}, sha256 {}){}",
                c.version,
                c.author,
                c.time,
                &c.sha256[..c.sha256.len().min(12)],
                if s.running_config_version == c.version {
                    String::new()
                } else {
                    format!(", {} still runs version {}", s.node, s.running_config_version)
                }
            );
        }
        None => {
            let _ = writeln!(o, "Config: none committed yet ({} runs its local file)", s.node);
        }
    }
    if let Some(v) = s.local_config_differs {
        let _ = writeln!(
            o,
            "NOTE: {}'s local config differs from cluster v{v} (it runs v{v}; `phalanx config apply FILE` changes the cluster's)",
            s.node
        );
    }
    if s.fencing == "off" {
        let _ = writeln!(
            o,
            "WARNING: fencing is off: a lost node's services may be started elsewhere while it still runs them (split-brain)"
        );
    }
    if !s.disabled_links.is_empty() {
        let _ = writeln!(o, "Links disabled on {}: {:?}", s.node, s.disabled_links);
    }
    let _ = writeln!(o, "\nNodes:");
    for n in &s.nodes {
        let role = if n.voter { "voter" } else { "learner" };
        let mark = if n.is_self { "  (this node)" } else { "" };
        let lead = if s.leader.as_deref() == Some(n.name.as_str()) {
            " leader"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "  * {:<10} {:<8} id {} {}{}{}",
            n.name,
            n.state.to_uppercase(),
            n.id,
            role,
            lead,
            mark
        );
        for l in &n.links {
            let _ = writeln!(
                o,
                "      link {} {:<22} {:<4} last heartbeat {}",
                l.index,
                l.address,
                if l.up { "up" } else { "DOWN" },
                age(l.last_heartbeat_ms_ago)
            );
        }
        if n.state == "online" && n.hears_me == Some(false) {
            let _ = writeln!(
                o,
                "      ONE-WAY: its heartbeats arrive but it does not hear {} (not counted for quorum)",
                s.node
            );
        }
        let f = &n.fence;
        if n.liveness == phalanx_core::Liveness::Offline && !f.fenced && s.fencing == "required" {
            let why = match (&f.last_error, f.failures) {
                (Some(e), k) if k > 0 => format!(": {k} attempt(s) failed, last: {e}"),
                _ => String::new(),
            };
            let _ = writeln!(o, "      NOT FENCED yet: what it held stays stopped{why}");
        } else if let (true, Some(by)) = (f.fenced && n.liveness == phalanx_core::Liveness::Offline, &f.fenced_by) {
            let _ = writeln!(o, "      fenced ({by})");
        }
        if n.state == "stopped" {
            let _ = writeln!(o, "      stopped cleanly: it held nothing when it left (not fenced)");
        }
        if let Some(r) = &f.reason {
            let _ = writeln!(o, "      must be fenced: {r}");
        }
        if !n.attrs.is_empty() {
            let attrs: Vec<String> = n.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(o, "      attributes: {}", attrs.join(" "));
        }
    }
    if !s.fence_devices.is_empty() {
        let _ = writeln!(o, "\nFence devices:");
        for (name, h) in &s.fence_devices {
            let state = match h {
                None => "not checked yet".to_string(),
                Some(h) if h.ok => format!("ok (checked by {})", h.by),
                Some(h) => format!(
                    "UNREACHABLE: {} (checked by {})",
                    h.error.as_deref().unwrap_or("?"),
                    h.by
                ),
            };
            let _ = writeln!(o, "  * {name:<14} {state}");
        }
    }
    if !s.resources.is_empty() {
        let _ = writeln!(
            o,
            "\nResources:{}",
            if s.plan_pending > 0 {
                format!(" ({} action(s) in progress)", s.plan_pending)
            } else {
                String::new()
            }
        );
        for r in &s.resources {
            let where_ = if r.running.is_empty() {
                "Stopped".to_string()
            } else {
                r.running
                    .iter()
                    .map(|(n, role)| format!("{role:?} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let parent = r.parent.as_ref().map(|p| format!(" [{p}]")).unwrap_or_default();
            let lost = if r.lost.is_empty() {
                String::new()
            } else {
                format!("  (lost with {})", r.lost.join(", "))
            };
            let _ = writeln!(o, "  * {:<14} ({}){parent}: {where_}{lost}", r.id, r.agent);
            if !r.failures.is_empty() {
                let f: Vec<String> = r.failures.iter().map(|(n, c)| format!("{n}={c}")).collect();
                let _ = writeln!(o, "      fail counts: {}", f.join(" "));
            }
            if !r.banned.is_empty() || r.fatal {
                let _ = writeln!(
                    o,
                    "      banned from: {}{}",
                    r.banned.join(" "),
                    if r.fatal {
                        " (fatal: everywhere until cleanup)"
                    } else {
                        ""
                    }
                );
            }
            if let Some(e) = &r.last_error {
                let _ = writeln!(o, "      last error: {e}");
            }
        }
    }
    let m = &s.mesh;
    let dropped =
        m.dropped_malformed + m.dropped_auth + m.dropped_replay + m.dropped_unknown_sender + m.dropped_other_cluster;
    let _ = writeln!(
        o,
        "\nHeartbeats: {} sent, {} received, {} dropped (malformed {}, bad signature {}, replay {}, unknown sender {}, other cluster {})",
        m.sent, m.received, dropped, m.dropped_malformed, m.dropped_auth, m.dropped_replay, m.dropped_unknown_sender, m.dropped_other_cluster
    );
    o
}
