//! The session store benchmark's load generator (`phalanx-lab bench sessions`, issue 15): one
//! driver for every system compared, so that the client's costs are the same for all of them.
//! It owns the workload (a key space preloaded before measuring, 90/10 get/set, values of 100 to
//! 1000 bytes drawn from a seeded generator, one outstanding request per connection), the two
//! ways of driving it — closed loop (each connection sends its next request as soon as the last
//! one is answered: the maximum) and open loop (a fixed total rate: a pacer thread hands out
//! slots at their intended send times to whichever connection is free; slots that find no free
//! connection queue up, and each latency is measured from the slot's INTENDED send time, so
//! coordinated omission is counted, as in `httpload` and wrk2) — and the figures (ops/s, gets/s,
//! sets/s, get and set latency histograms, errors by kind).
//!
//! Two wire protocols behind one [`Conn`]: the memcached text protocol (memcached itself and
//! phalanx's session store) and etcd v3's gRPC gateway (JSON over HTTP/1.1 keep-alive,
//! `POST /v3/kv/put` and `POST /v3/kv/range` with base64 keys and values). Both are written here
//! by hand, a few lines each, rather than taken from a crate: the memcached client crates are
//! connection-pooled, multiplexing or blocking clients that hide when a request was sent and
//! what came back byte for byte, and an HTTP client (reqwest/hyper) would put a much heavier
//! client path in front of etcd than in front of memcached — on a 2-core machine where the
//! client shares the CPUs with the server, that would bias the comparison. Here both paths are
//! one `write_all` and a parse of the reply in a reused buffer.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// The wire protocol a system speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// memcached's text protocol (`get`, `set`).
    Memcached,
    /// etcd v3's gRPC gateway: JSON over HTTP/1.1.
    EtcdGateway,
}

/// What to send, where, and how.
#[derive(Debug, Clone)]
pub struct Workload {
    pub protocol: Protocol,
    /// Connection i goes to `addrs[i % addrs.len()]` (every node of a cluster gets its share).
    pub addrs: Vec<SocketAddr>,
    pub connections: usize,
    /// Keys `sess:000000` .. ; all of them are written by [`preload`].
    pub keys: usize,
    /// Share of gets (the rest are sets).
    pub get_ratio: f64,
    /// Value sizes, uniform in `value_min..=value_max` bytes.
    pub value_min: usize,
    pub value_max: usize,
    pub seed: u64,
    /// A request with no complete answer by then is an error ("timeout"); its connection is
    /// closed and reopened.
    pub timeout: Duration,
    /// etcd only: serializable ranges (answered by the member asked, from its own state)
    /// instead of etcd's default, linearizable ones (a ReadIndex round through the leader).
    pub etcd_serializable: bool,
}

impl Workload {
    /// Issue 15's workload: 50 connections, 10,000 keys, 90/10 get/set, 100–1000-byte values.
    pub fn new(protocol: Protocol, addrs: Vec<SocketAddr>) -> Workload {
        Workload {
            protocol,
            addrs,
            connections: 50,
            keys: 10_000,
            get_ratio: 0.9,
            value_min: 100,
            value_max: 1000,
            seed: 15,
            timeout: Duration::from_secs(2),
            etcd_serializable: false,
        }
    }

    fn check(&self) -> Result<()> {
        if self.addrs.is_empty() || self.connections == 0 || self.keys == 0 {
            bail!("the workload needs at least one address, one connection and one key");
        }
        if self.value_min == 0 || self.value_min > self.value_max || !(0.0..=1.0).contains(&self.get_ratio) {
            bail!("value sizes must be 1 ≤ min ≤ max and the get ratio within 0..1");
        }
        Ok(())
    }
}

