//! The `[cluster]` section: the cluster's name, its heartbeat timing, the no-quorum policy, the
//! key file, the fencing mode and its delays, and the hardware watchdog. Holds the validated
//! [`ClusterConfig`], its raw spanned form, and one small check per key.

use crate::diag::Checker;
use crate::duration::{self, format_duration, parse_duration};
use crate::fencing::FenceAction;
use crate::model::{valid_name, Fencing};
use crate::quorum::NoQuorumPolicy;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// Allowed heartbeat intervals.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(10);
/// The heartbeat interval when none is written (and after a bad one was reported).
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub name: String,
    #[serde(with = "crate::duration::duration_ms")]
    pub heartbeat_interval: Duration,
    pub dead_after: u32,
    pub no_quorum_policy: NoQuorumPolicy,
    /// Path of the cluster key, relative to the config file's folder unless absolute.
    pub key_file: String,
    pub fencing: Fencing,
    /// Pacemaker's priority-fencing-delay: a fence of a node that runs resources waits this long
    /// first, so if two sides ever race to fence each other, the one running the services shoots
    /// first and survives. 0: no delay.
    #[serde(default, with = "crate::duration::duration_ms")]
    pub priority_fence_delay: Duration,
    /// A hardware watchdog device (`/dev/watchdog`), kept alive only while the node has quorum;
    /// `{node}` in the path is replaced by the node's name (for test rigs sharing a disk).
    #[serde(default)]
    pub watchdog: Option<String>,
    /// The watchdog's timeout: a node that stops feeding it (no quorum, frozen) is reset this
    /// long after the last feed.
    #[serde(default = "default_watchdog_timeout", with = "crate::duration::duration_ms")]
    pub watchdog_timeout: Duration,
    /// What a clean stop of a node (`phalanx node stop`, SIGTERM) does with what it runs.
    #[serde(default)]
    pub shutdown: ShutdownMode,
    /// How many events the replicated history keeps (`phalanx events`), the oldest dropped first.
    #[serde(default = "default_event_history")]
    pub event_history: u64,
    /// `slo`, the availability objective, in millionths (99.95 % is 999,500; an integer so
    /// that the config stays `Eq`): with it, the leader records `slo_burn` events when a
    /// resource burns its error budget too fast (`phalanx availability`). See [`Self::slo`].
    #[serde(default)]
    pub slo_ppm: Option<u32>,
}

fn default_event_history() -> u64 {
    crate::events::DEFAULT_HISTORY
}

/// The bounds of `event_history`.
pub const EVENT_HISTORY_RANGE: std::ops::RangeInclusive<i64> = 100..=1_000_000;

/// `[cluster] shutdown`: what a node that stops cleanly does with its resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownMode {
    /// Move them to other nodes first (the default).
    #[default]
    Move,
    /// Stop them and keep them stopped, locked to the node, until it is back and starts them
    /// again (Pacemaker's `shutdown-lock`): for a maintenance reboot not worth a move.
    Stop,
}

fn default_watchdog_timeout() -> Duration {
    Duration::from_secs(5)
}

impl ClusterConfig {
    /// `[cluster] slo` in percent (99.95), if written.
    pub fn slo(&self) -> Option<f64> {
        self.slo_ppm.map(|p| f64::from(p) / 10_000.0)
    }

    /// Silence after which a link (and, when all links are silent, a node) is declared down.
    pub fn detection_time(&self) -> Duration {
        self.heartbeat_interval * self.dead_after
    }

