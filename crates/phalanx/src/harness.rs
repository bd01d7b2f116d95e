//! A local cluster of real `phalanx daemon` processes on loopback, in a scratch folder: it
//! writes the config and key, picks free ports, starts, kills (SIGKILL) and restarts nodes, and
//! polls their status with deadlines. The demo, the benchmark and the process tests all use it,
//! so what they measure is what an operator would run.

use crate::client::Client;
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use phalanx_node::{transport, ClusterKey, StatusReport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalNode {
    pub name: String,
    pub api: String,
    pub links: Vec<String>,
    pub data_dir: PathBuf,
    child: Option<Child>,
    /// Its own local config file, when it is not the cluster's (see `set_local_config`).
    config_override: Option<PathBuf>,
    /// Extra environment of its daemon (see `set_env`).
    env: Vec<(String, String)>,
}

impl LocalNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

pub struct LocalCluster {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub nodes: Vec<LocalNode>,
    pub client: Client,
    pub heartbeat: Duration,
    exe: PathBuf,
    /// Keep the scratch folder when dropped (set it after a failure to keep the logs).
    pub keep: bool,
    /// In the lab: each node's namespace, and the client namespace the harness talks from.
    netns: Option<(Vec<String>, String)>,
    /// The power switch (`phalanx power-switch`) every node's outlet hangs on: the cluster's
    /// fence device. Its address, and its process once started.
    pub power_switch: String,
    switch: Option<Child>,
    /// The config has resources (so a lost node is fenced).
    has_resources: bool,
    /// The witness (`phalanx witness`), in two-node clusters: its address, and its process.
    pub witness: Option<String>,
    witness_child: Option<Child>,
    /// Start every process in a process group of its own, so that it outlives the program that
    /// started it (the playground: see [`LocalCluster::detach`]).
    detached: bool,
}

/// The processes of a cluster handed over by [`LocalCluster::release`]: nothing stops them any
/// more when the harness is dropped.
#[derive(Debug, Clone)]
pub struct Released {
    /// (name, API address, daemon pid), in config order (nodes not running are left out).
    pub nodes: Vec<(String, String, u32)>,
    pub power_switch: Option<u32>,
    pub witness: Option<u32>,
}

/// A port for a daemon to bind later: see `phalanx_node::ports`.
fn free_tcp_port() -> Result<u16> {
    Ok(phalanx_node::ports::free_tcp_port()?)
}

fn free_udp_port(ip: &str) -> Result<u16> {
    Ok(phalanx_node::ports::free_udp_port(ip)?)
}

/// A loopback port free for both TCP and UDP (the witness listens on both).
fn free_tcp_and_udp_port() -> Result<u16> {
    for _ in 0..100 {
        let p = free_tcp_port()?;
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no port free for both TCP and UDP on 127.0.0.1")
}

/// Options of a local cluster.
pub struct Spec {
    pub nodes: usize,
    pub heartbeat: Duration,
    pub links: usize,
    /// The phalanx binary to run (normally the current executable).
    pub exe: PathBuf,
    /// Keep the scratch folder (logs, data) after the cluster is dropped.
    pub keep: bool,
    /// Appended to the generated config (resources, groups, constraints...).
    pub extra_config: String,
    /// Extra `[cluster]` keys, one per line (e.g. `fencing = "watchdog"`).
    pub cluster_extra: String,
}

impl Spec {
    /// The usual test cluster: `nodes` nodes of `exe` on loopback, one link each, 100 ms
    /// heartbeats, `extra_config` appended; the scratch folder kept when `PHALANX_KEEP` is set.
    pub fn loopback(nodes: usize, exe: PathBuf, extra_config: impl Into<String>) -> Spec {
        Spec {
            nodes,
            heartbeat: Duration::from_millis(100),
            links: 1,
            exe,
            keep: std::env::var_os("PHALANX_KEEP").is_some(),
            extra_config: extra_config.into(),
            cluster_extra: String::new(),
        }
    }
}

/// Where `rsc` runs in one node's view (the first node it runs on); for a group or clone,
/// where its first member does.
/// How long a playground machine takes to boot once its power returns: a real machine takes
/// far longer, and a node back at once would be seen restarted before its peers noticed it
/// gone (a kill-node drill would measure a reboot, not a failure).
pub const BOOT_SECONDS: u64 = 2;

/// Where a local cluster in `dir` keeps node `name`'s daemon pid (its outlet on the power
/// switch, which writes it again when it boots the node).
pub fn daemon_pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.daemon.pid"))
}

/// Node `name`'s daemon pid now, as its pid file says (None: no file, or not a pid).
pub fn daemon_pid(dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(daemon_pid_file(dir, name))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// Where `rsc` (a primitive, or a group's or clone's members) runs: the node of an instance
/// promoted, else of one started; never a node where it failed. A promotable clone without a
/// primary names a replica's node (callers that need a primary check for one: the drills'
/// `serving_on`).
pub fn runs_on(s: &StatusReport, rsc: &str) -> Option<String> {
    use phalanx_core::scheduler::Role;
    let on = |want: Role| {
        s.resources
            .iter()
            .filter(|r| r.id == rsc || r.parent.as_deref() == Some(rsc))
            .flat_map(|r| r.running.iter())
            .find(|(_, role)| **role == want)
            .map(|(n, _)| n.clone())
    };
    on(Role::Promoted).or_else(|| on(Role::Started))
}

impl LocalCluster {
    /// Write a config and key for `spec` into a new scratch folder.
    pub fn create(spec: Spec) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("phalanx-demo-{}-{}", std::process::id(), rand::random::<u32>()));
        LocalCluster::create_at(spec, &dir)
    }

    /// [`LocalCluster::create`], in folder `dir` (created if missing) instead of a new scratch
    /// folder under the temporary directory.
    pub fn create_at(spec: Spec, dir: &Path) -> Result<Self> {
        // Two nodes need a third vote to survive either's loss.
        let witness = (spec.nodes == 2)
            .then(free_tcp_and_udp_port)
            .transpose()?
            .map(|p| format!("127.0.0.1:{p}"));
        LocalCluster::create_in(
            dir.to_path_buf(),
            spec,
            |_, l| {
                let ip = format!("127.0.0.{}", l + 1);
                free_udp_port(&ip).map(|p| format!("{ip}:{p}"))
            },
            |_| Ok(format!("127.0.0.1:{}", free_tcp_port()?)),
            format!("127.0.0.1:{}", free_tcp_port()?),
            witness,
        )
    }

    /// A cluster whose addresses the caller chooses: node i's link l at `link(i, l)`, its API at
    /// `api(i)`, the power switch at `power_switch`, and an optional witness. Used with
    /// [`LocalCluster::place_in_namespaces`] by the lab.
    pub fn create_with(
        spec: Spec,
        link: impl Fn(usize, usize) -> Result<String>,
        api: impl Fn(usize) -> Result<String>,
        power_switch: String,
        witness: Option<String>,
    ) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("phalanx-demo-{}-{}", std::process::id(), rand::random::<u32>()));
        LocalCluster::create_in(dir, spec, link, api, power_switch, witness)
    }

    fn create_in(
        dir: PathBuf,
        spec: Spec,
        link: impl Fn(usize, usize) -> Result<String>,
        api: impl Fn(usize) -> Result<String>,
        power_switch: String,
        witness: Option<String>,
    ) -> Result<Self> {
        if !(1..=32).contains(&spec.nodes) {
            bail!("--nodes must be 1 to 32");
        }
        if !(1..=4).contains(&spec.links) {
            bail!("links per node must be 1 to 4");
        }
        std::fs::create_dir_all(&dir)?;
        let hb = phalanx_core::config::format_duration(spec.heartbeat);
        let mut toml = format!(
            "[cluster]\nname = \"demo\"\nheartbeat_interval = \"{hb}\"\ndead_after = 3\nno_quorum_policy = \"stop\"\nkey_file = \"phalanx.key\"\n{}",
            spec.cluster_extra
        );
        let mut nodes = Vec::new();
        for i in 1..=spec.nodes {
            let name = format!("n{i}");
            let links: Vec<String> = (0..spec.links).map(|l| link(i, l)).collect::<Result<_>>()?;
            let api = api(i)?;
            let quoted: Vec<String> = links.iter().map(|l| format!("\"{l}\"")).collect();
            toml += &format!(
                "\n[[node]]\nname = \"{name}\"\nlinks = [{}]\napi = \"{api}\"\n",
                quoted.join(", ")
            );
            nodes.push(LocalNode {
                data_dir: dir.join(&name),
                name,
                api,
                links,
                child: None,
                config_override: None,
                env: Vec::new(),
            });
        }
        if let Some(w) = &witness {
            toml += &format!("\n[witness]\naddress = \"{w}\"\n");
        }
        // Fencing: every node's outlet on one power switch (see `start`).
        toml += &format!(
            "\n[[fence_device]]\nname = \"power\"\nagent = \"http-switch\"\nparams = {{ url = \"http://{power_switch}\" }}\ntimeout = \"5s\"\n"
        );
        toml += &spec.extra_config;
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, toml)?;
        let key_file = dir.join("phalanx.key");
        let key = ClusterKey::generate(&key_file)?;
        crate::client::ensure_ca(&key_file, "demo")?;
        Ok(LocalCluster {
            client: Client::new(&key, crate::client::operator_tls(&key_file)?)?
                .with_timeout(Duration::from_millis(1500))?,
            dir,
            config_path,
            nodes,
            heartbeat: spec.heartbeat,
            exe: spec.exe,
            keep: spec.keep,
            netns: None,
            power_switch,
            switch: None,
            has_resources: spec.extra_config.contains("[[resource]]"),
            witness,
            witness_child: None,
            detached: false,
        })
    }

    /// A cluster from a config file that exists already (`dir/cluster.toml`, written by
    /// `phalanx restore`, say), with its key where its `key_file` says: the nodes, their links
    /// and APIs, the witness and the power switch (the address of its `http-switch` fence
    /// device's `url`) are the config's. Data and logs go into `dir`.
    pub fn adopt(dir: &Path, exe: PathBuf, keep: bool) -> Result<Self> {
        let config_path = dir.join("cluster.toml");
        let config = crate::client::load_config(&config_path)?;
        let key_file = crate::client::key_path(&config_path, &config);
        let key = ClusterKey::load(&key_file)?;
        let tls = crate::client::operator_tls(&key_file)?;
        let power_switch = config
            .fence
            .devices
            .iter()
            .filter(|d| d.agent == phalanx_core::fencing::FenceAgent::HttpSwitch)
            .find_map(|d| {
                let url = d.params.get("url")?;
                let host = url.strip_prefix("http://")?.trim_end_matches('/');
                host.starts_with("127.").then(|| host.to_string())
            })
            .ok_or_else(|| {
                anyhow!(
                    "{}: no http-switch fence device with a url on loopback (http://127.x.y.z:PORT): a local cluster fences through its own power switch",
                    config_path.display()
                )
            })?;
        let nodes = config
            .nodes
            .iter()
            .map(|n| LocalNode {
                name: n.name.clone(),
                api: n.api.to_string(),
                links: n.links.iter().map(|l| l.to_string()).collect(),
                data_dir: dir.join(&n.name),
                child: None,
                config_override: None,
                env: Vec::new(),
            })
            .collect();
        Ok(LocalCluster {
            client: Client::new(&key, tls)?.with_timeout(Duration::from_millis(1500))?,
            dir: dir.to_path_buf(),
            config_path,
            nodes,
            heartbeat: config.cluster.heartbeat_interval,
            exe,
            keep,
            netns: None,
            power_switch,
            switch: None,
            has_resources: !config.resources.primitives.is_empty(),
            witness: config.witness.map(|w| w.address.to_string()),
            witness_child: None,
            detached: false,
        })
    }

    /// Start every process from now on in a process group of its own (not the caller's), so
    /// that a Ctrl-C or a hang-up of the caller's terminal does not reach it; with
    /// [`LocalCluster::release`], the cluster outlives the program that started it.
    pub fn detach(&mut self) {
        self.detached = true;
    }

    /// Hand the running processes over to the caller: they keep running when the harness is
    /// dropped, and the folder is kept. Their pids, for whoever stops them later.
    pub fn release(mut self) -> Released {
        let released = self.processes();
        for n in &mut self.nodes {
            n.child = None;
        }
        self.switch = None;
        self.witness_child = None;
        self.keep = true;
        released
    }

    /// The pids of the processes running now.
    pub fn processes(&self) -> Released {
        Released {
            nodes: self
                .nodes
                .iter()
                .filter_map(|n| Some((n.name.clone(), n.api.clone(), n.pid()?)))
                .collect(),
            power_switch: self.switch.as_ref().map(|c| c.id()),
            witness: self.witness_child.as_ref().map(|c| c.id()),
        }
    }

    /// A command for one of the cluster's processes (in the lab: in namespace `ns`), in a
    /// process group of its own when the cluster is detached.
    fn command(&self, ns: Option<&str>) -> Command {
        let mut cmd = match ns {
            Some(ns) => crate::netns::command_in(ns, &self.exe),
            None => Command::new(&self.exe),
        };
        if self.detached {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        cmd
    }

    /// Whether nodes run on `phalanx machine`s: a detached cluster on loopback (the
    /// playground), a set of machines left to themselves. (In the lab a namespace is the
    /// machine; tests start and reap their daemons themselves.)
    fn machines(&self) -> bool {
        self.detached && self.netns.is_none()
    }

    /// Run node i's processes in namespace `nodes[i]` (the witness, if any, in the last one) and
    /// talk to the APIs, and run the power switch, from namespace `client`.
    pub fn place_in_namespaces(&mut self, nodes: Vec<String>, client: String) {
        self.netns = Some((nodes, client));
    }

    /// Allocate addresses for a node that is not in the config file (to be added with
    /// `phalanx node add`, then started). Returns its links and API address.
    pub fn add_unlisted(&mut self, name: &str) -> Result<(Vec<String>, String)> {
        let links = vec![
            format!("127.0.0.1:{}", free_udp_port("127.0.0.1")?),
            format!("127.0.0.2:{}", free_udp_port("127.0.0.2")?),
        ];
        let api = format!("127.0.0.1:{}", free_tcp_port()?);
        self.nodes.push(LocalNode {
            name: name.to_string(),
            api: api.clone(),
            links: links.clone(),
            data_dir: self.dir.join(name),
            child: None,
            config_override: None,
            env: Vec::new(),
        });
        Ok((links, api))
    }

    /// Run the phalanx CLI against this cluster's config; returns (exit code, stdout, stderr).
    /// Run the CLI against this cluster (in the lab: from the client namespace).
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let mut cmd = match &self.netns {
            Some((_, client)) => crate::netns::command_in(client, &self.exe),
            None => Command::new(&self.exe),
        };
        // The harness's token (the cluster key's, or one set by `use_token`), never one saved
        // for this config elsewhere.
        let out = cmd
            .env(crate::token_cmd::TOKEN_ENV, self.client.token())
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        ))
    }

    /// Present `token` (an API token of `phalanx token create`) from now on, in the harness's
    /// own requests and in `cli`.
    pub fn use_token(&mut self, token: String) {
        self.client = self.client.clone().with_token(token);
    }

    /// Create an admin operator token (`phalanx token create ops --role admin`) and ask with
    /// it from now on: unlike the token derived from the cluster key, it outlives `phalanx key
    /// rotate`. Returns it.
    pub fn use_admin_token(&mut self) -> Result<String> {
        let (code, out, err) = self.cli(&["--json", "token", "create", "ops", "--role", "admin"])?;
        if code != 0 {
            bail!("token create: {err}");
        }
        let token = serde_json::from_str::<serde_json::Value>(&out)?["token"]
            .as_str()
            .context("token create printed no token")?
            .to_string();
        self.use_token(token.clone());
        Ok(token)
    }

    /// Trust the CAs the cluster's folder trusts now (after `phalanx ca rotate`), in the
    /// harness's own requests.
    pub fn reload_trust(&mut self) -> Result<()> {
        let tls = crate::client::operator_tls(self.pki_paths()?.key_file())?;
        self.client = self.client.clone().with_tls(tls)?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> Result<&LocalNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut LocalNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name}"))
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Where node `name`'s daemon pid is written (its outlet, outside the lab).
    fn pid_file(&self, name: &str) -> PathBuf {
        daemon_pid_file(&self.dir, name)
    }

    /// Start the power switch, once: in the lab, in the client namespace with one netns outlet
    /// per node; on loopback, one pid outlet per node.
    fn ensure_switch(&mut self) -> Result<()> {
        if self.switch.is_some() {
            return Ok(());
        }
        let ns = self.netns.as_ref().map(|(_, client)| client.clone());
        let mut cmd = self.command(ns.as_deref());
        cmd.arg("power-switch")
            .arg("--listen")
            .arg(&self.power_switch)
            .arg("--events")
            .arg(self.fence_events_path());
        for (i, n) in self.nodes.iter().enumerate() {
            let outlet = match &self.netns {
                Some((nss, _)) => format!("{}=netns:{}", n.name, nss[i]),
                None => format!("{}=pid:{}", n.name, self.pid_file(&n.name).display()),
            };
            cmd.arg("--outlet").arg(outlet);
            // A detached cluster (the playground) is a set of machines left to themselves: power
            // returning boots the node's daemon again, as systemd would (a fence's reboot brings
            // it back). Tests start and reap their nodes themselves.
            if self.machines() {
                cmd.arg("--boot")
                    .arg(format!("{}={}", n.name, self.boot_command(&n.name)?));
            }
        }
        let log = std::fs::File::create(self.dir.join("power-switch.log"))?;
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the power switch")?;
        self.switch = Some(child);
        Ok(())
    }

    /// The shell line that boots node `name` (the power switch runs it when its outlet powers
    /// on): after [`BOOT_SECONDS`], the daemon as [`LocalCluster::start`] runs it, its pid in
    /// the outlet's pid file.
    fn boot_command(&self, name: &str) -> Result<String> {
        let n = self.node(name)?;
        let config = n.config_override.as_ref().unwrap_or(&self.config_path);
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let log = std::env::var("PHALANX_DEMO_LOG").unwrap_or_else(|_| "info,openraft=warn".into());
        Ok(format!(
            "echo $$ > {}; sleep {BOOT_SECONDS}; RUST_LOG='{log}' exec {} machine -- {} daemon --config {} --node {} --data-dir {} >> {} 2>&1",
            q(&self.pid_file(name)),
            q(&self.exe),
            q(&self.exe),
            q(config),
            n.name,
            q(&n.data_dir),
            q(&self.log_path(name))
        ))
    }

    /// Where the power switch logs each action (`UNIX_MS PLUG ACTION` lines).
    pub fn fence_events_path(&self) -> PathBuf {
        self.dir.join("power-switch.events")
    }

    /// The power switch's actions so far: (unix ms, plug, action).
    pub fn fence_events(&self) -> Vec<(u64, String, String)> {
        std::fs::read_to_string(self.fence_events_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.parse().ok()?, w.next()?.to_string(), w.next()?.to_string()))
            })
            .collect()
    }

    /// The power switch's pid (the nemesis freezes it: a fence device that stops answering).
    pub fn power_switch_pid(&self) -> Option<u32> {
        self.switch.as_ref().map(|c| c.id())
    }

    /// Nodes whose daemon has exited (fenced: the power switch killed it), reaped and ready for
    /// `restart`.
    pub fn exited(&mut self) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .iter_mut()
            .filter_map(|n| {
                let exited = matches!(n.child.as_mut()?.try_wait(), Ok(Some(_)));
                exited.then(|| n.name.clone())
            })
            .collect();
        for n in &gone {
            let _ = self.reap(n);
        }
        gone
    }

    /// Start the witness, once, if the cluster has one (in the lab: on the last host).
    fn ensure_witness(&mut self) -> Result<()> {
        let Some(addr) = &self.witness else { return Ok(()) };
        if self.witness_child.is_some() {
            return Ok(());
        }
        let ns = match &self.netns {
            Some((nss, _)) => Some(nss.last().context("the lab has no hosts")?.clone()),
            None => None,
        };
        let mut cmd = self.command(ns.as_deref());
        let log = std::fs::File::create(self.dir.join("witness.log"))?;
        let child = cmd
            .arg("witness")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--listen")
            .arg(addr)
            .arg("--data-dir")
            .arg(self.dir.join("witness"))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the witness")?;
        self.witness_child = Some(child);
        Ok(())
    }

    /// Give one node a local config file of its own (`text`, beside the cluster's, so the key
    /// path is the same): it takes effect at its next start. An operator's drift, for tests.
    pub fn set_local_config(&mut self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        self.node_mut(name)?.config_override = Some(path.clone());
        Ok(path)
    }

    /// Set an environment variable for one node's daemon, from its next start on (e.g. systemd's
    /// `NOTIFY_SOCKET`).
    pub fn set_env(&mut self, name: &str, key: &str, value: &str) -> Result<()> {
        self.node_mut(name)?.env.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// Start (or restart) one node's daemon process.
    pub fn start(&mut self, name: &str) -> Result<()> {
        self.ensure_switch()?;
        self.ensure_witness()?;
        let pid_file = self.pid_file(name);
        let config = match &self.node(name)?.config_override {
            Some(p) => p.clone(),
            None => self.config_path.clone(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))?;
        let ns = self.netns_of(name);
        let mut cmd = self.command(ns.as_deref());
        // The playground's nodes run on machines (`phalanx machine`): a daemon killed alone
        // leaves what it started on its machine, within its outlet's reach.
        if self.machines() {
            cmd.arg("machine").arg("--").arg(&self.exe);
        }
        let node = self.node_mut(name)?;
        if node.child.is_some() {
            bail!("{name} is already running");
        }
        let child = cmd
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--node")
            .arg(&node.name)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .env(
                "RUST_LOG",
                std::env::var("PHALANX_DEMO_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a phalanx daemon")?;
        std::fs::write(&pid_file, child.id().to_string())?;
        node.child = Some(child);
        Ok(())
    }

    /// Restart a killed node the way a machine comes back: after the cluster fenced it (with
    /// resources, a lost node is fenced; a daemon started before that would be shot by the
    /// fence's reboot). Waits at most `within` for the fence.
    pub async fn restart(&mut self, name: &str, within: Duration) -> Result<()> {
        if self.has_resources {
            self.wait_for(within, &format!("{name} fenced before its restart"), |st| {
                st.values()
                    .flat_map(|s| s.nodes.iter())
                    .any(|n| n.name == name && n.fence.fenced)
                    .then_some(())
            })
            .await?;
        }
        self.start(name)
    }

    pub fn start_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            self.start(&n)?;
        }
        Ok(())
    }

    /// SIGKILL one node (a crash: no goodbye, no flush beyond what was committed), as a power
    /// cut does: its daemon and every process under it frozen, then killed (see
    /// [`crate::power_switch::cut_power`]).
    pub fn kill(&mut self, name: &str) -> Result<()> {
        // Its outlet powers nothing now (a stale pid could name another process later).
        let _ = std::fs::remove_file(self.pid_file(name));
        let node = self.node_mut(name)?;
        let mut child = node.child.take().ok_or_else(|| anyhow!("{name} is not running"))?;
        crate::power_switch::cut_power(child.id() as i32);
        child.wait()?;
        node.lose_volatile_state();
        Ok(())
    }

    /// SIGTERM one node's daemon (what `systemctl stop` sends) and wait at most `within` for it
    /// to exit: a clean stop (see `phalanx_node::lifecycle`). Its exit status.
    pub async fn terminate(&mut self, name: &str, within: Duration) -> Result<std::process::ExitStatus> {
        let child = self
            .node_mut(name)?
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{name} is not running"))?;
        nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        self.wait_exit(name, within).await
    }

    /// Wait at most `within` for one node's daemon to exit by itself. Its exit status.
    pub async fn wait_exit(&mut self, name: &str, within: Duration) -> Result<std::process::ExitStatus> {
        let pid_file = self.pid_file(name);
        let node = self.node_mut(name)?;
        let child = node.child.as_mut().ok_or_else(|| anyhow!("{name} is not running"))?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                node.child = None;
                let _ = std::fs::remove_file(pid_file);
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{name} did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Forget a node whose processes were killed from outside (a lab crash): reap its daemon and
    /// lose what a reboot loses.
    pub fn reap(&mut self, name: &str) -> Result<()> {
        let _ = std::fs::remove_file(self.pid_file(name));
        let node = self.node_mut(name)?;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        node.lose_volatile_state();
        Ok(())
    }
}

