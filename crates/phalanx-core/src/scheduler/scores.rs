//! How much each node wants a unit: every contribution to a node's score (eligibility, agent
//! present, failures and bans, location constraints, operator moves and bans, colocation with
//! units already placed, stickiness), added the Pacemaker way and kept, with its reason, for
//! the explanation.

use super::context::{Ctx, Unit};
use super::{Explain, OperatorConstraint};
use crate::model::{add_scores, score_str, Role, INFINITY};
use crate::resources::{Meta, OnFail, Primitive};
use std::collections::{BTreeMap, HashMap};

/// Where the units placed so far went, by unit id: every node's position, and the positions
/// where it is promoted.
pub(super) type Placed<'a> = (HashMap<&'a str, Vec<usize>>, HashMap<&'a str, Vec<usize>>);

/// What constrains one unit, gathered once from every id that may name it.
pub(super) struct UnitConstraints<'a> {
    /// (the id named, node, the node's position, score)
    pub locations: Vec<(&'a str, &'a str, Option<usize>, i64)>,
    /// (with, score, with its promoted instance)
    pub colocations: Vec<(&'a str, i64, bool)>,
    pub operator: Vec<&'a OperatorConstraint>,
}

impl<'a> UnitConstraints<'a> {
    pub(super) fn of(ctx: &Ctx<'a>, unit: &Unit<'a>) -> UnitConstraints<'a> {
        let names = ctx.names(unit);
        let locations = names
            .iter()
            .flat_map(|n| {
                ctx.locations
                    .get(n)
                    .into_iter()
                    .flatten()
                    .map(move |(node, pos, s)| (*n, *node, *pos, *s))
            })
            .collect();
        let colocations = names
            .iter()
            .flat_map(|n| ctx.colocations.get(n).into_iter().flatten().copied())
            .collect();
        let operator = names
            .iter()
            .flat_map(|n| ctx.operator.get(n).into_iter().flatten().copied())
            .collect();
        UnitConstraints {
            locations,
            colocations,
            operator,
        }
    }
}

/// One node's score as it is built, with a line per contribution.
#[derive(Default)]
struct NodeScore {
    score: i64,
    parts: Vec<String>,
}

impl NodeScore {
    fn add(&mut self, s: i64, why: String) {
        self.score = add_scores(self.score, s);
        self.parts.push(format!("{why}: {}", score_str(s)));
    }
}

