//! Primitive resources (`[[resource]]`): what runs them (an OCF agent, exec, process, the
//! built-in VIP), their params, monitor and timeouts, what a failure does (on-fail), their
//! validation, and how they are measured against an agent's meta-data.

use super::meta::{self, Meta, RawMeta, RawScore};
use super::Ids;
use crate::diag::Checker;
use crate::duration;
use crate::ocf::AgentMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// A timeout the config does not write.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// What runs a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AgentSpec {
    /// `ocf:PROVIDER:TYPE`: `$OCF_ROOT/resource.d/PROVIDER/TYPE`.
    Ocf { provider: String, kind: String },
    /// Operator-given start/stop/monitor commands.
    Exec,
    /// A supervised long-running command.
    Process,
    /// The built-in virtual IP agent.
    Vip,
    /// The built-in load balancer (a `[[balancer]]` section; never written as an `agent`).
    Balancer,
    /// The built-in PostgreSQL agent (promotable; see `crate::pgsql`).
    Pgsql,
}

impl AgentSpec {
    pub fn parse(s: &str) -> Option<AgentSpec> {
        match s {
            "exec" => Some(AgentSpec::Exec),
            "process" => Some(AgentSpec::Process),
            "vip" => Some(AgentSpec::Vip),
            "pgsql" => Some(AgentSpec::Pgsql),
            _ => {
                let mut it = s.split(':');
                match (it.next(), it.next(), it.next(), it.next()) {
                    (Some("ocf"), Some(p), Some(t), None) if valid_part(p) && valid_part(t) => Some(AgentSpec::Ocf {
                        provider: p.to_string(),
                        kind: t.to_string(),
                    }),
                    _ => None,
                }
            }
        }
    }
}

fn valid_part(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl std::fmt::Display for AgentSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentSpec::Ocf { provider, kind } => write!(f, "ocf:{provider}:{kind}"),
            AgentSpec::Exec => f.write_str("exec"),
            AgentSpec::Process => f.write_str("process"),
            AgentSpec::Vip => f.write_str("vip"),
            AgentSpec::Balancer => f.write_str("balancer"),
            AgentSpec::Pgsql => f.write_str("pgsql"),
        }
    }
}

/// What to do when a monitor (or start) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFail {
    /// Restart it (on the same node, until migration_threshold moves it).
    #[default]
    Restart,
    /// Move it off the node at the first failure.
    Ban,
    /// Stop it and leave it stopped.
    Stop,
    /// Record the failure, do nothing.
    Ignore,
    /// Fence the node it failed on (needs `fencing = "required"`), then recover it elsewhere.
    Fence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    #[serde(with = "crate::duration::duration_ms")]
    pub interval: Duration,
    #[serde(with = "crate::duration::duration_ms")]
    pub timeout: Duration,
}

/// A primitive resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Primitive {
    pub id: String,
    pub agent: AgentSpec,
    pub params: BTreeMap<String, String>,
    pub monitor: Option<Op>,
    #[serde(with = "crate::duration::duration_ms")]
    pub start_timeout: Duration,
    #[serde(with = "crate::duration::duration_ms")]
    pub stop_timeout: Duration,
    pub on_fail: OnFail,
    pub meta: Meta,
    /// The timeouts the config did not write (the agent's meta-data may supply them).
    #[serde(default)]
    pub defaulted: DefaultedTimeouts,
}

/// Which of a primitive's timeouts are phalanx's 20 s default rather than written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DefaultedTimeouts {
    pub start: bool,
    pub stop: bool,
    pub monitor: bool,
}

/// A resource's `params` measured against its agent's meta-data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamProblem {
    /// The agent requires it and the config does not give it (an error).
    Missing(String),
    /// The agent does not know it (a warning: a typo, or an agent of another version).
    Unknown(String),
}

impl Primitive {
    /// A primitive of a built-in agent that another section defines (a `[[balancer]]`): no
    /// meta attributes, restarted on failure, the default start and stop timeouts.
    pub fn builtin(id: &str, agent: AgentSpec, params: BTreeMap<String, String>, monitor: Op) -> Primitive {
        Primitive {
            id: id.to_string(),
            agent,
            params,
            monitor: Some(monitor),
            start_timeout: DEFAULT_TIMEOUT,
            stop_timeout: DEFAULT_TIMEOUT,
            on_fail: OnFail::Restart,
            meta: Meta::default(),
            defaulted: DefaultedTimeouts::default(),
        }
    }

