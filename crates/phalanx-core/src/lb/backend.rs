//! The balancer's view of one backend: its stable id, its effective weight, its in-flight
//! requests and its state (up, drain, maint, down). This is the only input selection reads,
//! a small `Copy` struct the proxy keeps in a slice; discovery and health (elsewhere) fill it
//! in. Which states take which traffic is decided here, once.

use super::hash::stable_hash;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The highest weight a config or an operator may give a backend (as HAProxy: 0..=256).
pub const MAX_WEIGHT: u16 = 256;
/// Effective weights are in 1/16 of a configured weight unit, so slowstart and an agent's
/// `NN%` can lower even a weight-1 backend smoothly (HAProxy's `BE_WEIGHT_SCALE`).
pub const WEIGHT_SCALE: u32 = 16;
/// The largest effective weight; larger values in a [`Backend`] are treated as this.
pub const MAX_EFFECTIVE_WEIGHT: u32 = MAX_WEIGHT as u32 * WEIGHT_SCALE;

/// A backend's identity in placement decisions: the stable hash of its name, so every node
/// derives the same id and consistent/sticky placement agrees across the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackendId(pub u64);

impl BackendId {
    /// The id of the backend called `name` (see [`super::hash::stable_hash`]).
    pub fn of(name: &str) -> Self {
        BackendId(stable_hash(name.as_bytes()))
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a backend may receive, derived from health checks, the agent and the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Healthy and in rotation.
    Up,
    /// Healthy, but only sticky/existing traffic: no new clients (operator or agent drain).
    Drain,
    /// Out of service on purpose (operator or agent maint): no traffic at all.
    Maint,
    /// Failed its checks (or passive observation, or the agent said down): no traffic.
    Down,
}

impl BackendState {
    /// The state's name as status and events print it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Drain => "drain",
            BackendState::Maint => "maint",
            BackendState::Down => "down",
        }
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operator's (or an agent's) administrative state, as HAProxy's `set server state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// No administrative restriction.
    #[default]
    Ready,
    /// Finish existing/sticky traffic, take no new clients.
    Drain,
    /// Take nothing.
    Maint,
}

impl AdminState {
    /// The state's name as the CLI, status and events write it.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// One backend as selection sees it. The order of a `&[Backend]` slice matters to round robin
/// and modulo hashing: give every node the same order (e.g. sorted by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Stable id ([`BackendId::of`] its name).
    pub id: BackendId,
    /// Effective weight in 1/[`WEIGHT_SCALE`] units (0 = never picked for new traffic),
    /// usually [`super::health::Health::effective_weight`]; capped at [`MAX_EFFECTIVE_WEIGHT`].
    pub weight: u32,
    /// Requests (or connections) in flight right now; read by leastconn and p2c.
    pub in_flight: u32,
    /// Up, drain, maint or down.
    pub state: BackendState,
}

impl Backend {
    /// An up backend with no traffic and the configured weight `config_weight` at full scale.
    pub fn new(id: BackendId, config_weight: u16) -> Self {
        Backend {
            id,
            weight: u32::from(config_weight.min(MAX_WEIGHT)) * WEIGHT_SCALE,
            in_flight: 0,
            state: BackendState::Up,
        }
    }

    /// May new traffic (a fresh pick) go here? Only an up backend with a weight above 0.
    pub fn takes_new(&self) -> bool {
        self.state == BackendState::Up && self.weight > 0
    }

    /// May sticky/existing traffic go here? Up or draining, whatever the weight (as HAProxy:
    /// weight 0 behaves like drain).
    pub fn takes_sticky(&self) -> bool {
        matches!(self.state, BackendState::Up | BackendState::Drain)
    }

    /// The weight selection uses, capped so sums cannot overflow.
    pub(crate) fn eff_weight(&self) -> u32 {
        self.weight.min(MAX_EFFECTIVE_WEIGHT)
    }
}

/// The index of the backend with id `id` in `backends` (a linear scan: slices are small).
pub fn position(backends: &[Backend], id: BackendId) -> Option<usize> {
    backends.iter().position(|b| b.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligibility_by_state_and_weight() {
        let mut b = Backend::new(BackendId::of("a"), 1);
        assert_eq!(b.weight, 16);
        assert!(b.takes_new() && b.takes_sticky());
        b.weight = 0;
        assert!(!b.takes_new() && b.takes_sticky());
        b.weight = 16;
        for (state, new, sticky) in [
            (BackendState::Drain, false, true),
            (BackendState::Maint, false, false),
            (BackendState::Down, false, false),
        ] {
            b.state = state;
            assert_eq!((b.takes_new(), b.takes_sticky()), (new, sticky), "{state}");
        }
    }

    #[test]
    fn weights_are_capped() {
        assert_eq!(Backend::new(BackendId(1), 1000).weight, MAX_EFFECTIVE_WEIGHT);
        let b = Backend {
            weight: u32::MAX,
            ..Backend::new(BackendId(1), 1)
        };
        assert_eq!(b.eff_weight(), MAX_EFFECTIVE_WEIGHT);
    }

    #[test]
    fn ids_are_stable_and_positions_found() {
        assert_eq!(BackendId::of("web-1"), BackendId::of("web-1"));
        assert_ne!(BackendId::of("web-1"), BackendId::of("web-2"));
        let bs = [Backend::new(BackendId::of("a"), 1), Backend::new(BackendId::of("b"), 1)];
        assert_eq!(position(&bs, BackendId::of("b")), Some(1));
        assert_eq!(position(&bs, BackendId::of("c")), None);
    }
}
