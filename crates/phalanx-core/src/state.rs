//! The observed cluster state replicated through Raft: the nodes (ids, links, API address,
//! standby flag, liveness as seen by the leader, attributes) and the config version. Commands
//! change it through a pure `apply`; the same sequence of commands gives the same state on every
//! node. Invalid commands are rejected with a reason and change nothing.

use crate::scheduler::{self, Action, ActionKind, OperatorConstraint, Role};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::outcome::{Outcome, RejectReason};

/// Liveness of a node as recorded in the replicated state (set by the leader from its detector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Not yet observed by any leader.
    #[default]
    Unknown,
    Online,
    Offline,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The Raft node id (stable for the life of the member; never reused).
    pub id: u64,
    /// Heartbeat link addresses, one per link.
    pub links: Vec<String>,
    /// The node's API (and Raft RPC) address.
    pub api: String,
    pub standby: bool,
    pub liveness: Liveness,
    /// Unix ms when the liveness last changed, as stamped by the leader that recorded it.
    pub liveness_since_ms: u64,
    /// Free-form node attributes (Pacemaker's node attributes).
    pub attrs: BTreeMap<String, String>,
    /// Resources on it are left alone; nothing new is placed there.
    #[serde(default)]
    pub maintenance: bool,
    /// Fencing: what the cluster knows of it (see `FenceRecord`).
    #[serde(default)]
    pub fence: FenceRecord,
}

/// A node's fencing record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FenceRecord {
    /// Fenced since it was last lost: confirmed down, nothing runs there.
    pub fenced: bool,
    /// Unix ms of the last successful fence (by the fencer's clock), and the device level.
    pub fenced_at_ms: Option<u64>,
    pub fenced_by: Option<String>,
    /// Why it must be fenced although online (a stop failed there).
    pub reason: Option<String>,
    /// Attempts that failed at every level since the last success (or its return).
    pub failures: u32,
    pub last_attempt_ms: u64,
    pub last_error: Option<String>,
}

/// What the cluster knows of one primitive resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResourceRecord {
    /// Where it runs, and in which role (Failed: its monitor failed, recovery pending).
    pub running: BTreeMap<String, Role>,
    /// Failure times (unix ms) per node.
    pub failures: BTreeMap<String, Vec<u64>>,
    /// Nodes where an agent answered a hard error (OCF 1-5): banned there until cleanup.
    pub banned: BTreeSet<String>,
    /// A fatal configuration error (OCF 6): it runs nowhere until cleanup.
    pub fatal: bool,
    /// The last failure's reason (the agent's ocf-exit-reason, a timeout...).
    pub last_error: Option<String>,
}

/// The plan being executed: the scheduler's actions, their ordering and their progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlanRecord {
    pub id: u64,
    pub actions: Vec<Action>,
    pub edges: Vec<(usize, usize)>,
    pub done: BTreeSet<usize>,
    pub failed: BTreeSet<usize>,
    /// Actions a node claimed (through the log) before running them, with the incarnation of
    /// the claiming process: only that process runs them (a restarted one claims anew).
    #[serde(default)]
    pub claimed: BTreeMap<usize, u64>,
}

impl PlanRecord {
    /// Actions not yet finished, as (kind, rsc, node) keys.
    pub fn pending_keys(&self) -> BTreeSet<(ActionKind, String, String)> {
        self.actions
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.done.contains(i) && !self.failed.contains(i))
            .map(|(_, a)| (a.kind, a.rsc.clone(), a.node.clone()))
            .collect()
    }

    /// Starts and promotes that may be running already: claimed by their node, every
    /// predecessor done, and not reported yet. A plan that replaced them would not know it.
    /// (A claimed start still waiting for a predecessor, say a fence, has not begun.)
    pub fn in_flight_starts(&self) -> Vec<&Action> {
        (0..self.actions.len())
            .filter(|i| self.ready(*i) && self.claimed.contains_key(i))
            .map(|i| &self.actions[i])
            .filter(|a| matches!(a.kind, ActionKind::Start | ActionKind::Promote))
            .collect()
    }

    /// Actions of `node` that may run now: not finished, and every predecessor done.
    pub fn runnable(&self, node: &str) -> Vec<usize> {
        (0..self.actions.len())
            .filter(|i| self.actions[*i].node == node && self.ready(*i))
            .collect()
    }

    /// Action `i` is not finished and every predecessor is done.
    fn ready(&self, i: usize) -> bool {
        !self.done.contains(&i)
            && !self.failed.contains(&i)
            && self
                .edges
                .iter()
                .filter(|(_, b)| *b == i)
                .all(|(a, _)| self.done.contains(a))
    }
}

/// How an agent call ended, as the state machine records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallOutcome {
    Ok,
    /// Hard error on this node (OCF 1-5): ban it here.
    Hard,
    /// Fatal configuration error (OCF 6): ban it everywhere.
    Fatal,
    /// Any other failure (timeout, unknown exit, not running when it should be).
    Soft,
}

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Incremented by every applied command that changes the configuration of the cluster.
    pub config_version: u64,
    /// The highest node id ever assigned (ids are never reused).
    pub max_node_id: u64,
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceRecord>,
    /// Operator moves and bans (expiring by themselves).
    #[serde(default)]
    pub operator: Vec<OperatorConstraint>,
    #[serde(default)]
    pub plan: PlanRecord,
    /// Cluster-wide maintenance: nothing is managed.
    #[serde(default)]
    pub maintenance: bool,
    /// The last result of each fence device's monitor (changes only).
    #[serde(default)]
    pub fence_devices: BTreeMap<String, DeviceHealth>,
}

