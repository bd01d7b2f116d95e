//! The cluster's event history: what happened, in log order, the same on every node. Events are
//! derived from the commands as they are applied ([`apply_logged`]): the command and the state
//! before it say what happened (a node lost, a fence that failed, a resource started, an
//! operator's command), the command's [`Stamp`] says when, by which node and for whom. The
//! history is part of the replicated state machine, bounded (the oldest dropped first, see
//! `[cluster] event_history`), and its sequence numbers are assigned as commands are applied, so
//! every node holds the same events under the same numbers, and a reader that moves to another
//! node (its node died) resumes with no gap and no repeat. Pure: times come with the commands.

use crate::scheduler::{Action, ActionKind};
use crate::state::{CallOutcome, ClusterState, Command, Liveness, Outcome, Touched};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// How many events the history keeps unless `[cluster] event_history` says otherwise.
pub const DEFAULT_HISTORY: u64 = 10_000;

/// What happened. The JSON names (`node_lost`, …) are a contract (`phalanx events --json`, the
/// webhooks); the stored encoding numbers the variants, so new kinds are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    NodeAdded,
    NodeRemoved,
    NodeJoined,
    NodeLost,
    NodeLeaving,
    NodeStopped,
    QuorumLost,
    QuorumRegained,
    FenceRequested,
    FenceSucceeded,
    FenceFailed,
    FenceDeviceFailed,
    FenceDeviceRecovered,
    ResourceStarted,
    ResourceStopped,
    ResourcePromoted,
    ResourceDemoted,
    ResourceReloaded,
    /// A plan action (start, stop, promote, demote) of a resource failed.
    ResourceFailed,
    MonitorFailed,
    /// A clone notification the agent failed: recorded, but not a failure of the resource
    /// (under Pacemaker too, a failed notify changes nothing and the operations go on).
    NotifyFailed,
    PlanCommitted,
    ConfigApplied,
    OperatorCommand,
    AuthFailed,
    AlertFailed,
    /// A balancer's backend changed state (`details`: from, to, why).
    BackendChanged,
    /// The session store's Raft group has a new leader (a note of the new leader).
    SessionsLeaderChanged,
    /// The session store evicted items to stay under `memory_limit` (a note of its leader, at
    /// most one a minute, with the count).
    SessionsEvicted,
    /// A resource started burning its error budget on a row of the SRE burn-rate table
    /// (`[cluster] slo`; a note of the leader, see `phalanx_core::availability::burn_notes`).
    SloBurn,
    /// It stopped burning on that row.
    SloBurnEnded,
    /// `phalanx drill` began (`task`: the scenario, `resource`, `node`: the node it acts on;
    /// `details`: `id=`, `expires_ms=`, see `crate::drill`). Until it ends or expires, another
    /// drill is refused and the resource's outages are planned.
    DrillStarted,
    /// One run of a drill, with what its probes measured (`details`: `rto_ms=`, …).
    DrillRun,
    /// The drill ended (`details`: `id=`, and `aborted=` with the reason if it was aborted).
    DrillEnded,
}

impl EventKind {
    pub const ALL: [EventKind; 34] = [
        EventKind::NodeAdded,
        EventKind::NodeRemoved,
        EventKind::NodeJoined,
        EventKind::NodeLost,
        EventKind::NodeLeaving,
        EventKind::NodeStopped,
        EventKind::QuorumLost,
        EventKind::QuorumRegained,
        EventKind::FenceRequested,
        EventKind::FenceSucceeded,
        EventKind::FenceFailed,
        EventKind::FenceDeviceFailed,
        EventKind::FenceDeviceRecovered,
        EventKind::ResourceStarted,
        EventKind::ResourceStopped,
        EventKind::ResourcePromoted,
        EventKind::ResourceDemoted,
        EventKind::ResourceReloaded,
        EventKind::ResourceFailed,
        EventKind::MonitorFailed,
        EventKind::NotifyFailed,
        EventKind::PlanCommitted,
        EventKind::ConfigApplied,
        EventKind::OperatorCommand,
        EventKind::AuthFailed,
        EventKind::AlertFailed,
        EventKind::BackendChanged,
        EventKind::SessionsLeaderChanged,
        EventKind::SessionsEvicted,
        EventKind::SloBurn,
        EventKind::SloBurnEnded,
        EventKind::DrillStarted,
        EventKind::DrillRun,
        EventKind::DrillEnded,
    ];

