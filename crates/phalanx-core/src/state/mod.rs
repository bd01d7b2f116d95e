//! The observed cluster state replicated through Raft: the nodes (ids, links, API address,
//! standby flag, liveness as seen by the leader, attributes), what runs where, the plan being
//! executed, the operator's moves and bans, fencing records and the config version. Commands
//! change it through a pure `apply`; the same sequence of commands gives the same state on every
//! node. Invalid commands are rejected with a reason and change nothing.
//!
//! One concern per file: `nodes` (membership, liveness, standby, attributes, maintenance),
//! `resources` (results, monitors, probes, failures, cleanup), `plan` (the plan, claims and
//! reported actions), `fencing` (fence records, device health), `operator` (moves and bans) and
//! `input` (the scheduler's input), `balancers` (backend health verdicts and the operator's
//! drains and weights), `sticks` (their stick tables), `tokens` (the API's tokens), `trust` (the CAs and heartbeat keys members trust, for rotations), and `touched` (which entries a command changed, so that a
//! persisted state machine writes only those), and `config` (the committed configuration's
//! versions). This file holds the nouns every family shares and the
//! dispatch of a [`Command`] to its family.

mod balancers;
mod config;
mod fencing;
mod input;
mod nodes;
mod operator;
mod plan;
mod resources;
mod sticks;
mod tokens;
mod touched;
mod trust;

pub use crate::outcome::{Outcome, RejectReason};
pub use balancers::{BackendAdminChange, BackendRecord, BalancerRecord, HealthRecord, MAX_BACKENDS};
pub use config::{ConfigRecord, CONFIG_HISTORY};
pub use fencing::{DeviceHealth, FenceRecord};
pub use nodes::{Liveness, NewNode, NodeRecord, SHUTDOWN_LOCK_ATTR};
pub use operator::{OperatorEntry, OperatorOrigin};
pub use plan::PlanRecord;
pub use resources::{CallOutcome, ResourceRecord};
pub use sticks::{MAX_BATCH as MAX_STICK_BATCH, MAX_CAPACITY as MAX_STICK_CAPACITY};
pub use touched::Touched;
pub use trust::{Trust, MAX_TRUSTED};

