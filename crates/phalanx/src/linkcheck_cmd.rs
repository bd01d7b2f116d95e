//! `phalanx link-check [--node N] [--seconds S] [--max-loss PCT]`: every online node (or node
//! N) measures its heartbeat links to each peer over the same S seconds (`GET /v1/link-check`,
//! asked of all at once), and the answers are printed as one table: loss, round trip, jitter,
//! reorders, the verdict against the loss threshold and how often the cluster's timing would
//! declare the link or the peer dead at that loss. Exits 1 when a link fails.

use crate::client::Client;
use anyhow::{anyhow, bail, Context, Result};
use phalanx_node::api::linkcheck::{LinkCheck, MAX_SECONDS};
use std::time::Duration;

/// The command's flags.
#[derive(Debug, Clone)]
pub struct Args {
    pub node: Option<String>,
    pub seconds: u64,
    pub max_loss_pct: f64,
}

/// Ask the nodes; their answers in node order.
pub async fn run(client: &Client, apis: &[String], a: &Args) -> Result<Vec<LinkCheck>> {
    if a.seconds == 0 || a.seconds > MAX_SECONDS {
        bail!("--seconds must be 1..={MAX_SECONDS}");
    }
    if !(0.0..=100.0).contains(&a.max_loss_pct) {
        bail!("--max-loss must be 0..=100 (percent)");
    }
    let (_, st) = client.first_answering(apis).await?;
    let targets: Vec<(String, String)> = match &a.node {
        Some(n) => {
            let node = st.nodes.iter().find(|x| &x.name == n).ok_or_else(|| {
                let names: Vec<&str> = st.nodes.iter().map(|x| x.name.as_str()).collect();
                anyhow!("no node named {n:?} (nodes: {})", names.join(", "))
            })?;
            if node.state == "offline" {
                bail!("{n} is offline: it cannot measure its links");
            }
            vec![(node.name.clone(), node.api.clone())]
        }
        None => st
            .nodes
            .iter()
            .filter(|x| x.state != "offline")
            .map(|x| (x.name.clone(), x.api.clone()))
            .collect(),
    };
    let long = client.clone().with_timeout(Duration::from_secs(a.seconds + 15))?;
    let path = format!("/v1/link-check?seconds={}&max_loss_pct={}", a.seconds, a.max_loss_pct);
    let asks = targets.iter().map(|(name, api)| {
        let (long, path) = (&long, &path);
        async move {
            long.get::<LinkCheck>(api, path)
                .await
                .with_context(|| format!("asking {name} ({api})"))
        }
    });
    futures_util::future::join_all(asks).await.into_iter().collect()
}

/// Whether every link passed.
pub fn all_pass(checks: &[LinkCheck]) -> bool {
    checks
        .iter()
        .all(|c| c.peers.iter().all(|p| p.links.iter().all(|l| l.report.pass)))
}

/// For a person: one row per (node, peer, link), then what the timing tolerates.
pub fn render(checks: &[LinkCheck]) -> String {
    let Some(first) = checks.first() else {
        return "No node answered.\n".into();
    };
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let per_day = |v: f64| {
        if v < 1e-6 {
            "~0".to_string()
        } else if v < 0.01 {
            format!("{v:.1e}")
        } else {
            format!("{v:.2}")
        }
    };
    let mut out = format!(
        "Link check over {} s (heartbeat {} ms, dead after {} missed; a link passes with loss ≤ {} %)\n\n",
        first.seconds, first.heartbeat_interval_ms, first.dead_after, first.max_loss_pct
    );
    out.push_str(
        "FROM     TO       LINK ADDRESS                 RECEIVED   LOSS     RTT p50  p99      max      JITTER   REORDER  FALSE DOWN/DAY  VERDICT\n",
    );
    for c in checks {
        for p in &c.peers {
            for l in &p.links {
                let r = &l.report;
                out.push_str(&format!(
                    "{:<8} {:<8} {:<4} {:<23} {:>5}/{:<5} {:>6.2} % {:<8} {:<8} {:<8} {:<8} {:<8} {:<15} {}\n",
                    c.node,
                    p.peer,
                    l.link,
                    l.address,
                    r.received,
                    r.expected,
                    r.loss_pct,
                    ms(r.rtt_p50_ms),
                    ms(r.rtt_p99_ms),
                    ms(r.rtt_max_ms),
                    ms(r.jitter_ms),
                    r.reorders,
                    per_day(r.false_down_per_day),
                    if r.pass { "pass" } else { "FAIL" }
                ));
            }
        }
    }
    out.push_str("\nRound trips in ms (from heartbeat echoes; - : the peer sends none). False deaths of a peer per day, every link at once:\n");
    for c in checks {
        for p in &c.peers {
            out.push_str(&format!(
                "  {} -> {}: {}\n",
                c.node,
                p.peer,
                per_day(p.false_death_per_day)
            ));
        }
    }
    out.push_str(if all_pass(checks) {
        "\nEvery link passes.\n"
    } else {
        "\nSome links fail the check: see FAIL above.\n"
    });
    out
}