/// Latency percentiles of one kind of request, µs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Requests answered (successfully) and recorded.
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// One closed- or open-loop run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunReport {
    /// "closed" or "open".
    pub mode: String,
    /// Open loop only: the total rate asked for, requests/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ops_per_s: Option<f64>,
    /// From the first request to the last answer.
    pub seconds: f64,
    /// Successful requests (gets, hit or miss, and stored sets).
    pub ops: u64,
    pub ops_per_s: f64,
    pub gets_per_s: f64,
    pub sets_per_s: f64,
    /// Gets that found their key (≈ 1 after the preload).
    pub get_hit_ratio: f64,
    pub get: Latency,
    pub set: Latency,
    /// Gets and sets together.
    pub all: Latency,
    /// Any non-success reply, malformed reply, connection error or timeout.
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Open loop only: how late requests were sent (from their intended send time to when a
    /// connection took them): the generator's own lag, or queueing behind busy connections —
    /// the part of the latency the server did not spend answering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_delay: Option<Latency>,
    /// Open loop only: slots never sent, because the run's drain bound (one more phase after
    /// the last slot was due) passed with them still queued.
    pub unsent: u64,
}

/// The keys and the bytes values are cut from, shared by every connection.
struct Material {
    keys: Vec<Vec<u8>>,
    /// `2 × value_max` random printable bytes: a value is `pool[off..off + len]`.
    pool: Vec<u8>,
}

impl Material {
    fn new(w: &Workload) -> Material {
        let mut rng = StdRng::seed_from_u64(w.seed);
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let pool = (0..2 * w.value_max)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
            .collect();
        Material {
            keys: (0..w.keys).map(|i| format!("sess:{i:06}").into_bytes()).collect(),
            pool,
        }
    }

    fn value(&self, w: &Workload, rng: &mut StdRng) -> &[u8] {
        let len = rng.gen_range(w.value_min..=w.value_max);
        let off = rng.gen_range(0..=self.pool.len() - len);
        &self.pool[off..off + len]
    }
}

/// One connection to one system, in one of the two protocols.
pub struct Conn {
    protocol: Protocol,
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// The request being built.
    out: Vec<u8>,
    /// etcd: the JSON body being built.
    body: Vec<u8>,
    /// etcd: the Host header's value.
    host: String,
    /// etcd: ask for serializable ranges.
    serializable: bool,
}

type Failure = &'static str;

/// A reply parser: `Ok(None)` while incomplete, else the bytes it used and what it found.
type Parser<T> = fn(&[u8]) -> Result<Option<(usize, T)>, Failure>;

impl Conn {
    /// A connection, opened on first use (and reopened after an error).
    pub fn new(protocol: Protocol, addr: SocketAddr) -> Conn {
        Conn {
            protocol,
            addr,
            stream: None,
            buf: Vec::with_capacity(8192),
            out: Vec::with_capacity(2048),
            body: Vec::with_capacity(2048),
            host: addr.to_string(),
            serializable: false,
        }
    }

    /// etcd: serializable ranges instead of linearizable ones (see [`Workload`]).
    pub fn with_serializable_reads(mut self, on: bool) -> Conn {
        self.serializable = on;
        self
    }

    /// Open the connection now (preload does, so that a dead server fails loudly, once).
    pub async fn open(&mut self, timeout: Duration) -> Result<()> {
        let s = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .with_context(|| format!("connecting to {} timed out", self.addr))?
            .with_context(|| format!("connecting to {}", self.addr))?;
        s.set_nodelay(true)?;
        self.stream = Some(s);
        self.buf.clear();
        Ok(())
    }

