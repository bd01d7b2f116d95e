//! Clone notifications in the plan (OCF `notify`, issue 18): for every clone with
//! `notify = true` whose instances the plan starts, stops, promotes or demotes, the `notify_*`
//! lists of the transition (computed once, here, from the state the plan was made from, so
//! every node passes the same ones) and the notify actions around each operation, as
//! Pacemaker orders them: pre-notify → the operation's actions → post-notify, one operation
//! after the other (demote, stop, start, promote).
//!
//! Receivers, as Pacemaker's: stop and demote notifications go to the instances active before
//! the transition (post-stop not to those being stopped); start and promote notifications to
//! the instances active after it (pre-start not to those being started). An instance on a lost
//! node is stopped by its fence, never by an action: it is in the stop list, receives
//! nothing, and the stop notifications wait for its fence.

use super::context::{Ctx, Unit};
use super::{Action, ActionKind, Plan};
use crate::notify::{self, Instance, Op, When};
use std::collections::{BTreeMap, BTreeSet};

/// The operations in the order one transition runs them.
const PHASES: [Op; 4] = [Op::Demote, Op::Stop, Op::Start, Op::Promote];

/// Add the notifications of every notify clone the plan changes.
pub(super) fn add(ctx: &Ctx, units: &[Unit], plan: &mut Plan) {
    let numbers = notify::instance_numbers(ctx.nodes.iter().map(|n| (ctx.node(n).id, n.as_str())));
    for unit in units {
        let Unit::Clone(id) = unit else { continue };
        if !ctx.cfg.resources.clones.get(*id).is_some_and(|c| c.notify) {
            continue;
        }
        for p in ctx.primitives(id) {
            clone_notifications(ctx, p, &numbers, plan);
        }
    }
    plan.edges.sort();
    plan.edges.dedup();
}

/// One notification receiver or list entry: (instance name, action rsc, node).
type Entry = (String, String, String);

