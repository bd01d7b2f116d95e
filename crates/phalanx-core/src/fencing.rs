//! Fencing (STONITH) as configured and reasoned about, without IO: the `[[fence_device]]` and
//! `[[fence_level]]` sections and their validation, which devices fence a node and in which
//! order (levels), the exact text a fence-agents program reads on stdin (as Pacemaker's fencer
//! writes it), what its exit code means, and the retry backoff after every level failed.
//! Running the devices is the node's job (`phalanx_node::fence`).

use crate::diag::Checker;
use crate::duration::checked_or;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// The built-in HTTP power switch device (see `phalanx power-switch`).
pub const HTTP_SWITCH: &str = "http-switch";

/// What drives a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceAgent {
    /// A fence-agents program (`fence_ipmilan`, `fence_dummy`...), looked up in /usr/sbin unless
    /// given as a path.
    Program(String),
    /// The built-in HTTP power switch: `params.url` is its base URL.
    HttpSwitch,
}

/// One `[[fence_device]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceDevice {
    pub name: String,
    pub agent: FenceAgent,
    /// Passed to the agent as `key=value` lines.
    pub params: BTreeMap<String, String>,
    /// Parameter → file whose contents are its value (read at each call, never logged).
    pub secret_files: BTreeMap<String, String>,
    /// Node → plug (port) on this device. Empty: the device fences any node, plug = node name.
    pub host_map: BTreeMap<String, String>,
    #[serde(with = "crate::duration::duration_ms")]
    pub timeout: Duration,
    /// Further attempts after a failed one, within one level.
    pub retries: u32,
    /// A fixed delay before this device fences (Pacemaker's pcmk_delay_base).
    #[serde(with = "crate::duration::duration_ms")]
    pub delay_base: Duration,
    /// Plus a random delay up to this (pcmk_delay_max): two nodes racing to fence each other
    /// then almost never shoot at the same instant.
    #[serde(with = "crate::duration::duration_ms")]
    pub delay_max: Duration,
    /// How often the device is checked (`monitor`); zero: never.
    #[serde(with = "crate::duration::duration_ms")]
    pub monitor_interval: Duration,
}

impl FenceDevice {
    pub fn can_fence(&self, node: &str) -> bool {
        self.host_map.is_empty() || self.host_map.contains_key(node)
    }

    /// The plug (port) that powers `node` on this device.
    pub fn plug(&self, node: &str) -> String {
        self.host_map.get(node).cloned().unwrap_or_else(|| node.to_string())
    }
}

/// One `[[fence_level]]`: to fence `target` at this level, every device must succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceLevel {
    pub target: String,
    pub level: u32,
    pub devices: Vec<String>,
}

/// What fencing does to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FenceAction {
    /// Power-cycle it (Pacemaker's default stonith-action): it comes back clean.
    #[default]
    Reboot,
    /// Leave it off until an operator turns it on.
    Off,
}

/// Every device and level of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FenceConfig {
    pub devices: Vec<FenceDevice>,
    pub levels: Vec<FenceLevel>,
    pub action: FenceAction,
}

impl FenceConfig {
    pub fn device(&self, name: &str) -> Option<&FenceDevice> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The levels that fence `target`, in the order they are tried: its `[[fence_level]]`s by
    /// level number when it has any, else every device able to fence it, one level each, in
    /// config order (Pacemaker's behaviour without a fencing topology).
    pub fn levels_for(&self, target: &str) -> Vec<Vec<&FenceDevice>> {
        let mut mine: Vec<&FenceLevel> = self.levels.iter().filter(|l| l.target == target).collect();
        if mine.is_empty() {
            return self
                .devices
                .iter()
                .filter(|d| d.can_fence(target))
                .map(|d| vec![d])
                .collect();
        }
        mine.sort_by_key(|l| l.level);
        mine.iter()
            .map(|l| l.devices.iter().filter_map(|d| self.device(d)).collect())
            .collect()
    }

    pub fn can_fence(&self, target: &str) -> bool {
        !self.levels_for(target).is_empty()
    }
}

