//! Running resource agents. One entry point, [`Runner::call`], for the three kinds:
//! - `ocf:PROVIDER:TYPE`: `$OCF_ROOT/resource.d/PROVIDER/TYPE ACTION`, with the environment
//!   Pacemaker gives (`OCF_ROOT`, `OCF_RESOURCE_INSTANCE`, `OCF_RESOURCE_TYPE`,
//!   `OCF_RESOURCE_PROVIDER`, `OCF_RA_VERSION_MAJOR/MINOR`, `OCF_RESKEY_<param>`,
//!   `OCF_RESKEY_CRM_meta_timeout`/`_interval` in ms, `OCF_RESKEY_CRM_meta_on_node`), so Debian's
//!   `resource-agents` run unchanged;
//! - `exec`: the operator's own `start`/`stop`/`monitor`/`promote`/`demote` commands (params),
//!   run by `/bin/sh -c` with the same environment and read as OCF exit codes;
//! - `process`: a supervised long-running `command` (param), with a pid file in the state
//!   folder that names the process it started (pid, start time, boot), and an optional
//!   `check_tcp = "HOST:PORT"` that start waits for and monitor checks. Both check the
//!   process it started, not whoever answers the port: the port must be held by that process
//!   (or its process group), so an orphan of an earlier run holding the port never makes a
//!   failed start look started.
//!
//! Every call runs in its own process group under its timeout; on timeout the whole group is
//! killed and the call counts as failed. stdout/stderr are drained while the call runs and kept
//! up to a bound, so a chatty or hung agent never blocks or bloats the node.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use phalanx_core::ocf::{self, AgentAction, Verdict};
use phalanx_core::resources::AgentSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How often the `process` agent looks whether its service is up (start) or gone (stop): every
/// millisecond of that lag is client-visible outage in a planned move.
const PROCESS_POLL: Duration = Duration::from_millis(5);

/// `OCF_RESKEY_crm_feature_set` (see [`Runner`]'s environment).
pub const CRM_FEATURE_SET: &str = "3.16.1";

/// Where agents and their state live.
#[derive(Debug, Clone)]
pub struct Runner {
    /// `OCF_ROOT` (Debian: /usr/lib/ocf).
    pub ocf_root: PathBuf,
    /// Where `process` agents keep pid files and logs.
    pub state_dir: PathBuf,
    /// Bytes of stdout and of stderr kept per call.
    pub output_limit: usize,
    /// This node's name (`OCF_RESKEY_CRM_meta_on_node`).
    pub node: String,
    /// A test seam: when set, every call goes to it instead of an agent (the simulation's fake
    /// machine, `testing::world`). None in the product.
    pub fake: Option<FakeAgents>,
    /// The balancers this node runs (the built-in agent `balancer`); the node sets it when it
    /// starts (None: a runner of no node, e.g. `config check`).
    pub balancers: Option<std::sync::Arc<crate::lb::Balancers>>,
    /// One lock per resource instance (see [`Runner::instance_lock`]), shared by clones.
    pub instance_locks: InstanceLocks,
    /// More environment for every agent call: the daemon's Pacemaker command-line tools
    /// (`PATH`, `HA_SBIN_DIR` and what they need: `phalanx::pcmk_shim`). Empty by default.
    pub env: Vec<(String, String)>,
    /// What the built-in agents say they are doing (see [`Notes`]).
    pub notes: Notes,
}

/// The locks of a runner's resource instances (see [`Runner::instance_lock`]); public only so
/// that a runner can be written `Runner { state_dir, ..Runner::new(node) }`.
/// What built-in agents say they are doing while an action runs, per resource instance (the
/// `pgsql` start: "rejoining (pg_rewind)"); the executor publishes a change as the node
/// attribute `phalanx_core::resources::progress_attr`, and the note ends with the call.
pub type Notes = std::sync::Arc<tokio::sync::watch::Sender<BTreeMap<String, String>>>;

pub type InstanceLocks = std::sync::Arc<std::sync::Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>>;

/// The future of a faked agent call.
pub type FakeCall = std::pin::Pin<Box<dyn std::future::Future<Output = CallResult> + Send>>;

/// What stands in for the agents of one node in tests: it answers every [`AgentCall`].
pub trait AgentSeam: Send + Sync {
    fn call(&self, c: &AgentCall<'_>) -> FakeCall;
}

/// A [`Runner`]'s fake agents (see [`Runner::fake`]).
#[derive(Clone)]
pub struct FakeAgents(pub std::sync::Arc<dyn AgentSeam>);

impl std::fmt::Debug for FakeAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeAgents")
    }
}

