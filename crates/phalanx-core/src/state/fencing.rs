//! Fencing as the cluster records it: each node's fence record (fenced since lost, by which
//! level, why it must be fenced although online, failed attempts for the backoff), the health of
//! each fence device as its monitor last reported it, and the priority fence delay.

use super::{ClusterState, Outcome};
use crate::scheduler::Action;
use serde::{Deserialize, Serialize};

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

/// What the monitor of a fence device found, as replicated: its verdict, since when it holds,
/// and which node checks the device now. Only the leader checks devices, and it writes only
/// when the verdict changes or when it is not the node recorded as the checker (its first
/// check after it became leader): one entry per change or leader change, never one per check.
/// When it last checked is that node's own memory (status shows it when it answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceHealth {
    pub ok: bool,
    pub error: Option<String>,
    /// Unix ms of the check that found this verdict (kept when only the checker changes).
    pub since_ms: u64,
    /// The node that checks the device now (the leader that last recorded it).
    pub by: String,
}

impl ClusterState {
    /// A fence action's result: on success the target is confirmed down and nothing runs there.
    pub(super) fn record_fence(&mut self, action: &Action, ok: bool, at_ms: u64, reason: Option<String>) {
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

    /// A fence device's monitor answered: a new verdict replaces the record; the same verdict
    /// from another checker (a new leader) records that checker and keeps `since_ms`; the same
    /// verdict from the same checker is Unchanged (and changes nothing, in memory either).
    pub(super) fn device_health(&mut self, device: &str, health: &DeviceHealth) -> Outcome {
        match self.fence_devices.get_mut(device) {
            Some(o) if o.ok == health.ok && o.error == health.error => {
                if o.by == health.by {
                    Outcome::Unchanged
                } else {
                    o.by = health.by.clone();
                    Outcome::Ok
                }
            }
            _ => {
                self.fence_devices.insert(device.to_string(), health.clone());
                Outcome::Ok
            }
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{bootstrapped, cluster};
    use super::super::{CallOutcome, Command, Liveness, ResourceRecord};
    use super::*;
    use crate::scheduler::{ActionKind, Role};

    #[test]
    fn a_lost_node_is_unclean_until_a_recorded_fence_and_failures_back_off() {
        use crate::config::Fencing;
        let mut s = bootstrapped(&["n1", "n2"]);
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
            plan_id: 1,
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
    fn the_priority_fence_delay_holds_back_only_fences_of_nodes_running_something() {
        let mut cfg = cluster(crate::config::Fencing::Required);
        cfg.priority_fence_delay = std::time::Duration::from_secs(5);
        let mut s = ClusterState::default();
        let mut rec = ResourceRecord::default();
        rec.running.insert("n1".into(), Role::Started);
        s.resources.insert("web".into(), rec);
        assert_eq!(s.fence_delay(&cfg, "n1"), std::time::Duration::from_secs(5));
        assert_eq!(s.fence_delay(&cfg, "n2"), std::time::Duration::ZERO);
        cfg.priority_fence_delay = std::time::Duration::ZERO;
        assert_eq!(s.fence_delay(&cfg, "n1"), std::time::Duration::ZERO);
    }

    #[test]
    fn device_health_records_changes_only() {
        let mut s = ClusterState::default();
        let h = |ok: bool, since_ms: u64| DeviceHealth {
            ok,
            error: None,
            since_ms,
            by: "n1".into(),
        };
        assert_eq!(s.device_health("pdu", &h(true, 1)), Outcome::Ok);
        assert_eq!(s.device_health("pdu", &h(true, 2)), Outcome::Unchanged);
        assert_eq!(
            s.fence_devices["pdu"].since_ms, 1,
            "an unchanged verdict changes nothing"
        );
        assert_eq!(s.device_health("pdu", &h(false, 3)), Outcome::Ok);
        // A new leader checks it: the checker is recorded, the verdict's time is kept.
        let by_n2 = DeviceHealth {
            by: "n2".into(),
            ..h(false, 9)
        };
        assert_eq!(s.device_health("pdu", &by_n2), Outcome::Ok);
        assert_eq!(
            (s.fence_devices["pdu"].since_ms, s.fence_devices["pdu"].by.as_str()),
            (3, "n2")
        );
        assert_eq!(s.device_health("pdu", &by_n2), Outcome::Unchanged);
    }
}
