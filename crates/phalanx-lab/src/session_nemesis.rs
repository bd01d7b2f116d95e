//! `tests/lab/session-check` with faults: the session store of a 3-node lab cluster (network
//! namespaces, one link each, clients in the client namespace) checked for linearizability
//! (`session_check`) while a seeded nemesis, beside the clients, kills the store's leader (and
//! restarts it), pauses a node (SIGSTOP, then SIGCONT), partitions a node from the others (the
//! client still reaches it: it must answer SERVER_ERROR, never a stale read or a false STORED),
//! and partitions the store's leader. Each fault lasts 1–3 s, then heals; one fault at a time.
//! `plant_stale_reads` runs the daemons with a planted bug (followers answer reads from their
//! own copy), which the check must catch. The daemons' session logs are small
//! (`PHALANX_TEST_SESSIONS_SMALL_LOG`): each node snapshots and purges its log every second or
//! so, and a node a fault left behind the leader's purge point is sent a snapshot, so that
//! snapshots, purges and installs happen under the faults too.

use crate::lab::{cluster_in, in_netns, phalanx_exe, Lab};
use crate::mcclient::{self, McClient};
use crate::session_check::{self, Report, RunResult, Window, Workload};
use anyhow::{Context, Result};
use phalanx::harness::{LocalCluster, Spec};
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the nemesis did in one run (for the run's line).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub kills: usize,
    pub pauses: usize,
    pub partitions: usize,
    /// Snapshots the leader sent to a node left behind its log's purge point.
    pub snapshots_installed: usize,
    pub notes: Vec<String>,
}

/// Snapshots the nodes have installed so far, as their logs say.
fn snapshots_installed(c: &LocalCluster) -> usize {
    (1..=3)
        .map(|i| c.log_count(&format!("n{i}"), "sessions snapshot installed"))
        .sum()
}

/// The node (1-based index) leading the session store, as any node that answers says.
fn store_leader(c: &LocalCluster) -> Option<usize> {
    let (code, out, _) = c.cli(&["sessions", "status", "--json"]).ok()?;
    if code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["leader"].as_str()?.strip_prefix('n')?.parse().ok()
}

async fn nemesis(lab: &Lab, c: &mut LocalCluster, seed: u64, w: Window) -> Faults {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = Faults::default();
    // Let the clients start against a healthy cluster.
    tokio::time::sleep(Duration::from_millis(800)).await;
    while Instant::now() + Duration::from_secs(4) < w.end {
        let hold = Duration::from_millis(rng.gen_range(1000..3000));
        let kind = rng.gen_range(0..4);
        let leader = store_leader(c).unwrap_or(1);
        let any = rng.gen_range(1..=lab.nodes);
        let r: Result<()> = async {
            match kind {
                0 => {
                    let name = format!("n{leader}");
                    lab.crash(leader)?;
                    f.kills += 1;
                    tokio::time::sleep(hold).await;
                    lab.revive(leader)?;
                    c.reap(&name)?;
                    c.start(&name)?;
                }
                1 => {
                    lab.pause(any);
                    f.pauses += 1;
                    tokio::time::sleep(hold).await;
                    lab.resume(any);
                }
                _ => {
                    let who = if kind == 2 { any } else { leader };
                    let others: Vec<usize> = (1..=lab.nodes).filter(|i| *i != who).collect();
                    lab.partition(&[who], &others, false)?;
                    f.partitions += 1;
                    tokio::time::sleep(hold).await;
                    lab.heal_network()?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            f.notes.push(format!("{e:#}"));
            let _ = lab.heal_network();
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(800..2000))).await;
    }
    f
}

/// Wait (up to a minute) until every node's store acknowledges a write: a run starts from a
/// healthy cluster.
async fn ready(addrs: &[SocketAddr]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in addrs {
        loop {
            let t = Duration::from_secs(2);
            if let Ok(mut c) = McClient::connect(*a, t, t).await {
                if matches!(c.set("session-check.ready", b"1").await, Ok(mcclient::Store::Stored)) {
                    break;
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("the session store on {a} acknowledged no write within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The lab's arguments.
pub struct Args {
    pub runs: usize,
    pub seconds: f64,
    pub seed: u64,
    /// Run the daemons with the planted bug `PHALANX_TEST_STALE_READS` (followers answer reads
    /// from their own copy): the check must then find violations.
    pub plant_stale_reads: bool,
}

/// Every run: the workload beside the nemesis, then the checker; `each` after every run.
pub fn run(args: Args, mut each: impl FnMut(usize, u64, &RunResult, &Faults) + Send + 'static) -> Result<Report> {
    Lab::available()?;
    let lab = Lab::create(3, 1)?;
    let spec = Spec {
        nodes: 3,
        heartbeat: Duration::from_millis(100),
        links: 1,
        exe: phalanx_exe()?,
        keep: std::env::var_os("PHALANX_KEEP").is_some(),
        extra_config: "\n[sessions]\n".to_string(),
        cluster_extra: String::new(),
    };
    let mut c = cluster_in(spec, &lab)?;
    for i in 1..=3 {
        let n = format!("n{i}");
        c.set_env(&n, phalanx_node::sessions::SMALL_LOG, "1")?;
        if args.plant_stale_reads {
            c.set_env(&n, phalanx_node::sessions::PLANT_STALE_READS, "1")?;
        }
    }
    let addrs: Vec<SocketAddr> = (1..=3)
        .map(|i| SocketAddr::new(lab.node_ip(i, 0).into(), phalanx_core::config::DEFAULT_SESSIONS_PORT))
        .collect();
    let client = lab.client_ns();
    let worker = in_netns(&client, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            c.start_all()?;
            c.wait_stable(Duration::from_secs(60)).await?;
            let mut report = Report::default();
            for i in 0..args.runs {
                let seed = args.seed.wrapping_add(i as u64);
                ready(&addrs).await?;
                let w = Workload::new(&addrs, Duration::from_secs_f64(args.seconds), seed);
                let installed = snapshots_installed(&c);
                let (rec, mut faults) = session_check::run_beside(&w, |win| nemesis(&lab, &mut c, seed, win)).await?;
                faults.snapshots_installed = snapshots_installed(&c).saturating_sub(installed);
                let kept = rec.clone();
                let r = session_check::check_timed(rec).await?;
                // (A planted run's violations are expected: nothing to keep.)
                if !args.plant_stale_reads && (!r.violations.is_empty() || r.unknown > 0) {
                    let path = std::env::temp_dir().join(format!("session-check-seed-{seed}.history"));
                    match kept.dump(&path, &r) {
                        Ok(()) => eprintln!(
                            "session-check: run {} (seed {seed}) failed or was undecided; its history is in {}{}",
                            i + 1,
                            path.display(),
                            if std::env::var_os("PHALANX_KEEP").is_some() {
                                format!(", the nodes' logs in {}", c.dir().display())
                            } else {
                                " (PHALANX_KEEP=1 keeps the nodes' logs)".to_string()
                            }
                        ),
                        Err(e) => eprintln!("session-check: could not write {}: {e}", path.display()),
                    }
                }
                report.add(&r);
                each(i, seed, &r, &faults);
            }
            c.stop_all();
            drop(lab);
            Ok(report)
        })
    });
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the session check's thread panicked"))?
        .context("session check")
}
