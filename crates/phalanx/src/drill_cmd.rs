//! `phalanx drill SCENARIO --resource R --probe URL[,URL...] [--node N]`: a failover drill
//! against a live cluster, measured from a client's side. Built so far:
//! - `switchover`: a planned move to another online node (`--node`), then the move cleared;
//! - `kill-node`: a node (`--node`, default the resource's) powered off through the cluster's
//!   own fence devices, `POST /v1/nodes/{name}/power-off` sent to another node, as a real
//!   failure;
//! - `kill-service`: the resource's process SIGKILLed on its node, `POST
//!   /v1/resources/{rsc}/kill-service`, for the cluster's monitor to find;
//! - `pause-node`: a node's daemon SIGSTOPped (`POST /v1/nodes/{name}/pause`, to that node),
//!   which its peers must declare lost and fence;
//! - `cut-link`: one heartbeat link of a node administratively down (nothing may move), then
//!   all of them (the node is isolated: the majority fences it and recovers), then restored;
//! - `fence-fail`: a power-off, then every surviving node's next fence operations fail;
//! - `lb-backend-down`: one backend of a balancer (`--resource` names the balancer; `--node`
//!   the node whose instance of its backends resource goes down) SIGKILLed, probed through the
//!   balancer: its clients should see no outage, and the backend is back once the monitor
//!   restarted it and the balancer's checks passed again.
//!
//! A drill refuses to start without quorum, for an unknown resource or node, or with the
//! service unhealthy, then takes the cluster's one drill slot (`POST /v1/drills/{id}`: refused
//! while another drill runs) and records each run's figures and its end in the event history.
//! Each run probes the service every 10 ms before, during and after the fault; when the
//! cluster runs the session store, a session writer writes through it meanwhile and reads every
//! acknowledged write back afterwards (RPO: acknowledged writes lost); with a `postgres://`
//! probe (a new connection to a primary), a PostgreSQL client commits one row per transaction
//! through it instead and every acknowledged commit is looked up afterwards
//! (`crate::pg_writer`). A run waits (at most
//! `--settle`) until the cluster has dealt with the fault and has nothing left to do, and always
//! undoes what the drill did that the cluster would not (a move, a disabled link), also when
//! the run fails. What the probes saw — RTO (first failed probe to first success after it),
//! failed probes — is `phalanx_core::drill`'s arithmetic; `--plot` draws it.

use crate::client::Client;
use crate::harness::runs_on;
use crate::session_writer::Writer;
use anyhow::{anyhow, bail, Context, Result};
use phalanx_core::drill::{self, Measured, Sample};
use phalanx_core::scheduler::Role;
use phalanx_node::node::ResourceStatus;
use phalanx_node::StatusReport;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

pub use phalanx_core::drill::SCENARIOS;
/// The scenarios built so far.
const BUILT: [&str; 7] = [
    "switchover",
    "kill-node",
    "kill-service",
    "pause-node",
    "cut-link",
    "fence-fail",
    "lb-backend-down",
];

/// How often the service is probed, and how long one probe may take.
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the request that causes a fault is retried while the cluster answers 503 (no leader
/// right now: nothing was done), e.g. just after a node a previous run took out came back.
const FAULT_RETRY: Duration = Duration::from_secs(10);
/// Probes in flight at most (a probe's timeout ÷ the probing interval, with room).
const MAX_IN_FLIGHT: usize = 100;

/// The command's flags.
#[derive(Debug, Clone)]
pub struct Args {
    pub scenario: String,
    pub resource: String,
    /// The node to act on: the move's target (switchover), the node to kill, pause or cut off
    /// (default: where the resource runs).
    pub node: Option<String>,
    /// `http://…`, `tcp://IP:PORT` or `memcached://IP:PORT`; several, comma-separated: a client
    /// that tries each in turn (the service answers if one of them does).
    pub probe: String,
    pub runs: usize,
    /// How long a run may take to settle before it is aborted (and what the drill did undone).
    pub settle: Duration,
    /// fence-fail: how many fence operations fail on each surviving node before the devices
    /// heal (a number above the cluster's retries within `settle` aborts the drill).
    pub fence_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Http(String),
    Tcp(String),
    Memcached(String),
    /// A `postgres://` URL (checked when parsed): a probe is a new connection to a primary.
    Postgres(String),
}

/// Parse `--probe`.
fn targets(probe: &str) -> Result<Vec<Target>> {
    let t: Vec<Target> = probe
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let addr = |a: &str, scheme: &str| {
                a.parse::<SocketAddr>()
                    .map(|_| a.to_string())
                    .map_err(|_| anyhow!("--probe {p}: {scheme}:// needs IP:PORT"))
            };
            if p.starts_with("http://") || p.starts_with("https://") {
                Ok(Target::Http(p.to_string()))
            } else if let Some(a) = p.strip_prefix("tcp://") {
                addr(a, "tcp").map(Target::Tcp)
            } else if let Some(a) = p.strip_prefix("memcached://") {
                addr(a, "memcached").map(Target::Memcached)
            } else if p.starts_with("postgres://") || p.starts_with("postgresql://") {
                crate::pg_writer::parse(p).map(|_| Target::Postgres(p.to_string()))
            } else {
                bail!("--probe {p}: give http://…, https://…, tcp://IP:PORT, memcached://IP:PORT or postgres://USER@IP:PORT/DB")
            }
        })
        .collect::<Result<_>>()?;
    if t.is_empty() {
        bail!("--probe: give at least one address to probe");
    }
    Ok(t)
}

/// A memcached server answers `version`.
async fn memcached_answers(addr: &str) -> Result<bool> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    let mut r = tokio::io::BufReader::new(s);
    r.get_mut().write_all(b"version\r\n").await?;
    let mut line = String::new();
    r.read_line(&mut line).await?;
    Ok(line.starts_with("VERSION "))
}

/// One probe: true if any target answers (an HTTP status below 500, a TCP connection, a
/// memcached `VERSION`).
async fn probe(http: &reqwest::Client, targets: &[Target]) -> bool {
    for t in targets {
        let ok = match t {
            Target::Http(url) => http
                .get(url)
                .timeout(PROBE_TIMEOUT)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() < 500),
            Target::Tcp(addr) => tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
                .is_ok_and(|c| c.is_ok()),
            Target::Memcached(addr) => tokio::time::timeout(PROBE_TIMEOUT, memcached_answers(addr))
                .await
                .is_ok_and(|r| r.unwrap_or(false)),
            Target::Postgres(url) => match crate::pg_writer::parse(url) {
                Ok(cfg) => tokio::time::timeout(PROBE_TIMEOUT, crate::pg_writer::writable(&cfg))
                    .await
                    .unwrap_or(false),
                Err(_) => false,
            },
        };
        if ok {
            return true;
        }
    }
    false
}

