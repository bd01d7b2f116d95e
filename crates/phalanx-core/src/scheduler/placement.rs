//! Where a unit goes: held where it is while something of it may still run on a lost node,
//! left alone when unmanaged, else the best-scored allowed node (ties: the current node, then
//! the least loaded, then the name), unless its failback policy keeps it where it is; a clone
//! takes its best `clone_max` nodes (slots, with several instances per node) and promotes the
//! best `promoted_max` of them.

use super::context::{Ctx, Unit};
use super::explain::blockers;
use super::scores::{score_nodes, Placed, UnitConstraints};
use super::Explain;
use crate::model::{score_str, Role, INFINITY};
use crate::resources::{CloneSpec, Failback};
use std::collections::{BTreeMap, BTreeSet};

/// A unit's placement: the chosen nodes (with roles), the explanation, and an optional notice.
pub(super) type Placement = (Vec<(String, Role)>, Explain, Option<String>);

/// Place one unit. `placed`: unit id → the positions of the nodes it was placed on; `load`:
/// units placed per node, by position.
pub(super) fn place(ctx: &Ctx, unit: &Unit, placed: &Placed, load: &[usize]) -> Placement {
    let prims = ctx.primitives(unit.id());
    let current: &BTreeMap<String, Role> = prims
        .first()
        .map(|p| &ctx.state(p).running)
        .unwrap_or(&ctx.no_state.running);
    if let Some(held) = held(ctx, unit, current) {
        return held;
    }
    let cons = UnitConstraints::of(ctx, unit);
    let mut explain = Explain::default();
    let node_scores = score_nodes(ctx, unit, current, &cons, placed, &mut explain);
    let score_of = |n: &String| {
        ctx.node_pos
            .get(n.as_str())
            .map(|i| node_scores[*i])
            .unwrap_or(-INFINITY)
    };
    let ranked = rank(ctx, unit, &node_scores, current, load);
    if let Unit::Clone(c) = unit {
        return place_clone(ctx, &ctx.cfg.resources.clones[*c], current, ranked, &score_of, explain);
    }
    let (target, note) = choose(ctx, unit, &cons, ranked, current, &score_of, &mut explain);
    if explain.verdict.is_empty() {
        explain.verdict = match &target {
            Some(t) => format!("on {t} (score {})", score_str(score_of(t))),
            None => format!("cannot run anywhere: {}", blockers(&explain)),
        };
    }
    explain.placed = target.iter().cloned().collect();
    (target.into_iter().map(|n| (n, Role::Started)).collect(), explain, note)
}

/// A unit no action may touch stays as it is: held, while something of it may still run on a
/// lost node not yet confirmed down (starting it elsewhere could make two copies, DESIGN.md
/// invariant 3); unmanaged, in cluster or resource maintenance or with anything of it on a node
/// in maintenance (Pacemaker's meaning: no action at all touches that node's resources, so the
/// unit may not be started elsewhere either: that could make two copies).
fn held(ctx: &Ctx, unit: &Unit, current: &BTreeMap<String, Role>) -> Option<Placement> {
    let prims = ctx.primitives(unit.id());
    let on_maintenance_node = prims
        .iter()
        .any(|p| ctx.state(p).running.keys().any(|n| ctx.node(n).maintenance));
    let managed = !ctx.input.maintenance && !on_maintenance_node && prims.iter().all(|p| !ctx.state(p).maintenance);
    let mut explain = Explain {
        placed: current.keys().cloned().collect(),
        unmanaged: true,
        ..Explain::default()
    };
    if let Some(n) = prims
        .iter()
        .find_map(|p| ctx.state(p).running.keys().find(|n| ctx.node(n).unclean))
    {
        explain.verdict =
            format!("held: {n} is lost and not yet confirmed down; nothing it ran starts elsewhere before");
        let note = if ctx.node(n).online {
            format!("Wait {}: a stop failed on {n}, not yet fenced", unit.id())
        } else {
            format!("Wait {}: {n} lost, not yet confirmed down (fence or lease)", unit.id())
        };
        return Some((current.clone().into_iter().collect(), explain, Some(note)));
    }
    if !managed {
        explain.verdict = "unmanaged (maintenance): left as it is".into();
        return Some((current.clone().into_iter().collect(), explain, None));
    }
    None
}

/// The allowed nodes (score ≥ 0), best first: score desc, current first, least loaded, name.
/// A clone needs its best `clone_max` nodes in order; anything else only the best one.
fn rank<'c>(
    ctx: &'c Ctx,
    unit: &Unit,
    node_scores: &[i64],
    current: &BTreeMap<String, Role>,
    load: &[usize],
) -> Vec<&'c String> {
    // One precomputed key per node (the comparator must not do map lookups: it was half of
    // the scheduler's time at 1,000 primitives). Node names are unique, so the order is total.
    let keyed: Vec<(std::cmp::Reverse<i64>, bool, usize, &String)> = ctx
        .nodes
        .iter()
        .zip(node_scores)
        .enumerate()
        .filter(|(_, (_, s))| **s >= 0)
        .map(|(i, (n, s))| {
            let here = !current.is_empty() && current.contains_key(n);
            (std::cmp::Reverse(*s), !here, load[i], n)
        })
        .collect();
    if matches!(unit, Unit::Clone(_)) {
        let mut keyed = keyed;
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, _, _, n)| n).collect()
    } else {
        keyed.into_iter().min().map(|(_, _, _, n)| n).into_iter().collect()
    }
}

