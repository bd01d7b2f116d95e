//! The memcached listener of a node's session store: it binds where `[sessions]` says (this
//! node's `listen` address, else its API host IP and `port`; and, with `vip`, that resource's
//! address, bound with `IP_FREEBIND` on every node so that it answers wherever the VIP is up),
//! follows config changes, and serves each connection (over TLS 1.3 with `[sessions] tls`, the
//! node's certificate of the cluster CA): the parser (`phalanx_core::sessions::
//! protocol`) turns bytes into requests; a write goes through the group (`Sessions::submit`)
//! and is answered with what applying it gave; a read waits for a read point and is answered
//! from the local copy (`engine::answer_read`; one that would change the store, an `mg` taking
//! a stale item's recache token, is logged like a write); `version`, `verbosity`, `stats` and `mn` are
//! answered here. Requests of a connection are answered in order, and a connection has one
//! submission of writes in flight at a time: `noreply` writes parsed together are submitted
//! together (one batch keeps their order) without waiting, and the next request that answers
//! waits for them first, so a read after them sees them. A write that cannot be committed answers `SERVER_ERROR` with the reason
//! (never a false STORED); a `noreply` one closes the connection, since its client cannot be
//! told otherwise.

use super::{ReadPoint, Sessions, SessionsError, Submitted};
use phalanx_core::sessions::engine::{answer_read, is_write};
use phalanx_core::sessions::protocol::{self, Limits, MetaRequest, Parsed, Request, TextRequest};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on `noreply` writes gathered by one connection before they are submitted.
const MAX_QUEUED: usize = 1024;
/// How long a `[sessions] tls` client may take over its handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Where this node's store listens under `[sessions]`. The witness votes in the store's group
/// but serves no clients unless `listen` names it: it is a tie-breaker, often on a host that runs
/// other things (a memcached of its own on 11211, say).
fn addresses(node: &crate::node::Node) -> Vec<SocketAddr> {
    let config = node.config();
    let Some(s) = config.sessions.as_ref() else {
        return Vec::new();
    };
    if node.id == crate::raft::WITNESS_ID && !s.listen.contains_key(&node.name) {
        return Vec::new();
    }
    let mut out = vec![s
        .listen
        .get(&node.name)
        .copied()
        .unwrap_or_else(|| SocketAddr::new(node.api.ip(), s.port))];
    if let Some(ip) = s.vip.as_ref().and_then(|v| vip_address(&config, v)) {
        out.push(SocketAddr::new(ip, s.port));
    }
    out.sort();
    out.dedup();
    out
}

/// The addresses a node's certificate names for its session store's clients under `config`
/// (with `[sessions] tls` they check the certificate against the address they dialled): its
/// `listen` address and the `vip` resource's, if any.
pub fn cert_ips(config: &phalanx_core::Config, node: &str) -> Vec<std::net::IpAddr> {
    let Some(s) = config.sessions.as_ref() else {
        return Vec::new();
    };
    s.listen
        .get(node)
        .map(|a| a.ip())
        .into_iter()
        .chain(s.vip.as_ref().and_then(|v| vip_address(config, v)))
        .collect()
}

/// The address of `vip` resource `name` (its `address` parameter, without the prefix length).
fn vip_address(config: &phalanx_core::Config, name: &str) -> Option<std::net::IpAddr> {
    let address = config.resources.primitives.get(name)?.params.get("address")?;
    address.split('/').next()?.parse().ok()
}

