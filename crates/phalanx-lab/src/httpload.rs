//! The load balancer benchmark's two ends of HTTP (`phalanx-lab bench lb`): a fast HTTP/1.1
//! keep-alive backend (`phalanx-lab backend`: every request, pipelined or not, gets `200` with a
//! fixed small body; request bodies are not expected, GETs only) and an open-loop load generator
//! (`phalanx-lab loadgen`). The generator sends at a fixed rate whatever the answers do: a pacer
//! thread (nanosleep, not the 1 ms async timer) hands out request slots at their intended send
//! times to a pool of keep-alive connections, and each request's latency is its response time
//! minus its intended send time, so a stalled proxy shows up as latency on every request it
//! delayed (no coordinated omission, as wrk2). Latencies go into an HDR histogram (µs).

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

/// The backend's answer body.
const BODY: &[u8] = b"hello from the phalanx lab backend\n";

/// A runtime on `threads` threads: one is a current-thread runtime (no work-stealing overhead;
/// the processes are pinned to the client's cores anyway).
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Serve HTTP/1.1 keep-alive on `listen` for ever, on `threads` threads.
pub fn serve_backend(listen: SocketAddr, threads: usize) -> Result<()> {
    let rt = runtime(threads)?;
    rt.block_on(async {
        let l = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let response = Arc::new(
            [
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    BODY.len()
                )
                .as_bytes(),
                BODY,
            ]
            .concat(),
        );
        loop {
            let (s, _) = match l.accept().await {
                Ok(a) => a,
                // Out of descriptors, say: the next accept may work.
                Err(_) => continue,
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(backend_conn(s, response.clone()));
        }
    })
}

/// One client connection of the backend: answer every complete request head in the buffer.
async fn backend_conn(mut s: TcpStream, response: Arc<Vec<u8>>) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut out = Vec::with_capacity(response.len() * 4);
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut done = 0;
        while let Some(end) = find(&buf[done..], b"\r\n\r\n") {
            done += end + 4;
            out.extend_from_slice(&response);
        }
        buf.drain(..done);
        if buf.len() > 64 * 1024 {
            return;
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What one open-loop run measured (`phalanx-lab loadgen` prints it as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadResult {
    /// The rate asked for (requests per second).
    pub rate: f64,
    /// Requests scheduled (rate × duration).
    pub scheduled: u64,
    pub ok: u64,
    /// Requests that failed: connection refused or reset, no or a short answer, a non-2xx status,
    /// or no answer within the request timeout.
    pub errors: u64,
    /// Answered requests per second of the run.
    pub achieved_rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The first few errors, by kind.
    pub error_kinds: BTreeMap<String, u64>,
}

/// The open-loop generator's settings.
pub struct LoadArgs {
    pub target: SocketAddr,
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    pub threads: usize,
    pub timeout: Duration,
}

/// A connection's tally.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    kinds: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, kind: &str) {
        self.errors += 1;
        *self.kinds.entry(kind.to_string()).or_insert(0) += 1;
    }
}

/// Run the open-loop generator (see the module doc).
pub fn run_load(a: &LoadArgs) -> Result<LoadResult> {
    if a.rate.is_nan() || a.rate <= 0.0 || a.connections == 0 {
        bail!("the rate and the connections must be positive");
    }
    let rt = runtime(a.threads)?;
    let scheduled = (a.rate * a.duration.as_secs_f64()).round() as u64;
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    // Open every connection before the clock starts (a refused one is retried per request).
    let conns: Vec<Option<TcpStream>> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..a.connections {
            v.push(connect(a.target, a.timeout).await.ok());
        }
        v
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| rt.spawn(conn_loop(a.target, c, rx.clone(), a.timeout)))
        .collect();
    // The pacer: slot k is due at start + k / rate.
    let start = Instant::now();
    let rate = a.rate;
    let pacer = std::thread::spawn(move || {
        for k in 0..scheduled {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(due).is_err() {
                return;
            }
        }
    });
    // The connections finish once the pacer has sent its last slot and they have drained the
    // queue (on one thread, they run only inside this block_on).
    let tallies = rt.block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(t) = t.await {
                out.push(t);
            }
        }
        out
    });
    let _ = pacer.join();
    let elapsed = start.elapsed();
    let mut hist = new_hist();
    let mut r = LoadResult {
        rate: a.rate,
        scheduled,
        ..LoadResult::default()
    };
    for t in tallies {
        hist.add(&t.hist).ok();
        r.ok += t.ok;
        r.errors += t.errors;
        for (k, n) in t.kinds {
            *r.error_kinds.entry(k).or_insert(0) += n;
        }
    }
    r.achieved_rps = r.ok as f64 / elapsed.as_secs_f64();
    r.p50_us = hist.value_at_quantile(0.5);
    r.p99_us = hist.value_at_quantile(0.99);
    r.p999_us = hist.value_at_quantile(0.999);
    r.max_us = hist.max();
    Ok(r)
}

fn new_hist() -> Histogram<u64> {
    // Invariant: 1 µs .. 60 s at 3 significant figures are valid bounds (constants).
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

async fn connect(target: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .context("connect timed out")??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One keep-alive connection: take the next due slot, send, read the answer, record.
async fn conn_loop(
    target: SocketAddr,
    mut conn: Option<TcpStream>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
    timeout: Duration,
) -> Tally {
    let mut t = Tally {
        hist: new_hist(),
        ok: 0,
        errors: 0,
        kinds: BTreeMap::new(),
    };
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some(due) = rx.lock().await.recv().await else {
            return t;
        };
        if conn.is_none() {
            match connect(target, timeout).await {
                Ok(s) => conn = Some(s),
                Err(_) => {
                    t.error("connect");
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        match tokio::time::timeout(timeout, exchange(s, &mut buf)).await {
            Ok(Ok(())) => {
                t.ok += 1;
                let us = due.elapsed().as_micros().max(1) as u64;
                t.hist.saturating_record(us);
            }
            Ok(Err(kind)) => {
                t.error(kind);
                conn = None;
                buf.clear();
            }
            Err(_) => {
                t.error("timeout");
                conn = None;
                buf.clear();
            }
        }
    }
}

/// One GET and its answer on a keep-alive connection; the error's kind on failure.
async fn exchange(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), &'static str> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
        .await
        .map_err(|_| "write")?;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| "bad head")?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or("bad status line")?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or("no content-length")?;
            let total = end + 4 + len;
            while buf.len() < total {
                let n = s.read(&mut chunk).await.map_err(|_| "read")?;
                if n == 0 {
                    return Err("short answer");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return if (200..300).contains(&status) {
                Ok(())
            } else {
                Err("status")
            };
        }
        let n = s.read(&mut chunk).await.map_err(|_| "read")?;
        if n == 0 {
            return Err(if buf.is_empty() { "empty answer" } else { "short answer" });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
