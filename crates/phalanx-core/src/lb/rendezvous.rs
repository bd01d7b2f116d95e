//! Consistent placement by weighted rendezvous (highest random weight) hashing: for a key,
//! every eligible backend draws `u = hash(key, backend) / 2^64` and scores `-ln(u) / weight`;
//! the lowest score wins. Each backend wins a share of keys equal to its share of the weight,
//! and when a backend leaves only the keys it held move (spread over the others in proportion
//! to weight); every other key keeps its backend — the minimum movement possible.
//!
//! Why rendezvous and not a ring or jump hash: jump hash only removes the *last* bucket and has
//! no weights; a ring needs many virtual nodes per backend for an even spread (its share error
//! is about 1/sqrt(points)), must be rebuilt whenever a weight changes (slowstart changes them
//! continuously) and depends on how the points were laid out. Rendezvous keeps no state, needs
//! no rebuild, is independent of slice order, and its spread is as even as the keys are. It
//! costs one hash per eligible backend per pick, fine for the tens of backends a balancer has.
//!
//! `-ln(u)` is computed as `64 - log2(h)` in 16.16 fixed point with integers only (`ln 2` is
//! a common factor and cancels), so the result is bit-identical on every platform — no libm.

use super::backend::Backend;
use super::hash::combine;

/// `log2(h)` in 16.16 fixed point (h ≥ 1; 0 counts as 1). Integer only: the integer part
/// from the leading zeros, 16 fraction bits by repeated squaring of the mantissa kept in Q1.31
/// (so every square fits a u64). Truncation makes the last bit approximate, but identically so
/// on every platform, which is what placement needs.
pub(crate) fn log2_q16(h: u64) -> u32 {
    let h = h.max(1);
    let lz = h.leading_zeros();
    let int = 63 - lz;
    // The top 32 bits of the normalised value: x / 2^31 in [1, 2).
    let mut x = (h << lz) >> 32;
    let mut frac = 0u32;
    for bit in (0..16).rev() {
        x = (x * x) >> 31;
        if x >= 1 << 32 {
            x >>= 1;
            frac |= 1 << bit;
        }
    }
    (int << 16) | frac
}

/// `-log2(h / 2^64)` in 16.16 fixed point: in 1..=64·2^16, never 0.
fn neg_log2_q16(h: u64) -> u64 {
    (64u64 << 16) - u64::from(log2_q16(h))
}

/// The winning backend for `key_hash` among those that take new traffic and pass `ok`.
///
/// Equal scores go to the larger raw hash, then the smaller id. With that rule the winner among
/// equal weights is simply the largest hash (the fixed-point log is monotone), so that common
/// case skips the logarithms and gives exactly the same answer.
pub(crate) fn pick(backends: &[Backend], key_hash: u64, ok: impl Fn(usize) -> bool + Copy) -> Option<usize> {
    let eligible = |i: usize| backends[i].takes_new() && ok(i);
    let first = (0..backends.len()).find(|&i| eligible(i))?;
    let w0 = backends[first].eff_weight();
    let equal = (first..backends.len()).all(|i| !eligible(i) || backends[i].eff_weight() == w0);
    // (index, raw hash, score numerator d, weight): score = d / w, lower wins.
    let mut best: Option<(usize, u64, u64, u64)> = None;
    for i in first..backends.len() {
        if !eligible(i) {
            continue;
        }
        let b = &backends[i];
        let h = combine(key_hash, b.id.0);
        let (d, w) = if equal {
            (0, 1)
        } else {
            (neg_log2_q16(h), u64::from(b.eff_weight()))
        };
        let better = match best {
            None => true,
            Some((j, bh, bd, bw)) => {
                let (lhs, rhs) = (d * bw, bd * w);
                lhs < rhs || (lhs == rhs && (h > bh || (h == bh && b.id < backends[j].id)))
            }
        };
        if better {
            best = Some((i, h, d, w));
        }
    }
    best.map(|(i, ..)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::backend::BackendId;

    #[test]
    fn log2_fixed_point_is_accurate() {
        assert_eq!(log2_q16(1), 0);
        assert_eq!(log2_q16(0), 0);
        for k in 0..64 {
            assert_eq!(log2_q16(1 << k), k << 16);
        }
        for h in [3u64, 10, 1000, 123_456_789, u64::MAX] {
            let exact = (h as f64).log2() * 65536.0;
            let got = f64::from(log2_q16(h));
            assert!((got - exact).abs() < 4.0, "{h}: {got} vs {exact}");
        }
        assert_eq!(neg_log2_q16(u64::MAX), 1);
    }

    #[test]
    fn order_of_the_slice_does_not_matter() {
        let mut bs: Vec<Backend> = (0..5)
            .map(|i| Backend::new(BackendId::of(&format!("b{i}")), 1))
            .collect();
        let before: Vec<_> = (0..200u64)
            .map(|k| bs[pick(&bs, k * 7919, |_| true).unwrap()].id)
            .collect();
        bs.reverse();
        let after: Vec<_> = (0..200u64)
            .map(|k| bs[pick(&bs, k * 7919, |_| true).unwrap()].id)
            .collect();
        assert_eq!(before, after);
    }

    /// The equal-weights shortcut gives what the full computation gives.
    #[test]
    fn equal_weight_shortcut_matches_the_logarithms() {
        let bs: Vec<Backend> = (0..6)
            .map(|i| Backend::new(BackendId::of(&format!("b{i}")), 3))
            .collect();
        let fast: Vec<_> = (0..2000u64)
            .map(|k| pick(&bs, crate::lb::hash::fmix64(k), |_| true))
            .collect();
        // The reference: every score computed with its logarithm.
        let slow: Vec<_> = (0..2000u64)
            .map(|k| {
                let h = crate::lb::hash::fmix64(k);
                let mut best: Option<(usize, u64, u64)> = None;
                for (i, b) in bs.iter().enumerate().filter(|(_, b)| b.takes_new()) {
                    let hh = combine(h, b.id.0);
                    let d = neg_log2_q16(hh);
                    if best.is_none_or(|(_, bd, bh)| d < bd || (d == bd && hh > bh)) {
                        best = Some((i, d, hh));
                    }
                }
                best.map(|(i, ..)| i)
            })
            .collect();
        assert_eq!(fast, slow);
    }
}
