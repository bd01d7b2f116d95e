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

use crate::config::Config;
use crate::model::{add_scores, score_str, Fencing, INFINITY};
use crate::resources::{CloneSpec, Constraint, Failback, Meta, OnFail};

pub use crate::model::Role;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the scheduler knows of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    #[serde(default = "yes")]
    pub online: bool,
    #[serde(default)]
    pub standby: bool,
    /// Resources on it are left alone (unmanaged); nothing new is placed there.
    #[serde(default)]
    pub maintenance: bool,
    /// When it last came online (for delayed failback).
    #[serde(default)]
    pub online_since_ms: u64,
    /// Agents (as written in the config, e.g. "ocf:heartbeat:nginx") absent on this node.
    #[serde(default)]
    pub missing_agents: BTreeSet<String>,
    /// Lost, and not yet confirmed down (fenced, or its quorum lease run out): it may still run
    /// what it held, so none of that starts elsewhere yet.
    #[serde(default)]
    pub unclean: bool,
    /// Fence attempts on it that failed (every level), since it was last fenced or back.
    #[serde(default)]
    pub fence_failures: u32,
    /// Not before this (unix ms) is it fenced again (the retry backoff).
    #[serde(default)]
    pub fence_retry_at_ms: u64,
    /// Why the last fence attempt failed.
    #[serde(default)]
    pub fence_error: Option<String>,
    /// Why it must be fenced although online (a stop failed there: what runs is unknown).
    #[serde(default)]
    pub fence_reason: Option<String>,
}

fn yes() -> bool {
    true
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState {
            online: true,
            standby: false,
            maintenance: false,
            online_since_ms: 0,
            missing_agents: BTreeSet::new(),
            unclean: false,
            fence_failures: 0,
            fence_retry_at_ms: 0,
            fence_error: None,
            fence_reason: None,
        }
    }
}

/// What the scheduler knows of one primitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResourceState {
    /// Where it runs now, and in which role.
    #[serde(default)]
    pub running: BTreeMap<String, Role>,
    /// Failure times (ms) per node.
    #[serde(default)]
    pub failures: BTreeMap<String, Vec<u64>>,
    /// Nodes where its agent answered a hard error (OCF 1–5): banned there until cleaned up.
    #[serde(default)]
    pub banned: BTreeSet<String>,
    /// A fatal configuration error (OCF exit 6): it may run nowhere until cleaned up.
    #[serde(default)]
    pub fatal: bool,
    /// Unmanaged: leave it as it is.
    #[serde(default)]
    pub maintenance: bool,
}

/// An operator's move or ban (`phalanx resource move|ban`), expiring by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConstraint {
    pub rsc: String,
    pub node: String,
    /// true: move there (+INFINITY); false: ban from it (-INFINITY).
    pub prefer: bool,
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// The observed state the scheduler works from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub now_ms: u64,
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeState>,
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceState>,
    #[serde(default)]
    pub operator: Vec<OperatorConstraint>,
    /// Cluster-wide maintenance: nothing is managed.
    #[serde(default)]
    pub maintenance: bool,
    /// The node that runs fence actions (the coordinator); None: nobody can fence now.
    #[serde(default)]
    pub fencer: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Fence the node named by the action's `rsc`, through its fence levels; `node` runs it.
    Fence,
    Stop,
    Demote,
    Start,
    Promote,
}

impl ActionKind {
    fn as_str(self) -> &'static str {
        match self {
            ActionKind::Fence => "fence",
            ActionKind::Stop => "stop",
            ActionKind::Demote => "demote",
            ActionKind::Start => "start",
            ActionKind::Promote => "promote",
        }
    }
}

/// One thing a node must do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Action {
    pub kind: ActionKind,
    pub rsc: String,
    pub node: String,
    pub reason: String,
}

impl Action {
    fn key(&self) -> String {
        format!("{} {} ({})", self.kind.as_str(), self.rsc, self.node)
    }
}

/// How one unit's placement was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Explain {
    /// Per node that anything scored: the final score and each contribution to it (a node not
    /// listed scores 0: nothing constrains it).
    pub scores: BTreeMap<String, (i64, Vec<String>)>,
    pub placed: Vec<String>,
    /// Why it is where it is (or nowhere).
    pub verdict: String,
    /// No action at all touches it: in maintenance, or held because something of it may still
    /// run on a lost node not yet confirmed down.
    pub unmanaged: bool,
}

/// The scheduler's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// (before, after): indexes into `actions`.
    pub edges: Vec<(usize, usize)>,
    /// Human summary, one line per change (Pacemaker-like), then notices.
    pub summary: Vec<String>,
    pub explain: BTreeMap<String, Explain>,
}

impl Plan {
    /// The summary and the ordering edges as text (what golden scenario files hold).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.summary {
            out += l;
            out.push('\n');
        }
        let mut edges: Vec<String> = self
            .edges
            .iter()
            .map(|(a, b)| format!("Order: {} -> {}", self.actions[*a].key(), self.actions[*b].key()))
            .collect();
        edges.sort();
        edges.dedup();
        for e in edges {
            out += &e;
            out.push('\n');
        }
        if out.is_empty() {
            out = "Nothing to do\n".into();
        }
        out
    }
}