    /// Drop the connection (after an error: its stream may hold half an answer).
    fn reset(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    /// Get `key`: whether it was found.
    pub async fn get(&mut self, key: &[u8]) -> Result<bool, Failure> {
        self.connect_if_needed().await?;
        let r = match self.protocol {
            Protocol::Memcached => {
                self.out.clear();
                self.out.extend_from_slice(b"get ");
                self.out.extend_from_slice(key);
                self.out.extend_from_slice(b"\r\n");
                self.send().await?;
                self.reply(parse_get).await
            }
            Protocol::EtcdGateway => {
                self.body.clear();
                self.body.extend_from_slice(b"{\"key\":\"");
                base64(key, &mut self.body);
                self.body.extend_from_slice(if self.serializable {
                    b"\",\"serializable\":true}"
                } else {
                    b"\"}"
                });
                let body = self.http("/v3/kv/range").await;
                body.map(|b| find(&self.buf[b], b"\"kvs\"").is_some())
            }
        };
        if r.is_err() {
            self.reset();
        }
        r
    }

    /// Set `key` to `value` (no flags, no expiry); Ok once the server acknowledged it.
    pub async fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), Failure> {
        self.connect_if_needed().await?;
        let r = match self.protocol {
            Protocol::Memcached => {
                self.out.clear();
                self.out.extend_from_slice(b"set ");
                self.out.extend_from_slice(key);
                self.out
                    .extend_from_slice(format!(" 0 0 {}\r\n", value.len()).as_bytes());
                self.out.extend_from_slice(value);
                self.out.extend_from_slice(b"\r\n");
                self.send().await?;
                self.reply(parse_set).await
            }
            Protocol::EtcdGateway => {
                self.body.clear();
                self.body.extend_from_slice(b"{\"key\":\"");
                base64(key, &mut self.body);
                self.body.extend_from_slice(b"\",\"value\":\"");
                base64(value, &mut self.body);
                self.body.extend_from_slice(b"\"}");
                let body = self.http("/v3/kv/put").await;
                body.and_then(|b| {
                    if find(&self.buf[b], b"\"header\"").is_some() {
                        Ok(())
                    } else {
                        Err("put: no header in the answer")
                    }
                })
            }
        };
        if r.is_err() {
            self.reset();
        }
        r
    }

    async fn connect_if_needed(&mut self) -> Result<(), Failure> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await.map_err(|_| "connect")?;
            s.set_nodelay(true).map_err(|_| "connect")?;
            self.stream = Some(s);
            self.buf.clear();
        }
        Ok(())
    }

    /// Send `self.out`; the answer is read into an empty buffer.
    async fn send(&mut self) -> Result<(), Failure> {
        self.buf.clear();
        let s = self.stream.as_mut().ok_or("not connected")?;
        s.write_all(&self.out).await.map_err(|_| "write")
    }

    /// Read until `parse` finds a complete answer; it must be all that was sent (one request
    /// is outstanding at a time, so anything more is a protocol error).
    async fn reply<T>(&mut self, parse: Parser<T>) -> Result<T, Failure> {
        loop {
            if let Some((used, v)) = parse(&self.buf)? {
                if used != self.buf.len() {
                    return Err("bytes after the answer");
                }
                self.buf.clear();
                return Ok(v);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), Failure> {
        let s = self.stream.as_mut().ok_or("not connected")?;
        self.buf.reserve(4096);
        match s.read_buf(&mut self.buf).await {
            Ok(0) => Err("connection closed"),
            Ok(_) => Ok(()),
            Err(_) => Err("read"),
        }
    }

    /// POST the JSON in `self.body` to `path`; where the answer's body is in `self.buf`, on a
    /// 200.
    async fn http(&mut self, path: &str) -> Result<std::ops::Range<usize>, Failure> {
        self.out.clear();
        self.out.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.host,
                self.body.len()
            )
            .as_bytes(),
        );
        self.out.extend_from_slice(&self.body);
        self.send().await?;
        let a = loop {
            if let Some(a) = parse_http(&self.buf)? {
                break a;
            }
            self.fill().await?;
        };
        if a.end != self.buf.len() {
            return Err("bytes after the answer");
        }
        if a.close {
            // Answered, but the server closes: the next request reconnects.
            self.stream = None;
        }
        match a.status {
            200 => Ok(a.body),
            500..=599 => Err("http 5xx"),
            400..=499 => Err("http 4xx"),
            _ => Err("http status"),
        }
    }
}

