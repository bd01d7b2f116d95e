//! `phalanx-lab demo` (was `phalanx demo --lab`): the demo's story in network namespaces (root):
//! a cluster with a real virtual IP in front of its HTTP service; crash the node holding it, and
//! watch the VIP move while a client measures the outage and samplers look for two holders.

use crate::lab::{outage, wait_answer, web_config, web_node, Lab, Watch, PORT, VIP};
use anyhow::{anyhow, Result};
use indicatif::ProgressBar;
use phalanx::demo::{rejoin, spinner, DemoArgs};
use phalanx::harness::Spec;
use phalanx::render;
use serde::Serialize;
use std::time::Duration;

/// What `phalanx-lab demo` measured.
#[derive(Debug, Clone, Serialize)]
pub struct LabDemoReport {
    pub lab: bool,
    pub nodes: usize,
    pub heartbeat_interval_ms: u64,
    pub vip: String,
    /// The node that held the VIP and the service, crashed (frozen, killed, unplugged).
    pub killed: String,
    pub service_node_after: String,
    /// First failed to first answered client probe (a new TCP connection to the VIP every 20 ms).
    pub service_outage_ms: u64,
    /// Moments two nodes held the VIP at once (sampled in every node namespace): must be 0.
    pub two_holders: usize,
    pub quorum_after_failure: bool,
    pub rejoined: bool,
}

/// `phalanx-lab demo`: the demo's story in network namespaces (root): a cluster with a real
/// virtual IP in front of its HTTP service; crash the node holding it, watch the VIP move.
pub async fn run_lab(args: DemoArgs, exe: std::path::PathBuf) -> Result<LabDemoReport> {
    let timeout = Duration::from_secs(30);
    if args.nodes < 3 {
        return Err(anyhow!("the demo needs at least 3 nodes to keep quorum after a crash"));
    }
    let pb = spinner(args.json);
    let say = |pb: &ProgressBar, msg: String| {
        if !args.json {
            pb.suspend(|| println!("{msg}"));
        }
    };
    pb.set_message(format!(
        "building a lab: {} node namespaces, 2 links each, a client",
        args.nodes
    ));
    let lab = Lab::create(args.nodes, 2)?;
    let mut cluster = crate::lab::cluster_in(
        Spec {
            nodes: args.nodes,
            heartbeat: args.heartbeat,
            links: 2,
            exe: exe.clone(),
            keep: args.keep,
            extra_config: web_config(&exe, "manual", None),
            cluster_extra: String::new(),
        },
        &lab,
    )?;
    cluster.start_all()?;
    pb.set_message("waiting for quorum, a leader, and the web group (VIP + HTTP service)");
    let vip_addr = format!("{VIP}:{PORT}");
    let holder = cluster
        .wait_for(timeout, "web running", |st| {
            (st.len() == args.nodes).then(|| web_node(st)).flatten()
        })
        .await?;
    wait_answer(&lab, &vip_addr, &holder, timeout)?;
    let st = cluster.status(&holder).await?;
    say(
        &pb,
        format!(
            "Cluster is up in namespaces {}* (scratch folder {}); the client reaches http://{vip_addr} on {holder}:\n",
            lab.prefix,
            cluster.dir().display()
        ),
    );
    say(&pb, render::status(&st));
    pb.set_message(format!(
        "crashing {holder} (freeze, kill, unplug); the client probes the VIP every 20 ms"
    ));
    let watch = Watch::start(&lab, &(1..=args.nodes).collect::<Vec<_>>(), VIP.parse()?, PORT);
    let at = std::time::Instant::now();
    lab.crash(holder.trim_start_matches('n').parse()?)?;
    cluster.reap(&holder)?;
    let after = cluster
        .wait_for(timeout, "web on another node", |st| {
            web_node(st).filter(|n| *n != holder)
        })
        .await?;
    wait_answer(&lab, &vip_addr, &after, timeout)?;
    let seen = watch.finish()?;
    let outage_ms = outage(&seen.client, at).map(|d| d.as_millis() as u64).unwrap_or(0);
    let quorum_after_failure = cluster.statuses().await.values().all(|s| s.quorum);
    say(
        &pb,
        format!(
            "Crashed {holder}: the VIP moved to {after}, which answered after a client-observed outage of {outage_ms} ms. Two VIP holders at once: {}. Quorum kept: {}.\n",
            seen.violations.len(),
            if quorum_after_failure { "yes" } else { "NO" }
        ),
    );
    pb.set_message(format!("reviving {holder} and waiting for it to rejoin"));
    lab.revive(holder.trim_start_matches('n').parse()?)?;
    let rejoined = rejoin(&mut cluster, &holder, timeout).await.is_ok();
    let st = cluster.status(&after).await?;
    say(&pb, render::status(&st));
    pb.finish_and_clear();
    Ok(LabDemoReport {
        lab: true,
        nodes: args.nodes,
        heartbeat_interval_ms: args.heartbeat.as_millis() as u64,
        vip: VIP.to_string(),
        killed: holder,
        service_node_after: after,
        service_outage_ms: outage_ms,
        two_holders: seen.violations.len(),
        quorum_after_failure,
        rejoined,
    })
}
