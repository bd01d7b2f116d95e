//! The `[[balancer]]` sections (issue 14): a load balancer the cluster runs as a resource. Each
//! one names where it listens, its mode (`tcp`, or `http` with its timeouts, limits, retries,
//! queue and sticky cookie: [`HttpConfig`]), its algorithm (`crate::lb::Algorithm`), its backends — the instances of a clone or primitive
//! found in the cluster state (`backends` + `port`, and an optional per-node `addresses` map)
//! and/or static `servers` — its health `check` (TCP connect or HTTP GET, plus an optional agent) and a per-backend
//! `max_conn`.
//!
//! A balancer is also a primitive: its id is claimed with the resources' (so a `[[group]]` may
//! name it with a `vip`, constraints may name it, and it may not clash with any other id), and
//! [`primitive`] builds the primitive the scheduler places, with the built-in agent `balancer`.

use crate::diag::Checker;
use crate::duration;
use crate::lb::cookie::{self, CookieConfig};
use crate::lb::{Algorithm, HealthConfig, MAX_WEIGHT};
use crate::model::valid_name;
use crate::resources::{AgentSpec, Op, Primitive, Resources};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// How long a connection to a backend may take to open, unless `connect_timeout` says.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the cluster checks that a balancer's listeners are alive.
pub const BALANCER_MONITOR: Duration = Duration::from_secs(2);

/// A validated `[[balancer]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerConfig {
    pub id: String,
    pub listen: Vec<SocketAddr>,
    pub mode: BalancerMode,
    /// The algorithm's name as written (see [`BalancerConfig::algorithm`]).
    pub algorithm: String,
    pub consistent: bool,
    /// A clone or primitive whose running instances are backends.
    pub backends: Option<String>,
    /// The port of the discovered instances.
    pub port: Option<u16>,
    /// Node → the address its instance serves on (default: the node's API host IP).
    pub addresses: BTreeMap<String, IpAddr>,
    /// Static servers, in config order (before the discovered instances).
    pub servers: Vec<ServerConfig>,
    pub check: CheckConfig,
    /// Connections in flight per backend above which it takes no new one; None: no limit.
    pub max_conn: Option<u32>,
    #[serde(with = "crate::duration::duration_ms")]
    pub connect_timeout: Duration,
    /// Source-address affinity; None: none (HTTP mode's cookie is in `http`).
    pub sticky: Option<StickyConfig>,
    /// HTTP mode's settings (defaults in TCP mode, where they are not used).
    #[serde(default)]
    pub http: HttpConfig,
}

/// HTTP mode's timeouts, limits, retries, queue and stickiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpConfig {
    /// A client must send a whole request head within this (slowloris → 408); also how long
    /// an idle client keep-alive connection is kept.
    #[serde(with = "crate::duration::duration_ms")]
    pub request_timeout: Duration,
    /// A backend must start its response within this (→ 504), and may not go quieter than
    /// this in its response body (the client's connection is then closed).
    #[serde(with = "crate::duration::duration_ms")]
    pub server_timeout: Duration,
    /// The largest request head accepted (→ 431), bytes.
    pub max_header_size: u32,
    /// How long an idle pooled connection to a backend is kept (below the backends'
    /// keep-alive, so that the balancer closes first).
    #[serde(with = "crate::duration::duration_ms")]
    pub idle_timeout: Duration,
    /// Tries after the first (the last one redispatched to another backend).
    pub retries: u32,
    /// What is retried: connection failures always; with `Idempotent` also an idempotent
    /// request whose backend closed or reset before answering.
    pub retry_on: RetryOn,
    /// Requests that may wait for a backend under `max_conn` (beyond: 503).
    pub queue: u32,
    /// How long a request waits in the queue (then 503).
    #[serde(with = "crate::duration::duration_ms")]
    pub queue_timeout: Duration,
    /// The inserted sticky cookie, if any.
    pub sticky: Option<CookieConfig>,
}

/// What HTTP mode retries (see [`HttpConfig::retry_on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryOn {
    /// Connection failures only.
    Connect,
    /// Connection failures, and idempotent requests closed or reset before any response.
    Idempotent,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            request_timeout: Duration::from_secs(10),
            server_timeout: Duration::from_secs(30),
            max_header_size: 16 * 1024,
            idle_timeout: Duration::from_secs(4),
            retries: 2,
            retry_on: RetryOn::Idempotent,
            queue: 1024,
            queue_timeout: Duration::from_secs(5),
            sticky: None,
        }
    }
}

