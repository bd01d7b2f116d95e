//! A node's clean departure (`phalanx node stop`, SIGTERM): the node is marked *leaving* through
//! Raft, the scheduler moves what it runs away (a leaving node is treated like one in standby),
//! and once the replicated state shows it holds nothing — no resource recorded there, no claimed
//! action unreported — the node is ready to exit. The leader then sees it go and records it
//! `Stopped`: never lost, never fenced. A second request (or `--now`) exits at once. A daemon
//! that restarts before the cluster saw its previous life go ends that leave (the state
//! machine records the previous life stopped, or lost if it still held something).
//!
//! The daemon owns the process: it asks with [`Node::request_stop`] and waits on
//! [`Node::stop_state`] for [`StopState::Ready`] or [`StopState::Now`].

use crate::node::Node;
use phalanx_core::{Command, Liveness};
use std::sync::Arc;
use std::time::Duration;

/// How long a stop waits for the cluster to record the leave (no leader, no quorum) before it
/// stops at once instead.
const LEAVE_RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a leaving leader that holds nothing waits for its plan (the moves it started) to
/// finish before it goes anyway.
const LEADER_PLAN_WAIT: Duration = Duration::from_secs(30);

/// Where this node's stop stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopState {
    /// Running; nobody asked it to stop.
    #[default]
    Running,
    /// Asked to stop: leaving, waiting for what it runs to move away.
    Leaving,
    /// It holds nothing: exit now, cleanly.
    Ready,
    /// Exit at once, whatever still runs here (a second request, `--now`, or no quorum to leave
    /// through).
    Now,
    /// `phalanx node remove` removed this node from the cluster: exit (what it ran is stopped
    /// with the process), and do not come back as a candidate.
    Removed,
}

impl Node {
    /// Ask this node to stop: cleanly (`now = false`: leave, let what runs here move away, then
    /// exit), or at once. A second clean request while leaving means at once.
    pub fn request_stop(&self, now: bool) {
        self.stop.send_modify(|s| {
            *s = match (*s, now) {
                (StopState::Running, false) => StopState::Leaving,
                (StopState::Ready, _) => StopState::Ready,
                (StopState::Removed, _) => StopState::Removed,
                _ => StopState::Now,
            }
        });
    }

    /// Where this node's stop stands (changes as it goes).
    pub fn stop_state(&self) -> tokio::sync::watch::Receiver<StopState> {
        self.stop.subscribe()
    }

    /// Stop, with their agents, the resources the replicated state records on this node (a node
    /// removed from the cluster does so before it exits: nobody will place or fence anything
    /// for it any more). Returns what failed to stop.
    pub async fn stop_what_runs_here(&self) -> Vec<String> {
        let Some(runner) = &self.runner else { return Vec::new() };
        let config = self.config();
        let mut failed = Vec::new();
        for rsc in self.recorded_here() {
            let Some(p) = config.resources.primitive_of(&rsc) else {
                continue;
            };
            let meta = crate::executor::clone_meta(self, &config, &rsc);
            let r = crate::executor::call_primitive(runner, p, &rsc, phalanx_core::ocf::AgentAction::Stop, None, &meta)
                .await;
            if r.succeeded() {
                tracing::warn!(rsc = %rsc, "stopped: this node left the cluster");
            } else {
                tracing::error!(rsc = %rsc, reason = %r.summary(), "could not stop it");
                failed.push(rsc);
            }
        }
        failed
    }

    /// What the replicated state records running on this node, for the log when it exits.
    pub fn recorded_here(&self) -> Vec<String> {
        self.with_state(|sm| {
            sm.cluster
                .resources
                .iter()
                .filter(|(_, r)| r.running.contains_key(&self.name))
                .map(|(id, _)| id.clone())
                .collect()
        })
    }
}

