//! Clones (`[[clone]]`): a primitive or group run on several nodes at once, optionally several
//! instances per node, optionally promotable (some instances promoted to primary), and their
//! validation.

use super::meta::{self, Meta, RawMeta, RawScore};
use super::{Ids, Resources};
use crate::diag::Checker;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use toml::Spanned;

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
    /// `notify = true`: the agents are told of the clone's changes (OCF clone notifications,
    /// as Pacemaker's `notify` meta attribute; see `crate::notify` and the scheduler's
    /// `notifications`).
    #[serde(default)]
    pub notify: bool,
    pub meta: Meta,
}

/// Pacemaker's meta attributes of a clone instance, as agents read them
/// (`OCF_RESKEY_CRM_meta_<name>`): `clone` (this instance's number), `clone_max` (the clone's,
/// or `members` when it runs one per node), `clone_node_max`, `notify`, `globally_unique`, and
/// for a promotable clone `promotable`, `promoted_max`/`promoted_node_max` and their former
/// names `master_max`/`master_node_max`. Agents written for Pacemaker (Debian's `pgsql`, PAF,
/// drbd) check these to know they run as a clone, or a promotable one.
pub fn clone_meta(spec: &CloneSpec, members: usize, instance: u32) -> BTreeMap<String, String> {
    let clone_max = spec.clone_max.map_or(members as u64, u64::from);
    let mut m: BTreeMap<String, String> = [
        ("clone", instance.to_string()),
        ("clone_max", clone_max.to_string()),
        ("clone_node_max", spec.clone_node_max.to_string()),
        ("notify", spec.notify.to_string()),
        ("globally_unique", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if spec.promotable {
        for (k, v) in [
            ("promotable", "true".to_string()),
            ("promoted_max", spec.promoted_max.to_string()),
            ("promoted_node_max", "1".to_string()),
            ("master_max", spec.promoted_max.to_string()),
            ("master_node_max", "1".to_string()),
        ] {
            m.insert(k.to_string(), v);
        }
    }
    m
}

// ---- as written ------------------------------------------------------------------------------

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
    #[serde(default)]
    notify: bool,
    stickiness: Option<Spanned<RawScore>>,
    failback: Option<Spanned<String>>,
    migration_threshold: Option<Spanned<i64>>,
    failure_timeout: Option<Spanned<String>>,
}

impl RawClone {
    fn meta(&self) -> RawMeta<'_> {
        RawMeta {
            stickiness: &self.stickiness,
            failback: &self.failback,
            migration_threshold: &self.migration_threshold,
            failure_timeout: &self.failure_timeout,
        }
    }
}

/// Validate one `[[clone]]` against the primitives and groups (`grouped`: member → group);
/// `cloned` learns what it wraps (a resource is cloned once at most).
pub(super) fn validate(
    c: &mut Checker,
    cl: Spanned<RawClone>,
    ids: &mut Ids,
    out: &Resources,
    grouped: &BTreeMap<String, String>,
    cloned: &mut BTreeSet<String>,
) -> Option<CloneSpec> {
    let span = cl.span();
    let cl = cl.into_inner();
    let id = ids.claim_section(c, &cl.id, &span, "clone")?;
    let Some(target) = cl.resource.as_ref() else {
        c.error(
            span,
            format!("clone {id} needs a `resource` (a [[resource]] or [[group]] id)"),
        );
        return None;
    };
    let t = target.get_ref();
    if !out.primitives.contains_key(t) && !out.groups.contains_key(t) {
        c.error(
            target.span(),
            format!("clone {id} wraps {t:?}, which is not a [[resource]] or [[group]]"),
        );
        return None;
    }
    if grouped.contains_key(t) {
        c.error(
            target.span(),
            format!("{t:?} is a group member: clone the group instead"),
        );
        return None;
    }
    if !cloned.insert(t.clone()) {
        c.error(target.span(), format!("{t:?} is already cloned"));
        return None;
    }
    let clone_max = count(c, &cl.clone_max, "clone_max");
    let clone_node_max = count(c, &cl.clone_node_max, "clone_node_max").unwrap_or(1);
    let promoted_max = count(c, &cl.promoted_max, "promoted_max").unwrap_or(1);
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
            c.error(cnm.span(), format!("clone {id}: clone_node_max > 1 {why}"));
        }
    }
    if cl.promoted_max.is_some() && !cl.promotable {
        c.warn(
            span.clone(),
            format!("clone {id}: promoted_max has no effect without promotable = true"),
        );
    }
    let meta = meta::validate(c, cl.meta());
    Some(CloneSpec {
        id,
        resource: t.clone(),
        clone_max,
        clone_node_max,
        promotable: cl.promotable,
        promoted_max,
        notify: cl.notify,
        meta,
    })
}

/// A count of instances: 1 to 10,000.
fn count(c: &mut Checker, v: &Option<Spanned<i64>>, what: &str) -> Option<u32> {
    let v = v.as_ref()?;
    if (1..=10_000).contains(v.get_ref()) {
        Some(*v.get_ref() as u32)
    } else {
        c.error(v.span(), format!("{what} must be 1 or more, not {}", v.get_ref()));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(promotable: bool, clone_max: Option<u32>) -> CloneSpec {
        CloneSpec {
            id: "pg-clone".into(),
            resource: "pg".into(),
            clone_max,
            clone_node_max: 1,
            promotable,
            promoted_max: 1,
            notify: true,
            meta: Meta::default(),
        }
    }

    /// What Debian's agents test: `ocf_is_clone` (clone_max > 0), `ocf_is_ms` (promotable or
    /// master_max > 0), and `notify`.
    #[test]
    fn clone_meta_is_what_pacemaker_gives_an_instance() {
        let m = clone_meta(&spec(true, None), 3, 2);
        let get = |k: &str| m.get(k).map(String::as_str);
        assert_eq!(get("clone"), Some("2"));
        assert_eq!(get("clone_max"), Some("3"));
        assert_eq!(get("clone_node_max"), Some("1"));
        assert_eq!(get("notify"), Some("true"));
        assert_eq!(get("globally_unique"), Some("false"));
        assert_eq!(get("promotable"), Some("true"));
        assert_eq!(get("master_max"), Some("1"));
        assert_eq!(get("promoted_node_max"), Some("1"));
        let plain = clone_meta(&spec(false, Some(5)), 3, 0);
        assert_eq!(plain.get("clone_max").map(String::as_str), Some("5"));
        assert!(!plain.contains_key("promotable") && !plain.contains_key("master_max"));
    }
}
