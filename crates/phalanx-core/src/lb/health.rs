//! A backend's health, HAProxy-like and pure (time passed in as `now_ms`): active checks go
//! down after `fall` consecutive failures and up after `rise` consecutive successes; checks run
//! every `interval`, every `fast_interval` while a transition is under way (failures while up,
//! successes while down, passive errors counted) and every `down_interval` while down. Live
//! traffic is observed passively: `error_limit` consecutive connection errors or 5xx mark the
//! backend down (then `rise` check successes bring it back). The agent may say down, drain,
//! maint, ready or a weight percentage. The operator's state (ready / drain / maint) combines
//! with the agent's by severity, as HAProxy's CLI and agent flags do: maint > down > drain > up.
//!
//! Slowstart: when a backend starts serving again (from down or maint) its effective weight
//! ramps linearly from 1/16 of a unit to full over `slowstart_ms` (HAProxy's curve); at start-up
//! there is no ramp. [`Health`] is the replicated part only; the [`HealthConfig`] comes from the
//! committed config and is passed to every call, so a config change applies at once.

use super::agent::{AgentReply, Operational};
use super::backend::{AdminState, Backend, BackendId, BackendState, MAX_WEIGHT, WEIGHT_SCALE};
use serde::{Deserialize, Serialize};

/// The thresholds and intervals of a backend's checks (milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// Consecutive check successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive check failures that take an up backend down.
    pub fall: u32,
    pub interval_ms: u64,
    /// While a transition is under way.
    pub fast_interval_ms: u64,
    /// While down.
    pub down_interval_ms: u64,
    /// Weight ramp after coming back; 0 = none.
    pub slowstart_ms: u64,
    /// Consecutive failed live requests (connection error or 5xx) that mark it down; 0 = off.
    pub error_limit: u32,
}

impl Default for HealthConfig {
    /// HAProxy's defaults: rise 2, fall 3, inter 2s (fastinter and downinter default to
    /// inter), no slowstart, error-limit 10.
    fn default() -> Self {
        HealthConfig {
            rise: 2,
            fall: 3,
            interval_ms: 2000,
            fast_interval_ms: 2000,
            down_interval_ms: 2000,
            slowstart_ms: 0,
            error_limit: 10,
        }
    }
}

/// Why a health config was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
}

impl HealthConfig {
    pub fn validate(&self) -> Result<(), HealthError> {
        let fields = [
            ("rise", u64::from(self.rise)),
            ("fall", u64::from(self.fall)),
            ("interval", self.interval_ms),
            ("fast_interval", self.fast_interval_ms),
            ("down_interval", self.down_interval_ms),
        ];
        match fields.into_iter().find(|(_, v)| *v == 0) {
            Some((field, _)) => Err(HealthError::Zero { field }),
            None => Ok(()),
        }
    }
}

/// One active check's result (TCP connect, HTTP status in range, …; a timeout is a `Fail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    Pass,
    Fail,
}

/// One live request's outcome, observed passively by the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    Success,
    /// Connect refused/reset/timed out.
    ConnError,
    /// A 5xx answer.
    ServerError,
}

/// A change of a backend's state (for events, metrics and the Raft log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: BackendState,
    pub to: BackendState,
}

/// What the checks and the agent concluded of a backend (operator state aside): what a checker
/// commits through Raft and every balancer adopts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The active checks (or, for down, live traffic) say up.
    pub up: bool,
    /// The agent said down (holds until it says up).
    pub agent_down: bool,
    /// The agent's drain/maint (holds until it says ready).
    pub agent_admin: AdminState,
    /// The agent's weight percentage (0..=100).
    pub agent_pct: u8,
}

impl Default for Verdict {
    /// Up, nothing from an agent: how a backend nobody has checked yet is taken (HAProxy starts
    /// servers up; passive observation and redispatch cover a dead one until its first check).
    fn default() -> Self {
        Verdict {
            up: true,
            agent_down: false,
            agent_admin: AdminState::Ready,
            agent_pct: 100,
        }
    }
}