/// Score every node for a unit, by node position. The explanation keeps only nodes something
/// scored (an absent node scores 0 with no constraint), which keeps a 10,000-resource plan
/// small. `placed`: unit id → the positions of the nodes it was placed on (`.0`), and of those
/// where it is promoted (`.1`).
pub(super) fn score_nodes(
    ctx: &Ctx,
    unit: &Unit,
    current: &BTreeMap<String, Role>,
    cons: &UnitConstraints,
    placed: &Placed,
    explain: &mut Explain,
) -> Vec<i64> {
    let meta = ctx.meta(unit);
    let now = ctx.input.now_ms;
    // Where each unit this one is colocated with was placed (looked up once, not per node).
    let colo_targets: Vec<(String, i64, Option<&Vec<usize>>)> = cons
        .colocations
        .iter()
        .map(|(with, s, promoted)| {
            let map = if *promoted { &placed.1 } else { &placed.0 };
            let name = if *promoted {
                format!("{with}'s primary")
            } else {
                with.to_string()
            };
            (name, *s, map.get(ctx.unit_of(with)))
        })
        .collect();
    let mut node_scores: Vec<i64> = Vec::with_capacity(ctx.nodes.len());
    let prim_refs: Vec<(&String, &Primitive)> = ctx
        .primitives(unit.id())
        .iter()
        .filter_map(|p| ctx.cfg.resources.primitives.get(p).map(|x| (p, x)))
        .collect();
    // A clean stop with `shutdown = "stop"` locked this unit to the node it ran on (not a
    // clone's: its instances run on several nodes by design).
    let locked_to: Option<&String> = (!matches!(unit, Unit::Clone(_)))
        .then(|| {
            ctx.nodes
                .iter()
                .find(|n| prim_refs.iter().any(|(p, _)| ctx.node(n).locked.contains(p.as_str())))
        })
        .flatten();
    for (i, node) in ctx.nodes.iter().enumerate() {
        let ns = ctx.node(node);
        let mut score = NodeScore::default();
        if let Some(holder) = locked_to.filter(|h| *h != node) {
            score.add(
                -INFINITY,
                format!("locked to {holder} by its clean stop (shutdown = \"stop\")"),
            );
        }
        if !ns.online {
            score.add(-INFINITY, format!("{node} lost"));
        }
        if ns.leaving {
            score.add(-INFINITY, format!("{node} is stopping"));
        } else if ns.standby {
            score.add(-INFINITY, format!("{node} in standby"));
        }
        if ns.maintenance {
            score.add(-INFINITY, format!("{node} in maintenance"));
        }
        for (p, prim) in &prim_refs {
            primitive_scores(ctx, p, prim, meta, node, &mut score);
        }
        for (rsc, n, pos, s) in &cons.locations {
            if *pos == Some(i) {
                score.add(*s, format!("location {rsc} on {n}"));
            }
        }
        for o in &cons.operator {
            if o.node == *node && o.expires_ms.map(|e| now < e).unwrap_or(true) {
                if o.prefer {
                    score.add(INFINITY, format!("moved to {node} by operator"));
                } else {
                    score.add(-INFINITY, format!("banned from {node} by operator"));
                }
            }
        }
        for (with, s, with_nodes) in &colo_targets {
            let there = with_nodes.map(|v| v.contains(&i)).unwrap_or(false);
            if there {
                score.add(*s, format!("colocated with {with}"));
            } else if *s >= INFINITY {
                score.add(-INFINITY, format!("must be with {with} (not on {node})"));
            }
        }
        let healthy_here = ns.online && current.get(node).map(|role| *role != Role::Failed).unwrap_or(false);
        if healthy_here && meta.stickiness != 0 {
            score.add(meta.stickiness, "stickiness".into());
        }
        node_scores.push(score.score);
        if !score.parts.is_empty() {
            explain.scores.insert(node.clone(), (score.score, score.parts));
        }
    }
    node_scores
}

/// What one primitive of the unit says about `node`: its agent missing there, a hard error or
/// a fatal one, failures against the migration threshold and its on-fail.
fn primitive_scores(ctx: &Ctx, p: &str, prim: &Primitive, unit_meta: &Meta, node: &str, score: &mut NodeScore) {
    let ns = ctx.node(node);
    if !ns.missing_agents.is_empty() {
        let agent = prim.agent.to_string();
        if ns.missing_agents.contains(&agent) {
            score.add(-INFINITY, format!("agent {agent} missing on {node}"));
        }
    }
    // A hard error bans the node until cleanup, or, with a failure_timeout, until its
    // failures there have expired (Pacemaker: a hard error sets the fail count to
    // INFINITY, which failure-timeout clears).
    let expired = prim.meta.failure_timeout.is_some() && ctx.live_failures(p, node, &prim.meta) == 0;
    if ctx.state(p).banned.contains(node) && !expired {
        score.add(
            -INFINITY,
            format!("{p} banned from {node} after a hard error (cleanup to retry)"),
        );
    }
    if ctx.state(p).fatal {
        score.add(
            -INFINITY,
            format!("{p} had a fatal configuration error (cleanup to retry)"),
        );
    }
    let fails = if ctx.state(p).failures.is_empty() {
        0
    } else {
        ctx.live_failures(p, node, &prim.meta)
    };
    let threshold = prim.meta.migration_threshold.or(unit_meta.migration_threshold);
    if let Some(t) = threshold {
        if fails >= t as usize {
            score.add(-INFINITY, format!("migration-threshold {t} reached for {p} on {node}"));
        }
    }
    if prim.on_fail == OnFail::Ban && fails > 0 {
        score.add(-INFINITY, format!("{p} failed on {node} (on_fail = ban)"));
    }
    if prim.on_fail == OnFail::Stop && ctx.nodes.iter().any(|n| ctx.live_failures(p, n, &prim.meta) > 0) {
        score.add(-INFINITY, format!("{p} failed (on_fail = stop; cleanup to restart it)"));
    }
}
