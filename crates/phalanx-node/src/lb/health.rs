//! Backend health as the proxy sees it. Active checks (a TCP connect under the check's
//! `timeout`) run when `Health::next_check_at` says, from a loop on the node that runs the
//! balancer; passive observations (connect errors of live traffic) come from the proxy. Both go
//! through a [`HealthView`]: today [`LocalHealth`], which keeps the results in this node's
//! pool. The seam is for the next increment, health as cluster state: a view that writes
//! results through Raft (one checker per backend across the cluster) and fills the pool from the
//! applied state, so that a balancer starting after a failover knows every backend at once.

use super::pool::Pool;
use phalanx_core::lb::{BackendId, CheckResult, Observation, Transition};
use std::sync::Arc;
use std::time::Duration;

/// Where a balancer's health results go (see the module's doc).
pub trait HealthView: Send + Sync {
    /// An active check's result (`detail`: "pass" or why it failed).
    fn checked(&self, backend: BackendId, result: CheckResult, detail: String);
    /// A live connection's outcome.
    fn observed(&self, backend: BackendId, outcome: Observation);
}

/// What is told of a backend's change of state (balancer, backend, the change, why): the node
/// records it in the event history.
pub type OnChange = Arc<dyn Fn(&str, &str, Transition, &str) + Send + Sync>;

/// Health kept by this node alone, in the balancer's pool.
pub struct LocalHealth {
    pub balancer: String,
    pub pool: Arc<Pool>,
    /// None in tests without a node.
    pub on_change: Option<OnChange>,
}

impl LocalHealth {
    fn log(&self, t: Option<(String, Transition)>, why: &str) {
        if let Some((backend, t)) = t {
            tracing::info!(balancer = %self.balancer, %backend, from = %t.from, to = %t.to, why, "backend state changed");
            if let Some(f) = &self.on_change {
                f(&self.balancer, &backend, t, why);
            }
        }
    }
}

impl HealthView for LocalHealth {
    fn checked(&self, backend: BackendId, result: CheckResult, detail: String) {
        let why = detail.clone();
        let t = self.pool.record_check(backend, result, detail);
        self.log(t, &why);
    }

    fn observed(&self, backend: BackendId, outcome: Observation) {
        let t = self.pool.observe(backend, outcome);
        self.log(t, "live traffic");
    }
}

/// How long the checker sleeps at most: backends added by discovery are noticed this fast.
const IDLE: Duration = Duration::from_millis(100);

/// Run the active checks of `pool` forever (the caller aborts it), `timeout` each, reporting to
/// `view`.
pub async fn run_checks(pool: Arc<Pool>, view: Arc<dyn HealthView>, timeout: impl Fn() -> Duration + Send) {
    loop {
        let (due, next) = pool.due_checks();
        for c in due {
            let view = view.clone();
            let limit = timeout();
            tokio::spawn(async move {
                let (result, detail) =
                    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(c.address)).await {
                        Ok(Ok(_)) => (CheckResult::Pass, "pass".to_string()),
                        Ok(Err(e)) => (CheckResult::Fail, format!("connect: {e}")),
                        Err(_) => (CheckResult::Fail, format!("no answer within {} ms", limit.as_millis())),
                    };
                view.checked(c.id, result, detail);
            });
        }
        let now = pool.now_ms();
        let wait = next.map_or(IDLE, |at| Duration::from_millis(at.saturating_sub(now)).min(IDLE));
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}
