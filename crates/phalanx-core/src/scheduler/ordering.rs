//! The ordering edges between actions: never two copies of a primitive (its stops before its
//! starts), a group's members started in order and stopped in reverse, the ordering
//! constraints (start(first) → start(then), stop(then) → stop(first)), and colocations with a
//! primary (promote → start there, stop → demote).

use super::context::Ctx;
use super::{ActionKind, Plan};
use crate::resources::Constraint;
use std::collections::HashMap;

/// Never two copies: every stop of a primitive precedes every start of it.
pub(super) fn stops_before_starts(plan: &mut Plan, starts: &[usize], stops: &[usize]) {
    for st in stops {
        for sa in starts {
            if plan.actions[*st].rsc == plan.actions[*sa].rsc {
                plan.edges.push((*st, *sa));
            }
        }
    }
}

/// Group order: start members in order, stop in reverse, and all stops of a moving group
/// before its first start.
pub(super) fn group_order(plan: &mut Plan, members: &[String], starts: &[usize], stops: &[usize]) {
    let pos = |i: &usize| members.iter().position(|p| *p == plan.actions[*i].rsc).unwrap_or(0);
    let mut s = starts.to_vec();
    s.sort_by_key(pos);
    let mut t = stops.to_vec();
    t.sort_by_key(|i| std::cmp::Reverse(pos(i)));
    for w in s.windows(2) {
        plan.edges.push((w[0], w[1]));
    }
    for w in t.windows(2) {
        plan.edges.push((w[0], w[1]));
    }
    if let (Some(first_start), false) = (s.first(), t.is_empty()) {
        for st in &t {
            plan.edges.push((*st, *first_start));
        }
    }
}

/// Ordering constraints: start(first) -> start(then); stop(then) -> stop(first). Actions are
/// indexed by resource once, so C constraints cost O(C + actions), not O(C × actions).
pub(super) fn order_constraints(ctx: &Ctx, plan: &mut Plan) {
    let mut by_rsc: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, a) in plan.actions.iter().enumerate() {
        // An instance ("web:0") counts as its primitive.
        let rsc = ctx
            .cfg
            .resources
            .primitive_of(&a.rsc)
            .map(|p| p.id.as_str())
            .unwrap_or(&a.rsc);
        by_rsc.entry(rsc).or_default().push(i);
    }
    let find = |kind: ActionKind, set: &[String]| -> Vec<usize> {
        set.iter()
            .flat_map(|r| by_rsc.get(r.as_str()).into_iter().flatten())
            .copied()
            .filter(|i| plan.actions[*i].kind == kind)
            .collect()
    };
    let mut edges = Vec::new();
    for k in &ctx.cfg.resources.constraints {
        // With a primary: start once it is promoted there, stop before it is demoted (a write
        // VIP never points at a replica).
        if let Constraint::Colocation {
            rsc,
            with,
            score,
            with_promoted: true,
        } = k
        {
            if *score <= 0 {
                continue;
            }
            let a = ctx.primitives(ctx.unit_of(with));
            let b = ctx.primitives(ctx.unit_of(rsc));
            for x in find(ActionKind::Promote, a) {
                for y in find(ActionKind::Start, b) {
                    if plan.actions[x].node == plan.actions[y].node {
                        edges.push((x, y));
                    }
                }
            }
            for x in find(ActionKind::Stop, b) {
                for y in find(ActionKind::Demote, a) {
                    edges.push((x, y));
                }
            }
        }
        if let Constraint::Order { first, then, .. } = k {
            let a = ctx.primitives(ctx.unit_of(first));
            let b = ctx.primitives(ctx.unit_of(then));
            for x in find(ActionKind::Start, a) {
                for y in find(ActionKind::Start, b) {
                    edges.push((x, y));
                }
            }
            for x in find(ActionKind::Stop, b) {
                for y in find(ActionKind::Stop, a) {
                    edges.push((x, y));
                }
            }
        }
    }
    plan.edges.extend(edges);
}
