//! The load balancer in HTTP mode for real (issue 14, item 5): a one-node cluster of a daemon
//! process runs five `[[balancer]]`s in `mode = "http"` over tiny HTTP backends of this test
//! (hyper servers that answer with their name, echo the headers they got, sleep on demand,
//! answer 500 on /health when sick, and switch to an echo protocol on an Upgrade), plus one
//! that accepts and never answers. Each step checks one promise with exact counts: round robin
//! over keep-alive requests, the forwarded and hop-by-hop headers, an upgrade's 101 and echo,
//! 408 / 431 / 400 on bad clients, 504 on a silent backend, max_conn with its queue and 503 +
//! Retry-After, the sticky cookie, an HTTP check taking a sick backend out, no failed GET while
//! a backend dies under load, and the metrics.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use phalanx::harness::{LocalCluster, Spec};
use phalanx_core::lb::{BackendId, StickyCookie};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(60);
/// `request_timeout` of the balancers below.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// `server_timeout` of the balancer over the silent backend.
const SERVER_TIMEOUT: Duration = Duration::from_millis(500);
/// `queue_timeout` of the balancer with `max_conn = 1`.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// A test backend (see the file's doc).
struct Backend {
    name: String,
    addr: SocketAddr,
    sick: Arc<AtomicBool>,
    kill: watch::Sender<bool>,
}

