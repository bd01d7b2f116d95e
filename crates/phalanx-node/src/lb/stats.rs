//! HTTP mode's request counters: per balancer the requests and the proxy's own answers (by
//! status), per backend its responses, 5xx, failed tries, a latency histogram (time to the
//! response head) and the requests of the last whole second. Behind one mutex held for
//! microseconds (the queue's length is an atomic the proxy keeps); read by `phalanx balancer status` and `/metrics`.

use hyper::StatusCode;
use phalanx_core::lb::BackendId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The latency histogram's upper bounds (seconds; +Inf follows).
pub const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One backend's HTTP counters as status shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpBackendStatus {
    pub responses_total: u64,
    pub responses_5xx_total: u64,
    /// Tries that got no response (connection refused, reset, closed).
    pub failed_tries_total: u64,
    /// Responses in the last whole second.
    pub req_per_s: u64,
    /// Per bucket of [`BUCKETS`] (+Inf last), not cumulative.
    pub latency_buckets: Vec<u64>,
    /// The latencies' sum, microseconds.
    pub latency_sum_us: u64,
}

/// A balancer's HTTP counters as status shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpStatus {
    /// Every request answered (by a backend or by the proxy).
    pub requests_total: u64,
    /// The proxy's own answers by status (400, 408, 431, 502, 503, 504).
    pub proxy_answers: BTreeMap<u16, u64>,
    /// Requests waiting now for a backend under `max_conn`.
    #[serde(default)]
    pub queued: u64,
    pub backends: BTreeMap<String, HttpBackendStatus>,
}

#[derive(Default)]
struct Backend {
    name: String,
    status: HttpBackendStatus,
    /// (the second, its count, the count of the second before).
    window: (u64, u64, u64),
}

/// The counters of one balancer.
pub struct Stats {
    /// Requests waiting now in the max_conn queue (the proxy counts them here).
    pub queued: AtomicUsize,
    epoch: Instant,
    inner: Mutex<(HttpStatus, BTreeMap<BackendId, Backend>)>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            queued: AtomicUsize::new(0),
            epoch: Instant::now(),
            inner: Mutex::new(Default::default()),
        }
    }
}

impl Stats {
    fn with<R>(&self, f: impl FnOnce(&mut HttpStatus, &mut BTreeMap<BackendId, Backend>) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (s, b) = &mut *g;
        f(s, b)
    }

    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// A backend answered with `status` after `latency`.
    pub fn response(&self, id: BackendId, backend: &str, status: StatusCode, latency: Duration) {
        let now = self.second();
        self.with(|s, bs| {
            s.requests_total += 1;
            let b = entry(bs, id, backend);
            b.status.responses_total += 1;
            if status.is_server_error() {
                b.status.responses_5xx_total += 1;
            }
            let secs = latency.as_secs_f64();
            if b.status.latency_buckets.is_empty() {
                b.status.latency_buckets = vec![0; BUCKETS.len() + 1];
            }
            let at = BUCKETS.iter().position(|le| secs <= *le).unwrap_or(BUCKETS.len());
            b.status.latency_buckets[at] += 1;
            b.status.latency_sum_us += latency.as_micros() as u64;
            roll(&mut b.window, now);
            b.window.1 += 1;
        })
    }

    /// A try at `backend` got no response.
    pub fn backend_error(&self, id: BackendId, backend: &str) {
        self.with(|_, bs| entry(bs, id, backend).status.failed_tries_total += 1)
    }

    /// The proxy answered by itself.
    pub fn proxy_error(&self, status: StatusCode) {
        self.with(|s, _| {
            s.requests_total += 1;
            *s.proxy_answers.entry(status.as_u16()).or_default() += 1;
        })
    }

    pub fn status(&self) -> HttpStatus {
        let now = self.second();
        self.with(|s, bs| {
            let mut out = s.clone();
            out.queued = self.queued.load(Ordering::Relaxed) as u64;
            for b in bs.values_mut() {
                roll(&mut b.window, now);
                let mut st = b.status.clone();
                st.req_per_s = b.window.2;
                out.backends.insert(b.name.clone(), st);
            }
            out
        })
    }
}

/// The counters of backend `id` (its name copied only the first time).
fn entry<'a>(bs: &'a mut BTreeMap<BackendId, Backend>, id: BackendId, name: &str) -> &'a mut Backend {
    bs.entry(id).or_insert_with(|| Backend {
        name: name.to_string(),
        ..Backend::default()
    })
}

/// Move the one-second window to `now`.
fn roll(w: &mut (u64, u64, u64), now: u64) {
    if w.0 == now {
        return;
    }
    *w = (now, 0, if now == w.0 + 1 { w.1 } else { 0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_fill_the_histogram_and_errors_are_counted_apart() {
        let s = Stats::default();
        s.response(BackendId(1), "a", StatusCode::OK, Duration::from_micros(500));
        s.response(BackendId(1), "a", StatusCode::BAD_GATEWAY, Duration::from_millis(30));
        s.response(BackendId(1), "a", StatusCode::OK, Duration::from_secs(60));
        s.backend_error(BackendId(1), "a");
        s.proxy_error(StatusCode::SERVICE_UNAVAILABLE);
        let st = s.status();
        assert_eq!(st.requests_total, 4);
        assert_eq!(st.proxy_answers, BTreeMap::from([(503, 1)]));
        let a = &st.backends["a"];
        assert_eq!(
            (a.responses_total, a.responses_5xx_total, a.failed_tries_total),
            (3, 1, 1)
        );
        assert_eq!(a.latency_buckets.len(), BUCKETS.len() + 1);
        assert_eq!(a.latency_buckets[0], 1, "≤ 1 ms");
        assert_eq!(a.latency_buckets[5], 1, "≤ 50 ms");
        assert_eq!(a.latency_buckets[BUCKETS.len()], 1, "+Inf");
        let mut w = (5, 7, 3);
        roll(&mut w, 6);
        assert_eq!(w, (6, 0, 7));
        roll(&mut w, 9);
        assert_eq!(w, (9, 0, 0));
    }
}
