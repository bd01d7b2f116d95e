//! Recurring checks run from their own deadlines: each resource's monitor at its interval, and
//! (on the leader) each fence device's check at its `monitor_interval`. A [`MonitorClock`] keeps
//! every check's next due time, start to start, so the measured period is the configured
//! interval whatever the heartbeat; the executor sleeps until the earliest one (as the mesh does
//! with its `next_deadline`). Results go to the log: a failed monitor of what the state says runs
//! here, or a fence device whose health changed (or that a new leader checks).

use super::{call, outcome_of};
use crate::agents::Runner;
use crate::mesh::unix_ms;
use crate::node::Node;
use crate::raft::store::SmData;
use phalanx_core::ocf::{AgentAction, Verdict};
use phalanx_core::scheduler::Role;
use phalanx_core::state::CallOutcome;
use phalanx_core::Command;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// When every recurring check is next due, by key (a resource id, or `fence device NAME`).
#[derive(Debug, Default)]
pub struct MonitorClock {
    next: BTreeMap<String, Instant>,
}

impl MonitorClock {
    /// Whether `key` is due at `now`; if so its next run is booked one `interval` after this
    /// one was due (start to start: no drift), or one interval from now when it fell more than
    /// an interval behind. A key seen for the first time is due at once.
    pub fn take_due(&mut self, key: &str, interval: Duration, now: Instant) -> bool {
        match self.next.get_mut(key) {
            Some(due) if *due > now => false,
            Some(due) => {
                let next = *due + interval;
                *due = if next > now { next } else { now + interval };
                true
            }
            None => {
                self.next.insert(key.to_string(), now + interval);
                true
            }
        }
    }

    /// The earliest due time of any check (the executor sleeps until then at most).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next.values().min().copied()
    }

    /// Forget the checks not in `keep` (what stopped running here, devices when not leading).
    pub fn retain(&mut self, keep: &BTreeSet<String>) {
        self.next.retain(|k, _| keep.contains(k));
    }
}

/// Checks in flight, by key: a check still running when it is due again is skipped.
pub type InFlight = Arc<Mutex<BTreeSet<String>>>;

fn begin(in_flight: &InFlight, key: &str) -> bool {
    in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.to_string())
}

fn end(in_flight: &InFlight, key: &str) {
    in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
}

/// Start every check that is due: the monitors of what runs here, and on the leader the fence
/// devices. Returns the keys that are scheduled (for [`MonitorClock::retain`]).
pub fn run_due(
    node: &Arc<Node>,
    runner: &Arc<Runner>,
    sm: &SmData,
    clock: &mut MonitorClock,
    in_flight: &InFlight,
) -> BTreeSet<String> {
    let now = Instant::now();
    let mut keys = BTreeSet::new();
    if node.leader_name().as_deref() == Some(node.name.as_str()) {
        for d in &node.config().fence.devices {
            if d.monitor_interval.is_zero() {
                continue;
            }
            let key = format!("fence device {}", d.name);
            keys.insert(key.clone());
            // Not recorded as checked by this leader (it just took over, or its last record was
            // lost with a leader change): check at once, whatever the clock says, until it is.
            let stale = sm.cluster.fence_devices.get(&d.name).is_none_or(|h| h.by != node.name);
            if (clock.take_due(&key, d.monitor_interval, now) || stale) && begin(in_flight, &key) {
                node.spawn(check_fence_device(node.clone(), d.clone(), in_flight.clone(), key));
            }
        }
    }
    for (rsc, rec) in &sm.cluster.resources {
        let Some(role) = rec.running.get(&node.name).copied() else {
            continue;
        };
        if role == Role::Failed {
            continue;
        }
        let Some(op) = node.config().resources.primitive_of(rsc).and_then(|p| p.monitor) else {
            continue;
        };
        keys.insert(rsc.clone());
        if clock.take_due(rsc, op.interval, now) && begin(in_flight, rsc) {
            node.spawn(monitor(
                node.clone(),
                runner.clone(),
                rsc.clone(),
                role,
                op.interval,
                in_flight.clone(),
            ));
        }
    }
    clock.retain(&keys);
    keys
}

