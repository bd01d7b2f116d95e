//! The scheduler's answer: the actions (fence, stop, demote, start, promote) with a reason
//! each, the ordering edges between them, the readable summary, and per unit how its placement
//! was decided; and the text golden scenario files hold.

use super::Explain;
use crate::notify::{Op, When};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Fence the node named by the action's `rsc`, through its fence levels; `node` runs it.
    Fence,
    Stop,
    Demote,
    Start,
    Promote,
    /// A clone notification (OCF `notify`, see `crate::notify`): an agent call on an instance
    /// that changes nothing, before or after the clone's instances start, stop, promote or
    /// demote. Last, so that plans stored before it decode as they were.
    Notify {
        when: When,
        op: Op,
    },
}

impl ActionKind {
    /// The action's name (`start`), as plans, events and status write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Fence => "fence",
            ActionKind::Stop => "stop",
            ActionKind::Demote => "demote",
            ActionKind::Start => "start",
            ActionKind::Promote => "promote",
            ActionKind::Notify { .. } => "notify",
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
    pub(super) fn key(&self) -> String {
        match self.kind {
            ActionKind::Notify { when, op } => {
                format!("notify {}-{} {} ({})", when.as_str(), op.as_str(), self.rsc, self.node)
            }
            k => format!("{} {} ({})", k.as_str(), self.rsc, self.node),
        }
    }
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
    /// For every clone with `notify = true` that the plan changes, by primitive: the
    /// `notify_*` lists its notifications and its start, stop, promote and demote calls carry
    /// (see `crate::notify::lists`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notify: BTreeMap<String, BTreeMap<String, String>>,
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
        for (p, lists) in &self.notify {
            for (k, v) in lists.iter().filter(|(_, v)| v.trim() != "") {
                out += &format!("Notify {p}: {k}=\"{v}\"\n");
            }
        }
        if out.is_empty() {
            out = "Nothing to do\n".into();
        }
        out
    }
}