/// The stdin of a fence-agents program, as Pacemaker's fencer writes it: one `key=value` per
/// line: the action, the plug (when the device needs one), the device params, the secrets.
pub fn agent_stdin(
    device: &FenceDevice,
    action: &str,
    target: Option<&str>,
    secrets: &BTreeMap<String, String>,
) -> String {
    let mut s = format!("action={action}\n");
    if let Some(t) = target {
        s += &format!("plug={}\n", device.plug(t));
    }
    for (k, v) in device.params.iter().chain(secrets) {
        s += &format!("{k}={v}\n");
    }
    s
}

/// What a `status` call's exit code means (fence-agents API: 0 on, 2 off, anything else an
/// error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerStatus {
    On,
    Off,
    Error,
}

pub fn status_of(exit: i32) -> PowerStatus {
    match exit {
        0 => PowerStatus::On,
        2 => PowerStatus::Off,
        _ => PowerStatus::Error,
    }
}

/// How long to wait before fencing a node again after `failures` attempts that all failed:
/// 1 s, 2 s, 4 s... capped at 60 s.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 1).min(6)).min(Duration::from_secs(60))
}

// ---- config ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    name: Option<Spanned<String>>,
    agent: Option<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    secret_files: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    host_map: BTreeMap<String, Spanned<toml::Value>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    delay_base: Option<Spanned<String>>,
    delay_max: Option<Spanned<String>>,
    monitor_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLevel {
    target: Spanned<String>,
    level: Spanned<i64>,
    devices: Spanned<Vec<Spanned<String>>>,
}

