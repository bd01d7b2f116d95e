//! `phalanx pg status` (every `pgsql` resource: primary, synchronous standby, and per node the
//! role, timeline, LSN and lag, from `GET /v1/pg`) and `phalanx resource switchover` (a clean
//! hand-over of a primary: the old one demoted before the new one is promoted, then back as a
//! replica).
//!
//! A switchover goes through the scheduler, never around it: the primary's node is banned
//! (its instance demoted, then stopped; the best candidate promoted: with `sync` on, the
//! synchronous standby, which holds every acknowledged commit), and once the new primary runs
//! the ban is cleared, so the old primary comes back as a replica. `--to NODE` must be a node
//! the scheduler may promote: with `sync` on, only the synchronous standby; else a replica as
//! far as the others (its promotion score is raised for the switchover, to win a tie).

use crate::client::Client;
use anyhow::{bail, Context, Result};
use phalanx_node::api::pg::{PgNode, PgResource};
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant};

/// Every `pgsql` resource as the first answering node sees it.
pub async fn status(client: &Client, apis: &[String]) -> Result<Vec<PgResource>> {
    let (api, _) = client.first_answering(apis).await?;
    client.get(&api, "/v1/pg").await
}

/// The human table.
pub fn render(all: &[PgResource]) -> String {
    if all.is_empty() {
        return "No pgsql resource is configured.\n".into();
    }
    let mut out = String::new();
    for r in all {
        out += &format!(
            "{}: primary {}, sync = {}, synchronous standby {}\n",
            r.resource,
            r.primary.as_deref().unwrap_or("none"),
            r.sync,
            r.sync_standby.as_deref().unwrap_or("none")
        );
        out += &format!(
            "  {:<12} {:<14} {:>8} {:>18} {:>12}\n",
            "NODE", "ROLE", "TIMELINE", "LSN", "LAG"
        );
        for n in &r.nodes {
            let role = if n.sync_standby {
                format!("{} (sync)", n.role)
            } else {
                n.role.clone()
            };
            out += &format!(
                "  {:<12} {:<14} {:>8} {:>18} {:>12}\n",
                n.node,
                role,
                n.timeline.map_or("-".into(), |t| t.to_string()),
                n.lsn.as_deref().unwrap_or("-"),
                n.lag_bytes.map_or("-".into(), phalanx_core::pgsql::human_bytes),
            );
        }
    }
    out
}

/// What a switchover did.
#[derive(Debug, Serialize)]
pub struct Switchover {
    pub resource: String,
    pub from: String,
    pub to: String,
    /// From the ban to the new primary recorded.
    pub seconds: f64,
    /// The old primary back as a replica.
    pub rejoined: bool,
}

/// The candidate a switchover of `r` goes to (see the module comment), or why there is none.
pub fn candidate(r: &PgResource, to: Option<&str>) -> Result<String> {
    let Some(primary) = r.primary.as_deref() else {
        bail!("{} has no primary to switch over from", r.resource);
    };
    let replicas: Vec<&PgNode> = r.nodes.iter().filter(|n| n.role == "replica").collect();
    if let Some(t) = to {
        if t == primary {
            bail!("{t} is already {}'s primary", r.resource);
        }
        if !r.nodes.iter().any(|n| n.node == t) {
            bail!("{t} is not a member of the cluster");
        }
        if !replicas.iter().any(|n| n.node == t) {
            bail!("{t} runs no replica of {}: it cannot take over", r.resource);
        }
    }
    if r.sync != "off" {
        let Some(s) = r.sync_standby.as_deref() else {
            bail!(
                "{} has no synchronous standby recorded: nobody can take over without risking acknowledged commits",
                r.resource
            );
        };
        if let Some(t) = to.filter(|t| *t != s) {
            bail!(
                "{s} is the synchronous standby: only it holds every acknowledged commit, not {t} (sync = {})",
                r.sync
            );
        }
        return Ok(s.to_string());
    }
    let best = replicas
        .iter()
        .max_by_key(|n| {
            (
                n.timeline,
                n.lsn.as_deref().and_then(lsn_value),
                std::cmp::Reverse(n.node.clone()),
            )
        })
        .map(|n| n.node.clone());
    match (to, best) {
        (_, None) => bail!("{} has no replica to take over", r.resource),
        (Some(t), Some(b)) => {
            let pos = |name: &str| {
                replicas
                    .iter()
                    .find(|n| n.node == name)
                    .map(|n| (n.timeline, n.lsn.as_deref().and_then(lsn_value)))
            };
            if pos(t) < pos(&b) {
                bail!("{t} is behind {b}: the most advanced replica is promoted (wait for it to catch up)");
            }
            Ok(t.to_string())
        }
        (None, Some(b)) => Ok(b),
    }
}

