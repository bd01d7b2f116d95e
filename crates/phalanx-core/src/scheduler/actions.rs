//! From placement to actions: for every managed unit, its primitives' current nodes compared
//! with their targets, giving starts, stops, moves, recoveries and restarts (with the reasons
//! the explanation gives) and their summary lines. Clones are handled in `clone_actions`, the
//! edges between units in `ordering`.

use super::clone_actions::{clone_diff, instance_diff};
use super::context::{Ctx, Unit};
use super::explain::{reason_for, why_not};
use super::{ordering, Action, ActionKind, Explain, Plan};
use crate::model::{score_str, Role};
use crate::resources::OnFail;
use std::collections::BTreeMap;

/// The actions of one unit as they are pushed. A primitive belongs to exactly one unit, so an
/// action can only repeat within its unit's actions: duplicates are looked for from `from` on.
pub(super) struct UnitActions<'p> {
    pub plan: &'p mut Plan,
    from: usize,
    pub starts: Vec<usize>,
    pub stops: Vec<usize>,
}

impl<'p> UnitActions<'p> {
    fn new(plan: &'p mut Plan) -> UnitActions<'p> {
        UnitActions {
            from: plan.actions.len(),
            plan,
            starts: Vec::new(),
            stops: Vec::new(),
        }
    }

    /// The index of the action, pushed unless the unit has it already.
    pub(super) fn push(&mut self, kind: ActionKind, rsc: &str, node: &str, reason: &str) -> usize {
        if let Some(i) = self.plan.actions[self.from..]
            .iter()
            .position(|a| a.kind == kind && a.rsc == rsc && a.node == node)
        {
            return self.from + i;
        }
        self.plan.actions.push(Action {
            kind,
            rsc: rsc.to_string(),
            node: node.to_string(),
            reason: reason.to_string(),
        });
        self.plan.actions.len() - 1
    }

    pub(super) fn start(&mut self, rsc: &str, node: &str, reason: &str) -> usize {
        let i = self.push(ActionKind::Start, rsc, node, reason);
        self.starts.push(i);
        i
    }

    pub(super) fn stop(&mut self, rsc: &str, node: &str, reason: &str) -> usize {
        let i = self.push(ActionKind::Stop, rsc, node, reason);
        self.stops.push(i);
        i
    }

    /// A stop then a start on one node, the stop first.
    pub(super) fn restart(&mut self, rsc: &str, node: &str, reason: &str) {
        let s = self.push(ActionKind::Stop, rsc, node, reason);
        let st = self.push(ActionKind::Start, rsc, node, reason);
        self.plan.edges.push((s, st));
        self.stops.push(s);
        self.starts.push(st);
    }

    pub(super) fn say(&mut self, line: String) {
        self.plan.summary.push(line);
    }
}

/// Turn current → target into actions, edges and summary lines. `targets` and `explains` are
/// aligned with `units`.
pub(super) fn diff(ctx: &Ctx, units: &[Unit], targets: &[Vec<(String, Role)>], explains: &[Explain], plan: &mut Plan) {
    for ((unit, slots), explain) in units.iter().zip(targets).zip(explains) {
        if explain.unmanaged {
            continue;
        }
        let prims = ctx.primitives(unit.id());
        let tgt: &BTreeMap<String, Role> = &slots.iter().cloned().collect();
        let is_clone = matches!(unit, Unit::Clone(_));
        let mut acts = UnitActions::new(plan);
        for p in prims {
            if !is_clone {
                single_diff(ctx, p, tgt, explain, &mut acts);
            } else if let Some(count) = ctx.cfg.resources.instance_count(p) {
                let on_fail = ctx.cfg.resources.primitives[p.as_str()].on_fail;
                instance_diff(ctx, p, count, on_fail, slots, explain, &mut acts);
            } else {
                clone_diff(ctx, p, tgt, explain, &mut acts);
            }
        }
        let UnitActions { starts, stops, .. } = acts;
        if !is_clone {
            ordering::stops_before_starts(plan, &starts, &stops);
        }
        if let Unit::Group(_) = unit {
            ordering::group_order(plan, prims, &starts, &stops);
        }
    }
    ordering::order_constraints(ctx, plan);
    plan.edges.sort();
    plan.edges.dedup();
}

/// A primitive that runs once (not cloned): extra copies stopped first (e.g. after a healed
/// partition), then started, stopped, moved, recovered or restarted as its target says.
fn single_diff(ctx: &Ctx, p: &str, tgt: &BTreeMap<String, Role>, explain: &Explain, acts: &mut UnitActions) {
    let cur = &ctx.state(p).running;
    let on_fail = ctx.cfg.resources.primitives[p].on_fail;
    let online = |n: &str| ctx.node(n).online;
    let to = tgt.keys().next().cloned();
    // Multiple-active: keep the copy on the target if there is one, stop every other copy
    // before anything starts.
    let from = match &to {
        Some(t) if cur.contains_key(t) => Some(t.clone()),
        _ => cur.keys().next().cloned(),
    };
    for extra in cur.keys().filter(|n| Some(*n) != from.as_ref()) {
        if online(extra) {
            let reason = format!(
                "active on several nodes: only one copy may run (keeping {})",
                from.clone().unwrap_or_default()
            );
            acts.say(format!("Stop {p} ({extra}): {reason}"));
            acts.stop(p, extra, &reason);
        }
    }
    let failed_here = from.as_ref().map(|f| cur[f] == Role::Failed).unwrap_or(false);
    match (&from, &to) {
        (None, None) => {
            if explain.verdict.starts_with("cannot run") {
                acts.say(format!(
                    "Cannot run {p}: {}",
                    explain.verdict.trim_start_matches("cannot run anywhere: ")
                ));
            }
        }
        (None, Some(t)) => {
            let reason = reason_for(explain, t);
            acts.say(format!("Start {p} ({t}): {reason}"));
            acts.start(p, t, &reason);
        }
        (Some(f), None) => {
            let reason = why_not(explain, f);
            if online(f) {
                acts.say(format!("Stop {p} ({f}): {reason}"));
                acts.stop(p, f, &reason);
            } else {
                acts.say(format!(
                    "Lost {p} ({f}): {f} lost and it cannot run elsewhere: {}",
                    explain.verdict.trim_start_matches("cannot run anywhere: ")
                ));
            }
        }
        (Some(f), Some(t)) if f == t => {
            if failed_here && on_fail != OnFail::Ignore {
                let reason = "monitor failed".to_string();
                acts.say(format!("Restart {p} ({f}): {reason}"));
                acts.restart(p, f, &reason);
            }
        }
        (Some(f), Some(t)) => {
            let reason = move_reason(explain, f, t);
            let start = acts.start(p, t, &reason);
            if online(f) {
                acts.say(format!("Move {p} ({f} -> {t}): {reason}"));
                let stop = acts.stop(p, f, &reason);
                acts.plan.edges.push((stop, start));
            } else {
                acts.say(format!("Recover {p} ({f} -> {t}): {reason}"));
            }
        }
    }
}

/// Why a unit moves from `f` to `t`: why it may not stay, or how the scores compare.
fn move_reason(explain: &Explain, f: &str, t: &str) -> String {
    let leaving = explain.scores.get(f).map(|(s, _)| *s < 0).unwrap_or(false);
    if leaving {
        why_not(explain, f)
    } else {
        let sf = explain.scores.get(f).map(|x| x.0).unwrap_or(0);
        let st = explain.scores.get(t).map(|x| x.0).unwrap_or(0);
        format!(
            "{} on {f} < {} on {t} ({})",
            score_str(sf),
            score_str(st),
            reason_for(explain, t)
        )
    }
}
