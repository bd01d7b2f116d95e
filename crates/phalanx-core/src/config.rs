//! The desired configuration of a cluster: one TOML file, parsed with spans so that every
//! problem is reported as `FILE:LINE:COL: severity: message`, and validated as a whole (all
//! problems at once, not just the first). Pure: the caller reads the file and passes its text.

use crate::diag::{self, Checker};
use crate::duration;
use crate::fencing::{self, FenceAction, FenceConfig};
use crate::model::valid_name;
use crate::ocf::AgentMeta;
use crate::quorum::{NoQuorumPolicy, MAX_VOTERS};
use crate::resources::{self, AgentSpec, ParamProblem, Resources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

// Diagnostics, durations and the fencing mode live in their own modules; these paths stay for
// the code in other crates that names them here.
pub use crate::diag::{line_col, Diagnostic, Severity};
pub use crate::duration::{format_duration, parse_duration, DurationError};
pub use crate::model::Fencing;

/// The port a node's API listens on when its `api` is not given (on its first link's address).
pub const DEFAULT_API_PORT: u16 = 7480;
/// Allowed heartbeat intervals.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub name: String,
    #[serde(with = "crate::duration::duration_ms")]
    pub heartbeat_interval: Duration,
    pub dead_after: u32,
    pub no_quorum_policy: NoQuorumPolicy,
    /// Path of the cluster key, relative to the config file's folder unless absolute.
    pub key_file: String,
    pub fencing: Fencing,
    /// Pacemaker's priority-fencing-delay: a fence of a node that runs resources waits this long
    /// first, so if two sides ever race to fence each other, the one running the services shoots
    /// first and survives. 0: no delay.
    #[serde(default, with = "crate::duration::duration_ms")]
    pub priority_fence_delay: Duration,
    /// A hardware watchdog device (`/dev/watchdog`), kept alive only while the node has quorum;
    /// `{node}` in the path is replaced by the node's name (for test rigs sharing a disk).
    #[serde(default)]
    pub watchdog: Option<String>,
    /// The watchdog's timeout: a node that stops feeding it (no quorum, frozen) is reset this
    /// long after the last feed.
    #[serde(default = "default_watchdog_timeout", with = "crate::duration::duration_ms")]
    pub watchdog_timeout: Duration,
}

fn default_watchdog_timeout() -> Duration {
    Duration::from_secs(5)
}

impl ClusterConfig {
    /// Silence after which a link (and, when all links are silent, a node) is declared down.
    pub fn detection_time(&self) -> Duration {
        self.heartbeat_interval * self.dead_after
    }

