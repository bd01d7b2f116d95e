//! The named peer for leader failover: a 3-member etcd cluster (Debian's etcd-server) on
//! loopback, killed the same way (SIGKILL of the leader) in the same benchmark run. etcd has no
//! failure detector separate from its election, so only leader failover is compared. etcd's
//! failover is observed by polling `/v3/maintenance/status` on the survivors every 5 ms, a bias
//! of at most ~6 ms against etcd.
//!
//! The session store benchmark (`bench_sessions`) uses the same cluster as its replicated peer
//! (any member count, [`EtcdCluster::with_members`]; its client addresses and pids for the load
//! generator and the CPU figures). etcd fsyncs its WAL before acknowledging a write by default
//! (and nothing here turns that off): its data directories are under the system's temp dir,
//! on the same disk as phalanx's.

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";

struct Member {
    name: String,
    client: String,
    peer: String,
    child: Option<Child>,
}

pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    initial: String,
    heartbeat_ms: u64,
    election_ms: u64,
    http: reqwest::Client,
}

fn port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn version() -> Option<String> {
    let out = Command::new(ETCD).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.replace("etcd Version: ", "etcd "))
}

impl EtcdCluster {
    pub fn create(heartbeat_ms: u64, election_ms: u64) -> Result<Self> {
        Self::with_members(3, heartbeat_ms, election_ms)
    }

    /// A cluster of `n` members (not started: [`EtcdCluster::start_all`]).
    pub fn with_members(n: usize, heartbeat_ms: u64, election_ms: u64) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("phalanx-etcd-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let mut members = Vec::new();
        for i in 1..=n {
            members.push(Member {
                name: format!("e{i}"),
                client: format!("127.0.0.1:{}", port()?),
                peer: format!("127.0.0.1:{}", port()?),
                child: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        Ok(EtcdCluster {
            dir,
            members,
            initial,
            heartbeat_ms,
            election_ms,
            http: reqwest::Client::builder().timeout(Duration::from_millis(200)).build()?,
        })
    }

    fn start(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let child = Command::new(ETCD)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "bench"])
            .args(["--heartbeat-interval", &self.heartbeat_ms.to_string()])
            .args(["--election-timeout", &self.election_ms.to_string()])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?;
        m.child = Some(child);
        Ok(())
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.members[i].child.take() {
            kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL)?;
            c.wait()?;
        }
        Ok(())
    }

    /// (this member's id, the leader it reports).
    async fn status(&self, i: usize) -> Result<(String, String)> {
        let v: serde_json::Value = self
            .http
            .post(format!("http://{}/v3/maintenance/status", self.members[i].client))
            .body("{}")
            .send()
            .await?
            .json()
            .await?;
        let me = v["header"]["member_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no member_id"))?;
        let leader = v["leader"].as_str().unwrap_or("0");
        Ok((me.to_string(), leader.to_string()))
    }

    /// Wait until every running member reports the same leader; returns the leader's index.
    async fn stable_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for i in 0..self.members.len() {
                if self.members[i].child.is_some() {
                    if let Ok((me, l)) = self.status(i).await {
                        ids.push((i, me));
                        leaders.push(l);
                    }
                }
            }
            let running = self.members.iter().filter(|m| m.child.is_some()).count();
            if leaders.len() == running && leaders.iter().all(|l| l == &leaders[0] && l != "0") {
                if let Some((i, _)) = ids.iter().find(|(_, me)| *me == leaders[0]) {
                    return Ok(*i);
                }
            }
            if Instant::now() > deadline {
                bail!("etcd: no stable leader after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL the leader and return ms until a survivor reports a new leader; then restart it.
    pub async fn kill_leader(&mut self, timeout: Duration) -> Result<u64> {
        let leader = self.stable_leader(timeout).await?;
        let (old_id, _) = self.status(leader).await?;
        let t0 = Instant::now();
        self.kill(leader)?;
        let ms = loop {
            let mut found = false;
            for i in (0..self.members.len()).filter(|i| *i != leader) {
                if let Ok((_, l)) = self.status(i).await {
                    if l != "0" && l != old_id {
                        found = true;
                        break;
                    }
                }
            }
            if found {
                break t0.elapsed().as_millis() as u64;
            }
            if t0.elapsed() > timeout {
                bail!("etcd: no new leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        self.start(leader)?;
        Ok(ms)
    }

    pub fn start_all(&mut self) -> Result<()> {
        (0..self.members.len()).try_for_each(|i| self.start(i))
    }

    /// Wait until every running member reports the same leader (bounded).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.stable_leader(timeout).await.map(|_| ())
    }

    /// The members' client addresses (HTTP: the v3 gRPC gateway).
    pub fn client_addrs(&self) -> Result<Vec<std::net::SocketAddr>> {
        self.members
            .iter()
            .map(|m| {
                m.client
                    .parse()
                    .with_context(|| format!("etcd client address {}", m.client))
            })
            .collect()
    }

    /// The running members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(|c| c.id()))
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
