//! `phalanx-lab nemesis` (`tests/lab/nemesis`): a seeded random schedule of faults over a lab
//! cluster, with checkers that run the whole time. The cluster: 3 or 5 nodes with two links
//! each, the lab's `web` group (a virtual IP + an HTTP service), a clone on every node, fencing
//! through the lab's power switch. The faults: symmetric and one-way partitions, crash and
//! restart, pause and resume, packet loss on a link, one link cut, a fence device that stops
//! answering while a node crashes, and a monitor failure (web's service killed). After each
//! step the fault is healed and the cluster must settle (bounded): every node back (a fenced
//! one restarted), one agreed leader, web placed and answering on its virtual IP.
//!
//! The checkers (DESIGN.md §3):
//! - at most one holder of the virtual IP: a sampler in every node namespace (`lab::Watch`);
//! - at most one running instance of web's service: a /proc scan mapping processes to hosts;
//! - no recovery before a recorded fence: when a fault loses web's node, web's service may
//!   appear elsewhere only after the power switch's event log shows that node fenced;
//! - only a quorate partition changes placement: during a symmetric partition, web's service
//!   may start only on the majority side.
//!
//! `--target keepalived` runs the partition steps of the same schedule against a keepalived
//! pair (VRRPv3, advert_int 0.1 s) and counts its steps with two VIP holders.
//!
//! The schedule is a pure function of the seed (`schedule`); what a step does to whom is
//! resolved against the live cluster (the node holding web), so a rerun with the same seed
//! injects the same sequence of fault kinds, targets and durations.

use crate::bench::dist;
use crate::lab::{outage, sample_processes, web_config, web_node, ClientLog, Lab, Watch, PORT, VIP};
use anyhow::{bail, Context, Result};
use phalanx::harness::{LocalCluster, Spec};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the cluster may take to settle after a step before the step counts as unsettled.
const SETTLE: Duration = Duration::from_secs(90);
/// Steps in a row that may fail to settle before the run gives up (a cluster that no longer
/// recovers makes every further step wait out `SETTLE`).
const GIVE_UP: usize = 3;
/// How often the process checker scans /proc.
const SCAN: Duration = Duration::from_millis(10);

