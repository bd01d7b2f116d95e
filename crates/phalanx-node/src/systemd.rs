//! Running under systemd (`dist/phalanx.service`, `Type=notify`). When systemd passes a
//! `NOTIFY_SOCKET`, the daemon tells it (sd-notify): `READY=1` once this node has joined the
//! cluster — a member of the Raft membership that knows a leader and has a quorum, and, for a
//! node (not the witness), recorded online by the leader; `STATUS=` lines as that view changes;
//! `WATCHDOG=1` every half of `WATCHDOG_USEC` (`WatchdogSec=`), only while the node's loops make
//! progress — the controller ran rounds, Raft has not stopped, the mesh sent heartbeats — so a
//! hung daemon is restarted by systemd; and `STOPPING=1` when it starts leaving (SIGTERM, that
//! is `systemctl stop`, or `phalanx node stop`). Without `NOTIFY_SOCKET` nothing is sent. The
//! decisions ([`join_view`], [`Progress::alive_since`]) are pure.

use crate::lifecycle::StopState;
use crate::node::Node;
use phalanx_core::Liveness;
use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the notifier looks at the node (STATUS changes, readiness, the stop).
const POLL: Duration = Duration::from_millis(200);

/// What a node's own view says about having joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinView {
    pub cluster: String,
    /// In the Raft membership (voter or learner).
    pub member: bool,
    /// The leader's name, when one is known.
    pub leader: Option<String>,
    pub quorate: bool,
    pub witness: bool,
    /// This node's liveness as the replicated state records it (None: no record yet).
    pub liveness: Option<Liveness>,
}

/// Whether the node has joined, and the `STATUS=` line that says where it stands.
pub fn join_view(v: &JoinView) -> (bool, String) {
    let c = &v.cluster;
    if !v.member {
        return (
            false,
            format!("joining cluster {c}: not a member of the Raft membership yet"),
        );
    }
    let Some(leader) = v.leader.as_deref() else {
        return (false, format!("joining cluster {c}: no leader known yet"));
    };
    if !v.quorate {
        return (false, format!("cluster {c}: no quorum (leader was {leader})"));
    }
    if !v.witness && v.liveness != Some(Liveness::Online) && v.liveness != Some(Liveness::Leaving) {
        return (
            false,
            format!("joining cluster {c}: waiting for leader {leader} to record this node online"),
        );
    }
    let role = if v.witness { "witness of" } else { "member of" };
    (true, format!("{role} cluster {c}, leader {leader}, quorum"))
}

/// The counters the watchdog looks at, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Rounds of the controller loop so far.
    pub rounds: u64,
    /// Heartbeat datagrams the mesh sent so far.
    pub heartbeats_sent: u64,
    /// The mesh has peers to send to (a one-node cluster sends nothing).
    pub has_peers: bool,
    /// Raft has not stopped on a fatal error.
    pub raft_running: bool,
}

impl Progress {
    /// Whether the node's loops were alive between `before` and `self`: the controller ran,
    /// Raft runs, and the mesh sent heartbeats if it has anyone to send them to. (Feeding every
    /// half `WatchdogSec`, so `WatchdogSec` must be at least twice the heartbeat interval.)
    pub fn alive_since(&self, before: &Progress) -> bool {
        self.raft_running
            && self.rounds > before.rounds
            && (!self.has_peers || self.heartbeats_sent > before.heartbeats_sent)
    }

    pub fn of(node: &Node) -> Progress {
        Progress {
            rounds: node.controller_rounds(),
            heartbeats_sent: node.mesh.stats().sent,
            has_peers: !node.mesh.peers().is_empty(),
            raft_running: node.raft.metrics().borrow().running_state.is_ok(),
        }
    }
}

/// Reads this node's [`JoinView`].
pub fn view_of(node: &Node) -> JoinView {
    let member = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&node.id)
        .is_some();
    JoinView {
        cluster: node.config().cluster.name.clone(),
        member,
        leader: node.leader_name(),
        quorate: node.quorate(),
        witness: node.is_witness(),
        liveness: node.with_state(|sm| sm.cluster.nodes.get(&node.name).map(|r| r.liveness)),
    }
}

/// The daemon's link to systemd's notification socket.
pub struct Notifier {
    stopping: AtomicBool,
}

