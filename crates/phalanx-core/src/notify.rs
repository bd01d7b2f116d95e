//! OCF clone notifications (issue 18): the `notify_*` meta attributes
//! Pacemaker gives the agents of a clone with `notify = true`, before and after its instances
//! are started, stopped, promoted or demoted (`OCF_RESKEY_CRM_meta_notify_*`; what Debian's
//! `pgsql`, PAF and drbd read). Pure: the lists are computed once from the state the plan was
//! made from and the plan's actions, so that every node passes the same ones.
//!
//! As Pacemaker does: each list is space-separated, `_resource` lists name instances
//! (`pg:0 pg:1`) and the matching `_uname` lists their nodes in the same order, entries sorted
//! by instance name, and an empty list is one space (never unset). The lists describe the state
//! *before* the transition (`active`, `inactive`, `promoted`, `unpromoted`, with the former
//! names `master`/`slave` too) and what it will do (`start`, `stop`, `promote`, `demote`);
//! agents derive the state after it themselves.

use crate::model::Role;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Before or after the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    Pre,
    Post,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::Pre => "pre",
            When::Post => "post",
        }
    }
}

/// The operation a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Start,
    Stop,
    Promote,
    Demote,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Promote => "promote",
            Op::Demote => "demote",
        }
    }

    /// What a post notification calls the operation done (`notify_key_operation`).
    fn done(self) -> &'static str {
        match self {
            Op::Start => "running",
            Op::Stop => "stopped",
            Op::Promote => "promoted",
            Op::Demote => "demoted",
        }
    }
}

/// The instance number of each node for a clone with one instance per node (`pg:1` runs on the
/// node ranked 1): nodes ranked by (id, name), so every node and the scheduler agree, and a
/// node keeps its number while the membership is unchanged.
pub fn instance_numbers<'a>(nodes: impl IntoIterator<Item = (u64, &'a str)>) -> BTreeMap<&'a str, u32> {
    let mut v: Vec<(u64, &str)> = nodes.into_iter().collect();
    v.sort();
    v.into_iter().enumerate().map(|(i, (_, n))| (n, i as u32)).collect()
}

/// One instance of the clone before the transition: its name (`pg:0`) and where it runs, in
/// which role (None: not running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub running: Option<(String, Role)>,
}

/// The lists of one transition of a clone (without `notify_type` and `notify_operation`):
/// what its real start, stop, promote and demote calls carry too.
pub fn lists(
    instances: &[Instance],
    planned: &BTreeMap<Op, Vec<(String, String)>>,
    all_nodes: &BTreeSet<String>,
    available_nodes: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |name: &str, pairs: Vec<(&str, &str)>, with_uname: bool| {
        let mut pairs = pairs;
        pairs.sort();
        pairs.dedup_by(|a, b| a.0 == b.0);
        let join = |v: Vec<&str>| if v.is_empty() { " ".to_string() } else { v.join(" ") };
        out.insert(
            format!("notify_{name}_resource"),
            join(pairs.iter().map(|p| p.0).collect()),
        );
        if with_uname {
            out.insert(
                format!("notify_{name}_uname"),
                join(pairs.iter().map(|p| p.1).collect()),
            );
        }
    };
    let running = |want: &dyn Fn(Role) -> bool| -> Vec<(&str, &str)> {
        instances
            .iter()
            .filter_map(|i| {
                i.running
                    .as_ref()
                    .filter(|(_, r)| want(*r))
                    .map(|(n, _)| (i.name.as_str(), n.as_str()))
            })
            .collect()
    };
    put("active", running(&|_| true), true);
    let promoted = running(&|r| r == Role::Promoted);
    let unpromoted = running(&|r| r != Role::Promoted);
    put("promoted", promoted.clone(), true);
    put("master", promoted, true);
    put("unpromoted", unpromoted.clone(), true);
    put("slave", unpromoted, true);
    let inactive: Vec<(&str, &str)> = instances
        .iter()
        .filter(|i| i.running.is_none())
        .map(|i| (i.name.as_str(), ""))
        .collect();
    put("inactive", inactive, false);
    for op in [Op::Start, Op::Stop, Op::Promote, Op::Demote] {
        let pairs = planned
            .get(&op)
            .map(|v| v.iter().map(|(i, n)| (i.as_str(), n.as_str())).collect())
            .unwrap_or_default();
        put(op.as_str(), pairs, true);
    }
    let nodes = |s: &BTreeSet<String>| {
        if s.is_empty() {
            " ".to_string()
        } else {
            s.iter().cloned().collect::<Vec<_>>().join(" ")
        }
    };
    out.insert("notify_all_uname".into(), nodes(all_nodes));
    out.insert("notify_available_uname".into(), nodes(available_nodes));
    out
}