/// What writes through the service during a run, for its RPO: the session writer (the cluster
/// runs the session store), or with a `postgres://` probe a committing PostgreSQL client.
enum RunWriter {
    Sessions(Writer),
    Pg(Box<crate::pg_writer::PgWriter>),
}

impl RunWriter {
    async fn ready(&self, timeout: Duration) -> Result<()> {
        match self {
            RunWriter::Sessions(w) => w.ready(timeout).await,
            RunWriter::Pg(w) => w.ready(timeout).await,
        }
    }

    async fn stop(self, timeout: Duration) -> Result<crate::session_writer::Figures> {
        match self {
            RunWriter::Sessions(w) => w.stop(timeout).await,
            RunWriter::Pg(w) => (*w).stop(timeout).await,
        }
    }
}

/// The probe's PostgreSQL URL, if it has one.
fn pg_target(targets: &[Target]) -> Option<tokio_postgres::Config> {
    targets.iter().find_map(|t| match t {
        Target::Postgres(url) => crate::pg_writer::parse(url).ok(),
        _ => None,
    })
}

/// One run of a drill.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// What the run did (`web moved to n2`, `n1 powered off`, `link 0 of n1 down`…).
    pub fault: String,
    pub from: String,
    pub to: String,
    /// When the fault was caused (ms since the run began) and when the cluster had settled.
    pub fault_ms: u64,
    pub settled_ms: u64,
    #[serde(flatten)]
    pub measured: Measured,
    /// The writer's figures (None: no session store and no `postgres://` probe): session writes,
    /// or with a `postgres://` probe PostgreSQL commits.
    pub session_writes_acked: Option<u64>,
    /// Acknowledged writes (or commits) missing afterwards: the RPO (0 expected).
    pub rpo_writes: Option<u64>,
    /// The longest time no session write was acknowledged (ms).
    pub session_outage_ms: Option<u64>,
    /// Fences of the node that failed during the run (fence-fail: at least one expected).
    pub fence_failures: u64,
    /// When the history saw the failure (node lost, monitor failed), the fence succeed and the
    /// resource start (or promote) again: ms since the run began, like `fault_ms`.
    pub detected_ms: Option<u64>,
    pub fenced_ms: Option<u64>,
    pub started_ms: Option<u64>,
    /// The RTO this run should stay within (issue 16's bound for the scenario, from the
    /// cluster's timings: `phalanx_core::drill::rto_bound_ms`), and whether it did.
    pub rto_bound_ms: Option<u64>,
    pub within_bound: Option<bool>,
    /// Every probe, for `--plot` (not printed).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// The fields of an event the drill reads (`GET /v1/events`).
#[derive(Debug, serde::Deserialize)]
struct Seen {
    time_ms: u64,
    kind: String,
    node: String,
    resource: Option<String>,
    #[serde(default)]
    summary: String,
}

#[derive(Debug, serde::Deserialize)]
struct Page {
    events: Vec<Seen>,
}

/// From the history since the run began (unix ms `begun`): when the failure was detected (the
/// victim lost, a member's monitor failed, or `backend` taken down by its balancer's checks),
/// the victim fenced and the resource started again (after the fence, if there was one), in
/// ms since the run began; and how many fences of the victim failed.
async fn marks(
    client: &Client,
    apis: &[String],
    members: &[String],
    victim: &str,
    backend: Option<&str>,
    times: (u64, u64),
) -> ([Option<u64>; 3], u64) {
    let (begun, fault_unix) = times;
    let Ok((api, _)) = client.first_answering(apis).await else {
        return ([None; 3], 0);
    };
    let Ok(page) = client
        .get::<Page>(&api, &format!("/v1/events?since_ms={fault_unix}"))
        .await
    else {
        return ([None; 3], 0);
    };
    let mine = |e: &Seen| {
        e.resource
            .as_deref()
            .is_some_and(|r| members.iter().any(|m| r.split(':').next() == Some(m.as_str())))
    };
    let at = |f: &dyn Fn(&Seen) -> bool| {
        page.events
            .iter()
            .find(|e| f(e))
            .map(|e| e.time_ms.saturating_sub(begun))
    };
    let fenced = at(&|e| e.kind == "fence_succeeded" && e.node == victim);
    let failed = page
        .events
        .iter()
        .filter(|e| e.kind == "fence_failed" && e.node == victim)
        .count() as u64;
    (
        [
            at(&|e| {
                (e.kind == "node_lost" && e.node == victim)
                    || (e.kind == "monitor_failed" && mine(e))
                    || backend.is_some_and(|b| {
                        e.kind == "backend_changed"
                            && e.summary.contains(&format!("backend {b} "))
                            && e.summary.contains("-> down")
                    })
            }),
            fenced,
            // The start that recovered it: after the fence, when there was one.
            page.events
                .iter()
                .filter(|e| matches!(e.kind.as_str(), "resource_started" | "resource_promoted") && mine(e))
                .map(|e| e.time_ms.saturating_sub(begun))
                .find(|t| fenced.is_none_or(|f| *t >= f)),
        ],
        failed,
    )
}

/// The drill's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub resource: String,
    pub probe: String,
    pub runs: Vec<Run>,
    pub rto_p50_ms: Option<u64>,
    pub rto_max_ms: Option<u64>,
    pub failed_probes: usize,
    /// Acknowledged session writes lost over every run (None: no session store).
    pub rpo_writes: Option<u64>,
    /// Every run within its RTO bound (None: the scenario has none).
    pub within_bounds: Option<bool>,
}

/// Check the flags that need no cluster.
pub fn check(a: &Args) -> Result<()> {
    if !SCENARIOS.contains(&a.scenario.as_str()) {
        bail!("unknown scenario {:?}: one of {}", a.scenario, SCENARIOS.join(", "));
    }
    if !BUILT.contains(&a.scenario.as_str()) {
        bail!(
            "scenario {} is not built yet (issue 16); built: {}",
            a.scenario,
            BUILT.join(", ")
        );
    }
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if a.fence_failures == 0 || a.fence_failures > 100 {
        bail!("--fence-failures must be 1..=100");
    }
    targets(&a.probe)?;
    Ok(())
}

