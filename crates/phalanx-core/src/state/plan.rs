//! The plan being executed: the scheduler's actions, their ordering and their progress; a new
//! plan replacing the old one, nodes claiming their actions through the log, and reported
//! results (which also update what runs where, or the fencing records).

use super::{Applied, CallOutcome, ClusterState, Outcome, RejectReason, Touched};
use crate::scheduler::{Action, ActionKind, Role};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The plan being executed: the scheduler's actions, their ordering and their progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlanRecord {
    pub id: u64,
    pub actions: Vec<Action>,
    pub edges: Vec<(usize, usize)>,
    pub done: BTreeSet<usize>,
    pub failed: BTreeSet<usize>,
    /// Actions a node claimed (through the log) before running them, with the incarnation of
    /// the claiming process: only that process runs them (a restarted one claims anew).
    #[serde(default)]
    pub claimed: BTreeMap<usize, u64>,
}

impl PlanRecord {
    /// Actions not yet finished, as (kind, rsc, node) keys.
    pub fn pending_keys(&self) -> BTreeSet<(ActionKind, String, String)> {
        self.actions
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.done.contains(i) && !self.failed.contains(i))
            .map(|(_, a)| (a.kind, a.rsc.clone(), a.node.clone()))
            .collect()
    }

    /// Starts and promotes that may be running already: claimed by their node, every
    /// predecessor done, and not reported yet. A plan that replaced them would not know it.
    /// (A claimed start still waiting for a predecessor, say a fence, has not begun.)
    pub fn in_flight_starts(&self) -> Vec<&Action> {
        (0..self.actions.len())
            .filter(|i| self.ready(*i) && self.claimed.contains_key(i))
            .map(|i| &self.actions[i])
            .filter(|a| matches!(a.kind, ActionKind::Start | ActionKind::Promote))
            .collect()
    }

    /// Starts and promotes that are running or may begin any moment: claimed by their node,
    /// not reported, and none of their predecessors failed (those still open may finish at
    /// any time, and the node then runs them before it learns of a plan that replaced them).
    /// Found by the PostgreSQL switchover test: a promote waiting for a demote was replaced by
    /// a plan promoting another replica, the demote finished, the old plan's promote ran, and
    /// two primaries ran at once.
    pub fn pending_starts(&self) -> Vec<&Action> {
        (0..self.actions.len())
            .filter(|i| self.claimed.contains_key(i) && !self.done.contains(i) && !self.failed.contains(i))
            .filter(|i| !self.edges.iter().any(|(a, b)| b == i && self.failed.contains(a)))
            .map(|i| &self.actions[i])
            .filter(|a| matches!(a.kind, ActionKind::Start | ActionKind::Promote))
            .collect()
    }

    /// An action of `node` is claimed and neither done nor failed: it may be running.
    pub fn has_open_claims_of(&self, node: &str) -> bool {
        self.claimed.keys().any(|i| {
            self.actions.get(*i).is_some_and(|a| a.node == node) && !self.done.contains(i) && !self.failed.contains(i)
        })
    }

    /// Actions of `node` that may run now: not finished, and every predecessor done.
    pub fn runnable(&self, node: &str) -> Vec<usize> {
        (0..self.actions.len())
            .filter(|i| self.actions[*i].node == node && self.ready(*i))
            .collect()
    }

    /// Action `i` is not finished and every predecessor is done.
    fn ready(&self, i: usize) -> bool {
        !self.done.contains(&i)
            && !self.failed.contains(&i)
            && self
                .edges
                .iter()
                .filter(|(_, b)| *b == i)
                .all(|(a, _)| self.done.contains(a))
    }
}

