//! `phalanx-lab drill-compare` (`tests/lab/drill-compare`): the same two drills, `kill-node`
//! and `kill-service`, against phalanx and keepalived in the network-namespace lab, with the
//! same client (a new TCP connection to the service's virtual IP every 20 ms) and the same
//! faults: kill-node crashes the machine holding the VIP (every process frozen and killed, its
//! links unplugged, as `Lab::crash` does), kill-service SIGKILLs the HTTP service on it, each
//! after a random wait of up to one check interval (so that it lands anywhere in the monitor's
//! cycle). RTO is the client's outage (first failed connection to the first success after it).
//! phalanx and keepalived get a fresh lab per run. phalanx: 3 nodes, 2 links, 100 ms × 3 heartbeats, group `web` (vip +
//! process, monitored every second); keepalived (Debian's): 2 nodes, VRRPv3 unicast, advert 1 s
//! (its default) and 0.1 s, the service running on both and a `vrrp_script` checking it every
//! second (`fall 1`): the VIP moves away from a node whose check fails. Pacemaker 2.1 +
//! Corosync 3.1 (Debian's): 3 nodes through `tests/lab/pacemaker/pcmk-lab.sh` (its own
//! namespaces, a mount namespace per node, fencing by `fence_netns`), group `web` = IPaddr2 +
//! an HTTP server (`ocf:heartbeat:anything`) monitored every second, at Corosync's default token
//! (3 s + 650 ms per node beyond two) and at a 200 ms token (with knet's pings slowed, which is
//! what keeps it stable here); its cluster is reused across runs (a killed node is started
//! again), and the same client measures it from that lab's client namespace. A benchmark: it
//! prints figures and asserts nothing.

use crate::bench::{dist, Dist};
use crate::lab::{kill_processes, outage, wait_answer, wait_any_answer, web_node, Lab, Watch, PORT, VIP};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
/// How often both systems check the service (phalanx's monitor, keepalived's vrrp_script).
const CHECK_EVERY: &str = "1";

pub struct Args {
    pub runs: usize,
    pub exe: PathBuf,
    pub json: bool,
    /// Which systems (`phalanx`, `keepalived`, `pacemaker`: each with its two settings) and
    /// which scenarios (`kill-node`, `kill-service`) to run: `phalanx-lab drill --target T
    /// SCENARIO` runs one of each, `drill-compare` all of them.
    pub targets: Vec<String>,
    pub scenarios: Vec<String>,
}

/// The targets and scenarios `phalanx-lab drill` accepts.
pub const TARGETS: [&str; 3] = ["phalanx", "keepalived", "pacemaker"];
pub const SCENARIOS: [&str; 2] = ["kill-node", "kill-service"];

/// One system's drills: RTO distributions in ms.
#[derive(Debug, Clone, Serialize, Default)]
pub struct System {
    pub kill_node: Option<Dist>,
    pub kill_service: Option<Dist>,
    /// Moments with two VIP holders seen by the lab's samplers, over every run.
    pub violations: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub runs: usize,
    pub phalanx: System,
    /// keepalived at its default advert interval (1 s) and at 0.1 s.
    pub keepalived: System,
    pub keepalived_fast: System,
    /// Pacemaker at Corosync's default token, and at 200 ms.
    pub pacemaker: System,
    pub pacemaker_tuned: System,
    /// phalanx ÷ Pacemaker (p50), at the default token and at 200 ms.
    pub ratio_kill_node_vs_pacemaker: Option<f64>,
    pub ratio_kill_node_vs_pacemaker_tuned: Option<f64>,
    pub ratio_kill_service_vs_pacemaker: Option<f64>,
    /// phalanx ÷ keepalived (p50), at keepalived's default and at 0.1 s adverts.
    pub ratio_kill_node_vs_keepalived: Option<f64>,
    pub ratio_kill_node_vs_keepalived_fast: Option<f64>,
    pub ratio_kill_service_vs_keepalived: Option<f64>,
    pub notes: Vec<String>,
}

/// The phalanx lab config: `web` = the lab's VIP + the demo HTTP service, monitored every
/// second like keepalived's check.
fn phalanx_config(exe: &Path) -> String {
    crate::lab::web_config(exe, "manual", None).replace(
        "monitor = { interval = \"500ms\", timeout = \"5s\" }",
        &format!("monitor = {{ interval = \"{CHECK_EVERY}s\", timeout = \"5s\" }}"),
    )
}

