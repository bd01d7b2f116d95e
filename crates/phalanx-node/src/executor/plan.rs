//! The committed plan, executed on this node: claim its actions addressed here in one write,
//! run each once its predecessors are done (a fence through the fencing levels, anything else
//! through its agent), and report every result through the Raft log.

use super::{agent_action, call, outcome_of};
use crate::agents::Runner;
use crate::mesh::unix_ms;
use crate::node::Node;
use phalanx_core::scheduler::{Action, ActionKind};
use phalanx_core::state::CallOutcome;
use phalanx_core::Command;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What this node's executor knows of the plan beyond its replica.
#[derive(Default)]
pub(super) struct PlanProgress {
    /// Actions whose claim was sent (in flight or accepted), as (plan id, index).
    claiming: Mutex<BTreeSet<(u64, usize)>>,
    /// Actions running here.
    running: Mutex<BTreeSet<(u64, usize)>>,
    /// Actions whose result this node has committed, and whether they succeeded (the replica
    /// may not have applied it yet).
    reported: Mutex<BTreeMap<(u64, usize), bool>>,
    /// Wakes the executor when an action of this node finishes.
    pub(super) wake: tokio::sync::Notify,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Claim this node's open actions of the current plan (one write for all of them, as soon as
/// the plan appears), and run each claimed action whose predecessors are done. A result this
/// node committed counts as done at once, so its next action starts without waiting for the
/// replica to apply it: only hand-overs between nodes wait for the log.
pub(super) fn run_plan(
    node: &Arc<Node>,
    runner: &Arc<Runner>,
    plan: &phalanx_core::state::PlanRecord,
    progress: &Arc<PlanProgress>,
) {
    let id = plan.id;
    locked(&progress.claiming).retain(|(p, _)| *p == id);
    let mut view = plan.clone();
    {
        let mut reported = locked(&progress.reported);
        reported.retain(|(p, _), _| *p == id);
        for ((_, i), ok) in reported.iter() {
            if *ok {
                view.done.insert(*i)
            } else {
                view.failed.insert(*i)
            };
        }
    }
    // Claim what is open and not claimed by this process yet.
    let open: Vec<usize> = (0..view.actions.len())
        .filter(|i| view.actions[*i].node == node.name && !view.done.contains(i) && !view.failed.contains(i))
        .filter(|i| view.claimed.get(i) != Some(&node.incarnation))
        .filter(|i| !locked(&progress.claiming).contains(&(id, *i)))
        .collect();
    if !open.is_empty() {
        locked(&progress.claiming).extend(open.iter().map(|i| (id, *i)));
        let (node2, progress2) = (node.clone(), progress.clone());
        node.spawn(async move {
            let claim = Command::ClaimAction {
                plan_id: id,
                indices: open.clone(),
                node: node2.name.clone(),
                incarnation: node2.incarnation,
            };
            if !matches!(node2.write(claim).await, Ok(phalanx_core::Outcome::Ok)) {
                // Replaced, finished or unreachable: look again at the next state.
                let mut c = locked(&progress2.claiming);
                for i in &open {
                    c.remove(&(id, *i));
                }
            }
        });
    }
    for i in view.runnable(&node.name) {
        if view.claimed.get(&i) != Some(&node.incarnation) || !locked(&progress.running).insert((id, i)) {
            continue;
        }
        let action: Action = view.actions[i].clone();
        let (node2, runner2, progress2) = (node.clone(), runner.clone(), progress.clone());
        node.spawn(async move {
            tracing::info!(rsc = %action.rsc, kind = ?action.kind, reason = %action.reason, "running plan action");
            let (outcome, reason) = run_action(&node2, &runner2, &action).await;
            if outcome != CallOutcome::Ok {
                tracing::warn!(rsc = %action.rsc, kind = ?action.kind, ?reason, "plan action failed");
            }
            let cmd = Command::ActionResult {
                plan_id: id,
                index: i,
                action,
                outcome,
                at_ms: unix_ms(),
                reason,
            };
            // Keep trying to report: the result is a fact the cluster must learn.
            for _ in 0..50 {
                if node2.write(cmd.clone()).await.is_ok() {
                    locked(&progress2.reported).insert((id, i), outcome == CallOutcome::Ok);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            locked(&progress2.running).remove(&(id, i));
            progress2.wake.notify_one();
        });
    }
}

/// Run one plan action: a fence through the fencing levels, anything else through its agent.
/// For a fence, the reason of a success names the level and devices that did it.
async fn run_action(node: &Node, runner: &Runner, action: &Action) -> (CallOutcome, Option<String>) {
    if action.kind == ActionKind::Fence {
        let delay = node.with_state(|sm| sm.cluster.fence_delay(&node.config.cluster, &action.rsc));
        if !delay.is_zero() {
            tracing::info!(target = %action.rsc, ?delay, "priority fence delay: the target runs resources");
            tokio::time::sleep(delay).await;
        }
        let seed = node.incarnation ^ unix_ms();
        return match node.fencer.fence(&action.rsc, seed).await {
            Ok(by) => (CallOutcome::Ok, Some(by)),
            Err(e) => (CallOutcome::Soft, Some(e.to_string())),
        };
    }
    match call(node, runner, &action.rsc, agent_action(action.kind), None).await {
        Some(r) => (outcome_of(&r), r.exit_reason.clone()),
        None => (
            CallOutcome::Fatal,
            Some(format!("{} is not in this node's config", action.rsc)),
        ),
    }
}
