//! `phalanx-lab bench sessions` (`tests/lab/session-bench`, issue 15): phalanx's replicated
//! session store beside memcached and etcd, in one run, on one machine, with one load generator
//! ([`crate::mcload`]: 90/10 get/set, 100–1000-byte values, a preloaded key space, 50
//! connections). The systems, one after another, never at once:
//! - `memcached`: Debian's `memcached -t 2`, unreplicated, in memory (the ceiling for gets);
//! - `phalanx`: the session store of a 3-node loopback cluster (memcached protocol; connections
//!   spread over the nodes; a write is acknowledged once a majority has appended it to its
//!   fsynced log, gets at a read index: linearizable);
//! - `etcd`: Debian's etcd 3.4, 3 members ([`crate::peer_etcd`]), put/range through its gRPC
//!   gateway (JSON over HTTP/1.1); replicated and fsynced (etcd syncs its WAL before it
//!   acknowledges, by default), range reads linearizable (its default);
//! - `phalanx_1`: the session store of a 1-node cluster, its one voter (against `phalanx`: the
//!   cost of replication, and of two more processes on the same CPUs).
//!
//! For each: start it, preload every key, a closed loop for one phase (its maximum), then an
//! open loop at 50 % of that maximum for one phase (latency from intended send times), with the
//! generator's and the servers' CPU over each run; stop it. The phalanx clusters are started by
//! [`start_phalanx`] through the product's harness (or `--phalanx-addrs` names a running
//! store). This module owns the systems' start-up, the phases and the report (table and
//! JSON); it asserts nothing (the test of the generator is `tests/session_load.rs`).

use crate::mcload::{self, Protocol, RunReport, Workload};
use crate::peer_etcd::{self, EtcdCluster};
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use phalanx::harness::{LocalCluster, Spec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MEMCACHED: &str = "/usr/bin/memcached";
/// How long a system may take to start and answer.
const START: Duration = Duration::from_secs(60);

/// The systems compared, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    Memcached,
    Phalanx,
    /// phalanx with TLS off between its nodes (`transport::NO_TLS_ENV`): the cost of TLS.
    PhalanxNoTls,
    Etcd,
    Phalanx1,
}

impl System {
    pub const ALL: [System; 5] = [
        System::Memcached,
        System::Phalanx,
        System::PhalanxNoTls,
        System::Etcd,
        System::Phalanx1,
    ];

    /// The name in `--only` and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            System::Memcached => "memcached",
            System::Phalanx => "phalanx",
            System::PhalanxNoTls => "phalanx_no_tls",
            System::Etcd => "etcd",
            System::Phalanx1 => "phalanx_1",
        }
    }

    pub fn parse(s: &str) -> Result<System> {
        System::ALL
            .into_iter()
            .find(|x| x.name() == s.trim())
            .with_context(|| format!("{s:?} is not one of memcached, phalanx, phalanx_no_tls, etcd, phalanx_1"))
    }
}

pub struct Args {
    /// Length of each measured run (closed loop, then open loop).
    pub phase: Duration,
    pub connections: usize,
    pub keys: usize,
    pub seed: u64,
    /// The systems to run (in [`System::ALL`]'s order whatever the order given).
    pub only: Vec<System>,
    /// A running phalanx session store (3 voters) to measure instead of [`start_phalanx`]'s.
    pub phalanx_addrs: Option<Vec<SocketAddr>>,
    /// The same for `phalanx_1` (1 voter).
    pub phalanx_1_addrs: Option<Vec<SocketAddr>>,
    /// `taskset -c` lists for this process (the generator) and for the servers; None: unpinned.
    pub client_cpus: Option<String>,
    pub server_cpus: Option<String>,
    /// etcd: serializable ranges (served by the member asked) instead of linearizable ones.
    pub etcd_serializable: bool,
    /// The share of gets in the mix (0.9: the 90/10).
    pub gets: f64,
    /// The phalanx binary (for [`start_phalanx`]).
    pub exe: PathBuf,
    pub json: bool,
}