/// One call of an agent.
#[derive(Debug, Clone)]
pub struct AgentCall<'a> {
    pub agent: &'a AgentSpec,
    /// The resource instance (`OCF_RESOURCE_INSTANCE`).
    pub instance: &'a str,
    pub params: &'a BTreeMap<String, String>,
    /// Pacemaker's meta attributes of the instance (`OCF_RESKEY_CRM_meta_<name>`): a clone's
    /// (see `executor::clone_meta`); empty otherwise.
    pub meta: &'a BTreeMap<String, String>,
    pub action: AgentAction,
    pub timeout: Duration,
    /// For recurring monitors.
    pub interval: Option<Duration>,
}

/// What a call gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResult {
    pub action: AgentAction,
    pub verdict: Verdict,
    /// The exit code (None: killed by a signal or timed out).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The agent's `ocf-exit-reason:`, or ours (not installed, timed out).
    pub exit_reason: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed_ms: u64,
    /// Node attributes a built-in agent reports with its result (the `pgsql` monitor's
    /// position: see `crate::pgsql`); the executor records those that changed.
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

impl CallResult {
    pub fn succeeded(&self) -> bool {
        self.verdict.succeeded(self.action)
    }

    /// One line: its exit reason, else its exit code.
    pub fn summary(&self) -> String {
        match (&self.exit_reason, self.exit_code) {
            (Some(r), _) => r.clone(),
            (None, Some(c)) => format!("exit code {c}"),
            (None, None) => "killed".into(),
        }
    }

    /// A result phalanx made itself (a built-in agent's, or a refusal), exit `code`.
    pub(crate) fn ours(action: AgentAction, code: i32, reason: String, started: Instant) -> CallResult {
        CallResult {
            action,
            verdict: Verdict::of(action, Some(code), false),
            exit_code: Some(code),
            timed_out: false,
            exit_reason: Some(reason),
            stdout: String::new(),
            stderr: String::new(),
            elapsed_ms: started.elapsed().as_millis() as u64,
            attrs: BTreeMap::new(),
        }
    }
}

impl Runner {
    pub fn new(node: &str) -> Runner {
        Runner {
            ocf_root: PathBuf::from("/usr/lib/ocf"),
            state_dir: std::env::temp_dir().join("phalanx-agents"),
            output_limit: 64 * 1024,
            node: node.to_string(),
            fake: None,
            balancers: None,
            instance_locks: Default::default(),
            env: Vec::new(),
            notes: std::sync::Arc::new(tokio::sync::watch::channel(BTreeMap::new()).0),
        }
    }

    /// The lock of resource instance `rsc` on this node: held by a plan action (start, stop,
    /// promote, demote) until its result is reported, so that two actions of one instance never
    /// run at once (a stop during a demote's restart killed it half way, and the demote's
    /// failure banned the node: found by the PostgreSQL test), and a monitor skips its round
    /// rather than judge an instance in the middle of a change (as Pacemaker's executor
    /// serializes the operations of one resource).
    pub fn instance_lock(&self, rsc: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.instance_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(rsc.to_string())
            .or_default()
            .clone()
    }

    /// A runner whose every call goes to `agents` (tests: the simulation's fake machine).
    pub fn fake(node: &str, agents: std::sync::Arc<dyn AgentSeam>) -> Runner {
        Runner {
            fake: Some(FakeAgents(agents)),
            ..Runner::new(node)
        }
    }

    /// The environment of a call (OCF's, for every kind of agent).
    fn env(&self, c: &AgentCall) -> Vec<(String, String)> {
        let mut env = vec![
            ("OCF_ROOT".into(), self.ocf_root.display().to_string()),
            ("OCF_RA_VERSION_MAJOR".into(), "1".into()),
            ("OCF_RA_VERSION_MINOR".into(), "1".into()),
            ("OCF_RESOURCE_INSTANCE".into(), c.instance.to_string()),
            ("OCF_RESKEY_CRM_meta_timeout".into(), c.timeout.as_millis().to_string()),
            ("OCF_RESKEY_CRM_meta_on_node".into(), self.node.clone()),
            // Per-node runtime folder (agents such as Dummy keep their state there), so that
            // several nodes on one machine never share an agent's state.
            ("HA_RSCTMP".into(), self.state_dir.join("rsctmp").display().to_string()),
            ("HA_VARRUN".into(), self.state_dir.join("rsctmp").display().to_string()),
        ];
        if let AgentSpec::Ocf { provider, kind } = c.agent {
            env.push(("OCF_RESOURCE_TYPE".into(), kind.clone()));
            env.push(("OCF_RESOURCE_PROVIDER".into(), provider.clone()));
        }
        if let Some(i) = c.interval {
            env.push(("OCF_RESKEY_CRM_meta_interval".into(), i.as_millis().to_string()));
        }
        for (k, v) in c.meta {
            env.push((format!("OCF_RESKEY_CRM_meta_{k}"), v.clone()));
        }
        // The Pacemaker feature set whose behaviour phalanx gives agents (2.1.5, Debian 12's):
        // agents compare it before relying on newer variables.
        env.push(("OCF_RESKEY_crm_feature_set".into(), CRM_FEATURE_SET.into()));
        for (k, v) in c.params {
            env.push((format!("OCF_RESKEY_{k}"), v.clone()));
        }
        env.extend(self.env.iter().cloned());
        env
    }

