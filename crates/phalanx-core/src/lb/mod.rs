//! Load balancing, the pure part (pingora's split: discovery and health are separate from a
//! pure `select()`). The proxy in phalanx-node keeps a slice of [`Backend`] views filled from
//! discovery and [`Health`], asks a [`StickTable`] first for sticky clients, and otherwise
//! calls [`Balancer::pick`]. Nothing here reads a clock or draws a random number: `now_ms`
//! and the random word are passed in, so every decision replays exactly.
//!
//! Files, one concern each: `backend` (the view and which state takes which traffic), `hash`
//! (the stable hash placement agrees on), `algorithm` (names and parsing), `select` (the
//! balancer: round robin, leastconn, p2c, modulo hashing), `weighted` (smooth weighted round
//! robin), `rendezvous` (consistent hashing), `agent` (the agent-check line), `health` (rise/
//! fall, intervals, passive checks, operator states, slowstart), `sticky` (the stick table),
//! `cookie` (HTTP mode's self-contained sticky cookie), `assign` (which node checks which
//! backend).

pub mod agent;
pub mod algorithm;
pub mod assign;
pub mod backend;
pub mod cookie;
pub mod hash;
pub mod health;
mod rendezvous;
pub mod select;
pub mod sticky;
mod weighted;

pub use agent::{AgentError, AgentReply, Operational};
pub use algorithm::{Algorithm, AlgorithmError, HashKey, HashSpec};
pub use assign::checker;
pub use backend::{position, AdminState, Backend, BackendId, BackendState, MAX_WEIGHT, WEIGHT_SCALE};
pub use cookie::{CookieConfig, StickyCookie};
pub use hash::stable_hash;
pub use health::{CheckResult, Health, HealthConfig, HealthError, Observation, Transition, Verdict};
pub use select::Balancer;
pub use sticky::{Lookup, Merged, StickConfig, StickEntry, StickError, StickTable};
