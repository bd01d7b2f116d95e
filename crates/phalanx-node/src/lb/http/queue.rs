//! HTTP mode's leases and queue: a request takes a lease on a backend (the sticky cookie's if
//! valid, else the balancer's pick) and holds it until its response body ends ([`Held`]); when
//! every backend that could take it is at `max_conn`, it waits in a bounded queue for a lease
//! to end ([`Freed`]), up to `queue_timeout`.

use super::{Failure, Shared};
use crate::lb::pool::Lease;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use phalanx_core::config::HttpConfig;
use phalanx_core::lb::cookie::{self, StickyCookie, Verdict};
use phalanx_core::lb::BackendId;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;

/// A backend leased for one request (the lease, held until the response ends), and the
/// cookie its response sets.
pub(super) struct Picked {
    pub(super) held: Held,
    pub(super) id: BackendId,
    pub(super) name: String,
    pub(super) address: SocketAddr,
    pub(super) set_cookie: Option<String>,
}

impl Picked {
    fn new(lease: Lease, set_cookie: Option<String>, freed: &Arc<Freed>) -> Picked {
        Picked {
            id: lease.id,
            name: lease.name.clone(),
            address: lease.address,
            held: Held::new(lease, freed.clone()),
            set_cookie,
        }
    }
}

/// Wakes queued requests when a lease ends: one (any of them can use the slot), or all while a
/// sticky request waits (only it can use a slot on its backend, and it may not be first).
#[derive(Default)]
pub(super) struct Freed {
    pub(super) notify: Notify,
    pub(super) sticky_waiting: AtomicUsize,
}

impl Freed {
    fn released(&self) {
        if self.sticky_waiting.load(Ordering::Acquire) > 0 {
            self.notify.notify_waiters();
        } else {
            self.notify.notify_one();
        }
    }
}

/// Why no lease could be taken now.
#[derive(PartialEq)]
pub(super) enum Blocked {
    /// No backend takes a new request now (all down, or all at max_conn).
    Any,
    /// The cookie's backend is valid but at max_conn.
    Sticky,
}

/// Lease a backend: the cookie's if it is valid and its backend takes sticky traffic, else a
/// pick (never `avoid`); when every backend that could take it is at `max_conn`, wait in the
/// queue.
pub(super) async fn acquire(
    shared: &Shared,
    http: &HttpConfig,
    sticky: Option<&cookie::CookieConfig>,
    value: Option<&str>,
    now_s: u64,
    avoid: Option<BackendId>,
    keys: &Keys,
) -> Result<Picked, Failure> {
    let deadline = tokio::time::Instant::now() + http.queue_timeout;
    let mut queued: Option<QueueSlot<'_>> = None;
    let mut sticky_slot: Option<QueueSlot<'_>> = None;
    loop {
        let freed = shared.freed.notify.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        match try_lease(shared, sticky, value, now_s, avoid, keys) {
            Ok(p) => return Ok(p),
            Err(Blocked::Sticky) if sticky_slot.is_none() => {
                shared.freed.sticky_waiting.fetch_add(1, Ordering::AcqRel);
                sticky_slot = Some(QueueSlot(&shared.freed.sticky_waiting));
            }
            Err(_) => {}
        }
        // Nothing up at all: no use waiting.
        if !shared.pool.any_serving(None) {
            return Err(Failure::NoBackend);
        }
        if queued.is_none() {
            let waiting = &shared.stats.queued;
            if waiting.fetch_add(1, Ordering::AcqRel) >= http.queue as usize {
                waiting.fetch_sub(1, Ordering::AcqRel);
                return Err(Failure::QueueFull);
            }
            queued = Some(QueueSlot(waiting));
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            return Err(Failure::QueueTimeout);
        }
    }
}

/// A place in the queue, given back when dropped.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One try at a lease (see [`acquire`]).
/// What a pick may be keyed on: the client's address (source hashing and affinity) and the
/// request's hash key (`uri`, `header:NAME`, `cookie:NAME`).
pub(super) struct Keys {
    pub client: std::net::IpAddr,
    pub hash: Option<Vec<u8>>,
}

impl Keys {
    fn lease(&self, shared: &Shared, avoid: Option<BackendId>) -> Option<crate::lb::pool::Lease> {
        shared.pool.lease_keyed(Some(self.client), self.hash.as_deref(), avoid)
    }
}

fn try_lease(
    shared: &Shared,
    sticky: Option<&cookie::CookieConfig>,
    value: Option<&str>,
    now_s: u64,
    avoid: Option<BackendId>,
    keys: &Keys,
) -> Result<Picked, Blocked> {
    let Some(c) = sticky else {
        let lease = keys.lease(shared, avoid).ok_or(Blocked::Any)?;
        return Ok(Picked::new(lease, None, &shared.freed));
    };
    let mut verdict = Verdict::Repick(cookie::Why::NoCookie);
    let stuck = shared.pool.lease_chosen(|views| {
        verdict = cookie::judge(value, c, now_s, views);
        match verdict {
            Verdict::Stick { index, .. } => Some(index),
            Verdict::Repick(_) => None,
        }
    });
    match (stuck, verdict) {
        (Some(lease), Verdict::Stick { cookie, refresh, .. }) => {
            let set_cookie = refresh.then(|| {
                cookie::set_cookie(
                    c,
                    &StickyCookie {
                        last_s: now_s,
                        ..cookie
                    },
                )
            });
            Ok(Picked::new(lease, set_cookie, &shared.freed))
        }
        // Stuck to a backend at max_conn: wait for it (the queue), not another.
        (None, Verdict::Stick { .. }) => Err(Blocked::Sticky),
        _ => {
            let lease = keys.lease(shared, avoid).ok_or(Blocked::Any)?;
            let set_cookie = Some(cookie::set_cookie(c, &StickyCookie::new(lease.id, now_s)));
            Ok(Picked::new(lease, set_cookie, &shared.freed))
        }
    }
}

/// A response body that holds its backend's lease until it ends (then a queued request may
/// go).
pub(super) struct Held {
    /// None: held by a tunnel, not a body.
    inner: Option<Incoming>,
    lease: Option<Lease>,
    freed: Arc<Freed>,
    /// How long the body may go without data, and the timer of that.
    stall: Duration,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A backend's response body that went quiet (the client's connection is then closed: its
/// response cannot be completed).
#[derive(Debug, thiserror::Error)]
#[error("the backend sent no body data for {} ms", .0.as_millis())]
pub(super) struct Stalled(Duration);

impl Held {
    /// Hold `lease` until the body given to [`Held::stream`] ends (or, given
    /// none, until dropped: a tunnel's).
    pub(super) fn new(lease: Lease, freed: Arc<Freed>) -> Held {
        Held {
            inner: None,
            lease: Some(lease),
            freed,
            stall: Duration::ZERO,
            idle: None,
        }
    }

    /// Pass `body` on, cut if it sends nothing for `stall`.
    pub(super) fn stream(&mut self, body: Incoming, stall: Duration) {
        self.inner = Some(body);
        self.stall = stall;
        self.idle = Some(Box::pin(tokio::time::sleep(stall)));
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            drop(lease);
            self.freed.released();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

impl Body for Held {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = this.idle.as_mut() {
                    idle.as_mut().reset(tokio::time::Instant::now() + this.stall);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.release();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let stalled = this.idle.as_mut().is_some_and(|idle| idle.as_mut().poll(cx).is_ready());
                if !stalled {
                    return Poll::Pending;
                }
                this.inner = None;
                this.release();
                Poll::Ready(Some(Err(Stalled(this.stall).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