    /// Run one agent action to completion (or timeout).
    pub async fn call(&self, c: &AgentCall<'_>) -> CallResult {
        if let Some(fake) = &self.fake {
            return fake.0.call(c).await;
        }
        let started = Instant::now();
        let _ = std::fs::create_dir_all(self.state_dir.join("rsctmp"));
        match c.agent {
            AgentSpec::Ocf { provider, kind } => {
                let path = self.ocf_root.join("resource.d").join(provider).join(kind);
                if !path.is_file() {
                    return CallResult::ours(
                        c.action,
                        ocf::OCF_ERR_INSTALLED,
                        format!(
                            "agent ocf:{provider}:{kind} is not installed ({} not found)",
                            path.display()
                        ),
                        started,
                    );
                }
                let mut cmd = tokio::process::Command::new(path);
                cmd.arg(c.action.as_str());
                self.run(cmd, c, started).await
            }
            AgentSpec::Exec => match c.params.get(c.action.as_str()) {
                Some(script) => {
                    let mut cmd = tokio::process::Command::new("/bin/sh");
                    cmd.arg("-c").arg(script);
                    self.run(cmd, c, started).await
                }
                None => CallResult::ours(
                    c.action,
                    3,
                    format!("no `{}` command in params", c.action.as_str()),
                    started,
                ),
            },
            AgentSpec::Process => self.process(c, started).await,
            AgentSpec::Pgsql => {
                let note = |what: &str| {
                    self.notes.send_modify(|m| {
                        m.insert(c.instance.to_string(), what.to_string());
                    })
                };
                let r = tokio::time::timeout(c.timeout, crate::pgsql::call(c, &self.node, &note)).await;
                self.notes.send_if_modified(|m| m.remove(c.instance).is_some());
                match r {
                    Ok((code, reason, attrs)) => CallResult {
                        exit_reason: reason,
                        attrs,
                        ..CallResult::ours(c.action, code, String::new(), started)
                    },
                    Err(_) => CallResult {
                        timed_out: true,
                        verdict: Verdict::Timeout,
                        exit_code: None,
                        ..CallResult::ours(c.action, 1, format!("pgsql {} timed out", c.action.as_str()), started)
                    },
                }
            }
            AgentSpec::Vip => match tokio::time::timeout(c.timeout, vip_call(c)).await {
                Ok((code, reason)) => CallResult {
                    exit_reason: reason,
                    ..CallResult::ours(c.action, code, String::new(), started)
                },
                Err(_) => CallResult {
                    timed_out: true,
                    verdict: Verdict::Timeout,
                    exit_code: None,
                    ..CallResult::ours(c.action, 1, format!("vip {} timed out", c.action.as_str()), started)
                },
            },
            AgentSpec::Balancer => {
                let (code, reason) = match &self.balancers {
                    Some(b) => b.call(c).await,
                    // A runner of no node runs no balancer: nothing runs here.
                    None if c.action == AgentAction::Monitor => (ocf::OCF_NOT_RUNNING, None),
                    None => (
                        ocf::OCF_ERR_INSTALLED,
                        Some("this runner belongs to no node: it runs no balancer".into()),
                    ),
                };
                CallResult {
                    exit_reason: reason,
                    ..CallResult::ours(c.action, code, String::new(), started)
                }
            }
        }
    }

    /// An OCF agent's meta-data as installed here (None: not an OCF agent, or not installed).
    pub async fn agent_meta(&self, agent: &AgentSpec) -> Option<Result<ocf::AgentMeta, String>> {
        let AgentSpec::Ocf { provider, kind } = agent else {
            return None;
        };
        if !self.ocf_root.join("resource.d").join(provider).join(kind).is_file() {
            return None;
        }
        let params = BTreeMap::new();
        let r = self
            .call(&AgentCall {
                agent,
                instance: "meta-data",
                params: &params,
                meta: &BTreeMap::new(),
                action: AgentAction::MetaData,
                timeout: Duration::from_secs(10),
                interval: None,
            })
            .await;
        Some(if r.succeeded() {
            ocf::parse_meta_data(&r.stdout).map_err(|e| e.to_string())
        } else {
            Err(format!(
                "meta-data failed: {}",
                r.exit_reason.unwrap_or_else(|| format!("{:?}", r.verdict))
            ))
        })
    }