/// What must hold before a run, and who is who: the API that answered, where the resource
/// runs (`from`), the node the fault acts on (`victim`) or the move goes to (`to`), an API of
/// a node that stays up (`witness_api`: power-offs are asked of it), the victim's API.
struct Ready {
    api: String,
    from: String,
    victim: String,
    victim_api: String,
    to: String,
    witness_api: String,
    /// The resource's failures recorded so far (a kill-service run waits for one more).
    failures: usize,
    /// It has a primary (a promotable clone's promoted instance): it is back once one is.
    primary: bool,
    /// The primitives `--resource` names (itself, or a group's or clone's members).
    members: Vec<String>,
    /// The APIs of the online nodes other than the victim (fence-fail arms and heals them).
    survivors: Vec<String>,
    /// The victim's heartbeat links, and the detection time (`heartbeat_interval` × `dead_after`).
    links: usize,
    detection: Duration,
    /// The killed resource's monitor interval (kill-service, lb-backend-down: its bound).
    monitor_ms: Option<u64>,
    /// lb-backend-down: the backend taken down.
    lb: Option<LbTarget>,
}

/// The backend an lb-backend-down run takes down: `RESOURCE@NODE`, an instance the cluster runs
/// (its process is killed on that node), and how many of the balancer's backends were up.
#[derive(Debug, Clone)]
struct LbTarget {
    backend: String,
    primitive: String,
    node: String,
    up_before: usize,
}

/// The balancer's backends, as the node running it says.
async fn backends(client: &Client, st: &StatusReport, lb: &str) -> Result<Vec<phalanx_node::lb::BackendStatus>> {
    let found = crate::balancer_cmd::status(client, st, Some(lb)).await?;
    let f = found
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no balancer {lb} in the cluster's config"))?;
    match f.status {
        Some(s) => Ok(s.backends),
        None => bail!(
            "balancer {lb}: {}",
            f.error.unwrap_or_else(|| "it runs nowhere now".into())
        ),
    }
}

/// lb-backend-down's backend: the instance on `node` if given, else an up instance on another
/// node than the balancer's (any up instance if none). Refused when `--resource` is no
/// balancer, when the backend is not up or is a static server (not the cluster's to kill), and
/// when it is the only backend up (that would be an outage, not a backend failure).
async fn lb_target(client: &Client, st: &StatusReport, a: &Args, lb_node: &str) -> Result<LbTarget> {
    let balancers: Vec<&str> = st
        .resources
        .iter()
        .filter(|r| r.agent == "balancer")
        .map(|r| r.id.as_str())
        .collect();
    if !balancers.contains(&a.resource.as_str()) {
        bail!(
            "{} is not a balancer: lb-backend-down takes a backend of a [[balancer]] down (balancers: {})",
            a.resource,
            if balancers.is_empty() {
                "none".to_string()
            } else {
                balancers.join(", ")
            }
        );
    }
    let all = backends(client, st, &a.resource).await?;
    let up = all.iter().filter(|b| b.state == "up").count();
    let instance =
        |b: &phalanx_node::lb::BackendStatus| b.name.split_once('@').map(|(r, n)| (r.to_string(), n.to_string()));
    let names = || all.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ");
    let chosen = match &a.node {
        Some(n) => all
            .iter()
            .find(|b| instance(b).is_some_and(|(_, on)| on == *n))
            .ok_or_else(|| anyhow!("no backend of {} runs on {n} (backends: {})", a.resource, names()))?,
        None => {
            let mut cands = all.iter().filter(|b| b.state == "up" && instance(b).is_some());
            let first = cands.clone().next();
            cands
                .find(|b| instance(b).is_some_and(|(_, on)| on != lb_node))
                .or(first)
                .ok_or_else(|| {
                    anyhow!(
                        "no backend of {} is an instance the cluster runs and up (backends: {}): lb-backend-down \
                         kills one (static servers are not the cluster's to kill)",
                        a.resource,
                        names()
                    )
                })?
        }
    };
    if chosen.state != "up" {
        bail!(
            "backend {} of {} is {} now: lb-backend-down takes an up backend down",
            chosen.name,
            a.resource,
            chosen.state
        );
    }
    if up < 2 {
        bail!(
            "{} has {up} backend(s) up: taking {} down would be an outage, not a backend failure",
            a.resource,
            chosen.name
        );
    }
    let (primitive, node) = instance(chosen).unwrap_or_default();
    Ok(LbTarget {
        backend: chosen.name.clone(),
        primitive,
        node,
        up_before: up,
    })
}