    /// The JSON name (`node_lost`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NodeAdded => "node_added",
            EventKind::NodeRemoved => "node_removed",
            EventKind::NodeJoined => "node_joined",
            EventKind::NodeLost => "node_lost",
            EventKind::NodeLeaving => "node_leaving",
            EventKind::NodeStopped => "node_stopped",
            EventKind::QuorumLost => "quorum_lost",
            EventKind::QuorumRegained => "quorum_regained",
            EventKind::FenceRequested => "fence_requested",
            EventKind::FenceSucceeded => "fence_succeeded",
            EventKind::FenceFailed => "fence_failed",
            EventKind::FenceDeviceFailed => "fence_device_failed",
            EventKind::FenceDeviceRecovered => "fence_device_recovered",
            EventKind::ResourceStarted => "resource_started",
            EventKind::ResourceStopped => "resource_stopped",
            EventKind::ResourcePromoted => "resource_promoted",
            EventKind::ResourceDemoted => "resource_demoted",
            EventKind::ResourceReloaded => "resource_reloaded",
            EventKind::ResourceFailed => "resource_failed",
            EventKind::MonitorFailed => "monitor_failed",
            EventKind::NotifyFailed => "notify_failed",
            EventKind::PlanCommitted => "plan_committed",
            EventKind::ConfigApplied => "config_applied",
            EventKind::OperatorCommand => "operator_command",
            EventKind::AuthFailed => "auth_failed",
            EventKind::AlertFailed => "alert_failed",
            EventKind::BackendChanged => "backend_changed",
            EventKind::SessionsLeaderChanged => "sessions_leader_changed",
            EventKind::SessionsEvicted => "sessions_evicted",
            EventKind::SloBurn => "slo_burn",
            EventKind::SloBurnEnded => "slo_burn_ended",
            EventKind::DrillStarted => "drill_started",
            EventKind::DrillRun => "drill_run",
            EventKind::DrillEnded => "drill_ended",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event of the history. Fields that do not apply to a kind are None (or empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Cluster-wide, gap-free, in log order.
    pub seq: u64,
    /// Unix ms, by the clock of the node that reported it (`reporter`).
    pub time_ms: u64,
    /// The node it is about: the lost, fenced or stopped node, where a resource ran, the node
    /// an operator command named (else the reporter).
    pub node: String,
    pub kind: EventKind,
    /// One line for a person.
    pub summary: String,
    pub resource: Option<String>,
    /// The agent action or operation (`start`, `monitor`, `fence`, `standby`…).
    pub task: Option<String>,
    /// The agent's exit code (None: killed or timed out, or not an agent call).
    pub rc: Option<i32>,
    pub exit_reason: Option<String>,
    pub exec_ms: Option<u64>,
    /// The last lines of the agent's stderr; a plan's summary lines.
    pub details: Vec<String>,
    /// The operator (as the caller named itself) and where the request came from.
    pub by: Option<String>,
    pub from: Option<String>,
    /// The node whose command this is.
    pub reporter: String,
    /// A fence's device(s) and level (`fence_succeeded`).
    pub device: Option<String>,
    pub level: Option<u32>,
}

impl Event {
    /// An event of `kind` about (and reported by) `node` at `time_ms`, with nothing else: the
    /// fields a kind uses are set on the result (`Event { resource, ..Event::new(…) }`).
    pub fn new(kind: EventKind, node: &str, time_ms: u64, summary: impl Into<String>) -> Event {
        Event {
            seq: 0,
            time_ms,
            node: node.to_string(),
            kind,
            summary: summary.into(),
            resource: None,
            task: None,
            rc: None,
            exit_reason: None,
            exec_ms: None,
            details: Vec::new(),
            by: None,
            from: None,
            reporter: node.to_string(),
            device: None,
            level: None,
        }
    }
}

/// Who proposed a command, when, and for whom: every command a node commits is wrapped in one
/// ([`Command::Stamped`]), which is what gives its events a time, a reporter and an author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stamp {
    /// Unix ms by the proposing node's clock.
    pub at_ms: u64,
    /// The proposing node.
    pub node: String,
    /// An operator command: the caller as it named itself, and its address.
    pub by: Option<String>,
    pub from: Option<String>,
    /// The agent call behind a result (exit code, duration, stderr).
    pub call: Option<CallReport>,
}