    /// Check `checked`'s OCF primitives against the meta-data of the agents installed here and
    /// adopt their default timeouts (see `phalanx_core::config::check_agents`). One meta-data
    /// call per distinct agent.
    pub async fn check_agents(&self, checked: &mut phalanx_core::config::Checked, source: &str) {
        let mut cache: BTreeMap<String, Option<Result<ocf::AgentMeta, String>>> = BTreeMap::new();
        if let Some(cfg) = &checked.config {
            for prim in cfg.resources.primitives.values() {
                let key = prim.agent.to_string();
                if let std::collections::btree_map::Entry::Vacant(e) = cache.entry(key) {
                    e.insert(self.agent_meta(&prim.agent).await);
                }
            }
        }
        phalanx_core::config::check_agents(checked, source, &mut |a| cache.get(&a.to_string()).cloned().flatten());
    }

    /// `phalanx config check`'s checks of this machine (see `phalanx_core::config::check_machine`)
    /// for the config at `config_path`: its OCF agents (one meta-data call per distinct agent),
    /// its fence-agents programs and its key file. The draft config is checked, so these errors
    /// come with the others.
    pub async fn check_machine(
        &self,
        checked: &mut phalanx_core::config::Checked,
        source: &str,
        config_path: &Path,
        allow_missing_agents: bool,
    ) {
        let mut machine = ThisMachine {
            metas: BTreeMap::new(),
            config_path,
        };
        if let Some(cfg) = &checked.draft {
            for prim in cfg.resources.primitives.values() {
                let key = prim.agent.to_string();
                if let std::collections::btree_map::Entry::Vacant(e) = machine.metas.entry(key) {
                    e.insert(self.agent_meta(&prim.agent).await);
                }
            }
        }
        phalanx_core::config::check_machine(checked, source, &mut machine, allow_missing_agents);
    }

