//! `phalanx playground up|status|down`: a local cluster of real `phalanx daemon` processes on
//! loopback that keeps running after the command returns, for trying every CLI command (and for
//! tests and benchmarks). `up` builds it with the demo's harness ([`crate::harness`]): a sample
//! config (two demo HTTP services in a group, fencing through the built-in power switch), a new
//! cluster key, the daemons, the power switch, each in a process group of its own with its log
//! in the folder. It waits until the cluster has a leader and its resources run, then writes
//! `playground.json` (the pids) and prints how to point the CLI at it. A folder that holds a
//! config and no playground (`phalanx restore --new-cluster --dir D` writes one) is started
//! with that config instead. `down` stops, by pid, every process `up` started and the services
//! the daemons started, then removes what `up` wrote; it is safe to run twice.

use crate::client::Client;
use crate::harness::{LocalCluster, Released, Spec};
use crate::{demo, render};
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use phalanx_node::{ClusterKey, StatusReport};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The state file `up` writes into the folder.
pub const STATE_FILE: &str = "playground.json";
/// The config file of a playground (the harness's name for it).
pub const CONFIG_FILE: &str = "cluster.toml";

/// How long `up` waits for a leader and the resources.
const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` lets the daemons exit on SIGTERM before it kills what is left.
const DOWN_GRACE: Duration = Duration::from_secs(10);

/// The default folder: `$TMPDIR/phalanx-playground-$USER` (one per user; `--dir` or
/// `PHALANX_PLAYGROUND` choose another).
pub fn default_dir() -> PathBuf {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty() && !u.contains('/'))
        .unwrap_or_else(|| nix::unistd::getuid().to_string());
    std::env::temp_dir().join(format!("phalanx-playground-{user}"))
}

/// One node as `up --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: String,
    pub api: String,
    pub pid: u32,
}

/// What `up --json` prints: exactly these fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpReport {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub nodes: Vec<NodeEntry>,
    /// The file the CLI's credentials live in: the cluster key (the API token derives from it).
    pub token_file: PathBuf,
}

/// `playground.json`: what `status` and `down` need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub token_file: PathBuf,
    pub nodes: Vec<NodeEntry>,
    pub power_switch: Option<u32>,
    pub witness: Option<u32>,
    /// `up` wrote the config and key (false: it found them, from `restore`): `down` removes
    /// them only then.
    pub config_owned: bool,
    /// Stopped by `down --keep` (the folder is kept for its logs).
    #[serde(default)]
    pub stopped: bool,
    /// `phalanx demo-service` answers here for each service resource, on 127.0.10.K (node nK).
    #[serde(default)]
    pub services: Vec<(String, u16)>,
}