/// One run with the CPU it cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    #[serde(flatten)]
    pub load: RunReport,
    /// This process (the load generator) over the run, % of one core.
    pub client_cpu_pct: f64,
    /// The system's processes over the run, % of one core (None: their pids are unknown, as
    /// with `--phalanx-addrs`).
    pub server_cpu_pct: Option<f64>,
    /// The same per request: µs of one core the generator spent per request answered.
    pub client_cpu_us_per_op: Option<f64>,
    /// µs of one core the system's processes (all of its nodes) spent per request answered.
    pub server_cpu_us_per_op: Option<f64>,
}

impl Run {
    fn new(load: RunReport, client_cpu_pct: f64, server_cpu_pct: Option<f64>) -> Run {
        let per_op = |pct: f64| (load.ops_per_s > 0.0).then(|| pct / 100.0 / load.ops_per_s * 1e6);
        Run {
            client_cpu_us_per_op: per_op(client_cpu_pct),
            server_cpu_us_per_op: server_cpu_pct.and_then(per_op),
            load,
            client_cpu_pct,
            server_cpu_pct,
        }
    }
}

/// One system's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SystemResult {
    /// What ran, e.g. `memcached 1.6.18 -t 2`.
    pub what: String,
    /// Processes (nodes, members) serving.
    pub nodes: usize,
    pub replicated: bool,
    /// When a set is acknowledged.
    pub durability: String,
    pub protocol: Option<Protocol>,
    pub addrs: Vec<String>,
    pub connections: usize,
    pub keys: usize,
    pub get_ratio: f64,
    pub value_bytes: [usize; 2],
    pub phase_s: f64,
    /// Writing every key once before measuring.
    pub preload_s: f64,
    /// Closed loop: the maximum.
    pub max: Run,
    /// Open loop at 50 % of this system's own maximum (`max.ops_per_s`).
    pub load_50: Run,
}

/// The report: exactly these keys in the JSON (a system not measured is `null`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub memcached: Option<SystemResult>,
    pub phalanx: Option<SystemResult>,
    pub etcd: Option<SystemResult>,
    pub phalanx_1: Option<SystemResult>,
    /// phalanx with TLS off between its nodes (issue 17's cost of TLS).
    pub phalanx_no_tls: Option<SystemResult>,
    /// phalanx's sets/s with TLS ÷ without, closed loop (goal ≥ 0.85).
    pub set_ratio_tls_over_plain: Option<f64>,
    /// phalanx's gets/s ÷ memcached's, closed loop (goal ≥ 0.8).
    pub get_ratio_vs_memcached: Option<f64>,
    /// phalanx's acknowledged sets/s ÷ etcd's puts/s, closed loop, both replicated on 3 and
    /// fsynced (goal ≥ 3).
    pub set_ratio_vs_etcd: Option<f64>,
    /// phalanx's p99 ÷ etcd's, all requests (gets and sets), open loop at 50 % of each one's
    /// own maximum (goal ≤ 1).
    pub p99_ratio_vs_etcd: Option<f64>,
    /// The CPU the gets goal leaves phalanx's nodes on this machine: the most µs of one core
    /// they may spend per request for the closed loop to reach 0.8 × memcached's gets/s, the
    /// generator spending what it spent per request on phalanx and every core busy
    /// ([`cpu_budget_us`]). Against `phalanx.max.server_cpu_us_per_op`: what they spent.
    pub get_goal_server_cpu_budget_us: Option<f64>,
    /// The cores the budget counts.
    pub cores: usize,
    /// Systems asked for and not measured, with why (human output and stderr only).
    #[serde(skip)]
    pub not_measured: BTreeMap<String, String>,
}

impl Report {
    /// Whether a system asked for was not measured.
    pub fn failed(&self) -> bool {
        !self.not_measured.is_empty()
    }
}

/// What keeps a phalanx cluster running; dropped at the end of its runs.
pub struct PhalanxGuard {
    pub cluster: Option<LocalCluster>,
    /// The daemons' pids (for the server CPU figures).
    pub pids: Vec<u32>,
}

