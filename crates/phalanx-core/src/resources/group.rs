//! Groups (`[[group]]`): primitives that run together on one node, started in order and stopped
//! in reverse, and their validation (every member a primitive, in one group at most).

use super::meta::{self, Meta, RawMeta, RawScore};
use super::{Ids, Resources};
use crate::diag::Checker;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub members: Vec<String>,
    pub meta: Meta,
}

// ---- as written ------------------------------------------------------------------------------

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

impl RawGroup {
    fn meta(&self) -> RawMeta<'_> {
        RawMeta {
            stickiness: &self.stickiness,
            failback: &self.failback,
            migration_threshold: &self.migration_threshold,
            failure_timeout: &self.failure_timeout,
        }
    }
}

/// Validate one `[[group]]` against the primitives; `grouped` (member → its group) learns
/// its members.
pub(super) fn validate(
    c: &mut Checker,
    g: Spanned<RawGroup>,
    ids: &mut Ids,
    out: &Resources,
    grouped: &mut BTreeMap<String, String>,
) -> Option<Group> {
    let span = g.span();
    let g = g.into_inner();
    let id = ids.claim_section(c, &g.id, &span, "group")?;
    let mut members = Vec::new();
    match &g.members {
        None => c.error(span.clone(), format!("group {id} needs `members`")),
        Some(ms) if ms.get_ref().is_empty() => c.error(ms.span(), format!("group {id} has no members")),
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
                    grouped.insert(name.clone(), id.clone());
                    members.push(name.clone());
                }
            }
        }
    }
    let meta = meta::validate(c, g.meta());
    Some(Group { id, members, meta })
}
