//! The load balancer for real (issue 14, TCP mode): a 3-node cluster of daemon processes runs a
//! `[[balancer]]` over three tiny TCP servers of this test (each answers a line with its name).
//! Round robin spreads 300 real connections exactly evenly; a killed backend leaves rotation
//! within fall × interval and no connection fails meanwhile (connect failures are redispatched);
//! restarted, it comes back after rise × interval; and when the node running the balancer dies,
//! the balancer starts on another node and serves again.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_core::scheduler::Role;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(60);
/// The cluster tests of this file run one at a time (three daemons each, on 2 cores).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The check settings of the config below.
const INTERVAL: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 3;

/// A backend: answers the first line of each connection with its name (a health check's
/// connection, which sends nothing, gets nothing).
struct Backend {
    name: String,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Connections accepted (checks included).
    accepted: Arc<AtomicUsize>,
}

impl Backend {
    async fn start(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut b = Backend {
            name: name.into(),
            addr,
            task: None,
            accepted: Arc::default(),
        };
        b.serve(listener);
        b
    }

    fn serve(&mut self, listener: TcpListener) {
        let name = self.name.clone();
        let accepted = self.accepted.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let name = name.clone();
                tokio::spawn(async move {
                    let mut s = BufReader::new(s);
                    let mut line = String::new();
                    while s.read_line(&mut line).await.unwrap_or(0) > 0 {
                        line.clear();
                        if s.get_mut().write_all(format!("{name}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }));
    }

    /// Stop listening (connections are refused from now on).
    async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

/// One connection through the balancer: the name of the backend that answered.
async fn ask(addr: SocketAddr) -> Result<String, String> {
    let go = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"hello\n").await.map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        match line.trim() {
            "" => Err("closed without an answer".to_string()),
            name => Ok(name.to_string()),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

/// `n` connections one after another: answers per backend, and the failures.
async fn spread(addr: SocketAddr, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut failed = Vec::new();
    for _ in 0..n {
        match ask(addr).await {
            Ok(name) => *counts.entry(name).or_insert(0) += 1,
            Err(e) => failed.push(e),
        }
    }
    (counts, failed)
}

/// `phalanx balancer status --json` of the cluster: (node running it, backend → state).
fn lb_status(c: &LocalCluster) -> Option<(String, BTreeMap<String, String>)> {
    let (node, backends) = lb_backends(c)?;
    let states = backends
        .into_iter()
        .map(|(name, b)| (name, b["state"].as_str().unwrap_or("").to_string()))
        .collect();
    Some((node, states))
}

/// Poll `phalanx balancer status` until `backend` is in `state`; how long that took.
async fn wait_backend(c: &LocalCluster, backend: &str, state: &str) -> Duration {
    let began = Instant::now();
    loop {
        if lb_status(c).is_some_and(|(_, b)| b.get(backend).map(String::as_str) == Some(state)) {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < T,
            "{backend} never became {state}: {:?}",
            lb_status(c)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll until a connection through the balancer is answered.
async fn wait_serving(addr: SocketAddr) {
    let deadline = Instant::now() + T;
    loop {
        match ask(addr).await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "the balancer never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port(ip: [u8; 4]) -> u16 {
    std::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three backends of this test on 127.0.`net`.1-3 behind balancer `lb` (TCP, round robin, the
/// check settings above) with `more` config lines, in a started 3-node cluster: the backends,
/// the listen address, the cluster and the node running `lb` once every node is online.
async fn balanced(net: u8, more: &str) -> (Vec<Backend>, SocketAddr, LocalCluster, String) {
    let mut backends = Vec::new();
    for i in 1..=3u8 {
        backends.push(Backend::start(&format!("b{i}"), SocketAddr::from(([127, 0, net, i], 0))).await);
    }
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1])));
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ name = \"{}\", address = \"{}\" }}", b.name, b.addr))
        .collect();
    let extra = format!(
        r#"
[[balancer]]
id = "lb"
listen = ["{listen}"]
mode = "tcp"
algorithm = "roundrobin"
servers = [{}]
check = {{ kind = "tcp", interval = "{}ms", rise = {RISE}, fall = {FALL}, timeout = "100ms" }}
connect_timeout = "500ms"
{more}
"#,
        servers.join(", "),
        INTERVAL.as_millis()
    );
    let mut c = LocalCluster::create(Spec::loopback(3, PathBuf::from(env!("CARGO_BIN_EXE_phalanx")), extra)).unwrap();
    c.start_all().unwrap();
    let first = c
        .wait_for(T, "every node online and the balancer started", |st| {
            let s = st.values().next()?;
            let r = s.resources.iter().find(|r| r.id == "lb")?;
            let (n, role) = r.running.iter().next()?;
            let online = s
                .nodes
                .iter()
                .filter(|n| n.liveness == phalanx_core::Liveness::Online)
                .count();
            (online == 3 && s.plan_pending == 0 && r.running.len() == 1 && *role == Role::Started).then(|| n.clone())
        })
        .await
        .unwrap();
    wait_serving(listen).await;
    (backends, listen, c, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_balancer_spreads_survives_backend_failures_and_fails_over() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut backends, listen, mut c, first) = balanced(12, "").await;
    let (node, states) = lb_status(&c).expect("balancer status");
    assert_eq!(node, first);
    assert!(states.values().all(|s| s == "up"), "{states:?}");

    // Round robin: exactly even.
    let (counts, failed) = spread(listen, 300).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        counts,
        BTreeMap::from([("b1".into(), 100), ("b2".into(), 100), ("b3".into(), 100)]),
        "round robin spreads 300 connections evenly"
    );

    // A backend dies: no connection fails (a connect failure is redispatched; a few, fewer than
    // the passive error limit), and the active checks take it out of rotation within
    // fall × interval (+ one interval of phase, + the status poll).
    backends[1].kill().await;
    let (counts, failed) = spread(listen, 9).await;
    assert!(failed.is_empty(), "connections failed while b2 was dying: {failed:?}");
    assert_eq!(counts.values().sum::<usize>(), 9);
    assert!(!counts.contains_key("b2"), "{counts:?}");
    let out_after = wait_backend(&c, "b2", "down").await;
    let bound = INTERVAL * (FALL + 1) + Duration::from_millis(800);
    assert!(
        out_after <= bound,
        "b2 left rotation after {out_after:?} (bound {bound:?})"
    );
    eprintln!("b2 out of rotation {out_after:?} after it died (bound {bound:?})");
    let (counts, failed) = spread(listen, 30).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(counts, BTreeMap::from([("b1".into(), 15), ("b3".into(), 15)]));

    // It comes back after rise × interval.
    backends[1].restart().await;
    let in_after = wait_backend(&c, "b2", "up").await;
    let bound = INTERVAL * (RISE + 1) + Duration::from_millis(800);
    assert!(in_after <= bound, "b2 came back after {in_after:?} (bound {bound:?})");
    eprintln!("b2 back in rotation {in_after:?} after it restarted (bound {bound:?})");
    let (counts, failed) = spread(listen, 30).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        counts,
        BTreeMap::from([("b1".into(), 10), ("b2".into(), 10), ("b3".into(), 10)])
    );
    // Both changes are in the event history.
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, out, _) = c.cli(&["events", "--kind", "backend_changed"]).unwrap();
        if out.contains("backend b2 up -> down") && out.contains("backend b2 down -> up") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "backend events: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The node running the balancer dies: it starts on another node, on the same address.
    c.kill(&first).unwrap();
    let second = c
        .wait_for(T, "the balancer to start elsewhere", |st| {
            let s = st.values().next()?;
            let r = s.resources.iter().find(|r| r.id == "lb")?;
            let (n, role) = r.running.iter().next()?;
            (n != &first && *role == Role::Started && st.len() == 2).then(|| n.clone())
        })
        .await
        .unwrap();
    wait_serving(listen).await;
    let (counts, failed) = spread(listen, 30).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(counts.values().sum::<usize>(), 30);
    assert_eq!(counts.len(), 3, "every backend serves again: {counts:?}");
    let (node, _) = lb_status(&c).expect("balancer status after the failover");
    assert_eq!(node, second);
    let api = &c.node(&second).unwrap().api;
    let m = c.client.metrics(api).await.unwrap();
    for series in [
        "phalanx_balancer_backend_up{balancer=\"lb\",backend=\"b2\"} 1",
        "phalanx_balancer_connections_total{balancer=\"lb\",backend=\"b1\"}",
        "phalanx_balancer_in_flight{balancer=\"lb\",backend=\"b3\"} 0",
    ] {
        assert!(m.contains(series), "{series} not in the metrics:\n{m}");
    }
    let (code, human, err) = c.cli(&["balancer", "status"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        human.contains(&format!("lb on {second}: tcp listening on {listen}, roundrobin")),
        "{human}"
    );
    for b in ["b1", "b2", "b3"] {
        assert!(human.contains(b), "{human}");
    }
    eprintln!("{human}");
}

/// `n` HTTP requests through the balancer to the demo services behind it: answers per node.
async fn spread_http(addr: SocketAddr, n: usize) -> (BTreeMap<String, usize>, usize) {
    let mut counts = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match phalanx::service::probe(&addr.to_string(), Duration::from_secs(5)).await {
            Some(who) => *counts.entry(who).or_insert(0) += 1,
            None => failed += 1,
        }
    }
    (counts, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_instances_of_a_clone_are_the_backends() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A clone of phalanx's demo service (answering with its node's name on 127.0.11.<node
    // number>), balanced by discovery: `backends` + `port` + `addresses`.
    let port = free_port([127, 0, 11, 1]);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1])));
    let exe = env!("CARGO_BIN_EXE_phalanx");
    let extra = format!(
        r#"
[[resource]]
id = "web"
agent = "process"
params = {{ command = "{exe} demo-service --listen 127.0.11.${{OCF_RESKEY_CRM_meta_on_node#n}}:{port} --name ${{OCF_RESKEY_CRM_meta_on_node}}" }}
monitor = {{ interval = "1s", timeout = "10s" }}

[[clone]]
id = "webs"
resource = "web"

[[balancer]]
id = "lb"
listen = ["{listen}"]
algorithm = "roundrobin"
backends = "webs"
port = {port}
addresses = {{ n1 = "127.0.11.1", n2 = "127.0.11.2", n3 = "127.0.11.3" }}
check = {{ interval = "200ms", rise = 2, fall = 3, timeout = "100ms" }}
"#
    );
    let mut c = LocalCluster::create(Spec {
        nodes: 3,
        heartbeat: Duration::from_millis(100),
        links: 1,
        exe: PathBuf::from(exe),
        keep: std::env::var_os("PHALANX_KEEP").is_some(),
        extra_config: extra,
        cluster_extra: String::new(),
    })
    .unwrap();
    c.start_all().unwrap();
    c.wait_for(T, "the clone on 3 nodes and the balancer", |st| {
        let s = st.values().next()?;
        let web = s.resources.iter().find(|r| r.id == "web")?;
        let lb = s.resources.iter().find(|r| r.id == "lb")?;
        (s.plan_pending == 0 && web.running.len() == 3 && lb.running.len() == 1).then_some(())
    })
    .await
    .unwrap();
    let backends_up =
        |c: &LocalCluster, n: usize| lb_status(c).filter(|(_, b)| b.len() == n && b.values().all(|s| s == "up"));
    let deadline = Instant::now() + T;
    let (lb_node, backends) = loop {
        if let Some(found) = backends_up(&c, 3) {
            break found;
        }
        assert!(Instant::now() < deadline, "3 discovered backends: {:?}", lb_status(&c));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        backends.keys().collect::<Vec<_>>(),
        ["web@n1", "web@n2", "web@n3"],
        "named RESOURCE@NODE"
    );
    let (counts, failed) = spread_http(listen, 30).await;
    assert_eq!(failed, 0);
    assert_eq!(
        counts,
        BTreeMap::from([("n1".into(), 10), ("n2".into(), 10), ("n3".into(), 10)])
    );

    // A node running an instance (not the balancer) dies: no request fails, and its instance
    // leaves the backends once the cluster records it gone.
    let victim = ["n1", "n2", "n3"].into_iter().find(|n| *n != lb_node).unwrap();
    c.kill(victim).unwrap();
    let traffic = tokio::spawn(async move { spread_http(listen, 30).await });
    let deadline = Instant::now() + T;
    let (_, backends) = loop {
        if let Some(found) = backends_up(&c, 2) {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the lost instance leaves: {:?}",
            lb_status(&c)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!backends.contains_key(&format!("web@{victim}")), "{backends:?}");
    let (counts, failed) = traffic.await.unwrap();
    assert_eq!(failed, 0, "requests failed while {victim} was dying");
    assert!(!counts.contains_key(victim), "{counts:?}");
    let (counts, failed) = spread_http(listen, 20).await;
    assert_eq!(failed, 0);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10], "{counts:?}");
}