/// `sticky = { source = true, max_idle, max_life, capacity }`: source-address affinity, its
/// table held in the cluster state (see `crate::state` `sticks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyConfig {
    /// Stick clients by their source address.
    pub source: bool,
    /// The table's expiry and size.
    pub table: crate::lb::StickConfig,
}

/// The default `sticky` table size, and its largest.
pub const DEFAULT_STICK_CAPACITY: usize = 100_000;

impl BalancerConfig {
    /// The algorithm (validated when the config was: a bad name never gets here, and the
    /// default is only a fallback for a hand-built value).
    pub fn algorithm(&self) -> Algorithm {
        Algorithm::parse(&self.algorithm, self.consistent).unwrap_or_default()
    }

    /// The params of its primitive: what restarts it when changed (a listener must be bound
    /// again); the rest (backends, check, algorithm) is read live by the running proxy.
    pub fn params(&self) -> BTreeMap<String, String> {
        let listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        BTreeMap::from([
            ("listen".to_string(), listen.join(",")),
            ("mode".to_string(), self.mode.as_str().to_string()),
        ])
    }
}

/// A balancer's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BalancerMode {
    /// A plain L4 proxy.
    Tcp,
    /// An HTTP/1.1 reverse proxy (keep-alive both sides, WebSocket upgrades pass through).
    Http,
}

impl BalancerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BalancerMode::Tcp => "tcp",
            BalancerMode::Http => "http",
        }
    }
}

/// A static backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// 0..=256 (0: never picked for new traffic).
    pub weight: u16,
}

/// A balancer's active health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckConfig {
    /// `tcp` (connect) or `http` (GET `http_path`, expecting a status in `expect`).
    pub kind: String,
    pub health: HealthConfig,
    #[serde(with = "crate::duration::duration_ms")]
    pub timeout: Duration,
    /// The path an HTTP check asks for.
    #[serde(default = "default_path")]
    pub http_path: String,
    /// The statuses an HTTP check passes on (inclusive).
    #[serde(default = "default_expect")]
    pub expect: (u16, u16),
    /// The Host header of an HTTP check (default: the backend's address).
    #[serde(default)]
    pub host: Option<String>,
    /// A port on the backend's host where an agent answers one line (HAProxy's agent-check:
    /// up, down, drain, maint, ready, NN%), asked at every check besides the check itself.
    #[serde(default)]
    pub agent_port: Option<u16>,
}

fn default_path() -> String {
    "/".into()
}

fn default_expect() -> (u16, u16) {
    (200, 399)
}

impl Default for CheckConfig {
    fn default() -> Self {
        let health = HealthConfig::default();
        CheckConfig {
            kind: "tcp".into(),
            timeout: Duration::from_millis(health.interval_ms),
            health,
            http_path: default_path(),
            expect: default_expect(),
            host: None,
            agent_port: None,
        }
    }
}

/// The primitive a balancer runs as (agent `balancer`, params from [`BalancerConfig::params`]).
pub fn primitive(b: &BalancerConfig) -> Primitive {
    Primitive::builtin(&b.id, AgentSpec::Balancer, b.params(), monitor())
}

/// A balancer's monitor: cheap (it looks at its listeners in memory).
pub(crate) fn monitor() -> Op {
    Op {
        interval: BALANCER_MONITOR,
        timeout: Duration::from_secs(10),
    }
}

// ---- as written ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBalancer {
    pub(crate) id: Option<Spanned<String>>,
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    mode: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
    consistent: Option<bool>,
    backends: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    addresses: Option<BTreeMap<String, Spanned<String>>>,
    servers: Option<Vec<Spanned<RawServer>>>,
    check: Option<Spanned<RawCheck>>,
    max_conn: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    server_timeout: Option<Spanned<String>>,
    max_header_size: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    retry_on: Option<Spanned<String>>,
    queue: Option<Spanned<i64>>,
    queue_timeout: Option<Spanned<String>>,
    sticky: Option<Spanned<RawSticky>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSticky {
    /// Source-address affinity (either mode), its table in the cluster state.
    source: Option<Spanned<bool>>,
    capacity: Option<Spanned<i64>>,
    /// HTTP mode's inserted cookie (the default form in HTTP mode).
    cookie: Option<Spanned<String>>,
    secure: Option<bool>,
    httponly: Option<bool>,
    max_idle: Option<Spanned<String>>,
    max_life: Option<Spanned<String>>,
}

