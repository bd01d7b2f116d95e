//! Running fence devices: a fence-agents program called exactly as Pacemaker's fencer calls it
//! (`key=value` lines on stdin, exit 0 = success; `status`: 0 on, 2 off, else error), or the
//! built-in HTTP power switch (`phalanx power-switch`). A target is fenced level by level: every
//! device of a level must succeed, each with its own delay, timeout and retries; the first level
//! that succeeds confirms the target down. Secrets are read from their files at each call and
//! never logged.

use phalanx_core::fencing::{self, FenceAgent, FenceConfig, FenceDevice, PowerStatus};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("no fence device can fence {0}")]
    NoDevice(String),
    #[error("fencing {target} failed at every level: {tried}")]
    AllLevelsFailed { target: String, tried: String },
    #[error("{device}: {message}")]
    Device { device: String, message: String },
}

fn dev_err(d: &FenceDevice, message: impl Into<String>) -> FenceError {
    FenceError::Device {
        device: d.name.clone(),
        message: message.into(),
    }
}

/// The future of a faked fence device call.
pub type FakeDeviceCall<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<PowerStatus, FenceError>> + Send + 'a>>;

/// What stands in for every fence device of one node in tests (the simulation's power
/// switch, `testing::world`): one device call, `action` being `monitor`, `status`, `off`,
/// `reboot` or `on`. Levels, delays and retries stay the real ones.
pub trait FenceSeam: Send + Sync {
    fn call<'a>(&'a self, device: &'a FenceDevice, action: &'a str, target: Option<&'a str>) -> FakeDeviceCall<'a>;
}