/// Start a local phalanx cluster on loopback whose session store has `voters` voters (3: a
/// 3-node cluster; 1: a 1-node cluster, so that `phalanx_1` is the same store without
/// replication), each node's memcached listener on its own free loopback port (`[sessions]
/// listen`), through the product's harness (`phalanx::harness`); wait until every listener
/// stores and reads a key; return the listeners (the load is spread over all of them) and what
/// keeps the cluster running (dropped: stopped, its folder removed unless `PHALANX_KEEP`).
pub async fn start_phalanx(exe: &Path, voters: usize) -> Result<(Vec<SocketAddr>, PhalanxGuard)> {
    if voters == 0 {
        bail!("a session store needs at least one voter");
    }
    // On 127.0.11.K, apart from 127.0.0.1 where the harness picks the nodes' own ports (a port
    // picked there and released could go to a node's API before the store binds it).
    let addrs = (1..=voters)
        .map(|i| -> Result<SocketAddr> {
            let ip = std::net::Ipv4Addr::new(127, 0, 11, u8::try_from(i)?);
            Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?)
        })
        .collect::<Result<Vec<_>>>()?;
    let listen: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("n{} = \"{a}\"", i + 1))
        .collect();
    let extra = format!("\n[sessions]\nlisten = {{ {} }}\n", listen.join(", "));
    let mut c = LocalCluster::create(Spec::loopback(voters, exe.to_path_buf(), extra))?;
    c.start_all()?;
    c.wait_stable(START).await?;
    let deadline = Instant::now() + START;
    for a in &addrs {
        let mut conn = mcload::Conn::new(Protocol::Memcached, *a);
        loop {
            let ok = conn.set(b"bench:ready", b"1").await.is_ok() && conn.get(b"bench:ready").await == Ok(true);
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("the session store on {a} did not answer within {START:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let pids = (1..=voters)
        .map(|i| c.node(&format!("n{i}")).map(|n| n.pid()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok((addrs, PhalanxGuard { cluster: Some(c), pids }))
}

/// memcached on a free loopback port, killed when dropped.
pub struct Memcached {
    child: Child,
    pub addr: SocketAddr,
}

impl Memcached {
    /// `memcached -t THREADS -p PORT -l 127.0.0.1 -U 0 -m 256` (and `-u nobody` as root, which
    /// memcached requires), answering before this returns.
    pub async fn start(threads: usize) -> Result<Memcached> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(MEMCACHED);
        cmd.args(["-t", &threads.to_string(), "-p", &port.to_string()]).args([
            "-l",
            "127.0.0.1",
            "-U",
            "0",
            "-m",
            "256",
            "-c",
            "4096",
        ]);
        if nix::unistd::geteuid().is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {MEMCACHED}"))?;
        let m = Memcached {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = mcload::Conn::new(Protocol::Memcached, m.addr);
        while c.get(b"ping").await.is_err() {
            if Instant::now() > deadline {
                bail!("memcached did not answer on {} within 10 s", m.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(m)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `memcached 1.6.18`.
    pub fn version() -> Option<String> {
        let out = Command::new(MEMCACHED).arg("-V").output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU ticks (utime + stime) of a process (`self` or a pid), all threads.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th after the state.
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU of this process and of `pids` since it was made.
struct CpuMeter {
    at: Instant,
    me: Option<u64>,
    servers: Option<u64>,
}

impl CpuMeter {
    fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            at: Instant::now(),
            me: cpu_ticks("self"),
            servers: Self::servers(pids),
        }
    }

    fn servers(pids: &[u32]) -> Option<u64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| cpu_ticks(&p.to_string())).sum()
    }

    /// (client %, server %) of one core.
    fn stop(self, pids: &[u32]) -> (f64, Option<f64>) {
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let pct = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 / hz / secs * 100.0);
        (
            pct(self.me, cpu_ticks("self")).unwrap_or(0.0),
            pct(self.servers, Self::servers(pids)),
        )
    }
}

/// Pin every thread of `pid` to `cpus` (`taskset -a -p -c`).
fn pin(pid: u32, cpus: &str) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .context("running taskset")?;
    if !out.status.success() {
        bail!("taskset -p {pid}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A started system: where it listens, how, its processes, and what stops it when dropped.
struct Started {
    addrs: Vec<SocketAddr>,
    protocol: Protocol,
    pids: Vec<u32>,
    what: String,
    nodes: usize,
    replicated: bool,
    durability: String,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn start(sys: System, a: &Args) -> Result<Started> {
    let phalanx = |addrs: Vec<SocketAddr>, guard: PhalanxGuard, voters: usize, named: bool| Started {
        nodes: addrs.len(),
        what: if named {
            format!("phalanx session store at the addresses given, {voters} voter(s) as told")
        } else {
            format!("phalanx session store, {voters}-node loopback cluster")
        },
        replicated: voters > 1,
        durability: if voters > 1 {
            "acknowledged once a majority of the session group's voters has appended it to its fsynced Raft log (batched); gets linearizable (read index)".into()
        } else {
            "acknowledged once its one voter has appended it to its fsynced Raft log (batched); gets linearizable (read index)".into()
        },
        protocol: Protocol::Memcached,
        pids: guard.pids.clone(),
        addrs,
        _guard: Box::new(guard),
    };
    // A cluster named by --phalanx-addrs: nothing to stop, pids unknown.
    let given = || PhalanxGuard {
        cluster: None,
        pids: Vec::new(),
    };
    Ok(match sys {
        System::Memcached => {
            let m = Memcached::start(2).await?;
            Started {
                addrs: vec![m.addr],
                protocol: Protocol::Memcached,
                pids: vec![m.pid()],
                what: format!("{} -t 2", Memcached::version().unwrap_or_else(|| "memcached".into())),
                nodes: 1,
                replicated: false,
                durability: "none: in memory, unreplicated".into(),
                _guard: Box::new(m),
            }
        }
        System::Etcd => {
            let mut e = EtcdCluster::with_members(3, 100, 1000)?;
            e.start_all()?;
            e.wait_ready(START).await?;
            Started {
                addrs: e.client_addrs()?,
                protocol: Protocol::EtcdGateway,
                pids: e.pids(),
                what: format!(
                    "{}, 3 members, v3 gRPC gateway (JSON/HTTP 1.1), {} ranges",
                    peer_etcd::version().unwrap_or_else(|| "etcd".into()),
                    if a.etcd_serializable {
                        "serializable"
                    } else {
                        "linearizable"
                    }
                ),
                nodes: 3,
                replicated: true,
                durability: format!(
                    "acknowledged once committed by a majority, each having fsynced its WAL (etcd's default); ranges {}",
                    if a.etcd_serializable {
                        "serializable (the member asked)"
                    } else {
                        "linearizable (read index)"
                    }
                ),
                _guard: Box::new(e),
            }
        }
        System::Phalanx => match &a.phalanx_addrs {
            Some(addrs) => phalanx(addrs.clone(), given(), 3, true),
            None => {
                let (addrs, g) = start_phalanx(&a.exe, 3).await?;
                phalanx(addrs, g, 3, false)
            }
        },
        System::PhalanxNoTls => {
            // The daemons inherit the setting; this process's own requests (the harness's)
            // use it while the cluster starts.
            std::env::set_var(phalanx_node::transport::NO_TLS_ENV, "1");
            let started = start_phalanx(&a.exe, 3).await;
            std::env::remove_var(phalanx_node::transport::NO_TLS_ENV);
            let (addrs, g) = started?;
            let mut st = phalanx(addrs, g, 3, false);
            st.what += ", TLS off between nodes (PHALANX_BENCH_NO_TLS=1)";
            st
        }
        System::Phalanx1 => match &a.phalanx_1_addrs {
            Some(addrs) => phalanx(addrs.clone(), given(), 1, true),
            None => {
                let (addrs, g) = start_phalanx(&a.exe, 1).await?;
                phalanx(addrs, g, 1, false)
            }
        },
    })
}

/// One system: start, preload, closed loop, open loop at 50 %, stop.
async fn measure(sys: System, a: &Args, pb: &ProgressBar) -> Result<SystemResult> {
    let name = sys.name();
    pb.set_message(format!("{name}: starting"));
    let s = start(sys, a).await.with_context(|| format!("starting {name}"))?;
    if let Some(cpus) = &a.server_cpus {
        for pid in &s.pids {
            pin(*pid, cpus)?;
        }
    }
    let mut w = Workload::new(s.protocol, s.addrs.clone());
    w.connections = a.connections;
    w.keys = a.keys;
    w.seed = a.seed;
    w.etcd_serializable = a.etcd_serializable;
    w.get_ratio = a.gets;
    pb.set_message(format!("{name}: preloading {} keys", w.keys));
    let preload = mcload::preload(&w).await.with_context(|| format!("{name}: preload"))?;
    pb.inc(1);

    pb.set_message(format!("{name}: closed loop, {} connections", w.connections));
    let cpu = CpuMeter::start(&s.pids);
    let max = mcload::closed_loop(&w, a.phase).await?;
    let (client, server) = cpu.stop(&s.pids);
    let max = Run::new(max, client, server);
    pb.inc(1);
    if max.load.ops_per_s < 2.0 {
        bail!("{name}: the closed loop completed {} requests", max.load.ops);
    }

    let rate = max.load.ops_per_s * 0.5;
    pb.set_message(format!("{name}: open loop at {rate:.0} ops/s"));
    let cpu = CpuMeter::start(&s.pids);
    let load = mcload::open_loop(&w, rate, a.phase).await?;
    let (client, server) = cpu.stop(&s.pids);
    pb.inc(1);
    Ok(SystemResult {
        what: s.what.clone(),
        nodes: s.nodes,
        replicated: s.replicated,
        durability: s.durability.clone(),
        protocol: Some(s.protocol),
        addrs: s.addrs.iter().map(|x| x.to_string()).collect(),
        connections: w.connections,
        keys: w.keys,
        get_ratio: w.get_ratio,
        value_bytes: [w.value_min, w.value_max],
        phase_s: a.phase.as_secs_f64(),
        preload_s: preload.as_secs_f64(),
        max,
        load_50: Run::new(load, client, server),
    })
}

/// Run every system in `a.only`, one after another (see the module doc).
pub async fn run(a: Args) -> Result<Report> {
    if a.connections == 0 || a.keys == 0 || a.phase.is_zero() {
        bail!("--connections, --keys and --phase must be positive");
    }
    if !(0.0..=1.0).contains(&a.gets) {
        bail!("--gets is a share of requests, between 0 and 1");
    }
    if let Some(cpus) = &a.client_cpus {
        pin(std::process::id(), cpus)?;
    }
    let mut systems = a.only.clone();
    systems.sort();
    systems.dedup();
    let pb = crate::progress(a.json, systems.len() as u64 * 3, "");
    pb.enable_steady_tick(Duration::from_millis(200));
    let mut r = Report {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Report::default()
    };
    for sys in systems {
        // Ctrl-C drops the system's run, and with it the servers it started (killed, their
        // folders removed), instead of leaving them behind.
        let result = tokio::select! {
            r = measure(sys, &a, &pb) => r,
            _ = tokio::signal::ctrl_c() => {
                pb.finish_and_clear();
                bail!("interrupted while measuring {}", sys.name());
            }
        };
        match result {
            Ok(x) => {
                let slot = match sys {
                    System::Memcached => &mut r.memcached,
                    System::Phalanx => &mut r.phalanx,
                    System::Etcd => &mut r.etcd,
                    System::Phalanx1 => &mut r.phalanx_1,
                    System::PhalanxNoTls => &mut r.phalanx_no_tls,
                };
                *slot = Some(x);
            }
            Err(e) => {
                let why = format!("{e:#}");
                // The human output lists it at the end; the JSON has only `null`.
                if a.json {
                    eprintln!("{}: not measured: {why}", sys.name());
                }
                r.not_measured.insert(sys.name().into(), why);
            }
        }
    }
    pb.finish_and_clear();
    let ratio = |x: f64, y: f64| (y > 0.0).then(|| x / y);
    if let Some(p) = &r.phalanx {
        if let Some(n) = &r.phalanx_no_tls {
            r.set_ratio_tls_over_plain = ratio(p.max.load.sets_per_s, n.max.load.sets_per_s);
        }
        if let Some(m) = &r.memcached {
            r.get_ratio_vs_memcached = ratio(p.max.load.gets_per_s, m.max.load.gets_per_s);
            r.get_goal_server_cpu_budget_us = p
                .max
                .client_cpu_us_per_op
                .and_then(|client| cpu_budget_us(r.cores, 0.8 * m.max.load.gets_per_s, p.get_ratio, client));
        }
        if let Some(e) = &r.etcd {
            r.set_ratio_vs_etcd = ratio(p.max.load.sets_per_s, e.max.load.sets_per_s);
            r.p99_ratio_vs_etcd = ratio(p.load_50.load.all.p99_us as f64, e.load_50.load.all.p99_us as f64);
        }
    }
    Ok(r)
}

/// The µs of one core a system may spend per request for a closed loop on `cores` cores to
/// reach `gets_per_s` with `get_share` of its requests gets, the generator spending
/// `client_us` per request: with every core busy, requests/s × (client + server µs) = cores ×
/// 10⁶. At most 0: no room at all (the generator alone needs every core); None: no gets asked.
pub fn cpu_budget_us(cores: usize, gets_per_s: f64, get_share: f64, client_us: f64) -> Option<f64> {
    if gets_per_s <= 0.0 || get_share <= 0.0 {
        return None;
    }
    let requests_per_s = gets_per_s / get_share;
    Some(cores as f64 * 1e6 / requests_per_s - client_us)
}

pub fn render(r: &Report) -> String {
    let systems = [
        ("memcached", &r.memcached),
        ("phalanx", &r.phalanx),
        ("etcd", &r.etcd),
        ("phalanx_1", &r.phalanx_1),
        ("phalanx_no_tls", &r.phalanx_no_tls),
    ];
    let mut s = String::new();
    if let Some(x) = systems.iter().find_map(|(_, x)| x.as_ref()) {
        s += &format!(
            "session store: {:.0}/{:.0} get/set, values {}–{} B, {} keys preloaded, {} connections, {:.1} s per run\n",
            x.get_ratio * 100.0,
            (1.0 - x.get_ratio) * 100.0,
            x.value_bytes[0],
            x.value_bytes[1],
            x.keys,
            x.connections,
            x.phase_s
        );
    }
    s += "system    | run        |   ops/s |  gets/s |  sets/s | target/s | get p50/p99/p99.9 µs | set p50/p99/p99.9 µs | all p99 µs | sent late p99 µs | hits % | errors | client CPU % | server CPU %\n";
    for (name, x) in systems {
        let Some(x) = x else {
            s += &format!("{name:<9} | not measured\n");
            continue;
        };
        for (run, y) in [("max", &x.max), ("50 % load", &x.load_50)] {
            let l = &y.load;
            s += &format!(
                "{name:<9} | {run:<10} | {:>7.0} | {:>7.0} | {:>7.0} | {:>8} | {:>20} | {:>20} | {:>10} | {:>16} | {:>6.1} | {:>6} | {:>12.0} | {:>12}\n",
                l.ops_per_s,
                l.gets_per_s,
                l.sets_per_s,
                l.target_ops_per_s.map(|t| format!("{t:.0}")).unwrap_or_else(|| "-".into()),
                format!("{}/{}/{}", l.get.p50_us, l.get.p99_us, l.get.p999_us),
                format!("{}/{}/{}", l.set.p50_us, l.set.p99_us, l.set.p999_us),
                l.all.p99_us,
                l.send_delay.as_ref().map(|d| d.p99_us.to_string()).unwrap_or_else(|| "-".into()),
                l.get_hit_ratio * 100.0,
                l.errors + l.unsent,
                y.client_cpu_pct,
                y.server_cpu_pct.map(|c| format!("{c:.0}")).unwrap_or_else(|| "-".into()),
            );
        }
    }
    for (name, x) in systems {
        if let Some(x) = x {
            s += &format!(
                "{name}: {}; {} node(s); preload {} sets in {:.1} s ({:.0}/s); sets: {}\n",
                x.what,
                x.nodes,
                x.keys,
                x.preload_s,
                x.keys as f64 / x.preload_s.max(1e-9),
                x.durability
            );
        }
    }
    let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    s += &format!(
        "phalanx ÷ memcached gets/s (closed loop): {} (goal ≥ 0.80)\n\
         phalanx ÷ etcd sets/s (closed loop, both replicated on 3 and fsynced): {} (goal ≥ 3.00)\n\
         phalanx ÷ etcd p99 of all requests, open loop at 50 % of each one's maximum: {} (goal ≤ 1.00)\n",
        f(r.get_ratio_vs_memcached),
        f(r.set_ratio_vs_etcd),
        f(r.p99_ratio_vs_etcd)
    );
    let us = |x: Option<&SystemResult>| x.and_then(|x| x.max.server_cpu_us_per_op);
    if let (Some(b), Some(spent)) = (r.get_goal_server_cpu_budget_us, us(r.phalanx.as_ref())) {
        s += &format!(
            "CPU per request, closed loop: phalanx's nodes {spent:.1} µs{}; for gets ≥ 0.80 × memcached's on these {} cores they may spend at most {b:.1} µs\n",
            us(r.memcached.as_ref())
                .map(|m| format!(" (memcached {m:.1} µs)"))
                .unwrap_or_default(),
            r.cores
        );
    }
    if let Some(x) = r.set_ratio_tls_over_plain {
        s += &format!("phalanx sets/s with TLS ÷ without (closed loop): {x:.2} (goal ≥ 0.85)\n");
    }
    for (name, why) in &r.not_measured {
        s += &format!("not measured: {name}: {why}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_budget_is_what_the_cores_leave_after_the_generator() {
        // 2 cores, 90,000 gets/s at 90 % gets: 100,000 requests/s, 20 µs of CPU each in all.
        let b = cpu_budget_us(2, 90_000.0, 0.9, 9.0).expect("room left");
        assert!((b - 11.0).abs() < 1e-9, "{b}");
        // Twice the cores, twice the time per request.
        let b = cpu_budget_us(4, 90_000.0, 0.9, 9.0).expect("room left");
        assert!((b - 31.0).abs() < 1e-9, "{b}");
        // The generator alone needs more than the cores: no room.
        let b = cpu_budget_us(2, 90_000.0, 0.9, 25.0).expect("a figure");
        assert!((b + 5.0).abs() < 1e-9, "{b}");
        assert_eq!(cpu_budget_us(2, 0.0, 0.9, 9.0), None);
    }

    #[test]
    fn a_run_reports_cpu_per_request() {
        let load = RunReport {
            ops_per_s: 50_000.0,
            ..RunReport::default()
        };
        let r = Run::new(load.clone(), 45.0, Some(150.0));
        assert!((r.client_cpu_us_per_op.expect("client") - 9.0).abs() < 1e-9);
        assert!((r.server_cpu_us_per_op.expect("server") - 30.0).abs() < 1e-9);
        let r = Run::new(load, 45.0, None);
        assert_eq!(r.server_cpu_us_per_op, None);
        let idle = Run::new(RunReport::default(), 5.0, Some(1.0));
        assert_eq!((idle.client_cpu_us_per_op, idle.server_cpu_us_per_op), (None, None));
    }
}
