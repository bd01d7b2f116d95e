//! `[sessions] allow` (issue 17: the memcached port serves only the clients it names), on 3
//! real daemons: a client whose source address is in the list is answered; one from another
//! address is disconnected before it is read, counted (`refused_connections` in `phalanx
//! sessions status --json`, `phalanx_sessions_refused_connections_total`); a config change of
//! the list takes effect without a restart; a bad entry is an error at its line and column.

use phalanx::harness::{LocalCluster, Spec};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// `version` from source address `from` to `to`: the answer line, or None when the server
/// closed the connection.
fn version_from(from: [u8; 4], to: SocketAddr) -> Option<String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    sock.bind(&SocketAddr::from((from, 0)).into()).ok()?;
    sock.connect_timeout(&to.into(), Duration::from_secs(2)).ok()?;
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"version\r\n").ok()?;
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_allowed_clients_reach_the_session_store() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let (section, addrs) = phalanx::demo::sessions_section(3).unwrap();
    let section = format!("{}allow = [\"127.0.21.0/24\", \"::1\"]\n", section);
    let mut c = LocalCluster::create(Spec::loopback(3, exe, section.clone())).unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let deadline = Instant::now() + T;
    while version_from([127, 0, 21, 5], addrs[0]).is_none_or(|v| !v.starts_with("VERSION ")) {
        assert!(Instant::now() < deadline, "an allowed client was never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        version_from([127, 0, 22, 5], addrs[0]),
        None,
        "a client not allowed was answered"
    );
    let (code, out, err) = c.cli(&["--json", "sessions", "status"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"refused_connections\": 1"), "{out}");

    // Widened by a config apply: served at once, no restart.
    let config = std::fs::read_to_string(c.dir().join("cluster.toml")).unwrap();
    let wider = c.dir().join("wider.toml");
    std::fs::write(
        &wider,
        config.replace("\"127.0.21.0/24\"", "\"127.0.21.0/24\", \"127.0.22.5\""),
    )
    .unwrap();
    let (code, out, err) = c.cli(&["config", "apply", wider.to_str().unwrap(), "--yes"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let deadline = Instant::now() + T;
    while version_from([127, 0, 22, 5], addrs[1]).is_none() {
        assert!(Instant::now() < deadline, "the widened list never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A bad entry: an error at its place, nothing applied.
    let bad = c.dir().join("bad.toml");
    std::fs::write(&bad, config.replace("\"127.0.21.0/24\"", "\"127.0.21.0/33\"")).unwrap();
    let (code, out, err) = c.cli(&["config", "apply", bad.to_str().unwrap(), "--yes"]).unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("sessions allow: \"127.0.21.0/33\" is not an address or a network"),
        "{out}{err}"
    );
    c.stop_all();
}
