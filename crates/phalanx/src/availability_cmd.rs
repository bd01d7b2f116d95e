//! `phalanx availability`: per resource, from the replicated event history (all of it that the
//! cluster still holds), the time up and down (unplanned and planned), failures, MTBF, MTTR,
//! A and its nines, the yearly downtime A implies, the error budget against `--slo`, and the
//! burn rates of Google SRE's multi-window table; `--predict --mtbf D` gives the availability a
//! mean time between failures of D would give with the MTTR measured here. The arithmetic is
//! `phalanx_core::availability` (pure); this module fetches, checks the flags and prints.

use crate::client::Client;
use crate::events_cmd::{first_page, parse_since, Since};
use anyhow::{bail, Result};
use phalanx_core::availability::{self, window_name as window, Report};
use phalanx_core::events::Event;
use serde::Serialize;

/// The command's flags.
#[derive(Debug, Clone)]
pub struct Query {
    /// A time (2026-12-01T10:00:00Z) or a duration ago (7d); None: the whole history.
    pub since: Option<String>,
    pub resource: Option<String>,
    /// In percent (99.95).
    pub slo: f64,
    /// `--predict --mtbf D`.
    pub predict_mtbf: Option<String>,
}

/// `--predict`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub resource: String,
    pub mtbf_ms: u64,
    /// Measured here: the mean RTO of the drills of the resource (or of its group or clone) in
    /// the window that took the service down, else the unplanned downtime per failure.
    pub mttr_ms: u64,
    /// Where `mttr_ms` comes from: `drills` or `failures`, and how many runs or outages.
    pub mttr_from: String,
    pub mttr_samples: usize,
    pub availability: f64,
    pub nines: Option<f64>,
    pub yearly_downtime_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    #[serde(flatten)]
    pub report: Report,
    pub predictions: Vec<Prediction>,
}

/// Compute the answer from `events` at `now_ms`, with `parents` from the committed config
/// (what `run` does after fetching; tested alone).
pub fn answer(
    events: &[Event],
    parents: std::collections::BTreeMap<String, Vec<String>>,
    q: &Query,
    now_ms: u64,
) -> Result<Answer> {
    if !(q.slo > 0.0 && q.slo < 100.0) {
        bail!("--slo {}: give a percentage above 0 and below 100 (99.95)", q.slo);
    }
    let from_ms = match q.since.as_deref() {
        None => events.first().map_or(now_ms, |e| e.time_ms.min(now_ms)),
        Some(s) => match parse_since(s, now_ms)? {
            Since::Ms(ms) => ms,
            Since::Seq(_) => bail!("--since {s}: give a time (2026-12-01T10:00:00Z) or a duration ago (7d)"),
        },
    };
    if from_ms > now_ms {
        bail!(
            "--since {}: that is in the future",
            q.since.as_deref().unwrap_or_default()
        );
    }
    if let Some(r) = &q.resource {
        let known: std::collections::BTreeSet<&str> = events
            .iter()
            .filter_map(|e| e.resource.as_deref())
            .map(availability::base)
            .collect();
        if !known.contains(r.as_str()) {
            let list: Vec<&str> = known.into_iter().collect();
            bail!(
                "no event of resource {r:?} in the cluster's history (resources seen: {})",
                if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(", ")
                }
            );
        }
    }
    let options = availability::Options {
        from_ms,
        to_ms: now_ms,
        slo: q.slo / 100.0,
        resource: q.resource.clone(),
        parents,
    };
    let report = availability::report(events, &options)?;
    let mut predictions = Vec::new();
    if let Some(mtbf) = &q.predict_mtbf {
        let mtbf_ms = phalanx_core::config::parse_duration(mtbf)
            .map_err(|e| anyhow::anyhow!("--mtbf {mtbf}: {e}"))?
            .as_millis() as u64;
        if mtbf_ms == 0 {
            bail!("--mtbf must be longer than 0");
        }
        for r in &report.resources {
            let drilled = drill_mttr(events, &r.resource, &options.parents, from_ms);
            let (mttr_ms, mttr_from, mttr_samples) = match (drilled, r.mttr_ms) {
                (Some((mean, n)), _) => (mean, "drills", n),
                (None, Some(m)) => (m, "failures", r.failures as usize),
                (None, None) => continue,
            };
            let a = availability::predict(mtbf_ms as f64, mttr_ms as f64).unwrap_or(0.0);
            predictions.push(Prediction {
                resource: r.resource.clone(),
                mtbf_ms,
                mttr_ms,
                mttr_from: mttr_from.into(),
                mttr_samples,
                availability: a,
                nines: availability::nines(a),
                yearly_downtime_s: (1.0 - a) * 365.25 * 86_400.0,
            });
        }
        if predictions.is_empty() {
            bail!(
                "--predict needs a measured MTTR: no drill took a resource down and no resource had an unplanned outage \
                 in the window (run `phalanx drill kill-node …` first)"
            );
        }
    }
    Ok(Answer { report, predictions })
}