/// A placement unit.
#[derive(Debug, Clone, Copy)]
enum Unit<'a> {
    Primitive(&'a str),
    Group(&'a str),
    Clone(&'a str),
}

impl<'a> Unit<'a> {
    fn id(&self) -> &'a str {
        match self {
            Unit::Primitive(s) | Unit::Group(s) | Unit::Clone(s) => s,
        }
    }
}

/// A location constraint's node, its position in the node list, and its score.
type Located<'a> = (&'a str, Option<usize>, i64);

/// Constraints and memberships indexed once per run, so placing N units costs O(N), not
/// O(N × constraints). Hash maps, not BTreeMaps: they are only looked up, never iterated, so
/// the result stays deterministic, and string-keyed tree lookups were a fifth of the time at
/// 10,000 primitives.
struct Ctx<'a> {
    cfg: &'a Config,
    input: &'a Input,
    nodes: Vec<String>,
    /// node name → position in `nodes`
    node_pos: HashMap<&'a str, usize>,
    /// target id → (node, its position, score)
    locations: HashMap<&'a str, Vec<Located<'a>>>,
    /// rsc id → (with, score)
    colocations: HashMap<&'a str, Vec<(&'a str, i64)>>,
    /// rsc id → operator constraints on it
    operator: HashMap<&'a str, Vec<&'a OperatorConstraint>>,
    group_of: HashMap<&'a str, &'a str>,
    clone_of: HashMap<&'a str, &'a str>,
    no_state: ResourceState,
    /// For a primitive cloned with clone_node_max > 1: its instances' states merged (where they
    /// run, with the role of any one of them there; every failure), which is what scoring needs.
    merged: HashMap<&'a str, ResourceState>,
    no_node: NodeState,
}

impl<'a> Ctx<'a> {
    fn new(cfg: &'a Config, input: &'a Input) -> Ctx<'a> {
        let r = &cfg.resources;
        let node_pos: HashMap<&str, usize> = cfg
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut locations: HashMap<&str, Vec<Located>> = HashMap::new();
        let mut colocations: HashMap<&str, Vec<(&str, i64)>> = HashMap::new();
        for k in &r.constraints {
            match k {
                Constraint::Location { rsc, node, score } => {
                    locations
                        .entry(rsc)
                        .or_default()
                        .push((node, node_pos.get(node.as_str()).copied(), *score))
                }
                Constraint::Colocation { rsc, with, score } => colocations.entry(rsc).or_default().push((with, *score)),
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
            nodes: cfg.nodes.iter().map(|n| n.name.clone()).collect(),
            node_pos,
            locations,
            colocations,
            operator,
            group_of,
            clone_of,
            no_state: ResourceState::default(),
            merged: merged_instances(cfg, input),
            no_node: NodeState::default(),
        }
    }

