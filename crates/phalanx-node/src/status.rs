//! The parts of `/v1/status` that read like crm_mon's and that `phalanx status`, its `--check`
//! and `/metrics` share: fail counts with their expiry, each resource's last operation as the
//! state records it, failed actions, the fence history, fence devices' health with who checks
//! them and when, and the config version each node runs. Each is derived from the replicated
//! state and the config at one instant (`now_ms`), so the functions here are pure and tested
//! beside the code; `Node::status` assembles them with what only the answering node knows
//! (quorum, heartbeats, when it last checked a device).
//!
//! The JSON these types make is versioned: [`STATUS_SCHEMA`] is the `schema` field of every
//! report, and `docs/status.schema.json` describes it (a test validates real output against it).
//! Fields are only added within one schema version; a renamed or removed field is a new version.

use phalanx_core::config::Config;
use phalanx_core::resources::Meta;
use phalanx_core::scheduler::Role;
use phalanx_core::state::{ClusterState, DeviceHealth, ResourceRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The version of `/v1/status`'s JSON (`phalanx status --json`): `docs/status.schema.json`.
pub const STATUS_SCHEMA: u32 = 1;

/// The node attribute where each node records the committed config version it runs (written by
/// the node itself, through the log, when it switches; see `config_watch`).
pub const CONFIG_VERSION_ATTR: &str = "#config-version";

/// A resource's failures on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailCount {
    pub node: String,
    /// Failures recorded there (until cleanup).
    pub count: usize,
    /// Those not expired by `failure_timeout` (what the migration threshold counts).
    pub live: usize,
    /// Unix ms of the last one.
    pub last_ms: u64,
    /// When the last live one expires (unix ms); None: never (no `failure_timeout`) or none live.
    pub expires_ms: Option<u64>,
}

/// The last operation of a resource, as far as the state records it: the latest finished
/// action of the current plan, else a recorded failure. `at_ms` is known for failures only
/// (successful actions carry no time yet); `rc` and `exec_ms` stay None until results record
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastOp {
    /// start | stop | promote | demote; None: a failure recorded outside the current plan (a
    /// monitor, or an action of an earlier plan).
    pub op: Option<String>,
    pub node: String,
    /// ok | failed | pending.
    pub outcome: String,
    pub at_ms: Option<u64>,
    pub rc: Option<i32>,
    pub exec_ms: Option<u64>,
}

/// A failure of a resource on a node that cleanup has not cleared (crm_mon's "failed
/// resource actions").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAction {
    pub resource: String,
    pub node: String,
    pub count: usize,
    /// Unix ms of the last failure there.
    pub last_ms: u64,
    /// soft (recover) | hard (banned from the node) | fatal (runs nowhere until cleanup).
    pub outcome: String,
    /// The resource's last error, on the node of its most recent failure (the state keeps one
    /// reason per resource).
    pub reason: Option<String>,
}

/// A node's fencing record, where it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceHistory {
    pub node: String,
    /// Fenced since it was last lost.
    pub fenced: bool,
    pub fenced_at_ms: Option<u64>,
    /// The level or device that fenced it, as the fencer reported.
    pub fenced_by: Option<String>,
    /// Attempts that failed at every level since the last success (or its return).
    pub failures: u32,
    pub last_attempt_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Why it must be fenced although online (a stop failed there).
    pub pending_reason: Option<String>,
}

/// A fence device's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub name: String,
    /// ok | unreachable | unchecked.
    pub state: String,
    pub error: Option<String>,
    /// Since when this verdict holds (unix ms of the check that found it).
    pub since_ms: Option<u64>,
    /// The node that checks it (the leader that last recorded it).
    pub checked_by: Option<String>,
    /// When the answering node last checked it (unix ms); None when another node checks it.
    pub last_checked_ms: Option<u64>,
    pub interval_ms: u64,
}

/// The top-level meta of the placement unit `rsc` belongs to (its clone, else its group, else
/// itself): what the scheduler counts failures with.
pub fn unit_meta<'a>(config: &'a Config, rsc: &str) -> Option<&'a Meta> {
    let r = &config.resources;
    let p = r.primitive_of(rsc)?;
    let group = r.group_of(&p.id);
    let top = group.map(|g| g.id.as_str()).unwrap_or(&p.id);
    Some(match (r.clone_of(top), group) {
        (Some(c), _) => &c.meta,
        (None, Some(g)) => &g.meta,
        (None, None) => &p.meta,
    })
}

