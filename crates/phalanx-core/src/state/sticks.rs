//! The balancers' stick tables as cluster state (issue 14, item 6): which backend each sticky
//! client (a source address) is on, so that after the balancer itself fails over, its clients
//! land on the same backends. A balancer keeps its own table for lookups and commits what
//! changed in batches (`Command::Stick`: new and re-stuck entries, and uses coarsened to a
//! fraction of `max_idle`), so the log carries one entry per batch, not one per connection.
//! Expiry runs on the batch's own time (`at_ms`, the proposer's clock, recorded in the log):
//! every replica drops the same entries.

use super::{Applied, ClusterState, Outcome, RejectReason, Touched};
use crate::lb::{StickConfig, StickEntry};

/// The most entries a batch may carry, and the largest table a balancer may keep.
pub const MAX_BATCH: usize = 10_000;
pub const MAX_CAPACITY: usize = 1_000_000;

impl ClusterState {
    /// A balancer's batch: merged entry by entry, then every expired entry dropped.
    pub(super) fn stick(
        &mut self,
        balancer: &str,
        at_ms: u64,
        cfg: &StickConfig,
        entries: &[(String, StickEntry)],
        touched: &mut Touched,
    ) -> Applied {
        if balancer.is_empty() || balancer.len() > super::balancers::MAX_NAME {
            return Err(Outcome::Rejected(RejectReason::BadName {
                what: "balancer".into(),
                max: super::balancers::MAX_NAME,
            }));
        }
        if entries.len() > MAX_BATCH || cfg.capacity == 0 || cfg.capacity > MAX_CAPACITY {
            return Err(Outcome::Rejected(RejectReason::BadStickBatch {
                entries: entries.len(),
                capacity: cfg.capacity,
            }));
        }
        if let Some((key, _)) = entries.iter().find(|(k, _)| k.len() > crate::lb::sticky::MAX_KEY_LEN) {
            return Err(Outcome::Rejected(RejectReason::BadName {
                what: format!("stick key {}…", key.chars().take(16).collect::<String>()),
                max: crate::lb::sticky::MAX_KEY_LEN,
            }));
        }
        let table = self.sticks.entry(balancer.to_string()).or_default();
        let mut changed = false;
        let mut mark = |key: String| {
            touched.sticks.insert((balancer.to_string(), key));
        };
        for (key, entry) in entries {
            // Checked above: a merge cannot fail.
            let Ok(m) = table.merge(cfg, key, *entry) else { continue };
            if m.changed {
                changed = true;
                mark(key.clone());
            }
            if let Some(k) = m.evicted {
                changed = true;
                mark(k);
            }
        }
        for k in table.expire_keys(cfg, at_ms) {
            changed = true;
            mark(k);
        }
        if table.is_empty() {
            self.sticks.remove(balancer);
        }
        Ok(if changed { Outcome::Ok } else { Outcome::Unchanged })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::*;
    use crate::lb::BackendId;

    fn batch(at_ms: u64, entries: &[(&str, u64, u64)]) -> Command {
        Command::Stick {
            balancer: "lb".into(),
            at_ms,
            config: StickConfig {
                max_idle_ms: Some(100),
                max_life_ms: None,
                capacity: 10,
            },
            entries: entries
                .iter()
                .map(|(k, b, seen)| {
                    (
                        k.to_string(),
                        StickEntry {
                            backend: BackendId(*b),
                            created_ms: 1,
                            last_seen_ms: *seen,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn batches_merge_and_expire_on_their_own_time_alike_everywhere() {
        let mut a = ClusterState::default();
        let mut touched = Touched::default();
        assert_eq!(
            a.apply_touching(&batch(10, &[("10.0.0.1", 1, 10), ("10.0.0.2", 2, 10)]), &mut touched),
            Outcome::Ok
        );
        assert_eq!(touched.sticks.len(), 2);
        assert_eq!(
            a.apply(&batch(20, &[("10.0.0.1", 1, 5)])),
            Outcome::Unchanged,
            "an older use"
        );
        a.apply(&batch(60, &[("10.0.0.1", 1, 60)]));
        let mut touched = Touched::default();
        a.apply_touching(&batch(115, &[]), &mut touched);
        assert_eq!(
            touched.sticks.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
            ["10.0.0.2"],
            "idle since 10, expired at 110"
        );
        assert_eq!(a.sticks["lb"].get("10.0.0.1").unwrap().backend, BackendId(1));
        a.apply(&batch(1000, &[]));
        assert!(a.sticks.is_empty(), "an empty table is dropped");
    }

    #[test]
    fn oversized_batches_and_keys_are_refused_unchanged() {
        let mut s = ClusterState::default();
        let long = "k".repeat(300);
        assert!(matches!(
            s.apply(&batch(1, &[(long.as_str(), 1, 1)])),
            Outcome::Rejected(RejectReason::BadName { .. })
        ));
        let mut big = batch(1, &[]);
        if let Command::Stick { config, .. } = &mut big {
            config.capacity = 0;
        }
        assert!(matches!(
            s.apply(&big),
            Outcome::Rejected(RejectReason::BadStickBatch { .. })
        ));
        assert_eq!(s, ClusterState::default());
    }
}