use crate::scheduler::{Action, OperatorConstraint, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// The committed configuration, every kept version, the current one last (see `config`).
    #[serde(default)]
    pub configs: Vec<ConfigRecord>,
    /// Who made each of `operator`'s constraints, and when (one per (rsc, node) that has one;
    /// constraints recorded by `Command::Operator`, before this existed, have none). Kept apart
    /// from `OperatorConstraint`, whose stored layout must not change.
    #[serde(default)]
    pub operator_origin: Vec<OperatorOrigin>,
    /// The load balancers' backends: health verdicts, operator states and weights (see
    /// `balancers`).
    #[serde(default)]
    pub balancers: BTreeMap<String, BalancerRecord>,
    /// The balancers' stick tables (source affinity), by balancer (see `sticks`).
    #[serde(default)]
    pub sticks: BTreeMap<String, crate::lb::StickTable>,
    /// The API's tokens, by name (see `crate::tokens`).
    #[serde(default)]
    pub tokens: BTreeMap<String, crate::tokens::TokenRecord>,
    /// The CAs and heartbeat keys members trust (see `trust`; default: their own files).
    #[serde(default)]
    pub trust: Trust,
    /// The current plan's clone notification lists, by primitive (see
    /// `scheduler::Plan::notify`): replaced with the plan. Apart from `plan`, whose stored
    /// layout must not change.
    #[serde(default)]
    pub plan_notify: BTreeMap<String, BTreeMap<String, String>>,
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
    /// `phalanx node stop` (or SIGTERM of its daemon): the node hosts nothing new and what it
    /// runs moves away, then it exits and the leader records it `Stopped`, unfenced.
    /// `leaving = false`: the node's next process ends a leave the cluster did not see through
    /// (see `set_leaving`).
    SetLeaving {
        name: String,
        leaving: bool,
        /// `shutdown = "stop"`: what it runs stays stopped, locked to it, until it is back.
        lock: bool,
    },
    /// `phalanx config apply` (or the first leader, with its local file): the next version of
    /// the cluster's configuration. Refused when `expect_version` is not the current version,
    /// when the text does not parse, or when it renames the cluster.
    ApplyConfig {
        record: ConfigRecord,
        expect_version: Option<u64>,
    },
    /// An operator move or ban, as `Operator`, recording who made it (as the API caller named
    /// itself) and when (unix ms, stamped by the API node). A move also replaces any move
    /// recorded on the other ids of the same placement unit (`unit`: a member's group, a
    /// group's members, a clone's resource...), since they all move the same thing.
    OperatorBy {
        constraint: OperatorConstraint,
        by: String,
        at_ms: u64,
        unit: Vec<String>,
    },
    /// Remove the operator's moves and bans of every one of `rscs` at once (`resource clear`
    /// of a group or clone, or of a member: every id of the placement unit).
    ClearOperators {
        rscs: Vec<String>,
    },
    /// `SetPlan`, made on a state where plan `after_plan` was current with `after_claims`
    /// actions claimed: refused (changing nothing) if the plan or its claims moved on since. A
    /// claim that commits between the leader's read and its new plan is a start that may be
    /// running already; a plan made without it could start the same resource elsewhere (found
    /// by the simulation, seed 17: vip started on n2 by one plan and on n1 by the next, 1 ms
    /// apart). The leader plans again on the state that has the claim (and waits for the start,
    /// `Controller::wait_for_in_flight_starts`).
    SetPlanAfter {
        actions: Vec<Action>,
        edges: Vec<(usize, usize)>,
        after_plan: u64,
        after_claims: usize,
    },
    /// `cmd` as a node proposed it: when, which node, for which operator, with what agent call
    /// behind it. Every node wraps what it commits (see `crate::events`): the stamp is what
    /// gives the command's events their time, reporter and author. Not nested.
    Stamped {
        stamp: crate::events::Stamp,
        cmd: Box<Command>,
    },
    /// An event a node observed that no other command records (a quorum lost and regained, an
    /// authentication failure, an undeliverable alert): it changes nothing but the history.
    Note(crate::events::Note),
    /// The leader sent (or skipped) every event up to `seq` to alert `recipient`: where a new
    /// leader resumes. Changes nothing but the history's cursors.
    AlertsDelivered {
        recipient: String,
        seq: u64,
    },
    /// A backend's health verdict, from the node that checks it (or a balancer that saw its
    /// live traffic fail): recorded when it differs from the one in force.
    BackendHealth {
        balancer: String,
        backend: String,
        health: HealthRecord,
    },
    /// `phalanx balancer drain|ready|maint|weight`: the operator's state and weight of a
    /// backend, held until changed again; `by` as the API caller named itself, `at_ms` stamped
    /// by the API node.
    BackendAdmin {
        balancer: String,
        backend: String,
        change: BackendAdminChange,
        by: Option<String>,
        at_ms: u64,
    },
    /// A balancer's batch of stick-table changes, with the table's settings and the
    /// proposer's time, on which expiry runs (see `sticks`).
    Stick {
        balancer: String,
        at_ms: u64,
        config: crate::lb::StickConfig,
        entries: Vec<(String, crate::lb::StickEntry)>,
    },
    /// A step of `phalanx drill` (begin, one run's figures, end): it changes nothing but the
    /// history, and a begin is refused while another drill is active there (see
    /// `crate::drill::active`).
    Drill(crate::drill::DrillNote),
    /// A new API token (its secret's hash only; the name must be new).
    CreateToken {
        name: String,
        token: crate::tokens::TokenRecord,
    },
    /// Revoke an API token.
    RevokeToken {
        name: String,
    },
    /// What the members trust from now on: a step of `phalanx ca rotate` or `key rotate`,
    /// refused unless the record is still `expected` (two operators rotating at once: one
    /// wins, the other is told and starts again from what is there).
    SetTrust {
        expected: Trust,
        trust: Trust,
    },
    /// `SetPlanAfter` for a plan with clone notifications: the same, with the `notify_*` lists
    /// its notify clones' calls carry (by primitive). The leader sends it only for such a plan,
    /// so a cluster without notify clones writes what older versions read.
    SetPlanNotify {
        actions: Vec<Action>,
        edges: Vec<(usize, usize)>,
        notify: BTreeMap<String, BTreeMap<String, String>>,
        after_plan: u64,
        after_claims: usize,
    },
}

/// What a command family's handler gives: the outcome, or (as `Err`) a refusal that changed
/// nothing.
pub(crate) type Applied = Result<Outcome, Outcome>;

