//! The load balancers' replicated state: per backend, the cluster's health verdict (committed
//! by the one node that checks it, or by a balancer that saw its live traffic fail) and the
//! operator's state and weight (`phalanx balancer drain|ready|maint|weight`). A balancer that
//! starts after a failover reads every backend from here at once, and an operator's drain
//! survives leader changes, config applies and restarts (HAProxy keeps both per process).
//!
//! Names are not checked against the config here (that is the API's job, before it proposes):
//! a record of a backend no config names is harmless and kept, so that a backend can be
//! drained before it first runs. Both are bounded, so a caller cannot grow the state at will.

use super::{Applied, ClusterState, Outcome, RejectReason};
use crate::lb::{AdminState, BackendState, Health, Verdict, MAX_WEIGHT};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most backends recorded per balancer, and the longest name of either.
pub const MAX_BACKENDS: usize = 4096;
pub const MAX_NAME: usize = 256;
/// The longest detail kept with a verdict (a check's error text).
const MAX_DETAIL: usize = 200;

/// One balancer's backends, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerRecord {
    pub backends: BTreeMap<String, BackendRecord>,
}

/// One backend's replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// The cluster's verdict; None: nobody checked it yet (taken as up: [`Verdict::default`]).
    pub health: Option<HealthRecord>,
    /// The operator's state (ready unless drained or maintained).
    pub admin: AdminState,
    /// The operator's weight, replacing the config's; None: the config's.
    pub weight: Option<u16>,
    /// Who set `admin` or `weight` last, and when (unix ms).
    pub admin_by: Option<String>,
    pub admin_at_ms: u64,
}

/// A committed health verdict: what, by which node, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub verdict: Verdict,
    /// The node that concluded it (its checker, or a balancer from live traffic).
    pub by: String,
    /// When (unix ms, the reporting node's clock).
    pub at_ms: u64,
    /// The last check's result or why it failed.
    pub detail: String,
}

impl BackendRecord {
    /// The verdict in force ([`Verdict::default`] when none was committed).
    pub fn verdict(&self) -> Verdict {
        self.health.as_ref().map(|h| h.verdict).unwrap_or_default()
    }

    /// The state it takes traffic by: the verdict combined with the operator's state.
    pub fn state(&self) -> BackendState {
        let mut h = Health::from_verdict(&self.verdict());
        h.set_operator(self.admin, 0);
        h.state()
    }
}

/// An operator's change to a backend (each part optional: None leaves it as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendAdminChange {
    pub admin: Option<AdminState>,
    /// Some(None): back to the config's weight.
    pub weight: Option<Option<u16>>,
}

fn name_ok(balancer: &str, backend: &str) -> Result<(), Outcome> {
    for (what, n) in [("balancer", balancer), ("backend", backend)] {
        if n.is_empty() || n.len() > MAX_NAME {
            return Err(Outcome::Rejected(RejectReason::BadName {
                what: what.into(),
                max: MAX_NAME,
            }));
        }
    }
    Ok(())
}

impl ClusterState {
    /// The record of a backend to change, made if new (refused past [`MAX_BACKENDS`]).
    fn backend_mut(&mut self, balancer: &str, backend: &str) -> Result<&mut BackendRecord, Outcome> {
        name_ok(balancer, backend)?;
        let b = self.balancers.entry(balancer.to_string()).or_default();
        if !b.backends.contains_key(backend) && b.backends.len() >= MAX_BACKENDS {
            return Err(Outcome::Rejected(RejectReason::TooManyBackends {
                balancer: balancer.into(),
                max: MAX_BACKENDS,
            }));
        }
        Ok(b.backends.entry(backend.to_string()).or_default())
    }