impl RawSticky {
    /// `source = true`: source affinity, not a cookie.
    fn by_source(&self) -> bool {
        self.source.as_ref().is_some_and(|s| *s.get_ref())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    weight: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    kind: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    fast_interval: Option<Spanned<String>>,
    down_interval: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    error_limit: Option<Spanned<i64>>,
    http_path: Option<Spanned<String>>,
    expect: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    agent_port: Option<Spanned<i64>>,
}

/// A whole number in `range`, or `default` after reporting `what` at its span.
fn int_in(c: &mut Checker, what: &str, v: &Option<Spanned<i64>>, range: Range<i64>, default: i64) -> i64 {
    match v {
        None => default,
        Some(n) if range.contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            c.error(
                n.span(),
                format!("{what} {} is outside {}..{}", n.get_ref(), range.start, range.end - 1),
            );
            default
        }
    }
}

/// Validate the `[[balancer]]` sections against the resources (their ids were claimed, and
/// their primitives built, with the resources': see `resources::validate`) and the node names.
/// Sections with errors are dropped.
pub(crate) fn validate(
    c: &mut Checker,
    raw: Vec<Spanned<RawBalancer>>,
    resources: &Resources,
    nodes: &BTreeSet<String>,
) -> Vec<BalancerConfig> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for section in raw {
        let span = section.span();
        let b = section.into_inner();
        // The id was checked (and any clash reported) when it was claimed.
        let Some(id) = b.id.as_ref().map(|i| i.get_ref().clone()) else {
            continue;
        };
        let claimed = resources
            .primitives
            .get(&id)
            .is_some_and(|p| p.agent == AgentSpec::Balancer);
        if !claimed || !seen.insert(id.clone()) {
            continue;
        }
        let errors = c.error_count();
        let listen = listen(c, &b.listen, &id, &span);
        let mode = match b.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("tcp", _)) => BalancerMode::Tcp,
            Some(("http", _)) => BalancerMode::Http,
            Some((other, at)) => {
                c.error(at, format!("balancer mode {other:?} is not one of tcp, http"));
                BalancerMode::Tcp
            }
        };
        let consistent = b.consistent.unwrap_or(false);
        let algorithm = match &b.algorithm {
            None => Algorithm::default().to_string(),
            Some(a) => {
                match Algorithm::parse(a.get_ref(), consistent) {
                    Err(e) => c.error(a.span(), e.to_string()),
                    Ok(Algorithm::Hash(h)) if mode == BalancerMode::Tcp && h.key != crate::lb::HashKey::Source => c
                        .error(
                            a.span(),
                            format!(
                                "algorithm {:?} hashes a request: it needs mode = \"http\" (a TCP balancer sees only the client's address: use \"source\")",
                                a.get_ref()
                            ),
                        ),
                    Ok(_) => {}
                }
                a.get_ref().clone()
            }
        };
        if let Some(target) = &b.backends {
            let name = target.get_ref();
            if name == &id {
                c.error(target.span(), format!("balancer {id} cannot balance over itself"));
            } else if !resources.primitives.contains_key(name) && !resources.clones.contains_key(name) {
                c.error(
                    target.span(),
                    format!("backends {name:?} is not a [[resource]] or a [[clone]]"),
                );
            }
            if b.port.is_none() {
                c.error(target.span(), format!("balancer {id}: `backends` needs a `port`"));
            }
        } else if let Some(p) = &b.port {
            c.error(p.span(), "`port` applies to the instances of `backends`: name them");
        }
        let port = b
            .port
            .as_ref()
            .map(|_| int_in(c, "balancer port", &b.port, 1..65536, 1) as u16);
        let mut addresses = BTreeMap::new();
        for (node, ip) in b.addresses.iter().flatten() {
            if !nodes.contains(node) {
                c.error(ip.span(), format!("addresses: {node:?} is not a [[node]]"));
            }
            match ip.get_ref().parse::<IpAddr>() {
                Ok(a) => {
                    addresses.insert(node.clone(), a);
                }
                Err(_) => c.error(ip.span(), format!("addresses: {:?} is not an IP address", ip.get_ref())),
            }
        }
        let servers = servers(c, b.servers.as_deref().unwrap_or_default());
        if b.backends.is_none() && servers.is_empty() && b.servers.as_ref().is_none_or(|s| s.is_empty()) {
            c.error(
                span.clone(),
                format!("balancer {id} has no backends: give `backends` (a clone or resource id) and/or `servers`"),
            );
        }
        let check = check(c, b.check.as_ref().map(|ch| ch.get_ref()));
        let max_conn = b
            .max_conn
            .as_ref()
            .map(|_| int_in(c, "max_conn", &b.max_conn, 1..1_000_001, 1) as u32);
        let connect_timeout = duration::checked_or(c, "connect_timeout", &b.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() {
            let at = b.connect_timeout.as_ref().map(|t| t.span()).unwrap_or(span.clone());
            c.error(at, "connect_timeout must be above 0");
        }
        let sticky = b
            .sticky
            .as_ref()
            .filter(|st| st.get_ref().by_source())
            .and_then(|st| sticky_source(c, st));
        let http = http(c, &b, mode, &span);
        if c.error_count() == errors {
            out.push(BalancerConfig {
                id,
                listen,
                mode,
                algorithm,
                consistent,
                backends: b.backends.map(|t| t.into_inner()),
                port,
                addresses,
                servers,
                check,
                max_conn,
                connect_timeout,
                sticky,
                http,
            });
        }
    }
    out
}