    /// How long after a node is declared lost what it held stays held (not recovered
    /// elsewhere): with `fencing = "watchdog"`, until its quorum lease must have run out: it
    /// stops its resources itself when it loses quorum, at most one interval after the majority
    /// saw it go (heartbeats are an interval apart), plus an interval of margin for the stop.
    /// None: recover at once (`off`, and `required` until fence devices exist).
    /// With a hardware watchdog, SBD's msgwait: twice its timeout (the lost node is reset by then,
    /// whatever state its software is in).
    pub fn lost_node_hold(&self) -> Option<Duration> {
        match self.fencing {
            Fencing::Watchdog if self.watchdog.is_some() => Some(self.watchdog_timeout * 2),
            Fencing::Watchdog => Some(self.heartbeat_interval * 2),
            Fencing::Required | Fencing::Off => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    name: Option<Spanned<String>>,
    heartbeat_interval: Option<Spanned<String>>,
    dead_after: Option<Spanned<i64>>,
    no_quorum_policy: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    fencing: Option<Spanned<String>>,
    fence_action: Option<Spanned<String>>,
    priority_fence_delay: Option<Spanned<String>>,
    watchdog: Option<Spanned<String>>,
    watchdog_timeout: Option<Spanned<String>>,
    shutdown: Option<Spanned<String>>,
    event_history: Option<Spanned<i64>>,
    slo: Option<Spanned<f64>>,
}

/// The `[cluster]` section, validated.
pub(super) struct Cluster {
    pub config: ClusterConfig,
    /// `fence_action` is written here but belongs to the fencing configuration.
    pub fence_action: FenceAction,
    /// The whole section: where problems of the cluster as a whole are reported.
    pub span: Range<usize>,
    /// The `fencing` value, or the section when it is not written.
    pub fencing_span: Range<usize>,
    /// The `key_file` value, or the section when it is not written.
    pub key_file_span: Range<usize>,
}

/// Validate the `[cluster]` section (None, reported at the top of the file, when it is missing).
pub(super) fn validate(c: &mut Checker, section: Option<Spanned<RawCluster>>) -> Option<Cluster> {
    let Some(section) = section else {
        c.error(0..0, "missing [cluster] section (it needs at least `name`)");
        return None;
    };
    let span = section.span();
    let cl = section.into_inner();
    let name = name(c, cl.name, &span);
    let heartbeat_interval = heartbeat_interval(c, &cl.heartbeat_interval);
    let dead_after = dead_after(c, &cl.dead_after);
    let no_quorum_policy = no_quorum_policy(c, &cl.no_quorum_policy);
    let fencing = fencing(c, &cl.fencing);
    let priority_fence_delay =
        duration::checked_or(c, "priority_fence_delay", &cl.priority_fence_delay, Duration::ZERO);
    let watchdog_timeout = watchdog_timeout(c, &cl.watchdog_timeout);
    let watchdog = watchdog(c, &cl.watchdog);
    let key_file_span = cl.key_file.as_ref().map(|k| k.span()).unwrap_or(span.clone());
    let key_file = key_file(c, cl.key_file);
    let fence_action = fence_action(c, &cl.fence_action);
    let shutdown = match cl.shutdown.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("move", _)) => ShutdownMode::Move,
        Some(("stop", _)) => ShutdownMode::Stop,
        Some((other, span)) => {
            c.error(span, format!("shutdown {other:?} is not one of move, stop"));
            ShutdownMode::Move
        }
    };
    let event_history = match &cl.event_history {
        None => default_event_history(),
        Some(v) if EVENT_HISTORY_RANGE.contains(v.get_ref()) => *v.get_ref() as u64,
        Some(v) => {
            c.error(
                v.span(),
                format!(
                    "event_history {} is outside the allowed {}..{}",
                    v.get_ref(),
                    EVENT_HISTORY_RANGE.start(),
                    EVENT_HISTORY_RANGE.end()
                ),
            );
            default_event_history()
        }
    };
    let slo = match &cl.slo {
        None => None,
        Some(v) if *v.get_ref() > 0.0 && *v.get_ref() < 100.0 => Some((*v.get_ref() * 10_000.0).round() as u32),
        Some(v) => {
            c.error(
                v.span(),
                format!("slo {} is not a percentage above 0 and below 100 (99.95)", v.get_ref()),
            );
            None
        }
    };
    Some(Cluster {
        config: ClusterConfig {
            name,
            heartbeat_interval,
            dead_after,
            no_quorum_policy,
            key_file,
            fencing,
            priority_fence_delay,
            watchdog,
            watchdog_timeout,
            shutdown,
            event_history,
            slo_ppm: slo,
        },
        fence_action,
        fencing_span: cl.fencing.as_ref().map(|f| f.span()).unwrap_or(span.clone()),
        key_file_span,
        span,
    })
}

