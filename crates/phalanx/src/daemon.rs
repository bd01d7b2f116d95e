//! `phalanx daemon`: run one node. A node listed in the config file bootstraps with the other
//! listed nodes; a node added later with `phalanx node add` is not in the file, so it asks the
//! listed nodes for its replicated record (id, links, API address) and joins as a learner.
//! `phalanx witness` runs the same node machinery as the cluster's tie-breaking vote: a Raft
//! voter with one link, no agents and no scheduler (see `Node::witness_round`).

use crate::client::{key_path, load_config, Client};
use anyhow::{anyhow, bail, Context, Result};
use phalanx_core::NodeRecord;
use phalanx_node::{mesh, raft, transport, ClusterKey, Node, NodeOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub struct DaemonArgs {
    pub config: PathBuf,
    pub node: String,
    pub data_dir: Option<PathBuf>,
}

/// The environment that gives agents Pacemaker's command-line tools (`crate::pcmk_shim`):
/// links to this binary in `DATA_DIR/pcmk-bin`, first on `PATH` and as `HA_SBIN_DIR`. Without
/// them (the links could not be made) agents run as before, and say so when they call one.
fn shim_env(data_dir: &Path, config: &Path, node: &str, api: SocketAddr) -> Vec<(String, String)> {
    let dir = data_dir.join("pcmk-bin");
    let made = std::env::current_exe()
        .map_err(anyhow::Error::from)
        .and_then(|exe| crate::pcmk_shim::install(&dir, &exe));
    if let Err(e) = made {
        tracing::warn!(error = %format!("{e:#}"), "no Pacemaker command-line tools for agents");
        return Vec::new();
    }
    let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    vec![
        ("PATH".into(), format!("{}:{path}", dir.display())),
        ("HA_SBIN_DIR".into(), dir.display().to_string()),
        (crate::pcmk_shim::CONFIG_ENV.into(), config.display().to_string()),
        (crate::pcmk_shim::API_ENV.into(), api.to_string()),
        (crate::pcmk_shim::NODE_ENV.into(), node.to_string()),
    ]
}

pub async fn run(args: DaemonArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let config = load_config(&args.config)?;
    let key_file = key_path(&args.config, &config);
    let key = ClusterKey::load_private(&key_file)?;
    let keys = phalanx_node::key::Keys::load(&key_file)?;
    let (id, links, api, bootstrap) = match config.nodes.iter().position(|n| n.name == args.node) {
        Some(i) => {
            let n = &config.nodes[i];
            (i as u64 + 1, n.links.clone(), n.api, true)
        }
        None => {
            let rec = lookup_joiner(&config, &key, &key_file, &args.node).await?;
            let links = rec
                .links
                .iter()
                .map(|l| l.parse::<SocketAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("bad link in the replicated record: {e}"))?;
            (rec.id, links, rec.api.parse()?, false)
        }
    };
    let data_dir = args.data_dir.unwrap_or_else(|| {
        Path::new("/var/lib/phalanx")
            .join(&config.cluster.name)
            .join(&args.node)
    });
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let agent_state = data_dir.join("agents");
    let runner = phalanx_node::agents::Runner {
        state_dir: agent_state.clone(),
        env: shim_env(&data_dir, &args.config, &args.node, api),
        ..phalanx_node::agents::Runner::new(&args.node)
    };
    // With the default timeouts of the agents installed here (as every committed version).
    let config = phalanx_node::config_watch::derive(&text, Some(&runner))
        .await
        .unwrap_or(config);
    let db = raft::store::open(&raft::group::db_file(&data_dir, raft::CLUSTER))?;
    let sessions_store = raft::sessions::Storage::open(&data_dir)?;
    let mesh_rt = mesh::dedicated_runtime()?;
    let (out, inbound) = mesh::bind_udp_on(&mesh_rt, &links).await?;
    let listener = transport::bind(api)
        .await
        .with_context(|| format!("binding the API on {api}"))?;
    // `metrics_listen` of this node in the local file (fixed for the process's life).
    let metrics_listen = config
        .nodes
        .iter()
        .find(|n| n.name == args.node)
        .and_then(|n| n.metrics_listen);
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            transport::bind(addr)
                .await
                .with_context(|| format!("binding metrics_listen on {addr}"))?,
        ),
        None => None,
    };
    // Every address it serves on: links, API, metrics, and the session store's for its clients.
    let ips = phalanx_node::pki::addresses(&config, &args.node, links.iter().chain([&api]).map(|a| a.ip()));
    let tls = node_tls(&key_file, &args.node, &ips)?;
    let network = raft::network::HttpNetwork::<raft::TypeConfig>::new(keys.clone(), &tls)?;
    let node = Node::start(
        NodeOptions {
            config: config.clone(),
            config_text: Some(text),
            name: args.node.clone(),
            id,
            links: links.clone(),
            api,
            key: keys,
            bootstrap,
            runner: Some(runner),
            seams: Default::default(),
            mesh_runtime: Some(mesh_rt),
            sessions_store: Some(sessions_store),
            tls,
            pki: Some(phalanx_node::pki::Paths::beside(&key_file)),
        },
        db,
        network,
        out,
        inbound,
    )
    .await?;
    tokio::spawn(renew_certificate(
        node.clone(),
        key_file.clone(),
        args.node.clone(),
        ips,
    ));
    tracing::info!(node = %args.node, id, api = %api, links = ?links, data_dir = %data_dir.display(), "phalanx node started");
    if let (Some(l), Some(addr)) = (metrics_listener, metrics_listen) {
        let n = node.clone();
        tokio::spawn(async move {
            if let Err(e) = phalanx_node::api::serve_metrics(n, l).await {
                tracing::error!(error = %e, %addr, "the metrics listener stopped");
            }
        });
        tracing::info!(%addr, "serving /metrics without a token");
    }
    serve_until_signal(node, listener, Some(agent_state)).await
}

