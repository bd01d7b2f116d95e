//! `phalanx-lab bench pg-failover` (`tests/lab/pg-failover`, issue 18): the write outage and
//! the lost acknowledged commits when the PostgreSQL primary's node crashes, phalanx (the
//! built-in `pgsql` agent, `sync = "on"`, the write VIP) beside Patroni (Debian's, etcd 3.4,
//! `synchronous_mode`) at its default timing and at the fastest its documentation allows, on
//! the same 3-node lab (see [`crate::pg_lab`]), in one invocation. phalanx gets a fresh lab and
//! runs `runs` crashes in a row; Patroni a fresh lab and cluster per crash (`--patroni-reuse`:
//! one for all, which its second failover in a row did not survive here). Each run: the writer
//! commits, the primary's node crashes, the outage is read from the writer's log, the
//! acknowledged commits are looked up on the new primary, and the crashed node is revived and
//! must rejoin as a replica.
//! A benchmark: it prints figures and asserts nothing.

use crate::bench::dist;
use crate::lab::Lab;
use crate::pg_lab::{lost_commits, wait_primary, write_outage, PatroniPg, PatroniTiming, PhalanxPg, Writer};
use anyhow::{bail, Result};
use indicatif::ProgressBar;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a system may take to be ready (first start, or a node's rejoin).
const READY: Duration = Duration::from_secs(240);
/// How long the writer may stay without an acknowledged commit after a crash (Patroni's
/// default timing takes 30-40 s).
const RECOVER: Duration = Duration::from_secs(120);

pub struct Args {
    pub runs: usize,
    pub exe: PathBuf,
    pub json: bool,
    /// Only these systems (empty: all).
    pub only: Vec<String>,
    /// Patroni: one cluster for every run (default: a fresh one per run).
    pub reuse: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outage {
    pub min: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    /// How the system was set up (timing).
    pub settings: String,
    pub runs: usize,
    /// Write outage per crash (ms): first failed commit → first acknowledged commit after it.
    pub outage_ms: Outage,
    pub outages_ms: Vec<u64>,
    pub acked_commits: usize,
    /// Acknowledged commits missing on the new primary, over all runs.
    pub lost_commits: usize,
    /// Time from the crashed node's revival until it streamed again as a replica (ms, p50).
    pub rejoin_p50_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub phalanx: Option<SystemResult>,
    pub patroni: Option<SystemResult>,
    pub patroni_fast: Option<SystemResult>,
    /// phalanx's p50 outage ÷ Patroni's at its defaults (goal ≤ 0.1).
    pub ratio_vs_patroni: Option<f64>,
    /// phalanx's p50 outage ÷ Patroni's at its fastest settings (goal ≤ 0.5).
    pub ratio_vs_patroni_fast: Option<f64>,
    /// Runs that failed, and why.
    pub notes: Vec<String>,
}

pub const SYSTEMS: [&str; 3] = ["phalanx", "patroni", "patroni_fast"];

/// One system's figures from its runs.
#[derive(Default)]
struct Tally {
    outages: Vec<u64>,
    acked: usize,
    lost: usize,
    rejoins: Vec<u64>,
}

impl Tally {
    fn result(self, settings: String) -> Option<SystemResult> {
        if self.outages.is_empty() {
            return None;
        }
        let d = dist(self.outages.clone());
        Some(SystemResult {
            settings,
            runs: self.outages.len(),
            outage_ms: Outage {
                min: d.min,
                p50: d.p50,
                p99: d.p99,
                max: d.max,
            },
            outages_ms: self.outages,
            acked_commits: self.acked,
            lost_commits: self.lost,
            rejoin_p50_ms: if self.rejoins.is_empty() {
                0
            } else {
                dist(self.rejoins).p50
            },
        })
    }
}

/// One crash of the primary's node under the writer: `crash(i)` kills node i, `revive(i)`
/// brings it back; the node must rejoin before this returns.
fn one_run(
    lab: &Lab,
    hosts: &[String],
    run: usize,
    tally: &mut Tally,
    crash: &mut dyn FnMut(usize) -> Result<()>,
    revive: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<()> {
    let replicas = lab.nodes - 1;
    let p = wait_primary(lab, replicas, true, READY)?;
    let w = Writer::start(lab, hosts.to_vec(), (run as i64 + 1) * 1_000_000_000);
    let started = Instant::now();
    w.wait_acked_after(started, 50, READY)?;
    let crash_at = Instant::now();
    crash(p)?;
    // Recovered: an outage seen, then 20 commits acknowledged after it.
    if let Err(e) = w.wait_recovered(crash_at, 20, RECOVER) {
        w.finish()?;
        return Err(e.context(format!("after the crash of n{p}")));
    }
    let log = w.finish()?;
    let outage = write_outage(&log, crash_at).unwrap_or_default();
    let lost = lost_commits(lab, hosts, &log)?;
    tally.outages.push(outage.as_millis() as u64);
    tally.acked += log.iter().filter(|o| o.acked.is_some()).count();
    tally.lost += lost.len();
    let revived = Instant::now();
    revive(p)?;
    wait_primary(lab, replicas, true, READY)?;
    tally.rejoins.push(revived.elapsed().as_millis() as u64);
    Ok(())
}

async fn phalanx_runs(args: &Args, pb: &ProgressBar, notes: &mut Vec<String>) -> Result<Tally> {
    let lab = Lab::create(3, 2)?;
    let pg = std::sync::Mutex::new(PhalanxPg::start(&lab, &args.exe, "on").await?);
    let hosts = PhalanxPg::write_hosts();
    setup_table(&lab, &hosts)?;
    let mut tally = Tally::default();
    for run in 0..args.runs {
        let mut crash = |i: usize| -> Result<()> {
            lab.crash(i)?;
            pg.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .cluster
                .reap(&format!("n{i}"))
        };
        let mut revive = |i: usize| -> Result<()> {
            lab.revive(i)?;
            pg.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .cluster
                .start(&format!("n{i}"))
        };
        if let Err(e) = one_run(&lab, &hosts, run, &mut tally, &mut crash, &mut revive) {
            notes.push(format!("phalanx run {}: {e:#}", run + 1));
            break;
        }
        pb.inc(1);
    }
    Ok(tally)
}

/// Patroni's runs: each on a fresh cluster (bootstrapped by Patroni), unless `args.reuse`:
/// then one cluster for every run, as phalanx's (Patroni 3.0.2 in synchronous_mode did not
/// complete its second failover in a row: README).
fn patroni_runs(
    args: &Args,
    timing: PatroniTiming,
    name: &str,
    pb: &ProgressBar,
    notes: &mut Vec<String>,
) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut current: Option<(Lab, std::sync::Mutex<PatroniPg>)> = None;
    for run in 0..args.runs {
        if current.is_none() || !args.reuse {
            // The previous lab gone first (its processes and namespaces).
            drop(current.take());
            let lab = Lab::create(3, 2)?;
            let pg = std::sync::Mutex::new(PatroniPg::start(&lab, timing)?);
            setup_table(&lab, &PatroniPg::write_hosts(&lab))?;
            current = Some((lab, pg));
        }
        let Some((lab, pg)) = current.as_ref() else { break };
        let hosts = PatroniPg::write_hosts(lab);
        let mut crash = |i: usize| lab.crash(i);
        let mut revive = |i: usize| -> Result<()> {
            lab.revive(i)?;
            pg.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.restart_node(lab, i)
        };
        if let Err(e) = one_run(lab, &hosts, run, &mut tally, &mut crash, &mut revive) {
            notes.push(format!("{name} run {}: {e:#}", run + 1));
            break;
        }
        pb.inc(1);
    }
    Ok(tally)
}

/// The writer's table, once the first primary is up.
fn setup_table(lab: &Lab, hosts: &[String]) -> Result<()> {
    wait_primary(lab, lab.nodes - 1, true, READY)?;
    crate::pg_lab::sql_primary(lab, hosts, &["create table if not exists acks (id bigint primary key)"])?;
    Ok(())
}

pub async fn run(args: Args) -> Result<Report> {
    Lab::available()?;
    if let Some(o) = args.only.iter().find(|o| !SYSTEMS.contains(&o.as_str())) {
        bail!("--only {o}: no such system (there are: {})", SYSTEMS.join(", "));
    }
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let systems: Vec<&str> = SYSTEMS.iter().copied().filter(|s| wanted(s)).collect();
    let pb = crate::progress(args.json, (systems.len() * args.runs) as u64, "crashes");
    let mut notes = Vec::new();
    let mut results: BTreeMap<&str, SystemResult> = BTreeMap::new();
    for s in systems {
        pb.set_message(s.to_string());
        let (tally, settings) = match s {
            "phalanx" => (
                phalanx_runs(&args, &pb, &mut notes).await,
                "heartbeat 100 ms, dead after 3 misses, sync = on".to_string(),
            ),
            _ => {
                let t = if s == "patroni" {
                    PatroniTiming::DEFAULT
                } else {
                    PatroniTiming::FASTEST
                };
                (
                    patroni_runs(&args, t, s, &pb, &mut notes),
                    format!(
                        "ttl {} s, loop_wait {} s, retry_timeout {} s, synchronous_mode",
                        t.ttl, t.loop_wait, t.retry_timeout
                    ),
                )
            }
        };
        match tally {
            Ok(t) => {
                if let Some(r) = t.result(settings) {
                    results.insert(s, r);
                }
            }
            Err(e) => notes.push(format!("{s}: {e:#}")),
        }
    }
    pb.finish_and_clear();
    let ratio = |b: &str| {
        let (a, b) = (results.get("phalanx")?, results.get(b)?);
        (b.outage_ms.p50 > 0).then(|| a.outage_ms.p50 as f64 / b.outage_ms.p50 as f64)
    };
    Ok(Report {
        ratio_vs_patroni: ratio("patroni"),
        ratio_vs_patroni_fast: ratio("patroni_fast"),
        phalanx: results.remove("phalanx"),
        patroni: results.remove("patroni"),
        patroni_fast: results.remove("patroni_fast"),
        notes,
    })
}

pub fn render(r: &Report) -> String {
    let mut s = String::from("PostgreSQL primary's node crashed under a committing writer (3 nodes)\n");
    s += "system       | runs | outage min / p50 / p99 / max (ms) | acked | lost | rejoin p50 (ms) | settings\n";
    for (name, x) in [
        ("phalanx", &r.phalanx),
        ("patroni", &r.patroni),
        ("patroni_fast", &r.patroni_fast),
    ] {
        if let Some(x) = x {
            let o = &x.outage_ms;
            s += &format!(
                "{name:<12} | {:>4} | {:>6} / {:>6} / {:>6} / {:>6}     | {:>5} | {:>4} | {:>15} | {}\n",
                x.runs, o.min, o.p50, o.p99, o.max, x.acked_commits, x.lost_commits, x.rejoin_p50_ms, x.settings
            );
        }
    }
    let ratio = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    s += &format!(
        "phalanx ÷ patroni (p50): {} (goal ≤ 0.1); phalanx ÷ patroni_fast: {} (goal ≤ 0.5)\n",
        ratio(r.ratio_vs_patroni),
        ratio(r.ratio_vs_patroni_fast)
    );
    for n in &r.notes {
        s += &format!("note: {n}\n");
    }
    s
}
