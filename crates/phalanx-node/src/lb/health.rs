//! Backend health as a running balancer sees it between committed verdicts: passive
//! observations of its live traffic (connect errors; 5xx in HTTP mode) go through a
//! [`HealthView`] into the pool. When they take a backend down here ([`LocalHealth`]), the
//! balancer commits that verdict for the cluster (`on_change`), and the backend's checker
//! (`checker`) adopts it: `rise` passing checks bring it back. Active checks (`probe`: TCP or
//! HTTP, and the agent) are not here: they are cluster state, run by one node per backend (see
//! `checker`).

use super::pool::Pool;
use phalanx_core::lb::{BackendId, Observation, Transition};
use std::sync::Arc;

/// Where a balancer's live-traffic observations go.
pub trait HealthView: Send + Sync {
    /// A live connection's outcome.
    fn observed(&self, backend: BackendId, outcome: Observation);
}

/// What is told of a backend that live traffic took down here (balancer, backend, the
/// change, why): the node commits the verdict.
pub type OnChange = Arc<dyn Fn(&str, &str, Transition, &str) + Send + Sync>;

/// Observations kept in the balancer's pool, a change reported to `on_change`.
pub struct LocalHealth {
    pub balancer: String,
    pub pool: Arc<Pool>,
    /// None in tests without a node.
    pub on_change: Option<OnChange>,
}

impl HealthView for LocalHealth {
    fn observed(&self, backend: BackendId, outcome: Observation) {
        if let Some((name, t)) = self.pool.observe(backend, outcome) {
            let why = "live traffic";
            tracing::info!(balancer = %self.balancer, backend = %name, from = %t.from, to = %t.to, why, "backend state changed");
            if let Some(f) = &self.on_change {
                f(&self.balancer, &name, t, why);
            }
        }
    }
}