    /// The states of an instanced clone's instances ("web:0", ...), in instance order.
    fn resources_instances(&self, primitive: &str) -> Vec<&'a ResourceState> {
        let n = self.cfg.resources.instance_count(primitive).unwrap_or(0);
        (0..n)
            .filter_map(|i| self.input.resources.get(&format!("{primitive}:{i}")))
            .collect()
    }

    fn state(&self, rsc: &str) -> &ResourceState {
        if !self.merged.is_empty() {
            if let Some(m) = self.merged.get(rsc) {
                return m;
            }
        }
        self.input.resources.get(rsc).unwrap_or(&self.no_state)
    }

    fn node(&self, n: &str) -> &NodeState {
        self.input.nodes.get(n).unwrap_or(&self.no_node)
    }

    /// Every id a constraint may name to mean this unit: the unit, its members, its clone's
    /// resource.
    fn names(&self, unit: &Unit<'a>) -> Vec<&'a str> {
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
    fn primitives(&self, id: &str) -> &'a [String] {
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

    fn meta(&self, unit: &Unit) -> &'a Meta {
        let r = &self.cfg.resources;
        match unit {
            Unit::Primitive(p) => &r.primitives[*p].meta,
            Unit::Group(g) => &r.groups[*g].meta,
            Unit::Clone(c) => &r.clones[*c].meta,
        }
    }

    /// Failures of `rsc` on `node` that have not expired.
    fn live_failures(&self, rsc: &str, node: &str, meta: &Meta) -> usize {
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
    fn unit_of<'s>(&self, id: &'s str) -> &'s str
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

/// Compute the plan.
pub fn schedule(cfg: &Config, input: &Input) -> Plan {
    // Fence first (DESIGN.md invariant 3): every unclean node that can be fenced now is, and the
    // rest of the plan treats it as down, its resources recovered elsewhere once the fence is
    // recorded (every start and promote waits for it). An unclean node that cannot be fenced
    // now (backoff after failed attempts, nobody to run the fence) keeps what it held held.
    let (fences, fence_notes) = fences_due(cfg, input);
    let fenced_view;
    let input = if fences.is_empty() {
        input
    } else {
        let mut v = input.clone();
        for target in fences.keys() {
            let n = v.nodes.entry(target.clone()).or_default();
            n.online = false;
            n.unclean = false;
        }
        fenced_view = v;
        &fenced_view
    };
    let mut plan = Plan::default();
    for (target, (by, reason)) in &fences {
        plan.summary.push(format!("Fence {target} (by {by}): {reason}"));
        plan.actions.push(Action {
            kind: ActionKind::Fence,
            rsc: target.clone(),
            node: by.clone(),
            reason: reason.clone(),
        });
    }
    let ctx = Ctx::new(cfg, input);
    let r = &cfg.resources;
    // Units: clones, then groups not cloned, then primitives in neither.
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
    // Place a unit after every unit it is colocated with (validated acyclic).
    let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for k in &r.constraints {
        if let Constraint::Colocation { rsc, with, .. } = k {
            deps.entry(ctx.unit_of(rsc)).or_default().insert(ctx.unit_of(with));
        }
    }
    // Kahn's algorithm, always taking the ready unit that comes first in `units` (deterministic).
    let position: BTreeMap<&str, usize> = units.iter().enumerate().map(|(i, u)| (u.id(), i)).collect();
    let mut indegree: Vec<usize> = vec![0; units.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); units.len()];
    for (u, ds) in &deps {
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

    // Unit id → the positions of the nodes it was placed on.
    let mut placed: HashMap<&str, Vec<usize>> = HashMap::with_capacity(ordered.len());
    // Units placed per node, by node position.
    let mut load: Vec<usize> = vec![0; ctx.nodes.len()];
    // By position in `ordered`: each unit's target nodes and roles (every primitive of a unit
    // shares them), and its explanation.
    let mut targets: Vec<Vec<(String, Role)>> = Vec::with_capacity(ordered.len());
    let mut explains: Vec<Explain> = Vec::with_capacity(ordered.len());
    let mut notes: Vec<String> = Vec::new();
    for unit in &ordered {
        let (nodes, explain, note) = place(&ctx, unit, &placed, &load);
        let positions: Vec<usize> = nodes
            .iter()
            .filter_map(|(n, _)| ctx.node_pos.get(n.as_str()).copied())
            .collect();
        for i in &positions {
            load[*i] += 1;
        }
        placed.insert(unit.id(), positions);
        targets.push(nodes);
        if let Some(n) = note {
            notes.push(n);
        }
        explains.push(explain);
    }
    // Most units change at most once: size the plan for that up front.
    plan.actions.reserve(ordered.len());
    plan.summary.reserve(ordered.len() + notes.len());
    diff(&ctx, &ordered, &targets, &explains, &mut plan);
    let fence_count = fences.len();
    for f in 0..fence_count {
        for i in fence_count..plan.actions.len() {
            if matches!(plan.actions[i].kind, ActionKind::Start | ActionKind::Promote) {
                plan.edges.push((f, i));
            }
        }
    }
    plan.explain = ordered.iter().map(|u| u.id().to_string()).zip(explains).collect();
    plan.summary.extend(notes);
    plan.summary.extend(fence_notes);
    plan
}

/// Which unclean nodes are fenced in this plan — target → (the node that runs it, why) — and
/// notices for those that must wait. Only with `fencing = "required"` and a device for the
/// target; a fencer never fences itself (the coordinator's failed stop is fenced by the first
/// other online node).
fn fences_due(cfg: &Config, input: &Input) -> (BTreeMap<String, (String, String)>, Vec<String>) {
    let mut due = BTreeMap::new();
    let mut notes = Vec::new();
    if cfg.cluster.fencing != Fencing::Required {
        return (due, notes);
    }
    // A monitor failure of a resource with on_fail = "fence" makes its node unclean too.
    let mut monitor_fence: BTreeMap<&str, String> = BTreeMap::new();
    for (rsc, st) in &input.resources {
        let Some(p) = cfg.resources.primitive_of(rsc) else {
            continue;
        };
        if p.on_fail != OnFail::Fence {
            continue;
        }
        for (n, role) in &st.running {
            if *role == Role::Failed && input.nodes.get(n).is_none_or(|s| s.online) {
                monitor_fence
                    .entry(n.as_str())
                    .or_insert_with(|| format!("{rsc} failed on {n} (on_fail = fence)"));
            }
        }
    }
    let default_state = NodeState::default();
    let candidates: BTreeSet<&str> = input
        .nodes
        .iter()
        .filter(|(_, s)| s.unclean)
        .map(|(n, _)| n.as_str())
        .chain(monitor_fence.keys().copied())
        .collect();
    for target in candidates {
        let ns = input.nodes.get(target).unwrap_or(&default_state);
        if !cfg.fence.can_fence(target) {
            continue;
        }
        // The coordinator, unless it is the target or unusable; else the first usable node.
        let usable = |n: &str| {
            n != target
                && !monitor_fence.contains_key(n)
                && input.nodes.get(n).map(|s| s.online && !s.unclean).unwrap_or(true)
        };
        let by = input
            .fencer
            .clone()
            .filter(|f| usable(f))
            .or_else(|| cfg.nodes.iter().map(|n| &n.name).find(|n| usable(n)).cloned());
        let failed = match (&ns.fence_error, ns.fence_failures) {
            (_, 0) => String::new(),
            (Some(e), n) => format!(" (after {n} failed attempt(s), the last: {e})"),
            (None, n) => format!(" (after {n} failed attempt(s))"),
        };
        if input.now_ms < ns.fence_retry_at_ms {
            notes.push(format!(
                "Wait: fencing {target} failed{failed}; next attempt in {} ms; what it held stays stopped",
                ns.fence_retry_at_ms - input.now_ms
            ));
            continue;
        }
        let Some(by) = by else {
            notes.push(format!(
                "Wait: {target} must be fenced but no node can run the fence now"
            ));
            continue;
        };
        let why = match (&ns.fence_reason, monitor_fence.get(target)) {
            (Some(r), _) | (None, Some(r)) => r.clone(),
            (None, None) => format!("{target} lost while it may hold resources"),
        };
        due.insert(target.to_string(), (by, format!("{why}{failed}")));
    }
    (due, notes)
}

/// Place one unit: the chosen nodes (with roles), the explanation, and an optional notice.
fn place(
    ctx: &Ctx,
    unit: &Unit,
    placed: &HashMap<&str, Vec<usize>>,
    load: &[usize],
) -> (Vec<(String, Role)>, Explain, Option<String>) {
    let r = &ctx.cfg.resources;
    let meta = ctx.meta(unit);
    let prims = ctx.primitives(unit.id());
    let now = ctx.input.now_ms;
    let current: &BTreeMap<String, Role> = prims
        .first()
        .map(|p| &ctx.state(p).running)
        .unwrap_or(&ctx.no_state.running);
    let names = ctx.names(unit);
    let locs: Vec<(&str, &str, Option<usize>, i64)> = names
        .iter()
        .flat_map(|n| {
            ctx.locations
                .get(n)
                .into_iter()
                .flatten()
                .map(move |(node, pos, s)| (*n, *node, *pos, *s))
        })
        .collect();
    let colos: Vec<(&str, i64)> = names
        .iter()
        .flat_map(|n| ctx.colocations.get(n).into_iter().flatten().copied())
        .collect();
    let ops: Vec<&OperatorConstraint> = names
        .iter()
        .flat_map(|n| ctx.operator.get(n).into_iter().flatten().copied())
        .collect();
    // Unmanaged: cluster or resource maintenance, or anything of the unit on a node in
    // maintenance (Pacemaker's meaning: no action at all touches that node's resources, so the
    // unit may not be started elsewhere either: that could make two copies).
    let on_maintenance_node = prims
        .iter()
        .any(|p| ctx.state(p).running.keys().any(|n| ctx.node(n).maintenance));
    let managed = !ctx.input.maintenance && !on_maintenance_node && prims.iter().all(|p| !ctx.state(p).maintenance);
    let mut explain = Explain::default();

    // Held: something of the unit may still run on a lost node not yet confirmed down. Starting
    // it elsewhere could make two copies (DESIGN.md invariant 3): leave it, and say why.
    if let Some(n) = prims
        .iter()
        .find_map(|p| ctx.state(p).running.keys().find(|n| ctx.node(n).unclean))
    {
        explain.placed = current.keys().cloned().collect();
        explain.verdict =
            format!("held: {n} is lost and not yet confirmed down; nothing it ran starts elsewhere before");
        explain.unmanaged = true;
        let note = if ctx.node(n).online {
            format!("Wait {}: a stop failed on {n}, not yet fenced", unit.id())
        } else {
            format!("Wait {}: {n} lost, not yet confirmed down (fence or lease)", unit.id())
        };
        return (current.clone().into_iter().collect(), explain, Some(note));
    }

    if !managed {
        explain.placed = current.keys().cloned().collect();
        explain.verdict = "unmanaged (maintenance): left as it is".into();
        explain.unmanaged = true;
        return (current.clone().into_iter().collect(), explain, None);
    }

    // Scores by node position; the explanation keeps only nodes something scored (an absent
    // node scores 0 with no constraint), which keeps a 10,000-resource plan small.
    // Where each unit this one is colocated with was placed (looked up once, not per node).
    let colo_targets: Vec<(&str, i64, Option<&Vec<usize>>)> = colos
        .iter()
        .map(|(with, s)| (*with, *s, placed.get(ctx.unit_of(with))))
        .collect();
    let mut node_scores: Vec<i64> = Vec::with_capacity(ctx.nodes.len());
    let prim_refs: Vec<(&String, &crate::resources::Primitive)> = prims
        .iter()
        .filter_map(|p| r.primitives.get(p).map(|x| (p, x)))
        .collect();
    for (i, node) in ctx.nodes.iter().enumerate() {
        let ns = ctx.node(node);
        let mut parts: Vec<String> = Vec::new();
        let mut score = 0i64;
        let mut add = |s: i64, why: String, parts: &mut Vec<String>| {
            score = add_scores(score, s);
            parts.push(format!("{why}: {}", score_str(s)));
        };
        if !ns.online {
            add(-INFINITY, format!("{node} lost"), &mut parts);
        }
        if ns.standby {
            add(-INFINITY, format!("{node} in standby"), &mut parts);
        }
        if ns.maintenance {
            add(-INFINITY, format!("{node} in maintenance"), &mut parts);
        }
        for (p, prim) in &prim_refs {
            if !ns.missing_agents.is_empty() {
                let agent = prim.agent.to_string();
                if ns.missing_agents.contains(&agent) {
                    add(-INFINITY, format!("agent {agent} missing on {node}"), &mut parts);
                }
            }
            // A hard error bans the node until cleanup, or, with a failure_timeout, until its
            // failures there have expired (Pacemaker: a hard error sets the fail count to
            // INFINITY, which failure-timeout clears).
            let expired = prim.meta.failure_timeout.is_some() && ctx.live_failures(p, node, &prim.meta) == 0;
            if ctx.state(p).banned.contains(node) && !expired {
                add(
                    -INFINITY,
                    format!("{p} banned from {node} after a hard error (cleanup to retry)"),
                    &mut parts,
                );
            }
            if ctx.state(p).fatal {
                add(
                    -INFINITY,
                    format!("{p} had a fatal configuration error (cleanup to retry)"),
                    &mut parts,
                );
            }
            let fails = if ctx.state(p).failures.is_empty() {
                0
            } else {
                ctx.live_failures(p, node, &prim.meta)
            };
            let threshold = prim.meta.migration_threshold.or(meta.migration_threshold);
            if let Some(t) = threshold {
                if fails >= t as usize {
                    add(
                        -INFINITY,
                        format!("migration-threshold {t} reached for {p} on {node}"),
                        &mut parts,
                    );
                }
            }
            if prim.on_fail == OnFail::Ban && fails > 0 {
                add(-INFINITY, format!("{p} failed on {node} (on_fail = ban)"), &mut parts);
            }
            if prim.on_fail == OnFail::Stop && ctx.nodes.iter().any(|n| ctx.live_failures(p, n, &prim.meta) > 0) {
                add(
                    -INFINITY,
                    format!("{p} failed (on_fail = stop; cleanup to restart it)"),
                    &mut parts,
                );
            }
        }
        for (rsc, n, pos, s) in &locs {
            if *pos == Some(i) {
                add(*s, format!("location {rsc} on {n}"), &mut parts);
            }
        }
        for o in &ops {
            if o.node == *node && o.expires_ms.map(|e| now < e).unwrap_or(true) {
                if o.prefer {
                    add(INFINITY, format!("moved to {node} by operator"), &mut parts);
                } else {
                    add(-INFINITY, format!("banned from {node} by operator"), &mut parts);
                }
            }
        }
        for (with, s, with_nodes) in &colo_targets {
            {
                let there = with_nodes.map(|v| v.contains(&i)).unwrap_or(false);
                if there {
                    add(*s, format!("colocated with {with}"), &mut parts);
                } else if *s >= INFINITY {
                    add(-INFINITY, format!("must be with {with} (not on {node})"), &mut parts);
                }
            }
        }
        let healthy_here = ns.online && current.get(node).map(|role| *role != Role::Failed).unwrap_or(false);
        if healthy_here && meta.stickiness != 0 {
            add(meta.stickiness, "stickiness".into(), &mut parts);
        }
        node_scores.push(score);
        if !parts.is_empty() {
            explain.scores.insert(node.clone(), (score, parts));
        }
    }

    let score_of = |n: &String| {
        ctx.node_pos
            .get(n.as_str())
            .map(|i| node_scores[*i])
            .unwrap_or(-INFINITY)
    };
    let allowed = |n: &String| score_of(n) >= 0;
    // Rank: score desc, current first, least loaded, name.
    // One precomputed key per node (the comparator must not do map lookups: it was half of
    // the scheduler's time at 1,000 primitives). Node names are unique, so the order is total.
    let keyed: Vec<(std::cmp::Reverse<i64>, bool, usize, &String)> = ctx
        .nodes
        .iter()
        .zip(&node_scores)
        .enumerate()
        .filter(|(_, (_, s))| **s >= 0)
        .map(|(i, (n, s))| {
            let here = !current.is_empty() && current.contains_key(n);
            (std::cmp::Reverse(*s), !here, load[i], n)
        })
        .collect();
    // A clone needs its best `clone_max` nodes in order; anything else only the best one.
    let ranked: Vec<&String> = if matches!(unit, Unit::Clone(_)) {
        let mut keyed = keyed;
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, _, _, n)| n).collect()
    } else {
        keyed.into_iter().min().map(|(_, _, _, n)| n).into_iter().collect()
    };

    if let Unit::Clone(c) = unit {
        return place_clone(ctx, &r.clones[*c], current, ranked, &score_of, explain);
    }

    let cur = current.keys().next().cloned();
    let mut note = None;
    let target = match (ranked.first().map(|n| (*n).clone()), &cur) {
        (None, _) => None,
        (Some(best), Some(cur)) if best != *cur && allowed(cur) => {
            let operator_move = ops
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
    if explain.verdict.is_empty() {
        explain.verdict = match &target {
            Some(t) => format!("on {t} (score {})", score_str(score_of(t))),
            None => format!("cannot run anywhere: {}", blockers(&explain)),
        };
    }
    explain.placed = target.iter().cloned().collect();
    (target.into_iter().map(|n| (n, Role::Started)).collect(), explain, note)
}

/// The first -INFINITY reason of each node, for "cannot run anywhere" messages.
fn blockers(explain: &Explain) -> String {
    let mut out = Vec::new();
    for (n, (s, parts)) in &explain.scores {
        let why = parts
            .iter()
            .find(|p| p.ends_with("-INFINITY"))
            .map(|p| p.trim_end_matches(": -INFINITY").to_string())
            .unwrap_or_else(|| format!("{n} score {}", score_str(*s)));
        let why = match why.find(" (not on ") {
            Some(i) => format!("{}, which runs nowhere", &why[..i]),
            None => why,
        };
        if !out.contains(&why) {
            out.push(why);
        }
    }
    out.join(", ")
}

fn place_clone(
    ctx: &Ctx,
    clone: &CloneSpec,
    current: &BTreeMap<String, Role>,
    ranked: Vec<&String>,
    score_of: &dyn Fn(&String) -> i64,
    mut explain: Explain,
) -> (Vec<(String, Role)>, Explain, Option<String>) {
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
    if clone.promotable {
        // Promote: current primaries first (stickiness), then by score, then by name.
        let mut order: Vec<&String> = chosen.iter().collect();
        order.sort_by(|a, b| {
            let pa = current.get(*a) == Some(&Role::Promoted);
            let pb = current.get(*b) == Some(&Role::Promoted);
            pb.cmp(&pa)
                .then_with(|| score_of(b).cmp(&score_of(a)))
                .then_with(|| a.cmp(b))
        });
        let primaries: BTreeSet<String> = order.into_iter().take(clone.promoted_max as usize).cloned().collect();
        for (n, role) in &mut roles {
            if primaries.contains(n) {
                *role = Role::Promoted;
            }
        }
    }
    explain.placed = chosen.clone();
    explain.verdict = if chosen.is_empty() {
        format!("no instance can run: {}", blockers(&explain))
    } else {
        format!("{} of {max} instance(s) placed", chosen.len())
    };
    let note = (chosen.len() < max && !chosen.is_empty())
        .then(|| format!("Degraded {}: {} of {max} instance(s) can run", clone.id, chosen.len()));
    (roles, explain, note)
}

/// Turn current → target into actions, edges and summary lines.
/// `targets` and `explains` are aligned with `units`.
fn diff(ctx: &Ctx, units: &[Unit], targets: &[Vec<(String, Role)>], explains: &[Explain], plan: &mut Plan) {
    // Actions pushed for the current unit start here: a primitive belongs to exactly one unit,
    // so an action can only repeat within its unit's actions.
    let unit_start = std::cell::Cell::new(0);
    let mut push = |plan: &mut Plan, kind: ActionKind, rsc: &str, node: &str, reason: &str| -> usize {
        let from = unit_start.get();
        if let Some(i) = plan.actions[from..]
            .iter()
            .position(|a| a.kind == kind && a.rsc == rsc && a.node == node)
        {
            return from + i;
        }
        plan.actions.push(Action {
            kind,
            rsc: rsc.to_string(),
            node: node.to_string(),
            reason: reason.to_string(),
        });
        plan.actions.len() - 1
    };
    let online = |n: &str| ctx.node(n).online;
    for ((unit, slots), explain) in units.iter().zip(targets).zip(explains) {
        let prims = ctx.primitives(unit.id());
        let tgt: &BTreeMap<String, Role> = &slots.iter().cloned().collect();
        if explain.unmanaged {
            continue;
        }
        unit_start.set(plan.actions.len());
        let is_clone = matches!(unit, Unit::Clone(_));
        let mut starts: Vec<usize> = Vec::new();
        let mut stops: Vec<usize> = Vec::new();
        for p in prims {
            let cur = &ctx.state(p).running;
            let on_fail = ctx.cfg.resources.primitives[p].on_fail;
            let why_not = |n: &str| -> String {
                explain
                    .scores
                    .get(n)
                    .and_then(|(_, parts)| parts.iter().find(|x| x.ends_with("-INFINITY")))
                    .map(|x| x.trim_end_matches(": -INFINITY").to_string())
                    .unwrap_or_else(|| explain.verdict.clone())
            };
            let unscored = "no preference, least loaded allowed node (score 0)".to_string();
            let reason_for = |n: &str| -> String {
                explain
                    .scores
                    .get(n)
                    .map(|(s, parts)| {
                        let pos: Vec<&String> = parts.iter().filter(|x| !x.ends_with("-INFINITY")).collect();
                        if pos.is_empty() {
                            format!("no preference, least loaded allowed node (score {})", score_str(*s))
                        } else {
                            pos.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
                        }
                    })
                    .unwrap_or_else(|| unscored.clone())
            };
            if !is_clone {
                let to = tgt.keys().next().cloned();
                // Multiple-active (e.g. after a healed partition): keep the copy on the target
                // if there is one, stop every other copy before anything starts.
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
                        plan.summary.push(format!("Stop {p} ({extra}): {reason}"));
                        stops.push(push(plan, ActionKind::Stop, p, extra, &reason));
                    }
                }
                let failed_here = from.as_ref().map(|f| cur[f] == Role::Failed).unwrap_or(false);
                match (&from, &to) {
                    (None, None) => {
                        if explain.verdict.starts_with("cannot run") {
                            plan.summary.push(format!(
                                "Cannot run {p}: {}",
                                explain.verdict.trim_start_matches("cannot run anywhere: ")
                            ));
                        }
                    }
                    (None, Some(t)) => {
                        let reason = reason_for(t);
                        plan.summary.push(format!("Start {p} ({t}): {reason}"));
                        starts.push(push(plan, ActionKind::Start, p, t, &reason));
                    }
                    (Some(f), None) => {
                        let reason = why_not(f);
                        if online(f) {
                            plan.summary.push(format!("Stop {p} ({f}): {reason}"));
                            stops.push(push(plan, ActionKind::Stop, p, f, &reason));
                        } else {
                            plan.summary.push(format!(
                                "Lost {p} ({f}): {f} lost and it cannot run elsewhere: {}",
                                explain.verdict.trim_start_matches("cannot run anywhere: ")
                            ));
                        }
                    }
                    (Some(f), Some(t)) if f == t => {
                        if failed_here {
                            match on_fail {
                                OnFail::Ignore => {}
                                _ => {
                                    let reason = "monitor failed".to_string();
                                    plan.summary.push(format!("Restart {p} ({f}): {reason}"));
                                    let s = push(plan, ActionKind::Stop, p, f, &reason);
                                    let st = push(plan, ActionKind::Start, p, t, &reason);
                                    plan.edges.push((s, st));
                                    stops.push(s);
                                    starts.push(st);
                                }
                            }
                        }
                    }
                    (Some(f), Some(t)) => {
                        let left = why_not(f);
                        let leaving = explain.scores.get(f).map(|(s, _)| *s < 0).unwrap_or(false);
                        let reason = if leaving {
                            left
                        } else {
                            let sf = explain.scores.get(f).map(|x| x.0).unwrap_or(0);
                            let st = explain.scores.get(t).map(|x| x.0).unwrap_or(0);
                            format!(
                                "{} on {f} < {} on {t} ({})",
                                score_str(sf),
                                score_str(st),
                                reason_for(t)
                            )
                        };
                        let start = push(plan, ActionKind::Start, p, t, &reason);
                        starts.push(start);
                        if online(f) {
                            plan.summary.push(format!("Move {p} ({f} -> {t}): {reason}"));
                            let stop = push(plan, ActionKind::Stop, p, f, &reason);
                            stops.push(stop);
                            plan.edges.push((stop, start));
                        } else {
                            plan.summary.push(format!("Recover {p} ({f} -> {t}): {reason}"));
                        }
                    }
                }
            } else if let Some(count) = ctx.cfg.resources.instance_count(p) {
                let on_fail = ctx.cfg.resources.primitives[p.as_str()].on_fail;
                let mut out = Acc {
                    plan,
                    push: &mut push,
                    starts: &mut starts,
                    stops: &mut stops,
                };
                instance_diff(ctx, p, count, on_fail, slots, &why_not, &reason_for, &mut out);
            } else {
                clone_diff(
                    ctx,
                    p,
                    cur,
                    tgt,
                    &why_not,
                    &reason_for,
                    plan,
                    &mut push,
                    &mut starts,
                    &mut stops,
                );
            }
        }
        // Never two copies: every stop of a primitive precedes every start of it.
        if !is_clone {
            for st in &stops {
                for sa in &starts {
                    if plan.actions[*st].rsc == plan.actions[*sa].rsc {
                        plan.edges.push((*st, *sa));
                    }
                }
            }
        }
        // Group order: start members in order, stop in reverse.
        if let Unit::Group(_) = unit {
            let pos = |i: &usize| prims.iter().position(|p| *p == plan.actions[*i].rsc).unwrap_or(0);
            let mut s = starts.clone();
            s.sort_by_key(pos);
            for w in s.windows(2) {
                plan.edges.push((w[0], w[1]));
            }
            let mut t = stops.clone();
            t.sort_by_key(|i| std::cmp::Reverse(pos(i)));
            for w in t.windows(2) {
                plan.edges.push((w[0], w[1]));
            }
            // All stops of a moving group before its first start.
            if let (Some(first_start), false) = (s.first(), t.is_empty()) {
                for st in &t {
                    plan.edges.push((*st, *first_start));
                }
            }
        }
    }
    // Ordering constraints: start(first) -> start(then); stop(then) -> stop(first). Actions
    // are indexed by resource once, so C constraints cost O(C + actions), not O(C × actions).
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
    plan.edges.sort();
    plan.edges.dedup();
}