/// One recurring monitor of `rsc` running here as `role`; a failure of what the state still
/// says runs here goes to the log.
async fn monitor(
    node: Arc<Node>,
    runner: Arc<Runner>,
    rsc: String,
    role: Role,
    interval: Duration,
    in_flight: InFlight,
) {
    // An action of this instance is running (or reporting): this round is skipped.
    let lock = runner.instance_lock(&rsc);
    let Ok(_busy) = lock.try_lock() else {
        end(&in_flight, &rsc);
        return;
    };
    if let Some(r) = call(&node, &runner, &rsc, AgentAction::Monitor, Some(interval)).await {
        publish(&node, &r.attrs).await;
        let healthy = match role {
            Role::Promoted => matches!(r.verdict, Verdict::Promoted { .. }),
            _ => r.succeeded(),
        };
        let still = node.with_state(|sm| {
            sm.cluster
                .resources
                .get(&rsc)
                .is_some_and(|x| x.running.get(&node.name) == Some(&role))
        });
        if !healthy && still {
            let reason = r
                .exit_reason
                .clone()
                .or_else(|| Some(format!("monitor: {:?}", r.verdict)));
            tracing::warn!(rsc = %rsc, ?reason, "monitor failed");
            let outcome = match outcome_of(&r) {
                CallOutcome::Ok => CallOutcome::Soft,
                o => o,
            };
            let failed = Command::MonitorFailed {
                rsc: rsc.clone(),
                node: node.name.clone(),
                outcome,
                at_ms: unix_ms(),
                reason,
            };
            let _ = node.write_reported(failed, Some(super::report(&r))).await;
        }
    }
    end(&in_flight, &rsc);
}

/// Record the node attributes a monitor reported (a `pgsql` position) that differ from the
/// replicated ones: one write for each changed value, none when nothing changed.
async fn publish(node: &Node, attrs: &BTreeMap<String, String>) {
    for (key, value) in attrs {
        let known = node.with_state(|sm| sm.cluster.nodes.get(&node.name).and_then(|n| n.attrs.get(key)).cloned());
        if known.as_ref() != Some(value) {
            let set = Command::SetAttr {
                name: node.name.clone(),
                key: key.clone(),
                value: Some(value.clone()),
            };
            if let Err(e) = node.write(set).await {
                tracing::debug!(%key, error = ?e, "could not record a monitor's attribute");
            }
        }
    }
}

/// One check of a fence device (leader only). A change of answer goes to the log (status shows
/// it on every node), and so does the first check by a node not recorded as the checker (a new
/// leader), so that "checked by" names the node checking it now; an unchanged answer does not
/// (no entry per check): when this node last checked is kept here (`Node::device_checked`). A
/// failure is logged as an error.
async fn check_fence_device(node: Arc<Node>, d: phalanx_core::fencing::FenceDevice, in_flight: InFlight, key: String) {
    let r = node.fencer.monitor(&d).await;
    let error = r.err().map(|e| e.to_string());
    node.device_checked(&d.name, unix_ms());
    let known = node.with_state(|sm| sm.cluster.fence_devices.get(&d.name).cloned());
    let changed = known
        .as_ref()
        .is_none_or(|k| k.ok != error.is_none() || k.error != error);
    if changed || known.is_some_and(|k| k.by != node.name) {
        if changed {
            match &error {
                Some(e) => tracing::error!(device = %d.name, error = %e, "fence device unreachable"),
                None => tracing::info!(device = %d.name, "fence device ok"),
            }
        }
        let health = phalanx_core::state::DeviceHealth {
            ok: error.is_none(),
            error,
            since_ms: unix_ms(),
            by: node.name.clone(),
        };
        let _ = node
            .write(Command::DeviceHealth {
                device: d.name.clone(),
                health,
            })
            .await;
    }
    end(&in_flight, &key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_due_start_to_start_without_drift() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = MonitorClock::default();
        assert!(c.take_due("web", ms(500), t0), "first time: due at once");
        assert_eq!(c.next_deadline(), Some(t0 + ms(500)));
        assert!(!c.take_due("web", ms(500), t0 + ms(499)));
        // Woken 7 ms late: the next is still booked from when it was due.
        assert!(c.take_due("web", ms(500), t0 + ms(507)));
        assert_eq!(c.next_deadline(), Some(t0 + ms(1000)));
        // More than an interval behind (a paused process): one run now, the next an interval on.
        assert!(c.take_due("web", ms(500), t0 + ms(2600)));
        assert_eq!(c.next_deadline(), Some(t0 + ms(3100)));
        assert!(c.take_due("db", ms(200), t0 + ms(2600)));
        assert_eq!(c.next_deadline(), Some(t0 + ms(2800)));
        c.retain(&["web".to_string()].into());
        assert_eq!(c.next_deadline(), Some(t0 + ms(3100)));
    }
}
