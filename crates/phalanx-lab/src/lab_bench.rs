//! `phalanx-lab bench lab-failover` (`tests/lab/failover-bench`): client-observed outage when the
//! node holding a virtual IP crashes, in the network-namespace lab, for keepalived (Debian's,
//! VRRPv3, two nodes, unicast peers, both BACKUP with nopreempt and different priorities) at
//! `advert_int` 1 s and 0.1 s, and for phalanx (3 nodes, 2 links, group vip + HTTP server) at
//! 100 ms and 20 ms heartbeats, plus phalanx's planned move. Every trial uses a fresh lab, the
//! same client (a new TCP connection to the VIP every 20 ms, 100 ms timeout) and the same crash
//! (freeze every process of the node, kill them, unplug it: keepalived's dying child cannot send
//! the priority-0 advert that would fake a fast failover). A sampler in every node namespace
//! counts moments with two VIP holders. A benchmark: it prints figures and asserts nothing.

use crate::bench::{dist, Dist};
use crate::lab::{outage, wait_answer, wait_any_answer, web_config, web_node, Lab, Watch, PORT, VIP};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
pub const KEEPALIVED: &str = "/usr/sbin/keepalived";

#[derive(Debug, Clone, Serialize)]
pub struct ConfigResult {
    pub trials: usize,
    pub min_ms: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Moments two nodes held the VIP at once, over all trials.
    pub violations: usize,
    /// phalanx crash trials: p50 of the time from the crash until the cluster's (new) leader
    /// declared the node dead, from its own record (`changed_at_unix_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_ms: Option<u64>,
    /// p50 and p99 of the post-detection overhead per trial: client outage − detection (the
    /// controller, fence, plan, start and the VIP's announcement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_p50_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_p99_ms: Option<u64>,
}

