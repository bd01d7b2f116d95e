//! The resource model of the config: primitives (`[[resource]]`), groups, clones (and
//! promotable clones) and constraints (location, colocation, ordering), with their meta
//! attributes (stickiness, failback, migration threshold, failure timeout, on-fail). This module
//! holds the validated types, their raw (spanned) input forms and the validation that turns one
//! into the other, reporting every problem at its FILE:LINE:COL through the config checker.

use crate::diag::Checker;
use crate::duration::{self, parse_duration};
use crate::model::valid_name;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use toml::Spanned;

// Scores are shared with the scheduler; these paths stay for the code that names them here.
pub use crate::model::{add_scores, score_str, INFINITY};

/// What runs a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AgentSpec {
    /// `ocf:PROVIDER:TYPE`: `$OCF_ROOT/resource.d/PROVIDER/TYPE`.
    Ocf { provider: String, kind: String },
    /// Operator-given start/stop/monitor commands.
    Exec,
    /// A supervised long-running command.
    Process,
    /// The built-in virtual IP agent.
    Vip,
}

impl AgentSpec {
    pub fn parse(s: &str) -> Option<AgentSpec> {
        match s {
            "exec" => Some(AgentSpec::Exec),
            "process" => Some(AgentSpec::Process),
            "vip" => Some(AgentSpec::Vip),
            _ => {
                let mut it = s.split(':');
                match (it.next(), it.next(), it.next(), it.next()) {
                    (Some("ocf"), Some(p), Some(t), None) if valid_part(p) && valid_part(t) => Some(AgentSpec::Ocf {
                        provider: p.to_string(),
                        kind: t.to_string(),
                    }),
                    _ => None,
                }
            }
        }
    }
}

fn valid_part(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl std::fmt::Display for AgentSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentSpec::Ocf { provider, kind } => write!(f, "ocf:{provider}:{kind}"),
            AgentSpec::Exec => f.write_str("exec"),
            AgentSpec::Process => f.write_str("process"),
            AgentSpec::Vip => f.write_str("vip"),
        }
    }
}

/// When a resource returns to a node it prefers after that node comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Failback {
    /// As soon as the preferred node is back (if its score beats stickiness).
    #[default]
    Immediate,
    /// Once the preferred node has been back for this long.
    Delayed(#[serde(with = "crate::duration::duration_ms")] Duration),
    /// Never by itself: an operator moves it.
    Manual,
}

/// What to do when a monitor (or start) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFail {
    /// Restart it (on the same node, until migration_threshold moves it).
    #[default]
    Restart,
    /// Move it off the node at the first failure.
    Ban,
    /// Stop it and leave it stopped.
    Stop,
    /// Record the failure, do nothing.
    Ignore,
    /// Fence the node it failed on (needs `fencing = "required"`), then recover it elsewhere.
    Fence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    #[serde(with = "crate::duration::duration_ms")]
    pub interval: Duration,
    #[serde(with = "crate::duration::duration_ms")]
    pub timeout: Duration,
}

/// Meta attributes shared by primitives, groups and clones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Meta {
    pub stickiness: i64,
    pub failback: Failback,
    /// Failures on a node before the resource is banned there (None: never).
    pub migration_threshold: Option<u32>,
    /// Failures older than this are forgotten (None: never).
    #[serde(default, with = "crate::duration::opt_duration_ms")]
    pub failure_timeout: Option<Duration>,
}

/// A primitive resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Primitive {
    pub id: String,
    pub agent: AgentSpec,
    pub params: BTreeMap<String, String>,
    pub monitor: Option<Op>,
    #[serde(with = "crate::duration::duration_ms")]
    pub start_timeout: Duration,
    #[serde(with = "crate::duration::duration_ms")]
    pub stop_timeout: Duration,
    pub on_fail: OnFail,
    pub meta: Meta,
    /// The timeouts the config did not write (the agent's meta-data may supply them).
    #[serde(default)]
    pub defaulted: DefaultedTimeouts,
}