/// Where `diff` collects actions.
struct Acc<'p, 'f> {
    plan: &'p mut Plan,
    push: &'f mut dyn FnMut(&mut Plan, ActionKind, &str, &str, &str) -> usize,
    starts: &'p mut Vec<usize>,
    stops: &'p mut Vec<usize>,
}

/// A clone with clone_node_max > 1: match its instances ("web:0", ...) to the target slots (a
/// node once per instance it should hold). An instance whose node still has a slot stays; the
/// others stop; instances not running start in the free slots, in slot order.
#[allow(clippy::too_many_arguments)]
fn instance_diff(
    ctx: &Ctx,
    p: &str,
    count: u32,
    on_fail: OnFail,
    slots: &[(String, Role)],
    why_not: &dyn Fn(&str) -> String,
    reason_for: &dyn Fn(&str) -> String,
    out: &mut Acc,
) {
    let mut free: BTreeMap<&str, usize> = BTreeMap::new();
    for (n, _) in slots {
        *free.entry(n.as_str()).or_default() += 1;
    }
    let mut idle: Vec<String> = Vec::new();
    for i in 0..count {
        let id = format!("{p}:{i}");
        let mut kept = false;
        for (n, role) in &ctx.state(&id).running {
            match free.get_mut(n.as_str()).filter(|c| **c > 0 && !kept) {
                Some(c) => {
                    *c -= 1;
                    kept = true;
                    if *role == Role::Failed && on_fail != OnFail::Ignore {
                        let reason = "monitor failed";
                        out.plan.summary.push(format!("Restart {id} on {n}: {reason}"));
                        let s = (out.push)(out.plan, ActionKind::Stop, &id, n, reason);
                        let st = (out.push)(out.plan, ActionKind::Start, &id, n, reason);
                        out.plan.edges.push((s, st));
                        out.stops.push(s);
                        out.starts.push(st);
                    }
                }
                None if ctx.node(n).online => {
                    let reason = why_not(n);
                    out.plan.summary.push(format!("Stop {id} on {n}: {reason}"));
                    let s = (out.push)(out.plan, ActionKind::Stop, &id, n, &reason);
                    out.stops.push(s);
                }
                None => out.plan.summary.push(format!("Lost {id} on {n}: {n} lost")),
            }
        }
        if !kept {
            idle.push(id);
        }
    }
    let mut idle = idle.into_iter();
    for (n, _) in slots {
        let Some(c) = free.get_mut(n.as_str()).filter(|c| **c > 0) else {
            continue;
        };
        let Some(id) = idle.next() else { break };
        *c -= 1;
        let reason = reason_for(n);
        out.plan.summary.push(format!("Start {id} on {n}: {reason}"));
        let st = (out.push)(out.plan, ActionKind::Start, &id, n, &reason);
        out.starts.push(st);
    }
}