/// memcached `get` answer: `END\r\n` (a miss) or `VALUE key flags bytes [cas]\r\n…\r\nEND\r\n`.
/// `Ok(None)`: incomplete.
fn parse_get(buf: &[u8]) -> Result<Option<(usize, bool)>, Failure> {
    let Some(eol) = find(buf, b"\r\n") else {
        return if buf.len() > 512 {
            Err("get: no line end")
        } else {
            Ok(None)
        };
    };
    let line = &buf[..eol];
    if line == b"END" {
        return Ok(Some((eol + 2, false)));
    }
    let Some(rest) = line.strip_prefix(b"VALUE ") else {
        return Err(error_kind(line));
    };
    let n: usize = rest
        .split(|b| *b == b' ')
        .nth(2)
        .and_then(|f| std::str::from_utf8(f).ok()?.parse().ok())
        .ok_or("get: bad VALUE line")?;
    let data = eol + 2;
    let total = data + n + 2 + 5;
    if buf.len() < total {
        return Ok(None);
    }
    if &buf[data + n..total] != b"\r\nEND\r\n" {
        return Err("get: bad data block");
    }
    Ok(Some((total, true)))
}

/// memcached `set` answer: `STORED\r\n`.
fn parse_set(buf: &[u8]) -> Result<Option<(usize, ())>, Failure> {
    let Some(eol) = find(buf, b"\r\n") else {
        return if buf.len() > 512 {
            Err("set: no line end")
        } else {
            Ok(None)
        };
    };
    if &buf[..eol] == b"STORED" {
        Ok(Some((eol + 2, ())))
    } else {
        Err(error_kind(&buf[..eol]))
    }
}

fn error_kind(line: &[u8]) -> Failure {
    let word = line.split(|b| *b == b' ').next().unwrap_or_default();
    match word {
        b"SERVER_ERROR" => "SERVER_ERROR",
        b"CLIENT_ERROR" => "CLIENT_ERROR",
        b"ERROR" => "ERROR",
        b"NOT_STORED" => "NOT_STORED",
        b"EXISTS" => "EXISTS",
        b"NOT_FOUND" => "NOT_FOUND",
        _ => "unexpected answer",
    }
}

/// A complete HTTP/1.1 answer at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct HttpAnswer {
    status: u16,
    body: std::ops::Range<usize>,
    /// Where the answer ends.
    end: usize,
    /// The server said `Connection: close`.
    close: bool,
}

/// An HTTP/1.1 answer in `buf`, with a Content-Length or a chunked body; `Ok(None)`:
/// incomplete. A chunked body is taken only with one data chunk (what a small answer is when
/// it is chunked at all); more chunks are refused ("chunked: several chunks") rather than
/// misread.
fn parse_http(buf: &[u8]) -> Result<Option<HttpAnswer>, Failure> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 16 * 1024 {
            Err("http: head too long")
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "http: bad head")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("http: bad status line")?;
    let (mut len, mut chunked, mut close) = (None, false, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            len = Some(v.parse::<usize>().map_err(|_| "http: bad content-length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let start = head_end + 4;
    let answer = |body: std::ops::Range<usize>, end: usize| HttpAnswer {
        status,
        body,
        end,
        close,
    };
    if let Some(len) = len {
        return Ok((buf.len() >= start + len).then(|| answer(start..start + len, start + len)));
    }
    if !chunked {
        return Err("http: no content-length");
    }
    // SIZE\r\n DATA \r\n 0\r\n\r\n
    let Some(eol) = find(&buf[start..], b"\r\n") else {
        return Ok(None);
    };
    let size_text = std::str::from_utf8(&buf[start..start + eol]).map_err(|_| "chunked: bad size")?;
    let size =
        usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| "chunked: bad size")?;
    let data = start + eol + 2;
    if size == 0 {
        return Ok(find(&buf[data..], b"\r\n").map(|e| answer(data..data, data + e + 2)));
    }
    if buf.len() < data + size + 2 {
        return Ok(None);
    }
    if &buf[data + size..data + size + 2] != b"\r\n" {
        return Err("chunked: bad chunk end");
    }
    let tail = &buf[data + size + 2..];
    const LAST: &[u8] = b"0\r\n\r\n";
    if tail.len() < LAST.len() {
        return if LAST.starts_with(tail) {
            Ok(None)
        } else {
            Err("chunked: several chunks")
        };
    }
    if !tail.starts_with(LAST) {
        return Err("chunked: several chunks");
    }
    Ok(Some(answer(data..data + size, data + size + 2 + LAST.len())))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Standard base64 with padding (what protobuf's JSON mapping takes for `bytes`).
fn base64(input: &[u8], out: &mut Vec<u8>) {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for c in input.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63]);
        out.push(A[(n >> 12) as usize & 63]);
        out.push(if c.len() > 1 { A[(n >> 6) as usize & 63] } else { b'=' });
        out.push(if c.len() > 2 { A[n as usize & 63] } else { b'=' });
    }
}