impl ClusterState {
    /// Replace the plan (its id grows by one). A start or promote of the replaced plan that may
    /// have run (claimed, ready, not reported) on a node that is not online now did something
    /// unknown: its instance is recorded as failed there (unless recorded there in the role it
    /// was going for), so that no plan starts it elsewhere before that node is fenced, or
    /// stopped there if the node comes back unfenced, or its result or a probe tells. Found by
    /// the simulation: a node partitioned right after starting a VIP was lost, its plan
    /// replaced by a fence plan, and it came back before the fence; its unreported start was
    /// forgotten and the VIP started on a second node. (On an online node the start is still
    /// reported: the controller waits for it, see `Controller::reconcile`, and a plan that races
    /// its claim must not turn it into a restart.)
    pub(super) fn set_plan(
        &mut self,
        actions: &[Action],
        edges: &[(usize, usize)],
        notify: &BTreeMap<String, BTreeMap<String, String>>,
        touched: &mut Touched,
    ) -> Applied {
        if let Some((from, to)) = edges.iter().find(|(a, b)| *a >= actions.len() || *b >= actions.len()) {
            return Err(Outcome::Rejected(RejectReason::PlanEdgeOutOfRange {
                from: *from,
                to: *to,
                actions: actions.len(),
            }));
        }
        let online = |n: &str| self.nodes.get(n).is_some_and(|r| r.liveness.up());
        let unknown: Vec<(String, String, Role)> = self
            .plan
            .in_flight_starts()
            .into_iter()
            .filter(|a| !online(&a.node))
            .map(|a| {
                let goal = if a.kind == ActionKind::Promote {
                    Role::Promoted
                } else {
                    Role::Started
                };
                (a.rsc.clone(), a.node.clone(), goal)
            })
            .collect();
        for (rsc, node, goal) in unknown {
            let r = self.resources.entry(rsc.clone()).or_default();
            if r.running.get(&node) != Some(&goal) {
                r.running.insert(node, Role::Failed);
                touched.resources.insert(rsc);
            }
        }
        self.plan = PlanRecord {
            id: self.plan.id + 1,
            actions: actions.to_vec(),
            edges: edges.to_vec(),
            done: BTreeSet::new(),
            failed: BTreeSet::new(),
            claimed: BTreeMap::new(),
        };
        self.plan_notify = notify.clone();
        Ok(Outcome::Ok)
    }

    /// Refuse a plan made on a state where plan `after_plan` was current with `after_claims`
    /// actions claimed, if the plan or its claims moved on since (see
    /// [`super::Command::SetPlanAfter`]).
    pub(super) fn plan_not_moved_on(&self, after_plan: u64, after_claims: usize) -> Result<(), Outcome> {
        if self.plan.id != after_plan || self.plan.claimed.len() != after_claims {
            return Err(Outcome::Rejected(RejectReason::PlanMovedOn {
                plan_id: after_plan,
                current: self.plan.id,
            }));
        }
        Ok(())
    }

    /// `node` claims `indices` of plan `plan_id` (see [`super::Command::ClaimAction`]).
    pub(super) fn claim(&mut self, plan_id: u64, indices: &[usize], node: &str, incarnation: u64) -> Applied {
        if plan_id != self.plan.id {
            return Err(Outcome::Rejected(RejectReason::StalePlan {
                plan_id,
                current: self.plan.id,
            }));
        }
        let open = |i: &usize| {
            self.plan.actions.get(*i).is_some_and(|a| a.node == node)
                && !self.plan.done.contains(i)
                && !self.plan.failed.contains(i)
        };
        if let Some(i) = indices.iter().find(|i| !open(i)) {
            return Err(Outcome::Rejected(RejectReason::ActionNotOpen {
                index: *i,
                plan_id,
                node: node.to_string(),
            }));
        }
        for i in indices {
            self.plan.claimed.insert(*i, incarnation);
        }
        Ok(Outcome::Ok)
    }