impl Backend {
    async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sick = Arc::new(AtomicBool::new(false));
        let (kill, killed) = watch::channel(false);
        let b = Backend {
            name: name.into(),
            addr,
            sick: sick.clone(),
            kill,
        };
        let name = name.to_string();
        tokio::spawn(async move {
            let mut stop = killed.clone();
            loop {
                let (s, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = stop.wait_for(|k| *k) => return,
                };
                let (name, sick, mut stop) = (name.clone(), sick.clone(), killed.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (name, sick) = (name.clone(), sick.clone());
                        async move { Ok::<_, Infallible>(answer(&name, &sick, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        b
    }

    /// Stop listening and drop every open connection (as a crashed process would).
    fn kill(&self) {
        let _ = self.kill.send(true);
    }
}

async fn answer(name: &str, sick: &AtomicBool, mut req: Request<Incoming>) -> Response<String> {
    let path = req.uri().path().to_string();
    if req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(String::new())
            .unwrap();
    }
    if path == "/health" {
        let status = if sick.load(Ordering::Relaxed) { 500 } else { 200 };
        return Response::builder().status(status).body(String::new()).unwrap();
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if path == "/echo" {
        let mut out = format!("{name}\n");
        for (k, v) in req.headers() {
            out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        return Response::builder()
            .header("keep-alive", "timeout=60")
            .header("x-from", name)
            .body(out)
            .unwrap();
    }
    Response::new(format!("{name}\n"))
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    // Idle connections are dropped well before the balancer's request_timeout closes them.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_millis(300))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build_http()
}

/// GET `path` through `lb`: the status, the headers and the body (or why it failed).
async fn get(
    c: &HttpClient,
    lb: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, hyper::HeaderMap, String), String> {
    let mut req = Request::get(format!("http://{lb}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let go = async {
        let resp = c.request(req).await.map_err(|e| format!("request: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

/// The first line of a body (the backend's name).
fn who(body: &str) -> String {
    body.lines().next().unwrap_or("").to_string()
}

/// `n` GETs of / one after another: answers per backend, and the failures.
async fn spread(c: &HttpClient, lb: SocketAddr, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut failed = Vec::new();
    for _ in 0..n {
        match get(c, lb, "/", &[]).await {
            Ok((StatusCode::OK, _, body)) => *counts.entry(who(&body)).or_insert(0) += 1,
            Ok((status, _, body)) => failed.push(format!("{status}: {body}")),
            Err(e) => failed.push(e),
        }
    }
    (counts, failed)
}

/// Send `raw` on a new connection and read what comes back until the balancer closes it (or
/// `within`); (the answer, how long it took).
async fn raw(lb: SocketAddr, raw: &[u8], within: Duration) -> (String, Duration) {
    let began = Instant::now();
    let mut s = TcpStream::connect(lb).await.unwrap();
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), began.elapsed())
}

/// `phalanx balancer status ID --json`: backend → state.
fn states(c: &LocalCluster, id: &str) -> Option<BTreeMap<String, String>> {
    let (code, out, _) = c.cli(&["balancer", "status", id, "--json"]).ok()?;
    if code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let backends = v.get(0)?["status"]["backends"].as_array()?.clone();
    Some(
        backends
            .iter()
            .map(|b| {
                (
                    b["name"].as_str().unwrap_or("").to_string(),
                    b["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

async fn wait_state(c: &LocalCluster, id: &str, backend: &str, state: &str) {
    let deadline = Instant::now() + T;
    loop {
        let now = states(c, id);
        if now.as_ref().and_then(|s| s.get(backend)).map(String::as_str) == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {backend} never became {state}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `phalanx balancer status ID --json` until `pred` holds of its `status`.
async fn wait_http(c: &LocalCluster, id: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + T;
    loop {
        let st = c
            .cli(&["balancer", "status", id, "--json"])
            .ok()
            .and_then(|(_, out, _)| serde_json::from_str::<serde_json::Value>(&out).ok())
            .map(|v| v[0]["status"].clone());
        if st.as_ref().is_some_and(&pred) {
            return;
        }
        assert!(Instant::now() < deadline, "{id}: never {what}: {st:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], phalanx_node::ports::free_tcp_port().unwrap()))
}

fn servers(bs: &[&Backend]) -> String {
    let s: Vec<String> = bs
        .iter()
        .map(|b| format!("{{ name = \"{}\", address = \"{}\" }}", b.name, b.addr))
        .collect();
    format!("[{}]", s.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_balancer_proxies_retries_queues_sticks_and_refuses_bad_clients() {
    let b: Vec<Backend> = futures_join(["b1", "b2", "b3"]).await;
    let q = Backend::start("q").await;
    let well = Backend::start("well").await;
    let sick = Backend::start("sick").await;
    sick.sick.store(true, Ordering::Relaxed);
    // A backend that accepts and never answers (connections held open).
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let (rr, slow, queue, sticky, checked) = (free_addr(), free_addr(), free_addr(), free_addr(), free_addr());
    let three = servers(&[&b[0], &b[1], &b[2]]);
    let rt = format!("{}ms", REQUEST_TIMEOUT.as_millis());
    let extra = format!(
        r#"
[[balancer]]
id = "rr"
listen = ["{rr}"]
mode = "http"
algorithm = "roundrobin"
servers = {three}
check = {{ interval = "200ms", rise = 2, fall = 3, timeout = "100ms" }}
connect_timeout = "300ms"
request_timeout = "{rt}"
max_header_size = 4096

[[balancer]]
id = "slow"
listen = ["{slow}"]
mode = "http"
servers = [{{ name = "silent", address = "{silent_addr}" }}]
server_timeout = "{}ms"

[[balancer]]
id = "queue"
listen = ["{queue}"]
mode = "http"
servers = {}
max_conn = 1
queue = 1
queue_timeout = "{}ms"

[[balancer]]
id = "sticky"
listen = ["{sticky}"]
mode = "http"
algorithm = "roundrobin"
servers = {three}
sticky = {{ cookie = "PHALANXID", max_idle = "30m", max_life = "8h" }}

[[balancer]]
id = "checked"
listen = ["{checked}"]
mode = "http"
algorithm = "roundrobin"
servers = {}
check = {{ kind = "http", http_path = "/health", expect = "200-399", interval = "200ms", rise = 2, fall = 2, timeout = "200ms" }}
"#,
        SERVER_TIMEOUT.as_millis(),
        servers(&[&q]),
        QUEUE_TIMEOUT.as_millis(),
        servers(&[&well, &sick]),
    );
    let mut c = LocalCluster::create(Spec::loopback(1, PathBuf::from(env!("CARGO_BIN_EXE_phalanx")), extra)).unwrap();
    c.start_all().unwrap();
    c.wait_for(T, "the five balancers to run", |st| {
        let s = st.values().next()?;
        let ids = ["rr", "slow", "queue", "sticky", "checked"];
        ids.iter()
            .all(|id| s.resources.iter().any(|r| r.id == *id && r.running.len() == 1))
            .then_some(())
    })
    .await
    .unwrap();
    let http = client();
    let deadline = Instant::now() + T;
    while get(&http, rr, "/", &[]).await.is_err() {
        assert!(Instant::now() < deadline, "the rr balancer never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Round robin over keep-alive requests: exact.
    let (counts, failed) = spread(&http, rr, 299).await;
    assert!(failed.is_empty(), "{failed:?}");
    let total: usize = counts.values().sum();
    assert_eq!(total, 299);
    assert!(counts.values().all(|n| (99..=100).contains(n)), "{counts:?}");
    let (counts, failed) = spread(&http, rr, 300).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        counts,
        BTreeMap::from([("b1".into(), 100), ("b2".into(), 100), ("b3".into(), 100)]),
        "round robin spreads 300 keep-alive requests evenly"
    );

    // Forwarded headers in, hop-by-hop headers out (both ways).
    let (status, h, body) = get(
        &http,
        rr,
        "/echo",
        &[
            ("x-forwarded-for", "192.0.2.1"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let seen: BTreeMap<&str, &str> = body.lines().skip(1).filter_map(|l| l.split_once(": ")).collect();
    assert_eq!(seen.get("x-forwarded-for"), Some(&"192.0.2.1, 127.0.0.1"), "{body}");
    assert_eq!(seen.get("forwarded"), Some(&"for=127.0.0.1;proto=http"), "{body}");
    assert_eq!(seen.get("x-forwarded-proto"), Some(&"http"), "{body}");
    assert_eq!(seen.get("x-kept"), Some(&"yes"));
    for hop in ["x-secret", "te", "proxy-connection"] {
        assert!(!seen.contains_key(hop), "{hop} reached the backend: {body}");
    }
    assert!(
        h.get("keep-alive").is_none(),
        "the backend's keep-alive came through: {h:?}"
    );
    assert!(h.get("x-from").is_some());

    // An upgrade passes through: 101, then the backend echoes over the upgraded connection.
    let mut s = TcpStream::connect(rr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed in the head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in ["hello", "through the balancer"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("the echo came back")
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    drop(s);

    // Bad clients: slowloris → 408 within request_timeout, oversized head → 431, garbage → 400.
    let (out, took) = raw(rr, b"GET / HTTP/1.1\r\nHost: lb\r\nX-Slow: ", REQUEST_TIMEOUT * 5).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    assert!(
        took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + Duration::from_millis(800),
        "408 after {took:?}"
    );
    eprintln!("slowloris: 408 after {took:?} (request_timeout {REQUEST_TIMEOUT:?})");
    let big = format!("GET / HTTP/1.1\r\nHost: lb\r\nX-Big: {}\r\n\r\n", "a".repeat(8000));
    let (out, _) = raw(rr, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    let (out, _) = raw(rr, b"\x16\x03\x01 this is not HTTP\r\n\r\n", Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    // And the balancer still serves.
    assert_eq!(spread(&http, rr, 3).await.1, Vec::<String>::new());

    // A backend that accepts and never answers: 504 after server_timeout.
    let began = Instant::now();
    let (status, _, _) = get(&http, slow, "/", &[]).await.unwrap();
    let took = began.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= SERVER_TIMEOUT && took < SERVER_TIMEOUT + Duration::from_millis(500),
        "504 after {took:?}"
    );
    eprintln!("silent backend: 504 after {took:?} (server_timeout {SERVER_TIMEOUT:?})");

    // max_conn = 1, queue = 1: a second request waits and is served; with a long request in
    // flight, one more waits queue_timeout then gets 503, and one beyond the queue gets 503 at
    // once. (Each step waits, polling the status, for the previous one to be in place.)
    let spawn_get = |path: &'static str| {
        let http = http.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            (get(&http, queue, path, &[]).await, began.elapsed())
        })
    };
    let first = spawn_get("/sleep/1500");
    wait_http(&c, "queue", "in flight", |v| v["backends"][0]["in_flight"] == 1).await;
    let second = spawn_get("/");
    wait_http(&c, "queue", "queued", |v| v["http"]["queued"] == 1).await;
    let (first, _) = first.await.unwrap();
    assert_eq!(first.unwrap().0, StatusCode::OK);
    let (second, waited) = second.await.unwrap();
    assert_eq!(second.unwrap().0, StatusCode::OK, "the queued request is served");
    eprintln!("max_conn queue: the queued request was served after {waited:?}");
    let long = spawn_get("/sleep/3000");
    wait_http(&c, "queue", "in flight", |v| v["backends"][0]["in_flight"] == 1).await;
    let waiting = spawn_get("/");
    wait_http(&c, "queue", "queued", |v| v["http"]["queued"] == 1).await;
    let (status, h, _) = get(&http, queue, "/", &[]).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the queue is full");
    assert_eq!(h.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let (res, waited) = waiting.await.unwrap();
    let (status, h, _) = res.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the queue timed out");
    assert_eq!(h.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert!(
        waited >= QUEUE_TIMEOUT && waited < QUEUE_TIMEOUT + Duration::from_millis(900),
        "503 after {waited:?} in the queue"
    );
    eprintln!("max_conn queue: 503 after {waited:?} (queue_timeout {QUEUE_TIMEOUT:?})");
    assert_eq!(long.await.unwrap().0.unwrap().0, StatusCode::OK);

    // The sticky cookie: the first answer sets it; 20 requests with it land on one backend.
    let (status, h, body) = get(&http, sticky, "/", &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let set = h
        .get("set-cookie")
        .expect("a cookie is set")
        .to_str()
        .unwrap()
        .to_string();
    assert!(set.starts_with("PHALANXID=") && set.contains("HttpOnly"), "{set}");
    let jar = set.split(';').next().unwrap().to_string();
    let stuck = who(&body);
    for _ in 0..20 {
        let (status, h, body) = get(&http, sticky, "/echo", &[("cookie", &format!("a=1; {jar}"))])
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(who(&body), stuck, "a sticky request left its backend");
        assert!(h.get("set-cookie").is_none(), "no refresh within a quarter of max_idle");
        assert!(
            body.contains("cookie: a=1\n"),
            "the balancer's cookie is kept from the backend: {body}"
        );
    }
    // Without the cookie, round robin goes on; a garbage cookie is picked for again.
    let (counts, _) = spread(&http, sticky, 6).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    let (_, h, _) = get(&http, sticky, "/", &[("cookie", "PHALANXID=garbage")])
        .await
        .unwrap();
    assert!(h.get("set-cookie").is_some(), "a garbage cookie is replaced");

    // The HTTP check takes the backend answering 500 on /health out; traffic goes to the other.
    wait_state(&c, "checked", "sick", "down").await;
    assert_eq!(
        states(&c, "checked").unwrap().get("well").map(String::as_str),
        Some("up")
    );
    let (counts, failed) = spread(&http, checked, 10).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(counts, BTreeMap::from([("well".into(), 10)]));

    // A backend dies under load (4 clients of keep-alive GETs): no GET fails (a connect failure
    // or a reset before the answer is retried, the last try on another backend).
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, stop, served) = (http.clone(), stop.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get(&http, rr, "/sleep/5", &[]).await {
                    Ok((StatusCode::OK, _, _)) => {
                        ok += 1;
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, _, body)) => failed.push(format!("{status}: {body}")),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }));
    }
    // Kill b2 once the load runs, and stop it once 100 more GETs were served after b2 left.
    let served_after = |n: usize| {
        let served = served.clone();
        async move {
            let from = served.load(Ordering::Relaxed);
            let deadline = Instant::now() + T;
            while served.load(Ordering::Relaxed) < from + n {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    served_after(100).await;
    b[1].kill();
    wait_state(&c, "rr", "b2", "down").await;
    served_after(100).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for l in load {
        let (o, f) = l.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!("backend killed under load: {ok} GETs served, {} failed", failed.len());
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert!(failed.is_empty(), "GETs failed while b2 died: {failed:?}");

    // A cookie naming the dead backend: the request is balanced to a live one and re-stuck
    // there (the connect failure is retried without the cookie; no shared table involved).
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_b2 = StickyCookie::new(BackendId::of("b2"), now_s).encode();
    let (status, h, body) = get(&http, sticky, "/", &[("cookie", &format!("PHALANXID={to_b2}"))])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let moved = who(&body);
    assert_ne!(moved, "b2");
    let set = h.get("set-cookie").expect("re-stuck").to_str().unwrap().to_string();
    assert!(!set.contains(&to_b2), "{set}");
    let jar = set.split(';').next().unwrap().to_string();
    for _ in 0..5 {
        let (_, _, body) = get(&http, sticky, "/", &[("cookie", &jar)]).await.unwrap();
        assert_eq!(who(&body), moved, "the new cookie sticks");
    }

    // Status and metrics.
    let (code, out, err) = c.cli(&["balancer", "status", "rr", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let st = &v[0]["status"]["http"];
    assert!(st["requests_total"].as_u64().unwrap() > 600, "{st}");
    assert_eq!(st["proxy_answers"]["408"].as_u64(), Some(1), "{st}");
    let (code, human, err) = c.cli(&["balancer", "status", "rr"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(human.contains("rr on n1: http listening on"), "{human}");
    assert!(
        human.contains("answered by the proxy: 400 x1, 408 x1, 431 x1"),
        "{human}"
    );
    assert!(human.contains("FAILED TRIES"), "{human}");
    eprintln!("{human}");
    let api = &c.node("n1").unwrap().api;
    let m = c.client.metrics(api).await.unwrap();
    for series in [
        "phalanx_balancer_backend_response_seconds_bucket{le=\"+Inf\",balancer=\"rr\",backend=\"b1\"}",
        "phalanx_balancer_backend_response_seconds_count{balancer=\"rr\",backend=\"b3\"}",
        "phalanx_balancer_requests_total{balancer=\"rr\"}",
        "phalanx_balancer_proxy_responses_total{balancer=\"slow\",code=\"504\"} 1",
        "phalanx_balancer_proxy_responses_total{balancer=\"queue\",code=\"503\"} 2",
        "phalanx_balancer_proxy_responses_total{balancer=\"rr\",code=\"431\"} 1",
        "phalanx_balancer_proxy_responses_total{balancer=\"rr\",code=\"400\"} 1",
        "phalanx_balancer_backend_5xx_total{balancer=\"rr\",backend=\"b1\"} 0",
    ] {
        assert!(m.contains(series), "{series} not in the metrics:\n{m}");
    }
}

/// Start the named backends.
async fn futures_join<const N: usize>(names: [&str; N]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        out.push(Backend::start(n).await);
    }
    out
}
