//! What the cluster knows of each primitive resource: where it runs and in which role, as
//! agents' results, monitors and probes report it; failures per node, hard-error bans and fatal
//! configuration errors, and their cleanup.

use super::{ClusterState, Outcome};
use crate::scheduler::{Action, ActionKind, Role};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the cluster knows of one primitive resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResourceRecord {
    /// Where it runs, and in which role (Failed: its monitor failed, recovery pending).
    pub running: BTreeMap<String, Role>,
    /// Failure times (unix ms) per node.
    pub failures: BTreeMap<String, Vec<u64>>,
    /// Nodes where an agent answered a hard error (OCF 1-5): banned there until cleanup.
    pub banned: BTreeSet<String>,
    /// A fatal configuration error (OCF 6): it runs nowhere until cleanup.
    pub fatal: bool,
    /// The last failure's reason (the agent's ocf-exit-reason, a timeout...).
    pub last_error: Option<String>,
}

/// How an agent call ended, as the state machine records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallOutcome {
    Ok,
    /// Hard error on this node (OCF 1-5): ban it here.
    Hard,
    /// Fatal configuration error (OCF 6): ban it everywhere.
    Fatal,
    /// Any other failure (timeout, unknown exit, not running when it should be).
    Soft,
}

fn record_failure(r: &mut ResourceRecord, node: &str, outcome: CallOutcome, at_ms: u64, reason: Option<String>) {
    r.failures.entry(node.to_string()).or_default().push(at_ms);
    match outcome {
        CallOutcome::Hard => {
            r.banned.insert(node.to_string());
        }
        CallOutcome::Fatal => r.fatal = true,
        _ => {}
    }
    r.last_error = reason.or(Some(format!("{outcome:?} failure on {node}")));
}

impl ClusterState {
    /// A resource action's result.
    pub(super) fn record_result(
        &mut self,
        action: &Action,
        ok: bool,
        outcome: CallOutcome,
        at_ms: u64,
        reason: Option<String>,
    ) {
        let r = self.resources.entry(action.rsc.clone()).or_default();
        if ok {
            match action.kind {
                ActionKind::Start | ActionKind::Demote => {
                    r.running.insert(action.node.clone(), Role::Started);
                }
                ActionKind::Promote => {
                    r.running.insert(action.node.clone(), Role::Promoted);
                }
                ActionKind::Stop => {
                    r.running.remove(&action.node);
                }
                ActionKind::Fence => {}
            }
            return;
        }
        record_failure(r, &action.node, outcome, at_ms, reason.clone());
        if action.kind == ActionKind::Stop {
            // What runs there is unknown now: with fencing required, the node is fenced
            // (Pacemaker's on-fail for stop); the copy stays recorded until then.
            if let Some(n) = self.nodes.get_mut(&action.node) {
                n.fence.reason = Some(format!(
                    "stop of {} failed on {}{}",
                    action.rsc,
                    action.node,
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ));
            }
        } else {
            // A failed start/promote leaves it in an unknown state there: recover.
            r.running.insert(action.node.clone(), Role::Failed);
        }
    }

    /// A recurring monitor found `rsc` failed on `node` (ignored unless it is recorded there).
    pub(super) fn monitor_failed(
        &mut self,
        rsc: &str,
        node: &str,
        outcome: CallOutcome,
        at_ms: u64,
        reason: Option<String>,
    ) -> Outcome {
        let r = self.resources.entry(rsc.to_string()).or_default();
        if !r.running.contains_key(node) {
            return Outcome::Unchanged;
        }
        record_failure(r, node, outcome, at_ms, reason);
        r.running.insert(node.to_string(), Role::Failed);
        Outcome::Ok
    }