/// `phalanx balancer status lb --json`'s backends, by name (the whole JSON of each).
fn lb_backends(c: &LocalCluster) -> Option<(String, BTreeMap<String, serde_json::Value>)> {
    let (code, out, _) = c.cli(&["balancer", "status", "lb", "--json"]).ok()?;
    if code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let b = v.get(0)?;
    let node = b["node"].as_str()?.to_string();
    let backends = b["status"]["backends"]
        .as_array()?
        .iter()
        .map(|be| (be["name"].as_str().unwrap_or("").to_string(), be.clone()))
        .collect();
    Some((node, backends))
}

/// Health is cluster state (issue 14, item 3) and drains are held in it (item 4): one node
/// checks each backend (not three), a balancer that starts after a failover knows a dead backend
/// at once and never tries it, and an operator's drain holds across the failover, `--wait`
/// returning when the last connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_drains_are_cluster_state_and_a_new_balancer_is_not_blind() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut backends, listen, mut c, _) = balanced(13, "").await;
    // Every backend gets a committed verdict, by the node that checks it.
    let deadline = Instant::now() + T;
    let (first, view) = loop {
        if let Some((n, v)) = lb_backends(&c) {
            if v.len() == 3
                && v.values()
                    .all(|b| b["last_check_by"].is_string() && b["checker"].is_string())
            {
                break (n, v);
            }
        }
        assert!(Instant::now() < deadline, "no verdicts: {:?}", lb_backends(&c));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "checkers: {:?}",
        view.iter().map(|(n, b)| (n, b["checker"].clone())).collect::<Vec<_>>()
    );

    // One node checks each backend: over a quiet window the backends see about window /
    // interval connections each, not three times that (three nodes each checking everything).
    let counts: Vec<usize> = backends.iter().map(|b| b.accepted.load(Ordering::SeqCst)).collect();
    let window = Duration::from_secs(3);
    let began = Instant::now();
    while began.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let per_node = window.as_millis() as usize / INTERVAL.as_millis() as usize;
    for (b, before) in backends.iter().zip(counts) {
        let checks = b.accepted.load(Ordering::SeqCst) - before;
        eprintln!(
            "{}: {checks} check connections in {window:?} (one checker: ≈ {per_node})",
            b.name
        );
        assert!(
            (per_node / 3..=per_node * 3 / 2).contains(&checks),
            "{}: {checks} check connections in {window:?}: one checker makes ≈ {per_node}",
            b.name
        );
    }

    // b2 dies: the cluster's verdict says down, with who checked it.
    backends[1].kill().await;
    wait_backend(&c, "b2", "down").await;
    let (_, v) = lb_backends(&c).unwrap();
    assert!(
        v["b2"]["last_check"].as_str().unwrap_or("").contains("connect"),
        "{:?}",
        v["b2"]
    );

    // An operator drains b1; a connection held on b1 keeps it busy; --wait waits for it.
    let mut held = Vec::new();
    while held.len() < 2 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(b"hello\n").await.unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line.trim() == "b1" {
            held.push(r);
        }
    }
    let (code, out, err) = c.cli(&["balancer", "drain", "b9"]).unwrap();
    assert_ne!(code, 0, "a typo'd backend is refused: {out}");
    assert!(err.contains("no backend \"b9\"") && err.contains("lb/b1"), "{err}");
    let drain = {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"));
        cmd.arg("--config").arg(&c.config_path).args([
            "balancer",
            "drain",
            "b1",
            "--wait",
            "--timeout",
            "60s",
            "--json",
        ]);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    wait_backend(&c, "b1", "drain").await;
    let (counts, failed) = spread(listen, 10).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        counts,
        BTreeMap::from([("b3".into(), 10)]),
        "a draining backend takes no new client"
    );
    assert!(!drain.is_finished(), "--wait returned with connections still open");
    drop(held);
    let out = tokio::time::timeout(T, drain).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["admin"], "drain");
    assert!(v["waited_s"].as_f64().is_some(), "{v}");

    // The node running the balancer dies. The balancer that starts elsewhere knows at once that
    // b2 is down (it never tries it) and that b1 is drained.
    c.kill(&first).unwrap();
    let deadline = Instant::now() + T;
    let view = loop {
        match lb_backends(&c) {
            Some((n, v)) if n != first && v.len() == 3 => break v,
            _ => assert!(Instant::now() < deadline, "the balancer never ran elsewhere"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view["b2"]["state"], "down", "no blind period: {:?}", view["b2"]);
    assert_eq!(
        view["b1"]["state"], "drain",
        "the drain survives the failover: {:?}",
        view["b1"]
    );
    wait_serving(listen).await;
    let (counts, failed) = spread(listen, 10).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(counts, BTreeMap::from([("b3".into(), 10)]));
    let (_, view) = lb_backends(&c).unwrap();
    assert_eq!(
        view["b2"]["errors_total"], 0,
        "the new balancer never tried the dead backend"
    );

    // Ready and a weight: both committed, both in the event history with who asked.
    let (code, _, err) = c
        .cli(&["balancer", "ready", "b1", "--wait", "--timeout", "30s"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = c.cli(&["balancer", "weight", "b1", "300"]).unwrap();
    assert_ne!(code, 0, "weight 300 is refused");
    assert!(err.contains("0..=256"), "{err}");
    let (code, _, err) = c.cli(&["balancer", "weight", "b1", "3"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + T;
    loop {
        if lb_backends(&c).is_some_and(|(_, v)| v["b1"]["weight"] == 3 && v["b1"]["state"] == "up") {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", lb_backends(&c));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, out, _) = c
        .cli(&["events", "--kind", "operator_command,backend_changed"])
        .unwrap();
    for want in [
        "drain lb/b1",
        "ready lb/b1",
        "weight 3 lb/b1",
        "backend b1 up -> drain",
        "backend b2 up -> down",
    ] {
        assert!(out.contains(want), "{want:?} not in the events:\n{out}");
    }
}

/// One connection through the balancer from source address `from`: who answered.
async fn ask_from(from: std::net::IpAddr, addr: SocketAddr) -> Result<String, String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind {from}: {e}"))?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), sock.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"hello\n").await.map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), BufReader::new(s).read_line(&mut line))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    Ok(line.trim().to_string())
}

/// Source affinity is cluster state (issue 14, item 6): twelve clients (source addresses) are
/// spread and stuck; their table is committed; the node running the balancer is killed, and
/// through the balancer that starts elsewhere every client lands on the backend it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_keep_their_backends_across_a_balancer_failover() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_backends, listen, mut c, first) = balanced(14, "sticky = { source = true, max_idle = \"10m\" }").await;
    let clients: Vec<std::net::IpAddr> = (1..=12u8).map(|i| std::net::IpAddr::from([127, 0, 21, i])).collect();
    let mut stuck = BTreeMap::new();
    for from in &clients {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(ask_from(*from, listen).await.unwrap());
        }
        assert!(
            seen.iter().all(|s| *s == seen[0]),
            "{from} moved between backends: {seen:?}"
        );
        stuck.insert(*from, seen[0].clone());
    }
    let used: std::collections::BTreeSet<&String> = stuck.values().collect();
    assert_eq!(used.len(), 3, "new clients are balanced: {stuck:?}");

    // The table reaches the cluster state (committed in batches).
    let api = c.node(&first).unwrap().api.clone();
    let deadline = Instant::now() + T;
    loop {
        let st: serde_json::Value = c.client.get(&api, "/v1/state").await.unwrap();
        let table = &st["sticks"]["lb"];
        let missing: Vec<_> = clients.iter().filter(|a| table[a.to_string()].is_null()).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not in the replicated table: {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    c.kill(&first).unwrap();
    c.wait_for(T, "the balancer to start elsewhere", |st| {
        let s = st.values().next()?;
        let r = s.resources.iter().find(|r| r.id == "lb")?;
        let (n, role) = r.running.iter().next()?;
        (n != &first && *role == Role::Started && st.len() == 2).then_some(())
    })
    .await
    .unwrap();
    wait_serving(listen).await;
    // In reverse order: a balancer without the table would give them other backends.
    for from in clients.iter().rev() {
        let now = ask_from(*from, listen).await.unwrap();
        assert_eq!(now, stuck[from], "{from} changed backends across the balancer failover");
    }
    let (_, human, _) = c.cli(&["balancer", "status"]).unwrap();
    // The twelve, and the address the test's own probes come from.
    assert!(human.contains("source affinity (13 clients, "), "{human}");
}