/// `rec`'s failures per node, with their expiry under `meta` at `now_ms`.
pub fn fail_counts(rec: &ResourceRecord, meta: Option<&Meta>, now_ms: u64) -> Vec<FailCount> {
    let timeout = meta.and_then(|m| m.failure_timeout).map(|d| d.as_millis() as u64);
    rec.failures
        .iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(node, f)| {
            let live: Vec<u64> = f
                .iter()
                .copied()
                .filter(|t| timeout.is_none_or(|ft| now_ms < t.saturating_add(ft)))
                .collect();
            FailCount {
                node: node.clone(),
                count: f.len(),
                live: live.len(),
                last_ms: f.iter().copied().max().unwrap_or(0),
                expires_ms: timeout.and_then(|ft| live.iter().max().map(|t| t.saturating_add(ft))),
            }
        })
        .collect()
}

/// How many of the newest events `phalanx status` shows.
pub const RECENT_EVENTS: usize = 10;

/// The last operation of each resource that has one in the event history (its newest agent
/// action or monitor failure there: with its time, exit code and duration).
pub fn last_ops_from_events(log: &phalanx_core::events::EventLog) -> BTreeMap<String, LastOp> {
    use phalanx_core::events::EventKind as K;
    let mut out = BTreeMap::new();
    for e in log.newest_first() {
        let outcome = match e.kind {
            K::ResourceStarted
            | K::ResourceStopped
            | K::ResourcePromoted
            | K::ResourceDemoted
            | K::ResourceReloaded => "ok",
            K::ResourceFailed | K::MonitorFailed => "failed",
            _ => continue,
        };
        let Some(rsc) = &e.resource else { continue };
        out.entry(rsc.clone()).or_insert_with(|| LastOp {
            op: e.task.clone().or_else(|| Some("reload".into())),
            node: e.node.clone(),
            outcome: outcome.into(),
            at_ms: Some(e.time_ms),
            rc: e.rc,
            exec_ms: e.exec_ms,
        });
    }
    out
}

/// What a built-in agent is doing for `rsc`, per node, while an action of the current plan is
/// pending there (the node attribute `phalanx_core::resources::progress_attr`: "rejoining
/// (pg_rewind)"). A note left by an action no longer pending (its node died during it) is not
/// shown.
pub fn in_progress(state: &ClusterState, rsc: &str) -> BTreeMap<String, String> {
    let key = phalanx_core::resources::progress_attr(rsc);
    let pending = state.plan.pending_keys();
    state
        .nodes
        .iter()
        .filter_map(|(n, rec)| {
            let note = rec.attrs.get(&key)?;
            pending
                .iter()
                .any(|(_, r, on)| r == rsc && on == n)
                .then(|| (n.clone(), note.clone()))
        })
        .collect()
}

/// The last operation of `rsc` (see [`LastOp`]), from the state when the event history has
/// none (see [`last_ops_from_events`]).
pub fn last_op(state: &ClusterState, rsc: &str) -> Option<LastOp> {
    let rec = state.resources.get(rsc);
    let last_failure_on = |node: &str| {
        rec.and_then(|r| r.failures.get(node))
            .and_then(|f| f.iter().max().copied())
    };
    let plan = &state.plan;
    let finished = plan
        .actions
        .iter()
        .enumerate()
        .rfind(|(i, a)| a.rsc == rsc && (plan.done.contains(i) || plan.failed.contains(i)));
    if let Some((i, a)) = finished {
        let failed = plan.failed.contains(&i);
        return Some(LastOp {
            op: Some(a.kind.as_str().into()),
            node: a.node.clone(),
            outcome: if failed { "failed" } else { "ok" }.into(),
            at_ms: if failed { last_failure_on(&a.node) } else { None },
            rc: None,
            exec_ms: None,
        });
    }
    if let Some((node, at)) = rec.and_then(|r| {
        r.failures
            .iter()
            .filter_map(|(n, f)| f.iter().max().map(|t| (n.clone(), *t)))
            .max_by_key(|(_, t)| *t)
    }) {
        return Some(LastOp {
            op: None,
            node,
            outcome: "failed".into(),
            at_ms: Some(at),
            rc: None,
            exec_ms: None,
        });
    }
    let pending = plan.actions.iter().rfind(|a| a.rsc == rsc)?;
    Some(LastOp {
        op: Some(pending.kind.as_str().into()),
        node: pending.node.clone(),
        outcome: "pending".into(),
        at_ms: None,
        rc: None,
        exec_ms: None,
    })
}