/// Fence attempts this node ran since it started, by (device, level, result: success |
/// failure): one per device call of a level (retries inside a call count once). Kept here, not
/// in the replicated state (whose fence records keep the last outcome per target), so that a
/// fence costs no extra log entry; `/metrics` serves them as counters, per node.
pub type FenceAttempts = BTreeMap<(String, u32, &'static str), u64>;

/// Runs the devices of one cluster's fencing config.
pub struct Fencer {
    attempts: std::sync::Mutex<FenceAttempts>,
    /// The devices and levels of the config the node runs (a committed config replaces them).
    cfg: std::sync::RwLock<std::sync::Arc<FenceConfig>>,
    http: reqwest::Client,
    /// A test seam: when set, device calls go to it (None in the product).
    fake: Option<std::sync::Arc<dyn FenceSeam>>,
    /// `phalanx drill fence-fail`: this many of this node's next fence operations fail as if
    /// every device failed (see [`Fencer::fail_next`]).
    drill_failures: std::sync::atomic::AtomicU32,
}

impl Fencer {
    /// `http` is the client of HTTP devices (see `transport::device_client`).
    pub fn new(cfg: FenceConfig, http: reqwest::Client) -> Fencer {
        Fencer {
            cfg: std::sync::RwLock::new(std::sync::Arc::new(cfg)),
            http,
            fake: None,
            attempts: std::sync::Mutex::default(),
            drill_failures: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// `phalanx drill fence-fail`: make this node's next `operations` fence operations fail, as
    /// if every device had failed (0: heal). A drill arms it after its own power-off, so that
    /// the cluster's fence of the lost node fails and is retried as it would against a broken
    /// device.
    pub fn fail_next(&self, operations: u32) {
        self.drill_failures
            .store(operations, std::sync::atomic::Ordering::SeqCst);
    }

    /// The fence attempts this node ran since it started (see [`FenceAttempts`]).
    pub fn attempts(&self) -> FenceAttempts {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count_attempt(&self, device: &str, level: usize, ok: bool) {
        let key = (device.to_string(), level as u32, if ok { "success" } else { "failure" });
        *self
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    /// This fencer with its device calls going to `devices` (tests: the simulation's power
    /// switch).
    pub fn with_fake(self, devices: std::sync::Arc<dyn FenceSeam>) -> Fencer {
        Fencer {
            fake: Some(devices),
            ..self
        }
    }

    pub fn config(&self) -> std::sync::Arc<FenceConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fence with these devices and levels from now on (a fence in progress keeps its own).
    pub fn set_config(&self, cfg: FenceConfig) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(cfg);
    }

    /// Fence `target`: try its levels in order until one fully succeeds. Returns which level
    /// and devices did it. `seed` draws the random part of each device's delay.
    pub async fn fence(&self, target: &str, seed: u64) -> Result<String, FenceError> {
        let drill = self.drill_failures.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
        if let Ok(left) = drill {
            tracing::warn!(%target, left = left - 1, "drill fence-fail: this fence fails on purpose");
            return Err(FenceError::AllLevelsFailed {
                target: target.to_string(),
                tried: format!(
                    "drill fence-fail: the fence devices fail on purpose ({} more)",
                    left - 1
                ),
            });
        }
        let cfg = self.config();
        let levels = cfg.levels_for(target);
        if levels.is_empty() {
            return Err(FenceError::NoDevice(target.to_string()));
        }
        let action = match cfg.action {
            fencing::FenceAction::Reboot => "reboot",
            fencing::FenceAction::Off => "off",
        };
        let mut tried = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            let mut failed = None;
            for d in level {
                let delay = d.delay_base + random_upto(d.delay_max, seed ^ i as u64);
                if !delay.is_zero() {
                    tracing::info!(device = %d.name, %target, ?delay, "fence delay");
                    tokio::time::sleep(delay).await;
                }
                let r = self.with_retries(d, action, target).await;
                self.count_attempt(&d.name, i + 1, r.is_ok());
                if let Err(e) = r {
                    failed = Some(e.to_string());
                    break;
                }
            }
            let names: Vec<&str> = level.iter().map(|d| d.name.as_str()).collect();
            match failed {
                None => {
                    let by = format!("level {}: {}", i + 1, names.join(" + "));
                    tracing::warn!(%target, %by, action, "fenced");
                    return Ok(by);
                }
                Some(e) => {
                    tracing::error!(%target, level = i + 1, error = %e, "fence level failed");
                    tried.push(format!("level {}: {e}", i + 1));
                }
            }
        }
        Err(FenceError::AllLevelsFailed {
            target: target.to_string(),
            tried: tried.join("; "),
        })
    }

    async fn with_retries(&self, d: &FenceDevice, action: &str, target: &str) -> Result<(), FenceError> {
        let mut last = None;
        for attempt in 0..=d.retries {
            match self.call(d, action, Some(target)).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(device = %d.name, %target, attempt, error = %e, "fence device call failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| dev_err(d, "no attempt made")))
    }

    /// Check a device is reachable and working (`monitor`).
    pub async fn monitor(&self, d: &FenceDevice) -> Result<(), FenceError> {
        self.call(d, "monitor", None).await.map(|_| ())
    }

    /// Power status of `target` through device `d`.
    pub async fn status(&self, d: &FenceDevice, target: &str) -> Result<PowerStatus, FenceError> {
        self.call(d, "status", Some(target)).await
    }

    /// One call of one device. For `status` the answer is the power state; for every other
    /// action success is `On`.
    async fn call(&self, d: &FenceDevice, action: &str, target: Option<&str>) -> Result<PowerStatus, FenceError> {
        if let Some(fake) = &self.fake {
            return fake.call(d, action, target).await;
        }
        match &d.agent {
            FenceAgent::Program(p) => self.call_program(d, p, action, target).await,
            FenceAgent::HttpSwitch => self.call_http(d, action, target).await,
        }
    }

    async fn call_program(
        &self,
        d: &FenceDevice,
        program: &str,
        action: &str,
        target: Option<&str>,
    ) -> Result<PowerStatus, FenceError> {
        let mut secrets = BTreeMap::new();
        for (k, path) in &d.secret_files {
            if let Err(mode) = crate::key::private_mode(std::path::Path::new(path)) {
                return Err(dev_err(
                    d,
                    format!("secret file for {k} ({path}) is readable by group or others (mode {mode:04o}): chmod 600 {path}"),
                ));
            }
            let v =
                std::fs::read_to_string(path).map_err(|e| dev_err(d, format!("secret file for {k} ({path}): {e}")))?;
            secrets.insert(k.clone(), v.trim_end_matches(['\n', '\r']).to_string());
        }
        let input = fencing::agent_stdin(d, action, target, &secrets);
        let mut child = tokio::process::Command::new(program_path(program))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| dev_err(d, format!("cannot run {program}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .await
                .map_err(|e| dev_err(d, format!("writing to {program}: {e}")))?;
        }
        let out = match tokio::time::timeout(d.timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|e| dev_err(d, format!("{program}: {e}")))?,
            Err(_) => {
                return Err(dev_err(
                    d,
                    format!(
                        "{program} {action} timed out after {}",
                        phalanx_core::config::format_duration(d.timeout)
                    ),
                ))
            }
        };
        let code = out.status.code().unwrap_or(-1);
        if action == "status" {
            return match fencing::status_of(code) {
                PowerStatus::Error => Err(dev_err(
                    d,
                    format!("{program} status: exit {code}: {}", last_line(&out)),
                )),
                s => Ok(s),
            };
        }
        if code == 0 {
            Ok(PowerStatus::On)
        } else {
            Err(dev_err(
                d,
                format!("{program} {action}: exit {code}: {}", last_line(&out)),
            ))
        }
    }

    async fn call_http(&self, d: &FenceDevice, action: &str, target: Option<&str>) -> Result<PowerStatus, FenceError> {
        let base = d.params.get("url").map(|u| u.trim_end_matches('/')).unwrap_or("");
        let req = match (action, target) {
            ("monitor", _) | (_, None) => self.http.get(format!("{base}/outlets")),
            ("status", Some(t)) => self.http.get(format!("{base}/outlets/{}", d.plug(t))),
            (a, Some(t)) => self.http.post(format!("{base}/outlets/{}/{a}", d.plug(t))),
        };
        let resp = req
            .timeout(d.timeout)
            .send()
            .await
            .map_err(|e| dev_err(d, format!("{action}: {e}")))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(dev_err(d, format!("{action}: HTTP {status}: {}", body.trim())));
        }
        if action == "status" {
            let v: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| dev_err(d, format!("status answer: {e}")))?;
            return match v.get("state").and_then(|s| s.as_str()) {
                Some("on") => Ok(PowerStatus::On),
                Some("off") => Ok(PowerStatus::Off),
                other => Err(dev_err(d, format!("status answer has no state on|off: {other:?}"))),
            };
        }
        Ok(PowerStatus::On)
    }
}

/// Why the fence-agents program `p` (as written in the config) cannot be run on this machine,
/// looked up as [`program_path`] runs it: a path as given, a bare name in /usr/sbin, then on
/// PATH. None: it can.
pub fn program_problem(p: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.permissions().mode() & 0o111 != 0)
    };
    let found = if p.contains('/') {
        Some(PathBuf::from(p))
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::iter::once(PathBuf::from("/usr/sbin"))
            .chain(std::env::split_paths(&path))
            .map(|d| d.join(p))
            .find(|c| runnable(c).is_some())
    };
    match found.as_deref().map(|f| (f, runnable(f))) {
        Some((_, Some(true))) => None,
        Some((f, Some(false))) => Some(format!(
            "{p} is not executable ({}: chmod +x, or install fence-agents)",
            f.display()
        )),
        Some((f, None)) => Some(format!(
            "{p} is not installed on this machine ({} does not exist)",
            f.display()
        )),
        None => Some(format!(
            "{p} is not installed on this machine (not in /usr/sbin nor on PATH; Debian's fence-agents installs them: apt-get install fence-agents)"
        )),
    }
}

/// fence-agents install to /usr/sbin; a bare name is looked up there, then on PATH.
fn program_path(p: &str) -> PathBuf {
    if p.contains('/') {
        return PathBuf::from(p);
    }
    let sbin = PathBuf::from("/usr/sbin").join(p);
    if sbin.is_file() {
        sbin
    } else {
        PathBuf::from(p)
    }
}

fn last_line(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

/// A delay in [0, max] from `seed` (splitmix64), so two nodes with different seeds rarely pick
/// the same instant.
fn random_upto(max: Duration, seed: u64) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_millis(z % (max.as_millis() as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_random_fence_delay_stays_within_its_bound_and_differs_between_seeds() {
        assert_eq!(random_upto(Duration::ZERO, 7), Duration::ZERO);
        let max = Duration::from_secs(5);
        let draws: Vec<Duration> = (0..200u64).map(|s| random_upto(max, s)).collect();
        assert!(draws.iter().all(|d| *d <= max));
        // Deterministic per seed, so a test can replay it ...
        assert_eq!(random_upto(max, 42), random_upto(max, 42));
        // ... and spread out, so two racing nodes rarely wait the same time.
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 150, "only {} distinct delays in 200", distinct.len());
        assert!(draws.iter().any(|d| *d < max / 4) && draws.iter().any(|d| *d > max * 3 / 4));
    }
}
