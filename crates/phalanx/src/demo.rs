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
use std::net::SocketAddr;
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
    /// The demo HTTP service (a `process` resource): where it ran, where it went, and the
    /// client-observed outage (first failed probe to first answer, probing every 20 ms).
    pub service_node_before: String,
    pub service_node_after: String,
    pub service_outage_ms: u64,
    /// The session store (`[sessions]`): a client writing session keys through it all along,
    /// across both kills. Acknowledged writes, those missing afterwards (RPO: must be 0), and
    /// the longest time no write was acknowledged.
    pub session_writes_acked: u64,
    pub session_writes_lost: u64,
    pub session_outage_ms: u64,
}

/// The service resource of the demo: `phalanx demo-service` supervised by the process agent,
/// each node serving on its own loopback address 127.0.10.<node number>.
fn service_config(exe: &std::path::Path, port: u16) -> String {
    service_resource(exe, "web", port)
}

/// A `[[resource]]` `id` running `phalanx demo-service` on `port` (the demo's, the
/// playground's), on the loopback address of the node it runs on ([`service_addr`]).
pub fn service_resource(exe: &std::path::Path, id: &str, port: u16) -> String {
    let cmd = format!(
        "{} demo-service --listen 127.0.10.${{OCF_RESKEY_CRM_meta_on_node#n}}:{port} --name ${{OCF_RESKEY_CRM_meta_on_node}}",
        exe.display()
    );
    format!(
        "\n[[resource]]\nid = \"{id}\"\nagent = \"process\"\nparams = {{ command = {} }}\nmonitor = {{ interval = \"500ms\", timeout = \"5s\" }}\n",
        toml::Value::String(cmd)
    )
}

/// Where the demo service answers on node `node` (`nK` serves on 127.0.10.K).
pub fn service_addr(node: &str, port: u16) -> String {
    format!("127.0.10.{}:{port}", node.trim_start_matches('n'))
}

/// A port free on 127.0.10.1..=N.
pub fn service_port(nodes: usize) -> Result<u16> {
    free_port_on("127.0.10", nodes)
}

/// A `[sessions]` section for nodes n1..=nN on loopback: node nK's store listens on
/// 127.0.11.K, on a port free there on every node; and those addresses.
pub fn sessions_section(nodes: usize) -> Result<(String, Vec<SocketAddr>)> {
    let port = free_port_on("127.0.11", nodes)?;
    let addrs: Vec<SocketAddr> = (1..=nodes)
        .map(|i| SocketAddr::from(([127, 0, 11, i as u8], port)))
        .collect();
    let listen: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("n{} = \"{a}\"", i + 1))
        .collect();
    Ok((format!("\n[sessions]\nlisten = {{ {} }}\n", listen.join(", ")), addrs))
}

/// A port free on `<prefix>.1..=N`.
fn free_port_on(prefix: &str, nodes: usize) -> Result<u16> {
    for _ in 0..50 {
        let port = std::net::TcpListener::bind(format!("{prefix}.1:0"))?
            .local_addr()?
            .port();
        if (1..=nodes).all(|i| std::net::TcpListener::bind(format!("{prefix}.{i}:{port}")).is_ok()) {
            return Ok(port);
        }
    }
    Err(anyhow!("no port free on {prefix}.1..={nodes}"))
}

/// Kill the node serving `web` and measure the outage seen by a client probing every 20 ms.
pub async fn service_failover(
    cluster: &mut LocalCluster,
    port: u16,
    timeout: Duration,
) -> Result<(String, String, u64)> {
    let serving = |st: &std::collections::BTreeMap<String, phalanx_node::StatusReport>| -> Option<String> {
        let s = st.values().next()?;
        let web = s.resources.iter().find(|r| r.id == "web")?;
        (s.plan_pending == 0 && web.running.len() == 1)
            .then(|| web.running.keys().next().cloned())
            .flatten()
    };
    let before = cluster.wait_for(timeout, "the service to run", serving).await?;
    let addr = service_addr(&before, port);
    let deadline = std::time::Instant::now() + timeout;
    while crate::service::probe(&addr, Duration::from_millis(100)).await.is_none() {
        if std::time::Instant::now() > deadline {
            return Err(anyhow!("the service never answered on {addr}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| service_addr(&n.name, port)).collect();
    cluster.kill(&before)?;
    let t_kill = std::time::Instant::now();
    let mut first_fail = None;
    let after = loop {
        let t = std::time::Instant::now();
        let mut answered = None;
        for a in &addrs {
            if let Some(who) = crate::service::probe(a, Duration::from_millis(100)).await {
                answered = Some(who);
                break;
            }
        }
        match answered {
            Some(who) if who != before => {
                break (
                    who,
                    first_fail
                        .map(|f: std::time::Instant| t.duration_since(f))
                        .unwrap_or_default(),
                )
            }
            _ => {
                first_fail.get_or_insert(t);
            }
        }
        if t_kill.elapsed() > timeout {
            return Err(anyhow!("the service did not come back within {timeout:?}"));
        }
        let next = t + Duration::from_millis(20);
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    };
    cluster.restart(&before, Duration::from_secs(15)).await?;
    Ok((before, after.0, after.1.as_millis() as u64))
}

pub struct DemoArgs {
    pub nodes: usize,
    pub heartbeat: Duration,
    pub json: bool,
    pub keep: bool,
}

/// A progress spinner on stderr, hidden with `--json`.
pub fn spinner(json: bool) -> ProgressBar {
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
    cluster.restart(name, timeout).await?;
    let t0 = unix_ms();
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
    let port = service_port(args.nodes)?;
    let (sessions_config, sessions) = sessions_section(args.nodes)?;
    let extra_config = format!("{}{sessions_config}", service_config(&exe, port));
    let mut cluster = LocalCluster::create(Spec {
        nodes: args.nodes,
        heartbeat: args.heartbeat,
        links: 2,
        exe,
        keep: args.keep,
        extra_config,
        cluster_extra: String::new(),
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
    pb.set_message("starting a session writer (a memcached client writing session keys through the store)");
    let writer = crate::session_writer::Writer::start(sessions.clone(), "demo.session.");
    writer.ready(timeout).await?;
    say(
        &pb,
        format!(
            "A client writes session keys through the session store ({}) from now on.\n",
            sessions.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        ),
    );

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
    pb.set_message("killing the node that serves the demo HTTP service; a client probes it every 20 ms");
    let (service_node_before, service_node_after, service_outage_ms) =
        service_failover(&mut cluster, port, timeout).await?;
    say(
        &pb,
        format!(
            "Killed {service_node_before}, which served the demo HTTP service: {service_node_after} answered after a client-observed outage of {service_outage_ms} ms.\n"
        ),
    );
    pb.set_message("reading back every acknowledged session write");
    let sessions_figures = writer.stop(timeout).await?;
    say(
        &pb,
        format!(
            "Sessions: {} writes acknowledged across both kills, {} lost (read back through the store), longest time without an acknowledged write {} ms.\n",
            sessions_figures.acked, sessions_figures.lost, sessions_figures.outage_ms
        ),
    );
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
        service_node_before,
        service_node_after,
        service_outage_ms,
        session_writes_acked: sessions_figures.acked,
        session_writes_lost: sessions_figures.lost,
        session_outage_ms: sessions_figures.outage_ms,
    })
}
