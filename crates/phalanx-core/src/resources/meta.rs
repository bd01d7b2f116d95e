//! The meta attributes shared by primitives, groups and clones (stickiness, failback, migration
//! threshold, failure timeout), and scores as a config writes them (a number, "INFINITY" or
//! "-INFINITY"), with their validation.

use crate::diag::Checker;
use crate::duration::{self, parse_duration};
use crate::model::INFINITY;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use toml::Spanned;

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

/// A score as written.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawScore {
    Int(i64),
    Text(String),
}

/// The meta attributes as written (inlined in each section: serde cannot combine
/// `deny_unknown_fields` with `flatten`).
pub(super) struct RawMeta<'a> {
    pub stickiness: &'a Option<Spanned<RawScore>>,
    pub failback: &'a Option<Spanned<String>>,
    pub migration_threshold: &'a Option<Spanned<i64>>,
    pub failure_timeout: &'a Option<Spanned<String>>,
}

/// A written score, saturated at ±INFINITY; None after reporting a word that is not one.
pub(super) fn score(c: &mut Checker, s: &Spanned<RawScore>) -> Option<i64> {
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

/// Validate the meta attributes of one section.
pub(super) fn validate(c: &mut Checker, m: RawMeta) -> Meta {
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
