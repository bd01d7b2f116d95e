//! `phalanx-lab bench lb` (`tests/lab/lb-bench`): phalanx's load balancer beside HAProxy (Debian's
//! 2.6), in one run, on one lab: the same three backends (`phalanx-lab backend`, a fast HTTP/1.1
//! keep-alive server, one process per backend host), the same algorithm (roundrobin, set on
//! both), the same health-check settings, and each proxy pinned to the same core(s) with the same
//! thread count (HAProxy's `nbthread`, phalanx's `PHALANX_LB_THREADS`) and the same niceness
//! (phalanx runs its balancer threads at nice 5; HAProxy is started at nice 5). The client and
//! the backends are pinned to the other cores.
//!
//! The lab: hosts n1..n3 run a 3-node phalanx cluster whose group `lbg` (a `vip` and the
//! `[[balancer]]` listening on it) prefers n1; HAProxy runs on n1 too (its own address); n4..n6
//! are the backends; the client host runs wrk and the open-loop generator (`phalanx-lab
//! loadgen`). Both proxies run throughout and are measured in turns, alternating which goes first
//! each round, so that a noisy neighbour's burst hits both alike; each figure is the median of
//! its rounds. Per proxy: closed-loop maximum throughput (wrk, keep-alive, fixed connections and
//! duration), open-loop runs at 50 % and 90 % of HAProxy's maximum (latency from intended send
//! times), each with the proxy's CPU (utime + stime over the run; for phalanx the whole daemon,
//! control plane included) and memory (VmRSS, VmHWM); then a backend crash: under steady
//! open-loop GETs, kill -9 one backend and count failed requests and the time until the proxy
//! reports it down (its stats socket, `phalanx balancer status`: from then on no request goes to
//! it). The phalanx daemons' `node_lost` events over all the load runs are the false
//! suspicions. A benchmark: it prints figures and asserts nothing (the quick lab test asserts
//! the non-timing facts).

use crate::httpload::LoadResult;
use crate::lab::Lab;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use phalanx::harness::{LocalCluster, Spec};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub const HAPROXY: &str = "/usr/sbin/haproxy";
pub const WRK: &str = "/usr/bin/wrk";
const T: Duration = Duration::from_secs(60);
/// The balancer's address (a `vip` grouped with it) and port; HAProxy's on n1's own address.
const VIP: &str = "10.77.0.100";
const LB_PORT: u16 = 8000;
const BACKEND_PORT: u16 = 8080;
/// Backend hosts: n4..n6.
const BACKENDS: [usize; 3] = [4, 5, 6];
/// The health-check settings both proxies get.
const CHECK_INTER_MS: u64 = 200;
const CHECK_FALL: u32 = 3;
const CHECK_RISE: u32 = 2;
const CHECK_TIMEOUT_MS: u64 = 100;
const CONNECT_TIMEOUT_MS: u64 = 500;
/// Consecutive failed connections of live traffic that mark a backend down (phalanx's default
/// `error_limit`; HAProxy's `observe layer4 error-limit N on-error mark-down`).
const ERROR_LIMIT: u32 = 10;

/// Which protocol both proxies speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Tcp,
    Http,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Http => "http",
        }
    }
}

pub struct Args {
    pub mode: Mode,
    /// Length of each measured run (the crash runs twice that).
    pub phase: Duration,
    /// Runs of each kind per proxy, alternating between the proxies (medians are reported).
    pub rounds: usize,
    /// Client connections (wrk and the generator).
    pub connections: usize,
    /// Proxy threads (HAProxy `nbthread`, `PHALANX_LB_THREADS`).
    pub threads: usize,
    /// `taskset -c` lists: the proxy's cores, and everything else's.
    pub proxy_cpus: String,
    pub client_cpus: String,
    /// The phalanx binary (daemons, CLI).
    pub exe: PathBuf,
    /// The phalanx-lab binary (backends, the generator).
    pub lab_exe: PathBuf,
    pub json: bool,
}

