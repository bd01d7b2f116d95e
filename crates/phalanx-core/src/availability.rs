//! Availability from the cluster's own event history (issue 16, `phalanx availability`): per
//! resource, the time it was up, down after a failure (unplanned) and down because someone
//! asked (planned: a move, a ban, standby, maintenance, a config change, a node leaving), the
//! failures, MTBF, MTTR, A = MTBF / (MTBF + MTTR) and its nines, the yearly downtime A implies,
//! the error budget against an SLO, and the burn rates of Google SRE's multi-window alerting
//! table. Pure: the events and the report's window (`now` included) are passed in.
//!
//! How the history is read: a resource is up while at least one instance runs (started or
//! promoted on a node and not since stopped, failed, lost with its node or fenced). Before its
//! first start in the history it is unobserved (no time counted). When its last instance goes,
//! the outage is planned if the latest event that could explain it was an operator's or a
//! config's doing, unplanned if it was a failure: a failure of the resource anywhere, a failure
//! of any resource on a node where it ran (a group's members fall together), the loss or fencing
//! of such a node; with no explanation at all it counts as unplanned. A failure is an
//! unplanned outage that began in the window; MTTR is the unplanned downtime per failure and
//! MTBF the up time per failure, so A = up / (up + unplanned down).

use crate::events::{Event, EventKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const MS_PER_YEAR: f64 = 365.25 * 86_400_000.0;

/// One row of the multi-window burn-rate table: alert when the budget burns at `factor` times
/// the sustainable rate over both the long and the short window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BurnWindow {
    pub long_ms: u64,
    pub short_ms: u64,
    pub factor: f64,
}

/// Google SRE's table (The Site Reliability Workbook, "Alerting on SLOs"): 14.4× over 1 h and
/// 5 m, 6× over 6 h and 30 m, 3× over 1 d and 2 h, 1× over 3 d and 6 h.
pub const SRE_WINDOWS: [BurnWindow; 4] = [
    BurnWindow {
        long_ms: 3_600_000,
        short_ms: 300_000,
        factor: 14.4,
    },
    BurnWindow {
        long_ms: 6 * 3_600_000,
        short_ms: 1_800_000,
        factor: 6.0,
    },
    BurnWindow {
        long_ms: 86_400_000,
        short_ms: 2 * 3_600_000,
        factor: 3.0,
    },
    BurnWindow {
        long_ms: 3 * 86_400_000,
        short_ms: 6 * 3_600_000,
        factor: 1.0,
    },
];

/// What to report on.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The window: [from_ms, to_ms) in unix ms; `to_ms` is "now".
    pub from_ms: u64,
    pub to_ms: u64,
    /// The objective as a fraction (0.9995 for 99.95 %).
    pub slo: f64,
    /// Only this resource (None: every resource the history mentions).
    pub resource: Option<String>,
    /// What contains each resource (its group, its clone, the clone of its group): an
    /// operator's command on a group moves its members, so it explains their outage.
    pub parents: BTreeMap<String, Vec<String>>,
}

/// [`Options::parents`] from a config.
pub fn parents(config: &crate::Config) -> BTreeMap<String, Vec<String>> {
    let r = &config.resources;
    r.primitives
        .keys()
        .map(|p| {
            let mut up = Vec::new();
            if let Some(c) = r.clone_of(p) {
                up.push(c.id.clone());
            }
            if let Some(g) = r.group_of(p) {
                up.push(g.id.clone());
                if let Some(c) = r.clone_of(&g.id) {
                    up.push(c.id.clone());
                }
            }
            (p.clone(), up)
        })
        .collect()
}

/// Why an [`Options`] cannot be reported on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AvailabilityError {
    #[error("the window starts after it ends (from {from_ms} > to {to_ms}): is --since in the future?")]
    Window { from_ms: u64, to_ms: u64 },
    #[error("the SLO must be above 0 % and below 100 % (got {0} %)")]
    Slo(f64),
}

