//! The view one scheduler run works from: the placement units (a primitive, a group, a
//! clone), and the config's constraints and memberships and the input's states indexed once,
//! so that placing N units costs O(N), not O(N × constraints).

use super::{Input, NodeState, OperatorConstraint, ResourceState};
use crate::config::Config;
use crate::resources::{Constraint, Meta};
use std::collections::HashMap;

/// A placement unit.
#[derive(Debug, Clone, Copy)]
pub(super) enum Unit<'a> {
    Primitive(&'a str),
    Group(&'a str),
    Clone(&'a str),
}

impl<'a> Unit<'a> {
    pub(super) fn id(&self) -> &'a str {
        match self {
            Unit::Primitive(s) | Unit::Group(s) | Unit::Clone(s) => s,
        }
    }
}

/// A location constraint's node, its position in the node list, and its score.
pub(super) type Located<'a> = (&'a str, Option<usize>, i64);

/// Constraints and memberships indexed once per run, so placing N units costs O(N), not
/// O(N × constraints). Hash maps, not BTreeMaps: they are only looked up, never iterated, so
/// the result stays deterministic, and string-keyed tree lookups were a fifth of the time at
/// 10,000 primitives.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a Config,
    pub(super) input: &'a Input,
    /// Every member, in placement order (see [`members`]).
    pub(super) nodes: Vec<String>,
    /// node name → position in `nodes`
    pub(super) node_pos: HashMap<&'a str, usize>,
    /// target id → (node, its position, score)
    pub(super) locations: HashMap<&'a str, Vec<Located<'a>>>,
    /// rsc id → (with, score, with its promoted instance)
    pub(super) colocations: HashMap<&'a str, Vec<(&'a str, i64, bool)>>,
    /// rsc id → operator constraints on it
    pub(super) operator: HashMap<&'a str, Vec<&'a OperatorConstraint>>,
    pub(super) group_of: HashMap<&'a str, &'a str>,
    pub(super) clone_of: HashMap<&'a str, &'a str>,
    pub(super) no_state: ResourceState,
    /// For a primitive cloned with clone_node_max > 1: its instances' states merged (where they
    /// run, with the role of any one of them there; every failure), which is what scoring needs.
    pub(super) merged: HashMap<&'a str, ResourceState>,
    pub(super) no_node: NodeState,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(cfg: &'a Config, input: &'a Input) -> Ctx<'a> {
        let r = &cfg.resources;
        let nodes = members(cfg, input);
        let node_pos: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut locations: HashMap<&str, Vec<Located>> = HashMap::new();
        let mut colocations: HashMap<&str, Vec<(&str, i64, bool)>> = HashMap::new();
        for k in &r.constraints {
            match k {
                Constraint::Location { rsc, node, score } => {
                    locations
                        .entry(rsc)
                        .or_default()
                        .push((node, node_pos.get(node.as_str()).copied(), *score))
                }
                Constraint::Colocation {
                    rsc,
                    with,
                    score,
                    with_promoted,
                } => colocations.entry(rsc).or_default().push((with, *score, *with_promoted)),
                Constraint::Order { .. } => {}
            }
        }
        let mut operator: HashMap<&str, Vec<&OperatorConstraint>> = HashMap::new();
        for o in &input.operator {
            operator.entry(o.rsc.as_str()).or_default().push(o);
        }
        let mut group_of = HashMap::new();
        for g in r.groups.values() {
            for m in &g.members {
                group_of.insert(m.as_str(), g.id.as_str());
            }
        }
        let clone_of = r
            .clones
            .values()
            .map(|c| (c.resource.as_str(), c.id.as_str()))
            .collect();
        Ctx {
            cfg,
            input,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            node_pos,
            locations,
            colocations,
            operator,
            group_of,
            clone_of,
            no_state: ResourceState::default(),
            merged: merged_instances(cfg, input),
            no_node: if input.members_only {
                NodeState {
                    online: false,
                    ..NodeState::default()
                }
            } else {
                NodeState::default()
            },
        }
    }

    /// The states of an instanced clone's instances ("web:0", ...), in instance order.
    pub(super) fn resources_instances(&self, primitive: &str) -> Vec<&'a ResourceState> {
        let n = self.cfg.resources.instance_count(primitive).unwrap_or(0);
        (0..n)
            .filter_map(|i| self.input.resources.get(&format!("{primitive}:{i}")))
            .collect()
    }

    pub(super) fn state(&self, rsc: &str) -> &ResourceState {
        if !self.merged.is_empty() {
            if let Some(m) = self.merged.get(rsc) {
                return m;
            }
        }
        self.input.resources.get(rsc).unwrap_or(&self.no_state)
    }

    pub(super) fn node(&self, n: &str) -> &NodeState {
        self.input.nodes.get(n).unwrap_or(&self.no_node)
    }

    /// Every id a constraint may name to mean this unit: the unit, its members, its clone's
    /// resource.
    pub(super) fn names(&self, unit: &Unit<'a>) -> Vec<&'a str> {
        let r = &self.cfg.resources;
        let mut v: Vec<&'a str> = vec![unit.id()];
        let group_members = |g: &str| {
            r.groups
                .get(g)
                .map(|g| g.members.iter().map(String::as_str).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        match unit {
            Unit::Group(g) => v.extend(group_members(g)),
            Unit::Clone(c) => {
                let inner = r.clones[*c].resource.as_str();
                v.push(inner);
                v.extend(group_members(inner));
            }
            Unit::Primitive(_) => {}
        }
        v
    }

    /// The primitives of a unit (a group's members in order; a clone's primitives).
    pub(super) fn primitives(&self, id: &str) -> &'a [String] {
        let r = &self.cfg.resources;
        if let Some(g) = r.groups.get(id) {
            &g.members
        } else if let Some(c) = r.clones.get(id) {
            self.primitives(&c.resource)
        } else if let Some(p) = r.primitives.get(id) {
            std::slice::from_ref(&p.id)
        } else {
            &[]
        }
    }

    pub(super) fn meta(&self, unit: &Unit) -> &'a Meta {
        let r = &self.cfg.resources;
        match unit {
            Unit::Primitive(p) => &r.primitives[*p].meta,
            Unit::Group(g) => &r.groups[*g].meta,
            Unit::Clone(c) => &r.clones[*c].meta,
        }
    }

    /// Failures of `rsc` on `node` that have not expired.
    pub(super) fn live_failures(&self, rsc: &str, node: &str, meta: &Meta) -> usize {
        let st = self.state(rsc);
        let now = self.input.now_ms;
        st.failures
            .get(node)
            .map(|f| {
                f.iter()
                    .filter(|t| match meta.failure_timeout {
                        Some(ft) => now < **t + ft.as_millis() as u64,
                        None => true,
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// The unit a constraint target belongs to.
    pub(super) fn unit_of<'s>(&self, id: &'s str) -> &'s str
    where
        'a: 's,
    {
        if let Some(c) = self.clone_of.get(id) {
            return c;
        }
        if let Some(g) = self.group_of.get(id) {
            if let Some(c) = self.clone_of.get(g) {
                return c;
            }
            return g;
        }
        id
    }
}

/// The nodes a run places on, in a fixed order: the config file's `[[node]]`s in file order,
/// then the members the input has beyond them (added with `phalanx node add`: the replicated
/// state is what the input is built from), by name. A config node the input does not list
/// stays (a scenario lists only the nodes it says something of; they default to online).
pub(super) fn members<'a>(cfg: &'a Config, input: &'a Input) -> Vec<&'a str> {
    let mut nodes: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
    let listed: std::collections::HashSet<&str> = nodes.iter().copied().collect();
    nodes.extend(input.nodes.keys().map(String::as_str).filter(|n| !listed.contains(n)));
    nodes
}

/// See `Ctx::merged`.
fn merged_instances<'a>(cfg: &'a Config, input: &Input) -> HashMap<&'a str, ResourceState> {
    let r = &cfg.resources;
    let mut merged = HashMap::new();
    for c in r.clones.values().filter(|c| c.clone_node_max > 1) {
        let Some(((p, _), n)) = r
            .primitives
            .get_key_value(&c.resource)
            .zip(r.instance_count(&c.resource))
        else {
            continue;
        };
        let mut m = ResourceState::default();
        for i in 0..n {
            if let Some(st) = input.resources.get(&format!("{p}:{i}")) {
                for (node, role) in &st.running {
                    m.running.insert(node.clone(), *role);
                }
                for (node, f) in &st.failures {
                    m.failures.entry(node.clone()).or_default().extend(f);
                }
                m.fatal |= st.fatal;
                m.banned.extend(st.banned.iter().cloned());
                m.maintenance |= st.maintenance;
            }
        }
        merged.insert(p.as_str(), m);
    }
    merged
}
