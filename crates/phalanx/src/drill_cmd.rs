//! `phalanx drill SCENARIO --resource R --probe URL[,URL...]`: a failover drill against a live
//! cluster, measured from a client's side. Built so far: `switchover` (a planned move to another
//! online node, then the move cleared), `kill-node` (the node running the resource powered off
//! through the cluster's own fence devices, `POST /v1/nodes/{name}/power-off` sent to another
//! node, as a real failure) and `kill-service` (its process SIGKILLed on its node, `POST
//! /v1/resources/{rsc}/kill-service`, for the cluster's monitor to find). A drill refuses to
//! start without quorum or with the service unhealthy, then takes the cluster's one drill slot
//! (`POST /v1/drills/{id}`: refused while another drill runs) and records each run's figures and
//! its end in the event history. Each run probes the service every 10 ms before, during and
//! after the fault, waits (at most `--settle`) until the cluster has dealt with it and has
//! nothing left to do, and always clears a move it made, also when the run fails. What the
//! probes saw — RTO (first failed probe to first success after it), failed probes — is
//! `phalanx_core::drill`'s arithmetic. The other scenarios of issue 16 are refused by name until
//! they are built.

use crate::client::Client;
use crate::harness::runs_on;
use anyhow::{anyhow, bail, Context, Result};
use phalanx_core::drill::{self, Measured, Sample};
use phalanx_node::StatusReport;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use phalanx_core::drill::SCENARIOS;
/// The scenarios built so far.
const BUILT: [&str; 3] = ["switchover", "kill-node", "kill-service"];

/// How often the service is probed, and how long one probe may take.
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The command's flags.
#[derive(Debug, Clone)]
pub struct Args {
    pub scenario: String,
    pub resource: String,
    /// `http://…` or `tcp://IP:PORT`; several, comma-separated: a client that tries each in turn
    /// (the service answers if one of them does).
    pub probe: String,
    pub runs: usize,
    /// How long a run may take to settle before it is aborted (and the move cleared).
    pub settle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Http(String),
    Tcp(String),
}

/// Parse `--probe`.
fn targets(probe: &str) -> Result<Vec<Target>> {
    let t: Vec<Target> = probe
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.starts_with("http://") || p.starts_with("https://") {
                Ok(Target::Http(p.to_string()))
            } else if let Some(a) = p.strip_prefix("tcp://") {
                a.parse::<std::net::SocketAddr>()
                    .map(|_| Target::Tcp(a.to_string()))
                    .map_err(|_| anyhow!("--probe {p}: tcp:// needs IP:PORT"))
            } else {
                bail!("--probe {p}: give http://…, https://… or tcp://IP:PORT")
            }
        })
        .collect::<Result<_>>()?;
    if t.is_empty() {
        bail!("--probe: give at least one address to probe");
    }
    Ok(t)
}

/// One probe: true if any target answers (an HTTP status below 500, or a TCP connection).
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
        };
        if ok {
            return true;
        }
    }
    false
}

/// One run of a drill.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub from: String,
    pub to: String,
    /// When the fault was caused (ms since the run began) and when the cluster had settled.
    pub fault_ms: u64,
    pub settled_ms: u64,
    #[serde(flatten)]
    pub measured: Measured,
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
    targets(&a.probe)?;
    Ok(())
}

