//! Human output: a crm_mon-like view of a status report (cluster, quorum, maintenance, nodes
//! with their config version, fence devices, resources with fail counts and last operation,
//! operator constraints, failed actions, fence history), and the one-line Nagios-style verdict
//! of `phalanx status --check` ([`check`]).

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
    if s.maintenance {
        let _ = writeln!(
            o,
            "MAINTENANCE: the whole cluster is in maintenance: nothing is started, stopped or monitored (`phalanx maintenance off`)"
        );
    }
    if !s.placement_known {
        let _ = writeln!(
            o,
            "WARNING: {} has no quorum: where resources run is UNKNOWN here (its record may be stale)",
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
        let maint = if n.maintenance { " MAINTENANCE" } else { "" };
        let version = n.config_version.map(|v| format!(" config v{v}")).unwrap_or_default();
        let _ = writeln!(
            o,
            "  * {:<10} {:<8} id {} {}{}{}{}{}",
            n.name,
            n.state.to_uppercase(),
            n.id,
            role,
            lead,
            maint,
            version,
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
    devices(&mut o, s);
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
            let where_ = if !s.placement_known {
                let last: Vec<&str> = r.running.keys().chain(&r.lost).map(String::as_str).collect();
                format!(
                    "UNKNOWN (no quorum on {}{})",
                    s.node,
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!("; last recorded on {}", last.join(", "))
                    }
                )
            } else if r.running.is_empty() {
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
            if !r.fail_counts.is_empty() {
                let f: Vec<String> = r.fail_counts.iter().map(|f| fail_count(f, s.generated_ms)).collect();
                let threshold = r
                    .migration_threshold
                    .map(|t| format!("; migration threshold {t}"))
                    .unwrap_or_default();
                let _ = writeln!(o, "      fail counts: {}{threshold}", f.join(", "));
            } else if !r.failures.is_empty() {
                let f: Vec<String> = r.failures.iter().map(|(n, c)| format!("{n}={c}")).collect();
                let _ = writeln!(o, "      fail counts: {}", f.join(" "));
            }
            for (n, what) in &r.in_progress {
                let _ = writeln!(o, "      {n}: {what}");
            }
            if let Some(op) = &r.last_op {
                let _ = writeln!(o, "      last operation: {}", last_op(op, s.generated_ms));
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
    sections(&mut o, s);
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

/// "12s ago" / "in 9m59s" for unix ms `t` as of `now`.
fn when(t: u64, now: u64) -> String {
    if t > now {
        format!("in {}", span(t - now))
    } else {
        format!("{} ago", span(now - t))
    }
}

fn fail_count(f: &phalanx_node::status::FailCount, now: u64) -> String {
    let expiry = match f.expires_ms {
        Some(t) => format!(", expires {}", when(t, now)),
        None if f.live == 0 => ", expired".to_string(),
        None => String::new(),
    };
    let live = if f.live == f.count {
        String::new()
    } else {
        format!(" ({} live)", f.live)
    };
    format!("{}={}{live} (last {}{expiry})", f.node, f.count, when(f.last_ms, now))
}

fn last_op(op: &phalanx_node::status::LastOp, now: u64) -> String {
    let mut out = format!(
        "{} on {}: {}",
        op.op.as_deref().unwrap_or("failure"),
        op.node,
        op.outcome
    );
    if let Some(rc) = op.rc {
        let _ = write!(out, ", rc {rc}");
    }
    if let Some(ms) = op.exec_ms {
        let _ = write!(out, ", {ms} ms");
    }
    if let Some(t) = op.at_ms {
        let _ = write!(out, ", {}", when(t, now));
    }
    out
}

/// Fence devices: verdict, since when, who checks them and when the answering node last did.
fn devices(o: &mut String, s: &StatusReport) {
    if s.devices.is_empty() && s.fence_devices.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nFence devices:");
    if s.devices.is_empty() {
        // An older node: its report has the verdicts only.
        for (name, h) in &s.fence_devices {
            let state = match h {
                None => "not checked yet".to_string(),
                Some(h) if h.ok => format!("ok (recorded by {})", h.by),
                Some(h) => format!(
                    "UNREACHABLE: {} (recorded by {})",
                    h.error.as_deref().unwrap_or("?"),
                    h.by
                ),
            };
            let _ = writeln!(o, "  * {name:<14} {state}");
        }
        return;
    }
    let now = s.generated_ms;
    for d in &s.devices {
        let verdict = match d.state.as_str() {
            "ok" => "ok".to_string(),
            "unchecked" => "not checked yet".to_string(),
            _ => format!("UNREACHABLE: {}", d.error.as_deref().unwrap_or("?")),
        };
        let since = d
            .since_ms
            .map(|t| format!(" since {}", when(t, now)))
            .unwrap_or_default();
        let every = span(d.interval_ms);
        let who = match (&d.checked_by, d.last_checked_ms) {
            (_, Some(t)) => format!(" (checked by {} every {every}, last {})", s.node, when(t, now)),
            (Some(by), None) => format!(" (checked by {by} every {every})"),
            (None, None) => String::new(),
        };
        let _ = writeln!(o, "  * {:<14} {verdict}{since}{who}", d.name);
    }
}

/// Operator constraints, failed actions, fence history and (reserved) recent events.
fn sections(o: &mut String, s: &StatusReport) {
    let now = s.generated_ms;
    if !s.constraints.is_empty() {
        let _ = writeln!(o, "\nOperator constraints:");
        for c in &s.constraints {
            let what = match c.kind.as_str() {
                "move" => format!("move {} to {}", c.resource, c.node),
                _ => format!("ban {} from {}", c.resource, c.node),
            };
            let by = c.by.as_deref().unwrap_or("unknown");
            let made = c.made_ms.map(|t| format!(", {}", when(t, now))).unwrap_or_default();
            let expires = match c.expires_ms {
                None => "never expires".to_string(),
                Some(t) if t > now => format!("expires {}", when(t, now)),
                Some(t) => format!("EXPIRED {}", when(t, now)),
            };
            let _ = writeln!(o, "  * {what} (by {by}{made}; {expires})");
        }
    }
    if !s.failed_actions.is_empty() {
        let _ = writeln!(o, "\nFailed resource actions:");
        for f in &s.failed_actions {
            let reason = f.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
            let _ = writeln!(
                o,
                "  * {} on {}: {} {} failure(s), last {}{reason}",
                f.resource,
                f.node,
                f.count,
                f.outcome,
                when(f.last_ms, now)
            );
        }
    }
    if !s.fence_history.is_empty() {
        let _ = writeln!(o, "\nFencing history:");
        for h in &s.fence_history {
            let mut parts = Vec::new();
            if let Some(t) = h.fenced_at_ms {
                parts.push(format!(
                    "fenced {} ({})",
                    when(t, now),
                    h.fenced_by.as_deref().unwrap_or("?")
                ));
            }
            if h.failures > 0 {
                parts.push(format!(
                    "{} failed attempt(s) since, last {}: {}",
                    h.failures,
                    h.last_attempt_ms.map(|t| when(t, now)).unwrap_or_else(|| "?".into()),
                    h.last_error.as_deref().unwrap_or("?")
                ));
            }
            if let Some(r) = &h.pending_reason {
                parts.push(format!("must be fenced: {r}"));
            }
            let _ = writeln!(o, "  * {}: {}", h.node, parts.join("; "));
        }
    }
    // The newest events, as `phalanx events` prints them (its details left out).
    if !s.recent_events.is_empty() {
        let _ = writeln!(o, "\nRecent events (phalanx events):");
        for e in &s.recent_events {
            let field = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
            let time = field("time");
            let _ = writeln!(
                o,
                "  #{:<5} {} {:<22} {}",
                e.get("seq").and_then(|v| v.as_u64()).unwrap_or(0),
                time.get(11..19).unwrap_or(time),
                field("kind"),
                field("summary")
            );
        }
    }
}

/// `phalanx status --check`: the Nagios exit code (0 OK, 1 WARNING, 2 CRITICAL) and its one
/// summary line. CRITICAL: the answering node has no quorum. WARNING: a node offline, a lost node
/// not fenced, a resource failed or stopped (outside maintenance), a fence device unreachable.
pub fn check(s: &StatusReport) -> (i32, String) {
    if !s.quorum {
        return (
            2,
            format!(
                "PHALANX CRITICAL - no quorum on {} ({} of {} votes needed)",
                s.node, s.votes, s.votes_needed
            ),
        );
    }
    let mut problems = Vec::new();
    for n in &s.nodes {
        let lost = n.liveness == phalanx_core::Liveness::Offline;
        if lost && !n.fence.fenced && s.fencing == "required" {
            problems.push(format!("node {} lost and not fenced", n.name));
        } else if n.state == "offline" || lost {
            problems.push(format!("node {} offline", n.name));
        }
    }
    for r in &s.resources {
        match r.state.as_str() {
            "failed" => problems.push(format!("{} failed", r.id)),
            "stopped" if !s.maintenance => problems.push(format!("{} stopped", r.id)),
            _ => {}
        }
    }
    for d in s.devices.iter().filter(|d| d.state == "unreachable") {
        problems.push(format!("fence device {} unreachable", d.name));
    }
    let online = s
        .nodes
        .iter()
        .filter(|n| matches!(n.state.as_str(), "online" | "standby"))
        .count();
    let started = s.resources.iter().filter(|r| r.state == "started").count();
    let facts = format!(
        "quorum {}/{}, {online}/{} nodes online, {started}/{} resources started, leader {}{}",
        s.votes,
        s.voters.len(),
        s.nodes.len(),
        s.resources.len(),
        s.leader.as_deref().unwrap_or("none"),
        if s.maintenance { ", MAINTENANCE" } else { "" }
    );
    if problems.is_empty() {
        (0, format!("PHALANX OK - {facts}"))
    } else {
        (1, format!("PHALANX WARNING - {}; {facts}", problems.join(", ")))
    }
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
pub(crate) mod tests {
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

    /// A report of n1..n3 answered by n2, web recorded Started on n1 (also the harness's
    /// tests' fixture).
    pub(crate) fn report(quorum: bool) -> StatusReport {
        let node = |name: &str, id: u64| {
            serde_json::json!({
                "name": name, "id": id, "state": "online", "voter": true, "is_self": name == "n2",
                "standby": false, "liveness": "online", "api": "127.0.0.1:1", "attrs": {},
                "links": [], "last_heartbeat_ms_ago": null, "changed_at_unix_ms": null,
                "config_version": 3
            })
        };
        let mesh: serde_json::Value = serde_json::to_value(phalanx_node::mesh::MeshStats::default()).unwrap();
        serde_json::from_value(serde_json::json!({
            "schema": 1, "generated_ms": 1_000_000, "cluster": "c", "node": "n2", "node_id": 2,
            "leader": if quorum { Some("n1") } else { None }, "leader_id": null, "term": 3,
            "raft_state": "Follower", "quorum": quorum, "votes": if quorum { 3 } else { 1 },
            "votes_needed": 2, "voters": ["n1", "n2", "n3"], "learners": [],
            "leader_since_unix_ms": null, "last_log_index": 9, "last_applied_index": 9,
            "config_version": 4, "heartbeat_interval_ms": 100, "dead_after": 3,
            "no_quorum_policy": "stop", "fencing": "required", "disabled_links": [],
            "nodes": [node("n1", 1), node("n2", 2), node("n3", 3)], "mesh": mesh,
            "placement_known": quorum,
            "resources": [{
                "id": "web", "agent": "ocf:heartbeat:Dummy", "parent": null,
                "running": { "n1": "started" }, "failures": {}, "banned": [], "fatal": false,
                "last_error": null, "state": if quorum { "started" } else { "unknown" }
            }]
        }))
        .unwrap()
    }

    #[test]
    fn without_quorum_placement_reads_unknown_and_check_is_critical() {
        let s = report(false);
        let out = status(&s);
        let web = out.lines().find(|l| l.contains("* web ")).unwrap();
        assert!(web.contains("UNKNOWN (no quorum on n2; last recorded on n1)"), "{out}");
        assert!(!web.contains("Started"), "{out}");
        assert!(out.contains("n2 has no quorum"), "{out}");
        let (code, line) = check(&s);
        assert_eq!(code, 2);
        assert_eq!(line, "PHALANX CRITICAL - no quorum on n2 (1 of 2 votes needed)");
    }

    #[test]
    fn check_reads_degraded_from_nodes_resources_and_devices() {
        let mut s = report(true);
        let out = status(&s);
        assert!(
            out.contains("* web            (ocf:heartbeat:Dummy): Started n1"),
            "{out}"
        );
        assert!(out.contains("config v3"), "{out}");
        assert_eq!(
            check(&s),
            (
                0,
                "PHALANX OK - quorum 3/3, 3/3 nodes online, 1/1 resources started, leader n1".into()
            )
        );
        s.maintenance = true;
        assert!(status(&s).contains("MAINTENANCE: the whole cluster"));
        s.maintenance = false;
        s.resources[0].running.clear();
        s.resources[0].state = "stopped".into();
        s.nodes[2].state = "offline".into();
        s.nodes[2].liveness = phalanx_core::Liveness::Offline;
        let (code, line) = check(&s);
        assert_eq!(code, 1);
        assert!(
            line.starts_with(
                "PHALANX WARNING - node n3 lost and not fenced, web stopped; quorum 3/3, 2/3 nodes online"
            ),
            "{line}"
        );
        s.nodes[2].fence.fenced = true;
        assert!(check(&s).1.contains("node n3 offline, web stopped"));
        s.maintenance = true;
        assert!(!check(&s).1.contains("web stopped"), "maintenance: stopped is expected");
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
