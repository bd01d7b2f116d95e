//! The arithmetic of failover drills (issue 16, `phalanx drill`): from the steady-state probes a
//! drill takes before, during and after the fault it causes, what the clients saw — the first
//! failed probe after the fault, the first success after that, the recovery time objective's
//! measure (RTO: first failure to first success), and how many probes failed. Pure: the samples
//! come with their times (ms since the drill's start). And how a drill is recorded in the
//! event history ([`DrillNote`], `Command::Drill`): its begin (which also makes it the one
//! active drill, [`active`]), each run's figures and its end, as `key=value` lines in the
//! events' `details` ([`detail`]), which is what `phalanx availability` (a drill's outages are
//! planned), `/metrics` (`phalanx_drill_rto_seconds`) and the dashboard read back.

use crate::events::{Event, EventKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The scenarios of `phalanx drill` (issue 16).
pub const SCENARIOS: [&str; 7] = [
    "switchover",
    "kill-node",
    "kill-service",
    "cut-link",
    "pause-node",
    "lb-backend-down",
    "fence-fail",
];

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

/// Whether the history (newest first) holds `n`'s run or end already (a begin repeats the
/// drill's own slot, which [`active`] allows).
pub fn recorded<'a>(mut newest_first: impl Iterator<Item = &'a Event>, n: &DrillNote) -> bool {
    let id = n.id.to_string();
    let (kind, run) = match &n.step {
        DrillStep::Begin { .. } => return false,
        DrillStep::Run { run, .. } => (EventKind::DrillRun, Some(run.to_string())),
        DrillStep::End { .. } => (EventKind::DrillEnded, None),
    };
    newest_first.any(|e| e.kind == kind && detail(e, "id") == Some(&id) && detail(e, "run") == run.as_deref())
}

/// The timings a run's RTO bound is made of: the cluster's detection time (heartbeat interval ×
/// dead_after), the resource's monitor interval, and the time the cluster took from the
/// failure it saw to the resource's start (stop and start, as the run's history says).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    pub detection_ms: u64,
    pub monitor_ms: Option<u64>,
    pub recovery_ms: Option<u64>,
}

/// What fencing and starting elsewhere may add to a node's detection (a fence by the power
/// switch, the plan's commit, the start): issue 16's kill-node bound, 600 ms at 100 ms × 3
/// heartbeats, is detection + this.
pub const FENCE_AND_START_MS: u64 = 300;
/// A planned move's bound (issue 16: switchover ≤ 150 ms).
pub const SWITCHOVER_MS: u64 = 150;
/// A balancer losing one backend: its clients see no outage (failed connections are tried
/// on another backend); a probe caught in flight by the kill may fail.
pub const BACKEND_DOWN_MS: u64 = 100;
/// What probing adds to a measured RTO (a probe every 10 ms, each up to a few ms).
pub const PROBE_SLACK_MS: u64 = 50;

/// The RTO a run of `scenario` should stay within (issue 16's bounds); None: the scenario has
/// none (fence-fail measures how long recovery takes once the devices heal).
pub fn rto_bound_ms(scenario: &str, t: Timings) -> Option<u64> {
    match scenario {
        "switchover" => Some(SWITCHOVER_MS),
        "kill-node" | "pause-node" | "cut-link" => Some(t.detection_ms + FENCE_AND_START_MS),
        // The monitor finds it within one interval; then stop and start.
        "kill-service" => Some(t.monitor_ms? + t.recovery_ms.unwrap_or(0) + PROBE_SLACK_MS),
        "lb-backend-down" => Some(BACKEND_DOWN_MS),
        _ => None,
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

/// A step of a drill, as `Command::Drill` records it: `id` names the drill (the CLI picks it at
/// random), `at_ms` is the proposer's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillNote {
    pub id: u64,
    pub at_ms: u64,
    pub scenario: String,
    pub resource: String,
    pub step: DrillStep,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrillStep {
    /// The drill begins, acting on `node`; it is active until it ends or until `expires_ms`
    /// (a drill whose CLI died does not block the next one for ever).
    Begin { node: String, expires_ms: u64 },
    /// One run's figures.
    Run {
        run: u32,
        from: String,
        to: String,
        rto_ms: Option<u64>,
        failed_probes: u64,
        probes: u64,
        /// Acknowledged session writes missing afterwards (None: no session writer ran).
        rpo_writes: Option<u64>,
    },
    /// The drill ended; `aborted`: why, if it did not complete.
    End { aborted: Option<String> },
}

impl DrillNote {
    /// The event kind, the node it is about, its summary and its `details` lines.
    pub fn describe(&self) -> (EventKind, String, String, Vec<String>) {
        let (id, what) = (self.id, format!("drill {} of {}", self.scenario, self.resource));
        match &self.step {
            DrillStep::Begin { node, expires_ms } => (
                EventKind::DrillStarted,
                node.clone(),
                format!("{what} begins on {node}"),
                vec![format!("id={id}"), format!("expires_ms={expires_ms}")],
            ),
            DrillStep::Run {
                run,
                from,
                to,
                rto_ms,
                failed_probes,
                probes,
                rpo_writes,
            } => {
                let rto = rto_ms.map_or("none (the service did not answer again)".into(), |v| format!("{v} ms"));
                let mut details = vec![
                    format!("id={id}"),
                    format!("run={run}"),
                    format!("from={from}"),
                    format!("to={to}"),
                    format!("failed_probes={failed_probes}"),
                    format!("probes={probes}"),
                ];
                details.extend(rto_ms.map(|v| format!("rto_ms={v}")));
                details.extend(rpo_writes.map(|v| format!("rpo_writes={v}")));
                let rpo = rpo_writes.map_or(String::new(), |v| format!(", {v} acknowledged write(s) lost"));
                (
                    EventKind::DrillRun,
                    from.clone(),
                    format!("{what}, run {run}: {from} -> {to}, RTO {rto}, {failed_probes} failed probe(s){rpo}"),
                    details,
                )
            }
            DrillStep::End { aborted } => {
                let mut details = vec![format!("id={id}")];
                details.extend(aborted.as_ref().map(|why| format!("aborted={why}")));
                let how = aborted
                    .as_ref()
                    .map_or("ended".to_string(), |why| format!("aborted: {why}"));
                (EventKind::DrillEnded, String::new(), format!("{what} {how}"), details)
            }
        }
    }
}

/// The value of `key=` in a drill event's details.
pub fn detail<'a>(e: &'a Event, key: &str) -> Option<&'a str> {
    e.details
        .iter()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The drill active at `now_ms`: its begin event, if it has not ended nor expired.
/// `newest_first` is the history, newest event first.
pub fn active<'a>(newest_first: impl Iterator<Item = &'a Event>, now_ms: u64) -> Option<&'a Event> {
    let mut ended = BTreeSet::new();
    for e in newest_first {
        let id = detail(e, "id");
        match e.kind {
            EventKind::DrillEnded => {
                ended.insert(id);
            }
            EventKind::DrillStarted if !ended.contains(&id) => {
                let expires = detail(e, "expires_ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                if expires > now_ms {
                    return Some(e);
                }
            }
            _ => {}
        }
    }
    None
}