/// What must hold before a run: quorum, the resource running somewhere, another online node
/// to take it, fencing for a kill, the service answering. The API that answered, where the
/// resource runs, the node to move it to and its API.
struct Ready {
    api: String,
    from: String,
    from_api: String,
    to: String,
    to_api: String,
    /// The resource's failures recorded so far (a kill-service run waits for one more).
    failures: usize,
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
    if a.scenario == "kill-service" && !st.resources.iter().any(|r| r.id == a.resource) {
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
    let other = st
        .nodes
        .iter()
        .find(|n| n.name != from && n.state == "online")
        .ok_or_else(|| anyhow!("no other online node to take {} over", a.resource))?;
    let from_api = st
        .nodes
        .iter()
        .find(|n| n.name == from)
        .map(|n| n.api.clone())
        .unwrap_or_default();
    let failures = st
        .resources
        .iter()
        .filter(named)
        .map(|r| r.failures.values().sum::<usize>())
        .sum();
    if a.scenario == "kill-node" && st.fencing == "off" {
        bail!("fencing is off: kill-node powers the node off through the cluster's fence devices");
    }
    if !probe(http, targets).await {
        bail!("the service is not healthy now (no answer from {}): no drill", a.probe);
    }
    Ok(Ready {
        api,
        from,
        from_api,
        to: other.name.clone(),
        to_api: other.api.clone(),
        failures,
    })
}

/// A drill's id: the history's key for its steps (below 2^53, so JSON readers keep it exact).
fn drill_id() -> u64 {
    rand::random::<u64>() >> 11
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
    let id = drill_id();
    let bound = (a.settle + Duration::from_secs(30)) * a.runs as u32;
    let begin = serde_json::json!({
        "scenario": a.scenario, "resource": a.resource, "node": first.from,
        "bound_ms": bound.as_millis() as u64,
    });
    let _: serde_json::Value = client
        .post(&first.api, &format!("/v1/drills/{id}"), &begin)
        .await
        .context("starting the drill")?;
    let mut runs = Vec::new();
    let mut result = Ok(());
    for i in 0..a.runs {
        progress.set_message(format!("run {} of {}: {} of {}", i + 1, a.runs, a.scenario, a.resource));
        let run = match ready(client, apis, a, &http, &targets).await {
            Ok(r) => one(client, apis, a, &http, &targets, r).await,
            Err(e) => Err(e.context(format!("before run {}", i + 1))),
        };
        match run {
            Ok(run) => {
                let step = drill::DrillStep::Run {
                    run: i as u32 + 1,
                    from: run.from.clone(),
                    to: run.to.clone(),
                    rto_ms: run.measured.rto_ms,
                    failed_probes: run.measured.failed as u64,
                    probes: run.measured.probes as u64,
                    rpo_writes: None,
                };
                record(client, apis, a, id, step).await?;
                runs.push(run);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
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
        runs,
    })
}

/// Record a step of drill `id` through any node that answers (the run's node may be gone).
async fn record(client: &Client, apis: &[String], a: &Args, id: u64, step: drill::DrillStep) -> Result<()> {
    let body = serde_json::json!({ "scenario": a.scenario, "resource": a.resource, "step": step });
    let (api, _) = client.first_answering(apis).await?;
    let _: serde_json::Value = client
        .post_retrying(&api, &format!("/v1/drills/{id}/steps"), &body, Duration::from_secs(10))
        .await
        .context("recording the drill in the history")?;
    Ok(())
}

/// One run: cause the fault (a move to another online node, or the resource's node powered
/// off), measure, undo a move.
async fn one(
    client: &Client,
    apis: &[String],
    a: &Args,
    http: &reqwest::Client,
    targets: &Arc<Vec<Target>>,
    ready: Ready,
) -> Result<Run> {
    let Ready {
        api,
        from,
        from_api,
        to,
        to_api,
        failures,
    } = ready;
    let scenario = a.scenario.as_str();
    // Probe from now on, every 10 ms, until told to stop.
    let started = Instant::now();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let prober = {
        let (samples, targets, http) = (samples.clone(), targets.clone(), http.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let at_ms = started.elapsed().as_millis() as u64;
                let ok = probe(&http, &targets).await;
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Sample { at_ms, ok });
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fault_ms = started.elapsed().as_millis() as u64;
    let empty = serde_json::json!({});
    // The fault, and when the cluster has dealt with it: the resource where it was moved, off
    // the lost node, or restarted after its monitor failed (wherever the cluster put it).
    let rsc = a.resource.as_str();
    let (caused, done): (Result<serde_json::Value>, Done) = match scenario {
        // A power-off is asked of another node (the victim could not answer).
        "kill-node" => (
            client
                .post(&to_api, &format!("/v1/nodes/{from}/power-off"), &empty)
                .await,
            Box::new({
                let (rsc, from) = (rsc.to_string(), from.clone());
                move |st| runs_on(st, &rsc).filter(|n| *n != from)
            }),
        ),
        // The kill is asked of the node running it.
        "kill-service" => (
            client
                .post(&from_api, &format!("/v1/resources/{rsc}/kill-service"), &empty)
                .await,
            Box::new({
                let rsc = rsc.to_string();
                move |st| {
                    let failed: usize = st
                        .resources
                        .iter()
                        .filter(|r| r.id == rsc || r.parent.as_deref() == Some(&rsc))
                        .map(|r| r.failures.values().sum::<usize>())
                        .sum();
                    runs_on(st, &rsc).filter(|_| failed > failures)
                }
            }),
        ),
        _ => (
            client
                .post(
                    &api,
                    &format!("/v1/resources/{rsc}/move"),
                    &serde_json::json!({ "node": to }),
                )
                .await,
            Box::new({
                let (rsc, to) = (rsc.to_string(), to.clone());
                move |st| runs_on(st, &rsc).filter(|n| *n == to)
            }),
        ),
    };
    let landed = match caused {
        Ok(_) => settle(client, apis, rsc, a.settle, done).await,
        Err(e) => Err(e.context(format!("causing the fault of {scenario}"))),
    };
    let settled_ms = started.elapsed().as_millis() as u64;
    // A little more probing after the cluster settled, so that the recovery is seen.
    if landed.is_ok() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = stop.send(true);
    let _ = prober.await;
    // Always restore: clear the move the drill made (the resource stays where it is).
    if scenario == "switchover" {
        let path = format!("/v1/resources/{}/clear", a.resource);
        let cleared: Result<serde_json::Value> = client.post(&api, &path, &serde_json::json!({})).await;
        cleared.context("clearing the drill's move")?;
    }
    let to = landed?;
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Run {
        from,
        to,
        fault_ms,
        settled_ms,
        measured: drill::measure(&samples, fault_ms),
    })
}

/// Where the resource runs once the cluster has dealt with a fault (None: not yet).
type Done = Box<dyn Fn(&StatusReport) -> Option<String> + Send>;

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
            bail!("{rsc} did not settle within {bound:?}: the drill is aborted (a move it made is cleared)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For a person: one line per run, then the summary.
pub fn render(r: &Report) -> String {
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
    let mut out = format!(
        "Drill {} of {} (probe {} every 10 ms)\n\nRUN  FROM     TO       RTO        FAILED/PROBES  SETTLED\n",
        r.scenario, r.resource, r.probe
    );
    for (i, run) in r.runs.iter().enumerate() {
        out.push_str(&format!(
            "{:<4} {:<8} {:<8} {:<10} {:>6}/{:<6}  {} ms\n",
            i + 1,
            run.from,
            run.to,
            ms(run.measured.rto_ms),
            run.measured.failed,
            run.measured.probes,
            run.settled_ms.saturating_sub(run.fault_ms)
        ));
    }
    out.push_str(&format!(
        "\nRTO p50 {}, max {}; {} failed probes in all.\n",
        ms(r.rto_p50_ms),
        ms(r.rto_max_ms),
        r.failed_probes
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(scenario: &str, probe: &str, runs: usize) -> Args {
        Args {
            scenario: scenario.into(),
            resource: "web".into(),
            probe: probe.into(),
            runs,
            settle: Duration::from_secs(60),
        }
    }

    #[test]
    fn bad_flags_get_clear_errors() {
        let e = |a: Args| check(&a).unwrap_err().to_string();
        assert!(
            e(args("kill-nod", "tcp://127.0.0.1:80", 1)).contains("unknown scenario \"kill-nod\": one of switchover")
        );
        assert!(e(args("pause-node", "tcp://127.0.0.1:80", 1)).contains("not built yet"));
        assert!(e(args("switchover", "127.0.0.1:80", 1)).contains("give http://"));
        assert!(e(args("switchover", "tcp://localhost", 1)).contains("IP:PORT"));
        assert!(e(args("switchover", " , ", 1)).contains("at least one"));
        assert!(e(args("switchover", "tcp://127.0.0.1:80", 0)).contains("--runs"));
        assert!(check(&args("switchover", "http://127.0.10.1:80/,tcp://127.0.0.1:80", 3)).is_ok());
    }
}
