//! phalanx-core: the pure heart of phalanx. It owns the configuration (parsing and validation
//! with spans), the failure detector, quorum arithmetic and the replicated cluster state. It does
//! no IO, reads no clock and draws no random numbers: time and inputs are passed in, so every
//! behaviour here is a deterministic function tested without a network.

pub mod config;
pub mod fencing;
pub mod forwarding;
pub mod liveness;
pub mod ocf;
pub mod outcome;
pub mod quorum;
pub mod resources;
pub mod scheduler;
pub mod state;

pub use config::{Config, Diagnostic, Severity};
pub use liveness::{Detector, LivenessEvent};
pub use outcome::RejectReason;
pub use quorum::{NoQuorumPolicy, QuorumView};
pub use state::{ClusterState, Command, Liveness, NewNode, NodeRecord, Outcome};