fn clone_notifications(ctx: &Ctx, p: &str, numbers: &BTreeMap<&str, u32>, plan: &mut Plan) {
    let instanced = ctx.cfg.resources.instance_count(p);
    // The instance name of what runs as `rsc` on `node`: "pg:1" for a clone with one instance
    // per node (the node's number), the tracked id itself for an instanced one.
    let instance = |rsc: &str, node: &str| -> String {
        match instanced {
            Some(_) => rsc.to_string(),
            None => format!("{p}:{}", numbers.get(node).copied().unwrap_or(0)),
        }
    };
    let ours = |rsc: &str| match instanced {
        Some(_) => rsc.rsplit_once(':').is_some_and(|(b, _)| b == p),
        None => rsc == p,
    };
    // Before: every instance, where it runs.
    let mut instances: Vec<Instance> = Vec::new();
    let mut active: Vec<Entry> = Vec::new();
    let tracked: Vec<String> = match instanced {
        Some(n) => (0..n).map(|i| format!("{p}:{i}")).collect(),
        None => vec![p.to_string()],
    };
    for rsc in &tracked {
        let running = &ctx.state(rsc).running;
        for (node, role) in running {
            let name = instance(rsc, node);
            instances.push(Instance {
                name: name.clone(),
                running: Some((node.clone(), *role)),
            });
            active.push((name, rsc.clone(), node.clone()));
        }
        if instanced.is_some() && running.is_empty() {
            instances.push(Instance {
                name: rsc.clone(),
                running: None,
            });
        }
    }
    if instanced.is_none() {
        for n in &ctx.nodes {
            if !ctx.state(p).running.contains_key(n) {
                instances.push(Instance {
                    name: instance(p, n),
                    running: None,
                });
            }
        }
    }
    // The plan's operations on the clone, and the stops its fences imply.
    let mut acts: BTreeMap<Op, Vec<usize>> = BTreeMap::new();
    let mut planned: BTreeMap<Op, Vec<Entry>> = BTreeMap::new();
    for (i, a) in plan.actions.iter().enumerate() {
        let op = match a.kind {
            ActionKind::Start => Op::Start,
            ActionKind::Stop => Op::Stop,
            ActionKind::Promote => Op::Promote,
            ActionKind::Demote => Op::Demote,
            _ => continue,
        };
        if ours(&a.rsc) {
            acts.entry(op).or_default().push(i);
            planned
                .entry(op)
                .or_default()
                .push((instance(&a.rsc, &a.node), a.rsc.clone(), a.node.clone()));
        }
    }
    if acts.is_empty() {
        return;
    }
    // Nodes fenced by this plan: what runs there stops with the fence.
    let fenced: BTreeSet<&str> = plan
        .actions
        .iter()
        .filter(|a| a.kind == ActionKind::Fence)
        .map(|a| a.rsc.as_str())
        .collect();
    let up = |n: &str| ctx.node(n).online && !fenced.contains(n);
    let lost: Vec<&Entry> = active.iter().filter(|(_, _, n)| !up(n)).collect();
    planned
        .entry(Op::Stop)
        .or_default()
        .extend(lost.iter().map(|e| (*e).clone()));

    let pairs = |v: &[Entry]| v.iter().map(|(i, _, n)| (i.clone(), n.clone())).collect::<Vec<_>>();
    let lists = notify::lists(
        &instances,
        &planned.iter().map(|(op, v)| (*op, pairs(v))).collect(),
        &ctx.nodes.iter().cloned().collect(),
        &ctx.nodes
            .iter()
            .filter(|n| {
                let s = ctx.node(n);
                s.online && !s.standby && !s.unclean
            })
            .cloned()
            .collect(),
    );
    plan.notify.insert(p.to_string(), lists);

    // Receivers: active before (on a node still up), and active after.
    let is_in = |op: Op, e: &Entry| {
        planned
            .get(&op)
            .is_some_and(|v| v.iter().any(|x| x.0 == e.0 && x.2 == e.2))
    };
    let before: Vec<&Entry> = active.iter().filter(|e| up(&e.2)).collect();
    let mut after: Vec<Entry> = before
        .iter()
        .filter(|e| !is_in(Op::Stop, e))
        .map(|e| (*e).clone())
        .collect();
    after.extend(planned.get(&Op::Start).into_iter().flatten().cloned());
    after.sort();
    after.dedup();
    let mut prev_exit: Vec<usize> = Vec::new();
    let (first, mut ops) = (plan.actions.len(), Vec::new());
    for op in PHASES {
        if planned.get(&op).is_none_or(|v| v.is_empty()) {
            continue;
        }
        ops.push(op.as_str());
        let (pre_to, post_to): (Vec<&Entry>, Vec<&Entry>) = match op {
            Op::Demote => (before.clone(), before.clone()),
            Op::Stop => (
                before.clone(),
                before.iter().copied().filter(|e| !is_in(Op::Stop, e)).collect(),
            ),
            Op::Start => (
                after.iter().filter(|e| !is_in(Op::Start, e)).collect(),
                after.iter().collect(),
            ),
            Op::Promote => (after.iter().collect(), after.iter().collect()),
        };
        let mut push = |when: When, to: &[&Entry]| -> Vec<usize> {
            to.iter()
                .map(|(inst, rsc, node)| {
                    plan.actions.push(Action {
                        kind: ActionKind::Notify { when, op },
                        rsc: rsc.clone(),
                        node: node.clone(),
                        reason: format!("{}-{} notification to {inst}", when.as_str(), op.as_str()),
                    });
                    plan.actions.len() - 1
                })
                .collect()
        };
        let pre = push(When::Pre, &pre_to);
        let post = push(When::Post, &post_to);
        let real = acts.get(&op).cloned().unwrap_or_default();
        let middle = if real.is_empty() { &pre } else { &real };
        let entry = [&pre, &real, &post]
            .into_iter()
            .find(|v| !v.is_empty())
            .cloned()
            .unwrap_or_default();
        let exit = [&post, &real, &pre]
            .into_iter()
            .find(|v| !v.is_empty())
            .cloned()
            .unwrap_or_default();
        for a in &pre {
            for b in &real {
                plan.edges.push((*a, *b));
            }
        }
        for a in middle {
            for b in &post {
                if a != b {
                    plan.edges.push((*a, *b));
                }
            }
        }
        for a in &prev_exit {
            for b in &entry {
                plan.edges.push((*a, *b));
            }
        }
        // An instance stopped by a fence: its stop notifications come after the fence.
        if op == Op::Stop {
            let fences: Vec<usize> = (0..plan.actions.len())
                .filter(|i| {
                    plan.actions[*i].kind == ActionKind::Fence && lost.iter().any(|e| e.2 == plan.actions[*i].rsc)
                })
                .collect();
            for f in fences {
                for b in &entry {
                    plan.edges.push((f, *b));
                }
            }
        }
        if !exit.is_empty() {
            prev_exit = exit;
        }
    }
    plan.summary.push(format!(
        "Notify {p}: {} notifications, before and after {}",
        plan.actions.len() - first,
        ops.join(", ")
    ));
}