    async fn run(&self, mut cmd: tokio::process::Command, c: &AgentCall<'_>, started: Instant) -> CallResult {
        cmd.envs(self.env(c))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(ch) => ch,
            Err(e) => {
                return CallResult::ours(
                    c.action,
                    ocf::OCF_ERR_INSTALLED,
                    format!("cannot run the agent: {e}"),
                    started,
                )
            }
        };
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let limit = self.output_limit;
        let out = tokio::spawn(read_bounded(child.stdout.take(), limit));
        let err = tokio::spawn(read_bounded(child.stderr.take(), limit));
        let (code, timed_out) = match tokio::time::timeout(c.timeout, child.wait()).await {
            Ok(Ok(status)) => (status.code(), false),
            Ok(Err(_)) => (None, false),
            Err(_) => {
                if let Some(pg) = pgid {
                    let _ = killpg(pg, Signal::SIGKILL);
                }
                let _ = child.wait().await;
                (None, true)
            }
        };
        // The agent may have left a daemon holding the pipes: do not wait on it for long.
        let grace = Duration::from_millis(200);
        let stdout = tokio::time::timeout(grace, out)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let stderr = tokio::time::timeout(grace, err)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let mut exit_reason = ocf::exit_reason(&stderr);
        if timed_out {
            exit_reason = Some(format!(
                "{} timed out after {:?} (process group killed)",
                c.action.as_str(),
                c.timeout
            ));
        }
        CallResult {
            action: c.action,
            verdict: Verdict::of(c.action, code, timed_out),
            exit_code: code,
            timed_out,
            exit_reason,
            stdout,
            stderr,
            elapsed_ms: started.elapsed().as_millis() as u64,
            attrs: BTreeMap::new(),
        }
    }

    /// The `process` agent: supervise a long-running command through a pid file.
    async fn process(&self, c: &AgentCall<'_>, started: Instant) -> CallResult {
        let pidfile = self.state_dir.join(format!("{}.pid", c.instance));
        // The process this agent started (None: gone, or the pid now names another process).
        let alive = || own_process(&pidfile);
        // Bad params are a configuration error for what needs them, never for a stop or for a
        // monitor of nothing running: the pid file alone says what to stop (OCF: stopping what
        // does not run succeeds). Else a typo in a new resource's params would fail its stop
        // after its failed start, and a failed stop gets a healthy node fenced.
        let needs_params = match c.action {
            AgentAction::Stop | AgentAction::MetaData | AgentAction::Notify => false,
            AgentAction::Monitor => alive().is_some(),
            _ => true,
        };
        let mut bad = None;
        let command = c.params.get("command");
        if command.is_none() {
            bad = Some("the process agent needs a `command` param".to_string());
        }
        let check = match c.params.get("check_tcp") {
            None => None,
            Some(a) => match a.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    bad = Some(format!("check_tcp {a:?} is not an IP:PORT address"));
                    None
                }
            },
        };
        match (bad, needs_params) {
            (Some(why), true) => return CallResult::ours(c.action, ocf::OCF_ERR_CONFIGURED, why, started),
            (Some(_), false) if c.action == AgentAction::Monitor => {
                return CallResult::ours(c.action, ocf::OCF_NOT_RUNNING, "not running".into(), started)
            }
            _ => {}
        }
        let command = command.map(String::as_str).unwrap_or_default();
        let answers = |addr: &std::net::SocketAddr| {
            std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
        };
        // Its check: the port held by the process it started (or its process group), answering.
        let serves = |pid: Pid| check.as_ref().is_none_or(|a| group_listens(pid, a) && answers(a));
        let by_another = |a: &std::net::SocketAddr| {
            format!("{a} is answered by a process this resource did not start (an orphan of an earlier run?)")
        };
        let deadline = started + c.timeout;
        match c.action {
            AgentAction::Monitor => match (alive(), &check) {
                (None, _) => CallResult::ours(c.action, ocf::OCF_NOT_RUNNING, "not running".into(), started),
                (Some(pid), Some(a)) if !serves(pid) => CallResult::ours(
                    c.action,
                    ocf::OCF_ERR_GENERIC,
                    if answers(a) {
                        format!("running, but {}", by_another(a))
                    } else {
                        format!("running, but {a} does not accept connections")
                    },
                    started,
                ),
                (Some(_), _) => CallResult::ours(c.action, ocf::OCF_SUCCESS, "running".into(), started),
            },
            AgentAction::Start => {
                if alive().is_none() {
                    if let Err(e) = std::fs::create_dir_all(&self.state_dir) {
                        return CallResult::ours(c.action, ocf::OCF_ERR_GENERIC, format!("state dir: {e}"), started);
                    }
                    let log = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(self.state_dir.join(format!("{}.log", c.instance)));
                    let (out, err) = match log.and_then(|l| Ok((l.try_clone()?, l))) {
                        Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
                        Err(_) => (Stdio::null(), Stdio::null()),
                    };
                    let spawned = std::process::Command::new("/bin/sh")
                        .arg("-c")
                        .arg(format!("exec {command}"))
                        .envs(self.env(c))
                        .stdin(Stdio::null())
                        .stdout(out)
                        .stderr(err)
                        .process_group(0)
                        .spawn();
                    match spawned {
                        Ok(child) => {
                            let pid = child.id();
                            // Reap it when it exits, so it never lingers as a zombie.
                            std::thread::spawn(move || {
                                let mut child = child;
                                let _ = child.wait();
                            });
                            if let Err(e) = std::fs::write(&pidfile, pid_record(Pid::from_raw(pid as i32))) {
                                return CallResult::ours(
                                    c.action,
                                    ocf::OCF_ERR_GENERIC,
                                    format!("pid file: {e}"),
                                    started,
                                );
                            }
                        }
                        Err(e) => {
                            return CallResult::ours(
                                c.action,
                                ocf::OCF_ERR_INSTALLED,
                                format!("cannot start: {e}"),
                                started,
                            )
                        }
                    }
                }
                // Started means: its process alive, and holding and answering its check's port
                // if it has one (whoever else answers that port does not count).
                loop {
                    let Some(pid) = alive() else {
                        let mut why = "exited right after start".to_string();
                        if let Some(a) = check.as_ref().filter(|a| answers(a)) {
                            why += &format!(" ({})", by_another(a));
                        }
                        why += &format!(
                            "; its output is in {}",
                            self.state_dir.join(format!("{}.log", c.instance)).display()
                        );
                        return CallResult::ours(c.action, ocf::OCF_ERR_GENERIC, why, started);
                    };
                    if serves(pid) {
                        return CallResult::ours(c.action, ocf::OCF_SUCCESS, "started".into(), started);
                    }
                    if Instant::now() > deadline {
                        let why = match check.as_ref().filter(|a| answers(a)) {
                            Some(a) => format!("timed out waiting for its check: {}", by_another(a)),
                            None => "timed out waiting for its check".to_string(),
                        };
                        let mut r = CallResult::ours(c.action, ocf::OCF_ERR_GENERIC, why, started);
                        r.timed_out = true;
                        r.verdict = Verdict::Timeout;
                        return r;
                    }
                    tokio::time::sleep(PROCESS_POLL).await;
                }
            }
            AgentAction::Stop => {
                if let Some(pid) = alive() {
                    let _ = killpg(pid, Signal::SIGTERM);
                    let soft = started + c.timeout / 2;
                    while alive().is_some() && Instant::now() < soft {
                        tokio::time::sleep(PROCESS_POLL).await;
                    }
                    if alive().is_some() {
                        let _ = killpg(pid, Signal::SIGKILL);
                        while alive().is_some() && Instant::now() < deadline {
                            tokio::time::sleep(PROCESS_POLL).await;
                        }
                    }
                    if alive().is_some() {
                        let mut r = CallResult::ours(c.action, ocf::OCF_ERR_GENERIC, "would not die".into(), started);
                        r.timed_out = true;
                        r.verdict = Verdict::Timeout;
                        return r;
                    }
                }
                let _ = std::fs::remove_file(&pidfile);
                CallResult::ours(c.action, ocf::OCF_SUCCESS, "stopped".into(), started)
            }
            AgentAction::MetaData => {
                CallResult::ours(c.action, ocf::OCF_SUCCESS, "built-in process agent".into(), started)
            }
            // A clone notification: nothing for a process to do.
            AgentAction::Notify => CallResult::ours(c.action, ocf::OCF_SUCCESS, String::new(), started),
            _ => CallResult::ours(
                c.action,
                3,
                format!("the process agent has no {}", c.action.as_str()),
                started,
            ),
        }
    }
}