    /// An action of plan `plan_id` reported: the resource (or fencing) record learns it; the
    /// plan's progress only if it is still the current plan's action `index`. A result decided
    /// before its node's current life (see [`super::NodeRecord::online_since_plan`]) cannot
    /// speak for it: a fence of the node is refused, and a stop or demote there leaves the
    /// record alone (the node probed what it runs when it came back; a late "stopped" could
    /// hide a copy it runs now). Starts and promotes still count: they only add what may run.
    /// (`at` is the plan id and the action's index; `how` its outcome, time and reason.)
    pub(super) fn action_result(
        &mut self,
        at: (u64, usize),
        action: &Action,
        how: (CallOutcome, u64, Option<String>),
        touched: &mut Touched,
    ) -> Applied {
        let ((plan_id, index), (outcome, at_ms, reason)) = (at, how);
        let ok = outcome == CallOutcome::Ok;
        if let ActionKind::Notify { .. } = action.kind {
            // A notification changes nothing, and its failure does not stop the plan (as under
            // Pacemaker: the agent was told, or could not be; the operations go on).
            if plan_id == self.plan.id && self.plan.actions.get(index) == Some(action) {
                self.plan.done.insert(index);
            }
            return Ok(Outcome::Ok);
        }
        let decided_before = |node: &str| self.nodes.get(node).is_some_and(|n| n.predates_this_life(plan_id));
        if action.kind == ActionKind::Fence {
            if decided_before(&action.rsc) {
                return Err(Outcome::Rejected(RejectReason::FenceOfAnEarlierLife {
                    target: action.rsc.clone(),
                    plan_id,
                }));
            }
            touched.nodes.insert(action.rsc.clone());
            if ok {
                touched.resources_on(self, &action.rsc);
            }
            self.record_fence(action, ok, at_ms, reason);
        } else if !(matches!(action.kind, ActionKind::Stop | ActionKind::Demote) && decided_before(&action.node)) {
            touched.resources.insert(action.rsc.clone());
            touched.nodes.insert(action.node.clone());
            self.record_result(action, ok, outcome, at_ms, reason);
            if ok
                && matches!(action.kind, ActionKind::Start | ActionKind::Promote)
                && self.unlock(&action.node, &action.rsc)
            {
                touched
                    .attrs
                    .insert((action.node.clone(), super::SHUTDOWN_LOCK_ATTR.to_string()));
            }
        }
        if plan_id == self.plan.id && index < self.plan.actions.len() && self.plan.actions[index] == *action {
            if ok {
                self.plan.done.insert(index);
            } else {
                self.plan.failed.insert(index);
            }
        }
        Ok(Outcome::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::act;
    use super::super::{Command, Liveness};
    use super::*;
    use crate::scheduler::Role;

    /// Seed 17: the leader read the state, a claim of its plan committed, then its next plan
    /// (made without that claim) arrived. `SetPlanAfter` refuses it: the leader plans again on
    /// the state with the claim (and waits for that start).
    #[test]
    fn a_plan_made_before_a_claim_committed_is_refused() {
        let mut s = ClusterState::default();
        let vip_n2 = act(ActionKind::Start, "vip", "n2");
        s.apply(&Command::SetPlan {
            actions: vec![vip_n2],
            edges: vec![],
        });
        let (plan_id, seen) = (s.plan.id, s.plan.claimed.len());
        s.apply(&Command::ClaimAction {
            plan_id,
            indices: vec![0],
            node: "n2".into(),
            incarnation: 1,
        });
        let late = Command::SetPlanAfter {
            actions: vec![act(ActionKind::Start, "vip", "n1")],
            edges: vec![],
            after_plan: plan_id,
            after_claims: seen,
        };
        let before = s.clone();
        assert!(matches!(
            s.apply(&late),
            Outcome::Rejected(RejectReason::PlanMovedOn { .. })
        ));
        assert_eq!(s, before);
        let fresh = Command::SetPlanAfter {
            actions: vec![act(ActionKind::Start, "vip", "n1")],
            edges: vec![],
            after_plan: plan_id,
            after_claims: s.plan.claimed.len(),
        };
        assert_eq!(s.apply(&fresh), Outcome::Ok);
        assert!(!fresh.forwardable(), "a leader's decision");
    }

    #[test]
    fn a_claimed_start_is_in_flight_until_its_result() {
        let mut s = ClusterState::default();
        let start = act(ActionKind::Start, "web", "n2");
        s.apply(&Command::SetPlan {
            actions: vec![
                start.clone(),
                act(ActionKind::Stop, "db", "n1"),
                act(ActionKind::Start, "db", "n3"),
            ],
            edges: vec![(1, 2)],
        });
        assert!(
            s.plan.in_flight_starts().is_empty(),
            "nothing claimed: nothing runs yet"
        );
        let id = s.plan.id;
        let claim = |i: usize, node: &str| Command::ClaimAction {
            plan_id: id,
            indices: vec![i],
            node: node.into(),
            incarnation: 1,
        };
        s.apply(&claim(0, "n2"));
        s.apply(&claim(1, "n1"));
        s.apply(&claim(2, "n3"));
        assert_eq!(
            s.plan.in_flight_starts(),
            vec![&start],
            "a claimed stop is not a start, and db's start waits for the stop"
        );
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 0,
            action: start,
            outcome: CallOutcome::Ok,
            at_ms: 1,
            reason: None,
        });
        assert!(s.plan.in_flight_starts().is_empty(), "reported: no longer in flight");
    }