fn lsn_value(s: &str) -> Option<u64> {
    phalanx_core::pgsql::parse_lsn(s)
}

/// Switch `rsc` (the primitive or its clone) over, waiting at most `within`.
pub async fn switchover(
    client: &Client,
    apis: &[String],
    rsc: &str,
    to: Option<&str>,
    within: Duration,
    progress: &indicatif::ProgressBar,
) -> Result<Switchover> {
    let (api, status) = client.first_answering(apis).await?;
    let all: Vec<PgResource> = client.get(&api, "/v1/pg").await?;
    let clone_of = |p: &str| {
        status
            .resources
            .iter()
            .find(|x| x.id == p)
            .and_then(|x| x.parent.clone())
    };
    let Some(r) = all
        .iter()
        .find(|r| r.resource == rsc || clone_of(&r.resource).as_deref() == Some(rsc))
    else {
        bail!(
            "{rsc} is not a pgsql resource or its clone (pgsql resources: {})",
            all.iter().map(|r| r.resource.as_str()).collect::<Vec<_>>().join(", ")
        );
    };
    let from = r.primary.clone().context("no primary")?;
    let target = candidate(r, to)?;
    let unit = clone_of(&r.resource).unwrap_or_else(|| r.resource.clone());
    let score_key = format!("master-{}", r.resource);
    // A tie between equally advanced replicas goes to the target.
    client
        .put::<_, serde_json::Value>(
            &api,
            &format!("/v1/nodes/{target}/attrs/{score_key}"),
            &json!({ "value": "1" }),
        )
        .await?;
    progress.set_message(format!("{from}: demoting {} (banned there meanwhile)", r.resource));
    let began = Instant::now();
    client
        .post::<_, serde_json::Value>(
            &api,
            &format!("/v1/resources/{unit}/ban"),
            &json!({ "node": from, "lifetime_ms": within.as_millis() as u64 }),
        )
        .await?;
    let deadline = began + within;
    let new_primary = loop {
        let now: Vec<PgResource> = client.get(&api, "/v1/pg").await.unwrap_or_default();
        if let Some(p) = now
            .iter()
            .find(|x| x.resource == r.resource)
            .and_then(|x| x.primary.clone())
            .filter(|p| *p != from)
        {
            break p;
        }
        if Instant::now() > deadline {
            bail!(
                "no new primary within {within:?}: {from} stays banned until the ban expires or `phalanx resource clear {unit}`"
            );
        }
        progress.set_message(format!("waiting for {target} to be promoted"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seconds = began.elapsed().as_secs_f64();
    progress.set_message(format!("{new_primary} is primary; {from} rejoining as a replica"));
    client
        .post::<_, serde_json::Value>(&api, &format!("/v1/resources/{unit}/clear"), &json!({}))
        .await?;
    let _ = client
        .delete::<serde_json::Value>(&api, &format!("/v1/nodes/{target}/attrs/{score_key}"))
        .await;
    let rejoin_deadline = Instant::now() + within;
    let mut rejoined = false;
    while Instant::now() < rejoin_deadline {
        let now: Vec<PgResource> = client.get(&api, "/v1/pg").await.unwrap_or_default();
        if now
            .iter()
            .filter(|x| x.resource == r.resource)
            .flat_map(|x| &x.nodes)
            .any(|n| n.node == from && n.role == "replica")
        {
            rejoined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Switchover {
        resource: r.resource.clone(),
        from,
        to: new_primary,
        seconds,
        rejoined,
    })
}