/// What the last monitor of a fence device found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceHealth {
    pub ok: bool,
    pub error: Option<String>,
    /// Unix ms of the check that changed it, and the node that ran it.
    pub since_ms: u64,
    pub by: String,
}

/// A change to the cluster state, proposed by the leader or an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Record the configured members of a new cluster, all at once (so that a leader change
    /// half-way through can never leave a partial member list). Rejected once bootstrapped.
    Bootstrap {
        nodes: Vec<NewNode>,
    },
    /// Add a member. `id` must be above every id ever assigned.
    AddNode {
        name: String,
        /// None: the next free id, assigned here when the command is applied (in log order,
        /// so whichever node proposed it, the id is never stale).
        id: Option<u64>,
        links: Vec<String>,
        api: String,
    },
    RemoveNode {
        name: String,
    },
    SetStandby {
        name: String,
        standby: bool,
    },
    SetLiveness {
        name: String,
        liveness: Liveness,
        at_ms: u64,
    },
    SetAttr {
        name: String,
        key: String,
        value: Option<String>,
    },
    /// Replace the plan (the leader, when the scheduler's answer changed).
    SetPlan {
        actions: Vec<Action>,
        edges: Vec<(usize, usize)>,
    },
    /// A node claims its actions of a plan, all at once when the plan appears, and runs each
    /// when its predecessors are done. Accepted (all or none) only if `plan_id` is still the
    /// current plan and every action is this node's and unfinished: a node whose replica lags
    /// (just restarted, say) can never act on a plan that was already replaced or finished.
    /// `incarnation` names the claiming process: a restarted one sees its old claims as not
    /// its own and must claim again, through the log.
    ClaimAction {
        plan_id: u64,
        indices: Vec<usize>,
        node: String,
        incarnation: u64,
    },
    /// A node reports an action of plan `plan_id`.
    ActionResult {
        plan_id: u64,
        index: usize,
        action: Action,
        outcome: CallOutcome,
        at_ms: u64,
        reason: Option<String>,
    },
    /// A recurring monitor found the resource failed on `node`.
    MonitorFailed {
        rsc: String,
        node: String,
        outcome: CallOutcome,
        at_ms: u64,
        reason: Option<String>,
    },
    /// What a probe (a monitor at start-up) found on `node`: None = not running.
    Probe {
        rsc: String,
        node: String,
        role: Option<Role>,
    },
    /// A fence device's monitor changed its answer.
    DeviceHealth {
        device: String,
        health: DeviceHealth,
    },
    /// Forget failures, bans and fatal errors of a resource.
    Cleanup {
        rsc: String,
    },
    /// Operator move (prefer) or ban of a resource on a node, until `expires_ms`.
    Operator {
        constraint: OperatorConstraint,
    },
    /// Remove the operator's moves and bans of a resource.
    ClearOperator {
        rsc: String,
    },
    SetMaintenance {
        node: Option<String>,
        on: bool,
    },
}

/// A member to add (see [`Command::Bootstrap`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub name: String,
    pub id: u64,
    pub links: Vec<String>,
    pub api: String,
}