fn value_string(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Validate the fencing sections against the node names; `agent_spans` learns where each
/// device's agent is written.
pub(crate) fn validate(
    c: &mut Checker,
    devices: Vec<Spanned<RawDevice>>,
    levels: Vec<Spanned<RawLevel>>,
    action: FenceAction,
    nodes: &BTreeSet<String>,
    agent_spans: &mut BTreeMap<String, Range<usize>>,
) -> FenceConfig {
    let mut out = FenceConfig {
        action,
        ..FenceConfig::default()
    };
    for d in devices {
        let span = d.get_ref().agent.as_ref().map(|a| a.span());
        if let Some(device) = device(c, d, &out, nodes) {
            agent_spans.insert(device.name.clone(), span.unwrap_or(0..0));
            out.devices.push(device);
        }
    }
    // (target, level) already defined
    let mut seen: BTreeSet<(String, i64)> = BTreeSet::new();
    for l in levels {
        if let Some(level) = level(c, l, &out, nodes, &mut seen) {
            out.levels.push(level);
        }
    }
    out
}

/// One `[[fence_device]]`, checked against the devices before it and the node names.
fn device(c: &mut Checker, d: Spanned<RawDevice>, out: &FenceConfig, nodes: &BTreeSet<String>) -> Option<FenceDevice> {
    let span = d.span();
    let d = d.into_inner();
    let Some(name) = d.name else {
        c.error(span, "[[fence_device]] needs a `name`");
        return None;
    };
    if out.device(name.get_ref()).is_some() {
        c.error(name.span(), format!("duplicate fence device {:?}", name.get_ref()));
        return None;
    }
    let agent = agent(c, &d.agent, name.get_ref(), &span)?;
    let params = params(c, &d.params, name.get_ref());
    if agent == FenceAgent::HttpSwitch && !params.contains_key("url") {
        c.error(
            span.clone(),
            format!(
                "fence device {}: \"{HTTP_SWITCH}\" needs params.url (e.g. \"http://10.77.0.50:7500\")",
                name.get_ref()
            ),
        );
    }
    let mut host_map = BTreeMap::new();
    for (node, plug) in &d.host_map {
        if !nodes.contains(node) {
            c.error(
                plug.span(),
                format!(
                    "fence device {}: host_map names {node:?}, which is not a [[node]]",
                    name.get_ref()
                ),
            );
            continue;
        }
        host_map.insert(node.clone(), value_string(plug.get_ref()));
    }
    let retries = match &d.retries {
        None => 2,
        Some(r) if (0..=10).contains(r.get_ref()) => *r.get_ref() as u32,
        Some(r) => {
            c.error(r.span(), "retries must be from 0 to 10");
            2
        }
    };
    let timeout = checked_or(c, "timeout", &d.timeout, Duration::from_secs(20));
    if let Some(t) = &d.timeout {
        if timeout.is_zero() {
            c.error(t.span(), "timeout must be above 0");
        }
    }
    Some(FenceDevice {
        name: name.get_ref().clone(),
        agent,
        params,
        secret_files: d
            .secret_files
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect(),
        host_map,
        timeout,
        retries,
        delay_base: checked_or(c, "delay_base", &d.delay_base, Duration::ZERO),
        delay_max: checked_or(c, "delay_max", &d.delay_max, Duration::ZERO),
        monitor_interval: checked_or(c, "monitor_interval", &d.monitor_interval, Duration::from_secs(60)),
    })
}

/// What drives a device: a fence-agents program, or the built-in HTTP switch.
fn agent(c: &mut Checker, v: &Option<Spanned<String>>, name: &str, span: &Range<usize>) -> Option<FenceAgent> {
    match v {
        None => {
            c.error(span.clone(), format!("fence device {name} needs an `agent` (a fence-agents program such as \"fence_ipmilan\", or \"{HTTP_SWITCH}\")"));
            None
        }
        Some(a) if a.get_ref() == HTTP_SWITCH => Some(FenceAgent::HttpSwitch),
        Some(a) => {
            let prog = a.get_ref();
            let base = prog.rsplit('/').next().unwrap_or("");
            if !base.starts_with("fence_") || base.contains(char::is_whitespace) {
                c.error(
                    a.span(),
                    format!(
                        "fence device agent {prog:?} is not a fence-agents program (fence_*) nor \"{HTTP_SWITCH}\""
                    ),
                );
                return None;
            }
            Some(FenceAgent::Program(prog.clone()))
        }
    }
}

/// A device's params (those that may be passed to its agent; the others are reported).
fn params(c: &mut Checker, raw: &BTreeMap<String, Spanned<toml::Value>>, name: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    for (k, v) in raw {
        let s = value_string(v.get_ref());
        if s.contains('\n') || k.contains('=') || k.contains('\n') {
            c.error(
                v.span(),
                format!("fence device param {k:?}: a key may not contain '=' and neither a key nor a value a newline"),
            );
            continue;
        }
        if ["action", "plug", "port", "nodename"].contains(&k.as_str()) {
            c.error(
                v.span(),
                format!("fence device param {k:?} is set by phalanx for each call; remove it"),
            );
            continue;
        }
        if ["password", "passwd"].contains(&k.as_str()) {
            c.warn(v.span(), format!("fence device {name}: a password in the config is replicated and shown to every reader; put it in a file and name it in `secret_files = {{ {k} = \"/etc/phalanx/...\" }}`"));
        }
        params.insert(k.clone(), s);
    }
    params
}

/// One `[[fence_level]]`, checked against the devices and the levels before it.
fn level(
    c: &mut Checker,
    l: Spanned<RawLevel>,
    out: &FenceConfig,
    nodes: &BTreeSet<String>,
    seen: &mut BTreeSet<(String, i64)>,
) -> Option<FenceLevel> {
    let l = l.into_inner();
    let target = l.target.get_ref();
    if !nodes.contains(target) {
        c.error(
            l.target.span(),
            format!("fence_level target {target:?} is not a [[node]]"),
        );
        return None;
    }
    if !(1..=9).contains(l.level.get_ref()) {
        c.error(l.level.span(), "a fence level is a number from 1 to 9");
        return None;
    }
    if !seen.insert((target.clone(), *l.level.get_ref())) {
        c.error(
            l.level.span(),
            format!("{target} already has a fence level {}", l.level.get_ref()),
        );
        return None;
    }
    if l.devices.get_ref().is_empty() {
        c.error(l.devices.span(), "a fence level needs at least one device");
        return None;
    }
    let mut devices = Vec::new();
    for d in l.devices.get_ref() {
        match out.device(d.get_ref()) {
            None => c.error(d.span(), format!("no [[fence_device]] is named {:?}", d.get_ref())),
            Some(dev) if !dev.can_fence(target) => c.error(
                d.span(),
                format!(
                    "fence device {} cannot fence {target}: its host_map does not name it",
                    d.get_ref()
                ),
            ),
            Some(_) => devices.push(d.get_ref().clone()),
        }
    }
    Some(FenceLevel {
        target: target.clone(),
        level: *l.level.get_ref() as u32,
        devices,
    })
}

/// A line for `config check`: how a node is fenced.
pub fn describe(cfg: &FenceConfig, node: &str) -> String {
    let levels = cfg.levels_for(node);
    if levels.is_empty() {
        return format!("{node}: no fence device");
    }
    let parts: Vec<String> = levels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let names: Vec<&str> = l.iter().map(|d| d.name.as_str()).collect();
            format!("level {}: {}", i + 1, names.join(" + "))
        })
        .collect();
    format!("{node}: {}", parts.join(", then "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, hosts: &[(&str, &str)]) -> FenceDevice {
        FenceDevice {
            name: name.into(),
            agent: FenceAgent::Program("fence_dummy".into()),
            params: [("ip".to_string(), "10.0.0.9".to_string())].into(),
            secret_files: BTreeMap::new(),
            host_map: hosts.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            timeout: Duration::from_secs(20),
            retries: 2,
            delay_base: Duration::ZERO,
            delay_max: Duration::ZERO,
            monitor_interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn levels_default_to_every_capable_device_in_order() {
        let cfg = FenceConfig {
            devices: vec![
                dev("ipmi", &[("n1", "1")]),
                dev("pdu", &[]),
                dev("other", &[("n2", "7")]),
            ],
            levels: vec![],
            action: FenceAction::Reboot,
        };
        let names = |t: &str| -> Vec<Vec<String>> {
            cfg.levels_for(t)
                .iter()
                .map(|l| l.iter().map(|d| d.name.clone()).collect())
                .collect()
        };
        assert_eq!(names("n1"), vec![vec!["ipmi"], vec!["pdu"]]);
        assert_eq!(names("n2"), vec![vec!["pdu"], vec!["other"]]);
        assert_eq!(cfg.device("ipmi").map(|d| d.plug("n1")), Some("1".into()));
        assert_eq!(cfg.device("pdu").map(|d| d.plug("n3")), Some("n3".into()));
    }

    #[test]
    fn configured_levels_go_by_number_and_need_all_their_devices() {
        let cfg = FenceConfig {
            devices: vec![dev("ipmi", &[]), dev("pdu-a", &[]), dev("pdu-b", &[])],
            levels: vec![
                FenceLevel {
                    target: "n1".into(),
                    level: 2,
                    devices: vec!["pdu-a".into(), "pdu-b".into()],
                },
                FenceLevel {
                    target: "n1".into(),
                    level: 1,
                    devices: vec!["ipmi".into()],
                },
            ],
            action: FenceAction::Reboot,
        };
        assert_eq!(describe(&cfg, "n1"), "n1: level 1: ipmi, then level 2: pdu-a + pdu-b");
        // n2 has no levels of its own: every device, one level each.
        assert_eq!(
            describe(&cfg, "n2"),
            "n2: level 1: ipmi, then level 2: pdu-a, then level 3: pdu-b"
        );
    }

    #[test]
    fn the_agent_reads_key_value_lines() {
        let d = dev("ipmi", &[("n1", "3")]);
        let secrets = [("password".to_string(), "s3cret".to_string())].into();
        assert_eq!(
            agent_stdin(&d, "off", Some("n1"), &secrets),
            "action=off\nplug=3\nip=10.0.0.9\npassword=s3cret\n"
        );
        assert_eq!(
            agent_stdin(&d, "monitor", None, &BTreeMap::new()),
            "action=monitor\nip=10.0.0.9\n"
        );
    }

    #[test]
    fn exit_codes_and_backoff() {
        assert_eq!(status_of(0), PowerStatus::On);
        assert_eq!(status_of(2), PowerStatus::Off);
        assert_eq!(status_of(1), PowerStatus::Error);
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(60));
    }
}
