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
    /// Nodes where an agent answered a hard error (OCF 2–5, 1 from a start or a stop, or a start
    /// that timed out or was killed): banned there until cleanup.
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
    /// Hard error on this node (OCF 2–5, 1 from a start or a stop, or a start that timed out or
    /// was killed): ban it here.
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
                ActionKind::Fence | ActionKind::Notify { .. } => {}
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

    /// The simulation's seed 193: n2's primary hangs. Its recurring monitor times out (db failed
    /// on n2: the plan stops it there before promoting n1), then n2's probe, run when n2 came
    /// back on the quorate side, times out too. Read as "not running", that probe erased n2's
    /// entry, the stop went with it, and n1 was promoted beside the hung primary. A probe that
    /// timed out must keep the instance recorded (failed), to be stopped before any promote.
    #[test]
    fn a_probe_that_timed_out_keeps_a_hung_primary_to_be_stopped_before_the_next_promote() {
        use crate::ocf::{probed_role, AgentAction, Verdict};
        let src = "[cluster]\nname = \"t\"\nfencing = \"off\"\n\
                   [[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:10\"]\napi = \"127.0.0.1:20\"\n\
                   [[node]]\nname = \"n2\"\nlinks = [\"127.0.0.1:11\"]\napi = \"127.0.0.1:21\"\n\
                   [[node]]\nname = \"n3\"\nlinks = [\"127.0.0.1:12\"]\napi = \"127.0.0.1:22\"\n\
                   [[resource]]\nid = \"db\"\nagent = \"ocf:sim:Stateful\"\n\
                   monitor = { interval = \"1s\", timeout = \"5s\" }\n\
                   [[clone]]\nid = \"dbs\"\nresource = \"db\"\npromotable = true\npromoted_max = 1\n";
        let cfg = match crate::config::parse(src) {
            Ok(c) => c,
            Err(e) => panic!("{}", e.render("test")),
        };
        let mut s = super::super::test_support::bootstrapped(&["n1", "n2", "n3"]);
        for n in ["n1", "n2", "n3"] {
            s.apply(&Command::SetLiveness {
                name: n.into(),
                liveness: Liveness::Online,
                at_ms: 1,
            });
        }
        let db = s.resources.entry("db".into()).or_default();
        db.running.insert("n1".into(), Role::Started);
        db.running.insert("n2".into(), Role::Promoted);
        db.running.insert("n3".into(), Role::Started);
        s.apply(&Command::MonitorFailed {
            rsc: "db".into(),
            node: "n2".into(),
            outcome: CallOutcome::Soft,
            at_ms: 2,
            reason: Some("monitor timed out".into()),
        });
        let stop_then_promote = |s: &ClusterState| {
            let plan = crate::scheduler::schedule(&cfg, &s.scheduler_input(3, &cfg.cluster, Some("n1")));
            let find = |kind: ActionKind, on: Option<&str>| {
                plan.actions
                    .iter()
                    .position(|a| a.kind == kind && a.rsc == "db" && on.is_none_or(|n| a.node == n))
            };
            let stop = find(ActionKind::Stop, Some("n2"));
            let promote = find(ActionKind::Promote, None);
            assert!(promote.is_some(), "another primary is chosen: {:?}", plan.summary);
            (stop, promote, plan.summary)
        };
        let (stop, promote, summary) = stop_then_promote(&s);
        assert!(
            stop.zip(promote).is_some(),
            "the failed primary is stopped: {summary:?}"
        );
        // n2's probe of db times out as well.
        let role = probed_role(Verdict::of(AgentAction::Monitor, None, true), None);
        s.apply(&Command::Probe {
            rsc: "db".into(),
            node: "n2".into(),
            role,
        });
        assert_eq!(s.resources["db"].running.get("n2"), Some(&Role::Failed));
        let (stop, promote, summary) = stop_then_promote(&s);
        let (Some(stop), Some(promote)) = (stop, promote) else {
            panic!("the hung primary on n2 must still be stopped: {summary:?}");
        };
        let plan = crate::scheduler::schedule(&cfg, &s.scheduler_input(3, &cfg.cluster, Some("n1")));
        assert!(
            plan.edges.contains(&(stop, promote)),
            "stop on n2 before the promote: {summary:?}"
        );
        // A clean "not running" is believed: nothing is left to stop there.
        s.apply(&Command::Probe {
            rsc: "db".into(),
            node: "n2".into(),
            role: probed_role(
                Verdict::of(AgentAction::Monitor, Some(crate::ocf::OCF_NOT_RUNNING), false),
                Some(7),
            ),
        });
        assert_eq!(s.resources["db"].running.get("n2"), None);
    }
}
