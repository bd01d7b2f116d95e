//! What the scheduler works from: the observed state of every node and resource instance, the
//! operator's moves and bans, cluster maintenance and who can fence now. Part of the scenario
//! files' format (`deny_unknown_fields`), so every field has a serde default.

use crate::model::Role;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the scheduler knows of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    /// Its member id (what numbers clone instances, see `crate::notify::instance_numbers`; 0 in
    /// scenario files, where names decide).
    #[serde(default)]
    pub id: u64,
    #[serde(default = "yes")]
    pub online: bool,
    #[serde(default)]
    pub standby: bool,
    /// Stopping (`phalanx node stop`): like standby, what it runs moves away.
    #[serde(default)]
    pub leaving: bool,
    /// Resources locked to it by its clean stop with `shutdown = "stop"`: they run nowhere else
    /// until they started here again.
    #[serde(default)]
    pub locked: BTreeSet<String>,
    /// Resources on it are left alone (unmanaged); nothing new is placed there.
    #[serde(default)]
    pub maintenance: bool,
    /// When its liveness last changed: when it came online (for delayed failback), or, offline,
    /// when it was lost (`promotion` waits for positions published after that).
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
    /// Its node attributes (promotion scores `master-<rsc>`, `pgsql` positions; see
    /// `promotion`).
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState {
            id: 0,
            online: true,
            standby: false,
            leaving: false,
            locked: BTreeSet::new(),
            maintenance: false,
            online_since_ms: 0,
            missing_agents: BTreeSet::new(),
            unclean: false,
            fence_failures: 0,
            fence_retry_at_ms: 0,
            fence_error: None,
            fence_reason: None,
            attrs: BTreeMap::new(),
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
    /// Nodes where its agent answered a hard error (OCF 2–5, or 1 from a start or a stop):
    /// banned there until cleaned up.
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
    /// `nodes` is the whole membership (an input made from the replicated state): a node the
    /// config names but the membership does not (removed, or never added) is not a member and
    /// hosts nothing. False in scenario files, where an unlisted node is an online one.
    #[serde(default)]
    pub members_only: bool,
}