/// A time the resource was down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    pub start_ms: u64,
    /// None: still down at the end of the window.
    pub end_ms: Option<u64>,
    pub planned: bool,
    /// The event that explains it (its sequence number and summary), if any did.
    pub cause_seq: Option<u64>,
    pub cause: String,
}

/// One burn-rate row, evaluated at the end of the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BurnRate {
    pub long_ms: u64,
    pub short_ms: u64,
    pub factor: f64,
    /// Budget burn over each window (1.0: exactly the sustainable rate); None: nothing observed.
    pub long_rate: Option<f64>,
    pub short_rate: Option<f64>,
    pub firing: bool,
}

/// One resource's figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceAvailability {
    pub resource: String,
    /// Time within the window whose state the history tells.
    pub observed_ms: u64,
    pub up_ms: u64,
    /// Down after a failure.
    pub down_ms: u64,
    /// Down because an operator or a config asked.
    pub planned_down_ms: u64,
    /// Unplanned outages that began in the window.
    pub failures: u64,
    pub mtbf_ms: Option<u64>,
    pub mttr_ms: Option<u64>,
    /// up / (up + unplanned down) = MTBF / (MTBF + MTTR).
    pub availability: Option<f64>,
    /// -log10(1 - A); None when A is 1 (no unplanned downtime) or unknown.
    pub nines: Option<f64>,
    /// What A implies over a year, in seconds.
    pub yearly_downtime_s: Option<f64>,
    /// The error budget over the observed time, what the unplanned downtime used of it, and
    /// what remains (negative: overspent).
    pub budget_ms: u64,
    pub budget_used_ms: u64,
    pub budget_remaining_ms: i64,
    pub budget_used_pct: Option<f64>,
    pub burn: Vec<BurnRate>,
    pub outages: Vec<Outage>,
}

/// The report: one entry per resource, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub from_ms: u64,
    pub to_ms: u64,
    pub slo: f64,
    pub resources: Vec<ResourceAvailability>,
}

impl Report {
    /// Burn-rate rows firing now, by resource.
    pub fn firing(&self) -> Vec<(&str, &BurnRate)> {
        self.resources
            .iter()
            .flat_map(|r| {
                r.burn
                    .iter()
                    .filter(|b| b.firing)
                    .map(move |b| (r.resource.as_str(), b))
            })
            .collect()
    }
}

/// A row of the burn-rate table for one resource: (resource, the row's long window in ms).
pub type BurnKey = (String, u64);

/// How far back the leader looks to evaluate burn rates: the table's longest window.
pub const BURN_LOOKBACK_MS: u64 = 3 * 86_400_000;

/// A window's length for a person: `5m`, `1h`, `3d`.
pub fn window_name(ms: u64) -> String {
    match ms {
        _ if ms.is_multiple_of(86_400_000) => format!("{}d", ms / 86_400_000),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ => format!("{}m", ms / 60_000),
    }
}

/// A note to record: its kind, the row it is about, its summary.
pub type BurnNote = (EventKind, BurnKey, String);

/// What the leader records as `report`'s firing rows change since `before`: a `slo_burn` for
/// each row that began firing, a `slo_burn_ended` for each that stopped, and the rows firing
/// now (the next call's `before`).
pub fn burn_notes(before: &BTreeSet<BurnKey>, report: &Report) -> (Vec<BurnNote>, BTreeSet<BurnKey>) {
    let slo = report.slo * 100.0;
    let mut now = BTreeSet::new();
    let mut notes = Vec::new();
    for r in &report.resources {
        for b in &r.burn {
            let key = (r.resource.clone(), b.long_ms);
            let rate = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}x"));
            if b.firing {
                if !before.contains(&key) {
                    notes.push((
                        EventKind::SloBurn,
                        key.clone(),
                        format!(
                            "{} burns its error budget at {} over {} and {} over {} (alert at {}x; SLO {slo} %)",
                            r.resource,
                            rate(b.long_rate),
                            window_name(b.long_ms),
                            rate(b.short_rate),
                            window_name(b.short_ms),
                            b.factor
                        ),
                    ));
                }
                now.insert(key);
            } else if before.contains(&key) {
                notes.push((
                    EventKind::SloBurnEnded,
                    key.clone(),
                    format!(
                        "{} no longer burns its error budget at {}x over {}/{} (now {} and {}; SLO {slo} %)",
                        r.resource,
                        b.factor,
                        window_name(b.long_ms),
                        window_name(b.short_ms),
                        rate(b.long_rate),
                        rate(b.short_rate)
                    ),
                ));
            }
        }
    }
    // A row of a resource no longer in the report (removed from the config) ends too.
    for (rsc, long) in before.iter().filter(|k| !now.contains(*k)) {
        if !report.resources.iter().any(|r| &r.resource == rsc) {
            notes.push((
                EventKind::SloBurnEnded,
                (rsc.clone(), *long),
                format!(
                    "{rsc} no longer burns its error budget over {} (no longer reported)",
                    window_name(*long)
                ),
            ));
        }
    }
    (notes, now)
}