impl LocalNode {
    /// What a crash takes with it: the services its agents started and its volatile state.
    fn lose_volatile_state(&self) {
        let node = self;
        // A dead machine answers nothing: the services its `process` agents started (each in its
        // own process group) die with it. Those still under the daemon died with it already;
        // these are the ones that left it (a service that daemonized, or one a daemon of an
        // earlier life started).
        if let Ok(entries) = std::fs::read_dir(node.data_dir.join("agents")) {
            for e in entries.flatten() {
                if e.path().extension().map(|x| x == "pid").unwrap_or(false) {
                    // The pid is the first line (the process agent adds its identity after).
                    if let Some(pid) = std::fs::read_to_string(e.path())
                        .ok()
                        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
                    {
                        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // A crashed machine comes back with an empty /run: its agents' volatile state (where
        // agents such as Dummy keep theirs) is gone with it, and so are the daemons whose pid
        // files live there (ocf:heartbeat:anything's, say).
        let rsctmp = node.data_dir.join("agents/rsctmp");
        if let Ok(entries) = std::fs::read_dir(&rsctmp) {
            for e in entries.flatten() {
                if e.path().extension().map(|x| x == "pid").unwrap_or(false) {
                    if let Some(pid) = std::fs::read_to_string(e.path())
                        .ok()
                        .and_then(|t| t.trim().parse::<i32>().ok())
                    {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&rsctmp);
    }
}

impl LocalCluster {
    pub fn running(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.name.clone())
            .collect()
    }

    pub async fn status(&self, name: &str) -> Result<StatusReport> {
        let api = &self.node(name)?.api;
        let Some((_, client_ns)) = &self.netns else {
            return self.client.status(api).await;
        };
        // In the lab the APIs live in the namespaces: ask from the client namespace.
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", client_ns])
            .arg(&self.exe)
            .args(["--json", "--config"])
            .arg(&self.config_path)
            .args(["--api", api, "status"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(3), cmd.output())
            .await
            .map_err(|_| anyhow!("status of {name}: timed out"))??;
        if !out.status.success() {
            bail!("status of {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The namespace node `name` runs in (lab clusters only).
    pub fn netns_of(&self, name: &str) -> Option<String> {
        let (nodes, _) = self.netns.as_ref()?;
        let i = self.nodes.iter().position(|n| n.name == name)?;
        nodes.get(i).cloned()
    }

    /// Status of every running node that answers.
    pub async fn statuses(&self) -> BTreeMap<String, StatusReport> {
        let mut out = BTreeMap::new();
        for n in self.running() {
            if let Ok(s) = self.status(&n).await {
                out.insert(n, s);
            }
        }
        out
    }

    /// Poll until `cond` holds over the answering running nodes, or fail after `timeout`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&BTreeMap<String, StatusReport>) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let poll = (self.heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(50));
        loop {
            let st = self.statuses().await;
            if let Some(v) = cond(&st) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let mut brief: Vec<String> = st
                    .values()
                    .map(|s| format!("{}: leader={:?} quorum={} term={}", s.node, s.leader, s.quorum, s.term))
                    .collect();
                // A node that does not answer: the end of its log says why (a daemon that
                // failed to start, or exited).
                for n in self.nodes.iter().filter(|n| !st.contains_key(&n.name)) {
                    let log = std::fs::read_to_string(self.log_path(&n.name)).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(3).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    brief.push(format!(
                        "{}: no answer ({}), log ends: {}",
                        n.name,
                        if n.child.is_some() {
                            "daemon started"
                        } else {
                            "daemon not running"
                        },
                        tail.join(" | ")
                    ));
                }
                bail!("timed out after {timeout:?} waiting for {what} ({})", brief.join("; "));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The leader all running nodes agree on, with quorum everywhere and every running node
    /// answering.
    pub fn agreed_leader(&self, st: &BTreeMap<String, StatusReport>) -> Option<String> {
        let running = self.running();
        if st.len() != running.len() || st.is_empty() {
            return None;
        }
        let first = st.values().next()?.leader.clone()?;
        st.values()
            .all(|s| s.quorum && s.leader.as_deref() == Some(first.as_str()))
            .then_some(first)
    }

    /// Wait for a cluster where every running node agrees on one leader and sees every running
    /// node online.
    pub async fn wait_stable(&self, timeout: Duration) -> Result<String> {
        let running = self.running();
        self.wait_for(timeout, "one agreed leader with every running node online", |st| {
            let leader = self.agreed_leader(st)?;
            // Online (heard), and counted towards quorum (heard both ways: a node just back is
            // heard a moment before it says it hears us, and a drill's quorum check counts votes).
            let all_online = st.values().all(|s| {
                s.config_version > 0
                    && s.nodes
                        .iter()
                        .filter(|n| running.contains(&n.name))
                        .all(|n| n.state == "online" || n.state == "standby")
                    && s.votes >= s.voters.iter().filter(|v| running.contains(*v)).count()
            });
            all_online.then_some(leader)
        })
        .await
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pki_paths(&self) -> Result<phalanx_node::pki::Paths> {
        let config = crate::client::load_config(&self.config_path)?;
        Ok(phalanx_node::pki::Paths::beside(&crate::client::key_path(
            &self.config_path,
            &config,
        )))
    }

    /// An HTTPS client of the cluster's nodes as an operator has it: trusting the cluster CA,
    /// presenting no certificate (for tests that build requests by hand; see [`Self::url`]).
    pub fn operator_http(&self) -> Result<reqwest::Client> {
        let ca = phalanx_node::pki::load_ca_cert(&self.pki_paths()?)?;
        Ok(transport::Tls::client(&ca)?.http_client(Duration::from_secs(10))?)
    }

    /// An HTTPS client presenting node `name`'s certificate (as the node's own peers do; the
    /// node issued it at its first start).
    pub fn node_http(&self, name: &str) -> Result<reqwest::Client> {
        let paths = self.pki_paths()?;
        let ca = phalanx_node::pki::load_ca_cert(&paths)?;
        let cert = std::fs::read_to_string(paths.node_cert(name))?;
        let key = std::fs::read_to_string(paths.node_key(name))?;
        Ok(transport::Tls::node(&ca, &cert, &key)?.http_client(Duration::from_secs(10))?)
    }

    /// How many times `what` appears in node `name`'s log (0 if it has none yet).
    pub fn log_count(&self, name: &str, what: &str) -> usize {
        std::fs::read_to_string(self.log_path(name))
            .unwrap_or_default()
            .matches(what)
            .count()
    }

    /// The operators' API token (from the cluster's `phalanx.key`).
    pub fn api_token(&self) -> Result<String> {
        Ok(phalanx_node::ClusterKey::load(&self.dir().join("phalanx.key"))?.api_token())
    }

    /// GET `path` from node `name`'s API as an operator (its token, the cluster CA): the body.
    pub async fn api_get(&self, name: &str, path: &str) -> Result<String> {
        let api = &self.node(name)?.api;
        let r = self
            .operator_http()?
            .get(Self::url(api, path))
            .bearer_auth(self.api_token()?)
            .send()
            .await?;
        Ok(r.error_for_status()?.text().await?)
    }

    /// The URL of `path` on the node endpoint `api` (HTTPS).
    pub fn url(api: &str, path: &str) -> String {
        transport::url(api, path)
    }

    pub fn stop_all(&mut self) {
        let names: Vec<String> = self.running();
        for n in names {
            let _ = self.kill(&n);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
        for mut child in [self.switch.take(), self.witness_child.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_core::scheduler::Role;

    #[test]
    fn runs_on_names_a_primary_else_a_started_node_and_never_a_failed_one() {
        let mut s = crate::render::tests::report(true);
        assert_eq!(runs_on(&s, "web").as_deref(), Some("n1"));
        assert_eq!(runs_on(&s, "shop"), None);
        // Failed where it was, started elsewhere: the started node.
        let web = &mut s.resources[0];
        web.running = [("n1".to_string(), Role::Failed), ("n2".to_string(), Role::Started)].into();
        assert_eq!(runs_on(&s, "web").as_deref(), Some("n2"));
        // Failed only: nowhere.
        s.resources[0].running = [("n1".to_string(), Role::Failed)].into();
        assert_eq!(runs_on(&s, "web"), None);
        // A clone's instances (one entry per member): the promoted one's node, on any entry.
        let mut replica = s.resources[0].clone();
        replica.id = "pg:0".into();
        replica.parent = Some("pg".into());
        replica.running = [("n1".to_string(), Role::Started)].into();
        let mut primary = replica.clone();
        primary.id = "pg:1".into();
        primary.running = [("n3".to_string(), Role::Promoted)].into();
        s.resources.extend([replica, primary]);
        assert_eq!(runs_on(&s, "pg").as_deref(), Some("n3"));
    }
}