/// `phalanx drill kill-service`: the process of resource instance `instance` (agent `agent`
/// with `params`) on this node, which [`kill_service`] SIGKILLs as a crash would take it.
/// The `process` agent's service is the process group its pid file names; an OCF or exec
/// agent's is the pid in the file its `pidfile` (or `pid_file`) param names. The pid and
/// whether it leads a process group to kill whole, or why there is none.
pub fn service_process(
    state_dir: &Path,
    instance: &str,
    agent: &AgentSpec,
    params: &BTreeMap<String, String>,
) -> Result<(i32, bool), String> {
    match agent {
        AgentSpec::Process => own_process(&state_dir.join(format!("{instance}.pid")))
            .map(|pid| (pid.as_raw(), true))
            .ok_or_else(|| format!("{instance}'s process is not running here")),
        AgentSpec::Ocf { .. } | AgentSpec::Exec => {
            let file = params
                .get("pidfile")
                .or_else(|| params.get("pid_file"))
                .ok_or_else(|| {
                    format!(
                        "{instance} ({agent}) has no pidfile param: there is no telling which process is its service"
                    )
                })?;
            let text = std::fs::read_to_string(file).map_err(|e| format!("{instance}'s pid file {file}: {e}"))?;
            text.split_whitespace()
                .next()
                .and_then(|p| p.parse::<i32>().ok())
                .filter(|p| *p > 1 && running(Pid::from_raw(*p)))
                .map(|p| (p, false))
                .ok_or_else(|| format!("{instance}'s pid file {file} names no running process"))
        }
        AgentSpec::Pgsql => {
            let data = params
                .get("pgdata")
                .ok_or_else(|| format!("{instance} (pgsql) has no pgdata param"))?;
            let file = std::path::Path::new(data).join("postmaster.pid");
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            text.lines()
                .next()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .filter(|p| *p > 1 && running(Pid::from_raw(*p)))
                .map(|p| (p, false))
                .ok_or_else(|| format!("{} names no running postmaster", file.display()))
        }
        AgentSpec::Vip | AgentSpec::Balancer => Err(format!(
            "{instance} ({agent}) runs inside phalanx, not as a process of its own: nothing to kill"
        )),
    }
}

/// SIGKILL what [`service_process`] found.
pub fn kill_service((pid, group): (i32, bool)) -> Result<(), String> {
    let pid = Pid::from_raw(pid);
    let sent = if group {
        killpg(pid, Signal::SIGKILL)
    } else {
        kill(pid, Signal::SIGKILL)
    };
    sent.map_err(|e| format!("SIGKILL to {pid}: {e}"))
}

/// This machine as `config check` sees it: the OCF meta-data read beforehand (the calls are
/// async), the fence programs and the key file looked at when asked.
struct ThisMachine<'a> {
    metas: BTreeMap<String, Option<Result<ocf::AgentMeta, String>>>,
    config_path: &'a Path,
}

impl phalanx_core::config::Machine for ThisMachine<'_> {
    fn ocf_meta(&mut self, agent: &AgentSpec) -> Option<Result<ocf::AgentMeta, String>> {
        self.metas.get(&agent.to_string()).cloned().flatten()
    }
    fn fence_program(&mut self, program: &str) -> Option<String> {
        crate::fence::program_problem(program)
    }
    fn key_file(&mut self, key_file: &str) -> Vec<(phalanx_core::diag::Severity, String)> {
        crate::key::check_key_file(&crate::key::key_path(self.config_path, key_file))
    }
}