/// Every (resource, node) with failures cleanup has not cleared, most recent first.
pub fn failed_actions(state: &ClusterState) -> Vec<FailedAction> {
    let mut out = Vec::new();
    for (rsc, r) in &state.resources {
        let latest = r
            .failures
            .iter()
            .filter_map(|(n, f)| f.iter().max().map(|t| (n.as_str(), *t)))
            .max_by_key(|(_, t)| *t)
            .map(|(n, _)| n);
        for (node, f) in r.failures.iter().filter(|(_, f)| !f.is_empty()) {
            let outcome = if r.fatal {
                "fatal"
            } else if r.banned.contains(node) {
                "hard"
            } else {
                "soft"
            };
            out.push(FailedAction {
                resource: rsc.clone(),
                node: node.clone(),
                count: f.len(),
                last_ms: f.iter().copied().max().unwrap_or(0),
                outcome: outcome.into(),
                reason: if latest == Some(node.as_str()) {
                    r.last_error.clone()
                } else {
                    None
                },
            });
        }
    }
    out.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then_with(|| a.resource.cmp(&b.resource)));
    out
}

/// Every node's fencing record that has anything in it (a fence, an attempt, a reason).
pub fn fence_history(state: &ClusterState) -> Vec<FenceHistory> {
    state
        .nodes
        .iter()
        .filter(|(_, n)| {
            let f = &n.fence;
            f.fenced_at_ms.is_some() || f.failures > 0 || f.last_attempt_ms > 0 || f.reason.is_some()
        })
        .map(|(name, n)| {
            let f = &n.fence;
            FenceHistory {
                node: name.clone(),
                fenced: f.fenced,
                fenced_at_ms: f.fenced_at_ms,
                fenced_by: f.fenced_by.clone(),
                failures: f.failures,
                last_attempt_ms: (f.last_attempt_ms > 0).then_some(f.last_attempt_ms),
                last_error: f.last_error.clone(),
                pending_reason: f.reason.clone(),
            }
        })
        .collect()
}

/// Every configured fence device's health; `checked` is when node `me` (the answering node)
/// last checked each, shown only where `me` is the recorded checker (a former leader's last
/// check is not the device's).
pub fn devices(config: &Config, state: &ClusterState, me: &str, checked: &BTreeMap<String, u64>) -> Vec<DeviceStatus> {
    config
        .fence
        .devices
        .iter()
        .map(|d| {
            let h: Option<&DeviceHealth> = state.fence_devices.get(&d.name);
            DeviceStatus {
                name: d.name.clone(),
                state: match h {
                    None => "unchecked",
                    Some(h) if h.ok => "ok",
                    Some(_) => "unreachable",
                }
                .into(),
                error: h.and_then(|h| h.error.clone()),
                since_ms: h.map(|h| h.since_ms),
                checked_by: h.map(|h| h.by.clone()),
                last_checked_ms: checked.get(&d.name).copied().filter(|_| h.is_some_and(|h| h.by == me)),
                interval_ms: d.monitor_interval.as_millis() as u64,
            }
        })
        .collect()
}

/// The committed config version `attrs` says its node runs (None: not recorded).
pub fn config_version_of(attrs: &BTreeMap<String, String>) -> Option<u64> {
    attrs.get(CONFIG_VERSION_ATTR).and_then(|v| v.parse().ok())
}

