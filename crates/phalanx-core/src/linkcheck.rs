//! The arithmetic of `phalanx link-check` (issue 16): from what one node saw of one peer on one
//! link over a window — heartbeats received and expected (the peer numbers every round), those
//! that arrived out of order, and the round trips its heartbeats' echoes gave — the loss, the
//! round-trip percentiles, the jitter, a verdict against a loss threshold (seed 004's 99.9 %
//! delivery: loss ≤ 0.1 %), and what the cluster's `heartbeat_interval` × `dead_after` tolerate
//! at that loss: how often a link, and a node (every link at once), would be declared dead
//! though nothing failed. Pure: the window's figures come in.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The loss above which a link fails the check unless told otherwise (percent).
pub const DEFAULT_MAX_LOSS_PCT: f64 = 0.1;

/// What one node saw of one peer's heartbeats on one link during a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Heartbeats received (in order).
    pub received: u64,
    /// Heartbeats the peer sent on the link in the window, by their sequence numbers.
    pub expected: u64,
    /// Heartbeats that arrived after a later one (dropped as stale by the mesh).
    pub reorders: u64,
    /// Round trips measured from the echoes, in µs, in arrival order.
    pub rtts_us: Vec<u64>,
}

/// The check of one link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkReport {
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub reorders: u64,
    /// Round trip (ms); None without echoes (the peer runs an older phalanx).
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    /// Mean difference between consecutive round trips (ms).
    pub jitter_ms: Option<f64>,
    /// Whether the loss is within the threshold (and anything was heard at all).
    pub pass: bool,
    /// Expected false declarations of this link's death per day at the measured loss, with
    /// `dead_after` heartbeats lost in a row needed for one.
    pub false_down_per_day: f64,
}

/// Check one link's window against `max_loss_pct`, for heartbeats every `interval`, a link
/// dead after `dead_after` missed in a row.
pub fn check(w: &Window, max_loss_pct: f64, interval: Duration, dead_after: u32) -> LinkReport {
    let lost = w.expected.saturating_sub(w.received + w.reorders);
    let loss = if w.expected == 0 {
        1.0
    } else {
        lost as f64 / w.expected as f64
    };
    let mut sorted = w.rtts_us.clone();
    sorted.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let pct = |p: f64| -> Option<f64> {
        let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
        sorted.get(rank.min(sorted.len()).checked_sub(1)?).map(|v| ms(*v))
    };
    let jitter = (w.rtts_us.len() > 1).then(|| {
        let diffs: u64 = w.rtts_us.windows(2).map(|p| p[0].abs_diff(p[1])).sum();
        ms(diffs) / (w.rtts_us.len() - 1) as f64
    });
    LinkReport {
        received: w.received,
        expected: w.expected,
        lost,
        loss_pct: loss * 100.0,
        reorders: w.reorders,
        rtt_p50_ms: pct(50.0),
        rtt_p99_ms: pct(99.0),
        rtt_max_ms: sorted.last().map(|v| ms(*v)),
        jitter_ms: jitter,
        pass: w.expected > 0 && loss * 100.0 <= max_loss_pct,
        false_down_per_day: false_deaths_per_day(&[loss], interval, dead_after),
    }
}

/// Expected false deaths per day when every one of `losses` (one per link, as fractions) must
/// lose `dead_after` heartbeats in a row at once, losses independent: a run of misses starts
/// at a heartbeat with probability (1 - q)·q^k, q the chance that every link loses it.
pub fn false_deaths_per_day(losses: &[f64], interval: Duration, dead_after: u32) -> f64 {
    if losses.is_empty() || interval.is_zero() {
        return 0.0;
    }
    let q: f64 = losses.iter().map(|l| l.clamp(0.0, 1.0)).product();
    let beats = 86_400.0 / interval.as_secs_f64();
    beats * (1.0 - q) * q.powi(dead_after.max(1) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(100);

    #[test]
    fn loss_rtt_jitter_and_the_verdict() {
        let w = Window {
            received: 978,
            expected: 1000,
            reorders: 2,
            rtts_us: (1..=100).map(|i| i * 100).collect(),
        };
        let r = check(&w, DEFAULT_MAX_LOSS_PCT, I, 3);
        assert_eq!(r.lost, 20);
        assert!((r.loss_pct - 2.0).abs() < 1e-9);
        assert!(!r.pass);
        assert_eq!(
            (r.rtt_p50_ms, r.rtt_p99_ms, r.rtt_max_ms),
            (Some(5.0), Some(9.9), Some(10.0))
        );
        assert!((r.jitter_ms.unwrap() - 0.1).abs() < 1e-9);
        // 864,000 heartbeats a day, each starting a run of 3 losses with 0.98 · 0.02³.
        assert!((r.false_down_per_day - 864_000.0 * 0.98 * 8e-6).abs() < 1e-6);
        // A clean link passes; one that heard nothing fails.
        let clean = Window {
            received: 1000,
            expected: 1000,
            ..Window::default()
        };
        let r = check(&clean, DEFAULT_MAX_LOSS_PCT, I, 3);
        assert!(r.pass && r.lost == 0 && r.false_down_per_day == 0.0 && r.rtt_p50_ms.is_none());
        assert!(!check(&Window::default(), DEFAULT_MAX_LOSS_PCT, I, 3).pass);
        // 1 in 1,000 lost is the seed's 99.9 %: at the threshold, still a pass.
        let edge = Window {
            received: 999,
            expected: 1000,
            ..Window::default()
        };
        assert!(check(&edge, DEFAULT_MAX_LOSS_PCT, I, 3).pass);
    }

    #[test]
    fn redundant_links_multiply_the_odds_of_a_false_death() {
        let one = false_deaths_per_day(&[0.02], I, 3);
        let two = false_deaths_per_day(&[0.02, 0.02], I, 3);
        assert!(two < one / 1e5, "{one} vs {two}");
        assert_eq!(false_deaths_per_day(&[], I, 3), 0.0);
        assert_eq!(
            false_deaths_per_day(&[1.0], I, 3),
            0.0,
            "a dead link is not a false death"
        );
    }
}
