//! Which units there are and the order they are placed in: clones, then groups not cloned,
//! then primitives in neither, each placed after every unit it is colocated with (so its
//! colocation scores see where those went).

use super::context::{Ctx, Unit};
use crate::resources::Constraint;
use std::collections::{BTreeMap, BTreeSet};

/// Every unit of the config, in placement order.
pub(super) fn placement_order<'a>(ctx: &Ctx<'a>) -> Vec<Unit<'a>> {
    let units = units(ctx);
    // Place a unit after every unit it is colocated with (validated acyclic).
    let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for k in &ctx.cfg.resources.constraints {
        if let Constraint::Colocation { rsc, with, .. } = k {
            deps.entry(ctx.unit_of(rsc)).or_default().insert(ctx.unit_of(with));
        }
    }
    topological(&units, &deps)
}

/// Clones, then groups not cloned, then primitives in neither (each kind in id order).
fn units<'a>(ctx: &Ctx<'a>) -> Vec<Unit<'a>> {
    let r = &ctx.cfg.resources;
    let mut units: Vec<Unit> = Vec::new();
    for c in r.clones.keys() {
        units.push(Unit::Clone(c));
    }
    for g in r.groups.keys() {
        if r.clone_of(g).is_none() {
            units.push(Unit::Group(g));
        }
    }
    for p in r.primitives.keys() {
        if !ctx.group_of.contains_key(p.as_str()) && !ctx.clone_of.contains_key(p.as_str()) {
            units.push(Unit::Primitive(p));
        }
    }
    units
}

/// Kahn's algorithm over `deps` (unit → the units it must follow), always taking the ready
/// unit that comes first in `units` (deterministic).
fn topological<'a>(units: &[Unit<'a>], deps: &BTreeMap<&str, BTreeSet<&str>>) -> Vec<Unit<'a>> {
    let position: BTreeMap<&str, usize> = units.iter().enumerate().map(|(i, u)| (u.id(), i)).collect();
    let mut indegree: Vec<usize> = vec![0; units.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); units.len()];
    for (u, ds) in deps {
        let Some(&ui) = position.get(u) else { continue };
        for d in ds {
            if let Some(&di) = position.get(d) {
                if di != ui {
                    indegree[ui] += 1;
                    dependents[di].push(ui);
                }
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..units.len()).filter(|i| indegree[*i] == 0).collect();
    let mut ordered: Vec<Unit> = Vec::with_capacity(units.len());
    let mut taken = vec![false; units.len()];
    while ordered.len() < units.len() {
        let next = match ready.pop_first() {
            Some(n) => n,
            // A cycle slipped past validation: take the first unplaced unit rather than loop.
            None => (0..units.len()).find(|i| !taken[*i]).unwrap_or(0),
        };
        if taken[next] {
            continue;
        }
        taken[next] = true;
        ordered.push(units[next]);
        for d in &dependents[next] {
            indegree[*d] = indegree[*d].saturating_sub(1);
            if indegree[*d] == 0 && !taken[*d] {
                ready.insert(*d);
            }
        }
    }
    ordered
}