/// What an agent (or fence) call gave, beyond its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CallReport {
    pub rc: Option<i32>,
    pub exec_ms: u64,
    /// The last lines of its stderr (at most [`STDERR_LINES`]).
    pub stderr: Vec<String>,
}

/// How many lines of an agent's stderr an event keeps.
pub const STDERR_LINES: usize = 5;

impl CallReport {
    /// The report of a call that wrote `stderr`: its last non-empty lines, each cut at 300 bytes.
    pub fn new(rc: Option<i32>, exec_ms: u64, stderr: &str) -> Self {
        let lines: Vec<&str> = stderr.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(STDERR_LINES)..]
            .iter()
            .map(|l| cut(l, 300))
            .collect();
        CallReport {
            rc,
            exec_ms,
            stderr: tail,
        }
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An event a node observed that no other command records (`Command::Note`): a quorum lost
/// and regained, an authentication failure, an alert that could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub kind: EventKind,
    pub node: String,
    pub summary: String,
    /// When it was observed (it may be committed later: a quorum loss, once quorum is back).
    pub at_ms: u64,
}

/// The bounded history, with the alert cursors (what each alert recipient was sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    events: VecDeque<Event>,
    /// The sequence number of the next event.
    next_seq: u64,
    limit: u64,
    /// The time of the last event (for a command that carries none).
    last_ms: u64,
    /// Alert recipient → the last sequence number delivered to it (or skipped).
    pub delivered: BTreeMap<String, u64>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            events: VecDeque::new(),
            next_seq: 1,
            limit: DEFAULT_HISTORY,
            last_ms: 0,
            delivered: BTreeMap::new(),
        }
    }
}

/// Where the history stood before a batch (see [`EventLog::changed_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    first: u64,
    next: u64,
    delivered: bool,
}

/// What a batch changed in the history: events to write, sequence numbers to delete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventChanges {
    pub added: Vec<u64>,
    pub removed: std::ops::Range<u64>,
}

impl EventLog {
    /// A history read back from storage: `events` in order, with its counters.
    pub fn restore(
        events: Vec<Event>,
        next_seq: u64,
        limit: u64,
        last_ms: u64,
        delivered: BTreeMap<String, u64>,
    ) -> Self {
        EventLog {
            events: events.into(),
            next_seq: next_seq.max(1),
            limit: limit.max(1),
            last_ms,
            delivered,
        }
    }

    /// The sequence number of the oldest event kept (= `next_seq` when empty).
    pub fn first_seq(&self) -> u64 {
        self.events.front().map_or(self.next_seq, |e| e.seq)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The event numbered `seq`, if still kept.
    pub fn get(&self, seq: u64) -> Option<&Event> {
        let first = self.first_seq();
        if seq < first {
            return None;
        }
        self.events.get((seq - first) as usize)
    }

    /// Every kept event from `seq` on, in order.
    pub fn since(&self, seq: u64) -> impl Iterator<Item = &Event> {
        let skip = seq.saturating_sub(self.first_seq()) as usize;
        self.events.iter().skip(skip)
    }

    /// Every kept event, the newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().rev()
    }