/// The dynamic health of one backend: its [`Verdict`] is what is
/// replicated; the streaks, timings and the operator's state are kept where it is checked or
/// served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// What the active checks (and passive observation) conclude.
    checks_up: bool,
    /// Consecutive check results against `checks_up` (failures while up, successes while down).
    streak: u32,
    /// Consecutive failed live requests.
    passive_errors: u32,
    agent_down: bool,
    agent_admin: AdminState,
    /// Percentage of the configured weight the agent asked for.
    agent_pct: u8,
    operator: AdminState,
    last_check_ms: Option<u64>,
    /// When it last started serving (slowstart's origin); None: full weight.
    serving_since_ms: Option<u64>,
}

impl Health {
    /// A backend as first known: up or down by `initially_up` (e.g. the cluster's record, or
    /// down until `rise` checks pass), ready, full weight, no slowstart, first check due at once.
    pub fn new(initially_up: bool) -> Self {
        Health {
            checks_up: initially_up,
            streak: 0,
            passive_errors: 0,
            agent_down: false,
            agent_admin: AdminState::Ready,
            agent_pct: 100,
            operator: AdminState::Ready,
            last_check_ms: None,
            serving_since_ms: None,
        }
    }

    /// A backend as the cluster's verdict has it (a balancer starting after a failover knows
    /// every backend at once); ready, full weight, first check due at once.
    pub fn from_verdict(v: &Verdict) -> Self {
        Health {
            agent_down: v.agent_down,
            agent_admin: v.agent_admin,
            agent_pct: v.agent_pct.min(100),
            ..Health::new(v.up)
        }
    }

    /// The combined state: maint (operator or agent) > down (checks or agent) > drain
    /// (operator or agent) > up.
    pub fn state(&self) -> BackendState {
        let admin = self.operator.max(self.agent_admin);
        if admin == AdminState::Maint {
            BackendState::Maint
        } else if !self.checks_up || self.agent_down {
            BackendState::Down
        } else if admin == AdminState::Drain {
            BackendState::Drain
        } else {
            BackendState::Up
        }
    }

    /// What the checks and the agent conclude (see [`Verdict`]).
    pub fn verdict(&self) -> Verdict {
        Verdict {
            up: self.checks_up,
            agent_down: self.agent_down,
            agent_admin: self.agent_admin,
            agent_pct: self.agent_pct,
        }
    }

    /// Take the cluster's verdict (a checker taking a backend over, a balancer following the
    /// replicated state): the streaks start again from it; the operator's state, the check
    /// timing and slowstart's origin are kept (a backend that starts serving by it ramps up).
    pub fn adopt(&mut self, v: &Verdict, now_ms: u64) -> Option<Transition> {
        self.change(now_ms, |h| {
            if h.checks_up != v.up {
                h.streak = 0;
                h.passive_errors = 0;
            }
            h.checks_up = v.up;
            h.agent_down = v.agent_down;
            h.agent_admin = v.agent_admin;
            h.agent_pct = v.agent_pct.min(100);
        })
    }

    /// The operator's own state (what `phalanx balancer drain|ready|maint` set).
    pub fn operator(&self) -> AdminState {
        self.operator
    }

    /// Whether the active checks say up (whatever the agent and the operator say).
    pub fn checks_up(&self) -> bool {
        self.checks_up
    }

    /// Apply `change` and report the state transition it caused, starting slowstart when the
    /// backend starts serving (down or maint → up or drain).
    fn change(&mut self, now_ms: u64, change: impl FnOnce(&mut Self)) -> Option<Transition> {
        let from = self.state();
        change(self);
        let to = self.state();
        let serving = |s: BackendState| matches!(s, BackendState::Up | BackendState::Drain);
        if serving(to) && !serving(from) {
            self.serving_since_ms = Some(now_ms);
        }
        (from != to).then_some(Transition { from, to })
    }

