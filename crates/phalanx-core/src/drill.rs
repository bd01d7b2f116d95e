//! The arithmetic of failover drills (issue 16, `phalanx drill`): from the steady-state probes a
//! drill takes before, during and after the fault it causes, what the clients saw — the first
//! failed probe after the fault, the first success after that, the recovery time objective's
//! measure (RTO: first failure to first success), and how many probes failed. Pure: the samples
//! come with their times (ms since the drill's start).

use serde::{Deserialize, Serialize};

/// One probe: when it was sent (ms since the drill began) and whether the service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: u64,
    pub ok: bool,
}

/// What the probes of one run say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    pub probes: usize,
    /// Failed probes from the fault on.
    pub failed: usize,
    /// The first failed probe at or after the fault (ms since the drill began).
    pub first_failure_ms: Option<u64>,
    /// The first successful probe after that.
    pub recovered_ms: Option<u64>,
    /// recovered - first failure; 0 when no probe failed; None when the service never answered
    /// again before the probes stopped.
    pub rto_ms: Option<u64>,
}

/// Measure `samples` (in the order they were sent) for a fault caused at `fault_ms`.
pub fn measure(samples: &[Sample], fault_ms: u64) -> Measured {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at_ms >= fault_ms).collect();
    let failed = after.iter().filter(|s| !s.ok).count();
    let first_failure = after.iter().position(|s| !s.ok);
    let (first_failure_ms, recovered_ms, rto_ms) = match first_failure {
        None => (None, None, Some(0)),
        Some(i) => {
            let start = after[i].at_ms;
            let back = after[i..].iter().find(|s| s.ok).map(|s| s.at_ms);
            (Some(start), back, back.map(|b| b - start))
        }
    };
    Measured {
        probes: samples.len(),
        failed,
        first_failure_ms,
        recovered_ms,
        rto_ms,
    }
}

/// The p-th percentile (0..=100, nearest rank) of `values`; None when empty.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank.min(v.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(pattern: &str, every_ms: u64) -> Vec<Sample> {
        pattern
            .chars()
            .enumerate()
            .map(|(i, c)| Sample {
                at_ms: i as u64 * every_ms,
                ok: c == '+',
            })
            .collect()
    }

    #[test]
    fn rto_runs_from_the_first_failure_to_the_first_success_after_it() {
        // Probes every 10 ms; the fault at 30 ms; down from 50 ms, back at 130; one more blip.
        let m = measure(&samples("+++++--------++-+++", 10), 30);
        assert_eq!(m.first_failure_ms, Some(50));
        assert_eq!(m.recovered_ms, Some(130));
        assert_eq!(m.rto_ms, Some(80));
        assert_eq!(m.failed, 9);
        assert_eq!(m.probes, 19);
    }

    #[test]
    fn failures_before_the_fault_do_not_count_and_no_failure_is_zero() {
        let m = measure(&samples("--++++++", 10), 20);
        assert_eq!((m.rto_ms, m.failed, m.first_failure_ms), (Some(0), 0, None));
    }

    #[test]
    fn a_service_that_never_comes_back_has_no_rto() {
        let m = measure(&samples("+++-----", 10), 20);
        assert_eq!((m.first_failure_ms, m.recovered_ms, m.rto_ms), (Some(30), None, None));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[30, 10, 20], 50.0), Some(20));
        assert_eq!(percentile(&[30, 10, 20], 99.0), Some(30));
        assert_eq!(percentile(&[5], 0.0), Some(5));
    }
}