async fn ready(
    client: &Client,
    apis: &[String],
    a: &Args,
    http: &reqwest::Client,
    targets: &[Target],
) -> Result<Ready> {
    let (api, st) = client.first_answering(apis).await?;
    if !st.quorum {
        bail!("the cluster has no quorum: no drill now");
    }
    let named =
        |r: &&phalanx_node::node::ResourceStatus| r.id == a.resource || r.parent.as_deref() == Some(&a.resource);
    if !st.resources.iter().any(|r| named(&r)) {
        let mut names: Vec<&str> = st
            .resources
            .iter()
            .flat_map(|r| std::iter::once(r.id.as_str()).chain(r.parent.as_deref()))
            .collect();
        names.sort_unstable();
        names.dedup();
        bail!("no resource {:?} (resources: {})", a.resource, names.join(", "));
    }
    if let Some(n) = &a.node {
        if !st.nodes.iter().any(|x| &x.name == n) {
            let names: Vec<&str> = st.nodes.iter().map(|x| x.name.as_str()).collect();
            bail!("no node named {n:?} (nodes: {})", names.join(", "));
        }
    }
    let scenario = a.scenario.as_str();
    if scenario == "kill-service" && !st.resources.iter().any(|r| r.id == a.resource) {
        let members: Vec<&str> = st
            .resources
            .iter()
            .filter(|r| named(r))
            .map(|r| r.id.as_str())
            .collect();
        bail!(
            "{} is a group or clone: kill-service kills one primitive's process (one of {})",
            a.resource,
            members.join(", ")
        );
    }
    let from = runs_on(&st, &a.resource).ok_or_else(|| anyhow!("{} runs nowhere now: no drill", a.resource))?;
    let lb = match scenario {
        "lb-backend-down" => Some(lb_target(client, &st, a, &from).await?),
        _ => None,
    };
    let online = |n: &str| st.nodes.iter().any(|x| x.name == n && x.state == "online");
    let api_of = |n: &str| {
        st.nodes
            .iter()
            .find(|x| x.name == n)
            .map(|x| x.api.clone())
            .unwrap_or_default()
    };
    let victim = match (scenario, &a.node) {
        ("kill-service", Some(n)) if *n != from => bail!(
            "{} runs on {from}, not {n}: kill-service kills it where it runs",
            a.resource
        ),
        ("lb-backend-down", _) => lb.as_ref().map(|l| l.node.clone()).unwrap_or_default(),
        ("switchover", _) | (_, None) => from.clone(),
        (_, Some(n)) => n.clone(),
    };
    if scenario != "switchover" && !online(&victim) {
        bail!("{victim} is not online: nothing to {scenario}");
    }
    let to = match (scenario, &a.node) {
        ("switchover", Some(n)) if *n == from => bail!("{} runs on {n} already: give another --node", a.resource),
        ("switchover", Some(n)) if !online(n) => bail!("{n} is not online: {} cannot move there", a.resource),
        ("switchover", Some(n)) => n.clone(),
        // Restarted where it ran.
        ("lb-backend-down", _) => victim.clone(),
        _ => st
            .nodes
            .iter()
            .find(|n| n.name != from && n.name != victim && n.state == "online")
            .map(|n| n.name.clone())
            .ok_or_else(|| anyhow!("no other online node to take {} over", a.resource))?,
    };
    if matches!(scenario, "kill-node" | "pause-node" | "cut-link" | "fence-fail") && st.fencing == "off" {
        bail!("fencing is off: {scenario} needs the cluster to fence the node it takes out");
    }
    // Taking a node out must leave a quorum (the API refuses a power-off or a pause that would
    // not; disabling links is the node's own business): checked before the drill begins.
    if matches!(scenario, "kill-node" | "pause-node" | "cut-link" | "fence-fail") {
        let votes = st.votes.saturating_sub(usize::from(st.voters.contains(&victim)));
        if votes < st.votes_needed {
            bail!(
                "taking {victim} out would leave {votes} vote(s) where quorum needs {}: the cluster would stop every \
                 resource",
                st.votes_needed
            );
        }
    }
    // The resource whose failures and monitor matter: the killed backend's, or --resource.
    let killed = |r: &&phalanx_node::node::ResourceStatus| match &lb {
        Some(l) => r.id == l.primitive,
        None => named(r),
    };
    let failures = st
        .resources
        .iter()
        .filter(killed)
        .map(|r| r.failures.values().sum::<usize>())
        .sum();
    let monitor_ms = st.resources.iter().filter(killed).find_map(|r| r.monitor_interval_ms);
    // The victim's links, as a node that is not the victim sees them.
    let links = match st.nodes.iter().find(|x| x.name == victim && !x.is_self) {
        Some(x) => x.links.len(),
        None => client.status(&api_of(&to)).await.map_or(0, |s| {
            s.nodes.iter().find(|x| x.name == victim).map_or(0, |x| x.links.len())
        }),
    };
    if !probe(http, targets).await {
        bail!("the service is not healthy now (no answer from {}): no drill", a.probe);
    }
    let primary = instances(&st, &a.resource).any(|r| r.running.values().any(|role| *role == Role::Promoted));
    Ok(Ready {
        members: st.resources.iter().filter(killed).map(|r| r.id.clone()).collect(),
        monitor_ms,
        lb,
        survivors: st
            .nodes
            .iter()
            .filter(|n| n.name != victim && n.state == "online")
            .map(|n| n.api.clone())
            .collect(),
        api,
        victim_api: api_of(&victim),
        witness_api: api_of(&to),
        primary,
        from,
        victim,
        to,
        failures,
        links,
        detection: Duration::from_millis(st.heartbeat_interval_ms) * st.dead_after,
    })
}

/// A drill's id: the history's key for its steps (below 2^53, so JSON readers keep it exact).
fn drill_id() -> u64 {
    rand::random::<u64>() >> 11
}

/// Where the session store listens, as every online node says (empty: no store).
async fn session_addrs(client: &Client, apis: &[String]) -> Vec<SocketAddr> {
    let Ok((_, st)) = client.first_answering(apis).await else {
        return Vec::new();
    };
    let mut addrs = Vec::new();
    for n in st.nodes.iter().filter(|n| n.state == "online") {
        if let Ok(s) = client
            .get::<phalanx_node::sessions::SessionsStatus>(&n.api, "/v1/sessions")
            .await
        {
            addrs.extend(s.listen.iter().filter_map(|a| a.parse::<SocketAddr>().ok()));
        }
    }
    addrs
}

