//! `phalanx demo`: a local cluster of real processes on loopback that fails over in front of
//! you. It starts N nodes, waits for quorum, SIGKILLs the leader, measures when every survivor
//! has declared it dead (`detection_ms`) and when a new leader was elected
//! (`leader_failover_ms`), both from the nodes' own timestamps (not from polling), then restarts
//! the killed node and waits for it to rejoin with its log.

use crate::harness::{LocalCluster, Spec};
use crate::render;
use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressStyle};
use phalanx_node::mesh::unix_ms;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub nodes: usize,
    pub heartbeat_interval_ms: u64,
    pub dead_after: u32,
    pub killed: String,
    pub detection_ms: u64,
    pub leader_failover_ms: u64,
    pub new_leader: String,
    pub quorum_after_failure: bool,
    pub rejoined: bool,
    pub rejoin_ms: u64,
}

pub struct DemoArgs {
    pub nodes: usize,
    pub heartbeat: Duration,
    pub json: bool,
    pub keep: bool,
}

fn spinner(json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(80));
    pb
}

/// Timestamps of one leader kill, measured from the nodes' own records.
pub struct KillFigures {
    pub killed: String,
    pub detection_ms: u64,
    pub leader_failover_ms: u64,
    pub new_leader: String,
    pub quorum_after_failure: bool,
}

/// SIGKILL the current leader and measure detection and failover from the survivors' records.
pub async fn kill_leader(cluster: &mut LocalCluster, timeout: Duration) -> Result<KillFigures> {
    let leader = cluster.wait_stable(timeout).await?;
    let t_kill = unix_ms();
    cluster.kill(&leader)?;
    // detection: every survivor has flipped its verdict on the leader after the kill.
    let detected_at = cluster
        .wait_for(timeout, "every survivor to declare the leader dead", |st| {
            let times: Option<Vec<u64>> = st
                .values()
                .map(|s| {
                    s.nodes
                        .iter()
                        .find(|n| n.name == leader && n.state == "offline")
                        .and_then(|n| n.changed_at_unix_ms)
                        .filter(|t| *t >= t_kill)
                })
                .collect();
            times.and_then(|t| t.into_iter().max())
        })
        .await?;
    // failover: a new leader agreed by all survivors; its own election time.
    let (new_leader, elected_at) = cluster
        .wait_for(timeout, "a new leader", |st| {
            let l = cluster.agreed_leader(st)?;
            let since = st.get(&l)?.leader_since_unix_ms.filter(|t| *t >= t_kill)?;
            Some((l, since))
        })
        .await?;
    let quorum_after_failure = cluster.statuses().await.values().all(|s| s.quorum);
    Ok(KillFigures {
        killed: leader,
        detection_ms: detected_at.saturating_sub(t_kill),
        leader_failover_ms: elected_at.saturating_sub(t_kill),
        new_leader,
        quorum_after_failure,
    })
}

/// Restart `name` and wait until it is back in the cluster with the leader's log applied.
pub async fn rejoin(cluster: &mut LocalCluster, name: &str, timeout: Duration) -> Result<u64> {
    let t0 = unix_ms();
    cluster.start(name)?;
    cluster
        .wait_for(timeout, "the restarted node to rejoin", |st| {
            let me = st.get(name)?;
            let leader = cluster.agreed_leader(st)?;
            let lead = st.get(&leader)?;
            let everyone_sees_it = st
                .values()
                .all(|s| s.nodes.iter().any(|n| n.name == name && n.state == "online"));
            (everyone_sees_it && me.last_applied_index >= lead.last_applied_index.map(|i| i.saturating_sub(1)))
                .then_some(())
        })
        .await?;
    Ok(unix_ms() - t0)
}

pub async fn run(args: DemoArgs, exe: std::path::PathBuf) -> Result<DemoReport> {
    let timeout = Duration::from_secs(30);
    let mut cluster = LocalCluster::create(Spec {
        nodes: args.nodes,
        heartbeat: args.heartbeat,
        links: 2,
        exe,
        keep: args.keep,
        extra_config: String::new(),
    })?;
    if args.nodes < 3 {
        return Err(anyhow!("the demo needs at least 3 nodes to keep quorum after a kill"));
    }
    let pb = spinner(args.json);
    let say = |pb: &ProgressBar, msg: String| {
        if args.json {
            return;
        }
        pb.suspend(|| println!("{msg}"));
    };
    pb.set_message(format!(
        "starting {} nodes on loopback (2 heartbeat links each)",
        args.nodes
    ));
    cluster.start_all()?;
    pb.set_message("waiting for quorum and a leader");
    let leader = cluster.wait_stable(timeout).await?;
    let st = cluster.status(&leader).await?;
    say(
        &pb,
        format!("Cluster is up (scratch folder {}):\n", cluster.dir().display()),
    );
    say(&pb, render::status(&st));

    pb.set_message(format!(
        "killing the leader {leader} with SIGKILL; waiting for the survivors"
    ));
    let figures = kill_leader(&mut cluster, timeout).await?;
    say(
        &pb,
        format!(
            "Killed {} (SIGKILL). Every survivor declared it dead after {} ms; {} was elected leader after {} ms. Quorum kept: {}.\n",
            figures.killed,
            figures.detection_ms,
            figures.new_leader,
            figures.leader_failover_ms,
            if figures.quorum_after_failure { "yes" } else { "NO" }
        ),
    );
    let st = cluster.status(&figures.new_leader).await?;
    say(&pb, render::status(&st));

    pb.set_message(format!("restarting {} and waiting for it to rejoin", figures.killed));
    // A failed rejoin is a result to report (rejoined: false, exit 1), not a crash of the demo.
    let (rejoined, rejoin_ms) = match rejoin(&mut cluster, &figures.killed, timeout).await {
        Ok(ms) => {
            let st = cluster.status(&figures.killed).await?;
            say(
                &pb,
                format!("{} rejoined after {ms} ms with its log:\n", figures.killed),
            );
            say(&pb, render::status(&st));
            (true, ms)
        }
        Err(e) => {
            say(&pb, format!("{} did NOT rejoin: {e:#}", figures.killed));
            (false, 0)
        }
    };
    pb.finish_and_clear();
    if args.keep {
        say(
            &pb,
            format!("Kept the scratch folder {} (logs: n*.log).", cluster.dir().display()),
        );
    }
    Ok(DemoReport {
        nodes: args.nodes,
        heartbeat_interval_ms: args.heartbeat.as_millis() as u64,
        dead_after: st.dead_after,
        killed: figures.killed,
        detection_ms: figures.detection_ms,
        leader_failover_ms: figures.leader_failover_ms,
        new_leader: figures.new_leader,
        quorum_after_failure: figures.quorum_after_failure,
        rejoined,
        rejoin_ms,
    })
}