impl ClusterState {
    /// Apply one command. Rejected commands change nothing.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        self.apply_touching(cmd, &mut Touched::default())
    }

    /// [`apply`](Self::apply), adding to `touched` every entry the command may have changed.
    pub fn apply_touching(&mut self, cmd: &Command, touched: &mut Touched) -> Outcome {
        touched.named_by(cmd);
        match self.try_apply(cmd, touched) {
            Ok(o) | Err(o) => o,
        }
    }

    /// Hand a command to its family (see the module's files); the families mark in `touched`
    /// what they change beyond what the command names.
    fn try_apply(&mut self, cmd: &Command, touched: &mut Touched) -> Applied {
        match cmd {
            Command::Bootstrap { nodes } => self.bootstrap(nodes),
            Command::AddNode { name, id, links, api } => self.add_node(name, *id, links, api),
            Command::RemoveNode { name } => self.remove_node(name),
            Command::SetStandby { name, standby } => self.set_standby(name, *standby),
            Command::SetLiveness { name, liveness, at_ms } => self.set_liveness(name, *liveness, *at_ms),
            Command::SetAttr { name, key, value } => self.set_attr(name, key, value.as_ref()),
            Command::SetMaintenance { node, on } => self.set_maintenance(node.as_deref(), *on),
            Command::SetPlan { actions, edges } => self.set_plan(actions, edges, &BTreeMap::new(), touched),
            Command::SetPlanAfter {
                actions,
                edges,
                after_plan,
                after_claims,
            } => {
                self.plan_not_moved_on(*after_plan, *after_claims)?;
                self.set_plan(actions, edges, &BTreeMap::new(), touched)
            }
            Command::SetPlanNotify {
                actions,
                edges,
                notify,
                after_plan,
                after_claims,
            } => {
                self.plan_not_moved_on(*after_plan, *after_claims)?;
                self.set_plan(actions, edges, notify, touched)
            }
            Command::ClaimAction {
                plan_id,
                indices,
                node,
                incarnation,
            } => self.claim(*plan_id, indices, node, *incarnation),
            Command::ActionResult {
                plan_id,
                index,
                action,
                outcome,
                at_ms,
                reason,
            } => self.action_result((*plan_id, *index), action, (*outcome, *at_ms, reason.clone()), touched),
            Command::MonitorFailed {
                rsc,
                node,
                outcome,
                at_ms,
                reason,
            } => Ok(self.monitor_failed(rsc, node, *outcome, *at_ms, reason.clone())),
            Command::Probe { rsc, node, role } => Ok(self.probe(rsc, node, *role)),
            Command::DeviceHealth { device, health } => Ok(self.device_health(device, health)),
            Command::Cleanup { rsc } => Ok(self.cleanup(rsc)),
            Command::Operator { constraint } => Ok(self.add_operator(constraint)),
            Command::ClearOperator { rsc } => Ok(self.clear_operators(std::slice::from_ref(rsc))),
            Command::SetLeaving { name, leaving, lock } => self.set_leaving(name, *leaving, *lock),
            Command::ApplyConfig { record, expect_version } => self.apply_config(record, *expect_version),
            Command::OperatorBy {
                constraint,
                by,
                at_ms,
                unit,
            } => Ok(self.add_operator_by(constraint, by, *at_ms, unit)),
            Command::ClearOperators { rscs } => Ok(self.clear_operators(rscs)),
            Command::Stamped { cmd, .. } => match cmd.as_ref() {
                Command::Stamped { .. } => Err(Outcome::Rejected(RejectReason::NestedStamp)),
                inner => self.try_apply(inner, touched),
            },
            Command::Note(_) => Ok(Outcome::Ok),
            // The history's, not the state's (see `crate::events::apply_logged`).
            Command::AlertsDelivered { .. } => Ok(Outcome::Unchanged),
            Command::BackendHealth {
                balancer,
                backend,
                health,
            } => self.backend_health(balancer, backend, health),
            Command::BackendAdmin {
                balancer,
                backend,
                change,
                by,
                at_ms,
            } => self.backend_admin(balancer, backend, change, by.as_deref(), *at_ms),
            Command::Stick {
                balancer,
                at_ms,
                config,
                entries,
            } => self.stick(balancer, *at_ms, config, entries, touched),
            // The history's, not the state's (see `crate::events::apply_logged`).
            Command::Drill(_) => Ok(Outcome::Ok),
            Command::CreateToken { name, token } => self.create_token(name, token),
            Command::RevokeToken { name } => self.revoke_token(name),
            Command::SetTrust { expected, trust } => self.set_trust(expected, trust),
        }
    }
}

/// Helpers shared by the families' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::scheduler::ActionKind;

    pub fn cluster(fencing: crate::config::Fencing) -> crate::config::ClusterConfig {
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
            shutdown: Default::default(),
            event_history: crate::events::DEFAULT_HISTORY,
            slo_ppm: None,
        }
    }

    pub fn act(kind: ActionKind, rsc: &str, node: &str) -> Action {
        Action {
            kind,
            rsc: rsc.into(),
            node: node.into(),
            reason: String::new(),
        }
    }

    /// A bootstrapped cluster of `names` (ids from 1).
    pub fn bootstrapped(names: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&Command::Bootstrap {
            nodes: names
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
        s
    }
}
