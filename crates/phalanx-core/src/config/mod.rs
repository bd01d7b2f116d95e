//! The desired configuration of a cluster: one TOML file, parsed with spans so that every
//! problem is reported as `FILE:LINE:COL: severity: message`, and validated as a whole (all
//! problems at once, not just the first). Pure: the caller reads the file and passes its text.
//!
//! Each section parses and validates itself: `[cluster]` in [`cluster`], `[[node]]` and
//! `[witness]` in [`nodes`], the fence devices and levels in [`crate::fencing`], the resources
//! and constraints in [`crate::resources`], `[[balancer]]` in `balancer`, `[sessions]` in
//! `sessions`. This module holds the validated [`Config`], the top-level [`check`] and
//! [`parse`], and the checks that span sections (fencing against the
//! resources). [`check_machine`] adds what only the machine can know: the installed OCF agents and
//! fence-agents programs, and the key file.

mod agents;
mod alerts;
mod balancer;
mod cluster;
mod diff;
mod nodes;
mod schema;
pub mod secrets;
mod sessions;

use crate::diag::Checker;
use crate::fencing::{self, FenceConfig};
use crate::resources::{self, AgentSpec, OnFail, Primitive, Resources};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use toml::Spanned;

pub use agents::{check_agents, check_machine, Machine};
pub use alerts::{AlertConfig, AlertTarget, ALERT_KINDS};
pub use balancer::{
    primitive as balancer_primitive, BalancerConfig, BalancerMode, CheckConfig, HttpConfig, RetryOn, ServerConfig,
    BALANCER_MONITOR, DEFAULT_CONNECT_TIMEOUT,
};
pub use cluster::{ClusterConfig, ShutdownMode, MAX_HEARTBEAT, MIN_HEARTBEAT};
pub use diff::diff;
pub use nodes::{NodeConfig, WitnessConfig, DEFAULT_API_PORT};
pub use sessions::{parse_size, SessionsConfig, DEFAULT_MAX_ITEM_SIZE, DEFAULT_MEMORY_LIMIT, DEFAULT_SESSIONS_PORT};

// Diagnostics, durations and the fencing mode live in their own modules; these paths stay for
// the code in other crates that names them here.
pub use crate::diag::{line_col, Diagnostic, Severity};
pub use crate::duration::{format_duration, parse_duration, DurationError};
pub use crate::model::Fencing;

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
    /// Who is told about events (`[[alert]]`).
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    /// The load balancers (`[[balancer]]`); each is also a primitive in `resources`.
    #[serde(default)]
    pub balancers: Vec<BalancerConfig>,
    /// The session store (`[sessions]`); None: off.
    #[serde(default)]
    pub sessions: Option<SessionsConfig>,
}

impl Config {
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn balancer(&self, id: &str) -> Option<&BalancerConfig> {
        self.balancers.iter().find(|b| b.id == id)
    }
}

/// The result of checking a config: the config when there are no errors, and every diagnostic.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: Option<Config>,
    pub diagnostics: Vec<Diagnostic>,
    /// The config as far as it validated, also with errors (None only when the file did not
    /// parse or has no `[cluster]`): what the checks of this machine ([`check_machine`]) look
    /// at, so that their errors come with the others. Never run with errors.
    pub draft: Option<Config>,
    /// Primitive id → where its `agent` value is in the source.
    pub agent_spans: BTreeMap<String, Range<usize>>,
    /// Fence device name → where its `agent` value is in the source.
    pub fence_agent_spans: BTreeMap<String, Range<usize>>,
    /// Where `key_file` is written, else the `[cluster]` section (0..0 without one).
    pub key_file_span: Range<usize>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    /// Add diagnostics found after the check (those of this machine): kept in file order, and
    /// the config dropped once there is an error.
    pub(crate) fn add(&mut self, diags: Vec<Diagnostic>) {
        self.diagnostics.extend(diags);
        crate::diag::sort(&mut self.diagnostics);
        self.config = if self.has_errors() { None } else { self.draft.clone() };
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

/// The file as written: every section in its raw, spanned form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<Spanned<cluster::RawCluster>>,
    #[serde(default)]
    node: Vec<Spanned<nodes::RawNode>>,
    witness: Option<Spanned<nodes::RawWitness>>,
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
    #[serde(default)]
    alert: Vec<Spanned<alerts::RawAlert>>,
    #[serde(default)]
    balancer: Vec<Spanned<balancer::RawBalancer>>,
    sessions: Option<Spanned<sessions::RawSessions>>,
}