impl ClusterState {
    pub fn node_by_id(&self, id: u64) -> Option<(&String, &NodeRecord)> {
        self.nodes.iter().find(|(_, n)| n.id == id)
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut NodeRecord, Outcome> {
        self.nodes
            .get_mut(name)
            .ok_or_else(|| Outcome::NoSuchNode(format!("no node named {name:?}")))
    }

    /// Apply one command. Rejected commands change nothing.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match self.try_apply(cmd) {
            Ok(o) | Err(o) => o,
        }
    }

    fn try_apply(&mut self, cmd: &Command) -> Result<Outcome, Outcome> {
        match cmd {
            Command::Bootstrap { nodes } => {
                if self.max_node_id != 0 {
                    return Ok(Outcome::Unchanged);
                }
                let mut next = self.clone();
                for n in nodes {
                    next.try_apply(&Command::AddNode {
                        name: n.name.clone(),
                        id: Some(n.id),
                        links: n.links.clone(),
                        api: n.api.clone(),
                    })?;
                }
                *self = next;
                Ok(Outcome::Ok)
            }
            Command::AddNode { name, id, links, api } => {
                let id = &id.unwrap_or(self.max_node_id + 1);
                if name.is_empty() || links.is_empty() {
                    return Err(Outcome::Rejected(RejectReason::NodeIncomplete));
                }
                if self.nodes.contains_key(name) {
                    return Err(Outcome::Rejected(RejectReason::NodeExists { name: name.clone() }));
                }
                if *id <= self.max_node_id {
                    return Err(Outcome::Rejected(RejectReason::NodeIdAssigned { id: *id }));
                }
                for (other, n) in &self.nodes {
                    if let Some(l) = links.iter().find(|l| n.links.contains(l)) {
                        return Err(Outcome::Rejected(RejectReason::LinkInUse {
                            link: l.clone(),
                            by: other.clone(),
                        }));
                    }
                    if n.api == *api {
                        return Err(Outcome::Rejected(RejectReason::ApiInUse {
                            api: api.clone(),
                            by: other.clone(),
                        }));
                    }
                }
                self.max_node_id = *id;
                self.nodes.insert(
                    name.clone(),
                    NodeRecord {
                        id: *id,
                        links: links.clone(),
                        api: api.clone(),
                        standby: false,
                        liveness: Liveness::Unknown,
                        liveness_since_ms: 0,
                        attrs: BTreeMap::new(),
                        maintenance: false,
                        fence: FenceRecord::default(),
                    },
                );
                self.config_version += 1;
                Ok(Outcome::Ok)
            }
            Command::RemoveNode { name } => {
                self.node_mut(name)?;
                self.nodes.remove(name);
                self.config_version += 1;
                Ok(Outcome::Ok)
            }
            Command::SetStandby { name, standby } => {
                let n = self.node_mut(name)?;
                if n.standby == *standby {
                    return Ok(Outcome::Unchanged);
                }
                n.standby = *standby;
                self.config_version += 1;
                Ok(Outcome::Ok)
            }
            Command::SetLiveness { name, liveness, at_ms } => {
                let n = self.node_mut(name)?;
                if n.liveness == *liveness {
                    return Ok(Outcome::Unchanged);
                }
                let back_from_lost = n.liveness == Liveness::Offline && *liveness == Liveness::Online;
                let was = n.liveness;
                n.liveness = *liveness;
                n.liveness_since_ms = *at_ms;
                if *liveness == Liveness::Offline {
                    // Lost: unconfirmed until fenced, unless it was fenced while still online
                    // (a failed stop: going down is that fence's doing) or never seen online
                    // (nothing was ever placed there).
                    n.fence.fenced |= was == Liveness::Unknown;
                } else {
                    // Online (again): a later loss needs a fence of its own. Back from lost
                    // (rebooted by its fence, or a healed partition), it probes everything it
                    // runs, so it starts with a clean slate.
                    n.fence.fenced = false;
                }
                if back_from_lost {
                    n.fence.failures = 0;
                    n.fence.last_error = None;
                    n.fence.reason = None;
                    // What ran there when it was lost is unknown now: forget it; the node
                    // probes every resource when it sees itself back, and reports what runs.
                    for r in self.resources.values_mut() {
                        r.running.remove(name);
                    }
                }
                Ok(Outcome::Ok)
            }
            Command::SetPlan { actions, edges } => {
                if let Some((from, to)) = edges.iter().find(|(a, b)| *a >= actions.len() || *b >= actions.len()) {
                    return Err(Outcome::Rejected(RejectReason::PlanEdgeOutOfRange {
                        from: *from,
                        to: *to,
                        actions: actions.len(),
                    }));
                }
                self.plan = PlanRecord {
                    id: self.plan.id + 1,
                    actions: actions.clone(),
                    edges: edges.clone(),
                    done: BTreeSet::new(),
                    failed: BTreeSet::new(),
                    claimed: BTreeMap::new(),
                };
                Ok(Outcome::Ok)
            }
            Command::ClaimAction {
                plan_id,
                indices,
                node,
                incarnation,
            } => {
                if *plan_id != self.plan.id {
                    return Err(Outcome::Rejected(RejectReason::StalePlan {
                        plan_id: *plan_id,
                        current: self.plan.id,
                    }));
                }
                let open = |i: &usize| {
                    self.plan.actions.get(*i).is_some_and(|a| a.node == *node)
                        && !self.plan.done.contains(i)
                        && !self.plan.failed.contains(i)
                };
                if let Some(i) = indices.iter().find(|i| !open(i)) {
                    return Err(Outcome::Rejected(RejectReason::ActionNotOpen {
                        index: *i,
                        plan_id: *plan_id,
                        node: node.clone(),
                    }));
                }
                for i in indices {
                    self.plan.claimed.insert(*i, *incarnation);
                }
                Ok(Outcome::Ok)
            }
            Command::ActionResult {
                plan_id,
                index,
                action,
                outcome,
                at_ms,
                reason,
            } => {
                let ok = *outcome == CallOutcome::Ok;
                if action.kind == ActionKind::Fence {
                    self.record_fence(action, ok, *at_ms, reason.clone());
                } else {
                    self.record_result(action, ok, *outcome, *at_ms, reason.clone());
                }
                if *plan_id == self.plan.id && *index < self.plan.actions.len() && self.plan.actions[*index] == *action
                {
                    if ok {
                        self.plan.done.insert(*index);
                    } else {
                        self.plan.failed.insert(*index);
                    }
                }
                Ok(Outcome::Ok)
            }
            Command::MonitorFailed {
                rsc,
                node,
                outcome,
                at_ms,
                reason,
            } => {
                let r = self.resources.entry(rsc.clone()).or_default();
                if !r.running.contains_key(node) {
                    return Ok(Outcome::Unchanged);
                }
                record_failure(r, node, *outcome, *at_ms, reason.clone());
                r.running.insert(node.clone(), Role::Failed);
                Ok(Outcome::Ok)
            }
            Command::Probe { rsc, node, role } => {
                let r = self.resources.entry(rsc.clone()).or_default();
                let before = r.running.get(node).copied();
                match role {
                    Some(role) => r.running.insert(node.clone(), *role),
                    None => r.running.remove(node),
                };
                Ok(if before == *role {
                    Outcome::Unchanged
                } else {
                    Outcome::Ok
                })
            }
            Command::DeviceHealth { device, health } => {
                let old = self.fence_devices.insert(device.clone(), health.clone());
                Ok(match old {
                    Some(o) if o.ok == health.ok && o.error == health.error => Outcome::Unchanged,
                    _ => Outcome::Ok,
                })
            }
            Command::Cleanup { rsc } => {
                let r = self.resources.entry(rsc.clone()).or_default();
                r.failures.clear();
                r.banned.clear();
                r.fatal = false;
                r.last_error = None;
                Ok(Outcome::Ok)
            }
            Command::Operator { constraint } => {
                self.operator
                    .retain(|o| !(o.rsc == constraint.rsc && o.node == constraint.node));
                if constraint.prefer {
                    // One move target at a time.
                    self.operator.retain(|o| !(o.rsc == constraint.rsc && o.prefer));
                }
                self.operator.push(constraint.clone());
                self.config_version += 1;
                Ok(Outcome::Ok)
            }
            Command::ClearOperator { rsc } => {
                let before = self.operator.len();
                self.operator.retain(|o| o.rsc != *rsc);
                Ok(if before == self.operator.len() {
                    Outcome::Unchanged
                } else {
                    Outcome::Ok
                })
            }
            Command::SetMaintenance { node, on } => {
                match node {
                    None => self.maintenance = *on,
                    Some(n) => self.node_mut(n)?.maintenance = *on,
                }
                self.config_version += 1;
                Ok(Outcome::Ok)
            }
            Command::SetAttr { name, key, value } => {
                if key.is_empty() {
                    return Err(Outcome::Rejected(RejectReason::EmptyAttrKey));
                }
                let n = self.node_mut(name)?;
                let old = match value {
                    Some(v) => n.attrs.insert(key.clone(), v.clone()),
                    None => n.attrs.remove(key),
                };
                if old.as_ref() == value.as_ref() {
                    Ok(Outcome::Unchanged)
                } else {
                    Ok(Outcome::Ok)
                }
            }
        }
    }
}

