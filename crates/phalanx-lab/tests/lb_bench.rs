//! The load balancer benchmark's quick run as a lab test (network namespaces, root;
//! `PHALANX_NO_LAB=1` skips it, saying so; so does a machine without haproxy or wrk, which
//! `tests/run` installs). `phalanx-lab bench lb --quick` in HTTP mode, asserting only facts
//! that do not depend on timing or on the machine's speed: both proxies served every run, both
//! took the crashed backend out of rotation, no GET failed through phalanx when a backend was
//! killed under load (retries on connect failures and empty answers, the last one to another
//! backend), and no node was declared dead while the proxy was saturated. Never throughput or
//! latency.

use phalanx_lab::bench_lb::{self, Args, Mode};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lb_bench_quick_run_serves_survives_a_backend_crash_and_suspects_no_node() {
    if std::env::var_os("PHALANX_NO_LAB").is_some() {
        eprintln!("lab test skipped: PHALANX_NO_LAB is set");
        return;
    }
    if !Path::new(bench_lb::HAPROXY).is_file() || !Path::new(bench_lb::WRK).is_file() {
        eprintln!("lb bench test skipped: haproxy or wrk is not installed (tests/run installs them)");
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (proxy, client) = if cpus == 1 {
        ("0".to_string(), "0".to_string())
    } else {
        ((cpus - 1).to_string(), format!("0-{}", cpus - 2))
    };
    let connections = 16;
    let r = bench_lb::run(Args {
        mode: Mode::Http,
        // 1 s runs (the crash run 2 s): ≈ 40 s in a debug build.
        phase: Duration::from_secs(1),
        rounds: 1,
        connections,
        threads: 1,
        proxy_cpus: proxy,
        client_cpus: client,
        exe: phalanx_lab::lab::phalanx_exe().expect("the phalanx binary"),
        lab_exe: PathBuf::from(env!("CARGO_BIN_EXE_phalanx-lab")),
        json: true,
    })
    .await
    .expect("the lb bench's quick run");
    for (name, p) in [("haproxy", &r.haproxy), ("phalanx", &r.phalanx)] {
        for (run, x) in [("max", &p.max), ("50 %", &p.load_50), ("90 %", &p.load_90)] {
            assert!(x.rps > 0.0, "{name} served nothing in its {run} run: {r:#?}");
        }
    }
    let c = &r.backend_crash;
    assert!(
        c.haproxy_out_of_rotation_ms.is_some(),
        "haproxy never took the crashed backend out: {r:#?}"
    );
    assert!(
        c.phalanx_out_of_rotation_ms.is_some(),
        "phalanx never took the crashed backend out: {r:#?}"
    );
    assert_eq!(
        c.phalanx_failed, 0,
        "GETs failed through phalanx on a backend crash: {r:#?}"
    );
    assert_eq!(
        r.false_suspicions, 0,
        "a node was declared dead during the saturating run: {r:#?}"
    );
}