/// Which of a primitive's timeouts are phalanx's 20 s default rather than written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DefaultedTimeouts {
    pub start: bool,
    pub stop: bool,
    pub monitor: bool,
}

/// A resource's `params` measured against its agent's meta-data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamProblem {
    /// The agent requires it and the config does not give it (an error).
    Missing(String),
    /// The agent does not know it (a warning: a typo, or an agent of another version).
    Unknown(String),
}

impl Primitive {
    /// Take the agent's default timeouts where the config gave none, and say what is wrong with
    /// the params (as Pacemaker's `crm_resource --validate` would).
    pub fn adopt_agent_meta(&mut self, m: &crate::ocf::AgentMeta) -> Vec<ParamProblem> {
        if self.defaulted.start {
            if let Some(t) = m.timeouts.get("start") {
                self.start_timeout = *t;
            }
        }
        if self.defaulted.stop {
            if let Some(t) = m.timeouts.get("stop") {
                self.stop_timeout = *t;
            }
        }
        if let (true, Some(op), Some(t)) = (self.defaulted.monitor, self.monitor.as_mut(), m.timeouts.get("monitor")) {
            op.timeout = *t;
        }
        let mut problems: Vec<ParamProblem> = m
            .parameters
            .iter()
            .filter(|p| p.required && !self.params.contains_key(&p.name))
            .map(|p| ParamProblem::Missing(p.name.clone()))
            .collect();
        problems.extend(
            self.params
                .keys()
                .filter(|k| !m.parameters.iter().any(|p| &p.name == *k))
                .map(|k| ParamProblem::Unknown(k.clone())),
        );
        problems
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub members: Vec<String>,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneSpec {
    pub id: String,
    /// The primitive or group that is cloned.
    pub resource: String,
    /// None: one per node.
    pub clone_max: Option<u32>,
    pub clone_node_max: u32,
    pub promotable: bool,
    pub promoted_max: u32,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    /// Prefer (score > 0) or avoid (< 0) a node; ±INFINITY require/forbid it.
    Location { rsc: String, node: String, score: i64 },
    /// Place `rsc` where `with` is (score INFINITY: mandatory), or away from it (negative).
    Colocation { rsc: String, with: String, score: i64 },
    /// Start `first` before `then` (and stop `then` before `first`).
    Order {
        first: String,
        then: String,
        mandatory: bool,
    },
}

/// All resources of a config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    pub primitives: BTreeMap<String, Primitive>,
    pub groups: BTreeMap<String, Group>,
    pub clones: BTreeMap<String, CloneSpec>,
    /// In config order (their order is part of how a user reads them).
    pub constraints: Vec<Constraint>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.primitives.is_empty()
    }

    /// The group a primitive belongs to, if any.
    pub fn group_of(&self, primitive: &str) -> Option<&Group> {
        self.groups.values().find(|g| g.members.iter().any(|m| m == primitive))
    }

    /// The clone wrapping a primitive or group, if any.
    pub fn clone_of(&self, id: &str) -> Option<&CloneSpec> {
        self.clones.values().find(|c| c.resource == id)
    }

    /// The ids the cluster state tracks, with the primitive each one runs: a primitive's own id,
    /// except for a clone with `clone_node_max > 1`, whose instances are tracked one by one
    /// ("web:0" .. "web:N-1", as Pacemaker names them), since two may run on one node.
    pub fn instances(&self) -> Vec<(String, &Primitive)> {
        let mut out = Vec::with_capacity(self.primitives.len());
        for (id, p) in &self.primitives {
            match self.instance_count(id) {
                Some(n) => out.extend((0..n).map(|i| (format!("{id}:{i}"), p))),
                None => out.push((id.clone(), p)),
            }
        }
        out
    }

    /// For a primitive cloned with `clone_node_max > 1`: its number of instances.
    pub fn instance_count(&self, primitive: &str) -> Option<u32> {
        self.clone_of(primitive)
            .filter(|c| c.clone_node_max > 1)
            .and_then(|c| c.clone_max)
    }

