//! The session store's peer stream: one long-lived connection from each node to each peer
//! that carries the group's small, frequent RPCs — Raft appends and votes, writes a follower
//! forwards, read-index requests — instead of one HTTP request each. The profile under the
//! session benchmark showed the HTTP of every RPC (TLS records, hyper, axum, a task per
//! request, a `sendto` each) as most of what a replicated set costs beyond its fsyncs.
//!
//! It opens as an HTTP upgrade of `GET /sessions/stream` under the peer router ([`STREAM_PATH`],
//! protocol [`PROTOCOL`]): the same port, TLS, node certificate and cluster token as every peer
//! route, checked once at the upgrade (the certificate again before every request, so a removed
//! node's stream ends at its next request). Then both sides exchange frames
//! `[length u32 LE][id u64 LE][code u8][body]` (`length` counts what follows it, at most
//! [`MAX_FRAME`]): a request's code is its [`Kind`] and its body the postcard body its HTTP
//! route takes; the answer carries the request's id, code 0 and the route's 200 body, or code
//! 1 and the reason its route would have answered with an error status. Requests are served
//! concurrently and answered as they finish; a writer sends what is queued in one write.
//!
//! The client ([`StreamClient`]) opens a new connection for new calls after [`ROTATE_AFTER`]
//! (the old one ends once answered: a rotated token or certificate reaches the stream), the
//! server stops reading a connection after twice that. A peer that refuses the upgrade (an
//! older version: 404) is called over HTTP as before ([`StreamError::Fallback`]) for
//! [`FALLBACK_FOR`]. Snapshots stay on HTTP (large, chunked, rare). Written by hand: no crate
//! multiplexes request/response frames over an upgraded HTTP connection without bringing a
//! protocol of its own (HTTP/2, websockets), and this is a hundred lines.

use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot};

/// The peer route a stream opens on.
pub const STREAM_PATH: &str = "/sessions/stream";
/// The `Upgrade` header's protocol.
pub const PROTOCOL: &str = "phalanx-sessions/1";
/// The largest frame either side accepts (a Raft append is cut far below it).
pub const MAX_FRAME: usize = crate::raft::RAFT_BODY_LIMIT + 64;
/// A client opens a new connection for new calls after this; a server stops reading one after
/// twice this.
pub const ROTATE_AFTER: Duration = Duration::from_secs(60);
/// How long a peer that refused the upgrade is called over HTTP before the stream is tried again.
pub const FALLBACK_FOR: Duration = Duration::from_secs(30);
/// How long opening a stream (connect, TLS, the upgrade's answer) may take.
const OPEN_LIMIT: Duration = Duration::from_secs(2);
/// Answer codes.
const OK: u8 = 0;
const FAILED: u8 = 1;

/// What a request is (its frame's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Raft append (`/raft/sessions/append`).
    Append = 1,
    /// A Raft vote (`/raft/sessions/vote`).
    Vote = 2,
    /// A follower's batch of writes (`sessions::WRITE_PATH`).
    Write = 3,
    /// A follower's read-index request (`sessions::READ_PATH`).
    Read = 4,
}

impl Kind {
    fn of(code: u8) -> Option<Kind> {
        [Kind::Append, Kind::Vote, Kind::Write, Kind::Read]
            .into_iter()
            .find(|k| *k as u8 == code)
    }
}

/// Why a call over the stream got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// Never sent: the peer could not be reached (safe to send again).
    #[error("not delivered: {0}")]
    NotDelivered(String),
    /// Sent, and the connection ended before the answer: it may have been acted on.
    #[error("the connection ended before the answer: {0}")]
    Lost(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer served it and answered with an error (what its HTTP route would have said).
    #[error("{0}")]
    Remote(String),
    /// The peer does not take streams (it answered the upgrade with this status): call it
    /// over HTTP.
    #[error("the peer refused the stream ({0})")]
    Fallback(u16),
}

/// One frame: its id, code and body.
type Frame = (u64, u8, Vec<u8>);

fn encode(id: u64, code: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(13 + body.len());
    f.extend_from_slice(&((9 + body.len()) as u32).to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f.push(code);
    f.extend_from_slice(body);
    f
}

/// The next frame, None at a clean end of the stream (between frames).
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(9..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (9 to {MAX_FRAME})"),
        ));
    }
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let mut body = vec![0u8; len - 9];
    r.read_exact(&mut body).await?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[..8]);
    Ok(Some((u64::from_le_bytes(id), head[8], body)))
}