fn listen(
    c: &mut Checker,
    v: &Option<Spanned<Vec<Spanned<String>>>>,
    id: &str,
    section: &Range<usize>,
) -> Vec<SocketAddr> {
    let Some(addrs) = v else {
        c.error(
            section.clone(),
            format!("balancer {id} needs `listen` (one or more \"IP:PORT\")"),
        );
        return Vec::new();
    };
    if addrs.get_ref().is_empty() {
        c.error(addrs.span(), format!("balancer {id}: `listen` is empty"));
    }
    let mut out = Vec::new();
    for a in addrs.get_ref() {
        match a.get_ref().parse::<SocketAddr>() {
            Ok(s) if s.port() == 0 => c.error(a.span(), "a listen address needs a port above 0"),
            Ok(s) if out.contains(&s) => c.error(a.span(), format!("listen address {s} is given twice")),
            Ok(s) => out.push(s),
            Err(_) => c.error(a.span(), format!("listen address {:?} is not IP:PORT", a.get_ref())),
        }
    }
    out
}

fn servers(c: &mut Checker, raw: &[Spanned<RawServer>]) -> Vec<ServerConfig> {
    let mut out: Vec<ServerConfig> = Vec::new();
    for s in raw {
        let span = s.span();
        let s = s.get_ref();
        let name = match &s.name {
            None => {
                c.error(span.clone(), "a server needs a `name`");
                continue;
            }
            Some(n) if !valid_name(n.get_ref()) => {
                c.error(
                    n.span(),
                    format!(
                        "server name {:?} must be 1-63 characters of A-Z a-z 0-9 - _ .",
                        n.get_ref()
                    ),
                );
                continue;
            }
            Some(n) if out.iter().any(|o| &o.name == n.get_ref()) => {
                c.error(n.span(), format!("server name {:?} is used twice", n.get_ref()));
                continue;
            }
            Some(n) => n.get_ref().clone(),
        };
        let address = match &s.address {
            None => {
                c.error(span.clone(), format!("server {name} needs an `address` (\"IP:PORT\")"));
                continue;
            }
            Some(a) => match a.get_ref().parse::<SocketAddr>() {
                Ok(s) if s.port() != 0 => s,
                _ => {
                    c.error(a.span(), format!("server address {:?} is not IP:PORT", a.get_ref()));
                    continue;
                }
            },
        };
        let weight = int_in(c, "server weight", &s.weight, 0..i64::from(MAX_WEIGHT) + 1, 1) as u16;
        out.push(ServerConfig { name, address, weight });
    }
    out
}

