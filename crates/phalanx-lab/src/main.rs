//! `phalanx-lab`: the test rig's command line (clap): the lab demo, the nemesis, the seeded
//! in-process simulation and the benchmarks. The scripts under `tests/lab`, `tests/sim` and
//! `tests/bench` run it; every command prints human output, or JSON with `--json`.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use phalanx_core::config::parse_duration;
use phalanx_lab::{
    bench, bench_lb, bench_sched, bench_sessions, bench_state, demo_lab, httpload, lab, lab_bench, nemesis,
    session_check, sim,
};
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "phalanx-lab",
    version,
    about = "phalanx's test rig: lab, nemesis, benchmarks"
)]
struct Cli {
    /// Print JSON instead of human output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The demo in network namespaces (root): a real virtual IP in front of the service; crash
    /// its holder and print the client-observed outage (was `phalanx demo --lab`).
    Demo {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Heartbeat interval of the demo cluster.
        #[arg(long, default_value = "100ms", value_parser = duration)]
        heartbeat: Duration,
        /// Keep the scratch folder (config, key, logs, data) afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// A seeded random schedule of faults over a lab cluster (network namespaces, root), with
    /// the safety checkers running throughout; exits 1 on any violation (`tests/lab/nemesis`).
    Nemesis {
        #[arg(long, default_value_t = 40)]
        steps: usize,
        /// The schedule's seed (default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// phalanx, or keepalived (the partition steps against a keepalived pair).
        #[arg(long, default_value = "phalanx", value_parser = ["phalanx", "keepalived"])]
        target: String,
        /// Cluster size: 3 or 5.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Only this kind of fault (e.g. one_way_partition): the seed's schedule, filtered.
        #[arg(long, value_parser = nemesis::FAULT_KINDS)]
        only: Option<String>,
    },
    /// The seeded in-process simulation (no root, no network): real nodes on a fake network
    /// with fake agents and a fake power switch, on paused time, through seeded crashes, pauses,
    /// partitions, loss and failing monitors, checking invariants 2-4 and liveness; exits 1 on
    /// any violation (`tests/sim/run`).
    Sim {
        /// Number of seeds (from --first-seed on).
        #[arg(long, default_value_t = 16)]
        seeds: usize,
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// Run only this seed (a replay).
        #[arg(long)]
        seed: Option<u64>,
        /// Steps per seed.
        #[arg(long, default_value_t = 500)]
        steps: usize,
        /// Cluster size for every seed (default: 3, or 5 for one seed in four).
        #[arg(long, value_parser = clap::value_parser!(u64).range(3..=7))]
        nodes: Option<u64>,
        /// Seeds run at once (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// The load balancer benchmark's HTTP backend: HTTP/1.1 keep-alive, `200` with a small fixed
    /// body to every request, until killed.
    Backend {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// An open-loop HTTP GET generator: a fixed rate over keep-alive connections, latency from
    /// each request's intended send time (no coordinated omission); prints JSON.
    Loadgen {
        #[arg(long)]
        target: std::net::SocketAddr,
        /// Requests per second.
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// A request with no answer by then counts as failed.
        #[arg(long, default_value = "2s", value_parser = duration)]
        timeout: Duration,
    },
    /// The session store's linearizability check (`tests/lab/session-check`): N clients run a
    /// seeded mix of get/gets/set/add/cas/incr/delete, the history is checked key by key,
    /// acknowledged writes are counted against final reads. Without --addrs: a 3-node lab
    /// cluster in network namespaces (root) with a nemesis beside the clients (kills of the
    /// store's leader, pauses, partitions). Exits 1 on a violation or a lost acknowledged write,
    /// 3 when the checker could not decide a key.
    SessionCheck {
        /// Comma-separated memcached-protocol addresses to check instead (no nemesis; clients
        /// reconnect round robin).
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<std::net::SocketAddr>,
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Length of each run's workload.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// The first run's seed (run i uses seed + i; default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// (Lab only) run the daemons with a planted bug, followers answering reads from their
        /// own copy: shows that the check catches it.
        #[arg(long)]
        plant_stale_reads: bool,
    },
    /// Benchmarks that print figures (they assert nothing).
    /// kill-node and kill-service drills in the namespace lab, phalanx beside keepalived (needs
    /// root; `tests/lab/drill-compare`).
    DrillCompare {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// One drill against one system in the namespace lab, measured as drill-compare does:
    /// `--target pacemaker` runs Pacemaker + Corosync at its default token and at 200 ms,
    /// `keepalived` at 1 s and 0.1 s adverts (needs root).
    Drill {
        #[arg(long, default_value = "phalanx", value_parser = phalanx_lab::drill_compare::TARGETS)]
        target: String,
        #[arg(value_parser = phalanx_lab::drill_compare::SCENARIOS)]
        scenario: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The load balancer beside HAProxy (needs root, haproxy, wrk; `tests/lab/lb-bench`):
    /// closed-loop maximum, open loop at 50 % and 90 % of HAProxy's, a backend crash, false
    /// suspicions.
    Lb {
        /// The protocol both proxies speak.
        #[arg(long, default_value = "http", value_parser = ["tcp", "http"])]
        mode: String,
        /// Length of each measured phase (the crash phase runs twice as long).
        #[arg(long, default_value = "10s", value_parser = duration)]
        phase: Duration,
        /// Runs of each kind per proxy, in alternation (the medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Short runs (2 s, one round): a smoke run, not figures.
        #[arg(long)]
        quick: bool,
        /// Client connections (wrk and the open-loop generator).
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Proxy threads (HAProxy nbthread, PHALANX_LB_THREADS); default: one per proxy CPU.
        #[arg(long)]
        threads: Option<usize>,
        /// The proxies' CPUs (taskset -c list); default: the last CPU.
        #[arg(long)]
        proxy_cpus: Option<String>,
        /// The client's and backends' CPUs; default: every other CPU (all of them on one CPU).
        #[arg(long)]
        client_cpus: Option<String>,
    },
    /// The session store beside memcached and etcd (`tests/lab/session-bench`): per system,
    /// preload, closed-loop maximum, open loop at 50 % of it; 90/10 get/set, 100-1000 B values.
    Sessions {
        /// Length of each measured run.
        #[arg(long, default_value = "5s", value_parser = duration)]
        phase: Duration,
        /// Short runs (2 s): a smoke run, not figures.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Keys preloaded and then read and written.
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        /// The seed of the request mix and the values.
        #[arg(long, default_value_t = 15)]
        seed: u64,
        /// Only these systems (comma-separated): memcached, phalanx, etcd, phalanx_1, and
        /// phalanx_no_tls (TLS off between the nodes: the cost of TLS, beside phalanx).
        #[arg(long, value_delimiter = ',', default_value = "memcached,phalanx,etcd,phalanx_1")]
        only: Vec<String>,
        /// Measure a running phalanx session store (3 voters) at these memcached addresses.
        #[arg(long, value_delimiter = ',')]
        phalanx_addrs: Option<Vec<std::net::SocketAddr>>,
        /// The same for the 1-voter run (phalanx_1).
        #[arg(long, value_delimiter = ',')]
        phalanx_1_addrs: Option<Vec<std::net::SocketAddr>>,
        /// Pin the load generator (taskset -c list); default: unpinned.
        #[arg(long)]
        client_cpus: Option<String>,
        /// Pin the servers (taskset -c list); default: unpinned.
        #[arg(long)]
        server_cpus: Option<String>,
        /// etcd: serializable ranges (served by the member asked) instead of its default,
        /// linearizable ones.
        #[arg(long)]
        etcd_serializable: bool,
        /// The share of gets in the mix (the rest are sets): 0.9 is the 90/10; 1.0
        /// measures the read path alone.
        #[arg(long, default_value_t = 0.9)]
        gets: f64,
    },
    /// Leader kill: detection and failover percentiles, and idle footprint.
    Failover {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Heartbeat intervals to measure, comma-separated.
        #[arg(long, default_value = "100ms,20ms", value_delimiter = ',', value_parser = duration)]
        heartbeats: Vec<Duration>,
        /// Seconds to measure the idle 5-node cluster.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
        /// Skip the side-by-side etcd measurement.
        #[arg(long)]
        no_etcd: bool,
        /// Skip the second pass of each interval with the session store saturated.
        #[arg(long)]
        no_sessions_load: bool,
        /// Also measure each interval with TLS off (issue 17's cost of TLS: the ratio of the
        /// leader failover p50 with TLS to without, in this one run).
        #[arg(long)]
        tls_cost: bool,
    },
    /// Client-observed outage when the VIP holder crashes, in the namespace lab, beside
    /// keepalived (needs root; `tests/lab/failover-bench`).
    /// PostgreSQL's write outage and lost commits when the primary's node crashes, phalanx
    /// beside Patroni at its defaults and at its fastest (needs root, postgresql-15, patroni;
    /// `tests/lab/pg-failover`).
    PgFailover {
        /// Crashes per system.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only these systems (comma-separated: phalanx, patroni, patroni_fast).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Patroni: one cluster for every crash, as phalanx (default: a fresh one per crash).
        #[arg(long)]
        patroni_reuse: bool,
    },
    LabFailover {
        #[arg(long, default_value_t = 10)]
        trials: usize,
        /// Skip the keepalived configurations.
        #[arg(long)]
        no_keepalived: bool,
        /// Run only these configurations (comma-separated names, as printed).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Per-write cost of small state writes (apply + persist) as the state grows.
    StateWrites {
        /// State sizes in MB, comma-separated.
        #[arg(long, default_value = "1,20", value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Small writes per size, each applied as its own batch.
        #[arg(long, default_value_t = 10_000)]
        writes: usize,
    },
    /// The scheduler on generated clusters, beside Pacemaker's crm_simulate.
    Scheduler {
        /// Numbers of primitives, comma-separated.
        #[arg(long, default_value = "100,1000,10000", value_delimiter = ',')]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 32)]
        nodes: usize,
        /// Timed runs of phalanx's scheduler per size (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Give up on crm_simulate after this long per size.
        #[arg(long, default_value = "60s", value_parser = duration)]
        crm_bound: Duration,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    // The simulation's nodes log what real ones would (fences, failed monitors): quiet unless
    // RUST_LOG asks.
    let default = if matches!(cli.cmd, Cmd::Sim { .. }) {
        "off"
    } else {
        "warn"
    };
    // Colour only on a terminal (`phalanx_node::logging`). No rate limit: the rig's own lines
    // are few, and a simulated node's (RUST_LOG, on paused time) are what a seed is debugged by.
    if let Err(e) = phalanx_node::logging::init(phalanx_node::logging::LogOptions {
        format: Some(phalanx_node::logging::LogFormat::Text),
        default_filter: default.to_string(),
        interval: None,
    }) {
        eprintln!("phalanx-lab: {e}");
    }
    if let Cmd::Sim {
        seeds,
        first_seed,
        seed,
        steps,
        nodes,
        jobs,
    } = cli.cmd
    {
        let args = sim::Args {
            seeds,
            first_seed,
            seed,
            steps,
            nodes: nodes.map(|n| n as usize),
            jobs: jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
            progress: !cli.json,
        };
        let code = match sim::run(&args).and_then(|r| {
            output(cli.json, &r, sim::render)?;
            Ok(r)
        }) {
            Ok(r) if r.violations > 0 => 1,
            Ok(_) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                2
            }
        };
        std::process::exit(code);
    }
    // The benchmark's backend and load generator: their own runtimes, nothing else in the process.
    match cli.cmd {
        Cmd::Backend { listen, threads } => {
            if let Err(e) = httpload::serve_backend(listen, threads) {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
            std::process::exit(0);
        }
        Cmd::Loadgen {
            target,
            rate,
            duration,
            connections,
            threads,
            timeout,
        } => {
            let args = httpload::LoadArgs {
                target,
                rate,
                duration,
                connections,
                threads,
                timeout,
            };
            let code = match httpload::run_load(&args).and_then(|r| print_json(&r)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            };
            std::process::exit(code);
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let code = match rt.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run(cli))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

async fn session_check(
    addrs: Vec<std::net::SocketAddr>,
    runs: usize,
    seconds: f64,
    seed: Option<u64>,
    plant_stale_reads: bool,
    json: bool,
) -> Result<i32> {
    if plant_stale_reads && !addrs.is_empty() {
        bail!("--plant-stale-reads runs the lab's own cluster: leave out --addrs");
    }
    if runs == 0 || !(seconds > 0.0 && seconds.is_finite()) {
        bail!("--runs must be at least 1 and --seconds positive");
    }
    let args = session_check::Args {
        addrs,
        runs,
        seconds,
        seed: seed.unwrap_or_else(rand::random),
    };
    if json && seed.is_none() {
        eprintln!("session-check: seed {}", args.seed);
    }
    let r = if args.addrs.is_empty() {
        let a = phalanx_lab::session_nemesis::Args {
            runs,
            seconds,
            seed: args.seed,
            plant_stale_reads,
        };
        tokio::task::spawn_blocking(move || {
            phalanx_lab::session_nemesis::run(a, move |i, seed, run, faults| {
                if json && !run.violations.is_empty() {
                    // The summary on stdout counts them; what they were goes to stderr.
                    eprint!("{}", session_check::render_run(i, seed, run));
                }
                if !json {
                    println!(
                        "{}  nemesis: {} leader kills, {} pauses, {} partitions, {} snapshots sent{}",
                        session_check::render_run(i, seed, run).trim_end(),
                        faults.kills,
                        faults.pauses,
                        faults.partitions,
                        faults.snapshots_installed,
                        if faults.notes.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", faults.notes.join("; "))
                        }
                    );
                }
            })
        })
        .await??
    } else {
        session_check::run_all(&args, |i, run| {
            if !json {
                print!(
                    "{}",
                    session_check::render_run(i, args.seed.wrapping_add(i as u64), run)
                );
            }
        })
        .await?
    };
    output(json, &r, session_check::render)?;
    if r.unknown > 0 {
        eprintln!(
            "session-check: the checker could not decide {} keys within its budget",
            r.unknown
        );
    }
    Ok(if r.linearizability_violations > 0 || r.lost_acked_writes > 0 {
        1
    } else if r.unknown > 0 {
        3
    } else {
        0
    })
}

fn output<T: serde::Serialize>(json: bool, r: &T, human: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        print_json(r)
    } else {
        print!("{}", human(r));
        Ok(())
    }
}

async fn run(cli: Cli) -> Result<i32> {
    if let Cmd::SessionCheck {
        addrs,
        runs,
        seconds,
        seed,
        plant_stale_reads,
    } = cli.cmd
    {
        return session_check(addrs, runs, seconds, seed, plant_stale_reads, cli.json).await;
    }
    let exe = lab::phalanx_exe()?;
    match cli.cmd {
        Cmd::Sim { .. } => bail!("sim runs on its own paused runtimes (see main)"),
        Cmd::SessionCheck { .. } => bail!("session-check needs no phalanx binary (see run)"),
        Cmd::Backend { .. } | Cmd::Loadgen { .. } => bail!("backend and loadgen run on their own runtimes (see main)"),
        Cmd::Bench {
            cmd:
                BenchCmd::Lb {
                    mode,
                    phase,
                    rounds,
                    quick,
                    connections,
                    threads,
                    proxy_cpus,
                    client_cpus,
                },
        } => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let last = cpus - 1;
            let proxy_cpus = proxy_cpus.unwrap_or_else(|| last.to_string());
            let client_cpus = client_cpus.unwrap_or_else(|| {
                if cpus == 1 {
                    "0".into()
                } else {
                    format!("0-{}", last - 1)
                }
            });
            let threads = threads.unwrap_or_else(|| bench_lb::cpu_count(&proxy_cpus).max(1));
            if connections == 0 || threads == 0 || rounds == 0 {
                bail!("--connections, --threads and --rounds must be at least 1");
            }
            let r = bench_lb::run(bench_lb::Args {
                mode: if mode == "http" {
                    bench_lb::Mode::Http
                } else {
                    bench_lb::Mode::Tcp
                },
                phase: if quick { Duration::from_secs(2) } else { phase },
                rounds: if quick { 1 } else { rounds },
                connections,
                threads,
                proxy_cpus,
                client_cpus,
                exe,
                lab_exe: std::env::current_exe()?,
                json: cli.json,
            })
            .await?;
            output(cli.json, &r, bench_lb::render)?;
            Ok(0)
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Sessions {
                    phase,
                    quick,
                    connections,
                    keys,
                    seed,
                    only,
                    phalanx_addrs,
                    phalanx_1_addrs,
                    client_cpus,
                    server_cpus,
                    etcd_serializable,
                    gets,
                },
        } => {
            let r = bench_sessions::run(bench_sessions::Args {
                phase: if quick { Duration::from_secs(2) } else { phase },
                connections,
                keys,
                seed,
                only: only
                    .iter()
                    .map(|s| bench_sessions::System::parse(s))
                    .collect::<Result<_>>()?,
                phalanx_addrs,
                phalanx_1_addrs,
                client_cpus,
                server_cpus,
                etcd_serializable,
                gets,
                exe,
                json: cli.json,
            })
            .await?;
            output(cli.json, &r, bench_sessions::render)?;
            Ok(i32::from(r.failed()))
        }
        Cmd::Demo { nodes, heartbeat, keep } => {
            let args = phalanx::demo::DemoArgs {
                nodes,
                heartbeat,
                json: cli.json,
                keep,
            };
            let r = demo_lab::run_lab(args, exe).await?;
            output(cli.json, &r, |r| {
                format!(
                    "Summary: {} nodes in namespaces, heartbeat {} ms: crashed {} holding VIP {}; {} answered after a client-observed outage of {} ms; two holders at once: {}; quorum after failure: {}; rejoined: {}\n",
                    r.nodes, r.heartbeat_interval_ms, r.killed, r.vip, r.service_node_after, r.service_outage_ms, r.two_holders, r.quorum_after_failure, r.rejoined
                )
            })?;
            Ok(if r.two_holders == 0 && r.rejoined && r.quorum_after_failure {
                0
            } else {
                1
            })
        }
        Cmd::Nemesis {
            steps,
            seed,
            target,
            nodes,
            only,
        } => {
            let r = nemesis::run(nemesis::Args {
                steps,
                seed: seed.unwrap_or_else(rand::random),
                target: if target == "keepalived" {
                    nemesis::Target::Keepalived
                } else {
                    nemesis::Target::Phalanx
                },
                nodes,
                only,
                exe,
                json: cli.json,
            })
            .await?;
            output(cli.json, &r, nemesis::render)?;
            Ok(if r.target == "phalanx" && r.violations > 0 {
                1
            } else {
                0
            })
        }
        Cmd::Bench {
            cmd: BenchCmd::StateWrites { sizes, writes },
        } => {
            let args = bench_state::Args {
                sizes_mb: sizes,
                writes,
            };
            let quiet = cli.json;
            let r = bench_state::run(&args, &|m| {
                if !quiet {
                    eprintln!("{m}");
                }
            })
            .await?;
            output(cli.json, &r, bench_state::render)?;
            Ok(0)
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Scheduler {
                    sizes,
                    nodes,
                    runs,
                    crm_bound,
                },
        } => {
            if sizes.is_empty() || nodes == 0 || nodes > 1000 {
                bail!("--sizes needs at least one size and --nodes 1..1000");
            }
            let pb = if cli.json {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new_spinner()
            };
            pb.enable_steady_tick(Duration::from_millis(100));
            let args = bench_sched::Args {
                sizes,
                nodes,
                runs,
                crm_bound,
            };
            let r = tokio::task::block_in_place(|| bench_sched::run(&args, &|m| pb.set_message(m.to_string())))?;
            pb.finish_and_clear();
            output(cli.json, &r, |r| bench_sched::render(r))?;
            Ok(0)
        }
        // drill-compare is every target and scenario; drill one of each.
        cmd @ (Cmd::DrillCompare { .. } | Cmd::Drill { .. }) => {
            use phalanx_lab::drill_compare::{self as dc, SCENARIOS, TARGETS};
            let (runs, targets, scenarios) = match cmd {
                Cmd::Drill { target, scenario, runs } => (runs, vec![target], vec![scenario]),
                Cmd::DrillCompare { runs } => (
                    runs,
                    TARGETS.map(String::from).to_vec(),
                    SCENARIOS.map(String::from).to_vec(),
                ),
                _ => unreachable!("matched above"),
            };
            if runs == 0 {
                bail!("--runs must be at least 1");
            }
            let r = dc::run(dc::Args {
                runs,
                exe,
                json: cli.json,
                targets,
                scenarios,
            })
            .await?;
            output(cli.json, &r, dc::render)?;
            Ok(0)
        }
        Cmd::Bench {
            cmd:
                BenchCmd::PgFailover {
                    runs,
                    only,
                    patroni_reuse,
                },
        } => {
            if runs == 0 {
                bail!("--runs must be at least 1");
            }
            let r = phalanx_lab::bench_pg::run(phalanx_lab::bench_pg::Args {
                runs,
                exe,
                json: cli.json,
                only,
                reuse: patroni_reuse,
            })
            .await?;
            output(cli.json, &r, phalanx_lab::bench_pg::render)?;
            Ok(0)
        }
        Cmd::Bench {
            cmd:
                BenchCmd::LabFailover {
                    trials,
                    no_keepalived,
                    only,
                },
        } => {
            if trials == 0 {
                bail!("--trials must be at least 1");
            }
            let r = lab_bench::run(lab_bench::Args {
                trials,
                exe,
                json: cli.json,
                keepalived: !no_keepalived,
                only,
            })
            .await?;
            output(cli.json, &r, lab_bench::render)?;
            Ok(0)
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Failover {
                    kills,
                    heartbeats,
                    idle_seconds,
                    no_etcd,
                    no_sessions_load,
                    tls_cost,
                },
        } => {
            if kills == 0 || heartbeats.is_empty() {
                bail!("--kills must be at least 1 and --heartbeats must name at least one interval");
            }
            let r = bench::run(
                bench::BenchArgs {
                    kills,
                    etcd: !no_etcd,
                    heartbeats,
                    idle_seconds,
                    json: cli.json,
                    sessions_load: !no_sessions_load,
                    tls_cost,
                },
                exe,
            )
            .await?;
            output(cli.json, &r, bench::render)?;
            Ok(0)
        }
    }
}