/// Keep a listener on each address of [`addresses`] while the node runs.
pub async fn run(s: Arc<Sessions>, node: Weak<crate::node::Node>) {
    let mut running: BTreeMap<SocketAddr, tokio::task::AbortHandle> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(n) = node.upgrade() else { break };
        let want = addresses(&n);
        *s.allow.lock().unwrap_or_else(|p| p.into_inner()) = n
            .config()
            .sessions
            .as_ref()
            .map(|c| c.allow.clone())
            .unwrap_or_default();
        drop(n);
        running.retain(|addr, task| {
            let keep = want.contains(addr) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        *s.listening.lock().unwrap_or_else(|p| p.into_inner()) = running.keys().copied().collect();
        for addr in want {
            if running.contains_key(&addr) {
                continue;
            }
            // Registered with, and served on, the clients' runtime.
            let listened = super::clients_runtime().and_then(|rt| {
                let _in = rt.enter();
                crate::lb::listen_freebind(addr).map(|l| (rt.clone(), l))
            });
            match listened {
                Ok((rt, l)) => {
                    tracing::info!(%addr, "session store listening (memcached protocol)");
                    running.insert(addr, rt.spawn(accept(s.clone(), l)).abort_handle());
                    s.listening.lock().unwrap_or_else(|p| p.into_inner()).insert(addr);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "session store: cannot listen (will retry)"),
            }
        }
    }
    for (_, t) in running {
        t.abort();
    }
}

async fn accept(s: Arc<Sessions>, l: tokio::net::TcpListener) {
    loop {
        match l.accept().await {
            Ok((stream, peer)) => {
                // `[sessions] allow`: anyone else is disconnected before a byte is read.
                let allowed = {
                    let allow = s.allow.lock().unwrap_or_else(|p| p.into_inner());
                    phalanx_core::config::SessionsConfig::allows_in(&allow, peer.ip())
                };
                if !allowed {
                    s.counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "session store: a client not in [sessions] allow, disconnected");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                let tls = s.config().is_some_and(|c| c.tls).then(|| s.tls.acceptor()).flatten();
                tokio::spawn(async move {
                    s.counters.connections.fetch_add(1, Ordering::Relaxed);
                    match tls {
                        None => connection(&s, stream).await,
                        // `[sessions] tls`: the handshake in this connection's task, bounded.
                        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => connection(&s, stream).await,
                            Ok(Err(e)) => {
                                s.counters.refused.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%peer, error = %e, "session store: TLS handshake failed");
                            }
                            Err(_) => {
                                s.counters.refused.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%peer, "session store: no TLS handshake in time");
                            }
                        },
                    }
                    s.counters.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "session store: accept");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn server_error(e: &SessionsError) -> Vec<u8> {
    format!("SERVER_ERROR {e}\r\n").into_bytes()
}

/// One connection's state between requests.
struct Conn {
    /// `noreply` writes parsed and not yet submitted.
    unsent: Vec<Request>,
    /// The submission of `noreply` writes in flight, if any.
    inflight: Option<Submitted>,
    /// The read point of reads parsed together (reused until a write intervenes).
    point: Option<ReadPoint>,
}

impl Conn {
    /// Submit the unsent `noreply` writes (after the submission in flight is committed: one
    /// at a time keeps their order).
    async fn flush(&mut self, s: &Sessions) -> Result<(), SessionsError> {
        if self.unsent.is_empty() {
            return Ok(());
        }
        self.wait().await?;
        self.inflight = Some(s.submit(std::mem::take(&mut self.unsent)).await?);
        Ok(())
    }

    /// Wait for the submission in flight.
    async fn wait(&mut self) -> Result<(), SessionsError> {
        match self.inflight.take() {
            Some(rx) => rx.await.unwrap_or(Err(SessionsError::Stopped)).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Submit and wait for every `noreply` write: what a request that answers does first.
    async fn settle(&mut self, s: &Sessions) -> Result<(), SessionsError> {
        self.flush(s).await?;
        self.wait().await
    }
}

fn noreply(req: &Request) -> bool {
    matches!(
        req,
        Request::Text(
            TextRequest::Store { noreply: true, .. }
                | TextRequest::Delete { noreply: true, .. }
                | TextRequest::Arith { noreply: true, .. }
                | TextRequest::Touch { noreply: true, .. }
                | TextRequest::FlushAll { noreply: true, .. }
        )
    )
}

/// Answer one request into `out`; false: close the connection after writing `out`.
async fn handle(s: &Sessions, c: &mut Conn, req: Request, out: &mut Vec<u8>) -> bool {
    if !is_write(&req) {
        if let Err(e) = c.settle(s).await {
            out.extend(server_error(&e));
            return false;
        }
        let local = matches!(
            req,
            Request::Text(
                TextRequest::Version | TextRequest::Verbosity { .. } | TextRequest::Stats { .. } | TextRequest::Quit
            ) | Request::Meta(MetaRequest::Noop)
        );
        let now = if local {
            crate::mesh::unix_ms()
        } else {
            let point = match c.point {
                Some(p) => p,
                None => match s.read_point().await {
                    Ok(p) => *c.point.insert(p),
                    Err(e) => {
                        out.extend(server_error(&e));
                        return true;
                    }
                },
            };
            point.now_ms
        };
        let answer = {
            let sm = s.sm.lock();
            if let Request::Text(TextRequest::Get { keys, .. }) = &req {
                let hits = keys.iter().filter(|k| sm.store.get(k, now).is_some()).count();
                s.counters.gets.fetch_add(keys.len() as u64, Ordering::Relaxed);
                s.counters.get_hits.fetch_add(hits as u64, Ordering::Relaxed);
            }
            answer_read(&sm.store, &req, now)
        };
        if let Some(a) = answer {
            out.extend(a.bytes);
            return !a.close;
        }
        // A read that changes the store (an `mg` winning a stale item's recache token): logged
        // like a write, so that one reader wins it cluster-wide.
    }
    c.point = None;
    if noreply(&req) {
        c.unsent.push(req);
        if c.unsent.len() >= MAX_QUEUED {
            if let Err(e) = c.flush(s).await {
                out.extend(server_error(&e));
                return false;
            }
        }
        return true;
    }
    if let Err(e) = c.settle(s).await {
        out.extend(server_error(&e));
        return false;
    }
    match s.write(req).await {
        Ok(bytes) => out.extend(bytes),
        Err(e) => out.extend(server_error(&e)),
    }
    true
}

/// Serve one client connection until it closes, sends `quit`, or breaks the protocol where
/// memcached closes.
async fn connection<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &Sessions, mut stream: S) {
    let limits = Limits {
        max_item_size: s
            .config()
            .map_or(phalanx_core::config::DEFAULT_MAX_ITEM_SIZE, |c| c.max_item_size) as usize,
        ..Limits::default()
    };
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut skip = 0usize;
    let mut c = Conn {
        unsent: Vec::new(),
        inflight: None,
        point: None,
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut open = true;
        let mut at = 0usize;
        while open {
            if skip > 0 {
                let k = skip.min(buf.len() - at);
                at += k;
                skip -= k;
                if skip > 0 {
                    break;
                }
            }
            match protocol::parse(&buf[at..], &limits) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Complete { request, consumed }) => {
                    at += consumed;
                    open = Box::pin(handle(s, &mut c, request, &mut out)).await;
                }
                Ok(Parsed::Rejected {
                    error,
                    silent,
                    consumed,
                }) => {
                    at += consumed;
                    if !silent {
                        out.extend_from_slice(error.reply());
                    }
                    open = !error.closes();
                }
                Ok(Parsed::Skip {
                    error,
                    silent,
                    consumed,
                    bytes,
                }) => {
                    at += consumed;
                    if !silent {
                        out.extend_from_slice(error.reply());
                    }
                    skip = bytes;
                }
                Err(e) => {
                    out.extend_from_slice(e.reply());
                    open = false;
                }
            }
        }
        buf.drain(..at);
        // Reads parsed in a later read of the socket may follow a write acknowledged since.
        c.point = None;
        let flushed = if open { c.flush(s).await } else { c.settle(s).await };
        if let Err(e) = flushed {
            // A `noreply` write was not committed: its client cannot be told but by closing.
            out.extend(server_error(&e));
            open = false;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if !open {
            break;
        }
    }
    let _ = stream.shutdown().await;
}