/// `sticky = { source = true, ... }`: source affinity; the durations are optional (none: never
/// expires), the capacity bounded (the table is replicated); a cookie's keys do not belong.
fn sticky_source(c: &mut Checker, raw: &Spanned<RawSticky>) -> Option<StickyConfig> {
    let r = raw.get_ref();
    if r.cookie.is_some() || r.secure.is_some() || r.httponly.is_some() {
        c.error(
            raw.span(),
            "sticky: give either `source = true` (source affinity) or the cookie's keys (cookie, secure, httponly; HTTP mode), not both",
        );
        return None;
    }
    let dur = |c: &mut Checker, what: &str, v: &Option<Spanned<String>>| -> Option<u64> {
        let d = duration::checked(c, what, v.as_ref()?)?;
        if d.is_zero() {
            c.error(
                v.as_ref()?.span(),
                format!("{what} must be above 0 (leave it out: never)"),
            );
        }
        Some(d.as_millis() as u64)
    };
    let max_idle_ms = dur(c, "sticky max_idle", &r.max_idle);
    let max_life_ms = dur(c, "sticky max_life", &r.max_life);
    let capacity = int_in(
        c,
        "sticky capacity",
        &r.capacity,
        1..crate::state::MAX_STICK_CAPACITY as i64 + 1,
        DEFAULT_STICK_CAPACITY as i64,
    ) as usize;
    Some(StickyConfig {
        source: true,
        table: crate::lb::StickConfig {
            max_idle_ms,
            max_life_ms,
            capacity,
        },
    })
}

fn check(c: &mut Checker, raw: Option<&RawCheck>) -> CheckConfig {
    let mut out = CheckConfig::default();
    let Some(r) = raw else { return out };
    if let Some(k) = &r.kind {
        match k.get_ref().as_str() {
            "tcp" => {}
            "http" => out.kind = "http".into(),
            "agent" => c.error(
                k.span(),
                "an agent is asked besides a tcp or http check: give `agent_port` instead of kind = \"agent\"",
            ),
            other => c.error(k.span(), format!("check kind {other:?} is not one of tcp, http")),
        }
    }
    if let Some(p) = &r.http_path {
        let path = p.get_ref();
        if !path.starts_with('/') || path.len() > 1024 || !path.bytes().all(|b| b.is_ascii_graphic()) {
            c.error(
                p.span(),
                format!("check http_path {path:?} must start with / and be printable ASCII without spaces"),
            );
        }
        out.http_path = path.clone();
    }
    if let Some(e) = &r.expect {
        match parse_expect(e.get_ref()) {
            Some(range) => out.expect = range,
            None => c.error(
                e.span(),
                format!(
                    "check expect {:?} is not a status or a range like \"200-399\" (100..599)",
                    e.get_ref()
                ),
            ),
        }
    }
    if let Some(h) = &r.host {
        if h.get_ref().is_empty() || !h.get_ref().bytes().all(|b| b.is_ascii_graphic()) {
            c.error(h.span(), format!("check host {:?} is not a host name", h.get_ref()));
        }
        out.host = Some(h.get_ref().clone());
    }
    if out.kind != "http" {
        let stray = [r.http_path.as_ref(), r.expect.as_ref(), r.host.as_ref()];
        if let Some(s) = stray.into_iter().flatten().next() {
            c.error(s.span(), "http_path, expect and host belong to kind = \"http\"");
        }
    }
    out.agent_port = r
        .agent_port
        .as_ref()
        .map(|_| int_in(c, "check agent_port", &r.agent_port, 1..65536, 1) as u16);
    let ms = |c: &mut Checker, what: &str, v: &Option<Spanned<String>>, default: u64| -> u64 {
        let d = duration::checked_or(c, what, v, Duration::from_millis(default));
        if d.is_zero() {
            if let Some(v) = v {
                c.error(v.span(), format!("{what} must be above 0"));
            }
        }
        d.as_millis() as u64
    };
    let h = &mut out.health;
    h.interval_ms = ms(c, "check interval", &r.interval, h.interval_ms);
    // As HAProxy: fastinter and downinter default to inter.
    h.fast_interval_ms = ms(c, "check fast_interval", &r.fast_interval, h.interval_ms);
    h.down_interval_ms = ms(c, "check down_interval", &r.down_interval, h.interval_ms);
    h.rise = int_in(c, "check rise", &r.rise, 1..1001, i64::from(h.rise)) as u32;
    h.fall = int_in(c, "check fall", &r.fall, 1..1001, i64::from(h.fall)) as u32;
    h.error_limit = int_in(
        c,
        "check error_limit",
        &r.error_limit,
        0..1001,
        i64::from(h.error_limit),
    ) as u32;
    out.timeout = Duration::from_millis(ms(c, "check timeout", &r.timeout, h.interval_ms));
    out
}

/// `"200"` or `"200-399"`, within 100..=599.
fn parse_expect(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = lo.trim().parse().ok()?;
    let hi: u16 = hi.trim().parse().ok()?;
    ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some((lo, hi))
}