/// Serve the API until the server fails or the node stops. SIGTERM (what `systemctl stop`
/// sends), Ctrl-C or `phalanx node stop` make the node leave cleanly: what runs here moves away
/// first, then it exits, unfenced (see `phalanx_node::lifecycle`). A second signal, or
/// `node stop --now`, exits at once. Either way, no service this daemon started outlives it.
async fn serve_until_signal(
    node: std::sync::Arc<Node>,
    listener: transport::Listener,
    agent_state: Option<PathBuf>,
) -> Result<()> {
    use phalanx_node::lifecycle::StopState;
    let mut server = tokio::spawn(phalanx_node::api::serve(node.clone(), listener));
    // Under systemd (`dist/phalanx.service`): READY once joined, the watchdog, STOPPING.
    let notifier = phalanx_node::systemd::Notifier::from_env();
    if let Some(n) = &notifier {
        tokio::spawn(n.clone().run(node.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut stop = node.stop_state();
    let mut signals = 0;
    let mut removed = false;
    loop {
        tokio::select! {
            r = &mut server => { r??; break; }
            _ = term.recv() => signals += 1,
            _ = int.recv() => signals += 1,
            _ = stop.changed() => {}
        }
        if signals > 0 {
            if signals == 1 && *stop.borrow() == StopState::Running {
                tracing::info!("stopping: leaving the cluster cleanly (signal again to stop at once)");
            }
            if let Some(n) = &notifier {
                n.stopping("leaving the cluster: waiting for what runs here to move away");
            }
            node.request_stop(signals > 1);
            signals = 0;
        }
        match *stop.borrow_and_update() {
            StopState::Ready => {
                tracing::info!("left the cluster cleanly: exiting");
                break;
            }
            StopState::Removed => {
                removed = true;
                let failed = node.stop_what_runs_here().await;
                if !failed.is_empty() {
                    tracing::error!(resources = ?failed, "removed from the cluster, and these would not stop");
                }
                break;
            }
            StopState::Now => {
                let left = node.recorded_here();
                if left.is_empty() {
                    tracing::warn!("stopping at once");
                } else {
                    tracing::warn!(resources = ?left, "stopping at once: the cluster sees these still here, and will fence this node to recover them");
                }
                break;
            }
            _ => {}
        }
    }
    node.shutdown().await;
    if let Some(dir) = agent_state {
        let stopped = tokio::task::spawn_blocking(move || {
            phalanx_node::agents::stop_process_services(&dir, std::time::Duration::from_secs(5))
        })
        .await
        .unwrap_or_default();
        if !stopped.is_empty() {
            tracing::warn!(services = ?stopped, "stopped the services this daemon had started");
        }
    }
    if removed {
        bail!("this node was removed from the cluster (`phalanx node remove`): not restarting it as a member; add it again with `phalanx node add` to bring it back");
    }
    Ok(())
}

/// `phalanx witness`: listen on `listen` (default: the config's `[witness] address`).
pub async fn run_witness(config_path: &Path, listen: Option<&str>, data_dir: Option<PathBuf>) -> Result<()> {
    let config = load_config(config_path)?;
    let key_file = key_path(config_path, &config);
    let keys = phalanx_node::key::Keys::load(&key_file)?;
    let Some(w) = &config.witness else {
        bail!(
            "{} has no [witness] section: the nodes would not know where to find it",
            config_path.display()
        );
    };
    let listen: SocketAddr = match listen {
        Some(l) => l.parse().map_err(|e| anyhow!("--listen {l:?}: {e}"))?,
        None => w.address,
    };
    let data_dir = data_dir.unwrap_or_else(|| Path::new("/var/lib/phalanx").join(&config.cluster.name).join("witness"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let db = raft::store::open(&raft::group::db_file(&data_dir, raft::CLUSTER))?;
    let sessions_store = raft::sessions::Storage::open(&data_dir)?;
    let mesh_rt = mesh::dedicated_runtime()?;
    let (out, inbound) = mesh::bind_udp_on(&mesh_rt, &[listen]).await?;
    let listener = transport::bind(listen)
        .await
        .with_context(|| format!("binding the witness on {listen}"))?;
    let ips = phalanx_node::pki::addresses(&config, raft::WITNESS_NAME, [listen.ip()]);
    let tls = node_tls(&key_file, raft::WITNESS_NAME, &ips)?;
    let network = raft::network::HttpNetwork::<raft::TypeConfig>::new(keys.clone(), &tls)?;
    let node = Node::start(
        NodeOptions {
            config,
            config_text: None,
            name: raft::WITNESS_NAME.to_string(),
            id: raft::WITNESS_ID,
            links: vec![listen],
            api: listen,
            key: keys,
            bootstrap: false,
            runner: None,
            seams: Default::default(),
            mesh_runtime: Some(mesh_rt),
            sessions_store: Some(sessions_store),
            tls,
            pki: Some(phalanx_node::pki::Paths::beside(&key_file)),
        },
        db,
        network,
        out,
        inbound,
    )
    .await?;
    tokio::spawn(renew_certificate(
        node.clone(),
        key_file.clone(),
        raft::WITNESS_NAME.into(),
        ips,
    ));
    tracing::info!(listen = %listen, data_dir = %data_dir.display(), "phalanx witness started");
    serve_until_signal(node, listener, None).await
}

/// The TLS of the node (or witness) `name` at `ips`: the cluster CA beside the key file, and the
/// node's certificate from `certs/` there, issued here when this machine holds the CA key and
/// the certificate is missing, old or names other addresses (`pki::node_identity`).
fn node_tls(key_file: &Path, name: &str, ips: &[std::net::IpAddr]) -> Result<transport::Tls> {
    let paths = phalanx_node::pki::Paths::beside(key_file);
    let ca = phalanx_node::pki::load_ca_cert(&paths)?;
    let me = phalanx_node::pki::node_identity(&paths, name, ips, std::time::SystemTime::now())?;
    Ok(transport::Tls::node(&ca, &me.cert_pem, &me.key_pem)?)
}

/// Renew the node's certificate while it runs: at 2/3 of its life, and when the cluster's
/// issuing CA changes (the second step of `phalanx ca rotate`), `pki::node_identity_from`
/// issues a new one where this machine holds that CA's key; without it, the node sends a
/// signing request to its peers until one that holds the key signs it
/// ([`renew_through_a_peer`]). The TLS presents the new certificate to new connections at once
/// (open ones go on; nothing restarts). A certificate that expired can no longer ask: `phalanx
/// cert issue` renews it then.
async fn renew_certificate(node: std::sync::Arc<Node>, key_file: PathBuf, name: String, ips: Vec<std::net::IpAddr>) {
    use phalanx_node::pki;
    let paths = pki::Paths::beside(&key_file);
    let mut current = std::fs::read_to_string(paths.node_cert(&name)).unwrap_or_default();
    let retry = std::time::Duration::from_secs(60).min(pki::node_lifetime() / 30);
    let mut trust = node.trust_changes();
    let mut wait = pki::next_check(&current, std::time::SystemTime::now());
    // Failed attempts in a row: the next one comes 1 s after the first failure, doubling up to
    // `retry` (a rotation's second step waits for every member: a first failure, e.g. a peer
    // that has not yet applied the step, must not cost a minute).
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = trust.changed() => if changed.is_err() { return },
        }
        wait = std::time::Duration::from_secs(1 << failures.min(6)).min(retry);
        failures += 1;
        let issuer = node.with_state(|sm| sm.cluster.trust.issuer_pem().map(str::to_string));
        let due = due(&current, issuer.as_deref());
        let (p, n, i, want) = (paths.clone(), name.clone(), ips.clone(), issuer.clone());
        let me = tokio::task::spawn_blocking(move || {
            pki::node_identity_from(&p, &n, &i, std::time::SystemTime::now(), want.as_deref())
        })
        .await;
        let me = match me {
            Ok(Ok(me)) if me.cert_pem == current && !due => {
                failures = 0;
                wait = pki::next_check(&current, std::time::SystemTime::now());
                continue;
            }
            Ok(Ok(me)) if me.cert_pem == current => {
                // Nothing new here (no key of the issuing CA): ask the peers while it is valid.
                match renew_through_a_peer(&node, &paths, &name, issuer.as_deref()).await {
                    Ok(me) => me,
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing this node's certificate through a peer");
                        continue;
                    }
                }
            }
            Ok(Ok(me)) => me,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "renewing this node's certificate");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "renewing this node's certificate");
                continue;
            }
        };
        match node.tls.swap_identity(&me.cert_pem, &me.key_pem) {
            Ok(()) => {
                tracing::info!(node = %name, "renewed this node's certificate: new connections present it");
                failures = 0;
                current = me.cert_pem;
                wait = pki::next_check(&current, std::time::SystemTime::now());
            }
            Err(e) => tracing::error!(error = %e, "the renewed certificate could not be loaded"),
        }
    }
}