    /// How long after a node is declared lost what it held stays held (not recovered
    /// elsewhere): with `fencing = "watchdog"`, until its quorum lease must have run out: it
    /// stops its resources itself when it loses quorum, at most one interval after the majority
    /// saw it go (heartbeats are an interval apart), plus an interval of margin for the stop.
    /// None: recover at once (`off`, and `required` until fence devices exist).
    /// With a hardware watchdog, SBD's msgwait: twice its timeout (the lost node is reset by then,
    /// whatever state its software is in).
    pub fn lost_node_hold(&self) -> Option<Duration> {
        match self.fencing {
            Fencing::Watchdog if self.watchdog.is_some() => Some(self.watchdog_timeout * 2),
            Fencing::Watchdog => Some(self.heartbeat_interval * 2),
            Fencing::Required | Fencing::Off => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub name: String,
    pub links: Vec<SocketAddr>,
    pub api: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessConfig {
    pub address: SocketAddr,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub nodes: Vec<NodeConfig>,
    pub witness: Option<WitnessConfig>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub fence: FenceConfig,
}

impl Config {
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// The result of checking a config: the config when there are no errors, and every diagnostic.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: Option<Config>,
    pub diagnostics: Vec<Diagnostic>,
    /// Primitive id → where its `agent` value is in the source.
    pub agent_spans: BTreeMap<String, Range<usize>>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

/// The error of [`parse`]: every error found, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} error(s) in the config, first: {}", .0.len(), .0.first().map(|d| d.message.as_str()).unwrap_or(""))]
pub struct ConfigError(pub Vec<Diagnostic>);

impl ConfigError {
    pub fn render(&self, file: &str) -> String {
        self.0.iter().map(|d| d.render(file)).collect::<Vec<_>>().join("\n")
    }
}

/// Parse and validate; errors only (warnings dropped).
pub fn parse(source: &str) -> Result<Config, ConfigError> {
    let checked = check(source);
    match checked.config {
        Some(c) if !checked.has_errors() => Ok(c),
        _ => Err(ConfigError(
            checked
                .diagnostics
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .collect(),
        )),
    }
}

// ---- raw, spanned form -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    node: Vec<Spanned<RawNode>>,
    witness: Option<Spanned<RawWitness>>,
    #[serde(default)]
    fence_device: Vec<Spanned<fencing::RawDevice>>,
    #[serde(default)]
    fence_level: Vec<Spanned<fencing::RawLevel>>,
    #[serde(default)]
    resource: Vec<Spanned<resources::RawResource>>,
    #[serde(default)]
    group: Vec<Spanned<resources::RawGroup>>,
    #[serde(default)]
    clone: Vec<Spanned<resources::RawClone>>,
    #[serde(default)]
    constraint: Vec<Spanned<resources::RawConstraint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Option<Spanned<String>>,
    heartbeat_interval: Option<Spanned<String>>,
    dead_after: Option<Spanned<i64>>,
    no_quorum_policy: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    fencing: Option<Spanned<String>>,
    fence_action: Option<Spanned<String>>,
    priority_fence_delay: Option<Spanned<String>>,
    watchdog: Option<Spanned<String>>,
    watchdog_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<Spanned<String>>,
    links: Option<Spanned<Vec<Spanned<String>>>>,
    api: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWitness {
    address: Spanned<String>,
}

/// Parse and validate `source`, collecting every problem.
pub fn check(source: &str) -> Checked {
    let mut c = Checker::new(source);
    let mut agent_spans = BTreeMap::new();
    let config = match toml::from_str::<RawConfig>(source) {
        Ok(raw) => validate(&mut c, raw, &mut agent_spans),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            c.error(span, e.message().trim().to_string());
            None
        }
    };
    let has_errors = c.has_errors();
    Checked {
        config: if has_errors { None } else { config },
        diagnostics: c.finish(),
        agent_spans,
    }
}

/// Check every OCF primitive against its agent's meta-data, as read on this machine by
/// `meta_data` (None: the agent is not installed here). Adopts the agents' default timeouts
/// into the config where it gives none; a missing required parameter is an error, an unknown
/// one a warning, an unreadable meta-data a warning. Diagnostics point at the `agent` value.
pub fn check_agents(
    checked: &mut Checked,
    source: &str,
    meta_data: &mut dyn FnMut(&AgentSpec) -> Option<Result<AgentMeta, String>>,
) {
    let Some(config) = checked.config.as_mut() else { return };
    let mut diags = Vec::new();
    for (id, prim) in config.resources.primitives.iter_mut() {
        if !matches!(prim.agent, AgentSpec::Ocf { .. }) {
            continue;
        }
        let span = checked.agent_spans.get(id).cloned().unwrap_or(0..0);
        let at = |severity: Severity, message: String| Diagnostic::at(source, span.clone(), severity, message);
        match meta_data(&prim.agent) {
            None => diags.push(at(
                Severity::Warning,
                format!(
                    "resource {id}: agent {} is not installed on this machine (its params are not checked)",
                    prim.agent
                ),
            )),
            Some(Err(e)) => diags.push(at(
                Severity::Warning,
                format!("resource {id}: could not read the meta-data of {}: {e}", prim.agent),
            )),
            Some(Ok(m)) => {
                for p in prim.adopt_agent_meta(&m) {
                    diags.push(match p {
                        ParamProblem::Missing(name) => at(
                            Severity::Error,
                            format!(
                                "resource {id}: agent {} requires the parameter {name:?} (add it to `params`)",
                                prim.agent
                            ),
                        ),
                        ParamProblem::Unknown(name) => at(
                            Severity::Warning,
                            format!("resource {id}: agent {} has no parameter {name:?}", prim.agent),
                        ),
                    });
                }
            }
        }
    }
    checked.diagnostics.extend(diags);
    diag::sort(&mut checked.diagnostics);
    if checked.has_errors() {
        checked.config = None;
    }
}

fn validate(c: &mut Checker, raw: RawConfig, agent_spans: &mut BTreeMap<String, Range<usize>>) -> Option<Config> {
    let Some(cluster) = raw.cluster else {
        c.error(0..0, "missing [cluster] section (it needs at least `name`)");
        return None;
    };
    let cluster_span = cluster.span();
    let cl = cluster.into_inner();

    let name = match cl.name {
        Some(n) if valid_name(n.get_ref()) => n.into_inner(),
        Some(n) => {
            c.error(
                n.span(),
                format!(
                    "cluster name {:?} must be 1-63 characters of A-Z a-z 0-9 - _ .",
                    n.get_ref()
                ),
            );
            String::new()
        }
        None => {
            c.error(cluster_span.clone(), "[cluster] needs a `name`");
            String::new()
        }
    };

    let heartbeat_interval = match &cl.heartbeat_interval {
        None => Duration::from_millis(100),
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) if (MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&d) => d,
            Ok(d) => {
                c.error(
                    s.span(),
                    format!(
                        "heartbeat_interval {} is outside the allowed 10ms..10s",
                        format_duration(d)
                    ),
                );
                Duration::from_millis(100)
            }
            Err(e) => {
                c.error(s.span(), format!("heartbeat_interval: {e}"));
                Duration::from_millis(100)
            }
        },
    };

    let dead_after = match &cl.dead_after {
        None => 3,
        Some(d) if (1..=100).contains(d.get_ref()) => *d.get_ref() as u32,
        Some(d) => {
            c.error(
                d.span(),
                format!(
                    "dead_after must be a whole number of heartbeats from 1 to 100, not {}",
                    d.get_ref()
                ),
            );
            3
        }
    };

    let no_quorum_policy = match &cl.no_quorum_policy {
        None => NoQuorumPolicy::default(),
        Some(s) => match s.get_ref().as_str() {
            "stop" => NoQuorumPolicy::Stop,
            "freeze" => NoQuorumPolicy::Freeze,
            "demote" => NoQuorumPolicy::Demote,
            "ignore" => NoQuorumPolicy::Ignore,
            other => {
                c.error(
                    s.span(),
                    format!("no_quorum_policy {other:?} is not one of stop, freeze, demote, ignore"),
                );
                NoQuorumPolicy::default()
            }
        },
    };

    let fencing = match &cl.fencing {
        None => Fencing::default(),
        Some(s) => match s.get_ref().as_str() {
            "required" => Fencing::Required,
            "watchdog" => Fencing::Watchdog,
            "off" => {
                c.warn(s.span(), "fencing = \"off\": a lost node's services may be started elsewhere while it still runs them (split-brain)");
                Fencing::Off
            }
            other => {
                c.error(
                    s.span(),
                    format!("fencing {other:?} is not one of required, watchdog, off"),
                );
                Fencing::default()
            }
        },
    };

    let priority_fence_delay =
        duration::checked_or(c, "priority_fence_delay", &cl.priority_fence_delay, Duration::ZERO);
    let watchdog_timeout =
        duration::checked_or(c, "watchdog_timeout", &cl.watchdog_timeout, default_watchdog_timeout());
    if watchdog_timeout < Duration::from_secs(1) {
        if let Some(s) = &cl.watchdog_timeout {
            c.error(
                s.span(),
                "watchdog_timeout must be at least 1s (watchdog devices count whole seconds)",
            );
        }
    }
    let watchdog = match &cl.watchdog {
        Some(w) if w.get_ref().is_empty() => {
            c.error(
                w.span(),
                "watchdog is empty: write a device path such as \"/dev/watchdog\"",
            );
            None
        }
        Some(w) => Some(w.get_ref().clone()),
        None => None,
    };

    let key_file = match cl.key_file {
        Some(k) if k.get_ref().is_empty() => {
            c.error(k.span(), "key_file is empty");
            String::new()
        }
        Some(k) => k.into_inner(),
        None => "phalanx.key".to_string(),
    };

    // ---- nodes ----
    if raw.node.is_empty() {
        c.error(
            cluster_span.clone(),
            "no [[node]] is defined: a cluster needs at least one node",
        );
    }
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut addrs: BTreeMap<SocketAddr, (String, usize)> = BTreeMap::new();
    let mut nodes = Vec::new();
    for node in raw.node {
        let node_span = node.span();
        let rn = node.into_inner();
        let name = match &rn.name {
            None => {
                c.error(node_span.clone(), "[[node]] needs a `name`");
                continue;
            }
            Some(n) if !valid_name(n.get_ref()) => {
                c.error(
                    n.span(),
                    format!(
                        "node name {:?} must be 1-63 characters of A-Z a-z 0-9 - _ .",
                        n.get_ref()
                    ),
                );
                continue;
            }
            Some(n) if n.get_ref() == "witness" => {
                c.error(n.span(), "node name \"witness\" is reserved for the [witness]");
                continue;
            }
            Some(n) => {
                if let Some(first) = names.get(n.get_ref()) {
                    let line = c.line_of(*first);
                    c.error(
                        n.span(),
                        format!("duplicate node name {:?} (first defined on line {line})", n.get_ref()),
                    );
                    continue;
                }
                names.insert(n.get_ref().clone(), n.span().start);
                n.get_ref().clone()
            }
        };
        let mut claim = |c: &mut Checker, addr: SocketAddr, span: Range<usize>, what: &str| {
            if let Some((owner, at)) = addrs.get(&addr) {
                let line = c.line_of(*at);
                c.error(
                    span,
                    format!("{what} address {addr} is already used by node {owner} (line {line})"),
                );
            } else {
                addrs.insert(addr, (name.clone(), span.start));
            }
        };
        let mut links = Vec::new();
        match &rn.links {
            None => c.error(
                node_span.clone(),
                format!("node {name} has no `links`: it needs at least one heartbeat link address (\"IP:PORT\")"),
            ),
            Some(l) if l.get_ref().is_empty() => c.error(
                l.span(),
                format!("node {name} has an empty `links` list: it needs at least one heartbeat link address"),
            ),
            Some(l) => {
                for link in l.get_ref() {
                    match link.get_ref().parse::<SocketAddr>() {
                        Ok(a) if a.port() == 0 => c.error(
                            link.span(),
                            format!("link address {} needs a port other than 0", link.get_ref()),
                        ),
                        Ok(a) => {
                            claim(c, a, link.span(), "link");
                            links.push(a);
                        }
                        Err(_) => c.error(
                            link.span(),
                            format!(
                                "link {:?} is not an IP:PORT address (e.g. \"10.0.0.1:7400\" or \"[fd00::1]:7400\")",
                                link.get_ref()
                            ),
                        ),
                    }
                }
            }
        }
        let api = match &rn.api {
            Some(a) => match a.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    claim(c, addr, a.span(), "api");
                    Some(addr)
                }
                Err(_) => {
                    c.error(a.span(), format!("api {:?} is not an IP:PORT address", a.get_ref()));
                    None
                }
            },
            None => links.first().map(|l| {
                let addr = SocketAddr::new(l.ip(), DEFAULT_API_PORT);
                claim(c, addr, node_span.clone(), "default api");
                addr
            }),
        };
        if let Some(api) = api {
            if !links.is_empty() {
                nodes.push(NodeConfig { name, links, api });
            }
        }
    }

    let witness = raw.witness.and_then(|w| {
        let a = &w.get_ref().address;
        match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(WitnessConfig { address: addr }),
            Err(_) => {
                c.error(
                    a.span(),
                    format!("witness address {:?} is not an IP:PORT address", a.get_ref()),
                );
                None
            }
        }
    });

    if names.len() == 2 && witness.is_none() {
        c.warn(
            cluster_span.clone(),
            "a two-node cluster without a [witness]: if the link between the nodes breaks, neither side holds a majority (2 of 2 votes needed), so both apply no_quorum_policy and the service stops; add a [witness] or a third node",
        );
    }
    if names.len() > MAX_VOTERS {
        c.warn(
            cluster_span.clone(),
            format!(
                "{} nodes: only {MAX_VOTERS} vote in Raft, the others join as non-voting members",
                names.len()
            ),
        );
    }
    let fence_action = match &cl.fence_action {
        None => FenceAction::default(),
        Some(s) => match s.get_ref().as_str() {
            "reboot" => FenceAction::Reboot,
            "off" => FenceAction::Off,
            other => {
                c.error(s.span(), format!("fence_action {other:?} is not one of reboot, off"));
                FenceAction::default()
            }
        },
    };
    let node_names: std::collections::BTreeSet<String> = names.keys().cloned().collect();
    let fence = fencing::validate(c, raw.fence_device, raw.fence_level, fence_action, &node_names);
    let resources = resources::validate(
        c,
        resources::RawResources {
            resource: raw.resource,
            group: raw.group,
            clone: raw.clone,
            constraint: raw.constraint,
        },
        &node_names,
        agent_spans,
    );
    if fencing != Fencing::Required {
        if let Some(p) = resources
            .primitives
            .values()
            .find(|p| p.on_fail == resources::OnFail::Fence)
        {
            let at = agent_spans.get(&p.id).cloned().unwrap_or(cluster_span.clone());
            c.error(
                at,
                format!(
                    "resource {}: on_fail = \"fence\" needs fencing = \"required\" (it is {fencing})",
                    p.id
                ),
            );
        }
    }
    // Fencing is on by default: with resources, every node must be fenceable (a device, or the
    // watchdog lease), unless the operator turned fencing off and was warned.
    if fencing == Fencing::Required && !resources.is_empty() {
        let bare: Vec<&str> = node_names
            .iter()
            .filter(|n| !fence.can_fence(n))
            .map(|n| n.as_str())
            .collect();
        if !bare.is_empty() {
            let at = cl.fencing.as_ref().map(|f| f.span()).unwrap_or(cluster_span.clone());
            c.error(
                at,
                format!(
                    "fencing is required (the default) but nothing can fence {}: add a [[fence_device]] for it, or set fencing = \"watchdog\" (lost nodes stop their resources when their quorum lease runs out), or fencing = \"off\" (unsafe: split-brain)",
                    bare.join(", ")
                ),
            );
        }
    }

    Some(Config {
        cluster: ClusterConfig {
            name,
            heartbeat_interval,
            dead_after,
            no_quorum_policy,
            key_file,
            fencing,
            priority_fence_delay,
            watchdog,
            watchdog_timeout,
        },
        nodes,
        witness,
        resources,
        fence,
    })
}
