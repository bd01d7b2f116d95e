//! Constraints (`[[constraint]]`): location (prefer or avoid a node), colocation (run with or
//! away from another resource) and ordering (start one before another), their validation, and
//! the checks across them: a resource required where what it must run with is forbidden, and
//! dependency cycles.

use super::meta::{score, RawScore};
use super::Ids;
use crate::diag::Checker;
use crate::model::INFINITY;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    /// Prefer (score > 0) or avoid (< 0) a node; ±INFINITY require/forbid it.
    Location { rsc: String, node: String, score: i64 },
    /// Place `rsc` where `with` is (score INFINITY: mandatory), or away from it (negative).
    /// `with_promoted` (`with_role = "promoted"`): where `with`'s promoted instance is (a write
    /// VIP with a database's primary); then `rsc` also starts after that promotion and stops
    /// before a demotion.
    Colocation {
        rsc: String,
        with: String,
        score: i64,
        #[serde(default)]
        with_promoted: bool,
    },
    /// Start `first` before `then` (and stop `then` before `first`).
    Order {
        first: String,
        then: String,
        mandatory: bool,
    },
}

// ---- as written ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConstraint {
    location: Option<Spanned<String>>,
    node: Option<Spanned<String>>,
    colocate: Option<Spanned<String>>,
    with: Option<Spanned<String>>,
    with_role: Option<Spanned<String>>,
    order: Option<Spanned<Vec<Spanned<String>>>>,
    kind: Option<Spanned<String>>,
    score: Option<Spanned<RawScore>>,
}

/// A dependency between two ids, and where it was written.
type Edge = (String, String, Range<usize>);

/// What the constraints validated so far say, for the checks across constraints.
#[derive(Default)]
struct Seen {
    /// Mandatory orderings: first → then.
    order_edges: Vec<Edge>,
    /// Colocations: rsc → with.
    colo_edges: Vec<Edge>,
    /// (rsc, node) → its location score.
    locations: BTreeMap<(String, String), (i64, Range<usize>)>,
}

/// Validate the constraints against the resource ids and the node names. They refer to any
/// top-level id (primitive, group or clone); their config order is kept.
pub(super) fn validate(
    c: &mut Checker,
    raw: Vec<Spanned<RawConstraint>>,
    ids: &Ids,
    nodes: &BTreeSet<String>,
) -> Vec<Constraint> {
    let mut out = Vec::new();
    let mut seen = Seen::default();
    for k in raw {
        let span = k.span();
        let k = k.into_inner();
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
        let made = if let Some(rsc) = &k.location {
            location(c, &k, rsc, span, ids, nodes, &mut seen)
        } else if let Some(rsc) = &k.colocate {
            colocation(c, &k, rsc, span, ids, &mut seen)
        } else if let Some(order) = &k.order {
            ordering(c, &k, order, span, ids, &mut seen)
        } else {
            None
        };
        out.extend(made);
    }
    impossible_colocations(c, &seen);
    for (edges, what) in [(&seen.order_edges, "ordering"), (&seen.colo_edges, "colocation")] {
        if let Some((from, to, span)) = find_cycle(edges) {
            c.error(
                span,
                format!("dependency cycle in {what} constraints: {from} -> {to} closes a loop"),
            );
        }
    }
    out
}

/// `r` names a resource, group or clone (else reported).
fn refers(c: &mut Checker, ids: &Ids, r: &Spanned<String>) -> bool {
    if ids.contains(r.get_ref()) {
        true
    } else {
        c.error(r.span(), format!("{:?} is not a resource, group or clone", r.get_ref()));
        false
    }
}

/// The constraint's score: INFINITY when not written.
fn score_or_infinity(c: &mut Checker, k: &RawConstraint) -> Option<i64> {
    match &k.score {
        Some(s) => score(c, s),
        None => Some(INFINITY),
    }
}