    /// The primitive a tracked id runs ("web:1" → web, for an instanced clone; else itself).
    pub fn primitive_of(&self, rsc: &str) -> Option<&Primitive> {
        if let Some(p) = self.primitives.get(rsc) {
            return Some(p);
        }
        let (base, i) = rsc.rsplit_once(':')?;
        let n = self.instance_count(base)?;
        let i: u32 = i.parse().ok()?;
        self.primitives.get(base).filter(|_| i < n)
    }
}

// ---- raw input ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawScore {
    Int(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOp {
    interval: Spanned<String>,
    timeout: Option<Spanned<String>>,
}

/// The meta attributes as written (inlined in each section: serde cannot combine
/// `deny_unknown_fields` with `flatten`).
struct RawMeta<'a> {
    stickiness: &'a Option<Spanned<RawScore>>,
    failback: &'a Option<Spanned<String>>,
    migration_threshold: &'a Option<Spanned<i64>>,
    failure_timeout: &'a Option<Spanned<String>>,
}

macro_rules! raw_meta {
    ($r:expr) => {
        RawMeta {
            stickiness: &$r.stickiness,
            failback: &$r.failback,
            migration_threshold: &$r.migration_threshold,
            failure_timeout: &$r.failure_timeout,
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResource {
    id: Option<Spanned<String>>,
    agent: Option<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    monitor: Option<Spanned<RawOp>>,
    start_timeout: Option<Spanned<String>>,
    stop_timeout: Option<Spanned<String>>,
    on_fail: Option<Spanned<String>>,
    stickiness: Option<Spanned<RawScore>>,
    failback: Option<Spanned<String>>,
    migration_threshold: Option<Spanned<i64>>,
    failure_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    id: Option<Spanned<String>>,
    members: Option<Spanned<Vec<Spanned<String>>>>,
    stickiness: Option<Spanned<RawScore>>,
    failback: Option<Spanned<String>>,
    migration_threshold: Option<Spanned<i64>>,
    failure_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClone {
    id: Option<Spanned<String>>,
    resource: Option<Spanned<String>>,
    clone_max: Option<Spanned<i64>>,
    clone_node_max: Option<Spanned<i64>>,
    #[serde(default)]
    promotable: bool,
    promoted_max: Option<Spanned<i64>>,
    stickiness: Option<Spanned<RawScore>>,
    failback: Option<Spanned<String>>,
    migration_threshold: Option<Spanned<i64>>,
    failure_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConstraint {
    location: Option<Spanned<String>>,
    node: Option<Spanned<String>>,
    colocate: Option<Spanned<String>>,
    with: Option<Spanned<String>>,
    order: Option<Spanned<Vec<Spanned<String>>>>,
    kind: Option<Spanned<String>>,
    score: Option<Spanned<RawScore>>,
}

/// The raw resource sections of a config file.
#[derive(Default)]
pub(crate) struct RawResources {
    pub resource: Vec<Spanned<RawResource>>,
    pub group: Vec<Spanned<RawGroup>>,
    pub clone: Vec<Spanned<RawClone>>,
    pub constraint: Vec<Spanned<RawConstraint>>,
}

fn score(c: &mut Checker, s: &Spanned<RawScore>) -> Option<i64> {
    match s.get_ref() {
        RawScore::Int(i) => Some((*i).clamp(-INFINITY, INFINITY)),
        RawScore::Text(t) => match t.trim() {
            "INFINITY" | "+INFINITY" | "inf" | "+inf" => Some(INFINITY),
            "-INFINITY" | "-inf" => Some(-INFINITY),
            other => {
                c.error(
                    s.span(),
                    format!("score {other:?} is not a number, \"INFINITY\" or \"-INFINITY\""),
                );
                None
            }
        },
    }
}

fn meta(c: &mut Checker, m: RawMeta) -> Meta {
    let stickiness = m.stickiness.as_ref().and_then(|s| score(c, s)).unwrap_or(0);
    let failback = match m.failback {
        None => Failback::Immediate,
        Some(f) => match f.get_ref().as_str() {
            "immediate" => Failback::Immediate,
            "manual" => Failback::Manual,
            other => match other.strip_prefix("delayed:").map(parse_duration) {
                Some(Ok(d)) => Failback::Delayed(d),
                _ => {
                    c.error(f.span(), format!("failback {other:?} is not \"immediate\", \"manual\" or \"delayed:DURATION\" (e.g. \"delayed:30s\")"));
                    Failback::Immediate
                }
            },
        },
    };
    let migration_threshold = match m.migration_threshold {
        None => None,
        Some(t) if (1..=1_000_000).contains(t.get_ref()) => Some(*t.get_ref() as u32),
        Some(t) => {
            c.error(
                t.span(),
                format!("migration_threshold must be 1 or more, not {}", t.get_ref()),
            );
            None
        }
    };
    let failure_timeout = m
        .failure_timeout
        .as_ref()
        .and_then(|f| duration::checked(c, "failure_timeout", f));
    Meta {
        stickiness,
        failback,
        migration_threshold,
        failure_timeout,
    }
}

/// Validate the resource sections against the node names; every problem goes to `c`.
pub(crate) fn validate(
    c: &mut Checker,
    raw: RawResources,
    nodes: &BTreeSet<String>,
    agent_spans: &mut BTreeMap<String, std::ops::Range<usize>>,
) -> Resources {
    let mut out = Resources::default();
    // id → (kind, span start) for duplicate and reference checks
    let mut ids: BTreeMap<String, (&'static str, usize)> = BTreeMap::new();
    let mut claim = |c: &mut Checker, id: &Spanned<String>, kind: &'static str| -> bool {
        if !valid_name(id.get_ref()) {
            c.error(
                id.span(),
                format!(
                    "{kind} id {:?} must be 1-63 characters of A-Z a-z 0-9 - _ .",
                    id.get_ref()
                ),
            );
            return false;
        }
        if let Some((other, at)) = ids.get(id.get_ref()) {
            let line = c.line_of(*at);
            c.error(
                id.span(),
                format!("duplicate id {:?} (already a {other} on line {line})", id.get_ref()),
            );
            return false;
        }
        ids.insert(id.get_ref().clone(), (kind, id.span().start));
        true
    };

    for r in raw.resource {
        let span = r.span();
        let r = r.into_inner();
        let Some(id) = r.id.as_ref() else {
            c.error(span, "[[resource]] needs an `id`");
            continue;
        };
        if !claim(c, id, "resource") {
            continue;
        }
        let agent = match &r.agent {
            None => {
                c.error(span.clone(), format!("resource {} needs an `agent`", id.get_ref()));
                continue;
            }
            Some(a) => match AgentSpec::parse(a.get_ref()) {
                Some(s) => s,
                None => {
                    c.error(
                        a.span(),
                        format!(
                            "unknown agent {:?}: use \"ocf:PROVIDER:TYPE\", \"exec\", \"process\" or \"vip\"",
                            a.get_ref()
                        ),
                    );
                    continue;
                }
            },
        };
        let mut params = BTreeMap::new();
        for (k, v) in r.params {
            let v = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            params.insert(k, v);
        }
        let defaulted = DefaultedTimeouts {
            start: r.start_timeout.is_none(),
            stop: r.stop_timeout.is_none(),
            monitor: r
                .monitor
                .as_ref()
                .map(|m| m.get_ref().timeout.is_none())
                .unwrap_or(false),
        };
        agent_spans.insert(
            id.get_ref().clone(),
            r.agent.as_ref().map(|a| a.span()).unwrap_or(span.clone()),
        );
        let monitor = r.monitor.as_ref().and_then(|m| {
            let m = m.get_ref();
            let interval = duration::checked(c, "monitor interval", &m.interval)?;
            let timeout = match &m.timeout {
                Some(t) => duration::checked(c, "monitor timeout", t)?,
                None => Duration::from_secs(20),
            };
            if interval.is_zero() {
                c.error(m.interval.span(), "monitor interval must be above 0");
                return None;
            }
            Some(Op { interval, timeout })
        });
        let start_timeout = r
            .start_timeout
            .as_ref()
            .and_then(|t| duration::checked(c, "start_timeout", t))
            .unwrap_or(Duration::from_secs(20));
        let stop_timeout = r
            .stop_timeout
            .as_ref()
            .and_then(|t| duration::checked(c, "stop_timeout", t))
            .unwrap_or(Duration::from_secs(20));
        let on_fail = match &r.on_fail {
            None => OnFail::Restart,
            Some(o) => match o.get_ref().as_str() {
                "restart" => OnFail::Restart,
                "ban" => OnFail::Ban,
                "stop" => OnFail::Stop,
                "ignore" => OnFail::Ignore,
                "fence" => OnFail::Fence,
                other => {
                    c.error(
                        o.span(),
                        format!("on_fail {other:?} is not one of restart, ban, stop, ignore"),
                    );
                    OnFail::Restart
                }
            },
        };
        let meta = meta(c, raw_meta!(r));
        out.primitives.insert(
            id.get_ref().clone(),
            Primitive {
                id: id.get_ref().clone(),
                agent,
                params,
                monitor,
                start_timeout,
                stop_timeout,
                on_fail,
                meta,
                defaulted,
            },
        );
    }

    let mut grouped: BTreeMap<String, String> = BTreeMap::new();
    for g in raw.group {
        let span = g.span();
        let g = g.into_inner();
        let Some(id) = g.id.as_ref() else {
            c.error(span, "[[group]] needs an `id`");
            continue;
        };
        if !claim(c, id, "group") {
            continue;
        }
        let mut members = Vec::new();
        match &g.members {
            None => c.error(span.clone(), format!("group {} needs `members`", id.get_ref())),
            Some(ms) if ms.get_ref().is_empty() => c.error(ms.span(), format!("group {} has no members", id.get_ref())),
            Some(ms) => {
                for m in ms.get_ref() {
                    let name = m.get_ref();
                    if !out.primitives.contains_key(name) {
                        c.error(m.span(), format!("group member {name:?} is not a [[resource]]"));
                    } else if let Some(other) = grouped.get(name) {
                        c.error(
                            m.span(),
                            format!("resource {name:?} is already a member of group {other}"),
                        );
                    } else {
                        grouped.insert(name.clone(), id.get_ref().clone());
                        members.push(name.clone());
                    }
                }
            }
        }
        let meta = meta(c, raw_meta!(g));
        out.groups.insert(
            id.get_ref().clone(),
            Group {
                id: id.get_ref().clone(),
                members,
                meta,
            },
        );
    }

    let mut cloned: BTreeSet<String> = BTreeSet::new();
    for cl in raw.clone {
        let span = cl.span();
        let cl = cl.into_inner();
        let Some(id) = cl.id.as_ref() else {
            c.error(span, "[[clone]] needs an `id`");
            continue;
        };
        if !claim(c, id, "clone") {
            continue;
        }
        let Some(target) = cl.resource.as_ref() else {
            c.error(
                span,
                format!(
                    "clone {} needs a `resource` (a [[resource]] or [[group]] id)",
                    id.get_ref()
                ),
            );
            continue;
        };
        let t = target.get_ref();
        if !out.primitives.contains_key(t) && !out.groups.contains_key(t) {
            c.error(
                target.span(),
                format!(
                    "clone {} wraps {t:?}, which is not a [[resource]] or [[group]]",
                    id.get_ref()
                ),
            );
            continue;
        }
        if grouped.contains_key(t) {
            c.error(
                target.span(),
                format!("{t:?} is a group member: clone the group instead"),
            );
            continue;
        }
        if !cloned.insert(t.clone()) {
            c.error(target.span(), format!("{t:?} is already cloned"));
            continue;
        }
        let positive = |c: &mut Checker, v: &Option<Spanned<i64>>, what: &str| -> Option<u32> {
            let v = v.as_ref()?;
            if (1..=10_000).contains(v.get_ref()) {
                Some(*v.get_ref() as u32)
            } else {
                c.error(v.span(), format!("{what} must be 1 or more, not {}", v.get_ref()));
                None
            }
        };
        let clone_max = positive(c, &cl.clone_max, "clone_max");
        let clone_node_max = positive(c, &cl.clone_node_max, "clone_node_max").unwrap_or(1);
        let promoted_max = positive(c, &cl.promoted_max, "promoted_max").unwrap_or(1);
        if let (Some(pm), Some(cm)) = (&cl.promoted_max, clone_max) {
            if promoted_max > cm {
                c.error(
                    pm.span(),
                    format!("promoted_max {promoted_max} is more than clone_max {cm}"),
                );
            }
        }
        if let Some(cnm) = cl.clone_node_max.as_ref().filter(|_| clone_node_max > 1) {
            // Several instances per node need instance identities ("web:0", "web:1", ...): the
            // state then tracks each instance, which is done for clones of one primitive.
            let why = if clone_max.is_none() {
                Some("needs clone_max (the number of instances to run)".to_string())
            } else if cl.promotable {
                Some("is not supported for promotable clones".to_string())
            } else if out.groups.contains_key(t) {
                Some("is supported for clones of one [[resource]], not of a group".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                c.error(cnm.span(), format!("clone {}: clone_node_max > 1 {why}", id.get_ref()));
            }
        }
        if cl.promoted_max.is_some() && !cl.promotable {
            c.warn(
                span.clone(),
                format!(
                    "clone {}: promoted_max has no effect without promotable = true",
                    id.get_ref()
                ),
            );
        }
        let meta = meta(c, raw_meta!(cl));
        out.clones.insert(
            id.get_ref().clone(),
            CloneSpec {
                id: id.get_ref().clone(),
                resource: t.clone(),
                clone_max,
                clone_node_max,
                promotable: cl.promotable,
                promoted_max,
                meta,
            },
        );
    }

    // Constraints refer to any top-level id (primitive, group or clone).
    let known = |id: &str| ids.contains_key(id);
    let mut order_edges: Vec<(String, String, std::ops::Range<usize>)> = Vec::new();
    let mut colo_edges: Vec<(String, String, std::ops::Range<usize>)> = Vec::new();
    let mut locations: BTreeMap<(String, String), (i64, std::ops::Range<usize>)> = BTreeMap::new();
    for k in raw.constraint {
        let span = k.span();
        let k = k.into_inner();
        let refers = |c: &mut Checker, r: &Spanned<String>| -> bool {
            if known(r.get_ref()) {
                true
            } else {
                c.error(r.span(), format!("{:?} is not a resource, group or clone", r.get_ref()));
                false
            }
        };
        let kinds = [k.location.is_some(), k.colocate.is_some(), k.order.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if kinds != 1 {
            c.error(
                span,
                "a [[constraint]] is exactly one of `location = ...`, `colocate = ...` or `order = [...]`",
            );
            continue;
        }
        if let Some(rsc) = &k.location {
            let Some(node) = &k.node else {
                c.error(span, "a location constraint needs a `node`");
                continue;
            };
            let ok_node = nodes.contains(node.get_ref());
            if !ok_node {
                c.error(
                    node.span(),
                    format!(
                        "location constraint names node {:?}, which is not a [[node]]",
                        node.get_ref()
                    ),
                );
            }
            let s = match &k.score {
                Some(s) => score(c, s),
                None => Some(INFINITY),
            };
            if !refers(c, rsc) || !ok_node {
                continue;
            }
            let Some(s) = s else { continue };
            let key = (rsc.get_ref().clone(), node.get_ref().clone());
            if let Some((prev, _)) = locations.get(&key) {
                if (*prev >= INFINITY && s <= -INFINITY) || (*prev <= -INFINITY && s >= INFINITY) {
                    c.error(
                        k.score.as_ref().map(|x| x.span()).unwrap_or(span.clone()),
                        format!("impossible: {} is both required on and forbidden from {}", key.0, key.1),
                    );
                    continue;
                }
            }
            locations.insert(key, (s, span));
            out.constraints.push(Constraint::Location {
                rsc: rsc.get_ref().clone(),
                node: node.get_ref().clone(),
                score: s,
            });
        } else if let Some(rsc) = &k.colocate {
            let Some(with) = &k.with else {
                c.error(span, "a colocation constraint needs `with`");
                continue;
            };
            let s = match &k.score {
                Some(s) => score(c, s),
                None => Some(INFINITY),
            };
            if !refers(c, rsc) | !refers(c, with) {
                continue;
            }
            if rsc.get_ref() == with.get_ref() {
                c.error(
                    with.span(),
                    format!("impossible: {} is colocated with itself", rsc.get_ref()),
                );
                continue;
            }
            let Some(s) = s else { continue };
            colo_edges.push((rsc.get_ref().clone(), with.get_ref().clone(), span));
            out.constraints.push(Constraint::Colocation {
                rsc: rsc.get_ref().clone(),
                with: with.get_ref().clone(),
                score: s,
            });
        } else if let Some(order) = &k.order {
            let list = order.get_ref();
            if list.len() != 2 {
                c.error(order.span(), "order = [FIRST, THEN] takes exactly two ids");
                continue;
            }
            let mandatory = match &k.kind {
                None => true,
                Some(kd) => match kd.get_ref().as_str() {
                    "mandatory" => true,
                    "optional" => false,
                    other => {
                        c.error(
                            kd.span(),
                            format!("order kind {other:?} is not \"mandatory\" or \"optional\""),
                        );
                        continue;
                    }
                },
            };
            if !refers(c, &list[0]) | !refers(c, &list[1]) {
                continue;
            }
            if list[0].get_ref() == list[1].get_ref() {
                c.error(
                    order.span(),
                    format!("impossible: {} is ordered after itself", list[0].get_ref()),
                );
                continue;
            }
            if mandatory {
                order_edges.push((list[0].get_ref().clone(), list[1].get_ref().clone(), span));
            }
            out.constraints.push(Constraint::Order {
                first: list[0].get_ref().clone(),
                then: list[1].get_ref().clone(),
                mandatory,
            });
        }
    }

    // Mandatory colocation with a resource forbidden where the other is required.
    // Index the location constraints by resource once (checking every colocation against every
    // location was quadratic: seconds at 10,000 resources).
    let mut required: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for ((r, node), (s, _)) in &locations {
        if *s >= INFINITY {
            required.entry(r.as_str()).or_default().push(node.as_str());
        }
    }
    for (rsc, with, span) in &colo_edges {
        for node in required.get(rsc.as_str()).into_iter().flatten() {
            {
                if let Some((w, _)) = locations.get(&(with.clone(), node.to_string())) {
                    if *w <= -INFINITY {
                        c.error(
                            span.clone(),
                            format!("impossible: {rsc} must run on {node} and with {with}, which is forbidden there"),
                        );
                    }
                }
            }
        }
    }
    for (edges, what) in [(&order_edges, "ordering"), (&colo_edges, "colocation")] {
        if let Some((from, to, span)) = find_cycle(edges) {
            c.error(
                span,
                format!("dependency cycle in {what} constraints: {from} -> {to} closes a loop"),
            );
        }
    }
    out
}

/// The first edge (in config order) that closes a cycle, if any.
fn find_cycle(edges: &[(String, String, std::ops::Range<usize>)]) -> Option<(String, String, std::ops::Range<usize>)> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (i, (from, to, span)) in edges.iter().enumerate() {
        // Does `to` already reach `from` through the edges before this one?
        let mut seen = BTreeSet::new();
        let mut stack = vec![to.as_str()];
        while let Some(n) = stack.pop() {
            if n == from {
                return Some((from.clone(), to.clone(), span.clone()));
            }
            if seen.insert(n) {
                stack.extend(adj.get(n).into_iter().flatten().copied());
            }
        }
        adj.entry(from.as_str()).or_default().push(to.as_str());
        let _ = i;
    }
    None
}
