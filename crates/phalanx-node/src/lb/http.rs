//! The HTTP (L7) proxy: HTTP/1.1 with keep-alive on both sides. A hyper server per client
//! connection reads requests under the balancer's limits — a head not complete within
//! `request_timeout` gets 408 (slowloris), a head over `max_header_size` 431, a malformed one
//! 400 (hyper's parser) — and each request is sent to a backend through one pooled client per
//! balancer (idle connections closed after `idle_timeout`, below the backends' keep-alive).
//! Bodies stream both ways; only a small request body (up to [`KEEP_BODY`]) is kept whole,
//! so that it can be sent again on a retry.
//!
//! Per request: the sticky cookie (if configured) or the balancer picks a backend and takes a
//! lease on it (in flight until the response body ends); at `max_conn` everywhere the request
//! waits in a bounded queue (`queue`, `queue_timeout`, then 503 + `Retry-After: 1`). Headers
//! are rewritten by `headers` (hop-by-hop out, X-Forwarded-For/-Proto and Forwarded in). A
//! connect failure is retried (`retries`, the last try redispatched to another backend); an
//! idempotent request whose backend closed or reset before any response byte is too, if its
//! body was kept. No response head within `server_timeout` → 504 (and a response body with
//! no data for `server_timeout` is cut, the client's connection closed); other upstream
//! failures → 502. A connect error, a timeout or a 5xx is a failed `Observation` for passive health.
//! A 101 answer to an upgrade (WebSocket) is passed on and both upgraded connections are then
//! copied into each other. When the balancer stops, idle client connections close at once and
//! requests (and tunnels) under way get `tcp::STOP_GRACE`.

mod queue;

use super::headers;
use super::health::HealthView;
use super::pool::Pool;
use super::stats::Stats;
use super::tcp::STOP_GRACE;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, COOKIE, RETRY_AFTER, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use phalanx_core::config::{HttpConfig, RetryOn};
use phalanx_core::lb::cookie;
use phalanx_core::lb::{BackendId, Observation};
use queue::{acquire, Freed, Held, Picked};
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A request body up to this size (known from its Content-Length) is read whole before the
/// request is sent, so that a retry can send it again; larger or chunked bodies stream and are
/// only tried once.
pub const KEEP_BODY: usize = 64 * 1024;

/// A body's error: hyper's, or a backend's body that stalled (`queue::Stalled`).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of what the proxy sends and answers.
type ProxyBody = BoxBody<Bytes, BoxError>;

/// Why a request got no backend's answer (logged; each maps to a status).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no backend takes new requests")]
    NoBackend,
    #[error("the queue is full")]
    QueueFull,
    #[error("no backend freed up within the queue timeout")]
    QueueTimeout,
    #[error("backend {0} did not answer within the server timeout")]
    Timeout(String),
    #[error("backend {backend}: {source}")]
    Upstream {
        backend: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("backend {0} switched protocols unasked")]
    Unasked(String),
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("the request body did not arrive within the request timeout")]
    BodyTimeout,
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::NoBackend | Failure::QueueFull | Failure::QueueTimeout => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Failure::Upstream { .. } | Failure::Unasked(_) => StatusCode::BAD_GATEWAY,
            Failure::Body(_) => StatusCode::BAD_REQUEST,
            Failure::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// What every request of one balancer shares.
pub struct Shared {
    pub balancer: String,
    pub pool: Arc<Pool>,
    pub health: Arc<dyn HealthView>,
    /// HTTP mode's settings, read per request (a change applies to the next one; the
    /// client's connect and idle timeouts are fixed when the balancer starts).
    pub settings: Box<dyn Fn() -> HttpConfig + Send + Sync>,
    /// Becomes true when the balancer stops.
    pub stopping: watch::Receiver<bool>,
    pub stats: Arc<Stats>,
    client: Client<HttpConnector, ProxyBody>,
    /// Told when a lease ends (a queued request may go).
    freed: Arc<Freed>,
}