/// One resource's overall state as status and `--check` read it: unknown without quorum (the
/// answering node's record may be stale), failed, started or stopped.
pub fn resource_state(quorum: bool, running: &BTreeMap<String, Role>, fatal: bool) -> &'static str {
    if !quorum {
        "unknown"
    } else if fatal || running.values().any(|r| *r == Role::Failed) {
        "failed"
    } else if running.is_empty() {
        "stopped"
    } else {
        "started"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_core::scheduler::Action;
    use phalanx_core::scheduler::ActionKind;
    use phalanx_core::state::FenceRecord;
    use std::time::Duration;

    fn action(kind: ActionKind, rsc: &str, node: &str) -> Action {
        Action {
            kind,
            rsc: rsc.into(),
            node: node.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn fail_counts_expire_with_the_failure_timeout() {
        let mut rec = ResourceRecord::default();
        rec.failures.insert("n1".into(), vec![1_000, 50_000]);
        rec.failures.insert("n2".into(), vec![2_000]);
        let meta = Meta {
            failure_timeout: Some(Duration::from_secs(60)),
            ..Meta::default()
        };
        let fc = fail_counts(&rec, Some(&meta), 63_000);
        assert_eq!(
            fc[0],
            FailCount {
                node: "n1".into(),
                count: 2,
                live: 1,
                last_ms: 50_000,
                expires_ms: Some(110_000)
            }
        );
        assert_eq!((fc[1].live, fc[1].expires_ms), (0, None), "n2's only failure expired");
        let never = fail_counts(&rec, Some(&Meta::default()), 63_000);
        assert_eq!((never[0].live, never[0].expires_ms), (2, None));
    }

    #[test]
    fn last_op_failed_actions_and_fence_history_read_the_state() {
        let mut s = ClusterState::default();
        s.plan.actions = vec![
            action(ActionKind::Stop, "web", "n1"),
            action(ActionKind::Start, "web", "n2"),
            action(ActionKind::Start, "db", "n2"),
        ];
        s.plan.done.insert(0);
        assert_eq!(
            last_op(&s, "web").map(|o| (o.op, o.outcome)),
            Some((Some("stop".into()), "ok".into()))
        );
        s.plan.failed.insert(1);
        let mut rec = ResourceRecord::default();
        rec.failures.insert("n2".into(), vec![7_000]);
        rec.failures.insert("n1".into(), vec![3_000]);
        rec.banned.insert("n2".into());
        rec.last_error = Some("start: not installed".into());
        s.resources.insert("web".into(), rec);
        let op = last_op(&s, "web").expect("an op");
        assert_eq!(
            (op.op.as_deref(), op.node.as_str(), op.outcome.as_str(), op.at_ms),
            (Some("start"), "n2", "failed", Some(7_000))
        );
        assert_eq!(last_op(&s, "db").map(|o| o.outcome), Some("pending".into()));
        assert_eq!(last_op(&s, "other"), None);
        let fa = failed_actions(&s);
        assert_eq!(fa.len(), 2);
        assert_eq!((fa[0].node.as_str(), fa[0].outcome.as_str()), ("n2", "hard"));
        assert_eq!(fa[0].reason.as_deref(), Some("start: not installed"));
        assert_eq!(
            (fa[1].node.as_str(), fa[1].outcome.as_str(), fa[1].reason.clone()),
            ("n1", "soft", None)
        );

        let mut s = ClusterState::default();
        s.apply(&phalanx_core::Command::Bootstrap {
            nodes: ["n1", "n2"]
                .iter()
                .zip(1..)
                .map(|(n, id)| phalanx_core::state::NewNode {
                    name: n.to_string(),
                    id,
                    links: vec![format!("127.0.0.1:{}", 10 + id)],
                    api: format!("127.0.0.1:{}", 20 + id),
                })
                .collect(),
        });
        assert!(fence_history(&s).is_empty());
        s.nodes.get_mut("n1").expect("n1").fence = FenceRecord {
            fenced: true,
            fenced_at_ms: Some(9_000),
            fenced_by: Some("level 1 (pdu)".into()),
            last_attempt_ms: 9_000,
            ..FenceRecord::default()
        };
        let h = fence_history(&s);
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].node.as_str(), h[0].fenced_at_ms, h[0].last_attempt_ms),
            ("n1", Some(9_000), Some(9_000))
        );
    }

    #[test]
    fn resource_state_is_unknown_without_quorum() {
        let mut running = BTreeMap::new();
        running.insert("n1".to_string(), Role::Started);
        assert_eq!(resource_state(false, &running, false), "unknown");
        assert_eq!(resource_state(true, &running, false), "started");
        running.insert("n2".to_string(), Role::Failed);
        assert_eq!(resource_state(true, &running, false), "failed");
        assert_eq!(resource_state(true, &BTreeMap::new(), false), "stopped");
        assert_eq!(resource_state(true, &BTreeMap::new(), true), "failed");
    }
}
