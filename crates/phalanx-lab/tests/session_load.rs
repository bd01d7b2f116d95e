//! The session benchmark's load generator (`phalanx_lab::mcload`) against the real peers, cheap
//! enough for every `cargo test`: against Debian's memcached (started here on a free loopback
//! port) a preload, ~1 s of closed loop and ~1 s of open loop at a low rate must answer every
//! request, find every key, keep the 90/10 mix, and hit the open loop's rate within 20 %; and
//! the etcd gateway backend must round-trip a put and a range (hit and miss) against a 1-member
//! etcd, then run a short closed loop without errors; and the bench's own 1-node phalanx session
//! store (`bench_sessions::start_phalanx`) must come up and take a short closed loop without
//! errors. Each part skips, saying so, when its server is not installed (`tests/run` installs
//! memcached and etcd-server; `cargo test --workspace` builds the phalanx binary).

use phalanx_lab::bench_sessions::{Memcached, MEMCACHED};
use phalanx_lab::mcload::{self, Conn, Protocol, Workload};
use phalanx_lab::peer_etcd::{EtcdCluster, ETCD};
use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_drives_memcached_closed_and_open_loop_without_errors() {
    if !Path::new(MEMCACHED).is_file() {
        eprintln!("skipped: {MEMCACHED} is not installed (tests/run installs memcached)");
        return;
    }
    let m = Memcached::start(2).await.expect("memcached starts and answers");
    let mut w = Workload::new(Protocol::Memcached, vec![m.addr]);
    w.connections = 8;
    w.keys = 1000;
    mcload::preload(&w).await.expect("the preload stores every key");

    let c = mcload::closed_loop(&w, Duration::from_secs(1))
        .await
        .expect("a closed loop");
    assert!(c.ops > 1000, "the closed loop did almost nothing: {c:#?}");
    assert_eq!(c.errors, 0, "{c:#?}");
    assert!(c.get_hit_ratio > 0.999, "gets missed after the preload: {c:#?}");
    let get_share = c.get.count as f64 / c.ops as f64;
    assert!((0.85..0.95).contains(&get_share), "not a 90/10 mix: {get_share} {c:#?}");
    assert!(c.set.count > 0 && c.set.p99_us > 0 && c.get.p50_us > 0, "{c:#?}");

    let rate = 400.0;
    let o = mcload::open_loop(&w, rate, Duration::from_secs(1))
        .await
        .expect("an open loop");
    assert_eq!((o.errors, o.unsent), (0, 0), "{o:#?}");
    assert_eq!(o.target_ops_per_s, Some(rate));
    assert!(
        (o.ops_per_s - rate).abs() <= rate * 0.2,
        "the open loop missed its rate by more than 20 %: {o:#?}"
    );
    assert!(o.get_hit_ratio > 0.999, "{o:#?}");
    // Latency is from intended send times: at 400/s on an idle memcached, well under 100 ms.
    assert!(o.all.p99_us < 100_000, "{o:#?}");

    // Errors are counted, not hidden: a dead server fails every request.
    drop(m);
    let dead = mcload::closed_loop(&w, Duration::from_millis(200)).await;
    assert!(
        dead.is_err(),
        "no server, yet the closed loop opened its connections: {dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_gateway_backend_round_trips_puts_and_ranges() {
    if !Path::new(ETCD).is_file() {
        eprintln!("skipped: {ETCD} is not installed (tests/run installs etcd-server)");
        return;
    }
    let mut e = EtcdCluster::with_members(1, 100, 1000).expect("an etcd folder and ports");
    e.start_all().expect("etcd starts");
    e.wait_ready(Duration::from_secs(30)).await.expect("etcd elects itself");
    let addrs = e.client_addrs().expect("client addresses");

    let mut c = Conn::new(Protocol::EtcdGateway, addrs[0]);
    c.set(b"sess:probe", b"hello session").await.expect("a put");
    assert_eq!(c.get(b"sess:probe").await, Ok(true), "the key just put");
    assert_eq!(c.get(b"sess:absent").await, Ok(false), "a key never put");
    let mut s = Conn::new(Protocol::EtcdGateway, addrs[0]).with_serializable_reads(true);
    assert_eq!(s.get(b"sess:probe").await, Ok(true), "a serializable range");

    let mut w = Workload::new(Protocol::EtcdGateway, addrs);
    w.connections = 4;
    w.keys = 100;
    mcload::preload(&w).await.expect("the preload puts every key");
    let r = mcload::closed_loop(&w, Duration::from_millis(500))
        .await
        .expect("a closed loop");
    assert!(r.ops > 10, "{r:#?}");
    assert_eq!(r.errors, 0, "{r:#?}");
    assert!(r.get_hit_ratio > 0.999, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_starts_a_one_voter_phalanx_store_and_drives_it_without_errors() {
    let exe = match phalanx_lab::lab::phalanx_exe() {
        Ok(exe) if exe.is_file() => exe,
        _ => {
            eprintln!("skipped: no phalanx binary beside this test (cargo test --workspace builds it)");
            return;
        }
    };
    let (addrs, _cluster) = phalanx_lab::bench_sessions::start_phalanx(&exe, 1)
        .await
        .expect("a 1-node session store answering");
    let mut w = Workload::new(Protocol::Memcached, addrs);
    w.connections = 4;
    w.keys = 100;
    mcload::preload(&w).await.expect("the preload stores every key");
    let r = mcload::closed_loop(&w, Duration::from_millis(500))
        .await
        .expect("a closed loop");
    assert!(r.ops > 10, "{r:#?}");
    assert_eq!(r.errors, 0, "{r:#?}");
    assert!(r.get_hit_ratio > 0.999, "{r:#?}");
}
