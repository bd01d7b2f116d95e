//! phalanx-core: the pure heart of phalanx. It owns the configuration (parsing and validation
//! with spans), the failure detector, quorum arithmetic and the replicated cluster state. It does
//! no IO, reads no clock and draws no random numbers: time and inputs are passed in, so every
//! behaviour here is a deterministic function tested without a network.
//!
//! Modules depend downwards only: `model`, `diag` and `duration` hold what everything shares;
//! `config` (with `resources` and `fencing`, each section validating itself) builds on them;
//! `scheduler` and `state` build on the config; `timings` derives every timing from `[cluster]`;
//! `controller` (the leader's decisions) builds on the state and the scheduler; `availability`
//! (MTBF, MTTR, error budgets) reads the event history; `drill` measures what a drill's probes
//! saw; `notify` (the OCF clone notifications' lists) needs only `model`. `lb` (the load
//! balancer's selection, health and stickiness) stands apart and depends on nothing else here, as
//! does `sessions` (the memcached-speaking session store of issue 15; so far its protocol parser).

pub mod alerts;
pub mod availability;
pub mod config;
pub mod controller;
pub mod diag;
pub mod drill;
pub mod duration;
pub mod events;
pub mod fencing;
pub mod forwarding;
pub mod lb;
pub mod linkcheck;
pub mod liveness;
pub mod model;
pub mod notify;
pub mod ocf;
pub mod outcome;
pub mod pgsql;
pub mod quorum;
pub mod resources;
pub mod scheduler;
pub mod sessions;
pub mod state;
pub mod timings;
pub mod tokens;

pub use config::Config;
pub use diag::{Diagnostic, Severity};
pub use liveness::{Detector, LivenessEvent};
pub use outcome::RejectReason;
pub use quorum::{NoQuorumPolicy, QuorumView};
pub use state::{ClusterState, Command, Liveness, NewNode, NodeRecord, Outcome};
pub use timings::Timings;