fn record_failure(r: &mut ResourceRecord, node: &str, outcome: CallOutcome, at_ms: u64, reason: Option<String>) {
    r.failures.entry(node.to_string()).or_default().push(at_ms);
    match outcome {
        CallOutcome::Hard => {
            r.banned.insert(node.to_string());
        }
        CallOutcome::Fatal => r.fatal = true,
        _ => {}
    }
    r.last_error = reason.or(Some(format!("{outcome:?} failure on {node}")));
}

impl ClusterState {
    /// A resource action's result.
    fn record_result(&mut self, action: &Action, ok: bool, outcome: CallOutcome, at_ms: u64, reason: Option<String>) {
        let r = self.resources.entry(action.rsc.clone()).or_default();
        if ok {
            match action.kind {
                ActionKind::Start | ActionKind::Demote => {
                    r.running.insert(action.node.clone(), Role::Started);
                }
                ActionKind::Promote => {
                    r.running.insert(action.node.clone(), Role::Promoted);
                }
                ActionKind::Stop => {
                    r.running.remove(&action.node);
                }
                ActionKind::Fence => {}
            }
            return;
        }
        record_failure(r, &action.node, outcome, at_ms, reason.clone());
        if action.kind == ActionKind::Stop {
            // What runs there is unknown now: with fencing required, the node is fenced
            // (Pacemaker's on-fail for stop); the copy stays recorded until then.
            if let Some(n) = self.nodes.get_mut(&action.node) {
                n.fence.reason = Some(format!(
                    "stop of {} failed on {}{}",
                    action.rsc,
                    action.node,
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ));
            }
        } else {
            // A failed start/promote leaves it in an unknown state there: recover.
            r.running.insert(action.node.clone(), Role::Failed);
        }
    }

    /// A fence action's result: on success the target is confirmed down and nothing runs there.
    fn record_fence(&mut self, action: &Action, ok: bool, at_ms: u64, reason: Option<String>) {
        let target = &action.rsc;
        let Some(n) = self.nodes.get_mut(target) else { return };
        n.fence.last_attempt_ms = at_ms;
        if ok {
            n.fence.fenced = true;
            n.fence.fenced_at_ms = Some(at_ms);
            n.fence.fenced_by = reason;
            n.fence.reason = None;
            n.fence.failures = 0;
            n.fence.last_error = None;
            for r in self.resources.values_mut() {
                r.running.remove(target);
            }
        } else {
            n.fence.failures += 1;
            n.fence.last_error = reason;
        }
    }

    /// How long to wait before fencing `target`: the priority fence delay when the target runs
    /// resources (as recorded), so that in a fencing race the node running the services
    /// survives; nothing otherwise.
    pub fn fence_delay(&self, cluster: &crate::config::ClusterConfig, target: &str) -> std::time::Duration {
        let runs = self.resources.values().any(|r| r.running.contains_key(target));
        if runs {
            cluster.priority_fence_delay
        } else {
            std::time::Duration::ZERO
        }
    }

