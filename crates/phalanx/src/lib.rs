//! The phalanx binary's library half: the API client, the local-cluster harness shared by the
//! demo, the benchmark and the process tests, and the commands that are more than a call.

pub mod bench;
pub mod bench_sched;
pub mod client;
pub mod daemon;
pub mod demo;
pub mod harness;
pub mod lab;
pub mod lab_bench;
pub mod nemesis;
pub mod peer_etcd;
pub mod power_switch;
pub mod render;
pub mod service;
pub mod simulate;