    /// Take the agent's default timeouts where the config gave none, and say what is wrong with
    /// the params (as Pacemaker's `crm_resource --validate` would).
    pub fn adopt_agent_meta(&mut self, m: &AgentMeta) -> Vec<ParamProblem> {
        if self.defaulted.start {
            if let Some(t) = m.timeouts.get("start") {
                self.start_timeout = *t;
            }
        }
        if self.defaulted.stop {
            if let Some(t) = m.timeouts.get("stop") {
                self.stop_timeout = *t;
            }
        }
        if let (true, Some(op), Some(t)) = (self.defaulted.monitor, self.monitor.as_mut(), m.timeouts.get("monitor")) {
            op.timeout = *t;
        }
        let mut problems: Vec<ParamProblem> = m
            .parameters
            .iter()
            .filter(|p| p.required && !self.params.keys().any(|k| k.split('@').next() == Some(p.name.as_str())))
            .map(|p| ParamProblem::Missing(p.name.clone()))
            .collect();
        problems.extend(
            self.params
                .keys()
                .filter(|k| {
                    !m.parameters
                        .iter()
                        .any(|p| Some(p.name.as_str()) == k.split('@').next())
                })
                .map(|k| ParamProblem::Unknown(k.clone())),
        );
        problems
    }
}

// ---- as written ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOp {
    interval: Spanned<String>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResource {
    id: Option<Spanned<String>>,
    agent: Option<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    monitor: Option<Spanned<RawOp>>,
    start_timeout: Option<Spanned<String>>,
    stop_timeout: Option<Spanned<String>>,
    on_fail: Option<Spanned<String>>,
    stickiness: Option<Spanned<RawScore>>,
    failback: Option<Spanned<String>>,
    migration_threshold: Option<Spanned<i64>>,
    failure_timeout: Option<Spanned<String>>,
}

impl RawResource {
    fn meta(&self) -> RawMeta<'_> {
        RawMeta {
            stickiness: &self.stickiness,
            failback: &self.failback,
            migration_threshold: &self.migration_threshold,
            failure_timeout: &self.failure_timeout,
        }
    }
}

/// Validate one `[[resource]]`, claiming its id; `agent_spans` learns where its agent is
/// written (diagnostics found later, against the agent's meta-data, point there).
pub(super) fn validate(
    c: &mut Checker,
    r: Spanned<RawResource>,
    ids: &mut Ids,
    agent_spans: &mut BTreeMap<String, Range<usize>>,
    nodes: &std::collections::BTreeSet<String>,
) -> Option<Primitive> {
    let span = r.span();
    let r = r.into_inner();
    let id = ids.claim_section(c, &r.id, &span, "resource")?;
    let agent = agent(c, &r.agent, &id, &span)?;
    let mut params = BTreeMap::new();
    for (k, v) in &r.params {
        let v = match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        params.insert(k.clone(), v);
    }
    if agent == AgentSpec::Process {
        process_params(c, &id, &params, &span);
    }
    if agent == AgentSpec::Pgsql {
        // Checked as each node will read them (a `name@node` override included); an error on
        // some nodes only names them.
        let mut on_nodes: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for k in params.keys() {
            if let Some((_, n)) = k.split_once('@').filter(|(_, n)| !nodes.contains(*n)) {
                c.error(
                    span.clone(),
                    format!("resource {id}: param {k:?} names no configured node ({n})"),
                );
            }
        }
        let on: Vec<&str> = if nodes.is_empty() {
            vec![""]
        } else {
            nodes.iter().map(String::as_str).collect()
        };
        for n in &on {
            if let Err(errors) = crate::pgsql::Params::parse(&params_on(&params, n)) {
                for e in errors {
                    on_nodes.entry(e).or_default().push(n);
                }
            }
        }
        for (e, ns) in on_nodes {
            if ns.len() == on.len() {
                c.error(span.clone(), format!("resource {id}: {e}"));
            } else {
                c.error(span.clone(), format!("resource {id}: on {}: {e}", ns.join(", ")));
            }
        }
    }
    let defaulted = DefaultedTimeouts {
        start: r.start_timeout.is_none(),
        stop: r.stop_timeout.is_none(),
        monitor: r
            .monitor
            .as_ref()
            .map(|m| m.get_ref().timeout.is_none())
            .unwrap_or(false),
    };
    agent_spans.insert(id.clone(), r.agent.as_ref().map(|a| a.span()).unwrap_or(span.clone()));
    let monitor = r.monitor.as_ref().and_then(|m| monitor(c, m.get_ref()));
    let start_timeout = r
        .start_timeout
        .as_ref()
        .and_then(|t| duration::checked(c, "start_timeout", t))
        .unwrap_or(DEFAULT_TIMEOUT);
    let stop_timeout = r
        .stop_timeout
        .as_ref()
        .and_then(|t| duration::checked(c, "stop_timeout", t))
        .unwrap_or(DEFAULT_TIMEOUT);
    let on_fail = on_fail(c, &r.on_fail);
    let meta = meta::validate(c, r.meta());
    Some(Primitive {
        id,
        agent,
        params,
        monitor,
        start_timeout,
        stop_timeout,
        on_fail,
        meta,
        defaulted,
    })
}