/// The mean RTO of the drill runs since `from_ms` of `rsc` or of a group or clone holding it
/// that took the service down (a switchover is a planned move, and a run that failed no probe
/// caused no outage to recover from), and how many there were; None without one.
fn drill_mttr(
    events: &[Event],
    rsc: &str,
    parents: &std::collections::BTreeMap<String, Vec<String>>,
    from_ms: u64,
) -> Option<(u64, usize)> {
    use phalanx_core::drill::detail;
    let mine = |r: &str| r == rsc || parents.get(rsc).is_some_and(|p| p.iter().any(|x| x == r));
    let rtos: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == phalanx_core::events::EventKind::DrillRun && e.time_ms >= from_ms)
        .filter(|e| e.resource.as_deref().is_some_and(mine) && e.task.as_deref() != Some("switchover"))
        .filter(|e| detail(e, "failed_probes").is_some_and(|f| f != "0"))
        .filter_map(|e| detail(e, "rto_ms")?.parse().ok())
        .collect();
    (!rtos.is_empty()).then(|| (rtos.iter().sum::<u64>() / rtos.len() as u64, rtos.len()))
}

/// Fetch the history from the first node that answers and compute.
pub async fn run(client: &Client, apis: &[String], q: &Query, now_ms: u64) -> Result<Answer> {
    let (at, page) = first_page(client, apis, "/v1/events?since=0").await?;
    let events: Vec<Event> = page.events.into_iter().map(|v| v.event).collect();
    // Groups and clones of the committed config (a cluster with none yet has no resources).
    let parents = match crate::config_cmd::show(client, &apis[at], None).await {
        Ok(v) => v
            .text
            .and_then(|t| phalanx_core::config::parse(&t).ok())
            .map(|c| availability::parents(&c))
            .unwrap_or_default(),
        Err(e) => {
            tracing::debug!(error = %e, "no committed config: groups are not known");
            Default::default()
        }
    };
    answer(&events, parents, q, now_ms)
}

/// A duration for a person, to two units: `30ms`, `16.4s`, `12m 8s`, `3h 5m`, `2d 4h`.
fn dur(ms: u64) -> String {
    let (s, m, h, d) = (ms / 1000, ms / 60_000, ms / 3_600_000, ms / 86_400_000);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{m}m {}s", s % 60),
        3_600_000..86_400_000 => format!("{h}h {}m", m % 60),
        _ => format!("{d}d {}h", h % 24),
    }
}

fn pct(a: Option<f64>) -> String {
    a.map_or("-".into(), |a| format!("{:.4} %", a * 100.0))
}

