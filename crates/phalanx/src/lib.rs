//! The phalanx binary's library half: the API client, the local-cluster harness shared by the
//! demo, the process tests and the test rig (`phalanx-lab`), and the commands that are more than a call.

pub mod availability_cmd;
pub mod backup;
pub mod balancer_cmd;
pub mod cert_cmd;
pub mod client;
pub mod config_cmd;
pub mod daemon;
pub mod demo;
pub mod drill_cmd;
pub mod events_cmd;
pub mod harness;
pub mod linkcheck_cmd;
pub mod netns;
pub mod pcmk_shim;
pub mod pg_cmd;
pub mod pg_writer;
pub mod playground;
pub mod power_switch;
pub mod render;
pub mod rotate_cmd;
pub mod service;
pub mod session_writer;
pub mod sessions_cmd;
pub mod simulate;
pub mod token_cmd;