/// A's expectation from a mean time between failures and one to repair (the seeds' formula).
pub fn predict(mtbf_ms: f64, mttr_ms: f64) -> Option<f64> {
    (mtbf_ms > 0.0 && mttr_ms >= 0.0).then(|| mtbf_ms / (mtbf_ms + mttr_ms))
}

/// -log10(1 - a): 0.999 → 3.
pub fn nines(a: f64) -> Option<f64> {
    (0.0..1.0).contains(&a).then(|| -(1.0 - a).log10())
}

/// What the history says about one resource at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unobserved,
    Up,
    Down { planned: bool },
}

/// A resource's replay: where it runs, the latest explanation, its state over time.
#[derive(Default)]
struct Replay {
    running: BTreeSet<String>,
    observed: bool,
    /// The latest event that could explain an outage: (planned, seq, summary).
    cause: Option<(bool, u64, String)>,
    /// A drill of this resource in progress: (id, expires at, seq, summary); its outages are
    /// planned whatever else the history says (the drill caused them).
    drill: Option<(String, u64, u64, String)>,
    /// State changes: (time, state), in time order.
    changes: Vec<(u64, State)>,
    outages: Vec<Outage>,
}

impl Replay {
    fn state(&self) -> State {
        self.changes.last().map_or(State::Unobserved, |(_, s)| *s)
    }

    fn set(&mut self, t: u64, s: State) {
        if self.state() != s {
            self.changes.push((t, s));
        }
    }

    fn start(&mut self, node: &str, t: u64) {
        self.observed = true;
        self.running.insert(node.to_string());
        if let Some(o) = self.outages.last_mut().filter(|o| o.end_ms.is_none()) {
            o.end_ms = Some(t);
        }
        self.set(t, State::Up);
    }

    /// The instance on `node` (or every instance, `None`) is gone.
    fn gone(&mut self, node: Option<&str>, t: u64) {
        let had = !self.running.is_empty();
        match node {
            Some(n) => {
                self.running.remove(n);
            }
            None => self.running.clear(),
        }
        if had && self.running.is_empty() && self.observed {
            let (planned, seq, cause) = match (&self.drill, &self.cause) {
                (Some((_, expires, s, c)), _) if *expires > t => (true, Some(*s), c.clone()),
                (_, Some((p, s, c))) => (*p, Some(*s), c.clone()),
                _ => (false, None, "no event explains it".to_string()),
            };
            self.outages.push(Outage {
                start_ms: t,
                end_ms: None,
                planned,
                cause_seq: seq,
                cause,
            });
            self.set(t, State::Down { planned });
        }
    }
}

/// Whether `e` is an operator's or a config's doing (planned), a failure (unplanned), or
/// neither, for a resource running on `running`.
fn explains(e: &Event, rsc: &str, parents: &[String], running: &BTreeSet<String>) -> Option<bool> {
    let here = running.contains(&e.node);
    let mine = e
        .resource
        .as_deref()
        .is_some_and(|r| base(r) == rsc || parents.iter().any(|p| p == r));
    match e.kind {
        EventKind::MonitorFailed | EventKind::ResourceFailed if mine || here => Some(false),
        EventKind::NodeLost | EventKind::FenceRequested | EventKind::FenceSucceeded if here => Some(false),
        EventKind::OperatorCommand => {
            let whole_cluster = e.task.as_deref() == Some("maintenance") && e.summary.contains("whole cluster");
            (mine || here || whole_cluster).then_some(true)
        }
        EventKind::ConfigApplied => Some(true),
        EventKind::NodeLeaving | EventKind::NodeStopped | EventKind::NodeRemoved if here => Some(true),
        _ => None,
    }
}