impl Shared {
    pub fn new(
        balancer: String,
        pool: Arc<Pool>,
        health: Arc<dyn HealthView>,
        connect_timeout: Duration,
        settings: Box<dyn Fn() -> HttpConfig + Send + Sync>,
        stopping: watch::Receiver<bool>,
        stats: Arc<Stats>,
    ) -> Shared {
        let http = settings();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        // Flattened writes (one `write` of head and small body, not a `writev` of several
        // buffers) on both sides: cheaper per request for the small messages a balancer mostly
        // carries (measured with `tests/lab/lb-bench`).
        let client = Client::builder(TokioExecutor::new())
            .http1_writev(false)
            .pool_idle_timeout(http.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Shared {
            balancer,
            pool,
            health,
            settings,
            stopping,
            stats,
            client,
            freed: Arc::new(Freed::default()),
        }
    }
}

/// Accept on `listener` until aborted.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move { serve(client, peer, shared).await });
            }
            Err(e) => {
                tracing::warn!(balancer = %shared.balancer, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The 408 a slow client gets before its connection is closed.
const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 16\r\n\r\nrequest timeout\n";

/// One client connection, to its end (or the stop's grace).
async fn serve(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    // A second handle on the socket, to answer 408 after hyper gave up on a slow head (hyper
    // closes without a word on its header timeout).
    let Ok((client, spare)) = split_off_spare(client) else {
        return;
    };
    let partial = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Watched {
        inner: client,
        partial: partial.clone(),
    });
    let http = shared.settings();
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(req, peer, shared).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(http.request_timeout)
        .max_header_size(http.max_header_size as usize)
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = shared.stopping.clone();
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { drop(stopping.wait_for(|s| *s).await) } => {
            // The balancer stops: an idle connection closes now, a request under way gets the
            // grace to finish (and its connection closes after it).
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(STOP_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    let Err(e) = result else { return };
    if e.is_timeout() && partial.load(Ordering::Relaxed) {
        // Part of a request head came, not all of it: 408. (An idle keep-alive connection
        // that sent nothing is closed silently.)
        shared.stats.proxy_error(StatusCode::REQUEST_TIMEOUT);
        let mut spare = spare;
        let _ = spare.write(TIMEOUT_408);
        let _ = spare.shutdown(std::net::Shutdown::Write);
        return;
    }
    // hyper answered a bad head itself (431 too large, 400 malformed): count it.
    if e.is_parse_too_large() {
        shared.stats.proxy_error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    } else if e.is_parse() {
        shared.stats.proxy_error(StatusCode::BAD_REQUEST);
    }
    tracing::debug!(balancer = %shared.balancer, %peer, error = %e, "client connection ended");
}

/// `stream` and a std handle on the same socket (non-blocking, like it).
fn split_off_spare(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let spare = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, spare))
}

/// The client's connection, noting whether part of a request came since the last answer.
struct Watched {
    inner: TcpStream,
    partial: Arc<AtomicBool>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.partial.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.partial.store(false, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.partial.store(false, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Shared {
    fn settings(&self) -> HttpConfig {
        (self.settings)()
    }
}

/// A request's body as it may be sent (again).
enum Kept {
    Empty,
    Whole(Bytes),
    /// Streamed: sent once (None once taken).
    Stream(Option<Incoming>),
}

impl Kept {
    fn retryable(&self) -> bool {
        !matches!(self, Kept::Stream(_))
    }

    fn take(&mut self) -> Option<ProxyBody> {
        match self {
            Kept::Empty => Some(Empty::new().map_err(|e: Infallible| match e {}).boxed()),
            Kept::Whole(b) => Some(Full::new(b.clone()).map_err(|e: Infallible| match e {}).boxed()),
            Kept::Stream(s) => s.take().map(|b| b.map_err(BoxError::from).boxed()),
        }
    }
}

/// RFC 9110 §9.2.2.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A small answer of the proxy's own.
fn answer(status: StatusCode) -> Response<ProxyBody> {
    let text = format!("{}\n", status.canonical_reason().unwrap_or("error").to_lowercase());
    let mut r = Response::new(Full::new(Bytes::from(text)).map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Seconds since the epoch (the sticky cookie's clock: shared by every node that may run the
/// balancer).
fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One request, to its response (the proxy's own on failure).
/// The request's hash key for a hashing algorithm (None: none, or not a request hash: `source`
/// is the client's address, which the pool hashes).
fn hash_key(algorithm: &phalanx_core::lb::Algorithm, parts: &hyper::http::request::Parts) -> Option<Vec<u8>> {
    use phalanx_core::lb::{Algorithm, HashKey};
    let Algorithm::Hash(h) = algorithm else { return None };
    match &h.key {
        HashKey::Source => None,
        HashKey::Uri => parts.uri.path_and_query().map(|p| p.as_str().as_bytes().to_vec()),
        HashKey::Header(name) => parts.headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => parts
            .headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_bytes().to_vec()),
    }
}

async fn handle(mut req: Request<Incoming>, peer: SocketAddr, shared: Arc<Shared>) -> Response<ProxyBody> {
    let http = &shared.settings();
    let upgrade = headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(&mut parts.headers, peer.ip(), "http");
    let keys = queue::Keys {
        client: peer.ip(),
        hash: hash_key(&shared.pool.algorithm(), &parts),
    };
    let sticky = http
        .sticky
        .as_ref()
        .map(|c| (c, take_cookie(&mut parts.headers, &c.name)));
    let mut body = match keep(body, http).await {
        Ok(b) => b,
        Err(f) => return fail(&shared, f, None),
    };
    let may_retry_reset = http.retry_on == RetryOn::Idempotent && idempotent(&parts.method) && !upgrade;
    let attempts = 1 + http.retries as usize;
    let now_s = unix_s();
    let mut avoid: Option<BackendId> = None;
    // The next try must go elsewhere (after a response timeout: not the same silent backend).
    let mut redispatch = false;
    let mut last_failure = Failure::NoBackend;
    for attempt in 0..attempts {
        let last = attempt + 1 == attempts && attempt > 0;
        // The cookie decides the first try; a retry picks freely (redispatching on the last).
        let cookie_value = if attempt == 0 {
            sticky.as_ref().and_then(|(_, v)| v.as_deref())
        } else {
            None
        };
        let picked = match acquire(
            &shared,
            http,
            sticky.as_ref().map(|(c, _)| *c),
            cookie_value,
            now_s,
            if last || redispatch { avoid } else { None },
            &keys,
        )
        .await
        {
            Ok(p) => p,
            Err(f) => return fail(&shared, f, None),
        };
        let Some(out_body) = body.take() else { break };
        let mut out = Request::from_parts(parts.clone(), out_body);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        *out.uri_mut() = match Uri::builder()
            .scheme("http")
            .authority(picked.address.to_string())
            .path_and_query(path)
            .build()
        {
            Ok(u) => u,
            Err(_) => return fail(&shared, Failure::Body("bad request target".into()), None),
        };
        let began = Instant::now();
        let name = picked.name.clone();
        let id = picked.id;
        match tokio::time::timeout(http.server_timeout, shared.client.request(out)).await {
            Err(_) => {
                shared.health.observed(id, Observation::ServerError);
                // An idempotent request may be tried again elsewhere (HAProxy's `retry-on
                // response-timeout`): a backend that died under it (power cut, no reset) costs
                // the client `server_timeout`, not an error. Anything else may have acted: 504.
                let elsewhere = shared.pool.any_serving(Some(id));
                if !(may_retry_reset && body.retryable() && attempt + 1 < attempts && elsewhere) {
                    return fail(&shared, Failure::Timeout(name.clone()), Some(&name));
                }
                last_failure = Failure::Timeout(name.clone());
                avoid = Some(id);
                redispatch = true;
            }
            Ok(Err(e)) if client_fault(&e) => {
                // The client's streamed body broke (bad chunking, a reset): its fault, not the
                // backend's.
                return fail(&shared, Failure::Body(e.to_string()), Some(&name));
            }
            Ok(Err(e)) => {
                let connect = e.is_connect();
                shared.health.observed(id, Observation::ConnError);
                shared.stats.backend_error(id, &name);
                tracing::debug!(balancer = %shared.balancer, backend = %name, error = %e, connect, "upstream failed");
                let again = body.retryable() && (connect || may_retry_reset);
                last_failure = Failure::Upstream {
                    backend: name,
                    source: e,
                };
                if !again {
                    break;
                }
                avoid = Some(id);
            }
            Ok(Ok(resp)) => {
                shared.stats.response(id, &name, resp.status(), began.elapsed());
                return respond(&shared, resp, picked, client_upgrade, http.server_timeout);
            }
        }
    }
    let name = match &last_failure {
        Failure::Upstream { backend, .. } | Failure::Timeout(backend) => Some(backend.clone()),
        _ => None,
    };
    fail(&shared, last_failure, name.as_deref())
}

/// The value of the balancer's cookie `name` in the request, removed from its `Cookie` fields
/// (the backend never sees it).
fn take_cookie(h: &mut hyper::HeaderMap, name: &str) -> Option<String> {
    let fields = || h.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok());
    let value = fields().find_map(|f| cookie::find(f, name).map(str::to_string))?;
    let rest: Vec<String> = fields().filter_map(|f| cookie::strip(f, name)).collect();
    h.remove(COOKIE);
    if !rest.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&rest.join("; ")) {
            h.insert(COOKIE, v);
        }
    }
    Some(value)
}

/// Whether an upstream failure came from the request body the client was streaming (hyper
/// reports a body's own error as a "user" error).
fn client_fault(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_user()) {
            return true;
        }
        source = s.source();
    }
    false
}

/// Pass a backend's response on: passive health, hop-by-hop fields out, the sticky cookie in;
/// the lease is held until the body ends, or by the tunnel of an upgrade.
fn respond(
    shared: &Shared,
    mut resp: Response<Incoming>,
    picked: Picked,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    stall: Duration,
) -> Response<ProxyBody> {
    let status = resp.status();
    let outcome = if status.is_server_error() {
        Observation::ServerError
    } else {
        Observation::Success
    };
    shared.health.observed(picked.id, outcome);
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), switching && client_upgrade.is_some());
    if let Some(set) = &picked.set_cookie {
        if let Ok(v) = HeaderValue::from_str(set) {
            resp.headers_mut().append(SET_COOKIE, v);
        }
    }
    let mut held = picked.held;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            return fail(shared, Failure::Unasked(picked.name.clone()), Some(&picked.name));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, held, shared.stopping.clone()));
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Empty::new().map_err(|e: Infallible| match e {}).boxed());
    }
    let (parts, body) = resp.into_parts();
    held.stream(body, stall);
    Response::from_parts(parts, held.boxed())
}