/// One open-loop request as traced: when it was due, taken and answered (µs since the run's
/// start), whether it was a set, and the index of the server address it went to.
type Traced = (u64, u64, u64, bool, usize);

/// A connection's tally.
struct Tally {
    get: Histogram<u64>,
    set: Histogram<u64>,
    /// Open loop: from each slot's due time to its taking.
    delay: Histogram<u64>,
    hits: u64,
    misses: u64,
    errors: u64,
    kinds: BTreeMap<String, u64>,
    /// Diagnostics (`PHALANX_MCLOAD_TRACE`): every open-loop request.
    trace: Option<Vec<Traced>>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            get: new_hist(),
            set: new_hist(),
            delay: new_hist(),
            hits: 0,
            misses: 0,
            errors: 0,
            kinds: BTreeMap::new(),
            trace: std::env::var_os(TRACE_ENV).map(|_| Vec::new()),
        }
    }

    fn error(&mut self, kind: &str) {
        self.errors += 1;
        *self.kinds.entry(kind.to_string()).or_insert(0) += 1;
    }
}

fn new_hist() -> Histogram<u64> {
    // Invariant: 1 µs .. 60 s at 3 significant figures are valid bounds (constants).
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

/// Set to a file path, each open loop appends to it a `#` line naming the run, then one line
/// per request — `due taken answered set server`: µs since the run's start, 1 for a set, the
/// index of the address it went to — to line the generator's stalls up with the servers' logs.
const TRACE_ENV: &str = "PHALANX_MCLOAD_TRACE";

/// One request of the mix, drawn from the connection's own seeded generator. Returns whether
/// it was a set.
async fn one_request(
    conn: &mut Conn,
    w: &Workload,
    m: &Material,
    rng: &mut StdRng,
    t: &mut Tally,
    since: Instant,
) -> bool {
    let key = &m.keys[rng.gen_range(0..m.keys.len())];
    let get = rng.gen_bool(w.get_ratio);
    if get {
        match tokio::time::timeout(w.timeout, conn.get(key)).await {
            Ok(Ok(hit)) => {
                t.get.saturating_record(since.elapsed().as_micros().max(1) as u64);
                if hit {
                    t.hits += 1;
                } else {
                    t.misses += 1;
                }
            }
            Ok(Err(kind)) => t.error(kind),
            Err(_) => {
                conn.reset();
                t.error("timeout");
            }
        }
    } else {
        let value = m.value(w, rng);
        match tokio::time::timeout(w.timeout, conn.set(key, value)).await {
            Ok(Ok(())) => t.set.saturating_record(since.elapsed().as_micros().max(1) as u64),
            Ok(Err(kind)) => t.error(kind),
            Err(_) => {
                conn.reset();
                t.error("timeout");
            }
        }
    }
    !get
}

/// Open `w.connections` connections (all of them, or an error).
async fn open_all(w: &Workload) -> Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(w.connections);
    for i in 0..w.connections {
        let mut c = Conn::new(w.protocol, w.addrs[i % w.addrs.len()]).with_serializable_reads(w.etcd_serializable);
        c.open(w.timeout).await?;
        conns.push(c);
    }
    Ok(conns)
}

