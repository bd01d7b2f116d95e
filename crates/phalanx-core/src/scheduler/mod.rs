//! The scheduler: a pure, deterministic function from the desired config and the observed state
//! to a Plan — the actions that move the cluster to where its resources should run (start,
//! stop, promote, demote), their ordering edges, a reason for each, and for every resource the
//! node scores that decided its placement (what `phalanx why` shows). Like Pacemaker's
//! scheduler, it is tested by golden scenario files (`tests/scenarios/`).
//!
//! Placement works on units: a primitive, a group (its members share a node) or a clone (its
//! instances spread over nodes). Units are placed in colocation-dependency order; each node gets
//! a score from its eligibility (online, not in standby, agent present, failures under the
//! migration threshold, no ban), location constraints, operator moves and bans, colocation with
//! units already placed, and stickiness to where it runs now. The highest score ≥ 0 wins (ties:
//! the current node, then the least loaded, then the name); failback policy can hold a resource
//! where it is. Nothing here reads a clock: `now_ms` is part of the input.
//!
//! One concern per file: `input` (what it works from), `context` (the run's indexed view and
//! its units), `units` (placement order), `fencing` (fence first), `scores` and `placement`
//! (where each unit goes, `promotion` which instance may be promoted), `actions` and `clone_actions` (from placement to actions),
//! `ordering` (the edges between actions), `notifications` (clone notifications around a
//! notify clone's changes), `explain` and `plan` (the answer), and `hosting`
//! (whether an operator's move can be honoured, asked of the scheduler itself).

mod actions;
mod clone_actions;
mod context;
mod explain;
mod fencing;
mod hosting;
mod input;
mod notifications;
mod ordering;
mod placement;
mod plan;
mod promotion;
mod scores;
mod units;

use crate::config::Config;
use context::Ctx;
use fencing::Fences;
use std::collections::HashMap;

pub use crate::model::Role;
pub use explain::Explain;
pub use hosting::move_refusal;
pub use input::{Input, NodeState, OperatorConstraint, ResourceState};
pub use plan::{Action, ActionKind, Plan};

/// Compute the plan.
pub fn schedule(cfg: &Config, input: &Input) -> Plan {
    // Fence first (DESIGN.md invariant 3): every unclean node that can be fenced now is, and the
    // rest of the plan treats it as down, its resources recovered elsewhere once the fence is
    // recorded (every start and promote waits for it). An unclean node that cannot be fenced
    // now (backoff after failed attempts, nobody to run the fence) keeps what it held held.
    let fences = Fences::of(cfg, input);
    let input = fences.view(input);
    let mut plan = Plan::default();
    fences.push_actions(&mut plan);
    let ctx = Ctx::new(cfg, &input);
    let ordered = units::placement_order(&ctx);

    // Unit id → the positions of the nodes it was placed on, and of those it is promoted on.
    let mut placed: scores::Placed = (HashMap::with_capacity(ordered.len()), HashMap::new());
    // Units placed per node, by node position.
    let mut load: Vec<usize> = vec![0; ctx.nodes.len()];
    // By position in `ordered`: each unit's target nodes and roles (every primitive of a unit
    // shares them), and its explanation.
    let mut targets: Vec<Vec<(String, Role)>> = Vec::with_capacity(ordered.len());
    let mut explains: Vec<Explain> = Vec::with_capacity(ordered.len());
    let mut notes: Vec<String> = Vec::new();
    for unit in &ordered {
        let (nodes, explain, note) = placement::place(&ctx, unit, &placed, &load);
        let positions: Vec<usize> = nodes
            .iter()
            .filter_map(|(n, _)| ctx.node_pos.get(n.as_str()).copied())
            .collect();
        let promoted: Vec<usize> = nodes
            .iter()
            .filter(|(_, r)| *r == Role::Promoted)
            .filter_map(|(n, _)| ctx.node_pos.get(n.as_str()).copied())
            .collect();
        if !promoted.is_empty() {
            placed.1.insert(unit.id(), promoted);
        }
        for i in &positions {
            load[*i] += 1;
        }
        placed.0.insert(unit.id(), positions);
        targets.push(nodes);
        if let Some(n) = note {
            notes.extend(n.lines().map(str::to_string));
        }
        explains.push(explain);
    }
    // Most units change at most once: size the plan for that up front.
    plan.actions.reserve(ordered.len());
    plan.summary.reserve(ordered.len() + notes.len());
    actions::diff(&ctx, &ordered, &targets, &explains, &mut plan);
    notifications::add(&ctx, &ordered, &mut plan);
    fences.push_edges(&mut plan);
    plan.explain = ordered.iter().map(|u| u.id().to_string()).zip(explains).collect();
    plan.summary.extend(notes);
    plan.summary.extend(fences.notes);
    plan
}