/// The meta attributes of one notification: the transition's `lists` and which one it is.
pub fn notification(lists: &BTreeMap<String, String>, when: When, op: Op) -> BTreeMap<String, String> {
    let mut m = lists.clone();
    let kind = when.as_str();
    let key_op = match when {
        When::Pre => op.as_str(),
        When::Post => op.done(),
    };
    m.insert("notify_type".into(), kind.into());
    m.insert("notify_operation".into(), op.as_str().into());
    m.insert("notify_key_type".into(), kind.into());
    m.insert("notify_key_operation".into(), key_op.into());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Pacemaker's own example (cts/scheduler/exp/promoted-notify.exp, post-promote of fake:0
    /// on rhel7-auto1, three unpromoted instances running): the same values.
    #[test]
    fn the_lists_of_a_promotion_are_pacemakers() {
        let inst = |name: &str, node: &str| Instance {
            name: name.into(),
            running: Some((node.into(), Role::Started)),
        };
        let instances = vec![
            inst("fake:0", "rhel7-auto1"),
            inst("fake:1", "rhel7-auto3"),
            inst("fake:2", "rhel7-auto2"),
        ];
        let planned = BTreeMap::from([(Op::Promote, vec![("fake:0".to_string(), "rhel7-auto1".to_string())])]);
        let nodes = set(&["rhel7-auto1", "rhel7-auto2", "rhel7-auto3"]);
        let m = notification(&lists(&instances, &planned, &nodes, &nodes), When::Post, Op::Promote);
        let get = |k: &str| m.get(k).map(String::as_str).unwrap_or_else(|| panic!("no {k}"));
        assert_eq!(get("notify_type"), "post");
        assert_eq!(get("notify_operation"), "promote");
        assert_eq!(get("notify_key_operation"), "promoted");
        assert_eq!(get("notify_promote_resource"), "fake:0");
        assert_eq!(get("notify_promote_uname"), "rhel7-auto1");
        assert_eq!(get("notify_active_resource"), "fake:0 fake:1 fake:2");
        assert_eq!(get("notify_active_uname"), "rhel7-auto1 rhel7-auto3 rhel7-auto2");
        assert_eq!(get("notify_unpromoted_resource"), "fake:0 fake:1 fake:2");
        assert_eq!(get("notify_slave_uname"), "rhel7-auto1 rhel7-auto3 rhel7-auto2");
        for empty in [
            "notify_promoted_resource",
            "notify_master_uname",
            "notify_start_resource",
            "notify_stop_uname",
            "notify_demote_resource",
            "notify_inactive_resource",
        ] {
            assert_eq!(get(empty), " ", "{empty}");
        }
        assert_eq!(get("notify_all_uname"), "rhel7-auto1 rhel7-auto2 rhel7-auto3");
        assert_eq!(get("notify_available_uname"), "rhel7-auto1 rhel7-auto2 rhel7-auto3");
        assert!(!m.contains_key("notify_inactive_uname"));
        assert_eq!(
            notification(&BTreeMap::new(), When::Pre, Op::Stop)
                .get("notify_key_operation")
                .map(String::as_str),
            Some("stop")
        );
    }

    /// A failover: the primary's node is lost (its instance stopped), a replica is promoted; an
    /// instance not running is inactive; lists sort by instance and drop duplicates.
    #[test]
    fn a_failover_lists_the_stop_the_promotion_and_what_runs_before() {
        let instances = vec![
            Instance {
                name: "pg:1".into(),
                running: Some(("n2".into(), Role::Started)),
            },
            Instance {
                name: "pg:0".into(),
                running: Some(("n1".into(), Role::Promoted)),
            },
            Instance {
                name: "pg:2".into(),
                running: None,
            },
        ];
        let planned = BTreeMap::from([
            (
                Op::Stop,
                vec![
                    ("pg:0".to_string(), "n1".to_string()),
                    ("pg:0".to_string(), "n1".to_string()),
                ],
            ),
            (Op::Promote, vec![("pg:1".to_string(), "n2".to_string())]),
        ]);
        let m = lists(&instances, &planned, &set(&["n1", "n2", "n3"]), &set(&["n2", "n3"]));
        let get = |k: &str| m[k].as_str();
        assert_eq!(get("notify_active_resource"), "pg:0 pg:1");
        assert_eq!(get("notify_active_uname"), "n1 n2");
        assert_eq!(get("notify_promoted_resource"), "pg:0");
        assert_eq!(get("notify_master_uname"), "n1");
        assert_eq!(get("notify_unpromoted_uname"), "n2");
        assert_eq!(get("notify_inactive_resource"), "pg:2");
        assert_eq!(get("notify_stop_resource"), "pg:0");
        assert_eq!(get("notify_stop_uname"), "n1");
        assert_eq!(get("notify_promote_uname"), "n2");
        assert_eq!(get("notify_start_uname"), " ");
        assert_eq!(get("notify_available_uname"), "n2 n3");
    }
}