/// Which node a fault hits: the one holding web at that moment, or a fixed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Who {
    Holder,
    Node(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Both ways: `minority` (plus web's node when `with_holder`) against the rest.
    Partition {
        minority: Vec<usize>,
        with_holder: bool,
    },
    /// One way: frames from `from` to every other node are dropped (`from` still hears them).
    OneWay {
        from: Who,
    },
    Crash {
        who: Who,
    },
    /// SIGSTOP every process of the node for the step's hold time.
    Pause {
        who: Who,
    },
    Loss {
        who: Who,
        link: usize,
        percent: u8,
    },
    CutLink {
        who: Who,
        link: usize,
    },
    /// The power switch stops answering (frozen) while `crash` crashes.
    FenceDeviceDown {
        crash: Who,
    },
    /// web's service is killed on its node: its monitor fails.
    MonitorFailure,
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "partition",
            Fault::OneWay { .. } => "one_way_partition",
            Fault::Crash { .. } => "crash",
            Fault::Pause { .. } => "pause",
            Fault::Loss { .. } => "loss",
            Fault::CutLink { .. } => "cut_link",
            Fault::FenceDeviceDown { .. } => "fence_device_down",
            Fault::MonitorFailure => "monitor_failure",
        }
    }

    fn is_partition(&self) -> bool {
        matches!(self, Fault::Partition { .. } | Fault::OneWay { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub fault: Fault,
    /// How long the fault lasts before it is healed.
    pub hold_ms: u64,
}

/// The schedule of `steps` faults for a cluster of `nodes`: a pure function of the seed.
pub fn schedule(seed: u64, steps: usize, nodes: usize) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let who = |rng: &mut rand::rngs::StdRng| {
        if rng.gen_bool(0.5) {
            Who::Holder
        } else {
            Who::Node(rng.gen_range(1..=nodes))
        }
    };
    (0..steps)
        .map(|_| {
            let fault = match rng.gen_range(0..10) {
                0 | 1 => {
                    let size = rng.gen_range(1..=((nodes - 1) / 2).max(1));
                    let mut all: Vec<usize> = (1..=nodes).collect();
                    let mut minority = Vec::new();
                    for _ in 0..size {
                        minority.push(all.remove(rng.gen_range(0..all.len())));
                    }
                    minority.sort_unstable();
                    Fault::Partition {
                        minority,
                        with_holder: rng.gen_bool(0.5),
                    }
                }
                2 => Fault::OneWay { from: who(&mut rng) },
                3 | 4 => Fault::Crash { who: who(&mut rng) },
                5 => Fault::Pause { who: who(&mut rng) },
                6 => Fault::Loss {
                    who: who(&mut rng),
                    link: rng.gen_range(0..2),
                    percent: rng.gen_range(10..=40),
                },
                7 => Fault::CutLink {
                    who: who(&mut rng),
                    link: rng.gen_range(0..2),
                },
                8 => Fault::FenceDeviceDown { crash: who(&mut rng) },
                _ => Fault::MonitorFailure,
            };
            Step {
                fault,
                hold_ms: rng.gen_range(800..=3000),
            }
        })
        .collect()
}

/// Every kind of fault, as `Fault::kind` names it.
pub const FAULT_KINDS: [&str; 8] = [
    "partition",
    "one_way_partition",
    "crash",
    "pause",
    "loss",
    "cut_link",
    "fence_device_down",
    "monitor_failure",
];

/// The first `steps` faults of `kind` in the seed's schedule (to hammer one kind of fault).
pub fn only(seed: u64, steps: usize, nodes: usize, kind: &str) -> Result<Vec<Step>> {
    if !FAULT_KINDS.contains(&kind) {
        bail!("unknown fault kind {kind:?} (one of: {})", FAULT_KINDS.join(", "));
    }
    // Every kind has a probability of at least 1/10 per step: 40× the steps is plenty.
    let plan: Vec<Step> = schedule(seed, steps.saturating_mul(40), nodes)
        .into_iter()
        .filter(|s| s.fault.kind() == kind)
        .take(steps)
        .collect();
    if plan.len() < steps {
        bail!("the seed's schedule holds only {} faults of kind {kind}", plan.len());
    }
    Ok(plan)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Phalanx,
    Keepalived,
}

pub struct Args {
    pub steps: usize,
    pub seed: u64,
    pub target: Target,
    pub nodes: usize,
    /// Only this kind of fault (see [`FAULT_KINDS`]).
    pub only: Option<String>,
    pub exe: PathBuf,
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutageMs {
    /// Steps during which the client saw an outage.
    pub n: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub seed: u64,
    pub nodes: usize,
    pub steps: usize,
    /// Faults injected (steps the target could run: keepalived runs only the partitions).
    pub faults: usize,
    pub fault_kinds: BTreeMap<String, usize>,
    /// Power-switch actions taken by the cluster (fences).
    pub fences: usize,
    /// Steps after which web ran on another node.
    pub failovers: usize,
    /// Client-observed outage per step with one (ms).
    pub outage_ms: Option<OutageMs>,
    /// Safety violations (must be 0 for phalanx), and what each was.
    pub violations: usize,
    pub violation_details: Vec<String>,
    /// Steps after which the cluster did not settle within the bound (not a safety violation).
    pub unsettled: usize,
    pub duration_s: u64,
    pub notes: Vec<String>,
}

/// What happened in one step, for the checkers.
struct StepRecord {
    index: usize,
    fault: Fault,
    /// Lab number of web's node before the step, and after it settled.
    holder: Option<usize>,
    holder_after: Option<usize>,
    /// The node the fault made lost while it held web: web may start elsewhere only after its
    /// fence.
    lost_holder: Option<usize>,
    /// During a symmetric partition: the minority side.
    minority: Option<BTreeSet<usize>>,
    /// Wall clock: injected, healed, settled.
    injected_ms: u64,
    healed_ms: u64,
    settled_ms: u64,
    started: Instant,
    settled: bool,
}

fn num(node: &str) -> Option<usize> {
    node.trim_start_matches('n').parse().ok()
}

fn resolve(who: Who, holder: Option<usize>, nodes: usize) -> usize {
    match who {
        Who::Holder => holder.unwrap_or(1),
        Who::Node(i) => i.clamp(1, nodes),
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// The lab's clone: an HTTP service on every node (port 8090).
fn clone_config(exe: &Path, nodes: usize) -> String {
    format!(
        r#"
[[resource]]
id = "cache"
agent = "process"
params = {{ command = "{} demo-service --listen 0.0.0.0:8090 --name ${{OCF_RESKEY_CRM_meta_on_node}}", check_tcp = "127.0.0.1:8090" }}
monitor = {{ interval = "1s", timeout = "5s" }}

[[clone]]
id = "cache-clone"
resource = "cache"
clone_max = {nodes}
"#,
        exe.display()
    )
}

/// What identifies web's service process (and only it) on the command line.
fn web_patterns() -> Vec<String> {
    vec!["demo-service".into(), format!("0.0.0.0:{PORT}")]
}

pub async fn run(args: Args) -> Result<Report> {
    Lab::available()?;
    if ![3, 5].contains(&args.nodes) {
        bail!("--nodes must be 3 or 5");
    }
    let plan = match &args.only {
        None => schedule(args.seed, args.steps, args.nodes),
        Some(kind) => only(args.seed, args.steps, args.nodes, kind)?,
    };
    match args.target {
        Target::Phalanx => run_phalanx(&args, plan).await,
        Target::Keepalived => run_keepalived(&args, plan).await,
    }
}

/// Wait (bounded) until the cluster has settled: every node running (fenced or crashed ones
/// restarted once their fence is recorded), one agreed leader, every node online, web placed
/// and answering on the VIP from its node. Returns web's node.
async fn settle(c: &mut LocalCluster, lab: &Lab, pending: &mut BTreeSet<String>) -> Result<String> {
    let deadline = Instant::now() + SETTLE;
    let nodes = c.nodes.len();
    loop {
        pending.extend(c.exited());
        for n in pending.clone() {
            // Restart waits for the node's fence to be recorded: a short wait, retried.
            if c.restart(&n, Duration::from_millis(500)).await.is_ok() {
                pending.remove(&n);
            }
        }
        if pending.is_empty() {
            let st = c.statuses().await;
            let running = c.running();
            let stable = c.agreed_leader(&st).is_some()
                && st.values().all(|s| {
                    s.nodes
                        .iter()
                        .filter(|n| running.contains(&n.name))
                        .all(|n| n.state == "online")
                });
            if let Some(holder) = (stable && st.len() == nodes).then(|| web_node(&st)).flatten() {
                let who = probe_vip(lab).await;
                if who.as_deref() == Some(holder.as_str()) {
                    return Ok(holder);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the cluster did not settle within {SETTLE:?} (waiting for: {pending:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One probe of the VIP from the client namespace: who answered.
async fn probe_vip(lab: &Lab) -> Option<String> {
    let addr = format!("{VIP}:{PORT}");
    let h = crate::lab::in_netns(&lab.client_ns(), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(rt.block_on(phalanx::service::probe(&addr, Duration::from_millis(200))))
    });
    tokio::task::spawn_blocking(move || h.join().ok().and_then(|r| r.ok()).flatten())
        .await
        .ok()
        .flatten()
}

async fn run_phalanx(args: &Args, plan: Vec<Step>) -> Result<Report> {
    let began = Instant::now();
    let n = args.nodes;
    let lab = Lab::create(n, 2)?;
    let mut c = crate::lab::cluster_in(
        Spec {
            nodes: n,
            heartbeat: Duration::from_millis(100),
            links: 2,
            exe: args.exe.clone(),
            keep: std::env::var_os("PHALANX_KEEP").is_some(),
            extra_config: web_config(&args.exe, "manual", None) + &clone_config(&args.exe, n),
            cluster_extra: String::new(),
        },
        &lab,
    )?;
    if !args.json {
        eprintln!(
            "nemesis: seed {}, {} steps, lab {} ({})",
            args.seed,
            plan.len(),
            lab.prefix,
            c.dir.display()
        );
    }
    c.start_all()?;
    let mut pending = BTreeSet::new();
    let mut holder = settle(&mut c, &lab, &mut pending)
        .await
        .context("the cluster never came up")?;
    let watch = Watch::start(&lab, &(1..=n).collect::<Vec<_>>(), VIP.parse()?, PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let hosts: Vec<(String, String)> = (1..=n).map(|i| (format!("n{i}"), lab.node_ns(i))).collect();
    let procs = sample_processes(hosts, web_patterns(), SCAN, stop.clone());
    let pb = crate::progress(args.json, plan.len() as u64, "steps");
    let mut records = Vec::new();
    let mut notes = Vec::new();
    for (index, step) in plan.iter().enumerate() {
        pb.set_message(step.fault.kind());
        let h = num(&holder);
        let started = Instant::now();
        let injected_ms = phalanx_node::mesh::unix_ms();
        let mut crashed = Vec::new();
        let mut paused = Vec::new();
        let mut switch_frozen = false;
        let mut lost_holder = None;
        let mut minority = None;
        let hold = Duration::from_millis(step.hold_ms);
        match &step.fault {
            Fault::Partition {
                minority: m,
                with_holder,
            } => {
                let mut side: BTreeSet<usize> = m.iter().copied().collect();
                if let (true, Some(h)) = (*with_holder, h) {
                    if !side.contains(&h) {
                        side.pop_first();
                        side.insert(h);
                    }
                }
                let rest: Vec<usize> = (1..=n).filter(|i| !side.contains(i)).collect();
                lab.partition(&side.iter().copied().collect::<Vec<_>>(), &rest, false)?;
                if h.is_some_and(|h| side.contains(&h)) {
                    lost_holder = h;
                }
                minority = Some(side);
            }
            Fault::OneWay { from } => {
                let i = resolve(*from, h, n);
                let rest: Vec<usize> = (1..=n).filter(|x| *x != i).collect();
                lab.partition(&[i], &rest, true)?;
                if Some(i) == h {
                    lost_holder = h;
                }
            }
            Fault::Crash { who } => {
                let i = resolve(*who, h, n);
                lab.crash(i)?;
                crashed.push(i);
                lost_holder = Some(i).filter(|i| Some(*i) == h);
            }
            Fault::Pause { who } => {
                let i = resolve(*who, h, n);
                lab.pause(i);
                paused.push(i);
                lost_holder = Some(i).filter(|i| Some(*i) == h);
            }
            Fault::Loss { who, link, percent } => lab.loss(resolve(*who, h, n), *link, *percent)?,
            Fault::CutLink { who, link } => lab.cut_link(resolve(*who, h, n), *link)?,
            Fault::FenceDeviceDown { crash } => {
                if let Some(pid) = c.power_switch_pid() {
                    signal(pid, nix::sys::signal::Signal::SIGSTOP);
                    switch_frozen = true;
                }
                let i = resolve(*crash, h, n);
                lab.crash(i)?;
                crashed.push(i);
                lost_holder = Some(i).filter(|i| Some(*i) == h);
            }
            Fault::MonitorFailure => {
                if let Some(h) = h {
                    let patterns = web_patterns();
                    crate::lab::kill_processes(&lab, h, &patterns.iter().map(String::as_str).collect::<Vec<_>>());
                }
            }
        }
        tokio::time::sleep(hold).await;
        // Heal everything this step did.
        lab.heal_network()?;
        for l in 0..2 {
            for i in 1..=n {
                lab.heal_link(i, l)?;
            }
        }
        for i in &paused {
            lab.resume(*i);
        }
        if switch_frozen {
            if let Some(pid) = c.power_switch_pid() {
                signal(pid, nix::sys::signal::Signal::SIGCONT);
            }
        }
        for i in &crashed {
            let name = format!("n{i}");
            c.reap(&name)?;
            pending.insert(name);
        }
        let healed_ms = phalanx_node::mesh::unix_ms();
        let settled = match settle(&mut c, &lab, &mut pending).await {
            Ok(now) => {
                holder = now;
                true
            }
            Err(e) => {
                notes.push(format!("step {index} ({}): {e:#}", step.fault.kind()));
                false
            }
        };
        records.push(StepRecord {
            index,
            fault: step.fault.clone(),
            holder: h,
            holder_after: settled.then(|| num(&holder)).flatten(),
            lost_holder,
            minority,
            injected_ms,
            healed_ms,
            settled_ms: phalanx_node::mesh::unix_ms(),
            started,
            settled,
        });
        pb.inc(1);
        let stuck = records.iter().rev().take(GIVE_UP).filter(|r| !r.settled).count();
        if stuck == GIVE_UP {
            notes.push(format!("gave up after {GIVE_UP} steps in a row that did not settle"));
            break;
        }
    }
    pb.finish_and_clear();
    stop.store(true, Ordering::SeqCst);
    let seen = watch.finish()?;
    let procs = procs
        .join()
        .map_err(|_| anyhow::anyhow!("the process checker panicked"))??;
    let fences = c.fence_events();
    let mut violations = vip_overlaps(&seen.samples, &records);
    violations.extend(check_processes(&procs, &records, &fences));
    if !violations.is_empty() {
        // Keep the daemons' logs and the power switch's event log for the post-mortem.
        c.keep = true;
        notes.push(format!("violations: logs kept in {}", c.dir.display()));
    }
    let fault_kinds = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.fault.kind().to_string()).or_insert(0) += 1;
        m
    });
    Ok(Report {
        target: "phalanx".into(),
        seed: args.seed,
        nodes: n,
        steps: plan.len(),
        faults: records.len(),
        fault_kinds,
        fences: fences.iter().filter(|(_, _, a)| a != "on").count(),
        failovers: records
            .iter()
            .filter(|r| r.holder_after.is_some() && r.holder_after != r.holder)
            .count(),
        outage_ms: outages(&seen.client, &records),
        violations: violations.len(),
        violation_details: violations,
        unsettled: records.iter().filter(|r| !r.settled).count(),
        duration_s: began.elapsed().as_secs(),
        notes,
    })
}

/// VIP overlaps, one line per step and pair of nodes: the fault, web's node before it, and when
/// (ms after injection) and for how long the two held the VIP at once.
fn vip_overlaps(samples: &[(String, crate::lab::Samples)], records: &[StepRecord]) -> Vec<String> {
    let mut spans: BTreeMap<(Option<usize>, String), (Instant, Instant)> = BTreeMap::new();
    for (a, b, t) in crate::lab::overlaps(samples) {
        let step = records.iter().rev().find(|r| r.started <= t).map(|r| r.index);
        let pair = if a < b {
            format!("{a} and {b}")
        } else {
            format!("{b} and {a}")
        };
        let span = spans.entry((step, pair)).or_insert((t, t));
        span.0 = span.0.min(t);
        span.1 = span.1.max(t);
    }
    spans
        .into_iter()
        .map(|((step, pair), (from, to))| {
            let what = match step.and_then(|i| records.get(i)) {
                Some(r) => format!(
                    "step {} ({:?}, web on {:?}): +{} ms after injection",
                    r.index,
                    r.fault,
                    r.holder.map(|h| format!("n{h}")),
                    from.saturating_duration_since(r.started).as_millis()
                ),
                None => "before the first step".to_string(),
            };
            format!(
                "{what}: VIP held by {pair} at once for {} ms or more",
                to.saturating_duration_since(from).as_millis().max(1)
            )
        })
        .collect()
}

/// The checks on web's service processes: never on two hosts at once (for longer than one
/// scan: a scan is not atomic); after a fault lost web's node, web starts elsewhere only after
/// that node's fence; during a symmetric partition, web starts only on the majority side.
fn check_processes(
    procs: &[(u64, BTreeSet<String>)],
    records: &[StepRecord],
    fences: &[(u64, String, String)],
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, (t, hosts)) in procs.iter().enumerate() {
        let until = procs.get(k + 1).map(|(u, _)| *u).unwrap_or(u64::MAX);
        if hosts.len() > 1 && until.saturating_sub(*t) >= 2 * SCAN.as_millis() as u64 {
            out.push(format!(
                "web's service ran on {hosts:?} at once (unix ms {t}, for {} ms)",
                until.saturating_sub(*t)
            ));
        }
    }
    // Starts: (time, host) where a host appears (the first scan shows what already ran).
    let starts: Vec<(u64, usize)> = procs
        .windows(2)
        .flat_map(|w| {
            let ((_, before), (t, hosts)) = (&w[0], &w[1]);
            hosts
                .difference(before)
                .filter_map(|h| num(h))
                .map(|h| (*t, h))
                .collect::<Vec<_>>()
        })
        .collect();
    for r in records {
        let during = |t: u64| t >= r.injected_ms && t <= r.settled_ms;
        if let Some(x) = r.lost_holder {
            let plug = format!("n{x}");
            if let Some((t, y)) = starts.iter().find(|(t, y)| during(*t) && *y != x) {
                let fenced = fences
                    .iter()
                    .any(|(ft, p, a)| *p == plug && a != "on" && *ft >= r.injected_ms && ft <= t);
                if !fenced {
                    out.push(format!(
                        "step {} ({}): web started on n{y} at {t} before n{x}, lost while holding it, was fenced",
                        r.index,
                        r.fault.kind()
                    ));
                }
            }
        }
        if let Some(minority) = &r.minority {
            for (t, y) in starts.iter().filter(|(t, _)| *t >= r.injected_ms && *t <= r.healed_ms) {
                if minority.contains(y) {
                    out.push(format!(
                        "step {} (partition): web started on n{y}, on the minority side {minority:?}, at {t}",
                        r.index
                    ));
                }
            }
        }
    }
    out
}

/// The client's longest outage within each step (from injection to settled), over the steps
/// that had one.
fn outages(log: &ClientLog, records: &[StepRecord]) -> Option<OutageMs> {
    let mut v = Vec::new();
    for (k, r) in records.iter().enumerate() {
        let end = records.get(k + 1).map(|n| n.started);
        let window: ClientLog = log
            .iter()
            .filter(|(t, _)| *t >= r.started && end.is_none_or(|e| *t < e))
            .cloned()
            .collect();
        if let Some(o) = outage(&window, r.started).filter(|o| !o.is_zero()) {
            v.push(o.as_millis() as u64);
        }
    }
    if v.is_empty() {
        return None;
    }
    let d = dist(v);
    Some(OutageMs {
        n: d.n,
        p50: d.p50,
        p99: d.p99,
        max: d.max,
    })
}

/// Which lab node holds the VIP right now (by its addresses), if exactly one does.
fn vip_holders(lab: &Lab) -> Vec<usize> {
    (1..=lab.nodes)
        .filter(|i| {
            std::process::Command::new("ip")
                .args(["-n", &lab.node_ns(*i), "-o", "addr", "show"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {VIP}/")))
                .unwrap_or(false)
        })
        .collect()
}

async fn run_keepalived(args: &Args, plan: Vec<Step>) -> Result<Report> {
    let began = Instant::now();
    if !Path::new(crate::lab_bench::KEEPALIVED).is_file() {
        bail!(
            "{} is not installed (apt-get install keepalived)",
            crate::lab_bench::KEEPALIVED
        );
    }
    let plan: Vec<Step> = plan.into_iter().filter(|s| s.fault.is_partition()).collect();
    let lab = Lab::create(2, 1)?;
    let dir = std::env::temp_dir().join(format!("phalanx-nemesis-keepalived-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let mut children = Vec::new();
    for i in 1..=2 {
        children.extend(crate::lab_bench::keepalived_node(&lab, &dir, i, "0.1", &args.exe)?);
    }
    let result = async {
        let settle = |lab: &Lab| -> Result<usize> {
            let deadline = Instant::now() + SETTLE;
            loop {
                // One holder for a few adverts in a row.
                let mut run = 0;
                let mut last = None;
                while run < 5 {
                    let h = vip_holders(lab);
                    if h.len() == 1 && last.is_none_or(|l| l == h[0]) {
                        run += 1;
                        last = Some(h[0]);
                    } else {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if let (5, Some(h)) = (run, last) {
                    return Ok(h);
                }
                if Instant::now() > deadline {
                    bail!("keepalived did not settle on one holder");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let mut holder = settle(&lab)?;
        let watch = Watch::start(&lab, &[1, 2], VIP.parse()?, PORT);
        let pb = crate::progress(args.json, plan.len() as u64, "steps");
        let mut windows = Vec::new();
        let mut notes = Vec::new();
        for (index, step) in plan.iter().enumerate() {
            pb.set_message(step.fault.kind());
            let started = Instant::now();
            let other = if holder == 1 { 2 } else { 1 };
            match &step.fault {
                Fault::OneWay { from } => {
                    let i = resolve(*from, Some(holder), 2).min(2);
                    let j = if i == 1 { 2 } else { 1 };
                    lab.partition(&[i], &[j], true)?;
                }
                _ => lab.partition(&[holder], &[other], false)?,
            }
            tokio::time::sleep(Duration::from_millis(step.hold_ms)).await;
            lab.heal_network()?;
            match settle(&lab) {
                Ok(h) => holder = h,
                Err(e) => notes.push(format!("step {index}: {e:#}")),
            }
            windows.push((index, started));
            pb.inc(1);
        }
        pb.finish_and_clear();
        let seen = watch.finish()?;
        let mut bad = BTreeSet::new();
        for (_, _, t) in crate::lab::overlaps(&seen.samples) {
            if let Some((i, _)) = windows.iter().rev().find(|(_, s)| *s <= t) {
                bad.insert(*i);
            }
        }
        let violation_details: Vec<String> = bad
            .iter()
            .map(|i| {
                format!(
                    "step {i} ({}): both keepalived nodes held the VIP",
                    plan[*i].fault.kind()
                )
            })
            .collect();
        let records: Vec<StepRecord> = windows
            .iter()
            .map(|(index, started)| StepRecord {
                index: *index,
                fault: plan[*index].fault.clone(),
                holder: None,
                holder_after: None,
                lost_holder: None,
                minority: None,
                injected_ms: 0,
                healed_ms: 0,
                settled_ms: 0,
                started: *started,
                settled: true,
            })
            .collect();
        let fault_kinds = plan.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.fault.kind().to_string()).or_insert(0) += 1;
            m
        });
        anyhow::Ok(Report {
            target: "keepalived".into(),
            seed: args.seed,
            nodes: 2,
            steps: args.steps,
            faults: plan.len(),
            fault_kinds,
            fences: 0,
            failovers: 0,
            outage_ms: outages(&seen.client, &records),
            violations: violation_details.len(),
            violation_details,
            unsettled: notes.len(),
            duration_s: began.elapsed().as_secs(),
            notes,
        })
    }
    .await;
    for mut ch in children {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub fn render(r: &Report) -> String {
    let mut s = format!(
        "nemesis against {} ({} nodes), seed {}: {} steps, {} faults injected in {} s\n",
        r.target, r.nodes, r.seed, r.steps, r.faults, r.duration_s
    );
    for (k, n) in &r.fault_kinds {
        s += &format!("  {k:<20} {n}\n");
    }
    s += &format!(
        "fences: {}, failovers: {}, unsettled steps: {}\n",
        r.fences, r.failovers, r.unsettled
    );
    match &r.outage_ms {
        Some(o) => {
            s += &format!(
                "client outage (ms) over the {} steps with one: p50 {}, p99 {}, max {}\n",
                o.n, o.p50, o.p99, o.max
            )
        }
        None => s += "client outage: none seen\n",
    }
    s += &format!("violations: {}\n", r.violations);
    for v in &r.violation_details {
        s += &format!("  {v}\n");
    }
    for n in &r.notes {
        s += &format!("note: {n}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a_function_of_the_seed_and_covers_every_fault() {
        assert_eq!(schedule(7, 50, 3), schedule(7, 50, 3));
        assert_ne!(schedule(7, 50, 3), schedule(8, 50, 3));
        let kinds: BTreeSet<&str> = schedule(1, 200, 5).iter().map(|s| s.fault.kind()).collect();
        assert_eq!(kinds.len(), 8, "{kinds:?}");
        for s in schedule(3, 200, 5) {
            if let Fault::Partition { minority, .. } = &s.fault {
                assert!(
                    !minority.is_empty() && minority.len() <= 2,
                    "a minority of 5: {minority:?}"
                );
            }
            assert!((800..=3000).contains(&s.hold_ms));
        }
    }

    fn rec(lost: Option<usize>, minority: Option<&[usize]>) -> StepRecord {
        StepRecord {
            index: 0,
            fault: Fault::MonitorFailure,
            holder: Some(1),
            holder_after: Some(2),
            lost_holder: lost,
            minority: minority.map(|m| m.iter().copied().collect()),
            injected_ms: 1000,
            healed_ms: 3000,
            settled_ms: 4000,
            started: Instant::now(),
            settled: true,
        }
    }

    fn hosts(h: &[&str]) -> BTreeSet<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_process_checks_catch_overlaps_unfenced_recovery_and_minority_starts() {
        let moved = vec![(500, hosts(&["n1"])), (1500, hosts(&[])), (2000, hosts(&["n2"]))];
        let fenced = vec![(1800, "n1".to_string(), "reboot".to_string())];
        assert!(check_processes(&moved, &[rec(Some(1), None)], &fenced).is_empty());
        let late = vec![(2100, "n1".to_string(), "reboot".to_string())];
        assert_eq!(
            check_processes(&moved, &[rec(Some(1), None)], &late).len(),
            1,
            "started before the fence"
        );
        assert_eq!(
            check_processes(&moved, &[rec(Some(1), None)], &[]).len(),
            1,
            "never fenced"
        );
        assert_eq!(
            check_processes(&moved, &[rec(None, Some(&[2]))], &[]).len(),
            1,
            "started on the minority side"
        );
        let overlap = vec![
            (500, hosts(&["n1"])),
            (1500, hosts(&["n1", "n2"])),
            (1600, hosts(&["n2"])),
        ];
        assert_eq!(check_processes(&overlap, &[], &[]).len(), 1);
        let one_scan = vec![
            (500, hosts(&["n1"])),
            (1500, hosts(&["n1", "n2"])),
            (1505, hosts(&["n2"])),
        ];
        assert!(
            check_processes(&one_scan, &[], &[]).is_empty(),
            "one scan is not an overlap"
        );
    }
}
