//! HTTP mode's proxy in-process: retry rules, passive 5xx health, random requests, the stop,
//! and the queue's wakeups (the process test `tests/balancer_http.rs` covers the rest).

use super::*;
use crate::lb::health::LocalHealth;
use crate::lb::pool::Target;
use phalanx_core::config::BalancerConfig;
use phalanx_core::lb::cookie::StickyCookie;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(retry_on: &str) -> BalancerConfig {
    let text = format!(
        "[cluster]\nname = \"t\"\nfencing = \"off\"\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:7401\"]\n[[balancer]]\nid = \"lb\"\nlisten = [\"127.0.0.1:9000\"]\nmode = \"http\"\nalgorithm = \"roundrobin\"\nretry_on = \"{retry_on}\"\nservers = [{{ name = \"a\", address = \"127.0.0.1:1\" }}]\n"
    );
    phalanx_core::config::parse(&text).unwrap().balancers.remove(0)
}

/// A backend that reads a request and closes without a word (a reset before any answer).
async fn closer() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
        }
    });
    addr
}

/// A backend answering 200 "ok" to everything, one request per connection.
async fn fine() -> SocketAddr {
    answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await
}

/// A backend answering `response` to everything, one request per connection.
async fn answering(response: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response).await;
            });
        }
    });
    addr
}

/// A proxy over `targets` (in this order): its address, its pool, and its stop switch.
async fn proxy(cfg: BalancerConfig, targets: Vec<Target>) -> (SocketAddr, Arc<Pool>, watch::Sender<bool>) {
    let (addr, pool, stop, _) = proxy_with_stats(cfg, targets).await;
    (addr, pool, stop)
}

/// [`proxy`], and its counters.
async fn proxy_with_stats(
    cfg: BalancerConfig,
    targets: Vec<Target>,
) -> (SocketAddr, Arc<Pool>, watch::Sender<bool>, Arc<Stats>) {
    let pool = Arc::new(Pool::new(cfg.algorithm(), cfg.check.health.clone(), cfg.max_conn));
    pool.update(&cfg, targets, None);
    let stats = Arc::new(Stats::default());
    let (stop, stopping) = watch::channel(false);
    let health = Arc::new(LocalHealth {
        balancer: "lb".into(),
        pool: pool.clone(),
        on_change: None,
    });
    let shared = Arc::new(Shared::new(
        "lb".into(),
        pool.clone(),
        health,
        cfg.connect_timeout,
        Box::new(move || cfg.http.clone()),
        stopping,
        stats.clone(),
    ));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(accept_loop(l, shared));
    (addr, pool, stop, stats)
}

/// One request on a new connection: the status line.
async fn status_line(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed without a status line: {out:?}");
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string()
}

fn targets(first: SocketAddr, second: SocketAddr) -> Vec<Target> {
    vec![
        Target {
            name: "first".into(),
            address: first,
            weight: 1,
        },
        Target {
            name: "second".into(),
            address: second,
            weight: 1,
        },
    ]
}

#[tokio::test]
async fn a_reset_is_retried_for_idempotent_requests_only() {
    let (addr, pool, _stop) = proxy(config("idempotent"), targets(closer().await, fine().await)).await;
    // Round robin starts at `first`, which resets: the GET goes on to `second`.
    let get = "GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    assert_eq!(status_line(addr, get).await, "HTTP/1.1 200 OK");
    // The cursor is back at `first`: a POST reset there is not sent again (it may have
    // acted), even with its body kept.
    let post = "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nx";
    assert_eq!(status_line(addr, post).await, "HTTP/1.1 502 Bad Gateway");
    assert_eq!(pool.status(|_| None)[0].errors_total, 2);

    // retry_on = "connect": the GET is not retried either.
    let (addr, _, _stop) = proxy(config("connect"), targets(closer().await, fine().await)).await;
    assert_eq!(status_line(addr, get).await, "HTTP/1.1 502 Bad Gateway");
}