impl State {
    fn read(dir: &Path) -> Result<Option<State>> {
        let path = dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(
                serde_json::from_str(&t).with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn write(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Every pid `up` started: (what, pid).
    fn processes(&self) -> Vec<(String, u32)> {
        let mut all: Vec<(String, u32)> = self.nodes.iter().map(|n| (n.name.clone(), n.pid)).collect();
        all.extend(self.power_switch.map(|p| ("power switch".to_string(), p)));
        all.extend(self.witness.map(|p| ("witness".to_string(), p)));
        all
    }

    fn report(&self) -> UpReport {
        UpReport {
            dir: self.dir.clone(),
            config: self.config.clone(),
            nodes: self.nodes.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

/// The folder as an absolute path (created if missing).
fn absolute(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// `pid` is a live process (not a zombie) whose command line mentions `dir`: one this
/// playground started (a pid reused by another program is left alone).
pub fn ours(pid: u32, dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    cmdline(pid).is_some_and(|c| c.iter().any(|a| a.contains(&*dir.to_string_lossy())))
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// phalanx processes (daemon, witness, power switch) whose command line mentions `dir`, other
/// than this one: what `down` stops even if `playground.json` does not name it.
pub fn strays(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let dir = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != me)
        .filter(|p| {
            cmdline(*p).is_some_and(|c| {
                let phalanx = c.first().is_some_and(|a| a.contains("phalanx"));
                let role = c
                    .get(1)
                    .is_some_and(|a| ["daemon", "witness", "power-switch"].contains(&a.as_str()));
                phalanx && role && c.iter().any(|a| a.contains(&dir))
            })
        })
        .collect()
}

/// `phalanx playground ...`
#[derive(Debug, clap::Subcommand)]
pub enum PlaygroundCmd {
    /// Start a local cluster (real daemons on loopback, a sample config) that keeps running, and
    /// print how to point the CLI at it.
    Up {
        /// How many nodes (2: with a witness).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Its folder (config, key, logs, data); default $TMPDIR/phalanx-playground-$USER.
        #[arg(long, env = "PHALANX_PLAYGROUND")]
        dir: Option<PathBuf>,
        /// Heartbeat interval.
        #[arg(long, default_value = "100ms", value_parser = duration)]
        heartbeat: Duration,
    },
    /// Is each process alive and each API answering; the cluster's status.
    Status {
        #[arg(long, env = "PHALANX_PLAYGROUND")]
        dir: Option<PathBuf>,
    },
    /// Stop everything `up` started (by pid) and remove its folder; safe to run twice.
    Down {
        #[arg(long, env = "PHALANX_PLAYGROUND")]
        dir: Option<PathBuf>,
        /// Keep the folder (logs, data) instead of removing it.
        #[arg(long)]
        keep: bool,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    phalanx_core::config::parse_duration(s).map_err(|e| e.to_string())
}

/// Run a `playground` command; its exit code.
pub async fn run(cmd: &PlaygroundCmd, json: bool, exe: PathBuf) -> Result<i32> {
    let print = |v: serde_json::Value, human: &str| -> Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{}", human.trim_end());
        }
        Ok(())
    };
    match cmd {
        PlaygroundCmd::Up { nodes, dir, heartbeat } => {
            let args = UpArgs {
                nodes: *nodes,
                dir: dir.clone().unwrap_or_else(default_dir),
                heartbeat: *heartbeat,
                json,
            };
            let (report, human) = up(args, exe).await?;
            print(serde_json::to_value(report)?, &human)?;
            Ok(0)
        }
        PlaygroundCmd::Status { dir } => {
            let (view, human, code) = status(&dir.clone().unwrap_or_else(default_dir)).await?;
            print(serde_json::to_value(view)?, &human)?;
            Ok(code)
        }
        PlaygroundCmd::Down { dir, keep } => {
            let (report, human) = down(&dir.clone().unwrap_or_else(default_dir), *keep, json).await?;
            print(serde_json::to_value(report)?, &human)?;
            Ok(0)
        }
    }
}

pub struct UpArgs {
    pub nodes: usize,
    pub dir: PathBuf,
    pub heartbeat: Duration,
    pub json: bool,
}

/// The sample config's resources: two demo HTTP services (`db`, then `web`) in group `shop`.
fn sample_resources(exe: &Path, db_port: u16, web_port: u16) -> String {
    let mut s = demo::service_resource(exe, "db", db_port);
    s += &demo::service_resource(exe, "web", web_port);
    s += "\n[[group]]\nid = \"shop\"\nmembers = [\"db\", \"web\"]\n";
    s
}

/// `playground up`.
pub async fn up(args: UpArgs, exe: PathBuf) -> Result<(UpReport, String)> {
    let dir = absolute(&args.dir)?;
    if let Some(st) = State::read(&dir)? {
        let live: Vec<String> = st
            .processes()
            .into_iter()
            .filter(|(_, p)| ours(*p, &dir))
            .map(|(w, p)| format!("{w} pid {p}"))
            .collect();
        if !live.is_empty() {
            bail!(
                "a playground is already running in {} ({}): use it (export PHALANX_CONFIG={}), or stop it first with `phalanx playground down --dir {}`",
                dir.display(),
                live.join(", "),
                st.config.display(),
                dir.display()
            );
        }
        bail!(
            "{} holds a stopped playground (kept by `down --keep`, or an `up` that failed): `phalanx playground down --dir {}` removes it",
            dir.display(),
            dir.display()
        );
    }
    let config = dir.join(CONFIG_FILE);
    let adopted = config.exists();
    let mut services = Vec::new();
    let mut cluster = if adopted {
        // A config from `restore --new-cluster --dir` (or written by hand): its nodes.
        LocalCluster::adopt(&dir, exe.clone(), true)?
    } else {
        if std::fs::read_dir(&dir)?.next().is_some() {
            bail!(
                "{} is not empty and holds no {CONFIG_FILE}: choose an empty or new folder with --dir",
                dir.display()
            );
        }
        if args.nodes < 1 {
            bail!("--nodes must be at least 1");
        }
        let db_port = demo::service_port(args.nodes)?;
        let mut web_port = demo::service_port(args.nodes)?;
        while web_port == db_port {
            web_port = demo::service_port(args.nodes)?;
        }
        services = vec![("db".to_string(), db_port), ("web".to_string(), web_port)];
        // keep: a failed `up` leaves the logs (and `down` removes them).
        LocalCluster::create_at(
            Spec {
                nodes: args.nodes,
                heartbeat: args.heartbeat,
                links: 2,
                exe: exe.clone(),
                keep: true,
                extra_config: sample_resources(&exe, db_port, web_port) + &demo::sessions_section(args.nodes)?.0,
                cluster_extra: String::new(),
            },
            &dir,
        )?
    };
    let token_file = {
        let cfg = crate::client::load_config(&config)?;
        crate::client::key_path(&config, &cfg)
    };
    let pb = demo::spinner(args.json);
    pb.set_message(format!(
        "starting {} nodes on loopback in {}",
        cluster.nodes.len(),
        dir.display()
    ));
    cluster.detach();
    let started = cluster.start_all();
    // The pids first: whatever happens next, `down` can find what was started.
    let mut state = State {
        format: 1,
        dir: dir.clone(),
        config: config.clone(),
        token_file,
        nodes: Vec::new(),
        power_switch: None,
        witness: None,
        config_owned: !adopted,
        stopped: false,
        services,
    };
    fill(&mut state, &cluster.processes());
    state.write()?;
    started?;
    pb.set_message("waiting for quorum, a leader and the resources to run");
    let leader = match wait_settled(&cluster).await {
        Ok(l) => l,
        Err(e) => {
            pb.finish_and_clear();
            // Dropping the harness kills what it started; the folder stays for the logs.
            return Err(e.context(format!(
                "the playground did not come up (logs in {}; `phalanx playground down --dir {}` removes it)",
                dir.display(),
                dir.display()
            )));
        }
    };
    let st = cluster.status(&leader).await?;
    pb.finish_and_clear();
    let released = cluster.release();
    fill(&mut state, &released);
    state.write()?;
    let human = up_text(&state, &st);
    Ok((state.report(), human))
}

fn fill(state: &mut State, p: &Released) {
    state.nodes = p
        .nodes
        .iter()
        .map(|(name, api, pid)| NodeEntry {
            name: name.clone(),
            api: api.clone(),
            pid: *pid,
        })
        .collect();
    state.power_switch = p.power_switch;
    state.witness = p.witness;
}

/// One agreed leader, every node online, every node on a committed config, no plan pending.
async fn wait_settled(cluster: &LocalCluster) -> Result<String> {
    cluster.wait_stable(UP_TIMEOUT).await?;
    cluster
        .wait_for(UP_TIMEOUT, "the resources to run (no plan pending)", |st| {
            let leader = cluster.agreed_leader(st)?;
            let settled = st.values().all(|s| {
                s.plan_pending == 0 && s.running_config_version > 0 && s.resources.iter().all(|r| !r.running.is_empty())
            });
            settled.then_some(leader)
        })
        .await
}

fn up_text(state: &State, st: &StatusReport) -> String {
    let mut out = format!(
        "Playground up in {}: {} node{} on loopback, leader {}.\n",
        state.dir.display(),
        state.nodes.len(),
        if state.nodes.len() == 1 { "" } else { "s" },
        st.leader.as_deref().unwrap_or("?")
    );
    for n in &state.nodes {
        out += &format!(
            "  {:<6} api {:<21} pid {:<8} log {}\n",
            n.name,
            n.api,
            n.pid,
            state.dir.join(format!("{}.log", n.name)).display()
        );
    }
    if let Some(p) = state.power_switch {
        out += &format!(
            "  power switch (the fence device)  pid {p}  log {}\n",
            state.dir.join("power-switch.log").display()
        );
    }
    if let Some(p) = state.witness {
        out += &format!("  witness  pid {p}\n");
    }
    if let Some(s) = crate::client::load_config(&state.config).ok().and_then(|c| c.sessions) {
        let addrs: Vec<String> = s.listen.values().map(|a| a.to_string()).collect();
        out += &format!(
            "  session store (memcached protocol) on every node: {} (phalanx sessions status)\n",
            addrs.join(", ")
        );
    }
    for r in &st.resources {
        let on: Vec<&str> = r.running.keys().map(String::as_str).collect();
        let port = state.services.iter().find(|(id, _)| *id == r.id).map(|(_, p)| *p);
        out += &format!(
            "  {} runs on {}{}\n",
            r.id,
            if on.is_empty() {
                "no node".to_string()
            } else {
                on.join(", ")
            },
            match (port, on.first()) {
                (Some(p), Some(n)) => format!(
                    ": curl http://{}/ (a demo HTTP service, in group shop)",
                    demo::service_addr(n, p)
                ),
                _ => String::new(),
            }
        );
    }
    out += &format!(
        "\nPoint the CLI at it:\n  export PHALANX_CONFIG={}\n  phalanx status\n  phalanx resource move shop --to n2\n\nStop it: phalanx playground down --dir {}\n",
        state.config.display(),
        state.dir.display()
    );
    out
}

/// What `status` reports of one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub name: String,
    pub pid: u32,
    pub alive: bool,
    /// Its API answered (nodes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answering: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub running: bool,
    pub processes: Vec<ProcessView>,
    /// The cluster's status, from the first node that answers.
    pub cluster: Option<StatusReport>,
}

/// A node's daemon pid now: the power switch writes its pid file again when it boots the node
/// (a fence's reboot); `up` recorded the first.
fn current_pid(dir: &Path, n: &NodeEntry) -> u32 {
    crate::harness::daemon_pid(dir, &n.name).unwrap_or(n.pid)
}

/// `playground status`: each pid alive, each API answering, the cluster's status. Exit code 0
/// when every process is alive and every API answers, else 1.
pub async fn status(dir: &Path) -> Result<(StatusView, String, i32)> {
    let dir = dir.canonicalize().map_err(|_| {
        anyhow!(
            "no playground in {} (`phalanx playground up` starts one)",
            dir.display()
        )
    })?;
    let st = State::read(&dir)?.ok_or_else(|| {
        anyhow!(
            "no playground in {} (`phalanx playground up` starts one)",
            dir.display()
        )
    })?;
    let key = ClusterKey::load(&st.token_file)?;
    let client =
        Client::new(&key, crate::client::operator_tls(&st.token_file)?)?.with_timeout(Duration::from_millis(1500))?;
    let mut processes = Vec::new();
    let mut cluster = None;
    for n in &st.nodes {
        let pid = current_pid(&dir, n);
        let alive = ours(pid, &dir);
        let answer = if alive { client.status(&n.api).await.ok() } else { None };
        processes.push(ProcessView {
            name: n.name.clone(),
            pid,
            alive,
            api: Some(n.api.clone()),
            answering: Some(answer.is_some()),
        });
        if cluster.is_none() {
            cluster = answer;
        }
    }
    for (name, pid) in st.processes().into_iter().skip(st.nodes.len()) {
        processes.push(ProcessView {
            alive: ours(pid, &dir),
            name,
            pid,
            api: None,
            answering: None,
        });
    }
    let healthy = processes.iter().all(|p| p.alive && p.answering != Some(false));
    let running = processes.iter().any(|p| p.alive);
    let mut human = format!(
        "Playground in {} ({}):\n",
        dir.display(),
        match (running, healthy) {
            (false, _) => "stopped",
            (true, true) => "running",
            (true, false) => "degraded",
        }
    );
    for p in &processes {
        human += &format!(
            "  {:<13} pid {:<8} {}{}\n",
            p.name,
            p.pid,
            if p.alive { "alive" } else { "NOT RUNNING" },
            match (&p.api, p.answering) {
                (Some(api), Some(true)) => format!(", API {api} answers"),
                (Some(api), _) if p.alive => format!(", API {api} does NOT answer"),
                _ => String::new(),
            }
        );
    }
    match &cluster {
        Some(c) => human += &format!("\n{}", render::status(c)),
        None => human += "\nNo node answers.\n",
    }
    human += &format!("\nexport PHALANX_CONFIG={}\n", st.config.display());
    let view = StatusView {
        dir: dir.clone(),
        config: st.config.clone(),
        running,
        processes,
        cluster,
    };
    Ok((view, human, if healthy { 0 } else { 1 }))
}

/// One process `down` stopped.
#[derive(Debug, Clone, Serialize)]
pub struct Stopped {
    /// The node's name, "power switch", "witness", or "stray" (not in `playground.json`).
    pub name: String,
    pub pid: u32,
    /// "exited" (on SIGTERM) or "killed" (SIGKILL after the grace time).
    pub how: &'static str,
}

/// What `down` did.
#[derive(Debug, Clone, Serialize)]
pub struct DownReport {
    pub dir: PathBuf,
    /// The processes it stopped.
    pub stopped: Vec<Stopped>,
    /// The services the daemons had started that it stopped.
    pub services: Vec<String>,
    /// The folder was removed (false with --keep, or when nothing was there).
    pub removed: bool,
}

/// `playground down`: stop every process of the playground in `dir`, by pid, then remove what
/// `up` wrote (unless `keep`). Nothing there: nothing to do (safe to run twice).
pub async fn down(dir: &Path, keep: bool, json: bool) -> Result<(DownReport, String)> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok((
            DownReport {
                dir: dir.to_path_buf(),
                stopped: Vec::new(),
                services: Vec::new(),
                removed: false,
            },
            format!("No playground in {}: nothing to stop.", dir.display()),
        ));
    };
    let Some(mut st) = State::read(&dir)? else {
        let strays = strays(&dir);
        if strays.is_empty() {
            return Ok((
                DownReport {
                    dir: dir.clone(),
                    stopped: Vec::new(),
                    services: Vec::new(),
                    removed: false,
                },
                format!("No playground in {}: nothing to stop.", dir.display()),
            ));
        }
        bail!(
            "{} has no {STATE_FILE}, but phalanx processes mention it (pids {strays:?}): not started by `playground up`, so not stopped",
            dir.display()
        );
    };
    let pb = demo::spinner(json);
    let mut stopped = Vec::new();
    // The daemons first: a SIGTERM makes one leave cleanly, a second one exit at once; either
    // way it stops the services it started. Repeated until they are gone, then SIGKILL.
    let daemons: Vec<(String, u32)> = st
        .nodes
        .iter()
        .map(|n| (n.name.clone(), current_pid(&dir, n)))
        .collect();
    pb.set_message(format!("stopping {} daemons", daemons.len()));
    stopped.extend(terminate(&daemons, &dir, DOWN_GRACE).await);
    // What the daemons started and did not stop (a daemon that was killed, say).
    let mut services = Vec::new();
    for n in &st.nodes {
        let agents = dir.join(&n.name).join("agents");
        services.extend(
            phalanx_node::agents::stop_process_services(&agents, Duration::from_secs(2))
                .into_iter()
                .map(|s| format!("{s} on {}", n.name)),
        );
    }
    let others: Vec<(String, u32)> = st.processes().into_iter().skip(st.nodes.len()).collect();
    pb.set_message("stopping the power switch");
    stopped.extend(terminate(&others, &dir, Duration::from_secs(3)).await);
    // Anything of it still there that the state file does not name (a daemon restarted by
    // hand with the playground's config, say).
    let strays: Vec<(String, u32)> = strays(&dir).into_iter().map(|p| ("stray".to_string(), p)).collect();
    stopped.extend(terminate(&strays, &dir, Duration::from_secs(3)).await);
    pb.finish_and_clear();
    let removed = if keep {
        st.stopped = true;
        st.write()?;
        false
    } else {
        remove(&st)?
    };
    let mut human = String::new();
    for p in &stopped {
        human += &format!("Stopped {} (pid {}): {}.\n", p.name, p.pid, p.how);
    }
    for s in &services {
        human += &format!("Stopped the service {s}.\n");
    }
    if stopped.is_empty() {
        human += "Nothing was running.\n";
    }
    human += &if removed {
        format!("Removed {}.", dir.display())
    } else if keep {
        format!("Kept {} (logs: *.log).", dir.display())
    } else {
        format!("Removed the playground's files from {}.", dir.display())
    };
    Ok((
        DownReport {
            dir,
            stopped,
            services,
            removed,
        },
        human,
    ))
}

/// SIGTERM each of `procs` that is still ours, again every 300 ms, and SIGKILL (with every
/// descendant, as the power switch cuts a machine) whatever is left after `grace`.
async fn terminate(procs: &[(String, u32)], dir: &Path, grace: Duration) -> Vec<Stopped> {
    let live: Vec<(String, u32)> = procs.iter().filter(|(_, p)| ours(*p, dir)).cloned().collect();
    let deadline = Instant::now() + grace;
    let mut done: Vec<Stopped> = Vec::new();
    loop {
        let left: Vec<&(String, u32)> = live.iter().filter(|(_, p)| !done.iter().any(|d| d.pid == *p)).collect();
        let (gone, running): (Vec<_>, Vec<_>) = left.into_iter().partition(|(_, p)| !ours(*p, dir));
        done.extend(gone.into_iter().map(|(name, pid)| Stopped {
            name: name.clone(),
            pid: *pid,
            how: "exited",
        }));
        if running.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for (name, pid) in running {
                crate::power_switch::cut_power(*pid as i32);
                done.push(Stopped {
                    name: name.clone(),
                    pid: *pid,
                    how: "killed",
                });
            }
            break;
        }
        for (_, p) in &running {
            let _ = kill(Pid::from_raw(*p as i32), Signal::SIGTERM);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    done
}

/// Remove what `up` wrote (the config and key only if `up` wrote them), then the folder if
/// that leaves it empty. True when the folder is gone.
fn remove(st: &State) -> Result<bool> {
    let dir = &st.dir;
    let mut files: Vec<PathBuf> = vec![
        dir.join(STATE_FILE),
        dir.join("power-switch.log"),
        dir.join("power-switch.events"),
        dir.join("witness.log"),
    ];
    let mut dirs = vec![dir.join("witness")];
    for n in &st.nodes {
        files.push(dir.join(format!("{}.log", n.name)));
        files.push(dir.join(format!("{}.daemon.pid", n.name)));
        dirs.push(dir.join(&n.name));
    }
    if st.config_owned {
        // The config, the key, and the cluster CA with the certificates it issued.
        let pki = phalanx_node::pki::Paths::beside(&st.token_file);
        files.extend([st.config.clone(), st.token_file.clone(), pki.ca_cert(), pki.ca_key()]);
        dirs.push(pki.cert_dir());
    }
    for d in dirs {
        match std::fs::remove_dir_all(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", d.display()))
            }
            _ => {}
        }
    }
    for f in files {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", f.display()))
            }
            _ => {}
        }
    }
    Ok(std::fs::remove_dir(dir).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_ours_unless_its_command_line_names_the_folder() {
        let me = std::process::id();
        assert!(!ours(me, Path::new("/nowhere/at/all")));
        let arg0 = cmdline(me).unwrap().remove(0);
        assert!(ours(me, Path::new(&arg0)));
        assert!(!ours(u32::MAX, Path::new("/")));
    }

    #[test]
    fn the_state_file_round_trips_and_up_json_has_exactly_the_documented_fields() {
        let st = State {
            format: 1,
            dir: "/d".into(),
            config: "/d/cluster.toml".into(),
            token_file: "/d/phalanx.key".into(),
            nodes: vec![NodeEntry {
                name: "n1".into(),
                api: "127.0.0.1:1".into(),
                pid: 7,
            }],
            power_switch: Some(8),
            witness: None,
            config_owned: true,
            stopped: false,
            services: vec![("web".into(), 80)],
        };
        let back: State = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(
            back.processes(),
            vec![("n1".to_string(), 7), ("power switch".to_string(), 8)]
        );
        let v = serde_json::to_value(st.report()).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["config", "dir", "nodes", "token_file"]);
        let node: Vec<&String> = v["nodes"][0].as_object().unwrap().keys().collect();
        assert_eq!(node, ["api", "name", "pid"]);
    }
}