/// Whether the certificate `cert_pem` is due: past 2/3 of its life, or issued by another CA
/// than `issuer` (the cluster's issuing CA, when a rotation named one).
fn due(cert_pem: &str, issuer: Option<&str>) -> bool {
    use phalanx_node::pki;
    let Ok(info) = pki::inspect_pem(cert_pem) else {
        return true;
    };
    info.due_for_renewal(std::time::SystemTime::now())
        || issuer
            .and_then(pki::ca_id)
            .is_some_and(|id| info.issuer_key_id.as_deref() != Some(id.as_str()))
}

/// A new key and a signing request sent to each peer in turn (over mutual TLS with the current
/// certificate), until one that holds the CA key signs it with the issuing CA `issuer` (the
/// replicated trust's as this node applied it: a peer that has not applied that step yet signs
/// with the CA before, and its answer is not taken); the result written to `certs/`.
async fn renew_through_a_peer(
    node: &Node,
    paths: &phalanx_node::pki::Paths,
    name: &str,
    issuer: Option<&str>,
) -> Result<phalanx_node::pki::Issued> {
    use phalanx_node::api::peer::{CertAnswer, CertRequest, CERT_PATH};
    let (csr, key_pem) = phalanx_node::pki::request(name)?;
    let ca = phalanx_node::pki::load_ca_cert(paths)?;
    let http = transport::forward_client(&node.tls)?;
    let peers: Vec<String> = node.with_state(|sm| {
        sm.cluster
            .nodes
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(_, r)| r.api.clone())
            .collect()
    });
    let mut last = anyhow!("no peer to ask");
    for api in peers {
        let answer = http
            .post(transport::url(&api, CERT_PATH))
            .bearer_auth(node.token())
            .json(&CertRequest { csr: csr.clone() })
            .send()
            .await;
        let answer = match answer {
            Ok(r) if r.status().is_success() => r.json::<CertAnswer>().await,
            Ok(r) => {
                last = anyhow!("{api}: {} {}", r.status(), r.text().await.unwrap_or_default());
                continue;
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(a) => {
                // It must go with our key and chain to our CA before it replaces anything.
                transport::Tls::node(&ca, &a.cert, &key_pem)
                    .with_context(|| format!("the certificate {api} signed"))?;
                if due(&a.cert, issuer) {
                    last = anyhow!("{api} signed with another CA than the cluster's issuing one (it has not applied the rotation's step yet)");
                    continue;
                }
                let me = phalanx_node::pki::Issued {
                    cert_pem: a.cert,
                    key_pem,
                };
                phalanx_node::pki::store_node(paths, name, &me)?;
                tracing::info!(peer = %api, "a peer signed this node's renewed certificate");
                return Ok(me);
            }
            Err(e) => last = anyhow!("{api}: {e}"),
        }
    }
    Err(last)
}

async fn lookup_joiner(
    config: &phalanx_core::Config,
    key: &ClusterKey,
    key_file: &Path,
    name: &str,
) -> Result<NodeRecord> {
    let client = Client::new(key, crate::client::operator_tls(key_file)?)?;
    // Ask every listed node: a follower may not have applied the `node add` yet (its replica
    // lags the leader), so one that does not know the name is not the last word. Keep asking
    // for a while before giving up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut last = None;
        let mut answered = false;
        for n in &config.nodes {
            match client
                .get::<BTreeMap<String, NodeRecord>>(&n.api.to_string(), "/v1/nodes")
                .await
            {
                Ok(nodes) => match nodes.get(name) {
                    Some(rec) => return Ok(rec.clone()),
                    None => answered = true,
                },
                Err(e) => last = Some(e),
            }
        }
        if std::time::Instant::now() > deadline {
            if answered {
                bail!("node {name} is neither in the config file nor a member of the cluster: run `phalanx node add {name} --link ADDR` first");
            }
            return match last {
                Some(e) => Err(e.context(format!(
                    "node {name} is not in the config file, and no listed node answered to look it up"
                ))),
                None => bail!("the config lists no nodes"),
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