    /// An active check's result at `now_ms`.
    pub fn record_check(&mut self, cfg: &HealthConfig, result: CheckResult, now_ms: u64) -> Option<Transition> {
        self.change(now_ms, |h| {
            h.last_check_ms = Some(now_ms);
            match (h.checks_up, result) {
                (true, CheckResult::Pass) | (false, CheckResult::Fail) => h.streak = 0,
                (true, CheckResult::Fail) => {
                    h.streak += 1;
                    if h.streak >= cfg.fall {
                        h.checks_up = false;
                        h.streak = 0;
                    }
                }
                (false, CheckResult::Pass) => {
                    h.streak += 1;
                    if h.streak >= cfg.rise {
                        h.checks_up = true;
                        h.streak = 0;
                        h.passive_errors = 0;
                    }
                }
            }
        })
    }

    /// A live request's outcome: `error_limit` consecutive failures mark an up backend down.
    pub fn observe(&mut self, cfg: &HealthConfig, outcome: Observation, now_ms: u64) -> Option<Transition> {
        self.change(now_ms, |h| match outcome {
            Observation::Success => h.passive_errors = 0,
            Observation::ConnError | Observation::ServerError => {
                if cfg.error_limit == 0 || !h.checks_up {
                    return;
                }
                h.passive_errors += 1;
                if h.passive_errors >= cfg.error_limit {
                    h.checks_up = false;
                    h.streak = 0;
                    h.passive_errors = 0;
                }
            }
        })
    }

    /// An agent's answer. Its down holds until it says up; its drain/maint until it says ready.
    /// (An agent that does not answer changes nothing, as in HAProxy.)
    pub fn record_agent(&mut self, reply: &AgentReply, now_ms: u64) -> Option<Transition> {
        self.change(now_ms, |h| {
            if let Some(op) = reply.operational {
                h.agent_down = op == Operational::Down;
            }
            if let Some(admin) = reply.admin {
                h.agent_admin = admin;
            }
            if let Some(pct) = reply.weight_pct {
                h.agent_pct = pct.min(100);
            }
        })
    }

    /// The operator's state (drain / maint / ready), held until the operator changes it.
    pub fn set_operator(&mut self, state: AdminState, now_ms: u64) -> Option<Transition> {
        self.change(now_ms, |h| h.operator = state)
    }

    /// When the next active check is due: at once if none ran yet, else the last check plus
    /// `down_interval` (down, nothing under way), `fast_interval` (a transition under way) or
    /// `interval`. May be in the past: the check is overdue.
    pub fn next_check_at(&self, cfg: &HealthConfig, now_ms: u64) -> u64 {
        let Some(last) = self.last_check_ms else { return now_ms };
        let every = if self.streak > 0 || (self.checks_up && self.passive_errors > 0) {
            cfg.fast_interval_ms
        } else if self.checks_up {
            cfg.interval_ms
        } else {
            cfg.down_interval_ms
        };
        last.saturating_add(every)
    }

    /// The effective weight (1/[`WEIGHT_SCALE`] units) of a backend configured with
    /// `config_weight` (0..=256): scaled by the agent's percentage, then by slowstart — linear
    /// from `now - serving_since = 0` to full at `slowstart_ms`, rounded up, at least 1 while
    /// the scaled weight is above 0. Non-decreasing in `now_ms`.
    pub fn effective_weight(&self, cfg: &HealthConfig, config_weight: u16, now_ms: u64) -> u32 {
        let full = u64::from(config_weight.min(MAX_WEIGHT)) * u64::from(WEIGHT_SCALE) * u64::from(self.agent_pct) / 100;
        let Some(since) = self.serving_since_ms else {
            return full as u32;
        };
        let elapsed = now_ms.saturating_sub(since);
        if full == 0 || cfg.slowstart_ms == 0 || elapsed >= cfg.slowstart_ms {
            return full as u32;
        }
        // full ≤ 4096 and elapsed < slowstart_ms: no overflow in u128, result ≤ full.
        let ramp = (u128::from(full) * u128::from(elapsed)).div_ceil(u128::from(cfg.slowstart_ms));
        ramp.max(1) as u32
    }

    /// The view selection reads.
    pub fn view(&self, cfg: &HealthConfig, id: BackendId, config_weight: u16, in_flight: u32, now_ms: u64) -> Backend {
        Backend {
            id,
            weight: self.effective_weight(cfg, config_weight, now_ms),
            in_flight,
            state: self.state(),
        }
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