    pub fn mark(&self) -> Mark {
        Mark {
            first: self.first_seq(),
            next: self.next_seq,
            delivered: false,
        }
    }

    /// What changed since `mark`: the events added and still kept, the ones dropped.
    pub fn changed_since(&self, mark: Mark) -> EventChanges {
        let first = self.first_seq();
        EventChanges {
            added: (mark.next.max(first)..self.next_seq).collect(),
            removed: mark.first..first.max(mark.first),
        }
    }

    /// Record alert delivery: `recipient` was sent (or skipped) everything up to `seq`. Never
    /// moves back (a deposed leader's late report changes nothing).
    pub fn set_delivered(&mut self, recipient: &str, seq: u64) -> Outcome {
        let e = self.delivered.entry(recipient.to_string()).or_insert(0);
        if seq <= *e {
            return Outcome::Unchanged;
        }
        *e = seq;
        Outcome::Ok
    }

    fn set_limit(&mut self, limit: u64) {
        self.limit = limit.max(1);
        self.trim();
    }

    fn push(&mut self, mut e: Event) {
        e.seq = self.next_seq;
        self.next_seq += 1;
        self.last_ms = self.last_ms.max(e.time_ms);
        self.events.push_back(e);
        self.trim();
    }

    fn trim(&mut self) {
        while self.events.len() as u64 > self.limit {
            self.events.pop_front();
        }
    }
}

/// Apply `cmd` to `state` and append the events it gives to `log` (only if it changed
/// something: a refused or idle command happened to nobody).
pub fn apply_logged(state: &mut ClusterState, log: &mut EventLog, cmd: &Command, touched: &mut Touched) -> Outcome {
    let (stamp, inner) = match cmd {
        Command::Stamped { stamp, cmd } => (Some(stamp), cmd.as_ref()),
        c => (None, c),
    };
    if let Command::AlertsDelivered { recipient, seq } = inner {
        let o = log.set_delivered(recipient, *seq);
        touched.events = true;
        return o;
    }
    if let Command::Drill(n) = inner {
        if let (crate::drill::DrillStep::Begin { .. }, Some(e)) =
            (&n.step, crate::drill::active(log.newest_first(), n.at_ms))
        {
            if crate::drill::detail(e, "id") != Some(n.id.to_string().as_str()) {
                return Outcome::Rejected(crate::outcome::RejectReason::DrillRunning {
                    scenario: e.task.clone().unwrap_or_default(),
                    resource: e.resource.clone().unwrap_or_default(),
                    by: e.by.clone().unwrap_or_else(|| e.reporter.clone()),
                    expires_ms: crate::drill::detail(e, "expires_ms")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                });
            }
        }
    }
    let mut drafts = derive(state, inner, stamp, log.last_ms);
    // A run or end the history already holds (the CLI retried it through another node after a
    // timeout that had committed it) is not recorded twice.
    if let Command::Drill(n) = inner {
        if crate::drill::recorded(log.newest_first(), n) {
            drafts.clear();
        }
    }
    let outcome = state.apply_touching(cmd, touched);
    if outcome != Outcome::Ok {
        return outcome;
    }
    if let Command::ApplyConfig { .. } = inner {
        if let Some(limit) = state
            .current_config()
            .and_then(|c| crate::config::parse(&c.text).ok())
            .map(|c| c.cluster.event_history)
        {
            log.set_limit(limit);
            touched.events = true;
        }
    }
    for e in drafts {
        log.push(e);
        touched.events = true;
    }
    outcome
}

