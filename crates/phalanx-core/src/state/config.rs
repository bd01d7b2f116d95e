//! The cluster's configuration as committed through Raft (`phalanx config apply`): every
//! version's text with its digest, author and time, the newest last. Every node runs the newest
//! one; a node's local file only bootstraps a brand-new cluster. A version is accepted only if it
//! parses, keeps the cluster's name (its heartbeats carry it) and, when the caller says which
//! version it read (`expect_version`), only if that is still the current one: two operators
//! applying at once cannot overwrite each other unseen.

use super::{Applied, ClusterState, Outcome, RejectReason};
use serde::{Deserialize, Serialize};

/// How many versions the state keeps (history, diff and rollback reach this far back).
pub const CONFIG_HISTORY: usize = 20;

/// One committed version of the cluster's configuration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// 1 for the bootstrap version, then one more per apply.
    pub version: u64,
    pub text: String,
    /// SHA-256 of `text`, hex (computed by the node that validated it).
    pub sha256: String,
    /// Who applied it (`user@host` as the CLI reports it, or `bootstrap (n1)`).
    pub author: String,
    /// When it was applied (unix ms, the applying node's clock).
    pub time_ms: u64,
}

/// Debug (logs of applied commands) shows the text with its secrets redacted.
impl std::fmt::Debug for ConfigRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigRecord")
            .field("version", &self.version)
            .field("text", &crate::config::secrets::redact(&self.text))
            .field("sha256", &self.sha256)
            .field("author", &self.author)
            .field("time_ms", &self.time_ms)
            .finish()
    }
}

impl ClusterState {
    /// The version every node runs, if one was committed.
    pub fn current_config(&self) -> Option<&ConfigRecord> {
        self.configs.last()
    }

    /// A committed version still kept in the history.
    pub fn config_version_record(&self, version: u64) -> Option<&ConfigRecord> {
        self.configs.iter().find(|c| c.version == version)
    }

    /// Commit `rec` as the next version (its `version` field is assigned here, in log order).
    pub(super) fn apply_config(&mut self, rec: &ConfigRecord, expect_version: Option<u64>) -> Applied {
        let current = self.current_config().map_or(0, |c| c.version);
        if let Some(expected) = expect_version {
            if expected != current {
                return Err(Outcome::Rejected(RejectReason::StaleConfig { expected, current }));
            }
        }
        let parsed = crate::config::parse(&rec.text).map_err(|e| {
            Outcome::Rejected(RejectReason::InvalidConfig {
                reason: e.0.first().map(|d| d.message.clone()).unwrap_or_default(),
            })
        })?;
        if let Some(old) = self.current_config() {
            if let Ok(old) = crate::config::parse(&old.text) {
                if old.cluster.name != parsed.cluster.name {
                    return Err(Outcome::Rejected(RejectReason::ClusterRenamed {
                        from: old.cluster.name,
                        to: parsed.cluster.name,
                    }));
                }
            }
            if old.sha256 == rec.sha256 && old.text == rec.text {
                return Ok(Outcome::Unchanged);
            }
        }
        self.configs.push(ConfigRecord {
            version: current + 1,
            ..rec.clone()
        });
        if self.configs.len() > CONFIG_HISTORY {
            let extra = self.configs.len() - CONFIG_HISTORY;
            self.configs.drain(..extra);
        }
        Ok(Outcome::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::*;

    const A: &str = "[cluster]\nname = \"c\"\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:7401\"]\n";

    fn apply(text: &str, expect: Option<u64>) -> Command {
        Command::ApplyConfig {
            record: ConfigRecord {
                version: 0,
                text: text.into(),
                sha256: format!("{:x}", text.len()),
                author: "ops@host".into(),
                time_ms: 5,
            },
            expect_version: expect,
        }
    }

    #[test]
    fn versions_count_up_in_log_order_and_stale_or_bad_applies_change_nothing() {
        let mut s = ClusterState::default();
        assert_eq!(s.apply(&apply(A, Some(0))), Outcome::Ok);
        assert_eq!(s.current_config().map(|c| c.version), Some(1));
        let b = A.replace("n1", "n9");
        assert_eq!(s.apply(&apply(&b, None)), Outcome::Ok);
        assert_eq!(
            s.current_config().map(|c| (c.version, c.text.as_str())),
            Some((2, b.as_str()))
        );
        let before = s.clone();
        // Read version 1, applied after 2 was committed: refused.
        assert_eq!(
            s.apply(&apply(A, Some(1))),
            Outcome::Rejected(RejectReason::StaleConfig {
                expected: 1,
                current: 2
            })
        );
        assert!(matches!(
            s.apply(&apply("[cluster]\nname = 3\n", None)),
            Outcome::Rejected(RejectReason::InvalidConfig { .. })
        ));
        assert!(matches!(
            s.apply(&apply(&b.replace("\"c\"", "\"other\""), None)),
            Outcome::Rejected(RejectReason::ClusterRenamed { .. })
        ));
        assert_eq!(s, before);
        // The same text again: nothing new.
        assert_eq!(s.apply(&apply(&b, None)), Outcome::Unchanged);
        assert_eq!(s.config_version_record(1).map(|c| c.text.as_str()), Some(A));
    }

    #[test]
    fn the_history_is_bounded() {
        let mut s = ClusterState::default();
        for i in 0..(CONFIG_HISTORY + 5) {
            let t = format!("{A}# {i}\n");
            assert_eq!(s.apply(&apply(&t, None)), Outcome::Ok);
        }
        assert_eq!(s.configs.len(), CONFIG_HISTORY);
        assert_eq!(s.configs[0].version, 6);
        assert_eq!(s.current_config().map(|c| c.version), Some(CONFIG_HISTORY as u64 + 5));
    }
}