/// The base name of a resource as events name it (`web:1`, a clone instance, is `web`).
pub fn base(rsc: &str) -> &str {
    rsc.split(':').next().unwrap_or(rsc)
}

/// Compute the report from `events` (the history, in sequence order).
pub fn report(events: &[Event], o: &Options) -> Result<Report, AvailabilityError> {
    if o.from_ms > o.to_ms {
        return Err(AvailabilityError::Window {
            from_ms: o.from_ms,
            to_ms: o.to_ms,
        });
    }
    if !(o.slo > 0.0 && o.slo < 1.0) {
        return Err(AvailabilityError::Slo(o.slo * 100.0));
    }
    let names: BTreeSet<&str> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ResourceStarted | EventKind::ResourcePromoted))
        .filter_map(|e| e.resource.as_deref().map(base))
        .filter(|r| o.resource.as_deref().is_none_or(|want| want == *r))
        .collect();
    let mut replays: BTreeMap<&str, Replay> = names.iter().map(|n| (*n, Replay::default())).collect();
    // Reporters' clocks differ a little: time never goes back within the history.
    let mut t = 0u64;
    for e in events {
        t = t.max(e.time_ms);
        if t > o.to_ms {
            break;
        }
        for (name, r) in replays.iter_mut() {
            let parents = o.parents.get(*name).map_or(&[][..], |p| p.as_slice());
            if let Some(planned) = explains(e, name, parents, &r.running) {
                r.cause = Some((planned, e.seq, e.summary.clone()));
            }
            let mine = e.resource.as_deref().map(base) == Some(*name);
            // A drill of its group or clone is a drill of it too.
            let drilled = mine || e.resource.as_deref().is_some_and(|r| parents.iter().any(|p| p == r));
            match e.kind {
                EventKind::DrillStarted if drilled => {
                    let id = crate::drill::detail(e, "id").unwrap_or_default().to_string();
                    let expires = crate::drill::detail(e, "expires_ms").and_then(|v| v.parse().ok());
                    r.drill = Some((id, expires.unwrap_or(u64::MAX), e.seq, e.summary.clone()));
                }
                EventKind::DrillEnded if drilled => r.drill = None,
                EventKind::ResourceStarted | EventKind::ResourcePromoted if mine => r.start(&e.node, t),
                EventKind::ResourceStopped | EventKind::MonitorFailed if mine => r.gone(Some(&e.node), t),
                EventKind::ResourceFailed if mine && e.task.as_deref() == Some("stop") => r.gone(Some(&e.node), t),
                EventKind::NodeLost | EventKind::FenceSucceeded | EventKind::NodeStopped | EventKind::NodeRemoved
                    if r.running.contains(&e.node) =>
                {
                    r.gone(Some(&e.node), t)
                }
                _ => {}
            }
        }
    }
    let resources = replays.into_iter().map(|(name, r)| figures(name, &r, o)).collect();
    Ok(Report {
        from_ms: o.from_ms,
        to_ms: o.to_ms,
        slo: o.slo,
        resources,
    })
}

/// Time in each state within [from, to).
fn tally(changes: &[(u64, State)], from: u64, to: u64) -> (u64, u64, u64) {
    let (mut up, mut down, mut planned) = (0, 0, 0);
    for (i, (at, s)) in changes.iter().enumerate() {
        let end = changes.get(i + 1).map_or(to, |(next, _)| *next).min(to);
        let start = (*at).max(from);
        if end <= start {
            continue;
        }
        match s {
            State::Up => up += end - start,
            State::Down { planned: false } => down += end - start,
            State::Down { planned: true } => planned += end - start,
            State::Unobserved => {}
        }
    }
    (up, down, planned)
}