/// For a person: one line per resource, then burn-rate alerts firing, then the outages.
pub fn render(a: &Answer) -> String {
    let r = &a.report;
    let mut out = format!(
        "Availability from {} to {} (SLO {} %)\n\n",
        phalanx_node::events::rfc3339(r.from_ms),
        phalanx_node::events::rfc3339(r.to_ms),
        r.slo * 100.0
    );
    if r.resources.is_empty() {
        out.push_str("No resource has started in this window of the history.\n");
        return out;
    }
    out.push_str(&format!(
        "{:<16} {:>10} {:>10} {:>9} {:>9} {:>4} {:>10} {:>9} {:>11} {:>5} {:>11} {:>12}\n",
        "RESOURCE",
        "OBSERVED",
        "UP",
        "DOWN",
        "PLANNED",
        "FAIL",
        "MTBF",
        "MTTR",
        "A",
        "NINES",
        "DOWN/YEAR",
        "BUDGET USED"
    ));
    for x in &r.resources {
        out.push_str(&format!(
            "{:<16} {:>10} {:>10} {:>9} {:>9} {:>4} {:>10} {:>9} {:>11} {:>5} {:>11} {:>12}\n",
            x.resource,
            dur(x.observed_ms),
            dur(x.up_ms),
            dur(x.down_ms),
            dur(x.planned_down_ms),
            x.failures,
            x.mtbf_ms.map_or("-".into(), dur),
            x.mttr_ms.map_or("-".into(), dur),
            pct(x.availability),
            x.nines.map_or(
                if x.availability == Some(1.0) {
                    "∞".into()
                } else {
                    "-".into()
                },
                |n| format!("{n:.2}")
            ),
            x.yearly_downtime_s.map_or("-".into(), |s| dur((s * 1000.0) as u64)),
            x.budget_used_pct.map_or("-".into(), |p| format!("{p:.0} %")),
        ));
    }
    let firing = r.firing();
    out.push('\n');
    if firing.is_empty() {
        out.push_str(
            "Burn-rate alerts (1h/5m 14.4x, 6h/30m 6x, 1d/2h 3x, 3d/6h 1x; each needs a short window's worth of history): none firing.\n",
        );
    } else {
        for (rsc, b) in firing {
            out.push_str(&format!(
                "BURNING {rsc}: {:.1}x over {} and {:.1}x over {} (alert at {}x)\n",
                b.long_rate.unwrap_or(0.0),
                window(b.long_ms),
                b.short_rate.unwrap_or(0.0),
                window(b.short_ms),
                b.factor
            ));
        }
    }
    let outages: Vec<_> = r
        .resources
        .iter()
        .flat_map(|x| x.outages.iter().map(move |o| (&x.resource, o)))
        .collect();
    if !outages.is_empty() {
        out.push_str("\nOutages:\n");
        for (rsc, o) in outages {
            let len = o.end_ms.map_or("still down".into(), |e| dur(e - o.start_ms));
            out.push_str(&format!(
                "  {} {:<16} {:<9} {:>10}  {}\n",
                phalanx_node::events::rfc3339(o.start_ms),
                rsc,
                if o.planned { "planned" } else { "unplanned" },
                len,
                o.cause
            ));
        }
    }
    for p in &a.predictions {
        out.push_str(&format!(
            "\nPredicted for {}: MTBF {} and the measured MTTR {} (mean of {} {}) give A = {:.5} % ({} nines, {} down a \
             year)\n",
            p.resource,
            dur(p.mtbf_ms),
            dur(p.mttr_ms),
            p.mttr_samples,
            if p.mttr_from == "drills" { "drill runs" } else { "unplanned outages" },
            p.availability * 100.0,
            p.nines.map_or("∞".into(), |n| format!("{n:.2}")),
            dur((p.yearly_downtime_s * 1000.0) as u64)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_core::events::EventKind;

    fn ev(seq: u64, s: u64, kind: EventKind, node: &str, rsc: Option<&str>) -> Event {
        Event {
            seq,
            resource: rsc.map(String::from),
            reporter: "n1".into(),
            ..Event::new(kind, node, s * 1000, kind.as_str())
        }
    }

    fn q() -> Query {
        Query {
            since: None,
            resource: None,
            slo: 99.95,
            predict_mtbf: None,
        }
    }

    #[test]
    fn bad_flags_get_clear_errors() {
        let events = vec![ev(1, 10, EventKind::ResourceStarted, "n1", Some("web"))];
        let now = 100_000;
        let e = |q: Query| answer(&events, Default::default(), &q, now).unwrap_err().to_string();
        assert!(e(Query { slo: 100.0, ..q() }).contains("--slo"));
        assert!(e(Query {
            since: Some("2099-01-01T00:00:00Z".into()),
            ..q()
        })
        .contains("in the future"));
        assert!(e(Query {
            since: Some("42".into()),
            ..q()
        })
        .contains("give a time"));
        assert!(e(Query {
            resource: Some("wbe".into()),
            ..q()
        })
        .contains("resources seen: web"));
        // No failure: nothing to predict from.
        assert!(e(Query {
            predict_mtbf: Some("2000h".into()),
            ..q()
        })
        .contains("measured MTTR"));
    }

    #[test]
    fn predict_takes_the_mttr_from_the_drills_that_took_the_service_down() {
        let run = |seq, t, scenario: &str, rsc: &str, rto: u64, failed: u64| {
            let mut e = ev(seq, t, EventKind::DrillRun, "n1", Some(rsc));
            e.task = Some(scenario.into());
            e.details = vec![format!("rto_ms={rto}"), format!("failed_probes={failed}")];
            e
        };
        let events = vec![
            ev(1, 0, EventKind::ResourceStarted, "n1", Some("web")),
            // A drill of web's group, one of web, a switchover (planned) and a run that took
            // nothing down (one link cut): the MTTR is the mean of the first two.
            run(2, 10, "kill-node", "shop", 300, 30),
            run(3, 20, "kill-service", "web", 500, 50),
            run(4, 30, "switchover", "web", 40, 4),
            run(5, 40, "cut-link", "web", 0, 0),
            run(6, 50, "kill-node", "db", 900, 90),
        ];
        let parents = std::collections::BTreeMap::from([("web".to_string(), vec!["shop".to_string()])]);
        let a = answer(
            &events,
            parents,
            &Query {
                predict_mtbf: Some("2000h".into()),
                resource: Some("web".into()),
                ..q()
            },
            100_000,
        )
        .unwrap();
        let p = &a.predictions[0];
        assert_eq!((p.mttr_ms, p.mttr_from.as_str(), p.mttr_samples), (400, "drills", 2));
        assert!(render(&a).contains("(mean of 2 drill runs)"), "{}", render(&a));
    }

    #[test]
    fn predict_uses_the_measured_mttr() {
        let events = vec![
            ev(1, 0, EventKind::ResourceStarted, "n1", Some("web")),
            ev(2, 50, EventKind::MonitorFailed, "n1", Some("web")),
            ev(3, 60, EventKind::ResourceStarted, "n1", Some("web")),
        ];
        let a = answer(
            &events,
            Default::default(),
            &Query {
                predict_mtbf: Some("2000h".into()),
                ..q()
            },
            100_000,
        )
        .unwrap();
        let p = &a.predictions[0];
        assert_eq!(p.mttr_ms, 10_000);
        let want = 7_200_000_000.0 / (7_200_000_000.0 + 10_000.0);
        assert!((p.availability - want).abs() < 1e-12);
        assert_eq!(
            [30, 16_400, 728_000, 11_100_000, 190_000_000].map(dur),
            ["30ms", "16.4s", "12m 8s", "3h 5m", "2d 4h"]
        );
        assert_eq!([300_000, 3_600_000, 259_200_000].map(window), ["5m", "1h", "3d"]);
        let text = render(&a);
        assert!(text.contains("web"), "{text}");
        assert!(text.contains("unplanned"), "{text}");
        assert!(text.contains("Predicted for web"), "{text}");
    }
}
