//! What an agent's exit code means (OCF 1.1, as Pacemaker reads it): a pure mapping from
//! (action, exit code, timed out) to an outcome the controller acts on, and the reading of an
//! agent's `meta-data` (parameters, default timeouts). The runner that produces exit codes and
//! meta-data lives in phalanx-node.

use crate::model::Role;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

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
    /// OCF 1.1: reload the agent's reloadable parameters in place.
    ReloadAgent,
    /// A clone notification (the `notify_*` meta attributes say which, see `crate::notify`).
    Notify,
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
            AgentAction::ReloadAgent => "reload-agent",
            AgentAction::Notify => "notify",
        }
    }
}

pub const OCF_SUCCESS: i32 = 0;
pub const OCF_ERR_GENERIC: i32 = 1;
pub const OCF_ERR_ARGS: i32 = 2;
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
    /// Exit 1 (`OCF_ERR_GENERIC`) of a monitor, promote, demote or any action but start and
    /// stop: a transient failure, Pacemaker's soft error. It is recovered where it is (stopped
    /// and started again there) until the `migration_threshold`, as Pacemaker does: a monitor
    /// that answers 1 once (a status page slow to answer, say) does not ban the node.
    Error,
    /// Exit 2–5, and exit 1 of a start or a stop: this node cannot run it (ban here until
    /// cleanup). A failed start or stop is as final in Pacemaker: it counts as INFINITY
    /// failures there (`start-failure-is-fatal`, true by default, and a failed stop's).
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
            Some(OCF_ERR_GENERIC) if !matches!(action, AgentAction::Start | AgentAction::Stop) => Verdict::Error,
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

/// What a probe found, as the cluster records it: running (`Started`, or `Promoted` for a
/// primary), not running (`None`), or `Failed`. A probe is a one-off `monitor` asking what runs
/// on a node, at its start-up and whenever it is back on a quorate side.
///
/// Only a clean answer means "not running": 7, or, as Pacemaker masks those probe failures
/// (`pcmk_xe_mask_probe_failure`), 5 (the agent is not installed there, so nothing of it runs
/// there) and 2 (its parameters are invalid there, so it cannot have started). Any other
/// answer (a timeout, an error, a failed primary, an unknown code) leaves its state there
/// unknown: it may still run, even as a primary whose monitor hangs. It is recorded `Failed`, so the scheduler
/// stops it there (every stop of a failed instance before any promote; a stop that fails has
/// the node fenced) before it is started or promoted elsewhere, as Pacemaker recovers a failed
/// probe. Read as "not running", a timed-out probe made the cluster forget a hung primary and
/// promote another beside it (the simulation's seed 193).
pub fn probed_role(verdict: Verdict, exit_code: Option<i32>) -> Option<Role> {
    match verdict {
        Verdict::Ok | Verdict::Degraded => Some(Role::Started),
        Verdict::Promoted { .. } => Some(Role::Promoted),
        Verdict::NotRunning => None,
        Verdict::HardError if matches!(exit_code, Some(OCF_ERR_INSTALLED | OCF_ERR_ARGS)) => None,
        Verdict::FailedPromoted
        | Verdict::Error
        | Verdict::HardError
        | Verdict::Fatal
        | Verdict::Timeout
        | Verdict::Unknown => Some(Role::Failed),
    }
}

/// The last `ocf-exit-reason:` line an agent wrote on stderr.
pub fn exit_reason(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("ocf-exit-reason:").map(|(_, r)| r.trim().to_string()))
        .rfind(|r| !r.is_empty())
}

/// What an agent's `meta-data` says that phalanx uses: its parameters (to check a resource's
/// `params`) and its default timeout per action (used where the config gives none).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentMeta {
    pub parameters: Vec<ParamMeta>,
    /// Action name (`start`, `stop`, `monitor`, ...) → its advertised timeout.
    pub timeouts: BTreeMap<String, Duration>,
}