/// HTTP mode's keys (see [`HttpConfig`]); in TCP mode they are refused.
fn http(c: &mut Checker, b: &RawBalancer, mode: BalancerMode, section: &Range<usize>) -> HttpConfig {
    let mut out = HttpConfig::default();
    if mode == BalancerMode::Tcp {
        let durations = [
            &b.request_timeout,
            &b.server_timeout,
            &b.idle_timeout,
            &b.queue_timeout,
            &b.retry_on,
        ];
        let spans = durations
            .into_iter()
            .flatten()
            .map(|v| v.span())
            .chain(
                [&b.max_header_size, &b.retries, &b.queue]
                    .into_iter()
                    .flatten()
                    .map(|v| v.span()),
            )
            .chain(b.sticky.iter().filter(|v| !v.get_ref().by_source()).map(|v| v.span()));
        if let Some(at) = spans.min_by_key(|s| s.start) {
            c.error(
                at,
                "request_timeout, server_timeout, max_header_size, idle_timeout, retries, retry_on, queue, queue_timeout and the sticky cookie belong to mode = \"http\" (a TCP balancer sticks by `sticky = { source = true }`)",
            );
        }
        return out;
    }
    let positive = |c: &mut Checker, what: &str, v: &Option<Spanned<String>>, default: Duration| {
        let d = duration::checked_or(c, what, v, default);
        if d.is_zero() {
            let at = v.as_ref().map(|t| t.span()).unwrap_or(section.clone());
            c.error(at, format!("{what} must be above 0"));
        }
        d
    };
    out.request_timeout = positive(c, "request_timeout", &b.request_timeout, out.request_timeout);
    out.server_timeout = positive(c, "server_timeout", &b.server_timeout, out.server_timeout);
    out.idle_timeout = positive(c, "idle_timeout", &b.idle_timeout, out.idle_timeout);
    out.queue_timeout = positive(c, "queue_timeout", &b.queue_timeout, out.queue_timeout);
    // hyper's floor for its read buffer is 8 KiB; 1 MiB is far above any sane request head.
    out.max_header_size = int_in(
        c,
        "max_header_size",
        &b.max_header_size,
        1024..1_048_577,
        i64::from(out.max_header_size),
    ) as u32;
    out.retries = int_in(c, "retries", &b.retries, 0..11, i64::from(out.retries)) as u32;
    out.queue = int_in(c, "queue", &b.queue, 0..1_000_001, i64::from(out.queue)) as u32;
    if let Some(r) = &b.retry_on {
        match r.get_ref().as_str() {
            "connect" => out.retry_on = RetryOn::Connect,
            "idempotent" => out.retry_on = RetryOn::Idempotent,
            other => c.error(
                r.span(),
                format!("retry_on {other:?} is not one of connect, idempotent"),
            ),
        }
    }
    if let Some(s) = b.sticky.as_ref().filter(|s| !s.get_ref().by_source()) {
        if let Some(cap) = &s.get_ref().capacity {
            c.error(
                cap.span(),
                "sticky capacity is the source table's: the cookie needs none",
            );
        }
        out.sticky = Some(sticky(c, s.get_ref()));
    }
    out
}

fn sticky(c: &mut Checker, r: &RawSticky) -> CookieConfig {
    let mut out = CookieConfig::default();
    if let Some(n) = &r.cookie {
        if cookie::valid_name(n.get_ref()) {
            out.name = n.get_ref().clone();
        } else {
            c.error(
                n.span(),
                format!(
                    "sticky cookie {:?} is not a cookie name (1-64 token characters)",
                    n.get_ref()
                ),
            );
        }
    }
    // The cookie carries whole seconds.
    let seconds = |c: &mut Checker, what: &str, v: &Option<Spanned<String>>| -> Option<u64> {
        let v = v.as_ref()?;
        let d = duration::checked(c, what, v)?;
        if d < Duration::from_secs(1) {
            c.error(v.span(), format!("{what} must be at least 1s"));
        }
        Some(d.as_secs().max(1))
    };
    out.max_idle_s = seconds(c, "sticky max_idle", &r.max_idle);
    out.max_life_s = seconds(c, "sticky max_life", &r.max_life);
    out.secure = r.secure.unwrap_or(out.secure);
    out.httponly = r.httponly.unwrap_or(out.httponly);
    out
}