/// Whether a process exists and is not a zombie: an orphan killed while its reaper was gone (a
/// crashed daemon, say) stays a zombie until init reaps it, and answers `kill(pid, 0)`. A
/// thread-group leader shows as a zombie while its other threads still exit (and hold its
/// sockets), so it is dead only once every thread is.
fn running(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    // /proc/PID/stat: "pid (comm) S ...": the state follows the last ')'.
    let dead = |stat: &str| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X')
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) if dead(&stat) => match std::fs::read_dir(format!("/proc/{pid}/task")) {
            Ok(tasks) => tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .map(|s| !dead(&s))
                    .unwrap_or(false)
            }),
            Err(_) => false,
        },
        Ok(_) => true,
        Err(_) => false,
    }
}

/// The `process` agent's pid file: the pid on the first line (what `kill $(head -1 FILE)`
/// wants), then the process's start time (clock ticks after boot) and the boot id, which tell
/// the process it started from a later one given the same pid (after a reboot, or once pids
/// wrap).
fn pid_record(pid: Pid) -> String {
    match (start_time(pid), boot_id()) {
        (Some(t), Some(b)) => format!("{pid}\n{t} {b}\n"),
        _ => format!("{pid}\n"),
    }
}

/// The process a pid file names, if it still runs (not a zombie) and is the one that was
/// started: same start time, same boot. A pid file of one line (written before the start time
/// was recorded) is taken at its word.
fn own_process(pidfile: &Path) -> Option<Pid> {
    let record = std::fs::read_to_string(pidfile).ok()?;
    let mut lines = record.lines();
    let pid = lines
        .next()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)?;
    if let Some(identity) = lines.next().filter(|l| !l.trim().is_empty()) {
        let mut it = identity.split_whitespace();
        let (t, b) = (it.next()?, it.next()?);
        if start_time(pid)?.to_string() != t || boot_id()? != b {
            return None;
        }
    }
    running(pid).then_some(pid)
}

/// The fields of /proc/PID/stat after the command name: state, ppid, pgrp, ... (field 3 on).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When a process started, in clock ticks after boot (/proc/PID/stat field 22).
fn start_time(pid: Pid) -> Option<u64> {
    stat_fields(pid.as_raw())?.get(19)?.parse().ok()
}

fn boot_id() -> Option<String> {
    Some(
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()?
            .trim()
            .to_string(),
    )
}

/// Whether `pid`, or a process of its process group (the `process` agent starts each service
/// as a group leader), holds a listening TCP socket that takes connections to `addr`: the
/// service itself serves the port, not some other process.
fn group_listens(pid: Pid, addr: &std::net::SocketAddr) -> bool {
    let inodes = listening_inodes(pid, addr);
    if inodes.is_empty() {
        return false;
    }
    let holds = |p: i32| {
        std::fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| {
                    l.to_str()
                        .and_then(|l| l.strip_prefix("socket:["))
                        .and_then(|l| l.strip_suffix(']'))
                        .and_then(|i| i.parse::<u64>().ok())
                        .is_some_and(|i| inodes.contains(&i))
                })
            })
        })
    };
    if holds(pid.as_raw()) {
        return true;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != pid.as_raw())
        .filter(|p| {
            stat_fields(*p)
                .and_then(|f| f.get(2)?.parse::<i32>().ok())
                .is_some_and(|pgrp| pgrp == pid.as_raw())
        })
        .any(holds)
}

/// The inodes of the listening TCP sockets, in `pid`'s network namespace, that take
/// connections to `addr`: its port, on its address or on a wildcard one.
fn listening_inodes(pid: Pid, addr: &std::net::SocketAddr) -> Vec<u64> {
    let want = canonical(addr.ip());
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // not LISTEN
            }
            let Some((ip, port)) = f[1].split_once(':') else {
                continue;
            };
            let (Some(ip), Ok(port)) = (proc_net_ip(ip), u16::from_str_radix(port, 16)) else {
                continue;
            };
            let ip = canonical(ip);
            let takes = ip == want || (ip.is_unspecified() && (ip.is_ipv6() || want.is_ipv4()));
            if port == addr.port() && takes {
                if let Ok(inode) = f[9].parse::<u64>() {
                    found.push(inode);
                }
            }
        }
    }
    found
}

