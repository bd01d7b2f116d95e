//! The committed plan, executed on this node: claim its actions addressed here in one write,
//! run each once its predecessors are done (a fence through the fencing levels, anything else
//! through its agent), and report every result through the Raft log.

use super::{agent_action, call_with, outcome_of, report};
use crate::agents::Runner;
use crate::mesh::unix_ms;
use crate::node::Node;
use phalanx_core::events::CallReport;
use phalanx_core::scheduler::{Action, ActionKind, Role};
use phalanx_core::state::CallOutcome;
use phalanx_core::{Command, NodeRecord};
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
    /// The fences this node carried out, by target: the plan, and when and how it succeeded
    /// (see [`already_fenced`]).
    fenced: Mutex<BTreeMap<String, (u64, u64, String)>>,
    /// What this node's own plan actions left running here (instance → role), whether or not
    /// the replica has learned it yet: the no-quorum policy stops it too (see `no_quorum`).
    started_here: Mutex<BTreeMap<String, Role>>,
}

impl PlanProgress {
    /// What this node's own plan actions left running here.
    pub(super) fn started_here(&self) -> BTreeMap<String, Role> {
        locked(&self.started_here).clone()
    }

    /// Record what a successful action of this node left running here.
    fn ran(&self, action: &Action) {
        let mut here = locked(&self.started_here);
        match action.kind {
            ActionKind::Start | ActionKind::Demote => {
                here.insert(action.rsc.clone(), Role::Started);
            }
            ActionKind::Promote => {
                here.insert(action.rsc.clone(), Role::Promoted);
            }
            ActionKind::Stop => {
                here.remove(&action.rsc);
            }
            ActionKind::Fence | ActionKind::Notify { .. } => {}
        }
    }
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
            // One action of an instance at a time, its result reported before the next (see
            // `Runner::instance_lock`); a fence is no agent call.
            let lock = runner2.instance_lock(&action.rsc);
            let _busy = match action.kind {
                ActionKind::Fence => None,
                _ => Some(lock.lock().await),
            };
            // The wait for the instance (a hung monitor holds it until its timeout) may have
            // outlasted this node's quorum or the plan: act only if it still may, else leave the
            // action to be run again once it may (the seeded simulation caught a start run
            // 418 ms after its node had lost quorum).
            let current = node2.with_state(|sm| sm.cluster.plan.id == id);
            if !node2.quorate() || !current {
                tracing::info!(rsc = %action.rsc, kind = ?action.kind, quorate = node2.quorate(), current,
                    "plan action not run: quorum or the plan changed while it waited for the instance");
                locked(&progress2.running).remove(&(id, i));
                return;
            }
            tracing::info!(rsc = %action.rsc, kind = ?action.kind, reason = %action.reason, "running plan action");
            let (outcome, reason, at_ms, call) = run_action(&node2, &runner2, &progress2, id, &action).await;
            if outcome == CallOutcome::Ok {
                progress2.ran(&action);
            } else {
                tracing::warn!(rsc = %action.rsc, kind = ?action.kind, ?reason, "plan action failed");
            }
            let cmd = Command::ActionResult {
                plan_id: id,
                index: i,
                action,
                outcome,
                at_ms: at_ms.unwrap_or_else(unix_ms),
                reason,
            };
            // A notification's failure does not hold the plan (see `ClusterState::action_result`).
            let done = outcome == CallOutcome::Ok || matches!(cmd_kind(&cmd), Some(ActionKind::Notify { .. }));
            // Keep trying to report: the result is a fact the cluster must learn.
            for _ in 0..50 {
                if node2.write_reported(cmd.clone(), call.clone()).await.is_ok() {
                    locked(&progress2.reported).insert((id, i), done);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            locked(&progress2.running).remove(&(id, i));
            progress2.wake.notify_one();
        });
    }
}

/// The kind of the action an `ActionResult` reports.
fn cmd_kind(cmd: &Command) -> Option<ActionKind> {
    match cmd {
        Command::ActionResult { action, .. } => Some(action.kind),
        _ => None,
    }
}

/// What a plan action of a notify clone carries besides the clone meta: the transition's
/// `notify_*` lists (replicated with the plan, the same on every node), and for a notification
/// which one it is. Empty for anything else.
fn plan_meta(node: &Node, action: &Action) -> BTreeMap<String, String> {
    let config = node.config();
    let Some(prim) = config.resources.primitive_of(&action.rsc) else {
        return BTreeMap::new();
    };
    let lists = node.with_state(|sm| sm.cluster.plan_notify.get(&prim.id).cloned());
    match (lists, action.kind) {
        (Some(l), ActionKind::Notify { when, op }) => phalanx_core::notify::notification(&l, when, op),
        (Some(l), _) => l,
        (None, _) => BTreeMap::new(),
    }
}