    #[test]
    fn a_plan_runs_in_edge_order_and_results_update_where_things_run() {
        let mut s = ClusterState::default();
        let a = act(ActionKind::Stop, "web", "n1");
        let b = act(ActionKind::Start, "web", "n2");
        s.apply(&Command::SetPlan {
            actions: vec![a.clone(), b.clone()],
            edges: vec![(0, 1)],
        });
        assert_eq!(s.plan.runnable("n2"), Vec::<usize>::new(), "start waits for the stop");
        assert_eq!(s.plan.runnable("n1"), vec![0]);
        s.resources
            .entry("web".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        let id = s.plan.id;
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 0,
            action: a,
            outcome: CallOutcome::Ok,
            at_ms: 1,
            reason: None,
        });
        assert_eq!(s.plan.runnable("n2"), vec![1]);
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 1,
            action: b.clone(),
            outcome: CallOutcome::Ok,
            at_ms: 2,
            reason: None,
        });
        assert_eq!(s.resources["web"].running.keys().collect::<Vec<_>>(), vec!["n2"]);
        assert!(s.plan.pending_keys().is_empty());
        // a result for an old plan still updates the resource, not the new plan's progress
        s.apply(&Command::SetPlan {
            actions: vec![b.clone()],
            edges: vec![],
        });
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 1,
            action: b,
            outcome: CallOutcome::Ok,
            at_ms: 3,
            reason: None,
        });
        assert!(s.plan.done.is_empty());
    }

    #[test]
    fn only_the_current_plan_can_be_claimed() {
        let mut s = ClusterState::default();
        let a = act(ActionKind::Start, "web", "n1");
        s.apply(&Command::SetPlan {
            actions: vec![a.clone()],
            edges: vec![],
        });
        let old = s.plan.id;
        let claim = |id: u64, node: &str| Command::ClaimAction {
            plan_id: id,
            indices: vec![0],
            node: node.into(),
            incarnation: 7,
        };
        assert!(
            matches!(
                s.apply(&claim(old, "n2")),
                Outcome::Rejected(RejectReason::ActionNotOpen { index: 0, .. })
            ),
            "not n2's action"
        );
        assert_eq!(s.apply(&claim(old, "n1")), Outcome::Ok);
        assert_eq!(s.plan.claimed.get(&0), Some(&7), "the claim names the claiming process");
        s.apply(&Command::SetPlan {
            actions: vec![a.clone()],
            edges: vec![],
        });
        assert!(
            matches!(
                s.apply(&claim(old, "n1")),
                Outcome::Rejected(RejectReason::StalePlan { .. })
            ),
            "a replaced plan cannot be claimed"
        );
        let new = s.plan.id;
        s.apply(&Command::ActionResult {
            plan_id: new,
            index: 0,
            action: a,
            outcome: CallOutcome::Ok,
            at_ms: 1,
            reason: None,
        });
        assert!(
            matches!(s.apply(&claim(new, "n1")), Outcome::Rejected(_)),
            "a finished action cannot be claimed"
        );
    }

    #[test]
    fn a_result_decided_before_its_node_came_back_cannot_speak_for_it() {
        use super::super::test_support::bootstrapped;
        use super::super::Liveness;
        let mut s = bootstrapped(&["n1", "n2", "n3"]);
        let live = |l: Liveness| Command::SetLiveness {
            name: "n1".into(),
            liveness: l,
            at_ms: 1,
        };
        s.apply(&live(Liveness::Online));
        s.apply(&live(Liveness::Offline));
        // A deposed leader's plan fenced n1; n1 rebooted and is back before the result commits.
        let fence = act(ActionKind::Fence, "n1", "n2");
        s.apply(&Command::SetPlan {
            actions: vec![fence.clone()],
            edges: vec![],
        });
        let old = s.plan.id;
        s.apply(&live(Liveness::Online));
        s.resources
            .entry("vip".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        let result = |plan_id: u64, action: Action, outcome: CallOutcome| Command::ActionResult {
            plan_id,
            index: 0,
            action,
            outcome,
            at_ms: 2,
            reason: None,
        };
        assert!(matches!(
            s.apply(&result(old, fence.clone(), CallOutcome::Ok)),
            Outcome::Rejected(RejectReason::FenceOfAnEarlierLife { .. })
        ));
        assert!(!s.nodes["n1"].fence.fenced, "its next loss needs a fence of its own");
        assert!(s.plan.done.is_empty(), "the old plan does not move on");
        assert!(s.resources["vip"].running.contains_key("n1"));
        // ... even when it arrives after n1 was lost again.
        s.apply(&live(Liveness::Offline));
        s.apply(&result(old, fence.clone(), CallOutcome::Ok));
        assert!(!s.nodes["n1"].fence.fenced);
        // A late "stopped" from before its return does not hide what it runs now; a start counts.
        s.apply(&live(Liveness::Online));
        s.apply(&result(old, act(ActionKind::Stop, "vip", "n1"), CallOutcome::Ok));
        assert!(s.resources["vip"].running.contains_key("n1"));
        s.apply(&result(old, act(ActionKind::Start, "web", "n1"), CallOutcome::Ok));
        assert!(s.resources["web"].running.contains_key("n1"));
        // A fence decided in this life counts (a failed stop fences an online node).
        s.apply(&Command::SetPlan {
            actions: vec![fence.clone()],
            edges: vec![],
        });
        assert_eq!(s.apply(&result(s.plan.id, fence, CallOutcome::Ok)), Outcome::Ok);
        assert!(s.nodes["n1"].fence.fenced);
        assert!(!s.resources["vip"].running.contains_key("n1"));
    }

    #[test]
    fn a_replaced_plan_leaves_its_unreported_starts_on_lost_nodes_recorded_as_failed() {
        let mut s = super::super::test_support::bootstrapped(&["n1", "n2", "n3", "n4"]);
        let live = |n: &str, l: Liveness| Command::SetLiveness {
            name: n.into(),
            liveness: l,
            at_ms: 1,
        };
        for n in ["n1", "n2", "n3", "n4"] {
            s.apply(&live(n, Liveness::Online));
        }
        let (vip, db, web) = (
            act(ActionKind::Start, "vip", "n2"),
            act(ActionKind::Promote, "db", "n2"),
            act(ActionKind::Start, "web", "n3"),
        );
        s.apply(&Command::SetPlan {
            actions: vec![
                vip.clone(),
                db,
                web,
                act(ActionKind::Start, "cache", "n1"),
                act(ActionKind::Start, "mail", "n4"),
            ],
            edges: vec![],
        });
        let id = s.plan.id;
        s.resources
            .entry("db".into())
            .or_default()
            .running
            .insert("n2".into(), Role::Started);
        for (i, node) in [(0, "n2"), (1, "n2"), (2, "n3"), (4, "n4")] {
            s.apply(&Command::ClaimAction {
                plan_id: id,
                indices: vec![i],
                node: node.into(),
                incarnation: 1,
            });
        }
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 2,
            action: act(ActionKind::Start, "web", "n3"),
            outcome: CallOutcome::Ok,
            at_ms: 1,
            reason: None,
        });
        s.apply(&live("n2", Liveness::Offline));
        let mut touched = Touched::default();
        s.apply_touching(
            &Command::SetPlan {
                actions: vec![],
                edges: vec![],
            },
            &mut touched,
        );
        assert_eq!(
            s.resources["vip"].running["n2"],
            Role::Failed,
            "may run: stop it there first"
        );
        assert_eq!(s.resources["db"].running["n2"], Role::Failed, "may be primary");
        assert_eq!(s.resources["web"].running["n3"], Role::Started, "reported");
        assert!(!s.resources.contains_key("cache"), "never claimed: never ran");
        assert!(
            !s.resources.contains_key("mail"),
            "n4 is online: its result still comes"
        );
        assert!(touched.resources.contains("vip") && touched.resources.contains("db"));
        // Its late result still counts.
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 0,
            action: vip,
            outcome: CallOutcome::Ok,
            at_ms: 2,
            reason: None,
        });
        assert_eq!(s.resources["vip"].running["n2"], Role::Started);
    }

    #[test]
    fn plan_edges_must_name_actions() {
        let mut s = ClusterState::default();
        assert!(matches!(
            s.apply(&Command::SetPlan {
                actions: vec![],
                edges: vec![(0, 1)]
            }),
            Outcome::Rejected(RejectReason::PlanEdgeOutOfRange {
                from: 0,
                to: 1,
                actions: 0
            })
        ));
    }
}
