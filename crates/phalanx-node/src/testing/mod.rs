//! Test support behind the `testing` feature (off in the product): the seeded in-process
//! simulation, the fast middle of the test pyramid (DESIGN.md §6). `world` is the fake
//! machines (what really runs where, fake agents and fence devices, the invariant checks),
//! `schedule` the seeded faults, `sim` the driver running real nodes on the fake network
//! (`crate::fakenet`) on paused tokio time. `phalanx-node`'s `tests/sim.rs` runs it in
//! `cargo test`; `phalanx-lab sim` (`tests/sim/run`) runs it longer.

pub mod schedule;
pub mod sim;
pub mod world;

pub use sim::{follow_tokio_clock, run_seed, Options, SeedReport, SimError};