/// Write every key once (connection i writes keys i, i + C, …), so that gets hit. Fails on the
/// first error. Returns how long it took.
pub async fn preload(w: &Workload) -> Result<Duration> {
    w.check()?;
    let m = Arc::new(Material::new(w));
    let conns = open_all(w).await?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (w, m) = (w.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w.seed ^ 0x5eed ^ i as u64);
            for k in (i..m.keys.len()).step_by(w.connections) {
                let value = m.value(&w, &mut rng);
                match tokio::time::timeout(w.timeout, c.set(&m.keys[k], value)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(kind)) => bail!("preload: setting key {k} failed: {kind}"),
                    Err(_) => bail!("preload: setting key {k} timed out after {:?}", w.timeout),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a preload task panicked")??;
    }
    Ok(t0.elapsed())
}

/// Closed loop for `phase`: every connection sends its next request as soon as the last one is
/// answered. Latency is from each request's actual send.
pub async fn closed_loop(w: &Workload, phase: Duration) -> Result<RunReport> {
    w.check()?;
    let m = Arc::new(Material::new(w));
    let conns = open_all(w).await?;
    let start = Instant::now();
    let until = start + phase;
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (w, m) = (w.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w.seed.wrapping_add(1 + i as u64));
            let mut t = Tally::new();
            loop {
                let now = Instant::now();
                if now >= until {
                    return t;
                }
                let failed = t.errors;
                one_request(&mut c, &w, &m, &mut rng, &mut t, now).await;
                if t.errors > failed && c.stream.is_none() {
                    // A dead server: do not spin on connect errors.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    let tallies = join(tasks).await?;
    Ok(report("closed", None, tallies, start.elapsed(), 0))
}

/// Open loop at `rate` requests/s in total for `phase`: slot k is due at start + k / rate; a
/// pacer thread (nanosleep, not the 1 ms async timer) queues each slot at its due time, and
/// the first free connection takes it. Latency is from the slot's due time. Connections stop
/// taking slots one phase after the last slot was due; what is still queued then is `unsent`.
pub async fn open_loop(w: &Workload, rate: f64, phase: Duration) -> Result<RunReport> {
    w.check()?;
    if rate.is_nan() || rate <= 0.0 {
        bail!("the open-loop rate must be positive");
    }
    let m = Arc::new(Material::new(w));
    let conns = open_all(w).await?;
    let scheduled = (rate * phase.as_secs_f64()).round() as u64;
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let taken = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let drain_until = start + phase * 2;
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (w, m, rx, taken) = (w.clone(), m.clone(), rx.clone(), taken.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w.seed.wrapping_add(1000 + i as u64));
            let mut t = Tally::new();
            loop {
                let Some(due) = rx.lock().await.recv().await else {
                    return t;
                };
                if Instant::now() > drain_until {
                    return t;
                }
                taken.fetch_add(1, Ordering::Relaxed);
                let took = Instant::now();
                t.delay.saturating_record((took - due).as_micros().max(1) as u64);
                let set = one_request(&mut c, &w, &m, &mut rng, &mut t, due).await;
                if let Some(trace) = t.trace.as_mut() {
                    let us = |at: Instant| (at - start).as_micros() as u64;
                    trace.push((us(due), us(took), us(Instant::now()), set, i % w.addrs.len()));
                }
            }
        }));
    }
    drop(rx);
    let pacer = std::thread::spawn(move || {
        // Sleep to the microsecond: the default 50 µs timer slack would make every slot late.
        let _ = nix::sys::prctl::set_timerslack(1_000);
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
    let tallies = join(tasks).await?;
    // The pacer ends once every slot is sent or every connection has gone (its sends fail).
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    let elapsed = start.elapsed();
    if let Some(path) = std::env::var_os(TRACE_ENV) {
        // Appended: a benchmark of several systems writes one run after the other.
        let began = std::time::SystemTime::now() - elapsed;
        let began = began
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut out = format!(
            "# open loop at {rate:.0}/s against {:?}, began at unix ms {began}\n",
            w.addrs
        );
        for (due, took, done, set, server) in tallies.iter().flat_map(|t| t.trace.iter().flatten()) {
            out.push_str(&format!("{due} {took} {done} {} {server}\n", *set as u8));
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, out.as_bytes()))
            .with_context(|| format!("writing the trace {path:?}"))?;
    }
    let unsent = scheduled.saturating_sub(taken.load(Ordering::Relaxed));
    Ok(report("open", Some(rate), tallies, elapsed, unsent))
}

