//! The resource model of the config: primitives (`[[resource]]`), groups, clones (and
//! promotable clones) and constraints (location, colocation, ordering), with their meta
//! attributes (stickiness, failback, migration threshold, failure timeout, on-fail).
//!
//! Each kind lives in its own file with its validated type, its raw (spanned) input form and
//! the validation that turns one into the other, reporting every problem at its FILE:LINE:COL
//! through the config checker. This module holds [`Resources`] (all of them, with the lookups
//! the scheduler and the node use) and the validation of the sections in dependency order:
//! primitives, then groups of them, then clones of either, then constraints on any.

mod clone;
mod constraints;
mod group;
mod meta;
mod primitive;

use crate::diag::Checker;
use crate::model::valid_name;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use toml::Spanned;

pub use clone::{clone_meta, CloneSpec};
pub use constraints::Constraint;
pub use group::Group;
pub use meta::{Failback, Meta};
pub use primitive::{params_on, AgentSpec, DefaultedTimeouts, OnFail, Op, ParamProblem, Primitive};

pub(crate) use clone::RawClone;
pub(crate) use constraints::RawConstraint;
pub(crate) use group::RawGroup;
pub(crate) use primitive::RawResource;

// Scores are shared with the scheduler; these paths stay for the code that names them here.
pub use crate::model::{add_scores, score_str, INFINITY};

/// The node attribute in which a node publishes what a built-in agent is doing for instance
/// `rsc` while one of its actions runs (`phalanx status`: "rejoining (pg_rewind)").
pub fn progress_attr(rsc: &str) -> String {
    format!("{PROGRESS_ATTR_PREFIX}{rsc}")
}

/// What every [`progress_attr`] begins with.
pub const PROGRESS_ATTR_PREFIX: &str = "phalanx-progress-";

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

    /// Whether `id` names a primitive, a group or a clone.
    pub fn contains(&self, id: &str) -> bool {
        self.primitives.contains_key(id) || self.groups.contains_key(id) || self.clones.contains_key(id)
    }

    /// The group a primitive belongs to, if any.
    pub fn group_of(&self, primitive: &str) -> Option<&Group> {
        self.groups.values().find(|g| g.members.iter().any(|m| m == primitive))
    }

    /// The clone wrapping a primitive or group, if any.
    pub fn clone_of(&self, id: &str) -> Option<&CloneSpec> {
        self.clones.values().find(|c| c.resource == id)
    }

    /// The clone that runs primitive `primitive`: the one wrapping it, or its group.
    pub fn clone_running(&self, primitive: &str) -> Option<&CloneSpec> {
        let unit = self.group_of(primitive).map_or(primitive, |g| g.id.as_str());
        self.clone_of(unit)
    }

    /// The placement unit `id` belongs to, then every other id that names it: the unit (its
    /// clone, else its group, else itself), a clone's resource, a group's members. A move or
    /// ban on any of them acts on the whole unit (as the scheduler reads them), so `clear` of
    /// any of them clears all of them. Empty for an unknown id.
    pub fn unit_ids(&self, id: &str) -> Vec<String> {
        if !self.primitives.contains_key(id) && !self.groups.contains_key(id) && !self.clones.contains_key(id) {
            return Vec::new();
        }
        let group = self.group_of(id).map(|g| g.id.as_str()).unwrap_or(id);
        let top = self.clone_of(group).map(|c| c.id.as_str()).unwrap_or(group);
        let mut ids = vec![top.to_string()];
        let inner = self.clones.get(top).map(|c| c.resource.as_str());
        ids.extend(inner.map(str::to_string));
        if let Some(g) = self.groups.get(inner.unwrap_or(top)) {
            ids.extend(g.members.iter().cloned());
        }
        ids
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

/// The raw resource sections of a config file.
#[derive(Default)]
pub(crate) struct RawResources {
    pub resource: Vec<Spanned<RawResource>>,
    pub group: Vec<Spanned<RawGroup>>,
    pub clone: Vec<Spanned<RawClone>>,
    pub constraint: Vec<Spanned<RawConstraint>>,
    /// The `[[balancer]]` sections: their ids are claimed with the primitives' (groups and
    /// constraints may name them).
    pub builtin: Vec<Builtin>,
}

/// A section that runs as a primitive of a built-in agent (a `[[balancer]]`).
pub(crate) struct Builtin {
    pub id: Option<Spanned<String>>,
    /// The whole section (where a missing id is reported).
    pub span: Range<usize>,
    /// The section's name, for messages ("balancer").
    pub kind: &'static str,
    /// The primitive it runs as (its id is set when the id is claimed).
    pub primitive: Primitive,
}

/// Every top-level id (primitive, group, clone) with its kind and where it was written: ids are
/// unique across kinds, and constraints may name any of them.
#[derive(Default)]
pub(crate) struct Ids(BTreeMap<String, (&'static str, usize)>);

impl Ids {
    /// The `id` of a `[[kind]]` section, if it has a valid one not taken yet (else reported).
    fn claim_section(
        &mut self,
        c: &mut Checker,
        id: &Option<Spanned<String>>,
        section: &Range<usize>,
        kind: &'static str,
    ) -> Option<String> {
        let Some(id) = id else {
            c.error(section.clone(), format!("[[{kind}]] needs an `id`"));
            return None;
        };
        if !valid_name(id.get_ref()) {
            c.error(
                id.span(),
                format!(
                    "{kind} id {:?} must be 1-63 characters of A-Z a-z 0-9 - _ .",
                    id.get_ref()
                ),
            );
            return None;
        }
        if let Some((other, at)) = self.0.get(id.get_ref()) {
            let line = c.line_of(*at);
            c.error(
                id.span(),
                format!("duplicate id {:?} (already a {other} on line {line})", id.get_ref()),
            );
            return None;
        }
        self.0.insert(id.get_ref().clone(), (kind, id.span().start));
        Some(id.get_ref().clone())
    }

    fn contains(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }
}

/// Validate the resource sections against the node names; every problem goes to `c`, and
/// `agent_spans` learns where each primitive's agent is written.
pub(crate) fn validate(
    c: &mut Checker,
    raw: RawResources,
    nodes: &BTreeSet<String>,
    agent_spans: &mut BTreeMap<String, Range<usize>>,
) -> Resources {
    let mut out = Resources::default();
    let mut ids = Ids::default();
    for r in raw.resource {
        if let Some(p) = primitive::validate(c, r, &mut ids, agent_spans, nodes) {
            out.primitives.insert(p.id.clone(), p);
        }
    }
    for b in raw.builtin {
        if let Some(id) = ids.claim_section(c, &b.id, &b.span, b.kind) {
            agent_spans.insert(id.clone(), b.span);
            out.primitives.insert(id.clone(), Primitive { id, ..b.primitive });
        }
    }
    // member → its group
    let mut grouped: BTreeMap<String, String> = BTreeMap::new();
    for g in raw.group {
        if let Some(g) = group::validate(c, g, &mut ids, &out, &mut grouped) {
            out.groups.insert(g.id.clone(), g);
        }
    }
    let mut cloned: BTreeSet<String> = BTreeSet::new();
    for cl in raw.clone {
        if let Some(cl) = clone::validate(c, cl, &mut ids, &out, &grouped, &mut cloned) {
            out.clones.insert(cl.id.clone(), cl);
        }
    }
    out.constraints = constraints::validate(c, raw.constraint, &ids, nodes);
    out
}