/// Write every frame queued, flushing when the queue is empty (many frames, one write).
async fn write_frames<W: AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<Vec<u8>>) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    while let Some(f) = rx.recv().await {
        w.write_all(&f).await?;
        while let Ok(f) = rx.try_recv() {
            w.write_all(&f).await?;
        }
        w.flush().await?;
    }
    w.shutdown().await
}

/// What serves a stream's requests: a request's kind and body → the answer's body, or the
/// reason it failed.
pub type Handler = Arc<dyn Fn(Kind, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> + Send + Sync>;

/// Serve one upgraded connection until the peer closes it, it breaks, `admitted` turns false
/// before a request (the peer's certificate was revoked) or it is [`ROTATE_AFTER`] × 2 old;
/// requests already read are answered first.
pub async fn serve<IO>(io: IO, handler: Handler, admitted: impl Fn() -> bool)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
    let writer = tokio::spawn(write_frames(wr, rx));
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let until = tokio::time::Instant::now() + ROTATE_AFTER * 2;
    loop {
        let (id, code, body) = match tokio::time::timeout_at(until, read_frame(&mut rd)).await {
            Err(_) | Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "sessions stream: closed");
                break;
            }
            Ok(Ok(Some(f))) => f,
        };
        if !admitted() {
            tracing::warn!("sessions stream: the peer's certificate is no longer admitted: closed");
            break;
        }
        let (handler, tx) = (handler.clone(), tx.clone());
        tokio::spawn(async move {
            let answer = match Kind::of(code) {
                Some(kind) => handler(kind, body).await,
                None => Err(format!("unknown request code {code}")),
            };
            let frame = match answer {
                Ok(b) => encode(id, OK, &b),
                Err(why) => encode(id, FAILED, why.as_bytes()),
            };
            let _ = tx.send(frame).await;
        });
    }
    drop(tx);
    // The writer ends once every request read has been answered.
    let _ = writer.await;
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, StreamError>>>>>;

/// One open stream to a peer, as the client sees it.
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    opened: Instant,
    closed: Arc<AtomicBool>,
}

/// Fail every call waiting on a connection that ended.
fn fail_all(pending: &Pending, closed: &AtomicBool, why: &str) {
    closed.store(true, Ordering::SeqCst);
    let waiting: Vec<_> = pending.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
    for (_, tx) in waiting {
        let _ = tx.send(Err(StreamError::Lost(why.to_string())));
    }
}

impl Conn {
    /// Run the client side over `io`: a writer of queued requests and a reader handing each
    /// answer to its caller.
    fn start<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO) -> Conn {
        let (rd, wr) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
        let pending: Pending = Default::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (p, c) = (pending.clone(), closed.clone());
        tokio::spawn(async move {
            let why = match write_frames(wr, rx).await {
                Ok(()) => "closed".to_string(),
                Err(e) => e.to_string(),
            };
            fail_all(&p, &c, &why);
        });
        let (p, c) = (pending.clone(), closed.clone());
        tokio::spawn(async move {
            let mut rd = BufReader::with_capacity(64 * 1024, rd);
            let why = loop {
                match read_frame(&mut rd).await {
                    Ok(Some((id, code, body))) => {
                        let waiter = p.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        if let Some(w) = waiter {
                            let _ = w.send(match code {
                                OK => Ok(body),
                                _ => Err(StreamError::Remote(String::from_utf8_lossy(&body).into_owned())),
                            });
                        }
                    }
                    Ok(None) => break "closed by the peer".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            fail_all(&p, &c, &why);
        });
        Conn {
            tx,
            pending,
            next_id: AtomicU64::new(1),
            opened: Instant::now(),
            closed,
        }
    }

    fn usable(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && self.opened.elapsed() < ROTATE_AFTER
    }

    async fn call(&self, kind: Kind, body: &[u8], limit: Duration) -> Result<Vec<u8>, StreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if self.tx.send(encode(id, kind as u8, body)).await.is_err() {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(StreamError::NotDelivered("the stream had closed".into()));
        }
        match tokio::time::timeout(limit, rx).await {
            Err(_) => {
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                Err(StreamError::Timeout(limit))
            }
            Ok(Err(_)) => Err(StreamError::Lost("the stream's reader ended".into())),
            Ok(Ok(r)) => r,
        }
    }
}

/// A peer's stream slot: its open connection, or when it last refused streams.
#[derive(Default)]
struct Slot {
    conn: Option<Arc<Conn>>,
    refused_at: Option<Instant>,
}