    /// What a probe found on `node`: `role`, or not running (None).
    pub(super) fn probe(&mut self, rsc: &str, node: &str, role: Option<Role>) -> Outcome {
        let r = self.resources.entry(rsc.to_string()).or_default();
        let before = r.running.get(node).copied();
        match role {
            Some(role) => r.running.insert(node.to_string(), role),
            None => r.running.remove(node),
        };
        if before == role {
            Outcome::Unchanged
        } else {
            Outcome::Ok
        }
    }

    /// Forget failures, bans and fatal errors of `rsc`.
    pub(super) fn cleanup(&mut self, rsc: &str) -> Outcome {
        let r = self.resources.entry(rsc.to_string()).or_default();
        r.failures.clear();
        r.banned.clear();
        r.fatal = false;
        r.last_error = None;
        Outcome::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{act, cluster};
    use super::super::{Command, Liveness, NewNode};
    use super::*;

    #[test]
    fn a_failed_stop_makes_an_online_node_unclean() {
        let mut s = ClusterState::default();
        s.apply(&Command::Bootstrap {
            nodes: vec![NewNode {
                name: "n1".into(),
                id: 1,
                links: vec!["127.0.0.1:1".into()],
                api: "127.0.0.1:2".into(),
            }],
        });
        s.apply(&Command::SetLiveness {
            name: "n1".into(),
            liveness: Liveness::Online,
            at_ms: 1,
        });
        s.resources
            .entry("db".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        s.apply(&Command::ActionResult {
            plan_id: 1,
            index: 0,
            action: act(ActionKind::Stop, "db", "n1"),
            outcome: CallOutcome::Soft,
            at_ms: 2,
            reason: Some("timed out".into()),
        });
        let n1 = &s
            .scheduler_input(3, &cluster(crate::config::Fencing::Required), None)
            .nodes["n1"];
        assert!(n1.unclean && n1.online);
        assert_eq!(n1.fence_reason.as_deref(), Some("stop of db failed on n1: timed out"));
        // Fenced while online: going down afterwards is that fence's doing, not a new loss.
        s.apply(&Command::ActionResult {
            plan_id: 1,
            index: 0,
            action: Action {
                kind: ActionKind::Fence,
                rsc: "n1".into(),
                node: "n2".into(),
                reason: "stop failed".into(),
            },
            outcome: CallOutcome::Ok,
            at_ms: 4,
            reason: Some("level 1: power".into()),
        });
        s.apply(&Command::SetLiveness {
            name: "n1".into(),
            liveness: Liveness::Offline,
            at_ms: 5,
        });
        let req = cluster(crate::config::Fencing::Required);
        assert!(
            !s.scheduler_input(6, &req, None).nodes["n1"].unclean,
            "fenced once is enough"
        );
        assert!(s.resources["db"].running.is_empty());
    }

    #[test]
    fn failures_bans_and_cleanup() {
        let mut s = ClusterState::default();
        s.resources
            .entry("web".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        let fail = Command::MonitorFailed {
            rsc: "web".into(),
            node: "n1".into(),
            outcome: CallOutcome::Hard,
            at_ms: 5,
            reason: Some("disk".into()),
        };
        assert_eq!(s.apply(&fail), Outcome::Ok);
        let r = &s.resources["web"];
        assert_eq!(r.running["n1"], Role::Failed);
        assert!(r.banned.contains("n1"));
        assert_eq!(r.last_error.as_deref(), Some("disk"));
        let input = s.scheduler_input(10, &cluster(crate::config::Fencing::Off), None);
        assert!(
            input.resources["web"].banned.contains("n1"),
            "a hard error bans the node"
        );
        s.apply(&Command::Cleanup { rsc: "web".into() });
        let r = &s.resources["web"];
        assert!(r.failures.is_empty() && r.banned.is_empty() && !r.fatal && r.last_error.is_none());
        let stray = Command::MonitorFailed {
            rsc: "web".into(),
            node: "n9".into(),
            outcome: CallOutcome::Soft,
            at_ms: 5,
            reason: None,
        };
        assert_eq!(s.apply(&stray), Outcome::Unchanged);
    }
}