    /// The scheduler's input: who is online (liveness as recorded), standby and maintenance
    /// flags, what runs where, failures, bans and operator constraints, at `now_ms`.
    /// Unclean (what it held is not recovered yet): with `fencing = "watchdog"`, a node lost less
    /// than the lease hold ago; with `required`, a lost node not fenced since, or one where a
    /// stop failed. `fencer` runs fence actions (the coordinator).
    pub fn scheduler_input(
        &self,
        now_ms: u64,
        cluster: &crate::config::ClusterConfig,
        fencer: Option<&str>,
    ) -> scheduler::Input {
        let hold_ms = crate::Timings::from(cluster).lost_node_hold.map(crate::timings::ms);
        let required = cluster.fencing == crate::config::Fencing::Required;
        let operator = self.operator.clone();
        let mut resources = BTreeMap::new();
        for (rsc, r) in &self.resources {
            resources.insert(
                rsc.clone(),
                scheduler::ResourceState {
                    running: r.running.clone(),
                    failures: r.failures.clone(),
                    banned: r.banned.clone(),
                    fatal: r.fatal,
                    maintenance: false,
                },
            );
        }
        scheduler::Input {
            now_ms,
            nodes: self
                .nodes
                .iter()
                .map(|(n, rec)| {
                    (
                        n.clone(),
                        scheduler::NodeState {
                            online: rec.liveness == Liveness::Online,
                            standby: rec.standby,
                            maintenance: rec.maintenance,
                            online_since_ms: rec.liveness_since_ms,
                            missing_agents: BTreeSet::new(),
                            unclean: if required {
                                (rec.liveness == Liveness::Offline && !rec.fence.fenced) || rec.fence.reason.is_some()
                            } else {
                                rec.liveness == Liveness::Offline
                                    && hold_ms.is_some_and(|h| now_ms < rec.liveness_since_ms.saturating_add(h))
                            },
                            fence_failures: rec.fence.failures,
                            fence_retry_at_ms: rec.fence.last_attempt_ms
                                + crate::fencing::backoff(rec.fence.failures).as_millis() as u64,
                            fence_error: rec.fence.last_error.clone(),
                            fence_reason: rec.fence.reason.clone(),
                        },
                    )
                })
                .collect(),
            resources,
            operator,
            maintenance: self.maintenance,
            fencer: fencer.map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(name: &str, id: u64) -> Command {
        Command::AddNode {
            name: name.into(),
            id: Some(id),
            links: vec![format!("127.0.0.1:{}", 7400 + id)],
            api: format!("127.0.0.1:{}", 8400 + id),
        }
    }

    #[test]
    fn add_standby_remove() {
        let mut s = ClusterState::default();
        assert_eq!(s.apply(&add("n1", 1)), Outcome::Ok);
        assert_eq!(s.apply(&add("n2", 2)), Outcome::Ok);
        assert_eq!(
            s.apply(&Command::SetStandby {
                name: "n2".into(),
                standby: true
            }),
            Outcome::Ok
        );
        assert_eq!(
            s.apply(&Command::SetStandby {
                name: "n2".into(),
                standby: true
            }),
            Outcome::Unchanged
        );
        assert!(s.nodes["n2"].standby);
        assert_eq!(s.apply(&Command::RemoveNode { name: "n1".into() }), Outcome::Ok);
        assert_eq!(s.nodes.keys().collect::<Vec<_>>(), vec!["n2"]);
        assert_eq!(s.config_version, 4);
    }

    #[test]
    fn rejected_commands_change_nothing() {
        let mut s = ClusterState::default();
        s.apply(&add("n1", 1));
        let before = s.clone();
        for cmd in [
            add("n1", 5),
            add("n9", 1),
            Command::RemoveNode { name: "zz".into() },
            Command::SetStandby {
                name: "zz".into(),
                standby: true,
            },
            Command::SetAttr {
                name: "n1".into(),
                key: "".into(),
                value: None,
            },
            Command::AddNode {
                name: "n3".into(),
                id: Some(3),
                links: vec![],
                api: "x".into(),
            },
            Command::AddNode {
                name: "n3".into(),
                id: Some(3),
                links: vec!["127.0.0.1:7401".into()],
                api: "y".into(),
            },
        ] {
            assert!(
                matches!(s.apply(&cmd), Outcome::Rejected(_) | Outcome::NoSuchNode(_)),
                "{cmd:?}"
            );
            assert_eq!(s, before, "{cmd:?} changed the state");
        }
    }

    #[test]
    fn bootstrap_is_all_or_nothing_and_only_once() {
        let n = |name: &str, id: u64| NewNode {
            name: name.into(),
            id,
            links: vec![format!("127.0.0.1:{}", 7400 + id)],
            api: format!("127.0.0.1:{}", 8400 + id),
        };
        let mut s = ClusterState::default();
        // a bad member (duplicate id) rejects the whole bootstrap
        let bad = Command::Bootstrap {
            nodes: vec![n("n1", 1), n("n2", 1)],
        };
        assert!(matches!(s.apply(&bad), Outcome::Rejected(_)));
        assert_eq!(s, ClusterState::default());
        let good = Command::Bootstrap {
            nodes: vec![n("n1", 1), n("n2", 2), n("n3", 3)],
        };
        assert_eq!(s.apply(&good), Outcome::Ok);
        assert_eq!(s.nodes.len(), 3);
        assert_eq!(s.max_node_id, 3);
        let again = Command::Bootstrap {
            nodes: vec![n("n9", 9)],
        };
        assert_eq!(s.apply(&again), Outcome::Unchanged);
        assert_eq!(s.nodes.len(), 3);
    }

    #[test]
    fn ids_are_assigned_in_log_order_when_not_given() {
        let mut s = ClusterState::default();
        s.apply(&add("n1", 1));
        let auto = |name: &str, port: u16| Command::AddNode {
            name: name.into(),
            id: None,
            links: vec![format!("127.0.0.9:{port}")],
            api: format!("127.0.0.9:{}", port + 1000),
        };
        assert_eq!(s.apply(&auto("n2", 1)), Outcome::Ok);
        s.apply(&Command::RemoveNode { name: "n2".into() });
        assert_eq!(s.apply(&auto("n3", 2)), Outcome::Ok);
        assert_eq!(
            (s.nodes["n1"].id, s.nodes["n3"].id, s.max_node_id),
            (1, 3, 3),
            "ids are never reused"
        );
    }

    #[test]
    fn ids_are_never_reused() {
        let mut s = ClusterState::default();
        s.apply(&add("n1", 1));
        s.apply(&add("n2", 2));
        s.apply(&Command::RemoveNode { name: "n2".into() });
        assert_eq!(
            s.apply(&add("n2", 2)),
            Outcome::Rejected(RejectReason::NodeIdAssigned { id: 2 })
        );
        assert_eq!(s.apply(&add("n2", 3)), Outcome::Ok);
    }

    #[test]
    fn liveness_and_attrs() {
        let mut s = ClusterState::default();
        s.apply(&add("n1", 1));
        let set = Command::SetLiveness {
            name: "n1".into(),
            liveness: Liveness::Online,
            at_ms: 42,
        };
        assert_eq!(s.apply(&set), Outcome::Ok);
        assert_eq!(s.apply(&set), Outcome::Unchanged);
        assert_eq!(s.nodes["n1"].liveness_since_ms, 42);
        let attr = Command::SetAttr {
            name: "n1".into(),
            key: "k".into(),
            value: Some("v".into()),
        };
        assert_eq!(s.apply(&attr), Outcome::Ok);
        assert_eq!(s.apply(&attr), Outcome::Unchanged);
        assert_eq!(s.nodes["n1"].attrs["k"], "v");
        assert_eq!(s.node_by_id(1).map(|(n, _)| n.as_str()), Some("n1"));
    }
}

#[cfg(test)]
mod resource_tests {
    use super::*;

    fn cluster(fencing: crate::config::Fencing) -> crate::config::ClusterConfig {
        crate::config::ClusterConfig {
            name: "t".into(),
            heartbeat_interval: std::time::Duration::from_millis(100),
            dead_after: 3,
            no_quorum_policy: crate::NoQuorumPolicy::Stop,
            key_file: "k".into(),
            fencing,
            priority_fence_delay: std::time::Duration::ZERO,
            watchdog: None,
            watchdog_timeout: std::time::Duration::from_secs(5),
        }
    }

    #[test]
    fn a_lost_node_is_unclean_until_a_recorded_fence_and_failures_back_off() {
        use crate::config::Fencing;
        let mut s = ClusterState::default();
        s.apply(&Command::Bootstrap {
            nodes: ["n1", "n2"]
                .iter()
                .enumerate()
                .map(|(i, n)| NewNode {
                    name: n.to_string(),
                    id: i as u64 + 1,
                    links: vec![format!("127.0.0.1:{}", 10 + i)],
                    api: format!("127.0.0.1:{}", 20 + i),
                })
                .collect(),
        });
        s.resources
            .entry("web".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        let lose = |s: &mut ClusterState, l: Liveness, at: u64| {
            s.apply(&Command::SetLiveness {
                name: "n1".into(),
                liveness: l,
                at_ms: at,
            })
        };
        lose(&mut s, Liveness::Online, 1);
        lose(&mut s, Liveness::Offline, 100);
        let req = cluster(Fencing::Required);
        assert!(s.scheduler_input(200, &req, Some("n2")).nodes["n1"].unclean);
        assert!(
            !s.scheduler_input(200, &cluster(Fencing::Off), None).nodes["n1"].unclean,
            "fencing off: never held"
        );
        let fence = Action {
            kind: ActionKind::Fence,
            rsc: "n1".into(),
            node: "n2".into(),
            reason: "lost".into(),
        };
        let result = |ok: bool, at: u64| Command::ActionResult {
            plan_id: 0,
            index: 0,
            action: fence.clone(),
            outcome: if ok { CallOutcome::Ok } else { CallOutcome::Soft },
            at_ms: at,
            reason: Some(if ok { "level 1: pdu" } else { "pdu: timed out" }.into()),
        };
        s.apply(&result(false, 300));
        s.apply(&result(false, 1300));
        let n1 = &s.scheduler_input(1400, &req, Some("n2")).nodes["n1"];
        assert!(n1.unclean);
        assert_eq!(
            (n1.fence_failures, n1.fence_retry_at_ms),
            (2, 1300 + 2000),
            "1 s, then 2 s"
        );
        assert_eq!(n1.fence_error.as_deref(), Some("pdu: timed out"));
        assert!(s.resources["web"].running.contains_key("n1"), "still held");
        s.apply(&result(true, 3400));
        assert!(!s.scheduler_input(3500, &req, Some("n2")).nodes["n1"].unclean);
        assert!(s.resources["web"].running.is_empty(), "a fenced node runs nothing");
        assert_eq!(s.nodes["n1"].fence.fenced_by.as_deref(), Some("level 1: pdu"));
        // Lost again: unclean again.
        lose(&mut s, Liveness::Online, 4000);
        lose(&mut s, Liveness::Offline, 5000);
        assert!(s.scheduler_input(5100, &req, Some("n2")).nodes["n1"].unclean);
    }

    #[test]
    fn a_failed_stop_makes_an_online_node_unclean() {
        let mut s = ClusterState::default();
        s.apply(&Command::Bootstrap {
            nodes: vec![NewNode {
                name: "n1".into(),
                id: 1,
                links: vec!["127.0.0.1:1".into()],
                api: "127.0.0.1:2".into(),
            }],
        });
        s.apply(&Command::SetLiveness {
            name: "n1".into(),
            liveness: Liveness::Online,
            at_ms: 1,
        });
        s.resources
            .entry("db".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        s.apply(&Command::ActionResult {
            plan_id: 0,
            index: 0,
            action: act(ActionKind::Stop, "db", "n1"),
            outcome: CallOutcome::Soft,
            at_ms: 2,
            reason: Some("timed out".into()),
        });
        let n1 = &s
            .scheduler_input(3, &cluster(crate::config::Fencing::Required), None)
            .nodes["n1"];
        assert!(n1.unclean && n1.online);
        assert_eq!(n1.fence_reason.as_deref(), Some("stop of db failed on n1: timed out"));
        // Fenced while online: going down afterwards is that fence's doing, not a new loss.
        s.apply(&Command::ActionResult {
            plan_id: 0,
            index: 0,
            action: Action {
                kind: ActionKind::Fence,
                rsc: "n1".into(),
                node: "n2".into(),
                reason: "stop failed".into(),
            },
            outcome: CallOutcome::Ok,
            at_ms: 4,
            reason: Some("level 1: power".into()),
        });
        s.apply(&Command::SetLiveness {
            name: "n1".into(),
            liveness: Liveness::Offline,
            at_ms: 5,
        });
        let req = cluster(crate::config::Fencing::Required);
        assert!(
            !s.scheduler_input(6, &req, None).nodes["n1"].unclean,
            "fenced once is enough"
        );
        assert!(s.resources["db"].running.is_empty());
    }

    fn act(kind: ActionKind, rsc: &str, node: &str) -> Action {
        Action {
            kind,
            rsc: rsc.into(),
            node: node.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn a_claimed_start_is_in_flight_until_its_result() {
        let mut s = ClusterState::default();
        let start = act(ActionKind::Start, "web", "n2");
        s.apply(&Command::SetPlan {
            actions: vec![
                start.clone(),
                act(ActionKind::Stop, "db", "n1"),
                act(ActionKind::Start, "db", "n3"),
            ],
            edges: vec![(1, 2)],
        });
        assert!(
            s.plan.in_flight_starts().is_empty(),
            "nothing claimed: nothing runs yet"
        );
        let id = s.plan.id;
        let claim = |i: usize, node: &str| Command::ClaimAction {
            plan_id: id,
            indices: vec![i],
            node: node.into(),
            incarnation: 1,
        };
        s.apply(&claim(0, "n2"));
        s.apply(&claim(1, "n1"));
        s.apply(&claim(2, "n3"));
        assert_eq!(
            s.plan.in_flight_starts(),
            vec![&start],
            "a claimed stop is not a start, and db's start waits for the stop"
        );
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 0,
            action: start,
            outcome: CallOutcome::Ok,
            at_ms: 1,
            reason: None,
        });
        assert!(s.plan.in_flight_starts().is_empty(), "reported: no longer in flight");
    }

    #[test]
    fn a_plan_runs_in_edge_order_and_results_update_where_things_run() {
        let mut s = ClusterState::default();
        let a = act(ActionKind::Stop, "web", "n1");
        let b = act(ActionKind::Start, "web", "n2");
        s.apply(&Command::SetPlan {
            actions: vec![a.clone(), b.clone()],
            edges: vec![(0, 1)],
        });
        assert_eq!(s.plan.runnable("n2"), Vec::<usize>::new(), "start waits for the stop");
        assert_eq!(s.plan.runnable("n1"), vec![0]);
        s.resources
            .entry("web".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        let id = s.plan.id;
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 0,
            action: a,
            outcome: CallOutcome::Ok,
            at_ms: 1,
            reason: None,
        });
        assert_eq!(s.plan.runnable("n2"), vec![1]);
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 1,
            action: b.clone(),
            outcome: CallOutcome::Ok,
            at_ms: 2,
            reason: None,
        });
        assert_eq!(s.resources["web"].running.keys().collect::<Vec<_>>(), vec!["n2"]);
        assert!(s.plan.pending_keys().is_empty());
        // a result for an old plan still updates the resource, not the new plan's progress
        s.apply(&Command::SetPlan {
            actions: vec![b.clone()],
            edges: vec![],
        });
        s.apply(&Command::ActionResult {
            plan_id: id,
            index: 1,
            action: b,
            outcome: CallOutcome::Ok,
            at_ms: 3,
            reason: None,
        });
        assert!(s.plan.done.is_empty());
    }

    #[test]
    fn only_the_current_plan_can_be_claimed() {
        let mut s = ClusterState::default();
        let a = act(ActionKind::Start, "web", "n1");
        s.apply(&Command::SetPlan {
            actions: vec![a.clone()],
            edges: vec![],
        });
        let old = s.plan.id;
        let claim = |id: u64, node: &str| Command::ClaimAction {
            plan_id: id,
            indices: vec![0],
            node: node.into(),
            incarnation: 7,
        };
        assert!(
            matches!(
                s.apply(&claim(old, "n2")),
                Outcome::Rejected(RejectReason::ActionNotOpen { index: 0, .. })
            ),
            "not n2's action"
        );
        assert_eq!(s.apply(&claim(old, "n1")), Outcome::Ok);
        assert_eq!(s.plan.claimed.get(&0), Some(&7), "the claim names the claiming process");
        s.apply(&Command::SetPlan {
            actions: vec![a.clone()],
            edges: vec![],
        });
        assert!(
            matches!(
                s.apply(&claim(old, "n1")),
                Outcome::Rejected(RejectReason::StalePlan { .. })
            ),
            "a replaced plan cannot be claimed"
        );
        let new = s.plan.id;
        s.apply(&Command::ActionResult {
            plan_id: new,
            index: 0,
            action: a,
            outcome: CallOutcome::Ok,
            at_ms: 1,
            reason: None,
        });
        assert!(
            matches!(s.apply(&claim(new, "n1")), Outcome::Rejected(_)),
            "a finished action cannot be claimed"
        );
    }

    #[test]
    fn a_node_back_from_lost_forgets_what_it_ran() {
        let mut s = ClusterState::default();
        s.apply(&Command::Bootstrap {
            nodes: vec![NewNode {
                name: "n1".into(),
                id: 1,
                links: vec!["127.0.0.1:1".into()],
                api: "127.0.0.1:2".into(),
            }],
        });
        s.resources
            .entry("web".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        let set = |l: Liveness| Command::SetLiveness {
            name: "n1".into(),
            liveness: l,
            at_ms: 1,
        };
        s.apply(&set(Liveness::Online));
        assert!(
            s.resources["web"].running.contains_key("n1"),
            "Unknown -> Online keeps what a probe found"
        );
        s.apply(&set(Liveness::Offline));
        assert!(
            s.resources["web"].running.contains_key("n1"),
            "lost: kept (the scheduler recovers it elsewhere)"
        );
        s.apply(&set(Liveness::Online));
        assert!(
            !s.resources["web"].running.contains_key("n1"),
            "back from lost: unknown until probed"
        );
    }

    #[test]
    fn failures_bans_and_cleanup() {
        let mut s = ClusterState::default();
        s.resources
            .entry("web".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        let fail = Command::MonitorFailed {
            rsc: "web".into(),
            node: "n1".into(),
            outcome: CallOutcome::Hard,
            at_ms: 5,
            reason: Some("disk".into()),
        };
        assert_eq!(s.apply(&fail), Outcome::Ok);
        let r = &s.resources["web"];
        assert_eq!(r.running["n1"], Role::Failed);
        assert!(r.banned.contains("n1"));
        assert_eq!(r.last_error.as_deref(), Some("disk"));
        let input = s.scheduler_input(10, &cluster(crate::config::Fencing::Off), None);
        assert!(
            input.resources["web"].banned.contains("n1"),
            "a hard error bans the node"
        );
        s.apply(&Command::Cleanup { rsc: "web".into() });
        let r = &s.resources["web"];
        assert!(r.failures.is_empty() && r.banned.is_empty() && !r.fatal && r.last_error.is_none());
        let stray = Command::MonitorFailed {
            rsc: "web".into(),
            node: "n9".into(),
            outcome: CallOutcome::Soft,
            at_ms: 5,
            reason: None,
        };
        assert_eq!(s.apply(&stray), Outcome::Unchanged);
    }

    #[test]
    fn the_priority_fence_delay_holds_back_only_fences_of_nodes_running_something() {
        let mut cfg = cluster(crate::config::Fencing::Required);
        cfg.priority_fence_delay = std::time::Duration::from_secs(5);
        let mut s = ClusterState::default();
        let mut rec = ResourceRecord::default();
        rec.running.insert("n1".into(), crate::scheduler::Role::Started);
        s.resources.insert("web".into(), rec);
        assert_eq!(s.fence_delay(&cfg, "n1"), std::time::Duration::from_secs(5));
        assert_eq!(s.fence_delay(&cfg, "n2"), std::time::Duration::ZERO);
        cfg.priority_fence_delay = std::time::Duration::ZERO;
        assert_eq!(s.fence_delay(&cfg, "n1"), std::time::Duration::ZERO);
    }

    #[test]
    fn operator_constraints_replace_and_clear() {
        let mut s = ClusterState::default();
        let mv = |node: &str| Command::Operator {
            constraint: OperatorConstraint {
                rsc: "web".into(),
                node: node.into(),
                prefer: true,
                expires_ms: None,
            },
        };
        s.apply(&mv("n2"));
        s.apply(&mv("n3"));
        assert_eq!(s.operator.len(), 1, "one move target at a time");
        assert_eq!(s.operator[0].node, "n3");
        assert_eq!(s.apply(&Command::ClearOperator { rsc: "web".into() }), Outcome::Ok);
        assert!(s.operator.is_empty());
        assert!(matches!(
            s.apply(&Command::SetPlan {
                actions: vec![],
                edges: vec![(0, 1)]
            }),
            Outcome::Rejected(RejectReason::PlanEdgeOutOfRange {
                from: 0,
                to: 1,
                actions: 0
            })
        ));
    }
}