/// The node a non-clone unit goes to: the best one, unless it runs on another allowed node and
/// its failback policy keeps it there (an operator's move overrides the policy). Also the
/// notice of a delayed failback.
fn choose(
    ctx: &Ctx,
    unit: &Unit,
    cons: &UnitConstraints,
    ranked: Vec<&String>,
    current: &BTreeMap<String, Role>,
    score_of: &dyn Fn(&String) -> i64,
    explain: &mut Explain,
) -> (Option<String>, Option<String>) {
    let now = ctx.input.now_ms;
    let meta = ctx.meta(unit);
    let allowed = |n: &String| score_of(n) >= 0;
    let cur = current.keys().next().cloned();
    let mut note = None;
    let target = match (ranked.first().map(|n| (*n).clone()), &cur) {
        (None, _) => None,
        (Some(best), Some(cur)) if best != *cur && allowed(cur) => {
            let operator_move = cons
                .operator
                .iter()
                .any(|o| o.prefer && o.expires_ms.map(|e| now < e).unwrap_or(true));
            match meta.failback {
                _ if operator_move => Some(best),
                Failback::Immediate => Some(best),
                Failback::Manual => {
                    explain.verdict = format!("failback = manual: stays on {cur} although {best} scores higher");
                    Some(cur.clone())
                }
                Failback::Delayed(d) => {
                    let since = ctx.node(&best).online_since_ms;
                    let due = since + d.as_millis() as u64;
                    if now >= due {
                        Some(best)
                    } else {
                        let wait = (due - now).div_ceil(1000);
                        note = Some(format!("Keep {} ({cur}): failback to {best} in {wait}s", unit.id()));
                        explain.verdict = format!("failback delayed: moves to {best} in {wait}s");
                        Some(cur.clone())
                    }
                }
            }
        }
        (Some(best), _) => Some(best),
    };
    (target, note)
}

/// Place a clone on its ranked nodes (see the module comment).
fn place_clone(
    ctx: &Ctx,
    clone: &CloneSpec,
    current: &BTreeMap<String, Role>,
    ranked: Vec<&String>,
    score_of: &dyn Fn(&String) -> i64,
    mut explain: Explain,
) -> Placement {
    let max = clone.clone_max.map(|m| m as usize).unwrap_or(ctx.nodes.len());
    // `ranked` already puts current nodes first among equal scores.
    let chosen: Vec<String> = if clone.clone_node_max > 1 {
        // Several instances per node: slot j of a node is its (j+1)-th instance. Every node's
        // first slot comes before any second one (spread), then slots that an instance already
        // fills (no needless moves), then the node's rank. A node may appear several times.
        let running_here = |n: &String| {
            let count = ctx.resources_instances(&clone.resource);
            count.iter().filter(|st| st.running.contains_key(n)).count()
        };
        let mut slots: Vec<(u32, bool, usize, &String)> = Vec::new();
        for (rank, n) in ranked.into_iter().enumerate() {
            let here = running_here(n);
            for j in 0..clone.clone_node_max {
                slots.push((j, here <= j as usize, rank, n));
            }
        }
        slots.sort_unstable();
        slots.into_iter().take(max).map(|(_, _, _, n)| n.clone()).collect()
    } else {
        ranked.into_iter().take(max).cloned().collect()
    };
    let mut roles: Vec<(String, Role)> = chosen.iter().map(|n| (n.clone(), Role::Started)).collect();
    let mut refusal = None;
    if clone.promotable {
        // Promote the best candidates (see `promotion`).
        let (order, why_not) = super::promotion::candidates(ctx, clone, current, &chosen, score_of);
        let primaries: BTreeSet<String> = order.into_iter().take(clone.promoted_max as usize).collect();
        for (n, role) in &mut roles {
            if primaries.contains(n) {
                *role = Role::Promoted;
            }
        }
        if primaries.len() < clone.promoted_max as usize {
            refusal = why_not.map(|w| format!("Cannot promote {}: {w}", clone.resource));
        }
    }
    explain.placed = chosen.clone();
    explain.verdict = if chosen.is_empty() {
        format!("no instance can run: {}", blockers(&explain))
    } else {
        format!("{} of {max} instance(s) placed", chosen.len())
    };
    let degraded = (chosen.len() < max && !chosen.is_empty())
        .then(|| format!("Degraded {}: {} of {max} instance(s) can run", clone.id, chosen.len()));
    let note = match (degraded, refusal) {
        (Some(d), Some(r)) => Some(format!("{d}\n{r}")),
        (d, r) => d.or(r),
    };
    (roles, explain, note)
}
