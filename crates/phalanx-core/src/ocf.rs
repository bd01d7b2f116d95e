//! What an agent's exit code means (OCF 1.1, as Pacemaker reads it, with this project's
//! contract for hard errors): a pure mapping from (action, exit code, timed out) to an outcome
//! the controller acts on. The runner that produces the exit code lives in phalanx-node.

use serde::{Deserialize, Serialize};

/// An agent action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentAction {
    Start,
    Stop,
    Monitor,
    Promote,
    Demote,
    Reload,
    MetaData,
    ValidateAll,
}

impl AgentAction {
    /// The action's name on an agent's command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentAction::Start => "start",
            AgentAction::Stop => "stop",
            AgentAction::Monitor => "monitor",
            AgentAction::Promote => "promote",
            AgentAction::Demote => "demote",
            AgentAction::Reload => "reload",
            AgentAction::MetaData => "meta-data",
            AgentAction::ValidateAll => "validate-all",
        }
    }
}

pub const OCF_SUCCESS: i32 = 0;
pub const OCF_ERR_GENERIC: i32 = 1;
pub const OCF_ERR_INSTALLED: i32 = 5;
pub const OCF_ERR_CONFIGURED: i32 = 6;
pub const OCF_NOT_RUNNING: i32 = 7;
pub const OCF_RUNNING_PROMOTED: i32 = 8;
pub const OCF_FAILED_PROMOTED: i32 = 9;
pub const OCF_DEGRADED: i32 = 190;
pub const OCF_DEGRADED_PROMOTED: i32 = 191;

/// What a call's result means for the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// It worked; for a monitor: running (as a replica, for promotable resources).
    Ok,
    /// Running, but the agent reports it degraded (190): success, shown in status.
    Degraded,
    /// Running as primary (8), or degraded primary (191, `degraded` true).
    Promoted { degraded: bool },
    /// Cleanly not running (7): success for stop and probes, a failure for a monitor of a
    /// started resource.
    NotRunning,
    /// A failed primary (9).
    FailedPromoted,
    /// Exit 1–5: this node cannot run it (ban here).
    HardError,
    /// Exit 6: the configuration is wrong (ban everywhere until cleanup).
    Fatal,
    /// The call outlived its timeout and was killed.
    Timeout,
    /// Any other exit code, or killed by a signal: a failure.
    Unknown,
}

impl Verdict {
    /// Classify an exit code (None: killed by a signal).
    pub fn of(action: AgentAction, code: Option<i32>, timed_out: bool) -> Verdict {
        if timed_out {
            return Verdict::Timeout;
        }
        match code {
            Some(OCF_SUCCESS) => Verdict::Ok,
            Some(OCF_DEGRADED) => Verdict::Degraded,
            Some(OCF_RUNNING_PROMOTED) => Verdict::Promoted { degraded: false },
            Some(OCF_DEGRADED_PROMOTED) => Verdict::Promoted { degraded: true },
            Some(OCF_NOT_RUNNING) => Verdict::NotRunning,
            Some(OCF_FAILED_PROMOTED) => Verdict::FailedPromoted,
            Some(c) if (OCF_ERR_GENERIC..=OCF_ERR_INSTALLED).contains(&c) => {
                // Stopping something that is not installed means it is not running.
                if action == AgentAction::Stop && c == OCF_ERR_INSTALLED {
                    Verdict::NotRunning
                } else {
                    Verdict::HardError
                }
            }
            Some(OCF_ERR_CONFIGURED) => Verdict::Fatal,
            _ => Verdict::Unknown,
        }
    }

    /// Did the action achieve what was asked?
    pub fn succeeded(self, action: AgentAction) -> bool {
        match action {
            AgentAction::Stop => matches!(self, Verdict::Ok | Verdict::NotRunning),
            AgentAction::Monitor => matches!(self, Verdict::Ok | Verdict::Degraded | Verdict::Promoted { .. }),
            AgentAction::Promote => matches!(self, Verdict::Ok | Verdict::Promoted { .. }),
            _ => matches!(self, Verdict::Ok | Verdict::Degraded),
        }
    }
}

/// The last `ocf-exit-reason:` line an agent wrote on stderr.
pub fn exit_reason(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("ocf-exit-reason:").map(|(_, r)| r.trim().to_string()))
        .rfind(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use AgentAction::*;

    #[test]
    fn exit_codes_map_as_ocf_says() {
        let table = [
            (Start, Some(0), Verdict::Ok),
            (Monitor, Some(7), Verdict::NotRunning),
            (Monitor, Some(8), Verdict::Promoted { degraded: false }),
            (Monitor, Some(9), Verdict::FailedPromoted),
            (Monitor, Some(190), Verdict::Degraded),
            (Monitor, Some(191), Verdict::Promoted { degraded: true }),
            (Start, Some(1), Verdict::HardError),
            (Start, Some(2), Verdict::HardError),
            (Start, Some(3), Verdict::HardError),
            (Start, Some(4), Verdict::HardError),
            (Start, Some(5), Verdict::HardError),
            (Stop, Some(5), Verdict::NotRunning),
            (Start, Some(6), Verdict::Fatal),
            (Start, Some(42), Verdict::Unknown),
            (Start, None, Verdict::Unknown),
        ];
        for (action, code, want) in table {
            assert_eq!(Verdict::of(action, code, false), want, "{action:?} {code:?}");
        }
        assert_eq!(
            Verdict::of(Start, Some(0), true),
            Verdict::Timeout,
            "a timeout wins over any code"
        );
    }

    #[test]
    fn success_depends_on_the_action() {
        assert!(Verdict::NotRunning.succeeded(Stop));
        assert!(!Verdict::NotRunning.succeeded(Monitor));
        assert!(Verdict::Degraded.succeeded(Monitor));
        assert!(Verdict::Degraded.succeeded(Start));
        assert!(!Verdict::HardError.succeeded(Start));
        assert!(!Verdict::Timeout.succeeded(Stop));
        assert!(Verdict::Promoted { degraded: false }.succeeded(Monitor));
    }

    #[test]
    fn the_last_exit_reason_wins() {
        let err = "noise\nocf-exit-reason:first\nmore\nocf-exit-reason: config file /x missing \n";
        assert_eq!(exit_reason(err).as_deref(), Some("config file /x missing"));
        assert_eq!(exit_reason("nothing"), None);
    }
}