impl From<(&Dist, usize)> for ConfigResult {
    fn from((d, violations): (&Dist, usize)) -> Self {
        ConfigResult {
            trials: d.n,
            min_ms: d.min,
            p50_ms: d.p50,
            p99_ms: d.p99,
            max_ms: d.max,
            violations,
            detection_ms: None,
            overhead_p50_ms: None,
            overhead_p99_ms: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub configs: BTreeMap<String, ConfigResult>,
    /// phalanx at 100 ms ÷ keepalived at 0.1 s (p50): the equal-interval comparison.
    pub ratio_100ms: Option<f64>,
    /// phalanx at 20 ms ÷ keepalived at 0.1 s (p50).
    pub ratio_20ms_vs_keepalived_100ms: Option<f64>,
    /// Why a configuration has no figure (keepalived not installed, say).
    pub notes: Vec<String>,
}

pub struct Args {
    pub trials: usize,
    pub exe: PathBuf,
    pub json: bool,
    pub keepalived: bool,
    /// Only these configurations (empty: all).
    pub only: Vec<String>,
}

/// One configuration's trials.
struct Runs {
    outages: Vec<u64>,
    violations: usize,
    /// Crash trials of phalanx: detection, and outage − detection, per trial.
    detections: Vec<u64>,
    overheads: Vec<u64>,
}

impl Runs {
    fn new() -> Runs {
        Runs {
            outages: Vec::new(),
            violations: 0,
            detections: Vec::new(),
            overheads: Vec::new(),
        }
    }

    fn add(&mut self, t: Trial) {
        let outage = t.outage.as_millis() as u64;
        self.outages.push(outage);
        self.violations += t.violations;
        if let Some(d) = t.detection_ms {
            self.detections.push(d);
            self.overheads.push(outage.saturating_sub(d));
        }
    }
}

/// What one trial measured.
struct Trial {
    outage: Duration,
    violations: usize,
    /// phalanx crash trials: crash → the (new) leader's verdict, from its own record.
    detection_ms: Option<u64>,
}

impl From<(Duration, usize)> for Trial {
    fn from((outage, violations): (Duration, usize)) -> Self {
        Trial {
            outage,
            violations,
            detection_ms: None,
        }
    }
}

fn vip_addr() -> String {
    format!("{VIP}:{PORT}")
}

/// One phalanx trial: a fresh 3-node lab; crash the node holding web (or, `planned`, move web
/// to another node) and measure the client's outage.
async fn phalanx_trial(exe: &Path, heartbeat: Duration, planned: bool) -> Result<Trial> {
    let lab = Lab::create(3, 2)?;
    let (mut c, first) = crate::lab::web_cluster(&lab, exe, heartbeat, web_config(exe, "manual", None)).await?;
    let w = Watch::start(&lab, &[1, 2, 3], VIP.parse()?, PORT);
    let at = Instant::now();
    let crash_wall_ms = phalanx_node::mesh::unix_ms();
    let mut detection_ms = None;
    let target = if planned {
        let to = if first == "n3" { "n1" } else { "n3" };
        let (code, out, err) = c.cli(&["resource", "move", "web", "--to", to])?;
        if code != 0 {
            bail!("resource move: {out}{err}");
        }
        to.to_string()
    } else {
        lab.crash(first.trim_start_matches('n').parse()?)?;
        c.reap(&first)?;
        let (to, detected) = c
            .wait_for(T, "web moved", |st| {
                let to = web_node(st).filter(|n| *n != first)?;
                // The deciding leader's own record of when it declared the crashed node dead.
                let leader = st.values().find_map(|s| s.leader.clone())?;
                let at = st
                    .get(&leader)?
                    .nodes
                    .iter()
                    .find(|n| n.name == first)?
                    .changed_at_unix_ms;
                Some((to, at))
            })
            .await?;
        detection_ms = detected.map(|t| t.saturating_sub(crash_wall_ms));
        to
    };
    wait_answer(&lab, &vip_addr(), &target, T)?;
    let seen = w.finish()?;
    let o = outage(&seen.client, at).context("the client never saw the service back")?;
    if std::env::var_os("PHALANX_BENCH_TRACE").is_some() {
        // Wall clock of the fault, to line the probes up with the daemons' logs.
        let wall = phalanx_node::mesh::unix_ms() - at.elapsed().as_millis() as u64;
        eprintln!("fault at unix ms {wall}");
        for (t, w) in seen.client.iter().filter(|(t, _)| *t >= at) {
            eprintln!("probe +{:?}: {w:?}", t.duration_since(at));
        }
    }
    Ok(Trial {
        outage: o,
        violations: seen.violations.len(),
        detection_ms,
    })
}

/// A keepalived node: its config, then the daemon and the HTTP service in its namespace.
pub(crate) fn keepalived_node(lab: &Lab, dir: &Path, i: usize, advert: &str, exe: &Path) -> Result<Vec<Child>> {
    keepalived_node_checking(lab, dir, i, advert, exe, None)
}

/// [`keepalived_node`], with `check` (a script) run every `interval` seconds as a
/// `vrrp_script` (`fall 1`): the node leaves MASTER when it fails.
pub(crate) fn keepalived_node_checking(
    lab: &Lab,
    dir: &Path,
    i: usize,
    advert: &str,
    exe: &Path,
    check: Option<(&Path, &str)>,
) -> Result<Vec<Child>> {
    let peer = if i == 1 { 2 } else { 1 };
    let conf = dir.join(format!("n{i}.conf"));
    let (script, track) = match check {
        Some((script, interval)) => (
            format!(
                "vrrp_script chk_web {{\n  script \"{}\"\n  interval {interval}\n  timeout 1\n  fall 1\n  rise 1\n}}\n",
                script.display()
            ),
            "  track_script {\n    chk_web\n  }\n",
        ),
        None => (String::new(), ""),
    };
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  router_id n{i}\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}}\n\
             {script}\
             vrrp_instance web {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 77\n  \
             priority {}\n  advert_int {advert}\n  unicast_src_ip {}\n  unicast_peer {{\n    {}\n  }}\n  \
             virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n{track}}}\n",
            if i == 1 { 150 } else { 100 },
            lab.node_ip(i, 0),
            lab.node_ip(peer, 0),
        ),
    )?;
    let log = std::fs::File::create(dir.join(format!("n{i}.log")))?;
    let ns = lab.node_ns(i);
    let keepalived = phalanx::netns::command_in(&ns, KEEPALIVED)
        .args(["--dont-fork", "--log-console", "--vrrp", "-f"])
        .arg(&conf)
        .arg("-p")
        .arg(dir.join(format!("n{i}.pid")))
        .arg("-r")
        .arg(dir.join(format!("n{i}.vrrp.pid")))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting keepalived")?;
    let service = phalanx::netns::command_in(&ns, exe)
        .args([
            "demo-service",
            "--listen",
            &format!("0.0.0.0:{PORT}"),
            "--name",
            &format!("n{i}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the HTTP service")?;
    Ok(vec![keepalived, service])
}

/// One keepalived trial: a fresh 2-node lab; wait until one node serves the VIP and the other has
/// heard its adverts, crash the holder, measure the client's outage.
async fn keepalived_trial(exe: &Path, advert: Duration) -> Result<(Duration, usize)> {
    let lab = Lab::create(2, 1)?;
    let dir = tempdir()?;
    let advert_s = format!("{}", advert.as_secs_f64());
    let mut children = Vec::new();
    for i in 1..=2 {
        children.extend(keepalived_node(&lab, &dir, i, &advert_s, exe)?);
    }
    let result = async {
        let holder = wait_any_answer(&lab, &vip_addr(), T)?;
        // The backup has settled once it has heard a few adverts from the master.
        tokio::time::sleep(advert * 4).await;
        let w = Watch::start(&lab, &[1, 2], VIP.parse()?, PORT);
        let at = Instant::now();
        lab.crash(holder.trim_start_matches('n').parse()?)?;
        let other = if holder == "n1" { "n2" } else { "n1" };
        wait_answer(&lab, &vip_addr(), other, T)?;
        let seen = w.finish()?;
        let o = outage(&seen.client, at).context("the client never saw the service back")?;
        anyhow::Ok((o, seen.violations.len()))
    }
    .await;
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("phalanx-keepalived-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// What a configuration measures: keepalived at an advert interval, or phalanx at a heartbeat
/// interval (crash, or with `true` a planned move).
#[derive(Clone, Copy)]
enum Peer {
    Keepalived(Duration),
    Phalanx(Duration, bool),
}

pub async fn run(args: Args) -> Result<Report> {
    Lab::available()?;
    let mut plans: Vec<(&str, Peer)> = Vec::new();
    let mut notes = Vec::new();
    let ms = Duration::from_millis;
    if args.keepalived && Path::new(KEEPALIVED).is_file() {
        plans.push(("keepalived_1s", Peer::Keepalived(ms(1000))));
        plans.push(("keepalived_100ms", Peer::Keepalived(ms(100))));
    } else if args.keepalived {
        notes.push(format!("{KEEPALIVED} is not installed: no keepalived figures"));
    }
    plans.push(("phalanx_100ms", Peer::Phalanx(ms(100), false)));
    plans.push(("phalanx_20ms", Peer::Phalanx(ms(20), false)));
    plans.push(("phalanx_move", Peer::Phalanx(ms(100), true)));
    if let Some(unknown) = args.only.iter().find(|o| !plans.iter().any(|(n, _)| n == *o)) {
        let names: Vec<&str> = plans.iter().map(|(n, _)| *n).collect();
        bail!(
            "--only {unknown}: no such configuration (there are: {})",
            names.join(", ")
        );
    }
    if !args.only.is_empty() {
        plans.retain(|(n, _)| args.only.iter().any(|o| o == n));
    }
    let pb = crate::progress(args.json, (plans.len() * args.trials) as u64, "trials");
    let mut configs = BTreeMap::new();
    for (name, peer) in plans {
        pb.set_message(name.to_string());
        let mut runs = Runs::new();
        for _ in 0..args.trials {
            let r = match peer {
                Peer::Keepalived(advert) => keepalived_trial(&args.exe, advert).await.map(Trial::from),
                Peer::Phalanx(hb, planned) => phalanx_trial(&args.exe, hb, planned).await,
            };
            match r {
                Ok(t) => runs.add(t),
                Err(e) => notes.push(format!("{name}: a trial failed: {e:#}")),
            }
            pb.inc(1);
        }
        if !runs.outages.is_empty() {
            let d = dist(runs.outages);
            let mut c = ConfigResult::from((&d, runs.violations));
            if !runs.detections.is_empty() {
                let o = dist(runs.overheads);
                c.detection_ms = Some(dist(runs.detections).p50);
                (c.overhead_p50_ms, c.overhead_p99_ms) = (Some(o.p50), Some(o.p99));
            }
            configs.insert(name.to_string(), c);
        }
    }
    pb.finish_and_clear();
    let ratio = |a: &str, b: &str| {
        let (a, b) = (configs.get(a)?, configs.get(b)?);
        (b.p50_ms > 0).then(|| a.p50_ms as f64 / b.p50_ms as f64)
    };
    Ok(Report {
        ratio_100ms: ratio("phalanx_100ms", "keepalived_100ms"),
        ratio_20ms_vs_keepalived_100ms: ratio("phalanx_20ms", "keepalived_100ms"),
        configs,
        notes,
    })
}

pub fn render(r: &Report) -> String {
    let mut s = String::from("client outage after a crash of the VIP holder (ms)\n");
    s += "configuration      | trials |  min |  p50 |  p99 |  max | two holders | detection p50 | outage − detection p50 / p99\n";
    let ms = |x: Option<u64>| x.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    for (name, c) in &r.configs {
        s += &format!(
            "{name:<18} | {:>6} | {:>4} | {:>4} | {:>4} | {:>4} | {:>11} | {:>13} | {} / {}\n",
            c.trials,
            c.min_ms,
            c.p50_ms,
            c.p99_ms,
            c.max_ms,
            c.violations,
            ms(c.detection_ms),
            ms(c.overhead_p50_ms),
            ms(c.overhead_p99_ms)
        );
    }
    let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    s += &format!(
        "phalanx ÷ keepalived (p50), both at 100 ms: {}\nphalanx 20 ms ÷ keepalived 100 ms (p50): {}\n",
        f(r.ratio_100ms),
        f(r.ratio_20ms_vs_keepalived_100ms)
    );
    s += "(phalanx_move is a planned `resource move`, not a crash.)\n";
    for n in &r.notes {
        s += &format!("note: {n}\n");
    }
    s
}