impl Notifier {
    /// A notifier when systemd passed a `NOTIFY_SOCKET` (a `Type=notify` unit), else None.
    pub fn from_env() -> Option<Arc<Notifier>> {
        std::env::var_os("NOTIFY_SOCKET").map(|_| {
            Arc::new(Notifier {
                stopping: AtomicBool::new(false),
            })
        })
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "telling systemd (NOTIFY_SOCKET)");
        }
    }

    /// `STOPPING=1` (once) with a `STATUS=` line: the daemon is on its way out.
    pub fn stopping(&self, status: &str) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
        }
    }

    /// Tell systemd about `node` until the process ends: readiness, status, the watchdog (when
    /// `WATCHDOG_USEC` is set for this process) and the start of a stop.
    pub async fn run(self: Arc<Self>, node: Arc<Node>) {
        let feed_every = sd_notify::watchdog_enabled().map(|w| w / 2).filter(|d| !d.is_zero());
        if let Some(every) = feed_every {
            tracing::info!(every_ms = every.as_millis() as u64, "feeding systemd's watchdog");
        }
        let mut stop = node.stop_state();
        let mut ready = false;
        let mut last_status = String::new();
        let mut before = Progress::of(&node);
        let mut next_feed = feed_every.map(|e| tokio::time::Instant::now() + e);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                r = stop.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
            let state = *stop.borrow_and_update();
            if state != StopState::Running {
                self.stopping(match state {
                    StopState::Leaving => "leaving the cluster: waiting for what runs here to move away",
                    StopState::Removed => "removed from the cluster: stopping",
                    _ => "stopping",
                });
            }
            let (joined, status) = join_view(&view_of(&node));
            if joined && !ready {
                ready = true;
                tracing::info!(status = %status, "joined the cluster: telling systemd READY=1");
                self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
                last_status = status;
            } else if status != last_status && !self.stopping.load(Ordering::SeqCst) {
                self.send(&[NotifyState::Status(&status)]);
                last_status = status;
            }
            if let (Some(every), Some(at)) = (feed_every, next_feed.as_mut()) {
                let now = tokio::time::Instant::now();
                if now >= *at {
                    let p = Progress::of(&node);
                    if p.alive_since(&before) {
                        self.send(&[NotifyState::Watchdog]);
                    } else {
                        tracing::error!(progress = ?p, before = ?before, "a main loop of this node made no progress: not feeding systemd's watchdog");
                    }
                    before = p;
                    *at = now + every;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> JoinView {
        JoinView {
            cluster: "shop".into(),
            member: true,
            leader: Some("n2".into()),
            quorate: true,
            witness: false,
            liveness: Some(Liveness::Online),
        }
    }

    #[test]
    fn joined_means_member_with_a_leader_a_quorum_and_recorded_online() {
        assert_eq!(
            join_view(&view()),
            (true, "member of cluster shop, leader n2, quorum".into())
        );
        let not = |v: JoinView| assert!(!join_view(&v).0, "{v:?}");
        not(JoinView {
            member: false,
            ..view()
        });
        not(JoinView { leader: None, ..view() });
        not(JoinView {
            quorate: false,
            ..view()
        });
        not(JoinView {
            liveness: Some(Liveness::Offline),
            ..view()
        });
        not(JoinView {
            liveness: None,
            ..view()
        });
        assert!(
            join_view(&JoinView {
                liveness: Some(Liveness::Leaving),
                ..view()
            })
            .0
        );
        // The witness has no node record: a member with a leader and a quorum has joined.
        assert!(
            join_view(&JoinView {
                witness: true,
                liveness: None,
                ..view()
            })
            .0
        );
        assert!(join_view(&JoinView { leader: None, ..view() }).1.contains("no leader"));
    }

    #[test]
    fn the_watchdog_is_fed_only_while_every_loop_progresses() {
        let before = Progress {
            rounds: 10,
            heartbeats_sent: 100,
            has_peers: true,
            raft_running: true,
        };
        let after = Progress {
            rounds: 15,
            heartbeats_sent: 130,
            ..before
        };
        assert!(after.alive_since(&before));
        assert!(
            !Progress { rounds: 10, ..after }.alive_since(&before),
            "controller stuck"
        );
        assert!(
            !Progress {
                heartbeats_sent: 100,
                ..after
            }
            .alive_since(&before),
            "mesh stuck"
        );
        assert!(
            Progress {
                heartbeats_sent: 100,
                has_peers: false,
                ..after
            }
            .alive_since(&before),
            "nobody to heartbeat: the mesh has nothing to send"
        );
        assert!(
            !Progress {
                raft_running: false,
                ..after
            }
            .alive_since(&before),
            "raft stopped"
        );
    }
}