/// Parse and validate `source`, collecting every problem.
pub fn check(source: &str) -> Checked {
    let mut c = Checker::new(source);
    let mut spans = Spans::default();
    let draft = schema::deserialize::<RawConfig>(&mut c, source).and_then(|raw| validate(&mut c, raw, &mut spans));
    let has_errors = c.has_errors();
    Checked {
        config: if has_errors { None } else { draft.clone() },
        diagnostics: c.finish(),
        draft,
        agent_spans: spans.agents,
        fence_agent_spans: spans.fence_agents,
        key_file_span: spans.key_file,
    }
}

/// Where the values the checks of this machine report on are written.
#[derive(Default)]
struct Spans {
    agents: BTreeMap<String, Range<usize>>,
    fence_agents: BTreeMap<String, Range<usize>>,
    key_file: Range<usize>,
}

/// Validate every section, then what spans sections. None only without a `[cluster]`; with
/// errors, the config returned is incomplete (the caller drops it).
fn validate(c: &mut Checker, raw: RawConfig, spans: &mut Spans) -> Option<Config> {
    let cluster = cluster::validate(c, raw.cluster)?;
    spans.key_file = cluster.key_file_span.clone();
    let agent_spans = &mut spans.agents;
    let nodes = nodes::validate(c, raw.node, &cluster.span);
    let witness = nodes::witness(c, raw.witness);
    nodes::quorum_warnings(c, nodes.names.len(), witness.is_some(), &cluster.span);
    let fence = fencing::validate(
        c,
        raw.fence_device,
        raw.fence_level,
        cluster.fence_action,
        &nodes.names,
        &mut spans.fence_agents,
    );
    let builtin = raw
        .balancer
        .iter()
        .map(|b| {
            let placeholder = Primitive::builtin("", AgentSpec::Balancer, BTreeMap::new(), balancer::monitor());
            resources::Builtin {
                id: b.get_ref().id.clone(),
                span: b.span(),
                kind: "balancer",
                primitive: placeholder,
            }
        })
        .collect();
    let mut resources = resources::validate(
        c,
        resources::RawResources {
            resource: raw.resource,
            group: raw.group,
            clone: raw.clone,
            constraint: raw.constraint,
            builtin,
        },
        &nodes.names,
        agent_spans,
    );
    let balancers = balancer::validate(c, raw.balancer, &resources, &nodes.names);
    for b in &balancers {
        resources.primitives.insert(b.id.clone(), balancer::primitive(b));
    }
    check_fencing(c, &cluster, &fence, &resources, &nodes.names, agent_spans);
    let alerts = alerts::validate(c, raw.alert);
    let sessions = sessions::validate(c, raw.sessions, &nodes.names, &resources);
    Some(Config {
        cluster: cluster.config,
        nodes: nodes.nodes,
        witness,
        resources,
        fence,
        alerts,
        balancers,
        sessions,
    })
}

/// The fencing mode against the resources: `on_fail = "fence"` needs fencing required, and
/// with fencing required (the default) and resources, every node must be fenceable (a device,
/// or the watchdog lease), unless the operator turned fencing off and was warned.
fn check_fencing(
    c: &mut Checker,
    cluster: &cluster::Cluster,
    fence: &FenceConfig,
    resources: &Resources,
    nodes: &BTreeSet<String>,
    agent_spans: &BTreeMap<String, Range<usize>>,
) {
    let fencing = cluster.config.fencing;
    if fencing != Fencing::Required {
        if let Some(p) = resources.primitives.values().find(|p| p.on_fail == OnFail::Fence) {
            let at = agent_spans.get(&p.id).cloned().unwrap_or(cluster.span.clone());
            c.error(
                at,
                format!(
                    "resource {}: on_fail = \"fence\" needs fencing = \"required\" (it is {fencing})",
                    p.id
                ),
            );
        }
    }
    if fencing == Fencing::Required && !resources.is_empty() {
        let bare: Vec<&str> = nodes
            .iter()
            .filter(|n| !fence.can_fence(n))
            .map(|n| n.as_str())
            .collect();
        if !bare.is_empty() {
            c.error(
                cluster.fencing_span.clone(),
                format!(
                    "fencing is required (the default) but nothing can fence {}: add a [[fence_device]] for it, or set fencing = \"watchdog\" (lost nodes stop their resources when their quorum lease runs out), or fencing = \"off\" (unsafe: split-brain)",
                    bare.join(", ")
                ),
            );
        }
    }
}