/// Follow this node's record: write the leave when asked, signal `Ready` once it holds nothing,
/// and take back a leave left over from an earlier life of the process.
pub(crate) async fn run(node: Arc<Node>) {
    let mut applied = node.applied();
    let mut stop = node.stop_state();
    // Seen up (not leaving) in this life: a leave recorded later is this life's.
    let mut seen_up = false;
    // A member in this life: its record disappearing means it was removed.
    let mut was_member = false;
    let mut took_back = false;
    let mut wrote_leave = false;
    let mut waiting_for: Vec<String> = Vec::new();
    let mut asked_at: Option<tokio::time::Instant> = None;
    let mut empty_at: Option<tokio::time::Instant> = None;
    let tick = node.timings.heartbeat.max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            r = applied.changed() => {
                // The state machine is gone: so is the node.
                if r.is_err() {
                    return;
                }
            }
            _ = stop.changed() => {}
        }
        let asked = *node.stop.borrow();
        if matches!(asked, StopState::Ready | StopState::Now | StopState::Removed) {
            return;
        }
        let Some((liveness, holds_nothing)) = node.with_state(|sm| {
            let rec = sm.cluster.nodes.get(&node.name)?;
            Some((rec.liveness, sm.cluster.holds_nothing(&node.name)))
        }) else {
            if was_member {
                tracing::error!("this node was removed from the cluster (`phalanx node remove`): exiting");
                node.stop.send_replace(StopState::Removed);
                return;
            }
            // Not a member (the witness, a node not joined yet): nothing to leave.
            if asked == StopState::Leaving {
                node.stop.send_replace(StopState::Ready);
            }
            continue;
        };
        was_member = true;
        match liveness {
            Liveness::Online => seen_up = true,
            Liveness::Leaving if asked == StopState::Running && !seen_up && !took_back => {
                // Left over from the previous process (it restarted before it went).
                match node
                    .write(Command::SetLeaving {
                        name: node.name.clone(),
                        leaving: false,
                        lock: false,
                    })
                    .await
                {
                    Ok(o) => {
                        // Unchanged: this replica was behind, the leave is gone already.
                        if o == phalanx_core::Outcome::Ok {
                            tracing::info!("the stop of this node's previous run was still open: recorded as ended");
                        }
                        took_back = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "taking back the previous run's stop"),
                }
                continue;
            }
            _ => {}
        }
        if asked == StopState::Running {
            if liveness == Liveness::Leaving && seen_up {
                // `phalanx node stop` through another node: this life is asked to go.
                node.request_stop(false);
            }
            continue;
        }
        // Leaving, as asked.
        if liveness != Liveness::Leaving {
            if !wrote_leave || liveness == Liveness::Online {
                match node
                    .write(Command::SetLeaving {
                        name: node.name.clone(),
                        leaving: true,
                        lock: node.config().cluster.shutdown == phalanx_core::config::ShutdownMode::Stop,
                    })
                    .await
                {
                    Ok(o) => {
                        wrote_leave = true;
                        tracing::info!(outcome = ?o, "leaving the cluster: what runs here moves away first");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot record the leave yet (no leader or no quorum?)"),
                }
            }
            let asked_at = *asked_at.get_or_insert_with(tokio::time::Instant::now);
            if !wrote_leave && asked_at.elapsed() > LEAVE_RECORD_TIMEOUT {
                tracing::warn!(
                    "the leave could not be recorded in {LEAVE_RECORD_TIMEOUT:?}: stopping at once (what runs here is stopped with the process)"
                );
                node.stop.send_replace(StopState::Now);
                return;
            }
            continue;
        }
        if holds_nothing {
            // The leader drives the moves: it stays until the plan is done (bounded), or what
            // it moved would wait for the next leader's election half-way.
            let plan_done = node.with_state(|sm| sm.cluster.plan.pending_keys().is_empty());
            let empty_at = *empty_at.get_or_insert_with(tokio::time::Instant::now);
            if !node.is_leader() || plan_done || empty_at.elapsed() > LEADER_PLAN_WAIT {
                tracing::info!("this node holds nothing any more: stopping cleanly");
                node.stop.send_replace(StopState::Ready);
                return;
            }
            continue;
        }
        let here = node.recorded_here();
        if here != waiting_for {
            tracing::info!(resources = ?here, "leaving: waiting for these to move away");
            waiting_for = here;
        }
    }
}
