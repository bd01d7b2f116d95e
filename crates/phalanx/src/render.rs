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

/// A span of milliseconds the way an operator reads it: "45s", "9m59s", "2h5m", "3d4h".
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// `resource constraints`: one line per operator move or ban, as of `now_ms`.
pub fn constraints(entries: &[phalanx_core::state::OperatorEntry], now_ms: u64) -> String {
    if entries.is_empty() {
        return "No operator moves or bans.\n".into();
    }
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let made = match e.made_ms {
                Some(t) => format!("{} ago", span(now_ms.saturating_sub(t))),
                None => "unknown".into(),
            };
            let expires = match e.expires_ms {
                None => "never".into(),
                Some(t) if t > now_ms => format!("in {}", span(t - now_ms)),
                Some(t) => format!("expired {} ago", span(now_ms - t)),
            };
            [
                e.resource.clone(),
                e.kind.clone(),
                e.node.clone(),
                e.by.clone().unwrap_or_else(|| "unknown".into()),
                made,
                expires,
            ]
        })
        .collect();
    let head = ["RESOURCE", "KIND", "NODE", "BY", "MADE", "EXPIRES"].map(String::from);
    let mut width = head.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut o = String::new();
    for r in std::iter::once(&head).chain(&rows) {
        let cells: Vec<String> = r.iter().zip(width).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(o, "{}", cells.join("  ").trim_end());
    }
    o
}

/// What `resource clear` cleared (the API's `cleared` list), in one line.
pub fn cleared(rsc: &str, cleared: &[phalanx_core::state::OperatorEntry]) -> String {
    if cleared.is_empty() {
        return format!("{rsc}: nothing to clear (no move or ban on it, its group, clone or members).");
    }
    let what: Vec<String> = cleared
        .iter()
        .map(|e| match e.kind.as_str() {
            "move" => format!("move of {} to {}", e.resource, e.node),
            _ => format!("ban of {} from {}", e.resource, e.node),
        })
        .collect();
    format!("{rsc}: cleared {} ({}).", what.len(), what.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_core::state::OperatorEntry;

    fn entry(rsc: &str, kind: &str, made: Option<u64>, expires: Option<u64>) -> OperatorEntry {
        OperatorEntry {
            resource: rsc.into(),
            kind: kind.into(),
            node: "n2".into(),
            by: made.map(|_| "alice@ops1".into()),
            made_ms: made,
            expires_ms: expires,
            expired: false,
        }
    }

    #[test]
    fn constraints_read_as_a_table() {
        let now = 10_000_000;
        let out = constraints(
            &[
                entry("web", "move", Some(now - 12_000), Some(now + 599_000)),
                entry("db", "ban", None, None),
                entry("ip", "ban", Some(now - 7_200_000), Some(now - 3_000)),
            ],
            now,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["RESOURCE", "KIND", "NODE", "BY", "MADE", "EXPIRES"]
        );
        assert!(
            lines[1].starts_with("web ")
                && lines[1].contains("alice@ops1")
                && lines[1].contains(" 12s ago ")
                && lines[1].ends_with(" in 9m59s"),
            "{out}"
        );
        assert!(lines[2].contains("unknown") && lines[2].ends_with("never"), "{out}");
        assert!(
            lines[3].contains("2h0m ago") && lines[3].ends_with("expired 3s ago"),
            "{out}"
        );
        assert_eq!(constraints(&[], now), "No operator moves or bans.\n");
        assert_eq!(
            cleared("svc", &[entry("web", "move", None, None)]),
            "svc: cleared 1 (move of web to n2)."
        );
        assert!(cleared("svc", &[]).contains("nothing to clear"));
    }
}
