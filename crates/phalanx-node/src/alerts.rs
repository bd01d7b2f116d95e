//! Alert delivery: the leader tells each `[[alert]]` recipient about the events it selected,
//! in event order, one queue per recipient (a slow one holds back only itself). A program is
//! called as Pacemaker calls its alert agents (`phalanx_core::alerts::crm_env`), in a process
//! group of its own that is killed at the timeout; a webhook gets a POST of the event's JSON.
//! A delivery that still fails after its retries becomes an `alert_failed` event, and the queue
//! moves on. Where each queue stands is replicated (`Command::AlertsDelivered`), so a new leader
//! resumes there: delivery is at least once (an event sent just before the leader died may be
//! sent again; `CRM_alert_node_sequence` / `seq` tell a repeat).

use crate::events::{note, EventView};
use crate::node::Node;
use phalanx_core::alerts::{crm_env, selects, Context};
use phalanx_core::config::{AlertConfig, AlertTarget};
use phalanx_core::events::{Event, EventKind};
use phalanx_core::Command;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A skipped stretch of this many events is recorded even with nothing delivered (so that a
/// new leader does not scan it again).
const RECORD_SKIPS_AFTER: u64 = 500;

/// Keep one delivery queue per configured recipient running (restarted when its config
/// changes), until the process ends.
pub async fn run(node: Arc<Node>) {
    let mut running: BTreeMap<String, (AlertConfig, tokio::task::AbortHandle)> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let wanted: BTreeMap<String, AlertConfig> =
            node.config().alerts.iter().map(|a| (a.id.clone(), a.clone())).collect();
        running.retain(|id, (cfg, task)| {
            let keep = wanted.get(id) == Some(cfg);
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, cfg) in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(id) {
                let task = tokio::spawn(queue(node.clone(), cfg.clone())).abort_handle();
                node.track(task.clone());
                slot.insert((cfg, task));
            }
        }
    }
}

/// One recipient's queue.
async fn queue(node: Arc<Node>, alert: AlertConfig) {
    let mut applied = node.applied();
    // Delivered (or skipped) up to here, as this leader knows it (None: read the replica).
    let mut done: Option<u64> = None;
    loop {
        applied.borrow_and_update();
        if !node.is_leader() {
            done = None;
            wait(&mut applied).await;
            continue;
        }
        let (recorded, first, next, configured) = node.with_state(|sm| {
            (
                sm.events.delivered.get(&alert.id).copied(),
                sm.events.first_seq(),
                sm.events.next_seq(),
                sm.events
                    .newest_first()
                    .find(|e| e.kind == EventKind::ConfigApplied)
                    .map(|e| e.seq),
            )
        });
        let Some(recorded) = recorded else {
            // A new recipient starts after the config version that added it (the newest: this
            // node runs it), else with the events to come.
            record(&node, &alert.id, configured.unwrap_or(next.saturating_sub(1))).await;
            wait(&mut applied).await;
            continue;
        };
        let from = done.unwrap_or(recorded).max(recorded) + 1;
        let from = from.max(first);
        // The next event it selects, and how far nothing was selected.
        let (found, scanned) = node.with_state(|sm| {
            let mut last = from.saturating_sub(1);
            for e in sm.events.since(from) {
                if selects(&alert, e) {
                    return (Some((e.clone(), node_id(sm, &e.node))), last);
                }
                last = e.seq;
            }
            (None, last)
        });
        match found {
            Some((e, id)) => {
                deliver(&node, &alert, &e, id).await;
                done = Some(e.seq);
                record(&node, &alert.id, e.seq).await;
            }
            None => {
                if scanned >= recorded + RECORD_SKIPS_AFTER {
                    record(&node, &alert.id, scanned).await;
                }
                done = Some(scanned.max(done.unwrap_or(0)));
                if from >= next {
                    wait(&mut applied).await;
                }
            }
        }
    }
}

fn node_id(sm: &crate::raft::store::SmData, name: &str) -> Option<u64> {
    sm.cluster.nodes.get(name).map(|n| n.id)
}

async fn wait(applied: &mut tokio::sync::watch::Receiver<u64>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await;
}

async fn record(node: &Node, recipient: &str, seq: u64) {
    let cmd = Command::AlertsDelivered {
        recipient: recipient.to_string(),
        seq,
    };
    if let Err(e) = node.write_as_leader(cmd).await {
        tracing::debug!(error = %e, "alert position not recorded");
    }
}

/// Deliver `e`, retrying with backoff; record an `alert_failed` event when it cannot.
async fn deliver(node: &Arc<Node>, alert: &AlertConfig, e: &Event, node_id: Option<u64>) {
    let attempts = alert.retries + 1;
    let mut last = String::new();
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(3))).await;
        }
        match send(alert, e, node_id).await {
            Ok(()) => return,
            Err(why) => {
                tracing::warn!(alert = %alert.id, seq = e.seq, attempt = attempt + 1, error = %why, "alert not delivered");
                last = why;
            }
        }
    }
    note(
        node,
        EventKind::AlertFailed,
        node.name.clone(),
        format!(
            "alert {} could not deliver event #{} ({}) after {attempts} attempt(s): {last}",
            alert.id,
            e.seq,
            e.kind.as_str()
        ),
        crate::mesh::unix_ms(),
    );
}

async fn send(alert: &AlertConfig, e: &Event, node_id: Option<u64>) -> Result<(), String> {
    let json = serde_json::to_string(&EventView::of(e)).map_err(|e| e.to_string())?;
    match &alert.target {
        AlertTarget::Program(path) => {
            let ctx = Context {
                recipient: alert.recipient.as_deref(),
                node_id,
                version: env!("CARGO_PKG_VERSION"),
            };
            run_program(path, crm_env(e, &ctx, &json), alert.timeout).await
        }
        AlertTarget::Webhook(url) => {
            let resp = crate::transport::alert_client()
                .map_err(|e| e.to_string())?
                .post(url)
                .timeout(alert.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json)
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e}"))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("POST {url}: HTTP {}", resp.status()))
            }
        }
    }
}

/// Run an alert program with `env` added; it and whatever it started are killed at `timeout`.
async fn run_program(path: &str, env: Vec<(String, String)>, timeout: Duration) -> Result<(), String> {
    let mut child = tokio::process::Command::new(path)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{path}: {e}"))?;
    let pid = child.id();
    let stderr = child.stderr.take();
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let status = match waited {
        Ok(s) => s.map_err(|e| format!("{path}: {e}"))?,
        Err(_) => {
            if let Some(pid) = pid {
                // The whole group: a script's own children too.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            return Err(format!(
                "{path} did not finish within {} ms: killed",
                timeout.as_millis()
            ));
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut s) = stderr {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut buf)).await;
        err = String::from_utf8_lossy(&buf).lines().last().unwrap_or("").to_string();
    }
    Err(format!(
        "{path} exited with {status}{}",
        if err.is_empty() {
            String::new()
        } else {
            format!(": {err}")
        }
    ))
}
