//! The configuration a node runs. Once the cluster has a committed version (see
//! `phalanx_core::state::config`) every node runs it, whatever its local file says; the local
//! file only bootstraps a brand-new cluster (the first leader commits it as version 1) and names
//! the node and its data dir. A node derives the `Config` it runs from a committed text the same
//! way at start-up and when a new version is applied ([`derive`]: parse, then adopt this
//! machine's agent meta-data), and switches without a restart: resources, constraints, fence
//! devices and the no-quorum policy at once, heartbeat timing in the mesh (`Mesh::set_timing`).
//! Raft's own timeouts are fixed when the process starts: they follow at its next start (they
//! only pace Raft's elections; failure detection is the mesh's). The executor reloads or
//! restarts what a new version changed (`executor::reconfigure`). Each node records the version
//! it runs in its own node attribute `#config-version` ([`crate::status::CONFIG_VERSION_ATTR`]),
//! one log entry per switch, so that every node's status and metrics show which version each
//! member runs (a node that cannot write it, having no quorum, records it once it can).

use crate::agents::Runner;
use crate::node::Node;
use phalanx_core::config::{Config, ConfigError, Severity};
use phalanx_core::state::ConfigRecord;
use phalanx_core::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The `Config` a node runs for `text`: parsed, with the default timeouts of the OCF agents
/// installed here where the text gives none (when `runner` is given). Agent problems (an agent
/// missing here, an unknown parameter) are logged, not fatal: `config check` and `config apply`
/// report them with their position; this node may run none of those resources.
pub async fn derive(text: &str, runner: Option<&Runner>) -> Result<Config, ConfigError> {
    let config = phalanx_core::config::parse(text)?;
    let Some(runner) = runner else { return Ok(config) };
    let mut checked = phalanx_core::config::check(text);
    runner.check_agents(&mut checked, text).await;
    for d in checked.diagnostics.iter().filter(|d| d.severity == Severity::Error) {
        tracing::warn!(diagnostic = %d.render("config"), "config against the agents installed here");
    }
    Ok(match checked.config {
        Some(c) => Config {
            resources: c.resources,
            ..config
        },
        // A missing required parameter: keep the timeouts as written.
        None => config,
    })
}

/// SHA-256 of a config text, hex.
pub fn sha256(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

impl Node {
    /// The committed version this node runs (0: none yet, it runs its local file).
    pub fn running_config_version(&self) -> u64 {
        self.config_version.load(Ordering::SeqCst)
    }

    /// The local file differs from the committed version this node runs: the version, for
    /// status ("local config differs from cluster v7").
    pub fn local_config_differs(&self) -> Option<u64> {
        let local = self.local_config.as_ref()?;
        self.with_state(|sm| {
            let c = sm.cluster.current_config()?;
            (c.text != *local).then_some(c.version)
        })
    }

    /// Switch to `rec` (derived as at start-up): the config every part reads, the fence devices
    /// and the mesh's timing. The executor sees the change at its next round.
    pub(crate) async fn switch_config(&self, rec: &ConfigRecord, runner: Option<&Runner>) {
        match derive(&rec.text, runner).await {
            Ok(config) => {
                let t = phalanx_core::Timings::from(&config.cluster);
                self.fencer.set_config(config.fence.clone());
                self.mesh.set_timing(t.heartbeat, t.dead_after);
                self.set_config(config, rec.version);
                tracing::info!(version = rec.version, author = %rec.author, sha256 = %rec.sha256, "running the cluster's config");
            }
            // The state machine only commits texts that parse; a newer binary's text this one
            // cannot read keeps the version it runs.
            Err(e) => {
                tracing::error!(version = rec.version, error = %e, "cannot run the committed config: keeping the one this node runs")
            }
        }
    }
}

/// Follow the committed config: switch to each new version; on the leader, commit the local
/// file as version 1 of a cluster that has none (a new cluster, or one made by an older version).
pub(crate) async fn run(node: Arc<Node>, runner: Option<Runner>) {
    let mut applied = node.applied();
    let mut warned_differs: Option<u64> = None;
    loop {
        let current = node.with_state(|sm| sm.cluster.current_config().cloned());
        match current {
            Some(rec) if rec.version != node.running_config_version() => {
                node.switch_config(&rec, runner.as_ref()).await;
            }
            None if !node.is_witness() && node.is_leader() && node.with_state(|sm| sm.cluster.max_node_id != 0) => {
                if let Some(text) = &node.local_config {
                    let record = ConfigRecord {
                        version: 0,
                        text: text.clone(),
                        sha256: sha256(text),
                        author: format!("bootstrap ({})", node.name),
                        time_ms: crate::mesh::unix_ms(),
                    };
                    match node
                        .write(Command::ApplyConfig {
                            record,
                            expect_version: Some(0),
                        })
                        .await
                    {
                        Ok(o) => {
                            tracing::info!(outcome = ?o, "committed the local config as the cluster's first version")
                        }
                        Err(e) => tracing::debug!(error = %e, "committing the first config version"),
                    }
                }
            }
            _ => {}
        }
        let differs = node.local_config_differs();
        if differs.is_some() && differs != warned_differs {
            tracing::warn!(
                version = differs,
                "the local config file differs from the cluster's: running the cluster's (`phalanx config apply FILE` changes it)"
            );
        }
        warned_differs = differs;
        let retry = match record_running_version(&node).await {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(error = %e, "recording the config version this node runs");
                Some(node.timings.controller_tick)
            }
        };
        let changed = match retry {
            None => applied.changed().await,
            Some(wait) => tokio::select! {
                r = applied.changed() => r,
                _ = tokio::time::sleep(wait) => Ok(()),
            },
        };
        if changed.is_err() {
            return;
        }
    }
}

/// Record in this node's attribute `#config-version` the committed version it runs, when the
/// state says otherwise (nothing to do on the witness, before a version is committed, or when
/// this node has no record).
async fn record_running_version(node: &Node) -> Result<(), crate::node::NodeError> {
    let running = node.running_config_version();
    if node.is_witness() || running == 0 {
        return Ok(());
    }
    let recorded = node.with_state(|sm| {
        sm.cluster
            .nodes
            .get(&node.name)
            .map(|n| crate::status::config_version_of(&n.attrs))
    });
    match recorded {
        Some(v) if v != Some(running) => {
            node.write(Command::SetAttr {
                name: node.name.clone(),
                key: crate::status::CONFIG_VERSION_ATTR.to_string(),
                value: Some(running.to_string()),
            })
            .await?;
            Ok(())
        }
        _ => Ok(()),
    }
}