/// Streams to this node's peers, by address, opened on first use.
pub struct StreamClient {
    http: reqwest::Client,
    keys: crate::key::Keys,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Calls answered over a stream, and calls handed back for HTTP (the peer took no stream).
    pub answered: AtomicU64,
    pub fell_back: AtomicU64,
}

impl StreamClient {
    pub fn new(http: reqwest::Client, keys: crate::key::Keys) -> StreamClient {
        StreamClient {
            http,
            keys,
            slots: Default::default(),
            answered: AtomicU64::new(0),
            fell_back: AtomicU64::new(0),
        }
    }

    /// Call `kind` with `body` on the peer at `addr` (its API address), answered within `limit`
    /// (opening the stream included).
    pub async fn call(
        self: &Arc<Self>,
        addr: &str,
        kind: Kind,
        body: &[u8],
        limit: Duration,
    ) -> Result<Vec<u8>, StreamError> {
        let deadline = Instant::now() + limit;
        let r = match self.conn(addr, limit).await {
            Ok(conn) => {
                conn.call(kind, body, deadline.saturating_duration_since(Instant::now()))
                    .await
            }
            Err(e) => Err(e),
        };
        match &r {
            Ok(_) => self.answered.fetch_add(1, Ordering::Relaxed),
            Err(StreamError::Fallback(_)) => self.fell_back.fetch_add(1, Ordering::Relaxed),
            Err(_) => 0,
        };
        r
    }