/// The events `cmd` gives if it applies, from the state before it.
fn derive(state: &ClusterState, cmd: &Command, stamp: Option<&Stamp>, last_ms: u64) -> Vec<Event> {
    let reporter = stamp.map(|s| s.node.clone()).unwrap_or_default();
    let time = |own: Option<u64>| own.or(stamp.map(|s| s.at_ms)).unwrap_or(last_ms);
    let event = |kind: EventKind, node: &str, at: Option<u64>, summary: String| Event {
        node: if node.is_empty() {
            reporter.clone()
        } else {
            node.to_string()
        },
        by: stamp.and_then(|s| s.by.clone()),
        from: stamp.and_then(|s| s.from.clone()),
        reporter: reporter.clone(),
        ..Event::new(kind, "", time(at), summary)
    };
    let operator = |node: &str, task: &str, what: String| {
        let who = match stamp.and_then(|s| s.by.as_deref()) {
            Some(by) => format!("{by}: "),
            None => String::new(),
        };
        let mut e = event(EventKind::OperatorCommand, node, None, format!("{who}{what}"));
        e.task = Some(task.to_string());
        e
    };
    let with_rsc = |mut e: Event, rsc: &str| {
        e.resource = Some(rsc.to_string());
        e
    };
    match cmd {
        Command::Bootstrap { nodes } => nodes
            .iter()
            .map(|n| {
                event(
                    EventKind::NodeAdded,
                    &n.name,
                    None,
                    format!("{} is a member (cluster formed)", n.name),
                )
            })
            .collect(),
        Command::AddNode { name, .. } => vec![event(EventKind::NodeAdded, name, None, format!("{name} added"))],
        Command::RemoveNode { name } => vec![event(EventKind::NodeRemoved, name, None, format!("{name} removed"))],
        Command::SetStandby { name, standby } => {
            let what = if *standby { "standby" } else { "unstandby" };
            vec![operator(name, what, format!("{what} {name}"))]
        }
        Command::SetLiveness { name, liveness, at_ms } => {
            let old = state.nodes.get(name).map(|n| n.liveness).unwrap_or_default();
            let (kind, summary) = match liveness {
                Liveness::Online if old == Liveness::Leaving => {
                    (EventKind::NodeJoined, format!("{name} stays (its leave ended)"))
                }
                Liveness::Online => (EventKind::NodeJoined, format!("{name} joined")),
                Liveness::Offline if old.up() => {
                    (EventKind::NodeLost, format!("{name} lost: no heartbeat on any link"))
                }
                Liveness::Offline => (
                    EventKind::NodeLost,
                    format!("{name} is offline (not seen since this leader took over)"),
                ),
                Liveness::Leaving => (EventKind::NodeLeaving, format!("{name} is leaving")),
                Liveness::Stopped => (EventKind::NodeStopped, format!("{name} stopped cleanly")),
                Liveness::Unknown => return Vec::new(),
            };
            vec![event(kind, name, Some(*at_ms), summary)]
        }
        Command::SetAttr { name, key, value } if stamp.is_some_and(|s| s.by.is_some()) => {
            let what = match value {
                Some(v) => format!("attribute {key}={v} on {name}"),
                None => format!("attribute {key} deleted on {name}"),
            };
            vec![operator(name, "attribute", what)]
        }
        Command::SetPlan { actions, .. }
        | Command::SetPlanAfter { actions, .. }
        | Command::SetPlanNotify { actions, .. } => plan_events(state, actions, &event),
        Command::ActionResult {
            action,
            outcome,
            at_ms,
            reason,
            ..
        } => {
            // A notification that went through changes nothing worth a line of history (a
            // failed one is kept: the agent was not told).
            if matches!(action.kind, ActionKind::Notify { .. }) && *outcome == CallOutcome::Ok {
                return vec![];
            }
            let mut e = result_event(action, *outcome, reason.as_deref(), stamp, &event, *at_ms);
            if action.kind != ActionKind::Fence {
                e = with_rsc(e, &action.rsc);
            }
            vec![e]
        }
        Command::MonitorFailed {
            rsc,
            node,
            outcome,
            at_ms,
            reason,
        } => {
            let mut e = event(
                EventKind::MonitorFailed,
                node,
                Some(*at_ms),
                format!(
                    "{rsc} failed on {node} (monitor{}): {}",
                    rc_text(stamp),
                    reason_text(*outcome, reason.as_deref())
                ),
            );
            e.task = Some("monitor".into());
            e.exit_reason = reason.clone();
            add_call(&mut e, stamp);
            vec![with_rsc(e, rsc)]
        }
        Command::DeviceHealth { device, health } => {
            let was_ok = state.fence_devices.get(device).map(|h| h.ok);
            let mut e = match (health.ok, was_ok) {
                (false, _) => event(
                    EventKind::FenceDeviceFailed,
                    &health.by,
                    Some(health.since_ms),
                    format!(
                        "fence device {device} failed its check on {}: {}",
                        health.by,
                        health.error.as_deref().unwrap_or("no reason given")
                    ),
                ),
                (true, Some(false)) => event(
                    EventKind::FenceDeviceRecovered,
                    &health.by,
                    Some(health.since_ms),
                    format!("fence device {device} answers again (checked on {})", health.by),
                ),
                (true, _) => return Vec::new(),
            };
            e.task = Some(device.clone());
            vec![e]
        }
        Command::Cleanup { rsc } => vec![with_rsc(operator("", "cleanup", format!("cleanup {rsc}")), rsc)],
        Command::Operator { constraint } | Command::OperatorBy { constraint, .. } => {
            let (task, what) = if constraint.prefer {
                ("move", format!("move {} to {}", constraint.rsc, constraint.node))
            } else {
                ("ban", format!("ban {} from {}", constraint.rsc, constraint.node))
            };
            let what = match constraint.expires_ms {
                Some(ms) => format!("{what} (expires at unix ms {ms})"),
                None => what,
            };
            vec![with_rsc(operator(&constraint.node, task, what), &constraint.rsc)]
        }
        Command::ClearOperator { rsc } => vec![with_rsc(operator("", "clear", format!("clear {rsc}")), rsc)],
        Command::ClearOperators { rscs } => {
            let first = rscs.first().cloned().unwrap_or_default();
            vec![with_rsc(
                operator("", "clear", format!("clear {}", rscs.join(", "))),
                &first,
            )]
        }
        Command::SetMaintenance { node, on } => {
            let onoff = if *on { "on" } else { "off" };
            let what = match node {
                Some(n) => format!("maintenance {onoff} for {n}"),
                None => format!("maintenance {onoff} for the whole cluster"),
            };
            vec![operator(node.as_deref().unwrap_or(""), "maintenance", what)]
        }
        Command::SetLeaving {
            name,
            leaving: true,
            lock,
        } => {
            let how = if *lock {
                "its resources stay stopped, locked to it"
            } else {
                "its resources move away"
            };
            vec![event(
                EventKind::NodeLeaving,
                name,
                None,
                format!("{name} asked to stop: {how}"),
            )]
        }
        Command::ApplyConfig { record, .. } => {
            let mut e = event(
                EventKind::ConfigApplied,
                "",
                Some(record.time_ms),
                format!(
                    "config version {} applied by {} (sha256 {})",
                    state.current_config().map_or(0, |c| c.version) + 1,
                    record.author,
                    record.sha256.get(..12).unwrap_or(&record.sha256)
                ),
            );
            e.by = Some(record.author.clone());
            vec![e]
        }
        Command::Note(n) => vec![event(n.kind, &n.node, Some(n.at_ms), n.summary.clone())],
        Command::CreateToken { name, token } => {
            let expiry = token
                .expires_ms
                .map_or("never expires".to_string(), |e| format!("expires at unix ms {e}"));
            vec![operator(
                "",
                "token",
                format!("token create {name} ({}, {expiry})", token.role),
            )]
        }
        Command::RevokeToken { name } => vec![operator("", "token", format!("token revoke {name}"))],
        Command::SetTrust { trust, .. } => vec![operator("", "trust", format!("trust {}", trust.describe()))],
        Command::Drill(n) => {
            let (kind, node, summary, details) = n.describe();
            let mut e = with_rsc(event(kind, &node, Some(n.at_ms), summary), &n.resource);
            e.task = Some(n.scenario.clone());
            e.details = details;
            vec![e]
        }
        Command::BackendHealth {
            balancer,
            backend,
            health,
        } => {
            let old = backend_record(state, balancer, backend);
            let mut new = old.clone();
            new.health = Some(health.clone());
            let (from, to) = (old.state(), new.state());
            if from == to && old.verdict().up == health.verdict.up {
                return Vec::new();
            }
            let checks = if health.verdict.up { "up" } else { "down" };
            let what = if from == to {
                format!("checks say {checks}, stays {to}")
            } else {
                format!("{from} -> {to}")
            };
            vec![event(
                EventKind::BackendChanged,
                &health.by,
                Some(health.at_ms),
                format!(
                    "balancer {balancer}: backend {backend} {what} ({}; by {})",
                    health.detail, health.by
                ),
            )]
        }
        Command::BackendAdmin {
            balancer,
            backend,
            change,
            ..
        } => {
            let old = backend_record(state, balancer, backend);
            let mut new = old.clone();
            let mut parts = Vec::new();
            if let Some(a) = change.admin {
                new.admin = a;
                parts.push(a.as_str().to_string());
            }
            if let Some(w) = change.weight {
                new.weight = w;
                parts.push(match w {
                    Some(w) => format!("weight {w}"),
                    None => "weight from the config".into(),
                });
            }
            let mut out = vec![operator(
                "",
                "balancer",
                format!("{} {balancer}/{backend}", parts.join(", ")),
            )];
            let (from, to) = (old.state(), new.state());
            if from != to {
                out.push(event(
                    EventKind::BackendChanged,
                    "",
                    None,
                    format!("balancer {balancer}: backend {backend} {from} -> {to} (operator)"),
                ));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// A backend's record as the state holds it (the default when it has none).
fn backend_record(state: &ClusterState, balancer: &str, backend: &str) -> crate::state::BackendRecord {
    state
        .balancers
        .get(balancer)
        .and_then(|b| b.backends.get(backend))
        .cloned()
        .unwrap_or_default()
}

/// Builds an event of a kind, about a node, at a time (None: the stamp's), with a summary.
type MakeEvent<'a> = dyn Fn(EventKind, &str, Option<u64>, String) -> Event + 'a;

/// A committed plan: a fence request per fence it holds, then the plan's own summary.
fn plan_events(state: &ClusterState, actions: &[Action], event: &MakeEvent) -> Vec<Event> {
    if actions.is_empty() {
        return Vec::new();
    }
    let id = state.plan.id + 1;
    let mut out: Vec<Event> = actions
        .iter()
        .filter(|a| a.kind == ActionKind::Fence)
        .map(|a| {
            let mut e = event(
                EventKind::FenceRequested,
                &a.rsc,
                None,
                format!("fence {} requested ({}), to be run by {}", a.rsc, a.reason, a.node),
            );
            e.task = Some("fence".into());
            e
        })
        .collect();
    let mut e = event(
        EventKind::PlanCommitted,
        "",
        None,
        format!(
            "plan {id}: {} action{}",
            actions.len(),
            if actions.len() == 1 { "" } else { "s" }
        ),
    );
    e.details = actions.iter().map(action_line).collect();
    out.push(e);
    out
}

/// One action of a plan, as a person reads it (`start web on n2: n1 lost`).
pub fn action_line(a: &Action) -> String {
    let what = match a.kind {
        ActionKind::Fence => format!("fence {} (run by {})", a.rsc, a.node),
        ActionKind::Stop => format!("stop {} on {}", a.rsc, a.node),
        ActionKind::Demote => format!("demote {} on {}", a.rsc, a.node),
        ActionKind::Start => format!("start {} on {}", a.rsc, a.node),
        ActionKind::Promote => format!("promote {} on {}", a.rsc, a.node),
        ActionKind::Notify { when, op } => {
            format!("notify {} on {} ({}-{})", a.rsc, a.node, when.as_str(), op.as_str())
        }
    };
    if a.reason.is_empty() {
        what
    } else {
        format!("{what}: {}", a.reason)
    }
}

fn result_event(
    action: &Action,
    outcome: CallOutcome,
    reason: Option<&str>,
    stamp: Option<&Stamp>,
    event: &MakeEvent,
    at_ms: u64,
) -> Event {
    let ok = outcome == CallOutcome::Ok;
    let took = stamp
        .and_then(|s| s.call.as_ref())
        .map(|c| format!(" in {} ms", c.exec_ms))
        .unwrap_or_default();
    let (kind, node, summary) = match (action.kind, ok) {
        (ActionKind::Fence, true) => (
            EventKind::FenceSucceeded,
            &action.rsc,
            format!(
                "{} fenced by {}{took} ({})",
                action.rsc,
                action.node,
                reason.unwrap_or("no detail")
            ),
        ),
        (ActionKind::Fence, false) => (
            EventKind::FenceFailed,
            &action.rsc,
            format!(
                "fencing {} from {} failed{took}: {}",
                action.rsc,
                action.node,
                reason.unwrap_or("no reason given")
            ),
        ),
        (k, true) => {
            let (kind, verb) = match k {
                ActionKind::Stop => (EventKind::ResourceStopped, "stopped"),
                ActionKind::Demote => (EventKind::ResourceDemoted, "demoted"),
                ActionKind::Promote => (EventKind::ResourcePromoted, "promoted"),
                _ => (EventKind::ResourceStarted, "started"),
            };
            // What the agent said it did beyond the action (the pgsql agent's "rejoined as a
            // replica of n1 (pg_rewind)"); a bare status word ("started") adds nothing.
            let said = reason
                .filter(|r| r.contains(' '))
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            (
                kind,
                &action.node,
                format!("{} {verb} on {}{took}{said}", action.rsc, action.node),
            )
        }
        (k, false) => (
            match k {
                ActionKind::Notify { .. } => EventKind::NotifyFailed,
                _ => EventKind::ResourceFailed,
            },
            &action.node,
            format!(
                "{} of {} failed on {}{took}{}: {}",
                k.as_str(),
                action.rsc,
                action.node,
                rc_text(stamp),
                reason_text(outcome, reason)
            ),
        ),
    };
    let mut e = event(kind, node, Some(at_ms), summary);
    e.task = Some(action.kind.as_str().into());
    e.exit_reason = reason.map(str::to_string);
    if action.kind == ActionKind::Fence {
        // A success names what did it: `level 1: pdu + ipmi`.
        if let Some((level, devices)) = reason
            .filter(|_| ok)
            .and_then(|r| r.strip_prefix("level "))
            .and_then(|r| r.split_once(": "))
        {
            e.level = level.parse().ok();
            e.device = Some(devices.to_string());
        }
        e.exec_ms = stamp.and_then(|s| s.call.as_ref()).map(|c| c.exec_ms);
    } else {
        add_call(&mut e, stamp);
    }
    e
}

fn add_call(e: &mut Event, stamp: Option<&Stamp>) {
    if let Some(c) = stamp.and_then(|s| s.call.as_ref()) {
        e.rc = c.rc;
        e.exec_ms = Some(c.exec_ms);
        e.details = c.stderr.clone();
    }
}

fn rc_text(stamp: Option<&Stamp>) -> String {
    match stamp.and_then(|s| s.call.as_ref()) {
        Some(CallReport { rc: Some(rc), .. }) => format!(", rc={rc}"),
        Some(_) => ", no exit code".into(),
        None => String::new(),
    }
}

fn reason_text(outcome: CallOutcome, reason: Option<&str>) -> String {
    let class = match outcome {
        CallOutcome::Ok => "ok",
        CallOutcome::Hard => "hard error",
        CallOutcome::Fatal => "fatal error",
        CallOutcome::Soft => "error",
    };
    match reason {
        Some(r) => format!("{class}: {r}"),
        None => class.to_string(),
    }
}

#[cfg(test)]
mod tests;