/// Run the drill: check that it can, take the cluster's one drill slot (refused while another
/// drill runs), run, record each run's figures and the end (aborted, with why, on an error).
pub async fn run(client: &Client, apis: &[String], a: &Args, progress: &indicatif::ProgressBar) -> Result<Report> {
    check(a)?;
    let targets = Arc::new(targets(&a.probe)?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .context("an HTTP client for the probes")?;
    let first = ready(client, apis, a, &http, &targets).await?;
    let sessions = session_addrs(client, apis).await;
    let pg = pg_target(&targets);
    if let Some(cfg) = &pg {
        crate::pg_writer::PgWriter::prepare(cfg).await?;
    }
    let id = drill_id();
    let bound = (a.settle + Duration::from_secs(30)) * a.runs as u32;
    let begin = serde_json::json!({
        "scenario": a.scenario, "resource": a.resource, "node": first.victim,
        "bound_ms": bound.as_millis() as u64,
    });
    let _: serde_json::Value = client
        .post(&first.api, &format!("/v1/drills/{id}"), &begin)
        .await
        .context("starting the drill")?;
    let mut runs: Vec<Run> = Vec::new();
    let mut result = Ok(());
    let members = online_nodes(client, apis).await;
    for i in 0..a.runs {
        if i > 0 {
            // A node a run took out must be back before the next run (a fence's reboot brings
            // it back; one left off is the operator's to power on).
            progress.set_message(format!(
                "run {} of {}: waiting for the cluster to be whole again",
                i + 1,
                a.runs
            ));
            if let Err(e) = whole_again(client, apis, &members, a.settle).await {
                result = Err(e.context(format!("before run {}", i + 1)));
                break;
            }
        }
        progress.set_message(format!("run {} of {}: {} of {}", i + 1, a.runs, a.scenario, a.resource));
        let r = match ready(client, apis, a, &http, &targets).await {
            Ok(r) => r,
            Err(e) => {
                result = Err(e.context(format!("before run {}", i + 1)));
                break;
            }
        };
        for fault in faults(a, &r) {
            let prefix = format!("drill-{id}-{}-", runs.len() + 1);
            let writer = match &pg {
                Some(cfg) => Some(RunWriter::Pg(Box::new(crate::pg_writer::PgWriter::start(
                    cfg.clone(),
                    (id as i64 & 0xffff_ffff) * 1_000_000 + runs.len() as i64 * 100_000,
                )))),
                None => (!sessions.is_empty()).then(|| RunWriter::Sessions(Writer::start(sessions.clone(), &prefix))),
            };
            let run = one(client, apis, a, &http, &targets, &r, fault, writer).await;
            match run {
                Ok(run) => {
                    let step = drill::DrillStep::Run {
                        run: runs.len() as u32 + 1,
                        from: run.from.clone(),
                        to: run.to.clone(),
                        rto_ms: run.measured.rto_ms,
                        failed_probes: run.measured.failed as u64,
                        probes: run.measured.probes as u64,
                        rpo_writes: run.rpo_writes,
                    };
                    record(client, apis, a, id, step).await?;
                    runs.push(run);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            break;
        }
        progress.inc(1);
    }
    let aborted = result.as_ref().err().map(|e| format!("{e:#}"));
    record(client, apis, a, id, drill::DrillStep::End { aborted }).await?;
    result?;
    let rtos: Vec<u64> = runs.iter().filter_map(|r| r.measured.rto_ms).collect();
    Ok(Report {
        scenario: a.scenario.clone(),
        resource: a.resource.clone(),
        probe: a.probe.clone(),
        rto_p50_ms: drill::percentile(&rtos, 50.0),
        rto_max_ms: rtos.iter().max().copied(),
        failed_probes: runs.iter().map(|r| r.measured.failed).sum(),
        rpo_writes: (!sessions.is_empty() || pg.is_some()).then(|| runs.iter().filter_map(|r| r.rpo_writes).sum()),
        within_bounds: runs
            .iter()
            .map(|r| r.within_bound)
            .collect::<Option<Vec<bool>>>()
            .map(|v| v.iter().all(|w| *w)),
        runs,
    })
}

/// The nodes online now, and the votes reachable.
async fn online_nodes(client: &Client, apis: &[String]) -> (Vec<String>, usize) {
    match client.first_answering(apis).await {
        Ok((_, st)) => (
            st.nodes
                .iter()
                .filter(|n| n.state == "online")
                .map(|n| n.name.clone())
                .collect(),
            st.votes,
        ),
        Err(_) => (Vec::new(), 0),
    }
}

/// Wait (at most `bound`) until every one of `members` is online again, counted among the
/// reachable votes, with nothing left to do: the cluster as the drill found it, ready for
/// another run.
async fn whole_again(client: &Client, apis: &[String], members: &(Vec<String>, usize), bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    loop {
        let mut missing: Vec<String> = members.0.clone();
        if let Ok((_, st)) = client.first_answering(apis).await {
            missing.retain(|m| !st.nodes.iter().any(|n| &n.name == m && n.state == "online"));
            if missing.is_empty() && st.votes >= members.1 && st.leader.is_some() && st.plan_pending == 0 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            if missing.is_empty() {
                bail!("the cluster still has actions pending after {bound:?}");
            }
            bail!(
                "{} not back within {bound:?} (a fence device that powers nodes off leaves them off: power it on, \
                 start its daemon, and run the drill again)",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Record a step of drill `id` through the first node that takes it (the run's node may be
/// gone, or die between answering and taking it: each is tried in turn; a step that was
/// committed before its answer was lost is not recorded twice, see `drill::recorded`).
async fn record(client: &Client, apis: &[String], a: &Args, id: u64, step: drill::DrillStep) -> Result<()> {
    let body = serde_json::json!({ "scenario": a.scenario, "resource": a.resource, "step": step });
    let path = format!("/v1/drills/{id}/steps");
    let mut last = anyhow!("no API address to record it through");
    for api in apis {
        match client
            .post_retrying::<_, serde_json::Value>(api, &path, &body, Duration::from_secs(10))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => last = e.context(format!("through {api}")),
        }
    }
    Err(last.context("recording the drill in the history"))
}

/// One fault a run causes.
#[derive(Debug, Clone)]
enum Fault {
    Move,
    PowerOff,
    /// A power-off, then every surviving node's next fence operations fail.
    FenceFail,
    KillService,
    /// A balancer's backend's process killed.
    BackendDown,
    Pause,
    /// Links of the victim to take down, and for how long to watch when nothing is to happen.
    CutLinks {
        links: Vec<usize>,
        watch: Option<Duration>,
    },
}

/// The faults of one run of the scenario: one, except cut-link's two (one link: nothing may
/// move; then every link: the node is cut off).
fn faults(a: &Args, r: &Ready) -> Vec<Fault> {
    match a.scenario.as_str() {
        "kill-node" => vec![Fault::PowerOff],
        "fence-fail" => vec![Fault::FenceFail],
        "kill-service" => vec![Fault::KillService],
        "lb-backend-down" => vec![Fault::BackendDown],
        "pause-node" => vec![Fault::Pause],
        "cut-link" => {
            let all: Vec<usize> = (0..r.links.max(1)).collect();
            let mut f = Vec::new();
            if all.len() > 1 {
                f.push(Fault::CutLinks {
                    links: vec![0],
                    watch: Some(r.detection * 3 + Duration::from_millis(500)),
                });
            }
            f.push(Fault::CutLinks {
                links: all,
                watch: None,
            });
            f
        }
        _ => vec![Fault::Move],
    }
}

/// One run: cause the fault, measure, undo what the cluster would not.
#[allow(clippy::too_many_arguments)]
async fn one(
    client: &Client,
    apis: &[String],
    a: &Args,
    http: &reqwest::Client,
    targets: &Arc<Vec<Target>>,
    ids: &Ready,
    fault: Fault,
    writer: Option<RunWriter>,
) -> Result<Run> {
    if let Some(w) = &writer {
        w.ready(Duration::from_secs(10))
            .await
            .context("the writer before the fault")?;
    }
    // Probe from now on, every 10 ms, until told to stop: each probe in its own task, so that
    // one hanging on a lost SYN (up to its timeout) does not hold the next ones back and the
    // RTO keeps its 10 ms resolution (a probe is dated when it is sent).
    let started = Instant::now();
    let begun = phalanx_node::mesh::unix_ms();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let prober = {
        let (samples, targets, http) = (samples.clone(), targets.clone(), http.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut in_flight = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                while in_flight.try_join_next().is_some() {}
                if in_flight.len() >= MAX_IN_FLIGHT {
                    continue;
                }
                let at_ms = started.elapsed().as_millis() as u64;
                let (samples, targets, http) = (samples.clone(), targets.clone(), http.clone());
                in_flight.spawn(async move {
                    let ok = probe(&http, &targets).await;
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Sample { at_ms, ok });
                });
            }
            while in_flight.join_next().await.is_some() {}
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fault_ms = started.elapsed().as_millis() as u64;
    let fault_unix = begun + fault_ms;
    let (rsc, victim, from) = (a.resource.clone(), ids.victim.clone(), ids.from.clone());
    let primary = ids.primary;
    // Off the victim if it ran there, else once the victim is out (or not, for a watch).
    let off_victim: Done = {
        let (rsc, victim) = (rsc.clone(), victim.clone());
        Box::new(move |st| {
            let at = serving_on(st, &rsc, primary)?;
            // Offline, or fenced since the fault (a reboot may have brought it back already).
            let out = st.nodes.iter().any(|n| {
                n.name == victim && (n.state == "offline" || n.fence.fenced_at_ms.is_some_and(|t| t >= fault_unix))
            });
            (at != victim && (out || from != victim)).then_some(at)
        })
    };
    let empty = serde_json::json!({});
    let survivors = ids.survivors.as_slice();
    let (what, caused, done): (String, Result<serde_json::Value>, Done) = match &fault {
        Fault::FenceFail => {
            let mut caused = client
                .post_retrying(
                    &ids.witness_api,
                    &format!("/v1/nodes/{victim}/power-off"),
                    &empty,
                    FAULT_RETRY,
                )
                .await;
            for api in survivors {
                if caused.is_ok() {
                    caused = client
                        .post_retrying(
                            api,
                            "/v1/fence-fail",
                            &serde_json::json!({ "operations": a.fence_failures }),
                            FAULT_RETRY,
                        )
                        .await;
                }
            }
            let what = format!("{victim} off, {} fence(s) fail", a.fence_failures);
            (what, caused, off_victim)
        }
        Fault::PowerOff => (
            format!("{victim} powered off"),
            // Asked of a node that stays up (the victim could not answer).
            client
                .post_retrying(
                    &ids.witness_api,
                    &format!("/v1/nodes/{victim}/power-off"),
                    &empty,
                    FAULT_RETRY,
                )
                .await,
            off_victim,
        ),
        Fault::Pause => (
            format!("{victim}'s daemon paused"),
            client
                .post_retrying(
                    &ids.victim_api,
                    &format!("/v1/nodes/{victim}/pause"),
                    &serde_json::json!({ "seconds": a.settle.as_secs().clamp(1, 600) }),
                    FAULT_RETRY,
                )
                .await,
            off_victim,
        ),
        Fault::KillService => (
            format!("{rsc}'s process killed on {victim}"),
            client
                .post_retrying(
                    &ids.victim_api,
                    &format!("/v1/resources/{rsc}/kill-service"),
                    &empty,
                    FAULT_RETRY,
                )
                .await,
            Box::new({
                let (rsc, before) = (rsc.clone(), ids.failures);
                move |st| {
                    let failed: usize = instances(st, &rsc).map(|r| r.failures.values().sum::<usize>()).sum();
                    serving_on(st, &rsc, primary).filter(|_| failed > before)
                }
            }),
        ),
        Fault::BackendDown => {
            let l = ids
                .lb
                .clone()
                .ok_or_else(|| anyhow!("lb-backend-down without a backend"))?;
            (
                format!("backend {} down", l.backend),
                client
                    .post_retrying(
                        &ids.victim_api,
                        &format!("/v1/resources/{}/kill-service", l.primitive),
                        &empty,
                        FAULT_RETRY,
                    )
                    .await,
                // The monitor saw it and the instance runs there again.
                Box::new({
                    let before = ids.failures;
                    move |st| {
                        let r = st.resources.iter().find(|r| r.id == l.primitive)?;
                        let failed: usize = r.failures.values().sum();
                        let back = r.running.get(&l.node).is_some_and(|role| *role != Role::Failed);
                        (failed > before && back).then(|| l.backend.clone())
                    }
                }),
            )
        }
        Fault::CutLinks { links, watch } => {
            let mut caused = Ok(empty.clone());
            for l in links {
                let r = client
                    .post_retrying(
                        &ids.victim_api,
                        &format!("/v1/links/{l}"),
                        &serde_json::json!({ "enabled": false }),
                        FAULT_RETRY,
                    )
                    .await;
                if r.is_err() {
                    caused = r;
                    break;
                }
            }
            let what = if links.len() == 1 {
                format!("link {} of {victim} down", links[0])
            } else {
                format!("every link of {victim} down")
            };
            let done: Done = match watch {
                // Nothing may happen: watch, then say where it runs.
                Some(w) => {
                    let until = Instant::now() + *w;
                    let rsc = rsc.clone();
                    Box::new(move |st| (Instant::now() >= until).then(|| runs_on(st, &rsc)).flatten())
                }
                None => off_victim,
            };
            (what, caused, done)
        }
        Fault::Move => (
            format!("{rsc} moved to {}", ids.to),
            client
                .post_retrying(
                    &ids.api,
                    &format!("/v1/resources/{rsc}/move"),
                    &serde_json::json!({ "node": ids.to }),
                    FAULT_RETRY,
                )
                .await,
            Box::new({
                let (rsc, to) = (rsc.clone(), ids.to.clone());
                move |st| serving_on(st, &rsc, primary).filter(|n| *n == to)
            }),
        ),
    };
    let mut landed = match caused {
        Ok(_) => settle(client, apis, &rsc, a.settle, done).await,
        Err(e) => Err(e.context(format!("causing the fault ({what})"))),
    };
    if let (Ok(_), Some(l)) = (&landed, &ids.lb) {
        landed = backends_back(client, apis, &rsc, l, a.settle)
            .await
            .map(|_| l.backend.clone());
    }
    let settled_ms = started.elapsed().as_millis() as u64;
    // A little more probing after the cluster settled, so that the recovery is seen.
    if landed.is_ok() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = stop.send(true);
    let _ = prober.await;
    // Always restore what the cluster would not: the drill's move, the links it took down
    // (a node fenced meanwhile does not answer: it comes back with its links up).
    let restored = match &fault {
        Fault::Move => {
            let path = format!("/v1/resources/{rsc}/clear");
            let cleared: Result<serde_json::Value> = client.post(&ids.api, &path, &serde_json::json!({})).await;
            cleared.map(drop).context("clearing the drill's move")
        }
        Fault::FenceFail => {
            let mut healed = Ok(());
            for api in survivors {
                let r: Result<serde_json::Value> = client
                    .post(api, "/v1/fence-fail", &serde_json::json!({ "operations": 0 }))
                    .await;
                if let Err(e) = r {
                    healed = Err(e).with_context(|| format!("healing the fence devices of {api}"));
                }
            }
            healed
        }
        Fault::CutLinks { links, .. } => {
            for l in links {
                let _: Result<serde_json::Value> = client
                    .post(
                        &ids.victim_api,
                        &format!("/v1/links/{l}"),
                        &serde_json::json!({ "enabled": true }),
                    )
                    .await;
            }
            Ok(())
        }
        _ => Ok(()),
    };
    let session = match writer {
        Some(w) => Some(w.stop(a.settle).await.context("reading the session writes back")?),
        None => None,
    };
    restored?;
    let undone = match &fault {
        Fault::Move => "its move cleared",
        Fault::CutLinks { .. } => "the links re-enabled",
        Fault::FenceFail => "the fence devices healed",
        _ => "nothing of the drill's left to undo",
    };
    let to = landed.map_err(|e| anyhow!("{e:#} ({undone})"))?;
    let backend = ids.lb.as_ref().map(|l| l.backend.as_str());
    let ([detected_ms, fenced_ms, started_ms], fence_failures) =
        marks(client, apis, &ids.members, &victim, backend, (begun, fault_unix)).await;
    let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    samples.sort_by_key(|s| s.at_ms);
    let measured = drill::measure(&samples, fault_ms);
    let rto_bound_ms = drill::rto_bound_ms(
        &a.scenario,
        drill::Timings {
            detection_ms: ids.detection.as_millis() as u64,
            monitor_ms: ids.monitor_ms,
            recovery_ms: started_ms.zip(detected_ms).map(|(s, d)| s.saturating_sub(d)),
        },
    );
    Ok(Run {
        rto_bound_ms,
        within_bound: rto_bound_ms.zip(measured.rto_ms).map(|(b, rto)| rto <= b),
        fault: what,
        // A balancer's run is about its backend.
        from: ids.lb.as_ref().map_or_else(|| ids.from.clone(), |l| l.backend.clone()),
        to,
        fault_ms,
        settled_ms,
        measured,
        session_writes_acked: session.map(|s| s.acked),
        rpo_writes: session.map(|s| s.lost),
        session_outage_ms: session.map(|s| s.outage_ms),
        fence_failures,
        detected_ms,
        fenced_ms,
        started_ms,
        samples,
    })
}

/// Wait (at most `bound`) until balancer `lb` has as many backends up as before the run.
async fn backends_back(client: &Client, apis: &[String], lb: &str, l: &LbTarget, bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    loop {
        if let Ok((_, st)) = client.first_answering(apis).await {
            if let Ok(all) = backends(client, &st, lb).await {
                if all.iter().filter(|b| b.state == "up").count() >= l.up_before {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "balancer {lb} did not take backend {} back within {bound:?}: the drill is aborted",
                l.backend
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the resource runs once the cluster has dealt with a fault (None: not yet).
type Done = Box<dyn Fn(&StatusReport) -> Option<String> + Send>;

/// Where `rsc` serves again after a fault: [`runs_on`], once no instance of it is left failed
/// and, for a resource with a primary, once one is promoted again. The state records a failure
/// or a lost node a moment before the plan that recovers it, with nothing pending in between:
/// taken for settled there, a drill stopped probing before the service was back and reported
/// no RTO (a kill-service run, whose instance was still `Failed`; a kill-node run of
/// PostgreSQL, whose replicas still ran: `runs_on` names a replica's node when no instance is
/// promoted).
fn serving_on(st: &StatusReport, rsc: &str, primary: bool) -> Option<String> {
    let roles = || instances(st, rsc).flat_map(|r| r.running.values());
    let failed = roles().any(|role| *role == Role::Failed);
    let promoted = roles().any(|role| *role == Role::Promoted);
    (!failed && (promoted || !primary)).then(|| runs_on(st, rsc)).flatten()
}

/// The primitives `rsc` names in `st`: itself, or its group's or clone's members.
fn instances<'a>(st: &'a StatusReport, rsc: &'a str) -> impl Iterator<Item = &'a ResourceStatus> + 'a {
    st.resources
        .iter()
        .filter(move |r| r.id == rsc || r.parent.as_deref() == Some(rsc))
}

/// Wait until `done` says where `rsc` runs in the view of a node that answers, with no plan
/// pending; where it runs then.
async fn settle(client: &Client, apis: &[String], rsc: &str, bound: Duration, done: Done) -> Result<String> {
    let deadline = Instant::now() + bound;
    loop {
        if let Ok((_, st)) = client.first_answering(apis).await {
            if let Some(at) = done(&st).filter(|_| st.plan_pending == 0) {
                return Ok(at);
            }
        }
        if Instant::now() > deadline {
            bail!("{rsc} did not settle within {bound:?}: the drill is aborted");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--plot FILE.svg`: every run as a row of its probes over time (green: answered, red: not),
/// in ms since its fault, with the detection (D), the fence (F) and the start (S) marked.
pub fn plot(r: &Report, path: &std::path::Path) -> Result<()> {
    use plotters::prelude::*;
    let rel = |run: &Run, t: u64| t as i64 - run.fault_ms as i64;
    let end = r
        .runs
        .iter()
        .filter_map(|run| run.samples.last().map(|s| rel(run, s.at_ms)))
        .max()
        .unwrap_or(1000)
        .max(100) as f64;
    let rows = r.runs.len().max(1);
    let root = SVGBackend::new(path, (1000, 140 + 40 * rows as u32)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("drill {} of {}: probes every 10 ms", r.scenario, r.resource),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(-250f64..end, 0f64..rows as f64)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("ms since the fault")
        .y_desc("run")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(rows + 1)
        .y_label_formatter(&|y| {
            let i = y.round() as usize;
            if (y - y.round()).abs() < 1e-6 && i < rows {
                format!("{}", i + 1)
            } else {
                String::new()
            }
        })
        .disable_y_mesh()
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, run) in r.runs.iter().enumerate() {
        let y = i as f64;
        let dots = run.samples.iter().map(|s| {
            let x = rel(run, s.at_ms) as f64;
            let color = if s.ok { GREEN.mix(0.8) } else { RED.mix(0.9) };
            Rectangle::new([(x, y + 0.3), (x + 8.0, y + 0.7)], color.filled())
        });
        chart.draw_series(dots).map_err(|e| fail(&e))?;
        let marks = [("D", run.detected_ms), ("F", run.fenced_ms), ("S", run.started_ms)];
        for (label, at) in marks.iter().filter_map(|(l, t)| t.map(|t| (*l, rel(run, t) as f64))) {
            chart
                .draw_series([PathElement::new(
                    vec![(at, y + 0.1), (at, y + 0.9)],
                    BLACK.stroke_width(2),
                )])
                .map_err(|e| fail(&e))?;
            chart
                .draw_series([Text::new(label.to_string(), (at + 4.0, y + 0.95), ("sans-serif", 12))])
                .map_err(|e| fail(&e))?;
        }
        let rto = run
            .measured
            .rto_ms
            .map_or("no recovery".into(), |v| format!("RTO {v} ms"));
        chart
            .draw_series([Text::new(
                format!("{}: {rto}", run.fault),
                (end * 0.55, y + 0.25),
                ("sans-serif", 12),
            )])
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// For a person: one line per run, then the summary.
pub fn render(r: &Report) -> String {
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
    let mut out = format!(
        "Drill {} of {} (probe {} every 10 ms)\n\nRUN  FAULT                          FROM     TO       RTO        BOUND        FAILED/PROBES  SETTLED    DETECT/FENCE/START  RPO\n",
        r.scenario, r.resource, r.probe
    );
    for (i, run) in r.runs.iter().enumerate() {
        let rpo = match (run.rpo_writes, run.session_writes_acked) {
            (Some(lost), Some(acked)) => format!("{lost} of {acked} writes lost"),
            _ => "-".into(),
        };
        let after = |t: Option<u64>| t.map_or("-".into(), |t| t.saturating_sub(run.fault_ms).to_string());
        let dfs = format!(
            "{}/{}/{} ms",
            after(run.detected_ms),
            after(run.fenced_ms),
            after(run.started_ms)
        );
        let bound = match (run.rto_bound_ms, run.within_bound) {
            (Some(b), Some(true)) => format!("<= {b} ok"),
            (Some(b), _) => format!("{b} OVER"),
            (None, _) => "-".into(),
        };
        out.push_str(&format!(
            "{:<4} {:<30} {:<8} {:<8} {:<10} {:<12} {:>6}/{:<6}  {:<10} {:<19} {}\n",
            i + 1,
            run.fault,
            run.from,
            run.to,
            ms(run.measured.rto_ms),
            bound,
            run.measured.failed,
            run.measured.probes,
            format!("{} ms", run.settled_ms.saturating_sub(run.fault_ms)),
            dfs,
            rpo
        ));
    }
    out.push_str(&format!(
        "\nRTO p50 {}, max {}; {} failed probes in all",
        ms(r.rto_p50_ms),
        ms(r.rto_max_ms),
        r.failed_probes
    ));
    match r.within_bounds {
        Some(true) => out.push_str("; every run within its bound"),
        Some(false) => out.push_str("; OVER THE BOUND in some run"),
        None => {}
    }
    match r.rpo_writes {
        Some(lost) => {
            let what = if r.probe.contains("postgres") {
                "commit(s)"
            } else {
                "session write(s)"
            };
            out.push_str(&format!("; RPO {lost} acknowledged {what} lost.\n"))
        }
        None => out.push_str(".\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(scenario: &str, probe: &str, runs: usize) -> Args {
        Args {
            scenario: scenario.into(),
            resource: "web".into(),
            node: None,
            probe: probe.into(),
            runs,
            settle: Duration::from_secs(60),
            fence_failures: 1,
        }
    }

    #[test]
    fn bad_flags_get_clear_errors() {
        let e = |a: Args| check(&a).unwrap_err().to_string();
        assert!(
            e(args("kill-nod", "tcp://127.0.0.1:80", 1)).contains("unknown scenario \"kill-nod\": one of switchover")
        );
        assert!(e(args("switchover", "127.0.0.1:80", 1)).contains("give http://"));
        assert!(e(args("switchover", "memcached://localhost:11211", 1)).contains("memcached:// needs IP:PORT"));
        assert!(e(args("switchover", "tcp://localhost", 1)).contains("IP:PORT"));
        assert!(e(args("switchover", " , ", 1)).contains("at least one"));
        assert!(e(args("switchover", "tcp://127.0.0.1:80", 0)).contains("--runs"));
        assert!(e(args("kill-node", "postgres://u@10.0.0.1:5432/db?sslmode=maybe", 1)).contains("not a PostgreSQL URL"));
        assert!(e(args("kill-node", "postgres://u@10.0.0.1:notaport/db", 1)).contains("not a PostgreSQL URL"));
        assert!(check(&args("kill-node", "postgresql://postgres@10.0.0.100:5432/postgres", 1)).is_ok());
        assert!(check(&args(
            "switchover",
            "http://127.0.10.1:80/,tcp://127.0.0.1:80,memcached://127.0.0.1:11211",
            3
        ))
        .is_ok());
    }
}