fn location(
    c: &mut Checker,
    k: &RawConstraint,
    rsc: &Spanned<String>,
    span: Range<usize>,
    ids: &Ids,
    nodes: &BTreeSet<String>,
    seen: &mut Seen,
) -> Option<Constraint> {
    let Some(node) = &k.node else {
        c.error(span, "a location constraint needs a `node`");
        return None;
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
    let s = score_or_infinity(c, k);
    if !refers(c, ids, rsc) || !ok_node {
        return None;
    }
    let s = s?;
    let key = (rsc.get_ref().clone(), node.get_ref().clone());
    if let Some((prev, _)) = seen.locations.get(&key) {
        if (*prev >= INFINITY && s <= -INFINITY) || (*prev <= -INFINITY && s >= INFINITY) {
            c.error(
                k.score.as_ref().map(|x| x.span()).unwrap_or(span.clone()),
                format!("impossible: {} is both required on and forbidden from {}", key.0, key.1),
            );
            return None;
        }
    }
    seen.locations.insert(key, (s, span));
    Some(Constraint::Location {
        rsc: rsc.get_ref().clone(),
        node: node.get_ref().clone(),
        score: s,
    })
}

fn colocation(
    c: &mut Checker,
    k: &RawConstraint,
    rsc: &Spanned<String>,
    span: Range<usize>,
    ids: &Ids,
    seen: &mut Seen,
) -> Option<Constraint> {
    let Some(with) = &k.with else {
        c.error(span, "a colocation constraint needs `with`");
        return None;
    };
    let s = score_or_infinity(c, k);
    let with_promoted = match k.with_role.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
        None | Some(("started", _)) => Some(false),
        Some(("promoted", _)) => Some(true),
        Some((other, span)) => {
            c.error(span, format!("with_role {other:?} is not \"promoted\" or \"started\""));
            None
        }
    };
    // `|`, not `||`: both unknown ids are reported.
    if !refers(c, ids, rsc) | !refers(c, ids, with) {
        return None;
    }
    let with_promoted = with_promoted?;
    if rsc.get_ref() == with.get_ref() {
        c.error(
            with.span(),
            format!("impossible: {} is colocated with itself", rsc.get_ref()),
        );
        return None;
    }
    let s = s?;
    seen.colo_edges
        .push((rsc.get_ref().clone(), with.get_ref().clone(), span));
    Some(Constraint::Colocation {
        rsc: rsc.get_ref().clone(),
        with: with.get_ref().clone(),
        score: s,
        with_promoted,
    })
}

fn ordering(
    c: &mut Checker,
    k: &RawConstraint,
    order: &Spanned<Vec<Spanned<String>>>,
    span: Range<usize>,
    ids: &Ids,
    seen: &mut Seen,
) -> Option<Constraint> {
    let list = order.get_ref();
    if list.len() != 2 {
        c.error(order.span(), "order = [FIRST, THEN] takes exactly two ids");
        return None;
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
                return None;
            }
        },
    };
    if !refers(c, ids, &list[0]) | !refers(c, ids, &list[1]) {
        return None;
    }
    if list[0].get_ref() == list[1].get_ref() {
        c.error(
            order.span(),
            format!("impossible: {} is ordered after itself", list[0].get_ref()),
        );
        return None;
    }
    if mandatory {
        seen.order_edges
            .push((list[0].get_ref().clone(), list[1].get_ref().clone(), span));
    }
    Some(Constraint::Order {
        first: list[0].get_ref().clone(),
        then: list[1].get_ref().clone(),
        mandatory,
    })
}

/// Mandatory colocation with a resource forbidden where the other is required. The location
/// constraints are indexed by resource once (checking every colocation against every location
/// was quadratic: seconds at 10,000 resources).
fn impossible_colocations(c: &mut Checker, seen: &Seen) {
    let mut required: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for ((r, node), (s, _)) in &seen.locations {
        if *s >= INFINITY {
            required.entry(r.as_str()).or_default().push(node.as_str());
        }
    }
    for (rsc, with, span) in &seen.colo_edges {
        for node in required.get(rsc.as_str()).into_iter().flatten() {
            if let Some((w, _)) = seen.locations.get(&(with.clone(), node.to_string())) {
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

/// The first edge (in config order) that closes a cycle, if any.
fn find_cycle(edges: &[Edge]) -> Option<Edge> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to, span) in edges {
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
    }
    None
}