/// Run one plan action (of plan `plan_id`): a fence through the fencing levels, anything else
/// through its agent. For a fence, the reason of a success names the level and devices that
/// did it, and the time it is reported with is when it was done (None: now). The call's report
/// (exit code, duration, stderr) goes to the event history.
async fn run_action(
    node: &Node,
    runner: &Runner,
    progress: &PlanProgress,
    plan_id: u64,
    action: &Action,
) -> (CallOutcome, Option<String>, Option<u64>, Option<CallReport>) {
    if action.kind == ActionKind::Fence {
        let target = &action.rsc;
        let delay = node.with_state(|sm| sm.cluster.fence_delay(&node.config().cluster, target));
        if !delay.is_zero() {
            tracing::info!(%target, ?delay, "priority fence delay: the target runs resources");
            tokio::time::sleep(delay).await;
        }
        match already_fenced(node, progress, target, plan_id) {
            Moot::No => {}
            Moot::Fenced { at_ms, by } => {
                tracing::info!(%target, %by, "not fencing again: fenced since this fence was planned");
                return (CallOutcome::Ok, Some(by), Some(at_ms), None);
            }
            Moot::Back => {
                // The cluster refuses this result anyway (a fence of an earlier life).
                tracing::warn!(%target, "not fencing: it came back online after this fence was planned");
                let why = format!("{target} came back online after this fence was planned");
                return (CallOutcome::Soft, Some(why), None, None);
            }
        }
        let seed = node.incarnation ^ unix_ms();
        let began = std::time::Instant::now();
        let result = node.fencer.fence(target, seed).await;
        let took = Some(CallReport::new(None, began.elapsed().as_millis() as u64, ""));
        return match result {
            Ok(by) => {
                let at_ms = unix_ms();
                locked(&progress.fenced).insert(target.clone(), (plan_id, at_ms, by.clone()));
                (CallOutcome::Ok, Some(by), Some(at_ms), took)
            }
            Err(e) => (CallOutcome::Soft, Some(e.to_string()), None, took),
        };
    }
    let meta = plan_meta(node, action);
    let call = call_with(node, runner, &action.rsc, agent_action(action.kind), None, &meta);
    match with_notes(node, runner, &action.rsc, call).await {
        Some(r) => (outcome_of(&r), r.exit_reason.clone(), None, Some(report(&r))),
        None => (
            CallOutcome::Fatal,
            Some(format!("{} is not in this node's config", action.rsc)),
            None,
            None,
        ),
    }
}

/// Run `call` (an action of instance `rsc`), publishing what the agent says it is doing (see
/// `agents::Notes`) as the node attribute `progress_attr(rsc)` while it runs, cleared after.
/// The publishing runs beside the call, never in its way: each write is bounded (a node
/// without a leader cannot commit one), and a write still pending when the call ends is
/// dropped.
async fn with_notes<T>(node: &Node, runner: &Runner, rsc: &str, call: impl std::future::Future<Output = T>) -> T {
    const BOUND: Duration = Duration::from_secs(2);
    let key = phalanx_core::resources::progress_attr(rsc);
    let set = |value: Option<String>| Command::SetAttr {
        name: node.name.clone(),
        key: key.clone(),
        value,
    };
    let mut notes = runner.notes.subscribe();
    let shown = std::sync::atomic::AtomicBool::new(false);
    let publish = async {
        let mut last: Option<String> = None;
        while notes.changed().await.is_ok() {
            let note = notes.borrow_and_update().get(rsc).cloned();
            if note.is_some() && note != last {
                shown.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Ok(Err(e)) = tokio::time::timeout(BOUND, node.write(set(note.clone()))).await {
                    tracing::debug!(%rsc, error = ?e, "could not publish an agent's progress");
                }
                last = note;
            }
        }
    };
    tokio::pin!(call);
    let out = tokio::select! {
        out = &mut call => out,
        // The notes' sender is gone (the runner dropped): nothing more to publish.
        () = publish => call.await,
    };
    if shown.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(Err(e)) = tokio::time::timeout(BOUND, node.write(set(None))).await {
            tracing::debug!(%rsc, error = ?e, "could not clear an agent's progress");
        }
    }
    out
}

/// Why a planned fence is not to be carried out now.
#[derive(Debug, PartialEq, Eq)]
enum Moot {
    /// It is to be carried out.
    No,
    /// A fence done since the plan was made already confirmed the target down: when and how it
    /// succeeded, reported again (the fencing record stays as it was).
    Fenced { at_ms: u64, by: String },
    /// The target came back online after the plan was made: the fence was for its earlier
    /// life, and the cluster would refuse its result (see `online_since_plan`).
    Back,
}