/// One closed- or open-loop run through one proxy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    /// Answered requests per second.
    pub rps: f64,
    /// Only open-loop runs: the rate asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rps: Option<f64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    /// The proxy's CPU over the run, % of one core.
    pub cpu_pct: f64,
    /// The proxy's CPU time per answered request, µs (what a proxy costs when the client,
    /// not the proxy, is the bottleneck).
    pub cpu_us_per_req: f64,
    /// IP packets in and out of the proxies' host per answered request (both sides of the
    /// proxy, health checks included).
    pub packets_per_req: f64,
    /// Connections the backends accepted per 1,000 answered requests (upstream reuse).
    pub backend_conns_per_1k_req: f64,
    /// VmRSS at the end of the run and VmHWM (peak), kB.
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

/// One proxy's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxyResult {
    pub mode: String,
    pub threads: usize,
    pub cpus: String,
    /// The proxy threads' nice value (phalanx lowers its balancer threads'; HAProxy is started
    /// at the same).
    pub nice: i32,
    /// Runs per figure (each figure is the median of its runs).
    pub rounds: usize,
    /// Closed loop (wrk): the maximum.
    pub max: Run,
    /// Open loop at 50 % and 90 % of HAProxy's maximum.
    pub load_50: Run,
    pub load_90: Run,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Crash {
    pub haproxy_failed: u64,
    pub phalanx_failed: u64,
    pub haproxy_out_of_rotation_ms: Option<u64>,
    pub phalanx_out_of_rotation_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub haproxy: ProxyResult,
    pub phalanx: ProxyResult,
    pub ratio_rps: Option<f64>,
    pub ratio_p99_50: Option<f64>,
    pub ratio_p99_90: Option<f64>,
    pub backend_crash: Crash,
    pub false_suspicions: u64,
}

/// A process's CPU ticks (utime + stime) and memory.
struct ProcSample {
    at: Instant,
    ticks: u64,
}

fn proc_sample(pid: u32) -> Result<ProcSample> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ") ": utime, stime are
    // fields 14 and 15, i.e. the 12th and 13th after the state.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).context("odd /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).context("odd /proc stat");
    Ok(ProcSample {
        at: Instant::now(),
        ticks: num(11)? + num(12)?,
    })
}

/// (VmRSS, VmHWM) in kB.
fn proc_mem(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn cpu_pct(before: &ProcSample, after: &ProcSample) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let secs = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    (after.ticks.saturating_sub(before.ticks)) as f64 / hz / secs * 100.0
}

/// A command in namespace `ns` pinned to `cpus`.
fn pinned(ns: &str, cpus: &str, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = phalanx::netns::command_in(ns, "taskset");
    c.args(["-c", cpus]).arg(program);
    c
}