#[tokio::test]
async fn a_connect_failure_is_retried_for_any_method_with_a_kept_body() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (addr, _, _stop) = proxy(config("connect"), targets(dead, fine().await)).await;
    let post = "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";
    assert_eq!(status_line(addr, post).await, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn five_hundreds_are_passed_on_and_mark_the_backend_down_passively() {
    let failing = answering(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    let (addr, pool, _stop) = proxy(config("idempotent"), targets(failing, fine().await)).await;
    let limit = config("idempotent").check.health.error_limit as usize;
    let get = "GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut five = 0;
    for _ in 0..2 * limit {
        if status_line(addr, get).await == "HTTP/1.1 500 Oops" {
            five += 1;
        }
    }
    assert_eq!(
        five, limit,
        "a 500 is the backend's answer, not retried, until it is down"
    );
    assert_eq!(pool.status(|_| None)[0].state, "down");
    assert_eq!(pool.status(|_| None)[0].errors_total, limit as u64);
}

/// Read what comes back on `s` until it closes or `within` passes.
async fn read_all(mut s: TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn random_requests_get_a_status_and_never_stop_the_proxy() {
    use rand::{Rng, SeedableRng};
    let mut cfg = config("idempotent");
    cfg.http.request_timeout = Duration::from_millis(300);
    cfg.http.max_header_size = 2048;
    let (addr, _, _stop) = proxy(cfg, targets(fine().await, fine().await)).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut statuses = std::collections::BTreeMap::new();
    for round in 0..100 {
        let junk = |rng: &mut rand::rngs::StdRng, n: usize| -> Vec<u8> {
            let len = rng.gen_range(0..n);
            (0..len).map(|_| rng.gen()).collect()
        };
        let mut req = Vec::new();
        match round % 5 {
            // Pure noise.
            0 => req.extend(junk(&mut rng, 3000)),
            // A request line with a random target, then noise.
            1 => {
                req.extend(b"GET /");
                req.extend(junk(&mut rng, 100));
                req.extend(b" HTTP/1.1\r\n");
                req.extend(junk(&mut rng, 300));
                req.extend(b"\r\n\r\n");
            }
            // Random header names and values.
            2 => {
                req.extend(b"GET / HTTP/1.1\r\nhost: x\r\n");
                for _ in 0..rng.gen_range(0..150) {
                    let name: String = (0..rng.gen_range(1..20))
                        .map(|_| rng.gen_range(b'a'..=b'z') as char)
                        .collect();
                    req.extend(name.as_bytes());
                    req.extend(b": ");
                    req.extend(junk(&mut rng, 40).iter().map(|b| b.max(&b' ')));
                    req.extend(b"\r\n");
                }
                req.extend(b"\r\n");
            }
            // Lying framing: chunked with garbage chunks, or a short body.
            3 => {
                req.extend(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n");
                req.extend(junk(&mut rng, 200));
            }
            // An upgrade to nowhere and a Connection listing odd tokens.
            _ => {
                req.extend(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade, te, , host\r\nupgrade: ");
                req.extend(junk(&mut rng, 20).iter().map(|b| b.max(&b' ')));
                req.extend(b"\r\ncontent-length: 3\r\n\r\n");
            }
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&req).await;
        let out = read_all(s, Duration::from_secs(3)).await;
        let line = String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string();
        let status = line.split(' ').nth(1).unwrap_or("(closed)").to_string();
        *statuses.entry(status).or_insert(0) += 1;
    }
    // Every input gets a status, and a client's fault is never blamed on the (fine)
    // backends: no 502, and no 503 for want of a backend passively marked down.
    eprintln!("random requests, answers by status: {statuses:?}");
    for code in statuses.keys() {
        assert!(["200", "400", "408", "431"].contains(&code.as_str()), "{statuses:?}");
    }
    let get = "GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    assert_eq!(
        status_line(addr, get).await,
        "HTTP/1.1 200 OK",
        "still serving after {statuses:?}"
    );
}

/// A keep-alive backend answering 200 "ok" after `delay`.
async fn slow(delay: Duration) -> SocketAddr {
    named_slow("ok", delay).await
}

/// A keep-alive backend answering 200 `name` after `delay`.
async fn named_slow(name: &'static str, delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = hyper::service::service_fn(move |_req| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(name.as_bytes()))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc));
        }
    });
    addr
}

#[tokio::test]
async fn a_stop_closes_idle_connections_at_once_and_lets_requests_under_way_finish() {
    let backend = slow(Duration::from_millis(400)).await;
    let (addr, pool, stop) = proxy(config("idempotent"), targets(backend, backend)).await;
    let get = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    // An idle keep-alive connection (one request answered), and one with a request under way.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(get).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(get).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.status(|_| None).iter().map(|b| b.in_flight).sum::<u32>() == 0 {
        assert!(Instant::now() < deadline, "the request never left");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    let began = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0))), "the idle connection closes: {closed:?}");
    assert!(began.elapsed() < Duration::from_millis(300), "{:?}", began.elapsed());
    let out = read_all(busy, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the request under way finishes: {text:?}"
    );
    assert!(text.ends_with("ok"), "{text:?}");
}