    /// The open stream to `addr`, waited for up to `limit`. Opening it is a task of its own: a
    /// caller's short deadline (a heartbeat's) never cuts a TLS handshake short, so that on a
    /// loaded machine a stream still opens, and the next caller finds it.
    async fn conn(self: &Arc<Self>, addr: &str, limit: Duration) -> Result<Arc<Conn>, StreamError> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_string())
            .or_default()
            .clone();
        if let Ok(s) = slot.try_lock() {
            if let Some(c) = s.conn.as_ref().filter(|c| c.usable()) {
                return Ok(c.clone());
            }
        }
        let (me, to) = (self.clone(), addr.to_string());
        let opening = tokio::spawn(async move { me.open_into(&slot, &to).await });
        match tokio::time::timeout(limit, opening).await {
            Err(_) => Err(StreamError::NotDelivered(format!(
                "no stream to {addr} within {limit:?}"
            ))),
            Ok(Err(e)) => Err(StreamError::NotDelivered(e.to_string())),
            Ok(Ok(r)) => r,
        }
    }

    /// Under the peer's slot: its usable stream, or a new one (or the refusal of one).
    async fn open_into(&self, slot: &tokio::sync::Mutex<Slot>, addr: &str) -> Result<Arc<Conn>, StreamError> {
        let mut slot = slot.lock().await;
        if let Some(c) = slot.conn.as_ref().filter(|c| c.usable()) {
            return Ok(c.clone());
        }
        if slot.refused_at.is_some_and(|at| at.elapsed() < FALLBACK_FOR) {
            return Err(StreamError::Fallback(0));
        }
        // The old connection (if any) ends by itself once its calls are answered.
        slot.conn = None;
        match tokio::time::timeout(OPEN_LIMIT, self.open(addr)).await {
            Err(_) => Err(StreamError::NotDelivered(format!(
                "opening a stream to {addr} took over {OPEN_LIMIT:?}"
            ))),
            Ok(Err(StreamError::Fallback(status))) => {
                tracing::info!(peer = %addr, status, "sessions stream refused: calling this peer over HTTP");
                slot.refused_at = Some(Instant::now());
                Err(StreamError::Fallback(status))
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(c)) => {
                let c = Arc::new(c);
                slot.conn = Some(c.clone());
                slot.refused_at = None;
                Ok(c)
            }
        }
    }

    async fn open(&self, addr: &str) -> Result<Conn, StreamError> {
        use axum::http::header::{CONNECTION, UPGRADE};
        let resp = self
            .http
            .get(crate::transport::url(addr, STREAM_PATH))
            .bearer_auth(self.keys.token())
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, PROTOCOL)
            .send()
            .await
            .map_err(|e| StreamError::NotDelivered(e.to_string()))?;
        let status = resp.status();
        if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            return Err(StreamError::Fallback(status.as_u16()));
        }
        let io = resp
            .upgrade()
            .await
            .map_err(|e| StreamError::NotDelivered(format!("the upgrade failed: {e}")))?;
        Ok(Conn::start(io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose handler echoes the body after `body[0]` ms, or fails on an empty body.
    fn pair() -> (Conn, tokio::task::JoinHandle<()>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let handler: Handler = Arc::new(|kind, body: Vec<u8>| {
            Box::pin(async move {
                let Some(ms) = body.first().copied() else {
                    return Err(format!("empty {kind:?}"));
                };
                tokio::time::sleep(Duration::from_millis(ms as u64)).await;
                Ok(body)
            })
        });
        let server = tokio::spawn(serve(b, handler, || true));
        (Conn::start(a), server)
    }

    #[tokio::test]
    async fn answers_come_back_to_their_callers_whatever_their_order() {
        let (c, _server) = pair();
        let c = Arc::new(c);
        // The slow first call is answered last; each caller gets its own answer.
        let calls: Vec<_> = [60u8, 1, 30, 0]
            .into_iter()
            .map(|ms| {
                let c = c.clone();
                tokio::spawn(async move { c.call(Kind::Write, &[ms, 7], Duration::from_secs(5)).await })
            })
            .collect();
        for (call, ms) in calls.into_iter().zip([60u8, 1, 30, 0]) {
            assert_eq!(call.await.unwrap().unwrap(), vec![ms, 7]);
        }
        match c.call(Kind::Read, &[], Duration::from_secs(5)).await {
            Err(StreamError::Remote(why)) => assert_eq!(why, "empty Read"),
            other => panic!("{other:?}"),
        }
        match c.call(Kind::Vote, &[200], Duration::from_millis(20)).await {
            Err(StreamError::Timeout(_)) => {}
            other => panic!("{other:?}"),
        }
        // A late answer to a call that timed out is dropped; the stream goes on.
        assert_eq!(
            c.call(Kind::Append, &[0], Duration::from_secs(5)).await.unwrap(),
            vec![0]
        );
    }

    #[tokio::test]
    async fn a_broken_connection_fails_its_waiting_calls_as_lost() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let c = Arc::new(Conn::start(a));
        let waiting = {
            let c = c.clone();
            tokio::spawn(async move { c.call(Kind::Write, &[1], Duration::from_secs(5)).await })
        };
        // The peer reads the request, then goes away without answering.
        let mut b = b;
        let mut head = [0u8; 13];
        b.read_exact(&mut head).await.unwrap();
        drop(b);
        match waiting.await.unwrap() {
            Err(StreamError::Lost(_)) => {}
            other => panic!("{other:?}"),
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.usable() {
            assert!(Instant::now() < deadline, "the connection still looks usable");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_malformed_frame_closes_the_server_side_without_a_panic() {
        for bad in [
            // A length beyond the limit.
            ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec(),
            // Shorter than its own header.
            3u32.to_le_bytes().to_vec(),
            // A truncated frame, then the end.
            [20u32.to_le_bytes().to_vec(), vec![1, 2, 3]].concat(),
        ] {
            let (mut a, b) = tokio::io::duplex(1 << 16);
            let handler: Handler = Arc::new(|_, b| Box::pin(async move { Ok(b) }));
            let server = tokio::spawn(serve(b, handler, || true));
            a.write_all(&bad).await.unwrap();
            a.shutdown().await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .expect("the server ends")
                .unwrap();
        }
        // An unknown request code is answered with an error, and the stream goes on.
        let (a, b) = tokio::io::duplex(1 << 16);
        let handler: Handler = Arc::new(|_, b| Box::pin(async move { Ok(b) }));
        let _server = tokio::spawn(serve(b, handler, || true));
        let (mut rd, mut wr) = tokio::io::split(a);
        wr.write_all(&encode(9, 77, b"x")).await.unwrap();
        wr.write_all(&encode(10, Kind::Read as u8, b"y")).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(read_frame(&mut rd).await.unwrap().unwrap());
        }
        got.sort();
        assert_eq!(got[0], (9, FAILED, b"unknown request code 77".to_vec()));
        assert_eq!(got[1], (10, OK, b"y".to_vec()));
    }

    #[tokio::test]
    async fn a_revoked_peer_is_served_no_further_request() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let handler: Handler = Arc::new(|_, b| Box::pin(async move { Ok(b) }));
        let server = tokio::spawn(serve(b, handler, || false));
        let c = Conn::start(a);
        match c.call(Kind::Write, &[1], Duration::from_secs(5)).await {
            Err(StreamError::Lost(_)) => {}
            other => panic!("{other:?}"),
        }
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
