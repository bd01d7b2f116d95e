//! The plan being executed: the scheduler's actions, their ordering and their progress; a new
//! plan replacing the old one, nodes claiming their actions through the log, and reported
//! results (which also update what runs where, or the fencing records).

use super::{Applied, CallOutcome, ClusterState, Outcome, RejectReason, Touched};
use crate::scheduler::{Action, ActionKind};
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
    /// Replace the plan (its id grows by one).
    pub(super) fn set_plan(&mut self, actions: &[Action], edges: &[(usize, usize)]) -> Applied {
        if let Some((from, to)) = edges.iter().find(|(a, b)| *a >= actions.len() || *b >= actions.len()) {
            return Err(Outcome::Rejected(RejectReason::PlanEdgeOutOfRange {
                from: *from,
                to: *to,
                actions: actions.len(),
            }));
        }
        self.plan = PlanRecord {
            id: self.plan.id + 1,
            actions: actions.to_vec(),
            edges: edges.to_vec(),
            done: BTreeSet::new(),
            failed: BTreeSet::new(),
            claimed: BTreeMap::new(),
        };
        Ok(Outcome::Ok)
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

    /// An action of plan `plan_id` reported: the resource (or fencing) record always learns
    /// it; the plan's progress only if it is still the current plan's action `index`.
    /// (`at` is the plan id and the action's index; `how` its outcome, time and reason.)
    pub(super) fn action_result(
        &mut self,
        at: (u64, usize),
        action: &Action,
        how: (CallOutcome, u64, Option<String>),
        touched: &mut Touched,
    ) -> Outcome {
        let ((plan_id, index), (outcome, at_ms, reason)) = (at, how);
        let ok = outcome == CallOutcome::Ok;
        if action.kind == ActionKind::Fence {
            touched.nodes.insert(action.rsc.clone());
            if ok {
                touched.resources_on(self, &action.rsc);
            }
            self.record_fence(action, ok, at_ms, reason);
        } else {
            touched.resources.insert(action.rsc.clone());
            touched.nodes.insert(action.node.clone());
            self.record_result(action, ok, outcome, at_ms, reason);
        }
        if plan_id == self.plan.id && index < self.plan.actions.len() && self.plan.actions[index] == *action {
            if ok {
                self.plan.done.insert(index);
            } else {
                self.plan.failed.insert(index);
            }
        }
        Outcome::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::act;
    use super::super::Command;
    use super::*;
    use crate::scheduler::Role;

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