/// An address as /proc/net/tcp{,6} prints it: 32-bit words in hex, each in host byte order.
fn proc_net_ip(hex: &str) -> Option<std::net::IpAddr> {
    let mut bytes = Vec::with_capacity(16);
    for i in (0..hex.len()).step_by(8) {
        let word = u32::from_str_radix(hex.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    match bytes.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Read a pipe to its end, keeping the first `limit` bytes (the rest is drained and dropped,
/// so the writer never blocks on a full pipe).
async fn read_bounded<R: AsyncRead + Unpin>(pipe: Option<R>, limit: usize) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut dropped = 0usize;
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        dropped += n.saturating_sub(room);
    }
    let mut s = String::from_utf8_lossy(&kept).to_string();
    if dropped > 0 {
        s.push_str(&format!("\n[... {dropped} more bytes dropped]"));
    }
    s
}

/// The built-in `vip` agent (in-process, see `crate::vip`): an OCF exit code and exit reason.
async fn vip_call(c: &AgentCall<'_>) -> (i32, Option<String>) {
    use crate::vip::{self, Vip, VipError};
    let v = match Vip::from_params(c.params) {
        Ok(v) => v,
        Err(e) => return (ocf::OCF_ERR_CONFIGURED, Some(e.to_string())),
    };
    let res = match c.action {
        AgentAction::Start => vip::start(&v).await.map(|()| ocf::OCF_SUCCESS),
        AgentAction::Stop => vip::stop(&v).await.map(|()| ocf::OCF_SUCCESS),
        AgentAction::Monitor => vip::monitor(&v).await.map(|here| match here {
            None => ocf::OCF_NOT_RUNNING,
            Some(true) => ocf::OCF_SUCCESS,
            Some(false) => ocf::OCF_ERR_GENERIC,
        }),
        AgentAction::MetaData
        | AgentAction::ValidateAll
        | AgentAction::Reload
        | AgentAction::ReloadAgent
        | AgentAction::Notify => Ok(ocf::OCF_SUCCESS),
        AgentAction::Promote | AgentAction::Demote => Ok(3), // OCF_ERR_UNIMPLEMENTED
    };
    match res {
        // Held on a link that is down: it serves nobody. Drop it and say it is not running (a
        // soft failure: recovered elsewhere, or here once the link is back), not exit 1, which
        // would ban this node until an operator cleans up.
        Ok(ocf::OCF_ERR_GENERIC) => match vip::stop(&v).await {
            Ok(()) => (
                ocf::OCF_NOT_RUNNING,
                Some(format!("{}: its link is down (address removed)", v.address)),
            ),
            Err(e) => (
                ocf::OCF_ERR_GENERIC,
                Some(format!("{}: its link is down, and removing it failed: {e}", v.address)),
            ),
        },
        Ok(code) => (code, None),
        Err(e @ VipError::Config(_)) => (ocf::OCF_ERR_CONFIGURED, Some(e.to_string())),
        Err(e @ VipError::Io(_)) => (ocf::OCF_ERR_GENERIC, Some(e.to_string())),
    }
}

/// Stop every service the `process` agent started from `state_dir` (its pid files): the whole
/// process group, SIGTERM then SIGKILL after `grace`. The daemon calls it when it exits, so
/// that nothing it started keeps running with ppid 1 (and, say, answers the port a start on the
/// next node checks). Returns the instances it had to stop.
pub fn stop_process_services(state_dir: &Path, grace: Duration) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut stopped = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("pid") {
            continue;
        }
        let Some(pid) = own_process(&path) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let _ = killpg(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while running(pid) && Instant::now() < deadline {
            std::thread::sleep(PROCESS_POLL);
        }
        // Whatever of the group is left (children outliving their leader too).
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = std::fs::remove_file(&path);
        if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
            stopped.push(name.to_string());
        }
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sockets of this process are found on their address, on a wildcard one, in IPv4 and
    /// IPv6 (as /proc/net/tcp6 prints them), and not on another port or address.
    #[test]
    fn a_process_is_found_listening_on_its_port() {
        let me = Pid::from_raw(std::process::id() as i32);
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a4 = v4.local_addr().unwrap();
        assert!(group_listens(me, &a4));
        assert!(!group_listens(me, &"127.0.0.2:1".parse().unwrap()));
        let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = any.local_addr().unwrap().port();
        assert!(group_listens(me, &format!("127.0.0.3:{port}").parse().unwrap()));
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            let a6 = v6.local_addr().unwrap();
            assert!(group_listens(me, &a6));
            assert!(!group_listens(me, &format!("127.0.0.1:{}", a6.port()).parse().unwrap()));
        }
        drop(v4);
        assert!(!group_listens(me, &a4), "closed: no longer listening");
    }

    #[test]
    fn a_pid_file_names_the_process_that_was_started() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.pid");
        let me = Pid::from_raw(std::process::id() as i32);
        std::fs::write(&f, pid_record(me)).unwrap();
        assert_eq!(own_process(&f), Some(me));
        let record = pid_record(me);
        let (pid, identity) = record.split_once('\n').unwrap();
        let other_start = identity.replacen(' ', "1 ", 1);
        std::fs::write(&f, format!("{pid}\n{other_start}")).unwrap();
        assert_eq!(own_process(&f), None, "same pid, another start time: not ours");
        std::fs::write(&f, format!("{pid}\n")).unwrap();
        assert_eq!(
            own_process(&f),
            Some(me),
            "an older one-line pid file is taken at its word"
        );
    }
}