async fn join(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Result<Vec<Tally>> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.context("a load task panicked")?);
    }
    Ok(out)
}

fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

fn report(mode: &str, rate: Option<f64>, tallies: Vec<Tally>, elapsed: Duration, unsent: u64) -> RunReport {
    let (mut get, mut set, mut all, mut delay) = (new_hist(), new_hist(), new_hist(), new_hist());
    let mut r = RunReport {
        mode: mode.into(),
        target_ops_per_s: rate,
        unsent,
        ..RunReport::default()
    };
    let (mut hits, mut misses) = (0, 0);
    for t in tallies {
        // Same bounds on every histogram: adding cannot fail.
        get.add(&t.get).ok();
        set.add(&t.set).ok();
        delay.add(&t.delay).ok();
        hits += t.hits;
        misses += t.misses;
        r.errors += t.errors;
        for (k, n) in t.kinds {
            *r.error_kinds.entry(k).or_insert(0) += n;
        }
    }
    all.add(&get).ok();
    all.add(&set).ok();
    let secs = elapsed.as_secs_f64().max(1e-9);
    r.seconds = elapsed.as_secs_f64();
    r.ops = all.len();
    r.ops_per_s = all.len() as f64 / secs;
    r.gets_per_s = get.len() as f64 / secs;
    r.sets_per_s = set.len() as f64 / secs;
    r.get_hit_ratio = if hits + misses > 0 {
        hits as f64 / (hits + misses) as f64
    } else {
        0.0
    };
    r.get = latency(&get);
    r.set = latency(&set);
    r.all = latency(&all);
    if rate.is_some() {
        r.send_delay = Some(latency(&delay));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            base64(i.as_bytes(), &mut out);
            assert_eq!(out, o.as_bytes(), "{i:?}");
        }
    }

    #[test]
    fn get_answers_parse_only_when_complete() {
        let hit = b"VALUE sess:000001 0 5\r\nhello\r\nEND\r\n";
        for cut in 0..hit.len() {
            assert_eq!(parse_get(&hit[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_get(hit), Ok(Some((hit.len(), true))));
        assert_eq!(parse_get(b"END\r\n"), Ok(Some((5, false))));
        assert_eq!(parse_get(b"VALUE k 0 5 77\r\nhello\r\nEND\r\n"), Ok(Some((28, true))));
        assert_eq!(parse_get(b"SERVER_ERROR out of memory\r\n"), Err("SERVER_ERROR"));
        assert_eq!(parse_get(b"VALUE k 0 5\r\nhelloXXEND\r\n"), Err("get: bad data block"));
        assert_eq!(parse_set(b"STORED\r\n"), Ok(Some((8, ()))));
        assert_eq!(parse_set(b"NOT_STORED\r\n"), Err("NOT_STORED"));
        assert_eq!(parse_set(b"STOR"), Ok(None));
    }

    #[test]
    fn http_answers_parse_with_a_length_or_one_chunk() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}{}";
        assert_eq!(parse_http(&a[..a.len() - 1]), Ok(None));
        let want = HttpAnswer {
            status: 200,
            body: 38..42,
            end: 42,
            close: false,
        };
        assert_eq!(parse_http(a), Ok(Some(want)));
        let c = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\n{}{}\r\n0\r\n\r\n";
        for cut in 0..c.len() {
            assert_eq!(parse_http(&c[..cut]), Ok(None), "cut at {cut}");
        }
        let x = parse_http(c).expect("valid").expect("complete");
        assert_eq!(
            (x.status, &c[x.body], x.end, x.close),
            (503, &b"{}{}"[..], c.len(), true)
        );
        let more = [&c[..], b"4\r\n"].concat();
        assert_eq!(parse_http(&more).map(|a| a.map(|a| a.end)), Ok(Some(c.len())));
        assert!(parse_http(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