impl AgentMeta {
    /// How a change of the parameters `changed` can be applied to a running instance, as
    /// Pacemaker decides it: `reload-agent` (OCF 1.1) when the agent has it and every changed
    /// parameter is reloadable; else the OCF 1.0 `reload` when the agent has it and none of them
    /// is unique; else None: a restart. A parameter the meta-data does not list needs a restart.
    pub fn reload_for<'a>(&self, mut changed: impl Iterator<Item = &'a str> + Clone) -> Option<AgentAction> {
        let param = |n: &str| self.parameters.iter().find(|p| p.name == n);
        if self.timeouts.contains_key("reload-agent") && changed.clone().all(|n| param(n).is_some_and(|p| p.reloadable))
        {
            return Some(AgentAction::ReloadAgent);
        }
        if self.timeouts.contains_key("reload") && changed.all(|n| param(n).is_some_and(|p| !p.unique)) {
            return Some(AgentAction::Reload);
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamMeta {
    pub name: String,
    pub required: bool,
    /// `unique="1"`: an OCF 1.0 `reload` cannot change it.
    pub unique: bool,
    /// OCF 1.1 `reloadable="1"`: `reload-agent` can change it in place.
    pub reloadable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaDataError {
    #[error("meta-data is not XML: {0}")]
    Xml(String),
    #[error("meta-data has no <resource-agent> root element")]
    NoRoot,
}

/// Parse an OCF `meta-data` document (OCF 1.1 `ra-api-1.dtd`). Unknown elements are ignored;
/// a timeout phalanx cannot read is skipped rather than fatal (the config default stands).
pub fn parse_meta_data(xml: &str) -> Result<AgentMeta, MetaDataError> {
    // Agents start with `<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">` (an external DTD,
    // never fetched).
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, opts).map_err(|e| MetaDataError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("resource-agent") {
        return Err(MetaDataError::NoRoot);
    }
    let mut meta = AgentMeta::default();
    for section in root.children().filter(|n| n.is_element()) {
        match section.tag_name().name() {
            "parameters" => {
                for p in section.children().filter(|n| n.has_tag_name("parameter")) {
                    if let Some(name) = p.attribute("name") {
                        meta.parameters.push(ParamMeta {
                            name: name.to_string(),
                            required: p.attribute("required") == Some("1"),
                            unique: p.attribute("unique") == Some("1"),
                            reloadable: p.attribute("reloadable") == Some("1"),
                        });
                    }
                }
            }
            "actions" => {
                for a in section.children().filter(|n| n.has_tag_name("action")) {
                    let (Some(name), Some(t)) = (a.attribute("name"), a.attribute("timeout")) else {
                        continue;
                    };
                    if let Some(d) = ocf_duration(t) {
                        // The first entry for an action wins (agents list `monitor` once per role).
                        meta.timeouts.entry(name.to_string()).or_insert(d);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(meta)
}

/// An OCF duration: a bare number is seconds (as Pacemaker reads it), else "20s", "2m", "500ms".
fn ocf_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    match s.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => crate::duration::parse_duration(s).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AgentAction::*;

    #[test]
    fn meta_data_gives_parameters_and_timeouts() {
        let xml = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Dummy" version="1.0">
<version>1.1</version>
<parameters>
<parameter name="state" unique="1"><content type="string" default="x"/></parameter>
<parameter name="fake" required="1" reloadable="1"><content type="string"/></parameter>
</parameters>
<actions>
<action name="reload" timeout="20s" />
<action name="start" timeout="20s" />
<action name="stop" timeout="30" />
<action name="monitor" timeout="15s" interval="10s" depth="0"/>
<action name="monitor" timeout="99s" role="Promoted"/>
<action name="meta-data" timeout="5s" />
</actions>
</resource-agent>"#;
        let m = parse_meta_data(xml).unwrap();
        assert_eq!(
            m.parameters,
            vec![
                ParamMeta {
                    name: "state".into(),
                    required: false,
                    unique: true,
                    reloadable: false,
                },
                ParamMeta {
                    name: "fake".into(),
                    required: true,
                    unique: false,
                    reloadable: true,
                }
            ]
        );
        // OCF 1.0 `reload` for non-unique parameters; nothing reloads a unique or unknown one.
        assert_eq!(m.reload_for(["fake"].into_iter()), Some(Reload));
        assert_eq!(m.reload_for(["fake", "state"].into_iter()), None);
        assert_eq!(m.reload_for(["nosuch"].into_iter()), None);
        let mut m11 = m.clone();
        m11.timeouts.insert("reload-agent".into(), Duration::from_secs(5));
        assert_eq!(m11.reload_for(["fake"].into_iter()), Some(ReloadAgent));
        assert_eq!(m.timeouts["start"], Duration::from_secs(20));
        assert_eq!(m.timeouts["stop"], Duration::from_secs(30));
        assert_eq!(m.timeouts["monitor"], Duration::from_secs(15));
        assert!(matches!(parse_meta_data("<nope"), Err(MetaDataError::Xml(_))));
        assert_eq!(parse_meta_data("<other/>"), Err(MetaDataError::NoRoot));
    }

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
            (Stop, Some(1), Verdict::HardError),
            (Monitor, Some(1), Verdict::Error),
            (Promote, Some(1), Verdict::Error),
            (Demote, Some(1), Verdict::Error),
            (Monitor, Some(2), Verdict::HardError),
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
    fn only_a_clean_answer_means_a_probe_found_nothing() {
        let probe = |code: Option<i32>, timed_out: bool| probed_role(Verdict::of(Monitor, code, timed_out), code);
        assert_eq!(probe(Some(OCF_SUCCESS), false), Some(Role::Started));
        assert_eq!(probe(Some(OCF_DEGRADED), false), Some(Role::Started));
        assert_eq!(probe(Some(OCF_RUNNING_PROMOTED), false), Some(Role::Promoted));
        assert_eq!(probe(Some(OCF_DEGRADED_PROMOTED), false), Some(Role::Promoted));
        assert_eq!(probe(Some(OCF_NOT_RUNNING), false), None);
        assert_eq!(
            probe(Some(OCF_ERR_ARGS), false),
            None,
            "invalid parameters here: never started"
        );
        assert_eq!(
            probe(Some(OCF_ERR_INSTALLED), false),
            None,
            "not installed here: runs nothing here"
        );
        // Unknown: it may still run (a hung primary), so it must be stopped there first.
        assert_eq!(probe(None, true), Some(Role::Failed), "a timeout is not 'not running'");
        assert_eq!(
            probe(Some(OCF_SUCCESS), true),
            Some(Role::Failed),
            "a timeout wins over any code"
        );
        assert_eq!(probe(Some(OCF_NOT_RUNNING), true), Some(Role::Failed));
        assert_eq!(probe(Some(OCF_FAILED_PROMOTED), false), Some(Role::Failed));
        assert_eq!(probe(Some(OCF_ERR_GENERIC), false), Some(Role::Failed));
        assert_eq!(probe(Some(OCF_ERR_CONFIGURED), false), Some(Role::Failed));
        assert_eq!(probe(Some(42), false), Some(Role::Failed));
        assert_eq!(probe(None, false), Some(Role::Failed), "killed by a signal");
    }

    #[test]
    fn the_last_exit_reason_wins() {
        let err = "noise\nocf-exit-reason:first\nmore\nocf-exit-reason: config file /x missing \n";
        assert_eq!(exit_reason(err).as_deref(), Some("config file /x missing"));
        assert_eq!(exit_reason("nothing"), None);
    }
}