/// Pin every thread of `pid` to `cpus`.
fn pin(pid: u32, cpus: &str) -> Result<()> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .context("running taskset")?;
    if !out.status.success() {
        bail!("taskset -p {pid}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Poll `addr` from the client namespace until an HTTP GET through it is answered (bounded).
async fn wait_http(lab: &Lab, addr: SocketAddr, lab_exe: &Path, cpus: &str) -> Result<()> {
    let deadline = Instant::now() + T;
    loop {
        let r = loadgen(lab, lab_exe, cpus, addr, 50.0, Duration::from_millis(200), 1).await;
        if let Ok(r) = &r {
            if r.ok > 0 && r.errors == 0 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("nothing answered HTTP on {addr} within {T:?}: {r:?}");
        }
    }
}

/// Run the open-loop generator in the client namespace.
async fn loadgen(
    lab: &Lab,
    lab_exe: &Path,
    cpus: &str,
    target: SocketAddr,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> Result<LoadResult> {
    let out = tokio::process::Command::from({
        let mut c = pinned(&lab.client_ns(), cpus, lab_exe);
        c.args([
            "loadgen",
            "--target",
            &target.to_string(),
            "--rate",
            &format!("{rate:.0}"),
            "--duration",
            &format!("{}ms", duration.as_millis()),
            "--connections",
            &connections.to_string(),
        ]);
        c
    })
    .stdin(Stdio::null())
    .output()
    .await
    .context("running phalanx-lab loadgen")?;
    if !out.status.success() {
        bail!("loadgen: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("loadgen's JSON")
}

/// wrk's figures, from the Lua `done` hook below.
#[derive(Debug, Deserialize)]
struct WrkOut {
    requests: u64,
    duration_us: u64,
    errors: u64,
    non2xx: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

const WRK_LUA: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

async fn wrk(lab: &Lab, a: &Args, script: &Path, target: SocketAddr, duration: Duration) -> Result<WrkOut> {
    let threads = cpu_count(&a.client_cpus).max(1);
    let out = tokio::process::Command::from({
        let mut c = pinned(&lab.client_ns(), &a.client_cpus, WRK);
        c.args([
            "-t",
            &threads.to_string(),
            "-c",
            &a.connections.max(threads).to_string(),
            "-d",
            &format!("{}s", duration.as_secs().max(1)),
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{target}/"));
        c
    })
    .stdin(Stdio::null())
    .output()
    .await
    .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .with_context(|| format!("no figures from wrk: {text}{}", String::from_utf8_lossy(&out.stderr)))?;
    serde_json::from_str(line).context("wrk's figures")
}

/// How many CPUs a `taskset -c` list names (`1`, `0-3`, `0,2`).
pub fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.trim().parse::<usize>().is_ok()),
        })
        .sum()
}

/// The proxy under test: its pid and how to ask whether a backend is out of rotation.
enum Proxy<'a> {
    Haproxy { pid: u32, socket: PathBuf },
    Phalanx { pid: u32, cluster: &'a LocalCluster },
}

impl Proxy<'_> {
    fn pid(&self) -> u32 {
        match self {
            Proxy::Haproxy { pid, .. } | Proxy::Phalanx { pid, .. } => *pid,
        }
    }

    /// Whether the proxy reports `backend` down (None: it could not be asked).
    fn is_down(&self, backend: &str) -> Option<bool> {
        match self {
            Proxy::Haproxy { socket, .. } => {
                let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                s.write_all(b"show stat\n").ok()?;
                let mut text = String::new();
                s.read_to_string(&mut text).ok()?;
                // CSV: pxname, svname, ..., status (the 18th field).
                text.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f.get(1) == Some(&backend)).then(|| f.get(17).is_some_and(|s| s.starts_with("DOWN")))
                })
            }
            Proxy::Phalanx { cluster, .. } => {
                let (code, out, _) = cluster.cli(&["balancer", "status", "lb", "--json"]).ok()?;
                if code != 0 {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                v.get(0)?["status"]["backends"]
                    .as_array()?
                    .iter()
                    .find(|b| b["name"] == backend)
                    .map(|b| b["state"] == "down")
            }
        }
    }
}

/// One measured run: (the run's figures with the proxy's CPU and memory).
/// A namespace's kernel counters (`/proc/net/snmp` inside it): (IP packets received + sent,
/// TCP passive opens).
fn snmp(ns: &str) -> Result<(u64, u64)> {
    let out = phalanx::netns::command_in(ns, "cat")
        .arg("/proc/net/snmp")
        .output()
        .context("reading /proc/net/snmp")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Pairs of lines: "Ip: Name Name ..." then "Ip: value value ...".
    let field = |proto: &str, name: &str| -> Option<u64> {
        let mut lines = text.lines().filter(|l| l.starts_with(proto));
        let names = lines.next()?;
        let values = lines.next()?;
        let i = names.split_whitespace().position(|n| n == name)?;
        values.split_whitespace().nth(i)?.parse().ok()
    };
    let packets = field("Ip:", "InReceives").unwrap_or(0) + field("Ip:", "OutRequests").unwrap_or(0);
    Ok((packets, field("Tcp:", "PassiveOpens").unwrap_or(0)))
}

/// (packets at the proxies' host n1, connections the backends accepted) so far.
fn counters(lab: &Lab) -> Result<(u64, u64)> {
    let (packets, _) = snmp(&lab.node_ns(1))?;
    let mut accepted = 0;
    for i in BACKENDS {
        accepted += snmp(&lab.node_ns(i))?.1;
    }
    Ok((packets, accepted))
}

/// One measured run: the run's figures with the proxy's CPU and memory, and the packets and
/// backend connections per request.
async fn measured<F>(lab: &Lab, pid: u32, go: F) -> Result<Run>
where
    F: std::future::Future<Output = Result<Run>>,
{
    let (packets0, accepted0) = counters(lab)?;
    let before = proc_sample(pid)?;
    let mut r = go.await?;
    let after = proc_sample(pid)?;
    let (packets1, accepted1) = counters(lab)?;
    r.cpu_pct = cpu_pct(&before, &after);
    let secs = after.at.duration_since(before.at).as_secs_f64();
    if r.rps > 0.0 && secs > 0.0 {
        r.cpu_us_per_req = r.cpu_pct / 100.0 * 1e6 / r.rps;
        let requests = r.rps * secs;
        r.packets_per_req = packets1.saturating_sub(packets0) as f64 / requests;
        r.backend_conns_per_1k_req = accepted1.saturating_sub(accepted0) as f64 * 1000.0 / requests;
    }
    (r.rss_kb, r.hwm_kb) = proc_mem(pid);
    Ok(r)
}

fn open_run(l: LoadResult) -> Run {
    Run {
        rps: l.achieved_rps,
        target_rps: Some(l.rate),
        p50_us: l.p50_us,
        p99_us: l.p99_us,
        p999_us: l.p999_us,
        errors: l.errors,
        ..Run::default()
    }
}

/// One closed-loop run (wrk) through a proxy.
async fn closed(cx: &Ctx<'_>, p: &Target<'_>) -> Result<Run> {
    measured(cx.lab, p.proxy.pid(), async {
        let w = wrk(cx.lab, cx.a, cx.script, p.addr, cx.a.phase).await?;
        Ok(Run {
            rps: w.requests as f64 / (w.duration_us as f64 / 1e6).max(1e-3),
            target_rps: None,
            p50_us: w.p50_us,
            p99_us: w.p99_us,
            p999_us: w.p999_us,
            errors: w.errors + w.non2xx,
            ..Run::default()
        })
    })
    .await
}

/// One open-loop run at `rate` through a proxy.
async fn open(cx: &Ctx<'_>, p: &Target<'_>, rate: f64) -> Result<Run> {
    measured(cx.lab, p.proxy.pid(), async {
        let l = loadgen(
            cx.lab,
            cx.lab_exe,
            &cx.a.client_cpus,
            p.addr,
            rate,
            cx.a.phase,
            cx.a.connections,
        )
        .await?;
        Ok(open_run(l))
    })
    .await
}

/// The median of each figure over the rounds (each figure on its own).
fn median(runs: &[Run]) -> Run {
    fn mid<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    }
    if runs.is_empty() {
        return Run::default();
    }
    let f = |g: fn(&Run) -> f64| mid(runs.iter().map(g).collect());
    let u = |g: fn(&Run) -> u64| mid(runs.iter().map(g).collect());
    Run {
        rps: f(|r| r.rps),
        target_rps: runs[0].target_rps,
        p50_us: u(|r| r.p50_us),
        p99_us: u(|r| r.p99_us),
        p999_us: u(|r| r.p999_us),
        errors: u(|r| r.errors),
        cpu_pct: f(|r| r.cpu_pct),
        cpu_us_per_req: f(|r| r.cpu_us_per_req),
        packets_per_req: f(|r| r.packets_per_req),
        backend_conns_per_1k_req: f(|r| r.backend_conns_per_1k_req),
        rss_kb: u(|r| r.rss_kb),
        hwm_kb: u(|r| r.hwm_kb),
    }
}