fn figures(name: &str, r: &Replay, o: &Options) -> ResourceAvailability {
    let (up, down, planned) = tally(&r.changes, o.from_ms, o.to_ms);
    let observed = up + down + planned;
    let failures = r
        .outages
        .iter()
        .filter(|x| !x.planned && x.start_ms >= o.from_ms && x.start_ms < o.to_ms)
        .count() as u64;
    let served = up + down;
    let availability = (served > 0).then(|| up as f64 / served as f64);
    let budget = ((1.0 - o.slo) * observed as f64).round() as u64;
    let burn = SRE_WINDOWS
        .iter()
        .map(|w| {
            // The budget burnt over the last `len`, and the time of it the history observed.
            let rate = |len: u64| {
                let (u, d, p) = tally(&r.changes, o.to_ms.saturating_sub(len), o.to_ms);
                (
                    (u + d > 0).then(|| d as f64 / (u + d) as f64 / (1.0 - o.slo)),
                    u + d + p,
                )
            };
            let ((long_rate, seen), (short_rate, _)) = (rate(w.long_ms), rate(w.short_ms));
            BurnRate {
                long_ms: w.long_ms,
                short_ms: w.short_ms,
                factor: w.factor,
                long_rate,
                short_rate,
                // A young history (less than a short window observed) alerts on nothing: a
                // 30 ms outage in the first 16 s would otherwise page on every row.
                firing: seen >= w.short_ms
                    && long_rate.is_some_and(|l| l >= w.factor)
                    && short_rate.is_some_and(|s| s >= w.factor),
            }
        })
        .collect();
    ResourceAvailability {
        resource: name.to_string(),
        observed_ms: observed,
        up_ms: up,
        down_ms: down,
        planned_down_ms: planned,
        failures,
        mtbf_ms: (failures > 0).then(|| up / failures),
        mttr_ms: (failures > 0).then(|| down / failures),
        availability,
        nines: availability.and_then(nines),
        yearly_downtime_s: availability.map(|a| (1.0 - a) * MS_PER_YEAR / 1000.0),
        budget_ms: budget,
        budget_used_ms: down,
        budget_remaining_ms: budget as i64 - down as i64,
        budget_used_pct: (budget > 0).then(|| down as f64 * 100.0 / budget as f64),
        burn,
        outages: r
            .outages
            .iter()
            .filter(|x| x.end_ms.is_none_or(|e| e > o.from_ms) && x.start_ms < o.to_ms)
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, s: u64, kind: EventKind, node: &str, rsc: Option<&str>, task: Option<&str>) -> Event {
        Event {
            seq,
            resource: rsc.map(String::from),
            task: task.map(String::from),
            reporter: "n1".into(),
            ..Event::new(kind, node, s * 1000, format!("#{seq} {}", kind.as_str()))
        }
    }

    fn opts(from_s: u64, to_s: u64) -> Options {
        Options {
            from_ms: from_s * 1000,
            to_ms: to_s * 1000,
            slo: 0.999,
            resource: None,
            parents: BTreeMap::new(),
        }
    }

    use EventKind::*;

    /// Up at 100 s; the node is lost at 1,000 s and the resource is back at 1,010 s elsewhere;
    /// its monitor fails at 2,000 s and a restart takes 30 s; an operator moves it at 3,000 s
    /// (stopped 3,000, started 3,002: planned); the window ends at 4,000 s.
    fn history() -> Vec<Event> {
        vec![
            ev(1, 100, ResourceStarted, "n1", Some("web"), Some("start")),
            ev(2, 1000, NodeLost, "n1", None, None),
            ev(3, 1001, FenceSucceeded, "n1", None, None),
            ev(4, 1010, ResourceStarted, "n2", Some("web"), Some("start")),
            ev(5, 2000, MonitorFailed, "n2", Some("web"), Some("monitor")),
            ev(6, 2010, ResourceStopped, "n2", Some("web"), Some("stop")),
            ev(7, 2030, ResourceStarted, "n2", Some("web"), Some("start")),
            ev(8, 3000, OperatorCommand, "n3", Some("web"), Some("move")),
            ev(9, 3000, ResourceStopped, "n2", Some("web"), Some("stop")),
            ev(10, 3002, ResourceStarted, "n3", Some("web"), Some("start")),
        ]
    }

    #[test]
    fn failures_repairs_and_planned_moves_from_a_history() {
        let r = report(&history(), &opts(0, 4000)).unwrap();
        let web = &r.resources[0];
        assert_eq!(web.resource, "web");
        // Observed from 100 s: 3,900 s. Down unplanned: 10 + 30 s; planned: 2 s.
        assert_eq!(web.observed_ms, 3_900_000);
        assert_eq!(web.down_ms, 40_000);
        assert_eq!(web.planned_down_ms, 2_000);
        assert_eq!(web.up_ms, 3_858_000);
        assert_eq!(web.failures, 2);
        assert_eq!(web.mttr_ms, Some(20_000));
        assert_eq!(web.mtbf_ms, Some(1_929_000));
        let a = web.availability.unwrap();
        assert!((a - 3858.0 / 3898.0).abs() < 1e-12);
        // The same A from MTBF and MTTR (the seeds' formula).
        assert!((predict(1_929_000.0, 20_000.0).unwrap() - a).abs() < 1e-12);
        assert!((web.nines.unwrap() - (-(1.0 - a).log10())).abs() < 1e-12);
        assert!((web.yearly_downtime_s.unwrap() - (1.0 - a) * 365.25 * 86400.0).abs() < 1e-6);
        // Budget: 0.1 % of 3,900 s = 3.9 s, overspent by 36.1 s.
        assert_eq!(web.budget_ms, 3_900);
        assert_eq!(web.budget_remaining_ms, 3_900 - 40_000);
        let causes: Vec<(bool, Option<u64>)> = web.outages.iter().map(|o| (o.planned, o.cause_seq)).collect();
        assert_eq!(causes, vec![(false, Some(2)), (false, Some(5)), (true, Some(8))]);
    }

    #[test]
    fn a_drills_outages_are_planned_until_it_ends_or_expires() {
        let drill = |seq, s, kind, id: &str| {
            let mut e = ev(seq, s, kind, "n1", Some("web"), Some("kill-node"));
            e.details = vec![format!("id={id}"), "expires_ms=1500000".into()];
            e
        };
        let h = vec![
            ev(1, 100, ResourceStarted, "n1", Some("web"), Some("start")),
            drill(2, 1000, DrillStarted, "7"),
            // The drill powers n1 off: lost and fenced (unplanned kinds), but the drill did it.
            ev(3, 1001, NodeLost, "n1", None, None),
            ev(4, 1001, FenceSucceeded, "n1", None, None),
            ev(5, 1002, ResourceStarted, "n2", Some("web"), Some("start")),
            drill(6, 1003, DrillEnded, "7"),
            // A real failure afterwards.
            ev(7, 1100, NodeLost, "n2", None, None),
            ev(8, 1110, ResourceStarted, "n3", Some("web"), Some("start")),
            // A drill whose CLI died (no end): planned only until it expires at 1,500 s.
            drill(9, 1200, DrillStarted, "8"),
            ev(10, 1300, MonitorFailed, "n3", Some("web"), Some("monitor")),
            ev(11, 1301, ResourceStarted, "n3", Some("web"), Some("start")),
            ev(12, 1600, MonitorFailed, "n3", Some("web"), Some("monitor")),
            ev(13, 1604, ResourceStarted, "n3", Some("web"), Some("start")),
        ];
        let web = &report(&h, &opts(0, 2000)).unwrap().resources[0];
        let causes: Vec<(bool, Option<u64>)> = web.outages.iter().map(|o| (o.planned, o.cause_seq)).collect();
        assert_eq!(
            causes,
            vec![(true, Some(2)), (false, Some(7)), (true, Some(9)), (false, Some(12))]
        );
        assert_eq!(
            (web.planned_down_ms, web.down_ms, web.failures),
            (1_000 + 1_000, 10_000 + 4_000, 2)
        );
    }

    #[test]
    fn the_window_clips_time_and_counts_failures_that_began_in_it() {
        // From 1,005 s: the node-loss outage began before, so it is downtime but no failure.
        let r = report(&history(), &opts(1005, 4000)).unwrap();
        let web = &r.resources[0];
        assert_eq!(web.down_ms, 5_000 + 30_000);
        assert_eq!(web.failures, 1);
        assert_eq!(web.observed_ms, 2_995_000);
        assert_eq!(web.outages.len(), 3);
        // A window before anything happened observes nothing.
        let r = report(&history(), &opts(0, 50)).unwrap();
        assert_eq!(r.resources[0].observed_ms, 0);
        assert_eq!(r.resources[0].availability, None);
    }

    #[test]
    fn a_clone_is_up_while_one_instance_runs_and_a_group_falls_with_its_member() {
        let events = vec![
            ev(1, 0, ResourceStarted, "n1", Some("web"), None),
            ev(2, 0, ResourceStarted, "n2", Some("web"), None),
            ev(3, 0, ResourceStarted, "n1", Some("db"), None),
            // n2 lost: web still runs on n1.
            ev(4, 100, NodeLost, "n2", None, None),
            // db fails on n1: web (same node: its group) is stopped as a consequence.
            ev(5, 200, MonitorFailed, "n1", Some("db"), None),
            ev(6, 201, ResourceStopped, "n1", Some("web"), None),
            ev(7, 210, ResourceStarted, "n1", Some("db"), None),
            ev(8, 211, ResourceStarted, "n1", Some("web"), None),
        ];
        let r = report(&events, &opts(0, 300)).unwrap();
        let by: BTreeMap<&str, &ResourceAvailability> = r.resources.iter().map(|x| (x.resource.as_str(), x)).collect();
        assert_eq!(by["web"].down_ms, 10_000);
        assert_eq!(by["web"].failures, 1);
        assert_eq!(by["web"].outages[0].cause_seq, Some(5));
        assert_eq!(by["db"].down_ms, 10_000);
        // Only one resource asked for.
        let one = report(
            &events,
            &Options {
                resource: Some("db".into()),
                ..opts(0, 300)
            },
        )
        .unwrap();
        assert_eq!(one.resources.len(), 1);
    }

    #[test]
    fn an_operators_move_of_the_group_is_planned_for_its_members() {
        let events = vec![
            ev(1, 0, ResourceStarted, "n1", Some("db"), None),
            ev(2, 100, OperatorCommand, "n2", Some("g"), Some("move")),
            ev(3, 101, ResourceStopped, "n1", Some("db"), None),
            ev(4, 103, ResourceStarted, "n2", Some("db"), None),
        ];
        let mut o = opts(0, 200);
        let r = report(&events, &o).unwrap();
        assert_eq!(
            r.resources[0].down_ms, 2_000,
            "without the config: unexplained, unplanned"
        );
        o.parents = BTreeMap::from([("db".to_string(), vec!["g".to_string()])]);
        let r = report(&events, &o).unwrap();
        assert_eq!((r.resources[0].down_ms, r.resources[0].planned_down_ms), (0, 2_000));
        assert_eq!(r.resources[0].failures, 0);
    }

    #[test]
    fn no_failure_means_full_availability_and_no_mtbf() {
        let events = vec![ev(1, 0, ResourceStarted, "n1", Some("web"), None)];
        let r = report(&events, &opts(0, 1000)).unwrap();
        let web = &r.resources[0];
        assert_eq!((web.failures, web.mtbf_ms, web.mttr_ms), (0, None, None));
        assert_eq!(web.availability, Some(1.0));
        assert_eq!(web.nines, None);
        assert!(r.firing().is_empty());
    }

    #[test]
    fn burn_rates_follow_the_sre_table() {
        // Up for 3 days, then down for the last 10 minutes (unplanned).
        let d3 = 3 * 86_400;
        let events = vec![
            ev(1, 0, ResourceStarted, "n1", Some("web"), None),
            ev(2, d3 - 600, MonitorFailed, "n1", Some("web"), None),
        ];
        let r = report(&events, &opts(0, d3)).unwrap();
        let burn = &r.resources[0].burn;
        // 1 h window: 600 / 3600 down = 16.7 %, ÷ 0.1 % = 166.7×; 5 m: all down = 1000×.
        assert!((burn[0].long_rate.unwrap() - 600.0 / 3600.0 / 0.001).abs() < 1e-6);
        assert!((burn[0].short_rate.unwrap() - 1000.0).abs() < 1e-6);
        assert!(burn.iter().all(|b| b.firing), "{burn:?}");
        // One 10-minute outage near the start of 3 days: the 3-day window burns 2.3× (over 1×)
        // but its 6-hour one is clean, so nothing fires.
        let events = vec![
            ev(1, 0, ResourceStarted, "n1", Some("web"), None),
            ev(2, 1000, MonitorFailed, "n1", Some("web"), None),
            ev(3, 1600, ResourceStarted, "n1", Some("web"), None),
        ];
        let r = report(&events, &opts(0, d3)).unwrap();
        assert!(r.firing().is_empty(), "{:?}", r.resources[0].burn);
        assert_eq!(r.resources[0].burn[3].short_rate, Some(0.0));
    }

    #[test]
    fn burn_notes_are_made_when_a_row_starts_and_stops_firing() {
        let d3 = 3 * 86_400;
        let events = vec![
            ev(1, 0, ResourceStarted, "n1", Some("web"), None),
            ev(2, d3 - 600, MonitorFailed, "n1", Some("web"), None),
        ];
        let r = report(&events, &opts(0, d3)).unwrap();
        let (notes, firing) = burn_notes(&BTreeSet::new(), &r);
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes.iter().all(|(k, _, _)| *k == SloBurn));
        assert_eq!(notes[0].1, ("web".to_string(), 3_600_000));
        assert!(
            notes[0]
                .2
                .starts_with("web burns its error budget at 166.7x over 1h and 1000.0x over 5m (alert at 14.4x"),
            "{}",
            notes[0].2
        );
        // Still firing: nothing new.
        let (again, same) = burn_notes(&firing, &r);
        assert!(again.is_empty());
        assert_eq!(same, firing);
        // Repaired and clean for 6 h: every row's short window is clean, all four end.
        let mut events = events;
        events.push(ev(3, d3 - 590, ResourceStarted, "n1", Some("web"), None));
        let r = report(&events, &opts(0, d3 + 6 * 3600)).unwrap();
        let (ended, now) = burn_notes(&firing, &r);
        assert_eq!(
            ended.iter().filter(|(k, _, _)| *k == SloBurnEnded).count(),
            4,
            "{ended:?}"
        );
        assert!(now.is_empty());
        assert_eq!(window_name(259_200_000), "3d");
    }

    #[test]
    fn a_young_history_alerts_on_nothing() {
        // 16 s observed with a 30 ms outage: every rate is far above its factor, but no row
        // has a short window's worth of history.
        let events = vec![
            ev(1, 0, ResourceStarted, "n1", Some("web"), None),
            ev(2, 10, MonitorFailed, "n1", Some("web"), None),
            ev(3, 11, ResourceStarted, "n1", Some("web"), None),
        ];
        let r = report(&events, &opts(0, 16)).unwrap();
        assert!(r.resources[0].burn.iter().all(|b| b.long_rate.unwrap() > b.factor));
        assert!(r.firing().is_empty());
    }

    #[test]
    fn bad_windows_and_slos_are_refused() {
        assert!(matches!(
            report(&history(), &opts(10, 5)),
            Err(AvailabilityError::Window { .. })
        ));
        for slo in [0.0, 1.0, 1.5] {
            let o = Options { slo, ..opts(0, 10) };
            assert!(matches!(report(&history(), &o), Err(AvailabilityError::Slo(_))));
        }
        assert_eq!(nines(0.999).map(|n| (n * 1000.0).round()), Some(3000.0));
        assert_eq!(predict(0.0, 1.0), None);
    }
}
