//! Backend health as the proxy sees it. Active checks (`probe`: a TCP connect or an HTTP GET,
//! and an optional agent, under the check's `timeout`) run when `Health::next_check_at` says,
//! from a loop on the node that runs the balancer; passive observations (connect errors of live
//! traffic; in HTTP mode also 5xx answers) come from the proxy. Both go
//! through a [`HealthView`]: today [`LocalHealth`], which keeps the results in this node's
//! pool. The seam is for the next increment, health as cluster state: a view that writes
//! results through Raft (one checker per backend across the cluster) and fills the pool from the
//! applied state, so that a balancer starting after a failover knows every backend at once.

use super::pool::Pool;
use super::probe;
use phalanx_core::config::CheckConfig;
use phalanx_core::lb::{AgentReply, BackendId, CheckResult, Observation, Transition};
use std::sync::Arc;
use std::time::Duration;

/// Where a balancer's health results go (see the module's doc).
pub trait HealthView: Send + Sync {
    /// An active check's result (`detail`: "pass" or why it failed).
    fn checked(&self, backend: BackendId, result: CheckResult, detail: String);
    /// A live connection's outcome.
    fn observed(&self, backend: BackendId, outcome: Observation);
    /// An agent's reply (the check's `agent_port`, in either mode; see `probe`).
    fn agent(&self, backend: BackendId, reply: &AgentReply);
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

    fn agent(&self, backend: BackendId, reply: &AgentReply) {
        let t = self.pool.record_agent(backend, reply);
        self.log(t, "agent");
    }
}

/// How long the checker sleeps at most: backends added by discovery are noticed this fast.
const IDLE: Duration = Duration::from_millis(100);

/// Run the active checks of `pool` forever (the caller aborts it), as `check` says (read for
/// each round: TCP or HTTP, the agent, the timeout; see `probe`), reporting to `view`.
pub async fn run_checks(pool: Arc<Pool>, view: Arc<dyn HealthView>, check: impl Fn() -> CheckConfig + Send) {
    loop {
        let (due, next) = pool.due_checks();
        for c in due {
            let view = view.clone();
            let check = check();
            tokio::spawn(async move {
                let (result, detail, agent) = probe::probe(&check, c.address).await;
                if let Some(reply) = agent {
                    view.agent(c.id, &reply);
                }
                view.checked(c.id, result, detail);
            });
        }
        let now = pool.now_ms();
        let wait = next.map_or(IDLE, |at| Duration::from_millis(at.saturating_sub(now)).min(IDLE));
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}