/// `params` as node `node` reads them: a `name@node` param overrides `name` there (a data
/// directory or port that differs per node), and other nodes' overrides are dropped.
pub fn params_on(params: &BTreeMap<String, String>, node: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = params
        .iter()
        .filter(|(k, _)| !k.contains('@'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in params {
        if let Some((name, n)) = k.split_once('@') {
            if n == node {
                out.insert(name.to_string(), v.clone());
            }
        }
    }
    out
}

/// The built-in `process` agent's params, as its start reads them: a `command`, and a
/// `check_tcp` that is an IP:PORT as written (only `command` goes through a shell).
fn process_params(c: &mut Checker, id: &str, params: &BTreeMap<String, String>, section: &Range<usize>) {
    if !params.contains_key("command") {
        c.error(
            section.clone(),
            format!("resource {id}: the process agent needs a `command` param"),
        );
    }
    if let Some(a) = params.get("check_tcp") {
        if a.parse::<std::net::SocketAddr>().is_err() {
            c.error(
                section.clone(),
                format!(
                    "resource {id}: check_tcp {a:?} is not an IP:PORT address (it is read as written: no variables)"
                ),
            );
        }
    }
}

fn agent(c: &mut Checker, v: &Option<Spanned<String>>, id: &str, section: &Range<usize>) -> Option<AgentSpec> {
    let Some(a) = v else {
        c.error(section.clone(), format!("resource {id} needs an `agent`"));
        return None;
    };
    let spec = AgentSpec::parse(a.get_ref());
    if spec.is_none() {
        c.error(
            a.span(),
            format!(
                "unknown agent {:?}: use \"ocf:PROVIDER:TYPE\", \"exec\", \"process\" or \"vip\"",
                a.get_ref()
            ),
        );
    }
    spec
}

fn monitor(c: &mut Checker, m: &RawOp) -> Option<Op> {
    let interval = duration::checked(c, "monitor interval", &m.interval)?;
    let timeout = match &m.timeout {
        Some(t) => duration::checked(c, "monitor timeout", t)?,
        None => DEFAULT_TIMEOUT,
    };
    if interval.is_zero() {
        c.error(m.interval.span(), "monitor interval must be above 0");
        return None;
    }
    Some(Op { interval, timeout })
}

fn on_fail(c: &mut Checker, v: &Option<Spanned<String>>) -> OnFail {
    let Some(o) = v else { return OnFail::Restart };
    match o.get_ref().as_str() {
        "restart" => OnFail::Restart,
        "ban" => OnFail::Ban,
        "stop" => OnFail::Stop,
        "ignore" => OnFail::Ignore,
        "fence" => OnFail::Fence,
        other => {
            c.error(
                o.span(),
                format!("on_fail {other:?} is not one of restart, ban, stop, ignore, fence"),
            );
            OnFail::Restart
        }
    }
}