#[allow(clippy::too_many_arguments)]
fn clone_diff(
    ctx: &Ctx,
    p: &str,
    cur: &BTreeMap<String, Role>,
    tgt: &BTreeMap<String, Role>,
    why_not: &dyn Fn(&str) -> String,
    reason_for: &dyn Fn(&str) -> String,
    plan: &mut Plan,
    push: &mut dyn FnMut(&mut Plan, ActionKind, &str, &str, &str) -> usize,
    starts: &mut Vec<usize>,
    stops: &mut Vec<usize>,
) {
    let promoted_max = ctx.cfg.resources.clone_of(p).map(|c| c.promoted_max).unwrap_or(1);
    let mut demotes = Vec::new();
    let mut promotes = Vec::new();
    for (n, role) in cur {
        if !tgt.contains_key(n) {
            if ctx.node(n).online {
                let reason = why_not(n);
                if *role == Role::Promoted {
                    plan.summary.push(format!("Demote {p} on {n}: {reason}"));
                    demotes.push(push(plan, ActionKind::Demote, p, n, &reason));
                }
                plan.summary.push(format!("Stop {p} on {n}: {reason}"));
                let s = push(plan, ActionKind::Stop, p, n, &reason);
                if let Some(d) = demotes.last() {
                    plan.edges.push((*d, s));
                }
                stops.push(s);
            } else {
                plan.summary.push(format!("Lost {p} on {n}: {n} lost"));
            }
        }
    }
    for (n, role) in tgt {
        let now = cur.get(n).copied();
        let failed = now == Some(Role::Failed);
        if now.is_none() || failed {
            let reason = if failed {
                "monitor failed".to_string()
            } else {
                reason_for(n)
            };
            let verb = if failed { "Restart" } else { "Start" };
            plan.summary.push(format!("{verb} {p} on {n}: {reason}"));
            let st = push(plan, ActionKind::Start, p, n, &reason);
            if failed {
                let s = push(plan, ActionKind::Stop, p, n, &reason);
                plan.edges.push((s, st));
                stops.push(s);
            }
            starts.push(st);
            if *role == Role::Promoted {
                plan.summary.push(format!(
                    "Promote {p} on {n}: chosen as primary (promoted_max {promoted_max})"
                ));
                let pr = push(plan, ActionKind::Promote, p, n, &reason);
                plan.edges.push((st, pr));
                promotes.push(pr);
            }
        } else if now == Some(Role::Started) && *role == Role::Promoted {
            let reason = format!("chosen as primary (promoted_max {promoted_max})");
            plan.summary.push(format!("Promote {p} on {n}: {reason}"));
            promotes.push(push(plan, ActionKind::Promote, p, n, &reason));
        } else if now == Some(Role::Promoted) && *role == Role::Started {
            let reason = "another instance is preferred as primary".to_string();
            plan.summary.push(format!("Demote {p} on {n}: {reason}"));
            demotes.push(push(plan, ActionKind::Demote, p, n, &reason));
        }
    }
    // Demote before promote: never two primaries at once.
    for d in &demotes {
        for pr in &promotes {
            plan.edges.push((*d, *pr));
        }
    }
}
