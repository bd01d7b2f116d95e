//! Selection: a [`Balancer`] holds one algorithm's small running state and picks a backend
//! index from a slice of [`Backend`] views. `pick` is deterministic given its inputs (the
//! slice, the request key, the random word and the balancer's own state), allocates nothing
//! on an unchanged backend set, and only ever returns a backend that takes new traffic (up,
//! weight above 0). Health fills the views in before it, and stickiness (see `sticky`) is
//! asked first: `pick` is for clients that are not stuck, or whose backend is gone.
//!
//! Tie breaking: round robin and leastconn scan from a cursor just past their last pick, so
//! equally loaded backends take turns; smooth weighted round robin breaks ties by slice order;
//! p2c prefers fewer in-flight requests, then its first (weight-proportional) draw;
//! rendezvous breaks (rare) score ties by the larger raw hash, then the smaller backend id.

use super::algorithm::Algorithm;
use super::backend::Backend;
use super::hash::{fmix64, stable_hash};
use super::rendezvous;
use super::weighted::Smooth;

/// One balancer's algorithm and its running state. Keep one per balancer (per proxy thread if
/// the proxy shards, at the cost of slightly less even turns across threads).
#[derive(Clone, Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    /// Where round robin, leastconn and the hash fallback start their next scan.
    cursor: usize,
    /// Smooth weighted round robin (also the fallback of a hash with no key).
    smooth: Smooth,
}

impl Balancer {
    pub fn new(algorithm: Algorithm) -> Self {
        Balancer {
            algorithm,
            cursor: 0,
            smooth: Smooth::default(),
        }
    }

    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    /// Pick a backend for a new request. `key` is the hashed request key (client address,
    /// URI, header or cookie value) for the hash algorithms and ignored by the others; a hash
    /// without a key (the header or cookie is absent) falls back to smooth weighted round
    /// robin, as HAProxy falls back to round robin. `rng_word` is a random 64-bit word read
    /// only by p2c (it is mixed first, so even a counter works). None: no backend takes new
    /// traffic.
    pub fn pick(&mut self, backends: &[Backend], key: Option<&[u8]>, rng_word: u64) -> Option<usize> {
        self.pick_filtered(backends, key, rng_word, None)
    }

    /// Like [`Balancer::pick`] but never `avoid` (a retry redispatched away from the backend
    /// that just failed). For consistent hashing this is the key's second choice. None when
    /// `avoid` is the only eligible backend.
    pub fn redispatch(
        &mut self,
        backends: &[Backend],
        key: Option<&[u8]>,
        rng_word: u64,
        avoid: usize,
    ) -> Option<usize> {
        self.pick_filtered(backends, key, rng_word, Some(avoid))
    }

    fn pick_filtered(
        &mut self,
        backends: &[Backend],
        key: Option<&[u8]>,
        rng_word: u64,
        avoid: Option<usize>,
    ) -> Option<usize> {
        let ok = |i: usize| Some(i) != avoid;
        match &self.algorithm {
            Algorithm::RoundRobin => self.round_robin(backends, ok),
            Algorithm::Weighted => self.smooth.pick(backends, ok),
            Algorithm::LeastConn => self.least_conn(backends, ok),
            Algorithm::P2c => p2c(backends, rng_word, ok),
            Algorithm::Hash(spec) => match key {
                None => self.smooth.pick(backends, ok),
                Some(k) if spec.consistent => rendezvous::pick(backends, stable_hash(k), ok),
                Some(k) => modulo(backends, stable_hash(k), ok),
            },
        }
    }

    /// The first eligible backend at or after the cursor; the cursor moves past it.
    fn round_robin(&mut self, backends: &[Backend], ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        let start = self.cursor.checked_rem(n)?;
        let chosen = (0..n)
            .map(|s| (start + s) % n)
            .find(|&i| backends[i].takes_new() && ok(i))?;
        self.cursor = chosen + 1;
        Some(chosen)
    }

    /// The eligible backend with the fewest in-flight requests per weight, the first such at or
    /// after the cursor; the cursor moves past it.
    fn least_conn(&mut self, backends: &[Backend], ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        let start = self.cursor.checked_rem(n)?;
        let mut best: Option<usize> = None;
        for i in (0..n).map(|s| (start + s) % n) {
            let b = &backends[i];
            if b.takes_new() && ok(i) && best.is_none_or(|j| less_loaded(b, &backends[j])) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.cursor = chosen + 1;
        Some(chosen)
    }
}

/// Is `a` strictly less loaded than `b`? Load is `(in_flight + 1) / weight` (the request about
/// to be sent counts), compared by cross-multiplication; with equal weights this is simply
/// fewer in-flight requests.
fn less_loaded(a: &Backend, b: &Backend) -> bool {
    let la = (u64::from(a.in_flight) + 1) * u64::from(b.eff_weight());
    let lb = (u64::from(b.in_flight) + 1) * u64::from(a.eff_weight());
    la < lb
}

/// A uniform-ish number below `n` from 32 random bits (Lemire's multiply-shift).
fn below(r: u32, n: u64) -> u64 {
    ((u128::from(r) * u128::from(n)) >> 32) as u64
}

/// The eligible backend (not `skip`) covering `target` in the cumulative weights, slice order.
fn by_weight(backends: &[Backend], target: u64, ok: impl Fn(usize) -> bool, skip: Option<usize>) -> Option<usize> {
    let mut acc = 0u64;
    for (i, b) in backends.iter().enumerate() {
        if !b.takes_new() || !ok(i) || Some(i) == skip {
            continue;
        }
        acc += u64::from(b.eff_weight());
        if target < acc {
            return Some(i);
        }
    }
    None
}

fn total_weight(backends: &[Backend], ok: impl Fn(usize) -> bool) -> u64 {
    let eligible = backends.iter().enumerate().filter(|(i, b)| b.takes_new() && ok(*i));
    eligible.map(|(_, b)| u64::from(b.eff_weight())).sum()
}

/// Power of two choices: draw two distinct eligible backends, each in proportion to weight,
/// and keep the one with fewer in-flight requests; on a tie the first draw, so at equal load
/// picks follow the weights exactly.
fn p2c(backends: &[Backend], rng_word: u64, ok: impl Fn(usize) -> bool + Copy) -> Option<usize> {
    let (a, b) = p2c_draws(backends, rng_word, ok)?;
    match b {
        Some(b) if backends[b].in_flight < backends[a].in_flight => Some(b),
        _ => Some(a),
    }
}

/// p2c's two draws (the second is None when only one backend is eligible).
fn p2c_draws(backends: &[Backend], rng_word: u64, ok: impl Fn(usize) -> bool + Copy) -> Option<(usize, Option<usize>)> {
    let total = total_weight(backends, ok);
    let r = fmix64(rng_word);
    let a = by_weight(backends, below((r >> 32) as u32, total), ok, None)?;
    let rest = total - u64::from(backends[a].eff_weight());
    if rest == 0 {
        return Some((a, None));
    }
    Some((a, by_weight(backends, below(r as u32, rest), ok, Some(a))))
}

/// Modulo hashing: the key's hash modulo the total eligible weight, mapped through the
/// cumulative weights in slice order. Even, but any change of the set or a weight moves most
/// keys (see the consistent option).
fn modulo(backends: &[Backend], key_hash: u64, ok: impl Fn(usize) -> bool + Copy) -> Option<usize> {
    let total = total_weight(backends, ok);
    if total == 0 {
        return None;
    }
    by_weight(backends, key_hash % total, ok, None)
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