/// A proxy under test and where it listens.
struct Target<'a> {
    name: &'static str,
    proxy: Proxy<'a>,
    addr: SocketAddr,
}

/// Which runs a phase does.
#[derive(Clone, Copy)]
enum Phase {
    Closed,
    Open(f64),
}

/// `rounds` runs of `phase` through each proxy, alternating which goes first (HAProxy, phalanx;
/// then phalanx, HAProxy; ...), so that a noisy neighbour's burst hits both alike: the runs of
/// HAProxy and of phalanx, in that order.
async fn rounds(cx: &Ctx<'_>, both: [&Target<'_>; 2], phase: Phase, what: &str) -> Result<[Vec<Run>; 2]> {
    let mut out = [Vec::new(), Vec::new()];
    for round in 0..cx.a.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let t = both[k];
            cx.pb
                .set_message(format!("{what}: {} (round {} of {})", t.name, round + 1, cx.a.rounds));
            let r = match phase {
                Phase::Closed => closed(cx, t).await,
                Phase::Open(rate) => open(cx, t, rate).await,
            }
            .with_context(|| format!("{what} through {}", t.name))?;
            out[k].push(r);
            cx.pb.inc(1);
        }
    }
    Ok(out)
}

/// The backends: one process per host, pinned to the client's cores.
struct Backends {
    children: Vec<Option<Child>>,
    lab_exe: PathBuf,
    cpus: String,
}

