//! The session store for real (issue 15): three daemon processes with `[sessions]`, clients on
//! their memcached ports. A write through any node is read back through every other (reads on
//! a follower go through the leader's read index); after kill -9 of the store's leader, a
//! client of a survivor goes on writing, and every acknowledged write is there afterwards.

use phalanx::harness::{LocalCluster, Spec};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_phalanx"))
}

/// A blocking memcached text-protocol client, enough for the test.
struct Mc {
    r: BufReader<TcpStream>,
}

impl Mc {
    fn connect(addr: SocketAddr) -> std::io::Result<Mc> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Mc { r: BufReader::new(s) })
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l.trim_end().to_string())
    }

    fn call(&mut self, req: &str) -> std::io::Result<String> {
        self.r.get_mut().write_all(req.as_bytes())?;
        self.line()
    }

    fn set(&mut self, key: &str, value: &str) -> std::io::Result<String> {
        self.call(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()))
    }

    fn get(&mut self, key: &str) -> std::io::Result<Option<String>> {
        let first = self.call(&format!("get {key}\r\n"))?;
        if first == "END" {
            return Ok(None);
        }
        let n: usize = first
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("unexpected {first:?}")))?;
        let mut v = vec![0; n + 2];
        self.r.read_exact(&mut v)?;
        let end = self.line()?;
        assert_eq!(end, "END");
        v.truncate(n);
        Ok(Some(String::from_utf8_lossy(&v).into_owned()))
    }
}

/// Poll `f` until it gives Some, with a deadline.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + T;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn sessions_status(c: &LocalCluster, node: &str) -> Option<serde_json::Value> {
    let api = c.node(node).ok()?.api.clone();
    let (code, out, _) = c.cli(&["--api", &api, "sessions", "status", "--json"]).ok()?;
    (code == 0).then(|| serde_json::from_str(&out).ok())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_everywhere_and_survive_the_leader() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, ports) = cluster().await;
    let mut clients: BTreeMap<String, Mc> = BTreeMap::new();
    for (n, a) in &ports {
        clients.insert(n.clone(), Mc::connect(*a).unwrap());
    }
    // A write through each node, read back through every node.
    for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
        let mc = clients.get_mut(*n).unwrap();
        let r = eventually("a first write", || {
            mc.set(&format!("k{i}"), &format!("v{i}"))
                .ok()
                .filter(|r| r == "STORED")
        });
        assert_eq!(r, "STORED");
        for m in ["n1", "n2", "n3"] {
            let got = clients.get_mut(m).unwrap().get(&format!("k{i}")).unwrap();
            assert_eq!(
                got.as_deref(),
                Some(format!("v{i}").as_str()),
                "k{i} written via {n}, read via {m}"
            );
        }
    }
    // The store's leader, killed while a client of another node writes.
    let leader = eventually("the store's leader", || {
        futures_block(sessions_status(&c, "n1")).and_then(|s| s["leader"].as_str().map(String::from))
    });
    let survivor = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap()
        .to_string();
    let addr = ports[&survivor];
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut errors = 0;
        let mut mc = Mc::connect(addr).unwrap();
        let until = Instant::now() + Duration::from_secs(6);
        let mut i = 0;
        while Instant::now() < until {
            i += 1;
            match mc.set(&format!("w{i}"), &format!("x{i}")) {
                Ok(r) if r == "STORED" => acked.push(i),
                Ok(r) => {
                    assert!(
                        r.starts_with("SERVER_ERROR"),
                        "never anything but STORED or SERVER_ERROR: {r}"
                    );
                    errors += 1;
                }
                Err(_) => {
                    errors += 1;
                    mc = eventually("a reconnection", || Mc::connect(addr).ok());
                }
            }
        }
        (acked, errors)
    });
    std::thread::sleep(Duration::from_secs(2));
    c.kill(&leader).unwrap();
    let (acked, errors) = writer.join().unwrap();
    eprintln!(
        "{} writes acknowledged, {errors} errors across the kill of {leader}",
        acked.len()
    );
    assert!(
        acked.len() > 20,
        "writes went on: {} acked, {errors} errors",
        acked.len()
    );
    let mut mc = Mc::connect(addr).unwrap();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|i| mc.get(&format!("w{i}")).unwrap().as_deref() != Some(format!("x{i}").as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes lost after the leader's kill: {lost:?}"
    );
    // The killed node comes back with what it had and catches up.
    c.start(&leader).unwrap();
    let last = *acked.last().unwrap();
    let back = ports[&leader];
    let got = eventually("the restarted node to answer", || {
        Mc::connect(back).ok().and_then(|mut m| m.get(&format!("w{last}")).ok())
    });
    assert_eq!(got, Some(format!("x{last}")));
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// A 3-node cluster with `[sessions]` on per-node loopback ports.
async fn cluster() -> (LocalCluster, BTreeMap<String, SocketAddr>) {
    let ports: BTreeMap<String, SocketAddr> = (1..=3)
        .map(|i| (format!("n{i}"), SocketAddr::from(([127, 0, 0, 1], free_port()))))
        .collect();
    let listen: Vec<String> = ports.iter().map(|(n, a)| format!("{n} = \"{a}\"")).collect();
    let extra = format!("\n[sessions]\nlisten = {{ {} }}\n", listen.join(", "));
    let mut c = LocalCluster::create(Spec::loopback(3, exe(), extra)).unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    for a in ports.values() {
        eventually("the store's listener", || {
            Mc::connect(*a)
                .ok()
                .and_then(|mut m| m.set("hello", "1").ok())
                .filter(|r| r == "STORED")
        });
    }
    (c, ports)
}

/// pymemcache, the client Python web apps use, and PHP's session-lock sequence: two clients on
/// two nodes race for `add lock.<sid>` round after round while the store's leader is killed;
/// never do both win, and every acknowledged session is read back through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymemcache_and_php_session_locks_across_a_leader_kill() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, ports) = cluster().await;
    let leader = eventually("the store's leader", || {
        futures_block(sessions_status(&c, "n1")).and_then(|s| s["leader"].as_str().map(String::from))
    });
    let others: Vec<String> = ports
        .iter()
        .filter(|(n, _)| **n != leader)
        .map(|(_, a)| a.to_string())
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/sessions/pymemcache_check.py");
    let child = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .args(&others)
        .args(["--seconds", "6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with pymemcache (tests/run installs python3-pymemcache)");
    std::thread::sleep(Duration::from_secs(2));
    c.kill(&leader).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("pymemcache: {stdout}");
    assert!(
        out.status.success(),
        "pymemcache check failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["both_won"], 0);
    assert!(v["won"].as_u64().unwrap() > 10, "{v}");
}
