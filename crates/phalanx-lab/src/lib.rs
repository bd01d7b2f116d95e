//! phalanx's test rig, never shipped in the product (`publish = false`; the `phalanx` binary
//! does not depend on it): the network-namespace lab and its fault primitives, the nemesis and
//! its safety checkers, the seeded in-process simulation's runner (`sim`), the benchmarks (leader
//! failover beside etcd, VIP failover beside keepalived, the load balancer beside HAProxy with its
//! HTTP backend and open-loop generator (`httpload`), the scheduler beside crm_simulate, the
//! cost of a state write as the state grows, the session store beside memcached and etcd with its
//! memcached/etcd load generator (`mcload`)), the peers' drivers, the lab demo, and the session
//! store's linearizability check (`mcclient`, `session_check`, `linearizability`, with its
//! nemesis in the lab: `session_nemesis`). It runs the real `phalanx` binary (see
//! [`lab::phalanx_exe`]) through the product's loopback harness.

pub mod bench;
pub mod bench_lb;
pub mod bench_pg;
pub mod bench_sched;
pub mod bench_sessions;
pub mod bench_state;
pub mod demo_lab;
pub mod drill_compare;
pub mod httpload;
pub mod lab;
pub mod lab_bench;
pub mod linearizability;
pub mod mcclient;
pub mod mcload;
pub mod nemesis;
pub mod peer_etcd;
pub mod pg_lab;
pub mod saturate;
pub mod session_check;
pub mod session_nemesis;
pub mod sim;

/// A benchmark's progress bar over `len` steps counting `what` ("kills", or "" for plain
/// steps); hidden when the output is JSON.
pub fn progress(hidden: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let what = if what.is_empty() {
        String::new()
    } else {
        format!("{what} ")
    };
    let template = format!("{{bar:30}} {{pos}}/{{len}} {what}{{msg}} [{{elapsed}}]");
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    )
}
