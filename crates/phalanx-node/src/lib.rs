//! phalanx-node: all the IO of a phalanx node. The heartbeat mesh (UDP, HMAC-signed), the
//! openraft glue (redb storage, Raft RPC), the controller that keeps the replicated state
//! in line with what the node observes, the HTTP API (operator and peer routers), and
//! `transport`, the one place that builds HTTP clients and listeners. The pure decisions live in
//! `phalanx-core`; this crate only moves bytes, keeps time and persists.

pub mod agents;
pub mod alerts;
pub mod api;
pub mod config_watch;
mod controller;
pub mod events;
pub mod executor;
pub mod fakenet;
pub mod fence;
pub mod forward;
pub mod fuzzing;
pub mod key;
pub mod lb;
pub mod lifecycle;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod pgsql;
pub mod pki;
pub mod ports;
pub mod priority;
pub mod raft;
pub mod rotation;
pub mod sessions;
pub mod status;
pub mod systemd;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod vip;
pub mod watchdog;

pub use key::ClusterKey;
pub use node::{Node, NodeError, NodeOptions, StatusReport};
