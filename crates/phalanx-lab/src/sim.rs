//! `phalanx-lab sim` (`tests/sim/run`): the seeded in-process simulation
//! (`phalanx_node::testing`) over many seeds and steps, longer than `cargo test` runs it. Each
//! seed runs on its own current-thread runtime with paused time; seeds are spread over `--jobs`
//! threads. A violation prints the seed, the invariant, the steps as they were resolved and the
//! world's last events, and the command that replays it; the run then exits 1.

use anyhow::{Context, Result};
use phalanx_node::testing::{run_seed, Options, SeedReport};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct Args {
    /// Seeds `first_seed ..= first_seed + seeds - 1`, unless `seed` names one.
    pub seeds: usize,
    pub first_seed: u64,
    pub seed: Option<u64>,
    pub steps: usize,
    /// Cluster size for every seed (None: 3, or 5 for one seed in four).
    pub nodes: Option<usize>,
    pub jobs: usize,
    /// Print each seed's line to stderr as it finishes.
    pub progress: bool,
}

/// One seed's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SeedLine {
    pub seed: u64,
    pub nodes: usize,
    pub steps: usize,
    pub virtual_s: f64,
    pub wall_s: f64,
    pub events: usize,
    pub violations: usize,
}

/// The run's figures (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seeds: usize,
    pub steps: usize,
    pub violations: usize,
    pub steps_per_s: f64,
    /// Each violation: seed, invariant, what, the replay command, the steps and last events.
    pub violation_details: Vec<String>,
    pub wall_s: f64,
    pub virtual_s: f64,
    pub jobs: usize,
    pub per_seed: Vec<SeedLine>,
}

/// One seed on a fresh paused runtime.
fn one(seed: u64, args: &Args) -> Result<(SeedReport, Duration)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .context("building the simulation's runtime")?;
    let mut opts = Options::new(seed, args.steps);
    opts.nodes = args.nodes;
    let t = Instant::now();
    let r = rt.block_on(run_seed(&opts)).with_context(|| format!("seed {seed}"))?;
    Ok((r, t.elapsed()))
}

/// Run every seed, `jobs` at a time.
pub fn run(args: &Args) -> Result<Report> {
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (0..args.seeds as u64).map(|i| args.first_seed + i).collect(),
    };
    let jobs = args.jobs.clamp(1, seeds.len().max(1));
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Result<(SeedReport, Duration)>>> = Mutex::new(Vec::new());
    let wall = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(seed) = seeds.get(i) else { break };
                let r = one(*seed, args);
                if args.progress {
                    if let Ok((r, t)) = &r {
                        eprintln!(
                            "seed {}: {} nodes, {} steps, {:.0} virtual s, {:.1} s, {} violation(s)",
                            r.seed,
                            r.nodes,
                            r.steps,
                            r.virtual_ms as f64 / 1000.0,
                            t.as_secs_f64(),
                            r.violations.len()
                        );
                    }
                }
                done.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            });
        }
    });
    let wall_s = wall.elapsed().as_secs_f64();
    let mut reports = Vec::new();
    for r in done.into_inner().unwrap_or_else(|p| p.into_inner()) {
        reports.push(r?);
    }
    reports.sort_by_key(|(r, _)| r.seed);
    let steps: usize = reports.iter().map(|(r, _)| r.steps).sum();
    Ok(Report {
        seeds: reports.len(),
        steps,
        violations: reports.iter().map(|(r, _)| r.violations.len()).sum(),
        steps_per_s: steps as f64 / wall_s.max(1e-9),
        violation_details: reports.iter().flat_map(|(r, _)| r.details()).collect(),
        wall_s,
        virtual_s: reports.iter().map(|(r, _)| r.virtual_ms as f64 / 1000.0).sum(),
        jobs,
        per_seed: reports
            .iter()
            .map(|(r, t)| SeedLine {
                seed: r.seed,
                nodes: r.nodes,
                steps: r.steps,
                virtual_s: r.virtual_ms as f64 / 1000.0,
                wall_s: t.as_secs_f64(),
                events: r.events,
                violations: r.violations.len(),
            })
            .collect(),
    })
}

/// The human summary.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for v in &r.violation_details {
        s += v;
        s += "\n";
    }
    s += &format!(
        "sim: {} seed(s), {} steps, {:.0} virtual s in {:.1} s on {} thread(s): {:.0} steps/s; violations: {}\n",
        r.seeds, r.steps, r.virtual_s, r.wall_s, r.jobs, r.steps_per_s, r.violations
    );
    s
}
