//! Smooth weighted round robin, as nginx does it: every pick adds each eligible backend's
//! weight to its running `current`, takes the largest (the first in slice order on a tie) and
//! subtracts the total from it. Over any `sum(weights)` consecutive picks on an unchanged set
//! each backend is picked exactly `weight` times, and heavy backends are interleaved with
//! light ones rather than picked in bursts.
//!
//! The running values are kept per backend id, so a changed slice (added, removed or
//! reordered backends) keeps what it can; the vectors are reallocated only then, never on an
//! ordinary pick.

use super::backend::{Backend, BackendId};

/// The running state of a smooth weighted round robin.
#[derive(Clone, Debug, Default)]
pub(crate) struct Smooth {
    ids: Vec<BackendId>,
    current: Vec<i64>,
}

impl Smooth {
    /// Align the running values with `backends` (carrying them over by id).
    fn sync(&mut self, backends: &[Backend]) {
        if self.ids.len() == backends.len() && self.ids.iter().zip(backends).all(|(id, b)| *id == b.id) {
            return;
        }
        let current = backends
            .iter()
            .map(|b| {
                self.ids
                    .iter()
                    .position(|id| *id == b.id)
                    .map_or(0, |i| self.current[i])
            })
            .collect();
        self.current = current;
        self.ids = backends.iter().map(|b| b.id).collect();
    }

    /// Pick among the backends that take new traffic and pass `ok`. A backend that cannot take
    /// new traffic starts again from 0 when it comes back (no burst); one only skipped by `ok`
    /// (a redispatch avoiding it) keeps its place.
    pub(crate) fn pick(&mut self, backends: &[Backend], ok: impl Fn(usize) -> bool) -> Option<usize> {
        self.sync(backends);
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, b) in backends.iter().enumerate() {
            if !b.takes_new() {
                self.current[i] = 0;
                continue;
            }
            if !ok(i) {
                continue;
            }
            let w = i64::from(b.eff_weight());
            self.current[i] += w;
            total += w;
            if best.is_none_or(|j| self.current[i] > self.current[j]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u16]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Backend::new(BackendId(i as u64), *w))
            .collect()
    }

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let bs = backends(&[5, 1, 1]);
        let mut s = Smooth::default();
        let seq: Vec<usize> = (0..7).map(|_| s.pick(&bs, |_| true).unwrap()).collect();
        // nginx's documented order for weights 5,1,1: a a b a c a a.
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn exact_over_one_cycle_and_survives_reordering() {
        let mut bs = backends(&[3, 2, 1]);
        let mut s = Smooth::default();
        let mut counts = [0; 3];
        for _ in 0..60 {
            counts[bs[s.pick(&bs, |_| true).unwrap()].id.0 as usize] += 1;
        }
        assert_eq!(counts, [30, 20, 10]);
        bs.reverse();
        let mut counts = [0; 3];
        for _ in 0..60 {
            counts[bs[s.pick(&bs, |_| true).unwrap()].id.0 as usize] += 1;
        }
        assert_eq!(counts, [30, 20, 10]);
    }

    #[test]
    fn none_when_nothing_is_eligible() {
        let mut bs = backends(&[1, 0]);
        bs[0].state = crate::lb::BackendState::Drain;
        assert_eq!(Smooth::default().pick(&bs, |_| true), None);
        assert_eq!(Smooth::default().pick(&[], |_| true), None);
    }
}
