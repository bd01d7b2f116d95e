//! The controller loop: the thin async shell around `phalanx_core::controller`. Every round (a
//! heartbeat interval, half that while a campaign window is open, and at once when the mesh
//! publishes a verdict or an entry is applied) it observes — the mesh's two-way reachability,
//! Raft's metrics, the replicated state — asks the pure controller what to do, and does it:
//! the leader commits its decisions (never forwarded) and changes the Raft membership; a
//! follower campaigns or takes leadership back from the witness; the witness votes. It also
//! feeds the hardware watchdog while the node has quorum.

use crate::mesh;
use crate::node::{Node, NodeError};
use crate::raft::store::SmData;
use crate::raft::{BasicNode, NodeId, WITNESS_NAME};
use openraft::ChangeMembers;
use phalanx_core::controller::{self, CampaignView, ControlAction, Controller, Observed};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

impl Node {
    fn control(&self) -> MutexGuard<'_, Controller> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run the controller until the process ends.
    pub(crate) async fn controller(self: Arc<Self>) {
        let mut verdicts = self.mesh.verdicts();
        let mut views = self.mesh.views();
        let mut applied = self.applied();
        // Whether this node calls elections and sends Raft heartbeats (None: not set yet).
        let mut electing: Option<bool> = None;
        let mut watchdog = self.open_watchdog();
        let mut had_quorum = false;
        // The applied index the mesh's peer set was last taken at: members change only through
        // the log, so the mesh is told only then, not every round.
        let mut peers_at: Option<u64> = None;
        loop {
            let period = if self.control().campaigning(self.started.elapsed()) {
                self.timings.campaign_tick
            } else {
                self.timings.controller_tick
            };
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                r = verdicts.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(period).await;
                    }
                }
                // A peer's word on the nodes it lost changed: a loss may be confirmed now.
                r = views.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(period).await;
                    }
                }
                // After every applied entry: an action's result is the next plan step's cue.
                r = applied.changed() => {
                    // The state machine is gone (shutting down): back to plain ticks.
                    if r.is_err() {
                        tokio::time::sleep(period).await;
                    }
                }
            }
            self.rounds.fetch_add(1, Ordering::Relaxed);
            let at = *applied.borrow();
            if peers_at != Some(at) {
                self.refresh_peers();
                peers_at = Some(at);
            }
            // The watchdog is fed while this node has quorum, and before it first had it (a node
            // starting up runs nothing yet); a node that lost quorum stops feeding it.
            if let Some(w) = watchdog.as_mut() {
                let quorate = self.quorate();
                had_quorum |= quorate;
                if quorate || !had_quorum {
                    w.feed();
                } else {
                    tracing::warn!("no quorum: not feeding the watchdog");
                }
            }
            // A node whose mesh reaches no majority must not lead: its view of who is alive is
            // the isolated one's (Raft may still reach its peers over the API addresses, but
            // liveness is the mesh's). It calls no election, openraft's own timer included,
            // and, leading, stops its Raft heartbeats so that the majority's leader leases run
            // out and they elect one of theirs (openraft 0.9 has no leadership transfer).
            let quorate = self.is_witness() || self.quorate();
            if electing != Some(quorate) {
                if !quorate && electing.is_some() {
                    tracing::warn!("the mesh reaches no majority of the voters: calling no election, not leading");
                }
                self.raft.runtime_config().elect(quorate);
                self.raft.runtime_config().heartbeat(quorate);
                electing = Some(quorate);
            }
            if self.is_witness() {
                self.witness_round();
            } else if !quorate {
                // Nothing to decide from a minority's view.
            } else if self.is_leader() {
                self.control().leading();
                if let Err(e) = self.reconcile().await {
                    tracing::debug!(error = %e, "reconcile");
                }
            } else if self.should_campaign() {
                tracing::info!("the mesh declared the leader dead: starting an election");
                let _ = self.raft.trigger().elect().await;
            } else if self.should_take_over() {
                tracing::info!("the witness leads and this node has caught up: taking over");
                let _ = self.raft.trigger().elect().await;
            }
        }
    }

    /// What the leader observes for one round of the pure controller.
    fn observed(&self, sm: &SmData) -> Observed {
        let m = self.raft.metrics().borrow().clone();
        let membership = sm.membership.membership();
        Observed {
            me: self.name.clone(),
            now_ms: mesh::unix_ms(),
            uptime: self.started.elapsed(),
            reachable: self.reachable(),
            lost: self.mesh.peers().into_iter().map(|(n, p)| (n, p.lost)).collect(),
            witness_backs_me: self.witness_backs_me(),
            raft_members: membership.nodes().map(|(id, _)| *id).collect(),
            voters: membership.voter_ids().collect(),
            last_log: m.last_log_index.unwrap_or(0),
            matched: m
                .replication
                .iter()
                .flatten()
                .filter_map(|(id, l)| l.map(|l| (*id, l.index)))
                .collect(),
        }
    }

    /// The leader's round: the pure controller decides, this performs its actions in order.
    async fn reconcile(&self) -> Result<(), NodeError> {
        let actions = self.with_state(|sm| {
            let observed = self.observed(sm);
            self.control()
                .reconcile(&observed, &sm.cluster, &self.config(), &self.timings)
        });
        for a in actions {
            self.perform(a).await?;
        }
        Ok(())
    }

    async fn perform(&self, action: ControlAction) -> Result<(), NodeError> {
        match action {
            ControlAction::Write(cmd) => {
                self.write_as_leader(cmd).await?;
            }
            ControlAction::NewPlan(summary) => {
                for line in &summary {
                    tracing::info!(plan = %line, "new plan");
                }
            }
            ControlAction::WaitForInFlight { plan_id } => {
                tracing::debug!(plan_id, "a new plan waits for the current plan's starts in flight");
            }
            ControlAction::AddLearner { id, api } => {
                tracing::info!(node = id, "adding learner");
                self.raft.add_learner(id, BasicNode::new(api), false).await?;
            }
            ControlAction::RemoveVoters(ids) => {
                tracing::info!(nodes = ?ids, "removing voters");
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(ids), false)
                    .await?;
            }
            ControlAction::RemoveNodes(ids) => {
                tracing::info!(nodes = ?ids, "removing learners");
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(ids), false)
                    .await?;
            }
            ControlAction::PromoteVoters(ids) => {
                tracing::info!(nodes = ?ids, "promoting learners to voters");
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await?;
            }
        }
        Ok(())
    }

    /// Whether this follower campaigns now (`Controller::campaign`).
    fn should_campaign(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let sm = self.cluster_state();
        let reachable = self.reachable();
        let peers = self.mesh.peers();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let leader_name = m.current_leader.and_then(|l| self.name_of(&sm, l));
        let own_log = m.last_log_index.unwrap_or(0);
        let view = CampaignView {
            me: self.id,
            leader: m.current_leader,
            // A leader whose name is unknown yet counts as reachable: no campaign against it.
            leader_reachable: leader_name.as_ref().is_none_or(|n| reachable.contains(n)),
            leader_seen_alive: leader_name
                .and_then(|n| peers.get(&n).map(|p| p.changed_at_unix_ms.is_some()))
                .unwrap_or(false),
            reachable_voters: voters
                .iter()
                .filter_map(|id| {
                    if *id == self.id {
                        return Some((*id, own_log));
                    }
                    let name = self.name_of(&sm, *id)?;
                    reachable
                        .contains(&name)
                        .then(|| (*id, peers.get(&name).and_then(|p| p.log_index).unwrap_or(0)))
                })
                .collect(),
            voters,
        };
        self.control().campaign(&view, self.started.elapsed(), &self.timings)
    }

    /// A leading witness only replicates: whether this node takes leadership back now
    /// (`Controller::take_over`).
    fn should_take_over(&self) -> bool {
        if self.is_witness() {
            return false;
        }
        let m = self.raft.metrics().borrow().clone();
        let witness_log = self.mesh.peers().get(WITNESS_NAME).and_then(|p| p.log_index);
        self.control().take_over(
            m.current_leader,
            m.last_log_index.unwrap_or(0),
            witness_log,
            self.started.elapsed(),
            &self.timings,
        )
    }

    /// The witness' round (`controller::witness_round`): it backs one partition, never
    /// schedules or writes anything itself, and may be elected only when it alone holds the
    /// newest entries.
    fn witness_round(&self) {
        let sm = self.cluster_state();
        let m = self.raft.metrics().borrow().clone();
        let id_of = |name: &String| {
            sm.cluster.nodes.get(name).map(|r| r.id).or_else(|| {
                let i = self.config().nodes.iter().position(|n| n.name == *name)?;
                Some(i as u64 + 1)
            })
        };
        let alive: BTreeSet<NodeId> = self.mesh.two_way_peers().iter().filter_map(id_of).collect();
        let current = Some(self.vote.load(Ordering::SeqCst)).filter(|v| *v != 0);
        let peers: Vec<(bool, Option<u64>)> = self.mesh.peers().values().map(|p| (p.alive, p.log_index)).collect();
        let (vote, elect) =
            controller::witness_round(current, m.current_leader, &alive, m.last_log_index.unwrap_or(0), &peers);
        if vote != current {
            tracing::info!(vote = ?vote.and_then(|v| self.name_of(&sm, v)), "witness vote");
        }
        self.vote.store(vote.unwrap_or(0), Ordering::SeqCst);
        self.mesh.set_vote(vote.unwrap_or(0));
        self.raft.runtime_config().elect(elect);
    }

    /// The configured hardware watchdog, opened and armed; None without one (or when it cannot
    /// be opened: then the software lease is all there is, and the log says so).
    fn open_watchdog(&self) -> Option<crate::watchdog::Watchdog> {
        let config = self.config();
        let path = config.cluster.watchdog.as_ref().filter(|_| !self.is_witness())?;
        match crate::watchdog::Watchdog::open(path, &self.name, config.cluster.watchdog_timeout) {
            Ok(mut w) => {
                w.feed();
                tracing::info!(path, "hardware watchdog armed");
                Some(w)
            }
            Err(e) => {
                tracing::error!(error = %e, "no hardware watchdog: falling back to the software lease");
                None
            }
        }
    }
}