impl Backends {
    fn addr(lab: &Lab, i: usize) -> SocketAddr {
        SocketAddr::from((lab.node_ip(BACKENDS[i], 0), BACKEND_PORT))
    }

    fn start(&mut self, lab: &Lab, i: usize) -> Result<()> {
        let child = pinned(&lab.node_ns(BACKENDS[i]), &self.cpus, &self.lab_exe)
            .args(["backend", "--listen", &Backends::addr(lab, i).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a backend")?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// kill -9 backend i.
    fn crash(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.crash(i);
        }
    }
}

/// Steady open-loop GETs; kill -9 backend b1 a third of the way in: (failed requests, ms from
/// the kill until the proxy reports b1 down).
async fn crash_phase(
    cx: &Ctx<'_>,
    backends: &mut Backends,
    proxy: &Proxy<'_>,
    target: SocketAddr,
    rate: f64,
) -> Result<(u64, Option<u64>)> {
    let Ctx { lab, a, lab_exe, .. } = *cx;
    let total = a.phase * 2;
    let load = tokio::spawn({
        let cmd = {
            let mut c = pinned(&lab.client_ns(), &a.client_cpus, lab_exe);
            c.args([
                "loadgen",
                "--target",
                &target.to_string(),
                "--rate",
                &format!("{rate:.0}"),
                "--duration",
                &format!("{}ms", total.as_millis()),
                "--connections",
                &a.connections.to_string(),
            ]);
            c
        };
        async move { tokio::process::Command::from(cmd).stdin(Stdio::null()).output().await }
    });
    // The fault's moment in the schedule (not a synchronisation).
    tokio::time::sleep(total / 3).await;
    let at = Instant::now();
    backends.crash(0);
    let deadline = at + total;
    let mut out_ms = None;
    while Instant::now() < deadline {
        if tokio::task::block_in_place(|| proxy.is_down("b1")) == Some(true) {
            out_ms = Some(at.elapsed().as_millis() as u64);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = load.await.context("the load task")?.context("running loadgen")?;
    if !out.status.success() {
        bail!("loadgen: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let l: LoadResult = serde_json::from_slice(&out.stdout).context("loadgen's JSON")?;
    if !l.error_kinds.is_empty() && !a.json {
        eprintln!("backend crash through {target}: errors by kind {:?}", l.error_kinds);
    }
    backends.start(lab, 0)?;
    Ok((l.errors, out_ms))
}

fn haproxy_config(lab: &Lab, a: &Args, socket: &Path) -> String {
    let http = a.mode == Mode::Http;
    let mut s = format!(
        "global\n  nbthread {}\n  maxconn 8000\n  stats socket {} mode 600 level admin\n\n\
         defaults\n  mode {}\n  timeout connect {CONNECT_TIMEOUT_MS}ms\n  timeout client 30s\n  timeout server 30s\n  \
         timeout check {CHECK_TIMEOUT_MS}ms\n  retries 2\n",
        a.threads,
        socket.display(),
        a.mode.as_str(),
    );
    if http {
        // phalanx's HTTP mode: 2 retries, the last one to another backend (HAProxy's default
        // redispatch), idempotent requests also on an empty answer or a reset.
        s += "  option redispatch\n  option http-keep-alive\n  retry-on conn-failure empty-response response-timeout\n";
    } else {
        // phalanx's TCP mode redispatches every connect retry.
        s += "  option redispatch 1\n";
    }
    s += &format!(
        "\nlisten lb\n  bind {}:{LB_PORT}\n  balance roundrobin\n",
        lab.node_ip(1, 0)
    );
    for i in 0..BACKENDS.len() {
        s += &format!(
            "  server b{} {} check inter {CHECK_INTER_MS}ms fall {CHECK_FALL} rise {CHECK_RISE} \
             observe layer4 error-limit {ERROR_LIMIT} on-error mark-down\n",
            i + 1,
            Backends::addr(lab, i)
        );
    }
    s
}

fn phalanx_config(lab: &Lab, a: &Args) -> String {
    let servers: Vec<String> = (0..BACKENDS.len())
        .map(|i| format!("{{ name = \"b{}\", address = \"{}\" }}", i + 1, Backends::addr(lab, i)))
        .collect();
    format!(
        r#"
[[resource]]
id = "lb-ip"
agent = "vip"
params = {{ address = "{VIP}/24" }}
monitor = {{ interval = "1s", timeout = "5s" }}

[[balancer]]
id = "lb"
listen = ["{VIP}:{LB_PORT}"]
mode = "{}"
algorithm = "roundrobin"
servers = [{}]
check = {{ kind = "tcp", interval = "{CHECK_INTER_MS}ms", rise = {CHECK_RISE}, fall = {CHECK_FALL}, timeout = "{CHECK_TIMEOUT_MS}ms", error_limit = {ERROR_LIMIT} }}
connect_timeout = "{CONNECT_TIMEOUT_MS}ms"
{}
[[group]]
id = "lbg"
members = ["lb-ip", "lb"]

[[constraint]]
location = "lbg"
node = "n1"
score = 100
"#,
        a.mode.as_str(),
        servers.join(", "),
        if a.mode == Mode::Http {
            "server_timeout = \"30s\"\nretries = 2\nretry_on = \"idempotent\"\n"
        } else {
            ""
        }
    )
}

/// `node_lost` events the cluster recorded so far.
fn node_lost(c: &LocalCluster) -> Result<u64> {
    let (code, out, err) = c.cli(&["events", "--kind", "node_lost", "--json", "--limit", "1000"])?;
    if code != 0 {
        bail!("phalanx events: {err}");
    }
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

pub async fn run(a: Args) -> Result<Report> {
    Lab::available()?;
    for (p, what) in [(HAPROXY, "haproxy"), (WRK, "wrk")] {
        if !Path::new(p).is_file() {
            bail!("{p} is not installed (apt-get install {what})");
        }
    }
    let lab_exe = a.lab_exe.clone();
    let lab = Lab::create(6, 1)?;
    let dir = std::env::temp_dir().join(format!("phalanx-lb-bench-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("wrk.lua");
    std::fs::write(&script, WRK_LUA)?;
    let pb = crate::progress(a.json, (a.rounds * 6 + 2) as u64, "");
    pb.enable_steady_tick(Duration::from_millis(200));
    let r = run_in(&lab, &a, &lab_exe, &dir, &script, &pb).await;
    pb.finish_and_clear();
    if std::env::var_os("PHALANX_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

/// What every phase of one run shares.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    lab: &'a Lab,
    a: &'a Args,
    lab_exe: &'a Path,
    script: &'a Path,
    pb: &'a ProgressBar,
}

/// A child process killed (and reaped) when dropped (HAProxy).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run_in(lab: &Lab, a: &Args, lab_exe: &Path, dir: &Path, script: &Path, pb: &ProgressBar) -> Result<Report> {
    let cx = Ctx {
        lab,
        a,
        lab_exe,
        script,
        pb,
    };
    let mut backends = Backends {
        children: BACKENDS.iter().map(|_| None).collect(),
        lab_exe: lab_exe.to_path_buf(),
        cpus: a.client_cpus.clone(),
    };
    for i in 0..BACKENDS.len() {
        backends.start(lab, i)?;
    }
    for i in 0..BACKENDS.len() {
        wait_http(lab, Backends::addr(lab, i), lab_exe, &a.client_cpus).await?;
    }

    // HAProxy on n1's own address, at the niceness of phalanx's balancer threads: on a shared
    // machine both proxies then yield alike to other work (on a dedicated one it changes nothing).
    pb.set_message("starting haproxy");
    let socket = dir.join("haproxy.sock");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(lab, a, &socket))?;
    let log = std::fs::File::create(dir.join("haproxy.log"))?;
    let haproxy = Killed(
        pinned(&lab.node_ns(1), &a.proxy_cpus, "nice")
            .args(["-n", &phalanx_node::priority::LB_NICE.to_string(), HAPROXY])
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy")?,
    );
    let ha_addr = SocketAddr::from((lab.node_ip(1, 0), LB_PORT));
    wait_http(lab, ha_addr, lab_exe, &a.client_cpus)
        .await
        .with_context(|| {
            let log = std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default();
            format!("haproxy never served (its log: {})", log.trim())
        })?;

    // phalanx: a 3-node cluster on n1..n3, the balancer on n1.
    pb.set_message("starting the phalanx cluster");
    let mut c = LocalCluster::create_with(
        Spec {
            nodes: 3,
            heartbeat: Duration::from_millis(100),
            links: 1,
            exe: a.exe.clone(),
            keep: std::env::var_os("PHALANX_KEEP").is_some(),
            extra_config: phalanx_config(lab, a),
            cluster_extra: String::new(),
        },
        |i, l| Ok(format!("{}:7400", lab.node_ip(i, l))),
        |i| Ok(format!("{}:7480", lab.node_ip(i, 0))),
        format!("{}:7500", Lab::client_ip()),
        None,
    )?;
    c.place_in_namespaces((1..=3).map(|i| lab.node_ns(i)).collect(), lab.client_ns());
    for n in ["n1", "n2", "n3"] {
        c.set_env(n, phalanx_node::lb::THREADS_ENV, &a.threads.to_string())?;
    }
    c.start_all()?;
    c.wait_for(T, "the balancer running on n1", |st| {
        let s = st.get("n1")?;
        let r = s.resources.iter().find(|r| r.id == "lb")?;
        (s.plan_pending == 0 && r.running.contains_key("n1")).then_some(())
    })
    .await?;
    let pid = c.node("n1")?.pid().context("n1's daemon has no pid")?;
    pin(pid, &a.proxy_cpus)?;
    let ph_addr: SocketAddr = format!("{VIP}:{LB_PORT}").parse()?;
    wait_http(lab, ph_addr, lab_exe, &a.client_cpus).await?;

    let ha = Target {
        name: "haproxy",
        proxy: Proxy::Haproxy {
            pid: haproxy.0.id(),
            socket: socket.clone(),
        },
        addr: ha_addr,
    };
    let ph = Target {
        name: "phalanx",
        proxy: Proxy::Phalanx { pid, cluster: &c },
        addr: ph_addr,
    };
    let lost_before = node_lost(&c)?;
    for t in [&ha, &ph] {
        pb.set_message(format!("warm-up: {}", t.name));
        wrk(lab, a, script, t.addr, Duration::from_secs(1)).await?;
    }
    let [hmax, pmax] = rounds(&cx, [&ha, &ph], Phase::Closed, "closed-loop maximum").await?;
    let reference = median(&hmax).rps.max(1.0);
    let [h50, p50] = rounds(&cx, [&ha, &ph], Phase::Open(reference * 0.5), "open loop at 50 %").await?;
    let [h90, p90] = rounds(&cx, [&ha, &ph], Phase::Open(reference * 0.9), "open loop at 90 %").await?;
    let false_suspicions = node_lost(&c)?.saturating_sub(lost_before);

    let mut crash = Crash::default();
    for t in [&ha, &ph] {
        pb.set_message(format!("backend crash: {}", t.name));
        // Both proxies have the (restarted) backend back in rotation first.
        let deadline = Instant::now() + T;
        for u in [&ha, &ph] {
            while tokio::task::block_in_place(|| u.proxy.is_down("b1")) != Some(false) {
                if Instant::now() > deadline {
                    bail!("{} never took b1 back", u.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let r = crash_phase(&cx, &mut backends, &t.proxy, t.addr, reference * 0.5).await?;
        if t.name == "haproxy" {
            (crash.haproxy_failed, crash.haproxy_out_of_rotation_ms) = r;
        } else {
            (crash.phalanx_failed, crash.phalanx_out_of_rotation_ms) = r;
        }
        pb.inc(1);
    }
    drop(ph);
    c.stop_all();
    drop(haproxy);

    let result = |runs: [&[Run]; 3]| ProxyResult {
        mode: a.mode.as_str().into(),
        threads: a.threads,
        cpus: a.proxy_cpus.clone(),
        nice: phalanx_node::priority::LB_NICE,
        rounds: a.rounds,
        max: median(runs[0]),
        load_50: median(runs[1]),
        load_90: median(runs[2]),
    };
    let (h, p) = (result([&hmax, &h50, &h90]), result([&pmax, &p50, &p90]));
    let ratio = |x: f64, y: f64| (y > 0.0).then(|| x / y);
    Ok(Report {
        ratio_rps: ratio(p.max.rps, h.max.rps),
        ratio_p99_50: ratio(p.load_50.p99_us as f64, h.load_50.p99_us as f64),
        ratio_p99_90: ratio(p.load_90.p99_us as f64, h.load_90.p99_us as f64),
        haproxy: h,
        phalanx: p,
        backend_crash: crash,
        false_suspicions,
    })
}

pub fn render(r: &Report) -> String {
    let h = &r.haproxy;
    let mut s = format!(
        "load balancer, {} mode, {} proxy thread(s) at nice {} pinned to CPU {}; roundrobin over 3 backends; medians of {} round(s)\n",
        h.mode, h.threads, h.nice, h.cpus, h.rounds
    );
    s += "proxy   | run            |   req/s | target/s |  p50 µs |  p99 µs | p99.9 µs | errors |  CPU % | CPU µs/req | pkts/req | upstream conns/1k req | RSS kB | HWM kB\n";
    for (name, p) in [("haproxy", &r.haproxy), ("phalanx", &r.phalanx)] {
        for (run, x) in [
            ("max (wrk)", &p.max),
            ("open loop 50 %", &p.load_50),
            ("open loop 90 %", &p.load_90),
        ] {
            s += &format!(
                "{name:<7} | {run:<14} | {:>7.0} | {:>8} | {:>7} | {:>7} | {:>8} | {:>6} | {:>6.1} | {:>10.1} | {:>8.1} | {:>21.2} | {:>6} | {:>6}\n",
                x.rps,
                x.target_rps.map(|t| format!("{t:.0}")).unwrap_or_else(|| "-".into()),
                x.p50_us,
                x.p99_us,
                x.p999_us,
                x.errors,
                x.cpu_pct,
                x.cpu_us_per_req,
                x.packets_per_req,
                x.backend_conns_per_1k_req,
                x.rss_kb,
                x.hwm_kb
            );
        }
    }
    let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    let ms = |x: Option<u64>| x.map(|v| format!("{v} ms")).unwrap_or_else(|| "never seen".into());
    let c = &r.backend_crash;
    s += &format!(
        "phalanx ÷ haproxy: req/s {} (goal ≥ 1.00), p99 at 50 % {} and at 90 % {} (goal ≤ 1.00)\n\
         backend crash (kill -9 under steady GETs): failed requests haproxy {} / phalanx {}; out of rotation after haproxy {} / phalanx {}\n\
         false suspicions (node_lost during the load runs): {}\n",
        f(r.ratio_rps),
        f(r.ratio_p99_50),
        f(r.ratio_p99_90),
        c.haproxy_failed,
        c.phalanx_failed,
        ms(c.haproxy_out_of_rotation_ms),
        ms(c.phalanx_out_of_rotation_ms),
        r.false_suspicions
    );
    s
}