/// One phalanx run: a fresh lab; wait for web, then the fault; the client's outage.
async fn phalanx_run(exe: &Path, kill_service: bool) -> Result<(u64, usize)> {
    let lab = Lab::create(3, 2)?;
    let (mut c, first) = crate::lab::web_cluster(&lab, exe, Duration::from_millis(100), phalanx_config(exe)).await?;
    let i: usize = first.trim_start_matches('n').parse()?;
    let w = Watch::start(&lab, &[1, 2, 3], VIP.parse()?, PORT);
    // Let the client see the service up before the fault.
    tokio::time::sleep(Duration::from_millis(200) + random_phase()).await;
    let at = Instant::now();
    if kill_service {
        if kill_processes(&lab, i, &["demo-service"]) == 0 {
            bail!("no demo-service process on {first}");
        }
        // Restarted where it was, or anywhere.
        wait_any_answer(&lab, &vip(), T)?;
        // The outage ends when the client sees it back; give it a moment to.
        c.wait_for(T, "web restarted", web_node).await?;
    } else {
        lab.crash(i)?;
        c.reap(&first)?;
        let to = c
            .wait_for(T, "web moved", |st| web_node(st).filter(|n| *n != first))
            .await?;
        wait_answer(&lab, &vip(), &to, T)?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = w.finish()?;
    let o = outage(&seen.client, at).context("the client never saw the service back")?;
    Ok((o.as_millis() as u64, seen.violations.len()))
}

/// A random wait of up to one check interval before a fault, for every system alike: a kill
/// must land anywhere in the monitor's cycle (a fixed delay after start-up lands at the same
/// moment of it every run, which measures the phase, not the system).
fn random_phase() -> Duration {
    Duration::from_millis(rand::random::<u64>() % 1000)
}

fn vip() -> String {
    format!("{VIP}:{PORT}")
}

/// The check keepalived runs (python3's socket: Debian's keepalived runs it as root, and there
/// is no curl in the lab).
fn check_script(dir: &Path) -> Result<PathBuf> {
    let check = dir.join("check.sh");
    std::fs::write(
        &check,
        format!(
            "#!/bin/sh\nexec /usr/bin/python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {PORT}), 0.5)'\n"
        ),
    )?;
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(check)
}

/// One keepalived run: a fresh 2-node lab; once one node serves the VIP and the other heard it,
/// the fault on the holder; the client's outage.
async fn keepalived_run(exe: &Path, advert: Duration, kill_service: bool) -> Result<(u64, usize)> {
    let lab = Lab::create(2, 1)?;
    let dir = std::env::temp_dir().join(format!("phalanx-drill-compare-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let check = check_script(&dir)?;
    let mut children = Vec::new();
    for i in 1..=2 {
        let advert = format!("{}", advert.as_secs_f64());
        children.extend(crate::lab_bench::keepalived_node_checking(
            &lab,
            &dir,
            i,
            &advert,
            exe,
            Some((&check, CHECK_EVERY)),
        )?);
    }
    let result = async {
        let holder = wait_any_answer(&lab, &vip(), T)?;
        // The backup has settled once it heard a few adverts (and both checks passed).
        tokio::time::sleep(advert * 4 + Duration::from_secs(2)).await;
        let w = Watch::start(&lab, &[1, 2], VIP.parse()?, PORT);
        tokio::time::sleep(Duration::from_millis(200) + random_phase()).await;
        let i: usize = holder.trim_start_matches('n').parse()?;
        let other = if holder == "n1" { "n2" } else { "n1" };
        let at = Instant::now();
        if kill_service {
            if kill_processes(&lab, i, &["demo-service"]) == 0 {
                bail!("no demo-service process on {holder}");
            }
        } else {
            lab.crash(i)?;
        }
        wait_answer(&lab, &vip(), other, T)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = w.finish()?;
        let o = outage(&seen.client, at).context("the client never saw the service back")?;
        anyhow::Ok((o.as_millis() as u64, seen.violations.len()))
    }
    .await;
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The Pacemaker lab's script (beside this crate's sources, as `tests/lab/drill-compare` runs).
fn pcmk_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/lab/pacemaker/pcmk-lab.sh")
}

/// Run the Pacemaker lab's script with `env`; its stdout.
fn pcmk(env: &[(&str, &str)], args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(pcmk_script())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running pcmk-lab.sh {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "pcmk-lab.sh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Poll the VIP from namespace `ns` until it answers (bounded by `within`).
fn wait_any_answer_in(ns: &str, addr: &str, within: Duration) -> Result<()> {
    let addr = addr.to_string();
    crate::lab::in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let deadline = Instant::now() + within;
        while rt
            .block_on(phalanx::service::probe(&addr, Duration::from_millis(100)))
            .is_none()
        {
            if Instant::now() > deadline {
                bail!("nobody answered on {addr} within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// Pacemaker's runs at one token: one cluster, `runs` kill-nodes (the node started again after
/// each) and `runs` kill-services; RTOs in ms.
fn pacemaker_runs(
    token: Option<u32>,
    runs: usize,
    kinds: &[bool],
    pb: &indicatif::ProgressBar,
) -> Result<(Vec<u64>, Vec<u64>)> {
    const ADDR: &str = "10.88.0.50:8080";
    let token_s = token.map(|t| t.to_string());
    let mut env: Vec<(&str, &str)> = vec![("MON", "1s")];
    if let Some(t) = &token_s {
        env.extend([
            ("TOKEN", t.as_str()),
            ("TOKEN_COEFF", "0"),
            ("EXTRA_IFACE", "knet_ping_interval: 250;knet_ping_timeout: 2000"),
        ]);
    }
    let _ = pcmk(&env, &["down"]);
    pcmk(&env, &["up"])?;
    let result = (|| {
        let mut out = (Vec::new(), Vec::new());
        for &kill_service in kinds {
            for run in 0..runs {
                pb.set_message(format!(
                    "run {} of {runs}: {} of pacemaker (token {})",
                    run + 1,
                    if kill_service { "kill-service" } else { "kill-node" },
                    token_s.as_deref().unwrap_or("default")
                ));
                pcmk(&env, &["idle", "180"])?;
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let client = crate::lab::client_in("pkc", ADDR.into(), stop.clone());
                std::thread::sleep(Duration::from_millis(300) + random_phase());
                let at = Instant::now();
                let killed = pcmk(
                    &env,
                    &[if kill_service { "kill-service" } else { "kill-node" }, "active"],
                )?;
                std::thread::sleep(Duration::from_millis(100));
                wait_any_answer_in("pkc", ADDR, T)?;
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                let log = client.join().map_err(|_| anyhow::anyhow!("the client panicked"))??;
                let o = outage(&log, at).context("the client never saw the service back")?;
                if kill_service { &mut out.1 } else { &mut out.0 }.push(o.as_millis() as u64);
                if !kill_service {
                    pcmk(&env, &["start-node", killed.trim()])?;
                }
                pb.inc(1);
            }
        }
        anyhow::Ok(out)
    })();
    let _ = pcmk(&env, &["down"]);
    result
}

pub async fn run(args: Args) -> Result<Report> {
    Lab::available()?;
    let wants = |t: &str| args.targets.iter().any(|x| x == t);
    let kinds: Vec<bool> = [false, true]
        .into_iter()
        .filter(|k| args.scenarios.iter().any(|s| s == SCENARIOS[usize::from(*k)]))
        .collect();
    let mut notes = Vec::new();
    let have_keepalived = Path::new(crate::lab_bench::KEEPALIVED).exists();
    if wants("keepalived") && !have_keepalived {
        notes.push(format!(
            "keepalived not found at {}: apt-get install keepalived",
            crate::lab_bench::KEEPALIVED
        ));
    }
    let have_pacemaker = Path::new("/usr/sbin/corosync").exists() && Path::new("/usr/sbin/pacemakerd").exists();
    if wants("pacemaker") && !have_pacemaker {
        notes.push("pacemaker not installed: apt-get install pacemaker corosync pacemaker-cli-utils".into());
    }
    let mut systems: Vec<&str> = Vec::new();
    if wants("phalanx") {
        systems.push("phalanx");
    }
    if wants("keepalived") && have_keepalived {
        systems.extend(["keepalived", "keepalived_fast"]);
    }
    let pacemakers = if wants("pacemaker") && have_pacemaker { 2 } else { 0 };
    let pb = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new((args.runs * kinds.len() * (systems.len() + pacemakers)) as u64)
    };
    let mut out: BTreeMap<&str, (Vec<u64>, Vec<u64>, usize)> = BTreeMap::new();
    for run in 0..args.runs {
        for &kill_service in &kinds {
            let what = SCENARIOS[usize::from(kill_service)];
            for &sys in &systems {
                pb.set_message(format!("run {} of {}: {what} of {sys}", run + 1, args.runs));
                let r = match sys {
                    "phalanx" => phalanx_run(&args.exe, kill_service).await,
                    "keepalived" => keepalived_run(&args.exe, Duration::from_secs(1), kill_service).await,
                    _ => keepalived_run(&args.exe, Duration::from_millis(100), kill_service).await,
                }
                .with_context(|| format!("{what} of {sys}, run {}", run + 1))?;
                let e = out.entry(sys).or_default();
                if kill_service { &mut e.1 } else { &mut e.0 }.push(r.0);
                e.2 += r.1;
                pb.inc(1);
            }
        }
    }
    if pacemakers > 0 {
        for (name, token) in [("pacemaker", None), ("pacemaker_tuned", Some(200))] {
            let (n, s) = tokio::task::block_in_place(|| pacemaker_runs(token, args.runs, &kinds, &pb))
                .with_context(|| format!("{name}'s runs"))?;
            out.insert(name, (n, s, 0));
        }
    }
    pb.finish_and_clear();
    let system = |name: &str| {
        out.get(name).map_or_else(System::default, |(n, s, v)| System {
            kill_node: (!n.is_empty()).then(|| dist(n.clone())),
            kill_service: (!s.is_empty()).then(|| dist(s.clone())),
            violations: *v,
        })
    };
    let (phalanx, keepalived, keepalived_fast) = (system("phalanx"), system("keepalived"), system("keepalived_fast"));
    let (pacemaker, pacemaker_tuned) = (system("pacemaker"), system("pacemaker_tuned"));
    let ratio = |a: &Option<Dist>, b: &Option<Dist>| match (a, b) {
        (Some(a), Some(b)) if b.p50 > 0 => Some(a.p50 as f64 / b.p50 as f64),
        _ => None,
    };
    Ok(Report {
        ratio_kill_node_vs_pacemaker: ratio(&phalanx.kill_node, &pacemaker.kill_node),
        ratio_kill_node_vs_pacemaker_tuned: ratio(&phalanx.kill_node, &pacemaker_tuned.kill_node),
        ratio_kill_service_vs_pacemaker: ratio(&phalanx.kill_service, &pacemaker.kill_service),
        pacemaker,
        pacemaker_tuned,
        runs: args.runs,
        ratio_kill_node_vs_keepalived: ratio(&phalanx.kill_node, &keepalived.kill_node),
        ratio_kill_node_vs_keepalived_fast: ratio(&phalanx.kill_node, &keepalived_fast.kill_node),
        ratio_kill_service_vs_keepalived: ratio(&phalanx.kill_service, &keepalived.kill_service),
        phalanx,
        keepalived,
        keepalived_fast,
        notes,
    })
}

pub fn render(r: &Report) -> String {
    let d = |x: &Option<Dist>| x.as_ref().map_or("-".into(), |d| format!("{} / {} ms", d.p50, d.p99));
    let mut s = format!(
        "Drills in the lab, {} runs each (RTO p50 / p99, client-observed; same client, same faults)\n\n\
         SYSTEM                         KILL-NODE        KILL-SERVICE     TWO HOLDERS\n",
        r.runs
    );
    for (name, sys) in [
        ("phalanx (100 ms x 3)", &r.phalanx),
        ("keepalived (advert 1 s)", &r.keepalived),
        ("keepalived (advert 0.1 s)", &r.keepalived_fast),
        ("pacemaker (default token)", &r.pacemaker),
        ("pacemaker (token 200 ms)", &r.pacemaker_tuned),
    ]
    .into_iter()
    .filter(|(_, sys)| sys.kill_node.is_some() || sys.kill_service.is_some())
    {
        s += &format!(
            "{name:<30} {:<16} {:<16} {}\n",
            d(&sys.kill_node),
            d(&sys.kill_service),
            sys.violations
        );
    }
    let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.2}"));
    let compared = [
        r.ratio_kill_node_vs_keepalived,
        r.ratio_kill_service_vs_keepalived,
        r.ratio_kill_node_vs_keepalived_fast,
    ]
    .iter()
    .any(Option::is_some);
    if compared {
        s += &format!(
            "\nphalanx / keepalived (p50): kill-node {} (advert 1 s), {} (advert 0.1 s); kill-service {}\n",
            f(r.ratio_kill_node_vs_keepalived),
            f(r.ratio_kill_node_vs_keepalived_fast),
            f(r.ratio_kill_service_vs_keepalived)
        );
    }
    let compared = [
        r.ratio_kill_node_vs_pacemaker,
        r.ratio_kill_service_vs_pacemaker,
        r.ratio_kill_node_vs_pacemaker_tuned,
    ]
    .iter()
    .any(Option::is_some);
    if compared {
        s += &format!(
            "phalanx / pacemaker (p50): kill-node {} (default token), {} (token 200 ms); kill-service {}\n",
            f(r.ratio_kill_node_vs_pacemaker),
            f(r.ratio_kill_node_vs_pacemaker_tuned),
            f(r.ratio_kill_service_vs_pacemaker)
        );
    }
    for n in &r.notes {
        s += &format!("note: {n}\n");
    }
    s
}
