//! `phalanx-lab bench failover`: detection and leader-failover distributions over repeated SIGKILLs
//! of the leader, at each requested heartbeat interval, plus the RSS and idle CPU of each node
//! of an idle 5-node cluster. Each interval is measured twice (issue 15's isolation check): with
//! the session store idle, and with it saturated by writers (`saturate`), the clusters otherwise
//! alike (`[sessions]` on in both); false suspicions (a `node_lost` of a node nobody killed) are
//! counted in both. With `--tls-cost`, each interval is also measured with TLS off (issue 17's
//! cost of TLS: `transport::NO_TLS_ENV` for the daemons and this process), idle, alternating
//! with the TLS run. A benchmark, not a test: it prints figures, it asserts nothing.

use anyhow::Result;
use indicatif::ProgressBar;
use phalanx::demo::{kill_leader, rejoin};
use phalanx::harness::{LocalCluster, Spec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Dist {
    pub n: usize,
    pub min: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

pub fn dist(mut v: Vec<u64>) -> Dist {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Dist {
        n: v.len(),
        min: v[0],
        p50: at(0.5),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IntervalResult {
    pub heartbeat_interval_ms: u64,
    /// `idle`, or `sessions_saturated` (writers saturating the session store throughout).
    pub load: String,
    /// Session writes acknowledged per second during the pass (the load's throughput).
    pub session_writes_per_s: f64,
    /// `node_lost` events beyond the kills: nodes declared dead that nobody killed.
    pub false_suspicions: u64,
    /// Whether the cluster ran with TLS (off only in `--tls-cost`'s second pass).
    pub tls: bool,
    pub detection_ms: Dist,
    pub leader_failover_ms: Dist,
    pub failover_over_detection_p50: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub nodes: usize,
    pub seconds: u64,
    pub rss_mb: BTreeMap<String, f64>,
    pub cpu_percent: BTreeMap<String, f64>,
}

/// Leader failover with the session store saturated, against idle, at one interval.
#[derive(Debug, Clone, Serialize)]
pub struct Isolation {
    pub heartbeat_interval_ms: u64,
    pub failover_p50_idle_ms: u64,
    pub failover_p50_loaded_ms: u64,
    /// loaded p50 / idle p50 (the goal: at most 1.2).
    pub ratio_loaded_over_idle_p50: f64,
    pub false_suspicions: u64,
}

/// Leader failover with TLS against without, at one interval (session store idle).
#[derive(Debug, Clone, Serialize)]
pub struct TlsCost {
    pub heartbeat_interval_ms: u64,
    pub failover_p50_tls_ms: u64,
    pub failover_p50_plain_ms: u64,
    /// TLS p50 / plain p50 (the goal: at most 1.1).
    pub ratio_tls_over_plain_p50: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub kills_per_interval: usize,
    pub intervals: Vec<IntervalResult>,
    pub isolation: Vec<Isolation>,
    pub tls_cost: Vec<TlsCost>,
    pub peers: Vec<PeerResult>,
    /// Why no peer was measured, if none was.
    pub peer_note: Option<String>,
    pub idle: Idle,
}

/// etcd at the same heartbeat interval, with the tightest election timeout etcd accepts
/// (it refuses less than 5 × the heartbeat).
#[derive(Debug, Clone, Serialize)]
pub struct PeerResult {
    pub peer: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub leader_failover_ms: Dist,
    /// phalanx p50 / etcd p50 leader failover at this heartbeat interval (< 1: phalanx faster).
    pub ratio_phalanx_over_peer_p50: f64,
}

pub struct BenchArgs {
    pub kills: usize,
    /// Also measure etcd (needs /usr/bin/etcd, Debian's etcd-server).
    pub etcd: bool,
    pub heartbeats: Vec<Duration>,
    pub idle_seconds: u64,
    pub json: bool,
    /// Also measure each interval with the session store saturated.
    pub sessions_load: bool,
    /// Also measure each interval with TLS off.
    pub tls_cost: bool,
}

/// Run the daemons this process starts from now on, and its own requests, with TLS on or off
/// (`transport::NO_TLS_ENV`; the daemons inherit the environment).
fn set_tls(on: bool) {
    if on {
        std::env::remove_var(phalanx_node::transport::NO_TLS_ENV);
    } else {
        std::env::set_var(phalanx_node::transport::NO_TLS_ENV, "1");
    }
}

/// `node_lost` events in the cluster's history.
fn nodes_lost(cluster: &LocalCluster) -> u64 {
    // One JSON object per line.
    match cluster.cli(&["events", "--kind", "node_lost", "--json"]) {
        Ok((0, out, _)) => out.lines().filter(|l| l.trim_start().starts_with('{')).count() as u64,
        _ => 0,
    }
}

fn proc_cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(utime + stime)
}

fn proc_rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

pub async fn run(args: BenchArgs, exe: PathBuf) -> Result<BenchReport> {
    let timeout = Duration::from_secs(30);
    let pb = crate::progress(
        args.json,
        (args.kills * args.heartbeats.len() * (1 + usize::from(args.sessions_load) + usize::from(args.tls_cost)))
            as u64,
        "kills",
    );
    let mut intervals = Vec::new();
    let mut isolation = Vec::new();
    let mut tls_cost = Vec::new();
    // (session store saturated, TLS on): idle with TLS first, then the others asked for.
    let mut passes = vec![(false, true)];
    if args.sessions_load {
        passes.push((true, true));
    }
    if args.tls_cost {
        passes.push((false, false));
    }
    for hb in &args.heartbeats {
        for &(loaded, tls) in &passes {
            set_tls(tls);
            let (sessions, addrs) = phalanx::demo::sessions_section(3)?;
            let mut cluster = LocalCluster::create(Spec {
                nodes: 3,
                heartbeat: *hb,
                links: 2,
                exe: exe.clone(),
                keep: std::env::var_os("PHALANX_KEEP").is_some(),
                extra_config: sessions,
                cluster_extra: String::new(),
            })?;
            cluster.start_all()?;
            cluster.wait_stable(timeout).await?;
            let load = loaded.then(|| crate::saturate::start(addrs.clone(), 50));
            let t0 = std::time::Instant::now();
            let mut det = Vec::new();
            let mut fo = Vec::new();
            for _ in 0..args.kills {
                pb.set_message(format!(
                    "at {}ms heartbeats, session store {}{}",
                    hb.as_millis(),
                    if loaded { "saturated" } else { "idle" },
                    if tls { "" } else { ", TLS off" }
                ));
                let f = kill_leader(&mut cluster, timeout).await?;
                det.push(f.detection_ms);
                fo.push(f.leader_failover_ms);
                rejoin(&mut cluster, &f.killed, timeout).await?;
                pb.inc(1);
            }
            let session_writes_per_s = load.as_ref().map_or(0.0, |l| {
                l.acked.load(std::sync::atomic::Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
            });
            drop(load);
            let false_suspicions = nodes_lost(&cluster).saturating_sub(args.kills as u64);
            let d = dist(det);
            let l = dist(fo);
            intervals.push(IntervalResult {
                heartbeat_interval_ms: hb.as_millis() as u64,
                load: if loaded { "sessions_saturated" } else { "idle" }.to_string(),
                session_writes_per_s,
                false_suspicions,
                tls,
                failover_over_detection_p50: l.p50 as f64 / d.p50.max(1) as f64,
                detection_ms: d,
                leader_failover_ms: l,
            });
        }
        set_tls(true);
        let this: Vec<&IntervalResult> = intervals
            .iter()
            .filter(|i| i.heartbeat_interval_ms == hb.as_millis() as u64)
            .collect();
        let idle = this.iter().find(|i| i.tls && i.load == "idle");
        if let (Some(on), Some(off)) = (idle, this.iter().find(|i| !i.tls)) {
            tls_cost.push(TlsCost {
                heartbeat_interval_ms: hb.as_millis() as u64,
                failover_p50_tls_ms: on.leader_failover_ms.p50,
                failover_p50_plain_ms: off.leader_failover_ms.p50,
                ratio_tls_over_plain_p50: on.leader_failover_ms.p50 as f64 / off.leader_failover_ms.p50.max(1) as f64,
            });
        }
        if let (Some(idle), Some(loaded)) = (idle, this.iter().find(|i| i.load != "idle")) {
            isolation.push(Isolation {
                heartbeat_interval_ms: hb.as_millis() as u64,
                failover_p50_idle_ms: idle.leader_failover_ms.p50,
                failover_p50_loaded_ms: loaded.leader_failover_ms.p50,
                ratio_loaded_over_idle_p50: loaded.leader_failover_ms.p50 as f64
                    / idle.leader_failover_ms.p50.max(1) as f64,
                false_suspicions: idle.false_suspicions + loaded.false_suspicions,
            });
        }
    }
    pb.finish_and_clear();
    let (peers, peer_note) = if args.etcd {
        let idle: Vec<IntervalResult> = intervals
            .iter()
            .filter(|i| i.load == "idle" && i.tls)
            .cloned()
            .collect();
        measure_etcd(&args, &idle, timeout).await?
    } else {
        (Vec::new(), Some("etcd not requested (--no-etcd)".to_string()))
    };

    // Idle footprint of a 5-node cluster at the default interval.
    let mut cluster = LocalCluster::create(Spec {
        nodes: 5,
        heartbeat: Duration::from_millis(100),
        links: 2,
        exe,
        keep: false,
        extra_config: String::new(),
        cluster_extra: String::new(),
    })?;
    cluster.start_all()?;
    cluster.wait_stable(timeout).await?;
    let pids: BTreeMap<String, u32> = cluster
        .nodes
        .iter()
        .filter_map(|n| n.pid().map(|p| (n.name.clone(), p)))
        .collect();
    let before: BTreeMap<String, u64> = pids
        .iter()
        .map(|(n, p)| (n.clone(), proc_cpu_ticks(*p).unwrap_or(0)))
        .collect();
    let t0 = std::time::Instant::now();
    let spin = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    spin.set_message(format!("measuring an idle 5-node cluster for {} s", args.idle_seconds));
    spin.enable_steady_tick(Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    spin.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    // SC_CLK_TCK is 100 on Linux x86_64 and aarch64.
    let hz = 100.0;
    let mut cpu = BTreeMap::new();
    let mut rss = BTreeMap::new();
    for (n, p) in &pids {
        let ticks = proc_cpu_ticks(*p).unwrap_or(0).saturating_sub(before[n]);
        cpu.insert(n.clone(), (ticks as f64 / hz) / secs * 100.0);
        rss.insert(n.clone(), proc_rss_mb(*p).unwrap_or(0.0));
    }
    Ok(BenchReport {
        kills_per_interval: args.kills,
        intervals,
        isolation,
        tls_cost,
        peers,
        peer_note,
        idle: Idle {
            nodes: 5,
            seconds: args.idle_seconds,
            rss_mb: rss,
            cpu_percent: cpu,
        },
    })
}

pub fn render(r: &BenchReport) -> String {
    let mut o = format!(
        "Leader SIGKILL, 3 nodes on loopback, 2 links each, {} kills per interval\n",
        r.kills_per_interval
    );
    o += "heartbeat | session store       | detection ms min/p50/p99/max | leader failover ms min/p50/p99/max | failover/detection p50 | false suspicions\n";
    for i in &r.intervals {
        let d = &i.detection_ms;
        let l = &i.leader_failover_ms;
        let load = if i.load == "idle" {
            "idle".to_string()
        } else {
            format!("{:.0} writes/s", i.session_writes_per_s)
        } + if i.tls { "" } else { ", no TLS" };
        o += &format!(
            "{:>6}ms  | {load:<17} | {:>5} {:>5} {:>5} {:>5}         | {:>5} {:>5} {:>5} {:>5}               | {:.2}                   | {}\n",
            i.heartbeat_interval_ms,
            d.min,
            d.p50,
            d.p99,
            d.max,
            l.min,
            l.p50,
            l.p99,
            l.max,
            i.failover_over_detection_p50,
            i.false_suspicions
        );
    }
    for i in &r.isolation {
        o += &format!(
            "{:>6}ms  | isolation: leader failover p50 {} ms with the session store saturated, {} ms idle: ratio {:.2} (goal <= 1.2); false suspicions {}\n",
            i.heartbeat_interval_ms,
            i.failover_p50_loaded_ms,
            i.failover_p50_idle_ms,
            i.ratio_loaded_over_idle_p50,
            i.false_suspicions
        );
    }
    for t in &r.tls_cost {
        o += &format!(
            "{:>6}ms  | cost of TLS: leader failover p50 {} ms with TLS, {} ms without: ratio {:.2} (goal <= 1.1)\n",
            t.heartbeat_interval_ms, t.failover_p50_tls_ms, t.failover_p50_plain_ms, t.ratio_tls_over_plain_p50
        );
    }
    for p in &r.peers {
        let l = &p.leader_failover_ms;
        o += &format!(
            "{:>6}ms  | {} (election timeout {}ms): leader failover ms min/p50/p99/max {} {} {} {} | phalanx/etcd p50 = {:.2}\n",
            p.heartbeat_interval_ms, p.peer, p.election_timeout_ms, l.min, l.p50, l.p99, l.max, p.ratio_phalanx_over_peer_p50
        );
    }
    if let Some(n) = &r.peer_note {
        o += &format!("peer: {n}\n");
    }
    o += &format!(
        "\nIdle {}-node cluster over {} s (100ms heartbeats):\n",
        r.idle.nodes, r.idle.seconds
    );
    for (n, mb) in &r.idle.rss_mb {
        o += &format!("  {n}: RSS {mb:.1} MB, CPU {:.2} % of a core\n", r.idle.cpu_percent[n]);
    }
    o
}

/// etcd's leader failover at each of our heartbeat intervals (see `peer_etcd`).
async fn measure_etcd(
    args: &BenchArgs,
    ours: &[IntervalResult],
    timeout: Duration,
) -> Result<(Vec<PeerResult>, Option<String>)> {
    let Some(version) = crate::peer_etcd::version() else {
        let note = format!("{} not found: apt-get install etcd-server", crate::peer_etcd::ETCD);
        return Ok((Vec::new(), Some(note)));
    };
    let pb = crate::progress(args.json, (args.kills * ours.len()) as u64, "etcd kills");
    let mut peers = Vec::new();
    for own in ours {
        let hb_ms = own.heartbeat_interval_ms;
        let election_ms = hb_ms * 5;
        pb.set_message(format!("at {hb_ms}ms/{election_ms}ms"));
        let mut etcd = crate::peer_etcd::EtcdCluster::create(hb_ms, election_ms)?;
        etcd.start_all()?;
        let mut fo = Vec::new();
        for _ in 0..args.kills {
            fo.push(etcd.kill_leader(timeout).await?);
            pb.inc(1);
        }
        let d = dist(fo);
        peers.push(PeerResult {
            peer: version.clone(),
            heartbeat_interval_ms: hb_ms,
            election_timeout_ms: election_ms,
            ratio_phalanx_over_peer_p50: own.leader_failover_ms.p50 as f64 / d.p50.max(1) as f64,
            leader_failover_ms: d,
        });
    }
    pb.finish_and_clear();
    Ok((peers, None))
}