    /// A checker's (or a balancer's) verdict: recorded when it differs from the one in force.
    pub(super) fn backend_health(&mut self, balancer: &str, backend: &str, health: &HealthRecord) -> Applied {
        let current = self
            .balancers
            .get(balancer)
            .and_then(|b| b.backends.get(backend))
            .map(BackendRecord::verdict)
            .unwrap_or_default();
        let known = self
            .balancers
            .get(balancer)
            .and_then(|b| b.backends.get(backend))
            .is_some_and(|r| r.health.is_some());
        if known && current == health.verdict {
            return Ok(Outcome::Unchanged);
        }
        let mut h = health.clone();
        if h.detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !h.detail.is_char_boundary(end) {
                end -= 1;
            }
            h.detail.truncate(end);
        }
        h.verdict.agent_pct = h.verdict.agent_pct.min(100);
        self.backend_mut(balancer, backend)?.health = Some(h);
        Ok(Outcome::Ok)
    }

    /// An operator's drain / ready / maint and weight.
    pub(super) fn backend_admin(
        &mut self,
        balancer: &str,
        backend: &str,
        change: &BackendAdminChange,
        by: Option<&str>,
        at_ms: u64,
    ) -> Applied {
        if let Some(Some(w)) = change.weight {
            if w > MAX_WEIGHT {
                return Err(Outcome::Rejected(RejectReason::BadWeight {
                    weight: w,
                    max: MAX_WEIGHT,
                }));
            }
        }
        let r = self.backend_mut(balancer, backend)?;
        let before = (r.admin, r.weight);
        if let Some(a) = change.admin {
            r.admin = a;
        }
        if let Some(w) = change.weight {
            r.weight = w;
        }
        if (r.admin, r.weight) == before {
            return Ok(Outcome::Unchanged);
        }
        r.admin_by = by.map(str::to_string);
        r.admin_at_ms = at_ms;
        Ok(Outcome::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::*;

    fn verdict(up: bool) -> HealthRecord {
        HealthRecord {
            verdict: Verdict {
                up,
                ..Verdict::default()
            },
            by: "n2".into(),
            at_ms: 5,
            detail: if up { "pass".into() } else { "connect: refused".into() },
        }
    }

    fn health(up: bool) -> Command {
        Command::BackendHealth {
            balancer: "lb".into(),
            backend: "web@n1".into(),
            health: verdict(up),
        }
    }

    fn admin(a: Option<AdminState>, w: Option<Option<u16>>) -> Command {
        Command::BackendAdmin {
            balancer: "lb".into(),
            backend: "web@n1".into(),
            change: BackendAdminChange { admin: a, weight: w },
            by: Some("alice".into()),
            at_ms: 9,
        }
    }

    #[test]
    fn a_verdict_is_recorded_once_and_changes_only_when_it_differs() {
        let mut s = ClusterState::default();
        assert_eq!(s.apply(&health(true)), Outcome::Ok, "the first verdict is recorded");
        assert_eq!(s.apply(&health(true)), Outcome::Unchanged);
        assert_eq!(s.apply(&health(false)), Outcome::Ok);
        let r = &s.balancers["lb"].backends["web@n1"];
        assert!(!r.verdict().up);
        assert_eq!(r.health.as_ref().unwrap().detail, "connect: refused");
        assert_eq!(
            BackendRecord::default().verdict(),
            Verdict::default(),
            "unchecked reads as up"
        );
    }

    #[test]
    fn the_operator_state_and_weight_hold_and_say_who() {
        let mut s = ClusterState::default();
        assert_eq!(s.apply(&admin(Some(AdminState::Drain), None)), Outcome::Ok);
        assert_eq!(s.apply(&admin(Some(AdminState::Drain), None)), Outcome::Unchanged);
        assert_eq!(s.apply(&admin(None, Some(Some(7)))), Outcome::Ok);
        assert_eq!(
            s.apply(&health(false)),
            Outcome::Ok,
            "a verdict keeps the operator's state"
        );
        let r = &s.balancers["lb"].backends["web@n1"];
        assert_eq!(
            (r.admin, r.weight, r.admin_by.as_deref()),
            (AdminState::Drain, Some(7), Some("alice"))
        );
        assert_eq!(s.apply(&admin(Some(AdminState::Ready), Some(None))), Outcome::Ok);
        let r = &s.balancers["lb"].backends["web@n1"];
        assert_eq!((r.admin, r.weight), (AdminState::Ready, None));
    }

    #[test]
    fn bad_names_weights_and_too_many_backends_are_refused_unchanged() {
        let mut s = ClusterState::default();
        let before = s.clone();
        assert!(matches!(
            s.apply(&admin(None, Some(Some(MAX_WEIGHT + 1)))),
            Outcome::Rejected(RejectReason::BadWeight { .. })
        ));
        let long = Command::BackendHealth {
            balancer: "lb".into(),
            backend: "x".repeat(MAX_NAME + 1),
            health: verdict(true),
        };
        assert!(matches!(
            s.apply(&long),
            Outcome::Rejected(RejectReason::BadName { .. })
        ));
        assert_eq!(s, before);
        for i in 0..MAX_BACKENDS {
            s.balancers
                .entry("lb".into())
                .or_default()
                .backends
                .insert(format!("b{i}"), BackendRecord::default());
        }
        assert!(matches!(
            s.apply(&health(true)),
            Outcome::Rejected(RejectReason::TooManyBackends { .. })
        ));
        let known = Command::BackendHealth {
            balancer: "lb".into(),
            backend: "b1".into(),
            health: verdict(false),
        };
        assert_eq!(s.apply(&known), Outcome::Ok, "a known backend still changes");
    }

    #[test]
    fn a_long_detail_is_cut_on_a_char_boundary() {
        let mut s = ClusterState::default();
        let mut h = verdict(false);
        h.detail = "é".repeat(300);
        s.apply(&Command::BackendHealth {
            balancer: "lb".into(),
            backend: "a".into(),
            health: h,
        });
        let d = &s.balancers["lb"].backends["a"].health.as_ref().unwrap().detail;
        assert!(d.len() <= MAX_DETAIL && d.chars().all(|c| c == 'é'));
    }
}
