//! Running under systemd, without systemd (none on the test machines): the test binds the Unix
//! datagram socket systemd would pass as `NOTIFY_SOCKET`, starts a real daemon with it (and
//! `WATCHDOG_USEC`), and reads what the daemon tells it: no `READY=1` while the node is alone
//! (no quorum to join), `READY=1` once it has joined, `WATCHDOG=1` again and again, and
//! `STOPPING=1` when SIGTERM (what `systemctl stop` sends) starts its clean leave.

use phalanx::harness::{LocalCluster, Spec};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::UnixDatagram;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(60);

/// Receive notifications until one satisfies `done` or `within` passes; every message seen,
/// with when it arrived.
async fn recv_until(
    sock: &UnixDatagram,
    within: Duration,
    seen: &mut Vec<(Instant, String)>,
    done: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => return Err(format!("nothing matching within {within:?}; got {seen:?}")),
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push((Instant::now(), msg.clone()));
        if done(&msg) {
            return Ok(());
        }
    }
}

fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_joined_then_the_watchdog_then_stopping_on_sigterm() {
    let mut c = LocalCluster::create(Spec {
        nodes: 3,
        heartbeat: Duration::from_millis(100),
        links: 2,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        keep: std::env::var_os("PHALANX_KEEP").is_some(),
        extra_config: String::new(),
        cluster_extra: String::new(),
    })
    .unwrap();
    let path = c.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    c.set_env("n1", "NOTIFY_SOCKET", path.to_str().unwrap()).unwrap();
    c.set_env("n1", "WATCHDOG_USEC", "1000000").unwrap();
    c.start("n1").unwrap();
    let mut seen = Vec::new();
    // Alone it cannot join (no quorum): it says so, and feeds the watchdog meanwhile.
    recv_until(&sock, T, &mut seen, |m| m.contains("STATUS=joining cluster demo"))
        .await
        .unwrap();
    recv_until(&sock, T, &mut seen, |m| has(m, "WATCHDOG=1")).await.unwrap();
    assert!(
        !seen.iter().any(|(_, m)| has(m, "READY=1")),
        "READY before joining: {seen:?}"
    );
    c.start("n2").unwrap();
    c.start("n3").unwrap();
    recv_until(&sock, T, &mut seen, |m| has(m, "READY=1")).await.unwrap();
    let ready = seen.last().unwrap().1.clone();
    assert!(ready.contains("STATUS=member of cluster demo, leader n"), "{ready}");
    // Joined means joined: its own status shows a leader, and itself online.
    let st = c.status("n1").await.unwrap();
    assert!(st.leader.is_some() && st.quorum, "{st:?}");
    let me = st.nodes.iter().find(|n| n.is_self).unwrap();
    assert_eq!(me.liveness, phalanx_core::Liveness::Online);
    // WATCHDOG=1 every half WATCHDOG_USEC (500 ms): three more within 3 s.
    let from = seen.len();
    let t0 = Instant::now();
    for _ in 0..3 {
        recv_until(&sock, Duration::from_secs(3), &mut seen, |m| has(m, "WATCHDOG=1"))
            .await
            .unwrap();
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", &seen[from..]);
    assert!(!seen[from..].iter().any(|(_, m)| has(m, "READY=1")), "READY twice");
    // SIGTERM: STOPPING=1, then a clean exit.
    let status = c.terminate("n1", T).await.unwrap();
    assert!(status.success(), "n1 exited with {status}");
    recv_until(&sock, Duration::from_secs(5), &mut seen, |m| has(m, "STOPPING=1"))
        .await
        .unwrap();
    let stopping: Vec<&String> = seen.iter().map(|(_, m)| m).filter(|m| has(m, "STOPPING=1")).collect();
    assert_eq!(stopping.len(), 1, "{seen:?}");
    assert!(stopping[0].contains("STATUS=leaving the cluster"), "{}", stopping[0]);
}

/// Without `NOTIFY_SOCKET` (not under systemd) nothing is sent and the daemon runs as before;
/// with a `NOTIFY_SOCKET` nobody listens on, it logs the failure and keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_notify_socket_does_not_stop_the_daemon() {
    let mut c = LocalCluster::create(Spec::loopback(
        1,
        PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        String::new(),
    ))
    .unwrap();
    let path = c.dir().join("nobody.sock");
    c.set_env("n1", "NOTIFY_SOCKET", path.to_str().unwrap()).unwrap();
    c.start("n1").unwrap();
    c.wait_stable(T).await.unwrap();
    let log = c.log_path("n1");
    let deadline = Instant::now() + T;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("telling systemd")
    {
        assert!(Instant::now() < deadline, "no failure logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.wait_stable(T).await.unwrap();
}
