//! The scheduler's view of the replicated state: [`ClusterState::scheduler_input`] turns the
//! recorded liveness, flags, placements, failures, fencing records and operator constraints
//! into `scheduler::Input` at a given time, deciding which lost nodes are still unclean.

use super::{ClusterState, Liveness, NodeRecord};
use crate::scheduler;
use std::collections::{BTreeMap, BTreeSet};

impl ClusterState {
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
                .map(|(n, rec)| (n.clone(), node_state(rec, now_ms, required, hold_ms)))
                .collect(),
            resources,
            operator: self.operator.clone(),
            maintenance: self.maintenance,
            fencer: fencer.map(str::to_string),
            members_only: true,
        }
    }
}

/// One node as the scheduler sees it (see [`ClusterState::scheduler_input`]).
fn node_state(rec: &NodeRecord, now_ms: u64, required: bool, hold_ms: Option<u64>) -> scheduler::NodeState {
    scheduler::NodeState {
        id: rec.id,
        online: rec.liveness.up(),
        standby: rec.standby,
        leaving: rec.liveness == Liveness::Leaving,
        locked: rec
            .attrs
            .get(super::SHUTDOWN_LOCK_ATTR)
            .map(|l| l.split(' ').filter(|r| !r.is_empty()).map(str::to_string).collect())
            .unwrap_or_default(),
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
        fence_retry_at_ms: rec.fence.last_attempt_ms + crate::fencing::backoff(rec.fence.failures).as_millis() as u64,
        fence_error: rec.fence.last_error.clone(),
        fence_reason: rec.fence.reason.clone(),
        attrs: rec.attrs.clone(),
    }
}