fn name(c: &mut Checker, v: Option<Spanned<String>>, section: &Range<usize>) -> String {
    match v {
        Some(n) if valid_name(n.get_ref()) => n.into_inner(),
        Some(n) => {
            c.error(
                n.span(),
                format!(
                    "cluster name {:?} must be 1-63 characters of A-Z a-z 0-9 - _ .",
                    n.get_ref()
                ),
            );
            String::new()
        }
        None => {
            c.error(section.clone(), "[cluster] needs a `name`");
            String::new()
        }
    }
}

fn heartbeat_interval(c: &mut Checker, v: &Option<Spanned<String>>) -> Duration {
    let Some(s) = v else { return DEFAULT_HEARTBEAT };
    match parse_duration(s.get_ref()) {
        Ok(d) if (MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&d) => d,
        Ok(d) => {
            c.error(
                s.span(),
                format!(
                    "heartbeat_interval {} is outside the allowed 10ms..10s",
                    format_duration(d)
                ),
            );
            DEFAULT_HEARTBEAT
        }
        Err(e) => {
            c.error(s.span(), format!("heartbeat_interval: {e}"));
            DEFAULT_HEARTBEAT
        }
    }
}

fn dead_after(c: &mut Checker, v: &Option<Spanned<i64>>) -> u32 {
    match v {
        None => 3,
        Some(d) if (1..=100).contains(d.get_ref()) => *d.get_ref() as u32,
        Some(d) => {
            c.error(
                d.span(),
                format!(
                    "dead_after must be a whole number of heartbeats from 1 to 100, not {}",
                    d.get_ref()
                ),
            );
            3
        }
    }
}

fn no_quorum_policy(c: &mut Checker, v: &Option<Spanned<String>>) -> NoQuorumPolicy {
    let Some(s) = v else { return NoQuorumPolicy::default() };
    match s.get_ref().as_str() {
        "stop" => NoQuorumPolicy::Stop,
        "freeze" => NoQuorumPolicy::Freeze,
        "demote" => NoQuorumPolicy::Demote,
        "ignore" => NoQuorumPolicy::Ignore,
        other => {
            c.error(
                s.span(),
                format!("no_quorum_policy {other:?} is not one of stop, freeze, demote, ignore"),
            );
            NoQuorumPolicy::default()
        }
    }
}

fn fencing(c: &mut Checker, v: &Option<Spanned<String>>) -> Fencing {
    let Some(s) = v else { return Fencing::default() };
    match s.get_ref().as_str() {
        "required" => Fencing::Required,
        "watchdog" => Fencing::Watchdog,
        "off" => {
            c.warn(s.span(), "fencing = \"off\": a lost node's services may be started elsewhere while it still runs them (split-brain)");
            Fencing::Off
        }
        other => {
            c.error(
                s.span(),
                format!("fencing {other:?} is not one of required, watchdog, off"),
            );
            Fencing::default()
        }
    }
}

fn watchdog_timeout(c: &mut Checker, v: &Option<Spanned<String>>) -> Duration {
    let timeout = duration::checked_or(c, "watchdog_timeout", v, default_watchdog_timeout());
    if timeout < Duration::from_secs(1) {
        if let Some(s) = v {
            c.error(
                s.span(),
                "watchdog_timeout must be at least 1s (watchdog devices count whole seconds)",
            );
        }
    }
    timeout
}

fn watchdog(c: &mut Checker, v: &Option<Spanned<String>>) -> Option<String> {
    match v {
        Some(w) if w.get_ref().is_empty() => {
            c.error(
                w.span(),
                "watchdog is empty: write a device path such as \"/dev/watchdog\"",
            );
            None
        }
        Some(w) => Some(w.get_ref().clone()),
        None => None,
    }
}

fn key_file(c: &mut Checker, v: Option<Spanned<String>>) -> String {
    match v {
        Some(k) if k.get_ref().is_empty() => {
            c.error(k.span(), "key_file is empty");
            String::new()
        }
        Some(k) => k.into_inner(),
        None => "phalanx.key".to_string(),
    }
}

fn fence_action(c: &mut Checker, v: &Option<Spanned<String>>) -> FenceAction {
    let Some(s) = v else { return FenceAction::default() };
    match s.get_ref().as_str() {
        "reboot" => FenceAction::Reboot,
        "off" => FenceAction::Off,
        other => {
            c.error(s.span(), format!("fence_action {other:?} is not one of reboot, off"));
            FenceAction::default()
        }
    }
}