/// Poll `ok` until it holds (5 s at most).
async fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_sticky_request_queued_first_does_not_hold_up_the_others() {
    let a = named_slow("first", Duration::from_millis(600)).await;
    let b = named_slow("second", Duration::from_millis(300)).await;
    let text = "[cluster]\nname = \"t\"\nfencing = \"off\"\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:7401\"]\n[[balancer]]\nid = \"lb\"\nlisten = [\"127.0.0.1:9000\"]\nmode = \"http\"\nalgorithm = \"roundrobin\"\nmax_conn = 1\nqueue_timeout = \"3s\"\nsticky = { cookie = \"S\" }\nservers = [{ name = \"a\", address = \"127.0.0.1:1\" }]\n";
    let cfg = phalanx_core::config::parse(text).unwrap().balancers.remove(0);
    let (addr, pool, _stop, stats) = proxy_with_stats(cfg, targets(a, b)).await;
    let now = unix_s();
    let to = |name: &str| format!("S={}", StickyCookie::new(BackendId::of(name), now).encode());
    let send = |cookie: Option<String>| {
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let cookie = cookie.map(|c| format!("cookie: {c}\r\n")).unwrap_or_default();
            let req = format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{cookie}\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let out = read_all(s, Duration::from_secs(5)).await;
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    // Both backends busy; then a request stuck to `first` queues, then one free to go
    // anywhere.
    let busy_a = send(Some(to("first")));
    let busy_b = send(Some(to("second")));
    wait_until("both busy", || pool.status(|_| None).iter().all(|b| b.in_flight == 1)).await;
    let sticky = send(Some(to("first")));
    wait_until("one queued", || stats.queued.load(Ordering::Relaxed) == 1).await;
    let free = send(None);
    wait_until("two queued", || stats.queued.load(Ordering::Relaxed) == 2).await;
    // `second` frees first: the free request takes it (not left asleep behind the sticky
    // one, which cannot use it); then `first` frees and the sticky one gets it.
    let free = free.await.unwrap();
    assert!(free.starts_with("HTTP/1.1 200") && free.ends_with("second"), "{free}");
    let sticky = sticky.await.unwrap();
    assert!(
        sticky.starts_with("HTTP/1.1 200") && sticky.ends_with("first"),
        "{sticky}"
    );
    assert!(busy_a.await.unwrap().ends_with("first"));
    assert!(busy_b.await.unwrap().ends_with("second"));
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_after_the_server_timeout() {
    // Half of a 10-byte body, then nothing.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello").await;
            held.push(s);
        }
    });
    let mut cfg = config("idempotent");
    cfg.http.server_timeout = Duration::from_millis(300);
    let (addr, pool, _stop) = proxy(cfg, targets(backend, backend)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let began = Instant::now();
    let out = read_all(s, Duration::from_secs(5)).await;
    let took = began.elapsed();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("hello"), "{text:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "the client's connection closed after {took:?}"
    );
    assert_eq!(
        pool.status(|_| None).iter().map(|b| b.in_flight).sum::<u32>(),
        0,
        "the lease ended"
    );
}

/// Close `s` with a reset (SO_LINGER 0), as a client that vanishes abruptly.
fn reset(s: TcpStream) {
    let s = s.into_std().unwrap();
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reset_mid_request_or_mid_response_leak_nothing() {
    // A backend answering a 1 MiB body: a client reading 10 bytes then resetting leaves the
    // proxy with a response under way to drop.
    let mut big = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\nconnection: close\r\n\r\n".to_vec();
    big.resize(big.len() + 1_048_576, b'x');
    let backend = answering(Box::leak(big.into_boxed_slice())).await;
    let (addr, pool, _stop) = proxy(
        config("idempotent"),
        vec![Target {
            name: "big".into(),
            address: backend,
            weight: 1,
        }],
    )
    .await;
    for i in 0..100 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nX-Half: ").await.unwrap();
        } else {
            s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 10];
            s.read_exact(&mut buf).await.unwrap();
        }
        reset(s);
    }
    wait_until("every lease released", || {
        pool.status(|_| None).iter().map(|b| b.in_flight).sum::<u32>() == 0
    })
    .await;
    // Still serving, and no request was held against the backend's health.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(pool.status(|_| None)[0].state, "up");
}