/// The RTO of each drill run in the history: (scenario, seconds); runs whose service never
/// answered again have none.
pub fn rtos<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<(String, f64)> {
    events
        .into_iter()
        .filter(|e| e.kind == EventKind::DrillRun)
        .filter_map(|e| {
            let ms = detail(e, "rto_ms")?.parse::<u64>().ok()?;
            Some((e.task.clone().unwrap_or_default(), ms as f64 / 1000.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_the_clusters_timings() {
        let t = Timings {
            detection_ms: 300,
            monitor_ms: Some(1000),
            recovery_ms: Some(40),
        };
        assert_eq!(
            rto_bound_ms("kill-node", t),
            Some(600),
            "issue 16: 600 ms at 100 ms x 3"
        );
        assert_eq!(rto_bound_ms("cut-link", t), Some(600));
        assert_eq!(rto_bound_ms("switchover", t), Some(150));
        assert_eq!(rto_bound_ms("kill-service", t), Some(1090));
        let unmonitored = Timings { monitor_ms: None, ..t };
        assert_eq!(rto_bound_ms("kill-service", unmonitored), None);
        assert_eq!(rto_bound_ms("lb-backend-down", t), Some(100));
        assert_eq!(rto_bound_ms("fence-fail", t), None);
    }

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

    fn ev(seq: u64, note: &DrillNote) -> Event {
        let (kind, node, summary, details) = note.describe();
        Event {
            seq,
            resource: Some(note.resource.clone()),
            task: Some(note.scenario.clone()),
            details,
            reporter: "n1".into(),
            ..Event::new(kind, &node, note.at_ms, summary)
        }
    }

    fn note(id: u64, at_ms: u64, step: DrillStep) -> DrillNote {
        DrillNote {
            id,
            at_ms,
            scenario: "switchover".into(),
            resource: "web".into(),
            step,
        }
    }

    #[test]
    fn a_drill_is_active_until_it_ends_or_expires_and_its_runs_give_rtos() {
        let begin = |id, at, exp| {
            note(
                id,
                at,
                DrillStep::Begin {
                    node: "n1".into(),
                    expires_ms: exp,
                },
            )
        };
        let run = note(
            7,
            1_500,
            DrillStep::Run {
                run: 1,
                from: "n1".into(),
                to: "n2".into(),
                rto_ms: Some(40),
                failed_probes: 4,
                probes: 90,
                rpo_writes: Some(0),
            },
        );
        let mut h = vec![ev(1, &begin(7, 1_000, 60_000)), ev(2, &run)];
        let newest = |h: &Vec<Event>| h.iter().rev().cloned().collect::<Vec<_>>();
        assert_eq!(active(newest(&h).iter(), 2_000).map(|e| e.seq), Some(1));
        assert_eq!(active(newest(&h).iter(), 60_000), None, "expired");
        assert!(h[1]
            .summary
            .contains("RTO 40 ms, 4 failed probe(s), 0 acknowledged write(s) lost"));
        // A run recorded twice (a retry after a lost answer) is known; another run is not.
        assert!(recorded(newest(&h).iter(), &run));
        let mut second = run.clone();
        if let DrillStep::Run { run, .. } = &mut second.step {
            *run = 2;
        }
        assert!(!recorded(newest(&h).iter(), &second));
        let end = note(7, 2_000, DrillStep::End { aborted: None });
        assert!(!recorded(newest(&h).iter(), &end));
        h.push(ev(3, &end));
        assert!(recorded(newest(&h).iter(), &end));
        assert_eq!(active(newest(&h).iter(), 2_500), None, "ended");
        h.push(ev(4, &begin(8, 3_000, 9_000)));
        assert_eq!(active(newest(&h).iter(), 3_000).map(|e| e.seq), Some(4));
        assert_eq!(rtos(&h), vec![("switchover".to_string(), 0.04)]);
        let aborted = ev(
            5,
            &note(
                8,
                4_000,
                DrillStep::End {
                    aborted: Some("no settle".into()),
                },
            ),
        );
        assert_eq!(detail(&aborted, "aborted"), Some("no settle"));
        assert_eq!(aborted.summary, "drill switchover of web aborted: no settle");
    }
}