/// Whether fencing `target` for plan `plan_id` is still to be done (see [`moot`]).
fn already_fenced(node: &Node, progress: &PlanProgress, target: &str, plan_id: u64) -> Moot {
    let ours = locked(&progress.fenced).get(target).cloned();
    node.with_state(|sm| moot(sm.cluster.nodes.get(target), ours, plan_id))
}

/// Whether a fence of plan `plan_id` is still to be done, given the target's record in the
/// replica (`rec`) and the last fence of it this node carried out (`ours`: its plan, when and
/// how). A plan replaced while its fence was claimed or running is followed by one that fences
/// the same lost node again (the first result was not recorded when it was made); carried out
/// after the first, the second fence power-cycles a node that may be booting back already
/// (found under load: `phalanx demo` restarts a node as soon as its fence is recorded, and a
/// second fence of the same loss killed it). Fenced already: the replica records the target
/// fenced since its loss (no plan fences a node recorded so: that fence was planned before the
/// record); or this node fenced it for an earlier plan and the replica, which holds every entry
/// that led to this plan, has not seen it online since (that result may not be applied here
/// yet). A node that must be fenced although online (a failed stop) is fenced every time.
fn moot(rec: Option<&NodeRecord>, ours: Option<(u64, u64, String)>, plan_id: u64) -> Moot {
    let Some(rec) = rec else {
        return Moot::No;
    };
    if rec.fence.reason.is_some() {
        return Moot::No;
    }
    if rec.predates_this_life(plan_id) {
        return Moot::Back;
    }
    if rec.fence.fenced {
        return Moot::Fenced {
            at_ms: rec.fence.fenced_at_ms.unwrap_or_else(unix_ms),
            by: rec.fence.fenced_by.clone().unwrap_or_else(|| "fenced already".into()),
        };
    }
    match ours {
        Some((fenced_for, at_ms, by))
            if fenced_for < plan_id && !rec.liveness.up() && rec.online_since_plan < fenced_for =>
        {
            Moot::Fenced { at_ms, by }
        }
        _ => Moot::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_core::Liveness;

    /// n3, online since plan 2 was current, then lost; not fenced yet.
    fn lost() -> NodeRecord {
        NodeRecord {
            id: 3,
            links: vec![],
            api: String::new(),
            standby: false,
            liveness: Liveness::Offline,
            liveness_since_ms: 100,
            attrs: Default::default(),
            maintenance: false,
            fence: Default::default(),
            online_since_plan: 2,
        }
    }

    fn fenced(at_ms: u64, by: &str) -> Moot {
        Moot::Fenced { at_ms, by: by.into() }
    }

    #[test]
    fn a_lost_node_not_fenced_yet_is_fenced() {
        assert_eq!(moot(Some(&lost()), None, 5), Moot::No);
        assert_eq!(moot(None, None, 5), Moot::No, "unknown to this replica: fence");
    }

    #[test]
    fn a_fence_planned_before_the_first_one_was_recorded_is_not_carried_out_again() {
        // Plan 5 fenced n3 and recorded it; plan 6, made before that record, fences it again.
        let mut rec = lost();
        rec.fence.fenced = true;
        rec.fence.fenced_at_ms = Some(200);
        rec.fence.fenced_by = Some("level 1: power".into());
        assert_eq!(moot(Some(&rec), None, 6), fenced(200, "level 1: power"));
        // This node did it and its replica has not applied the result yet: the same.
        let ours = Some((5, 200, "level 1: power".to_string()));
        assert_eq!(moot(Some(&lost()), ours.clone(), 6), fenced(200, "level 1: power"));
        // ... but not for the plan it was done for, nor an earlier one (a retry there is the
        // executor's own business), and not once the node came back since.
        assert_eq!(moot(Some(&lost()), ours.clone(), 5), Moot::No);
        let mut back_and_lost_again = lost();
        back_and_lost_again.online_since_plan = 5;
        assert_eq!(moot(Some(&back_and_lost_again), ours.clone(), 6), Moot::No);
        let mut online = lost();
        online.liveness = Liveness::Online;
        online.online_since_plan = 5;
        assert_eq!(
            moot(Some(&online), ours, 7),
            Moot::No,
            "online again: a new fence is real"
        );
    }

    #[test]
    fn a_fence_planned_before_its_target_came_back_is_moot() {
        let mut rec = lost();
        rec.liveness = Liveness::Online;
        rec.online_since_plan = 6;
        assert_eq!(moot(Some(&rec), None, 6), Moot::Back);
        assert_eq!(moot(Some(&rec), None, 5), Moot::Back);
    }

    #[test]
    fn a_node_whose_stop_failed_is_fenced_every_time() {
        let mut rec = lost();
        rec.liveness = Liveness::Online;
        rec.fence.reason = Some("stop of web failed".into());
        assert_eq!(moot(Some(&rec), Some((5, 200, "x".into())), 6), Moot::No);
    }
}