/// Count, log and answer a failure.
fn fail(shared: &Shared, f: Failure, backend: Option<&str>) -> Response<ProxyBody> {
    let status = f.status();
    tracing::debug!(balancer = %shared.balancer, backend, error = %f, %status, "answered by the proxy");
    shared.stats.proxy_error(status);
    answer(status)
}

/// Read a small body whole (see [`KEEP_BODY`]), else keep it to stream.
async fn keep(body: Incoming, http: &HttpConfig) -> Result<Kept, Failure> {
    if body.is_end_stream() {
        return Ok(Kept::Empty);
    }
    match body.size_hint().exact() {
        Some(n) if n as usize <= KEEP_BODY => {
            let read = Limited::new(body, KEEP_BODY).collect();
            match tokio::time::timeout(http.request_timeout, read).await {
                Ok(Ok(b)) => Ok(Kept::Whole(b.to_bytes())),
                Ok(Err(e)) => Err(Failure::Body(e.to_string())),
                Err(_) => Err(Failure::BodyTimeout),
            }
        }
        _ => Ok(Kept::Stream(Some(body))),
    }
}

/// Copy an upgraded client connection and its upgraded backend connection into each other
/// until either closes (or the balancer's stop grace ends).
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    lease: Held,
    mut stopping: watch::Receiver<bool>,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            tracing::debug!(client = ?c.err(), upstream = ?u.err(), "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let stopped = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = stopped => {}
    }
    drop(lease);
}

#[cfg(test)]
mod tests;
