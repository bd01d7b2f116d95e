//! The leader's decisions and the campaign, pure (no IO, no clock: times are passed in), like
//! openraft's engine: the node's thin async loop observes (mesh verdicts, Raft metrics, the
//! replicated state), calls [`Controller`], and performs the [`ControlAction`]s it returns.
//! Owns: bootstrap of a new cluster, liveness as the leader sees it, committing a new plan (or
//! waiting for claimed starts still in flight), Raft membership following the member list
//! (learners in, departed nodes out, caught-up learners promoted), the mesh-informed campaign
//! after a leader loss, the witness' vote and when a node takes leadership back from the
//! witness. Table-tested in `tests/controller.rs`.

use crate::config::Config;
use crate::quorum::{self, MAX_VOTERS};
use crate::scheduler::ActionKind;
use crate::state::{ClusterState, Command, Liveness, NewNode};
use crate::timings::Timings;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A Raft node id.
pub type NodeId = u64;

/// The witness' Raft id: far above any id `node add` hands out (they count up from 1).
pub const WITNESS_ID: NodeId = 1 << 48;
/// The witness' name in the mesh and in status (no node may take it: `config check`).
pub const WITNESS_NAME: &str = "witness";

/// What the leader observed for one round of [`Controller::reconcile`].
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// This node's name.
    pub me: String,
    /// Wall clock, unix ms: stamps liveness changes and the scheduler's input.
    pub now_ms: u64,
    /// Monotonic time since this process started (also the clock of plan waits).
    pub uptime: Duration,
    /// Nodes this node reaches both ways, itself included (the mesh's verdicts).
    pub reachable: BTreeSet<String>,
    /// What each peer's latest heartbeat said of the peers it lost both ways (None: a peer
    /// too old to say); see [`quorum::loss_confirmed`].
    pub lost: BTreeMap<String, Option<BTreeSet<String>>>,
    /// The witness backs this node's partition: its vote is its word that the other side is
    /// lost (two nodes split from each other while both still reach it).
    pub witness_backs_me: bool,
    /// Every node id in the Raft membership, and the voters among them.
    pub raft_members: BTreeSet<NodeId>,
    pub voters: BTreeSet<NodeId>,
    /// The leader's last log index, and each follower's matched index.
    pub last_log: u64,
    pub matched: BTreeMap<NodeId, u64>,
}

/// What the node's shell performs, in order, stopping at the first failure.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlAction {
    /// Commit this decision as the leader: never forwarded (a deposed leader's stale view must
    /// not be committed by the real one).
    Write(Command),
    /// A new plan is about to be committed: its readable summary, for the log.
    NewPlan(Vec<String>),
    /// Add a Raft learner.
    AddLearner {
        id: NodeId,
        api: String,
    },
    /// Remove departed voters, or departed learners.
    RemoveVoters(BTreeSet<NodeId>),
    RemoveNodes(BTreeSet<NodeId>),
    /// Promote caught-up, reachable learners to voters.
    PromoteVoters(BTreeSet<NodeId>),
    /// Nothing is decided this round: a new plan waits for a claimed start still in flight.
    WaitForInFlight {
        plan_id: u64,
    },
}

/// What a follower knows when it asks whether to campaign (see [`Controller::campaign`]).
#[derive(Debug, Clone, Default)]
pub struct CampaignView {
    pub me: NodeId,
    pub voters: BTreeSet<NodeId>,
    /// The leader Raft names, and whether the mesh reaches it both ways / ever saw it alive.
    pub leader: Option<NodeId>,
    pub leader_reachable: bool,
    pub leader_seen_alive: bool,
    /// (id, last log index) of every voter this node reaches both ways, itself included.
    pub reachable_voters: Vec<(NodeId, u64)>,
}

/// The controller's memory between rounds (a plan wait's start, a campaign window).
#[derive(Debug, Clone, Default)]
pub struct Controller {
    /// The plan whose in-flight starts hold back a new one, and since when.
    plan_wait: Option<(u64, Duration)>,
    /// The dead leader a campaign is about, and until when this node may campaign.
    campaign: Option<(NodeId, Duration)>,
    /// When this node last asked to take leadership back from the witness.
    last_take_over: Option<Duration>,
}

impl Controller {
    /// The leader's reconciliation of what it observes with the replicated state. One concern
    /// per round, in this order: bootstrap; liveness; a new plan; Raft membership.
    pub fn reconcile(
        &mut self,
        obs: &Observed,
        state: &ClusterState,
        config: &Config,
        t: &Timings,
    ) -> Vec<ControlAction> {
        // 1. First leader of a new cluster: record the configured members, in one command.
        if state.max_node_id == 0 {
            let nodes = config
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| NewNode {
                    name: n.name.clone(),
                    id: i as u64 + 1,
                    links: n.links.iter().map(|l| l.to_string()).collect(),
                    api: n.api.to_string(),
                })
                .collect();
            return vec![ControlAction::Write(Command::Bootstrap { nodes })];
        }
        // 2. Liveness as this leader sees it. Right after start the detector has not heard
        //    anyone yet: nobody is declared offline before it settled. After a change, schedule
        //    on the new liveness next round, not on this round's copy (which could still fence a
        //    node that is back).
        let liveness = self.liveness(obs, state, t);
        if !liveness.is_empty() {
            return liveness;
        }
        // 3. Resources: a new plan when its actions differ from what the current plan still has
        //    to do (an action in flight is still pending, so it is never planned twice).
        if let Some(plan) = self.plan(obs, state, config, t) {
            return plan;
        }
        // 4. Raft membership follows the member list.
        membership(obs, state)
    }

    fn liveness(&self, obs: &Observed, state: &ClusterState, t: &Timings) -> Vec<ControlAction> {
        let settled = obs.uptime > t.startup_settle;
        let voters: BTreeSet<String> = obs
            .voters
            .iter()
            .filter_map(|id| {
                if *id == WITNESS_ID {
                    return Some(WITNESS_NAME.to_string());
                }
                state.nodes.iter().find(|(_, r)| r.id == *id).map(|(n, _)| n.clone())
            })
            .collect();
        // Lost (to be fenced, what it held recovered) only when a majority of the voters agree.
        // The witness agrees by backing this side (two nodes split while both reach it: it
        // hears both, and its vote decides).
        let mut lost = obs.lost.clone();
        if obs.witness_backs_me {
            lost.insert(WITNESS_NAME.to_string(), None);
        }
        let confirmed = |name: &str| quorum::loss_confirmed(name, &obs.me, &voters, &obs.reachable, &lost);
        let mut out = Vec::new();
        for (name, rec) in &state.nodes {
            let reachable = obs.reachable.contains(name);
            let seen = match rec.liveness {
                // Leaving: up while reachable; gone, it stopped cleanly if it held nothing
                // (else it is lost, and fenced like any lost node).
                Liveness::Leaving if reachable => continue,
                Liveness::Leaving if !settled => continue,
                Liveness::Leaving if state.holds_nothing(name) => Liveness::Stopped,
                // Stopped: down, and expected to be; it is back when it is seen again.
                Liveness::Stopped if !reachable => continue,
                _ if reachable => Liveness::Online,
                _ if settled && confirmed(name) => Liveness::Offline,
                _ => continue,
            };
            if rec.liveness == seen {
                continue;
            }
            out.push(ControlAction::Write(Command::SetLiveness {
                name: name.clone(),
                liveness: seen,
                at_ms: obs.now_ms,
            }));
        }
        out
    }

    fn plan(
        &mut self,
        obs: &Observed,
        state: &ClusterState,
        config: &Config,
        t: &Timings,
    ) -> Option<Vec<ControlAction>> {
        if config.resources.is_empty() {
            return None;
        }
        let plan = schedule(obs, state, config);
        // Notifications do not count: a plan whose pre-notifications ran would otherwise be
        // replaced by one that sends them again, forever. While the same operations remain,
        // the current plan (and its notifications) goes on.
        let real = |k: &(ActionKind, String, String)| !matches!(k.0, ActionKind::Notify { .. });
        let wanted: BTreeSet<_> = plan
            .actions
            .iter()
            .map(|a| (a.kind, a.rsc.clone(), a.node.clone()))
            .filter(real)
            .collect();
        let pending: BTreeSet<_> = state.plan.pending_keys().into_iter().filter(real).collect();
        if wanted == pending {
            self.plan_wait = None;
            return None;
        }
        if self.wait_for_in_flight_starts(obs.uptime, state, config, t) {
            return Some(vec![ControlAction::WaitForInFlight { plan_id: state.plan.id }]);
        }
        Some(vec![
            ControlAction::NewPlan(plan.summary),
            ControlAction::Write(if plan.notify.is_empty() {
                Command::SetPlanAfter {
                    actions: plan.actions,
                    edges: plan.edges,
                    after_plan: state.plan.id,
                    after_claims: state.plan.claimed.len(),
                }
            } else {
                Command::SetPlanNotify {
                    actions: plan.actions,
                    edges: plan.edges,
                    notify: plan.notify,
                    after_plan: state.plan.id,
                    after_claims: state.plan.claimed.len(),
                }
            }),
        ])
    }

    /// Whether a new plan must wait: a start or promote of the current plan is claimed and not
    /// reported yet, on a node still online (`PlanRecord::pending_starts`: running, or able to
    /// begin the moment its predecessors finish). A plan made now would not know it and could
    /// start a second copy elsewhere (found by the nemesis: two VIP holders when a node joined
    /// while web was starting; and by the PostgreSQL test: two primaries). Pacemaker likewise lets in-flight
    /// actions finish before the next transition. The wait is bounded by the action's timeout
    /// (the executor reports a timeout as a failure) plus one detection time, for a report that
    /// never comes (its node restarted).
    fn wait_for_in_flight_starts(&mut self, now: Duration, state: &ClusterState, config: &Config, t: &Timings) -> bool {
        let online = |n: &str| state.nodes.get(n).is_some_and(|r| r.liveness.up());
        let bound = state
            .plan
            .pending_starts()
            .into_iter()
            .filter(|a| online(&a.node))
            .map(|a| {
                config
                    .resources
                    .primitive_of(&a.rsc)
                    .map(|p| p.start_timeout)
                    .unwrap_or_default()
            })
            .max();
        let Some(bound) = bound else {
            self.plan_wait = None;
            return false;
        };
        let since = match self.plan_wait {
            Some((id, since)) if id == state.plan.id => since,
            _ => {
                self.plan_wait = Some((state.plan.id, now));
                now
            }
        };
        now < since + bound + t.detection
    }

    /// Whether this follower campaigns now. Mesh-informed election: when every link to the
    /// leader has gone silent, one reachable voter campaigns at once instead of waiting for a
    /// random election timeout: the one with the longest log as the heartbeats advertise it
    /// (ties: lowest id), since Raft only elects an up-to-date log. Followers still refuse votes
    /// until their leader lease runs out, so this only removes the second, randomised wait;
    /// Raft's safety does not depend on when elections start.
    ///
    /// It campaigns only inside a window that opens when a leader the mesh had seen alive is
    /// declared dead, and lasts `campaign_window`; outside it, Raft's own randomised timers
    /// rule. Campaigning without such a window livelocks when the campaigner's log is behind: its
    /// refused vote requests keep resetting the others' election timers.
    pub fn campaign(&mut self, v: &CampaignView, now: Duration, t: &Timings) -> bool {
        if !v.voters.contains(&v.me) {
            return false;
        }
        match v.leader {
            Some(l) if l == v.me || v.leader_reachable => {
                self.campaign = None;
                return false;
            }
            Some(l) if v.leader_seen_alive && self.campaign.is_none_or(|(dead, _)| dead != l) => {
                self.campaign = Some((l, now + t.campaign_window));
            }
            _ => {}
        }
        match self.campaign {
            Some((_, until)) if now < until => {}
            _ => return false,
        }
        quorum::campaigner(&v.reachable_voters, v.voters.len(), Some(WITNESS_ID)) == Some(v.me)
    }

    /// A campaign window is open (the controller then looks twice as often).
    pub fn campaigning(&self, now: Duration) -> bool {
        self.campaign.is_some_and(|(_, until)| now < until)
    }

    /// This node leads: no campaign window (one would otherwise survive until the same node id
    /// dies again, and block that campaign).
    pub fn leading(&mut self) {
        self.campaign = None;
    }

    /// A leading witness only replicates: the first node whose log caught up with the witness'
    /// (its lease has run out by then, so it grants the vote and steps down) takes leadership
    /// back; at most once per election timeout.
    pub fn take_over(
        &mut self,
        leader: Option<NodeId>,
        own_log: u64,
        witness_log: Option<u64>,
        now: Duration,
        t: &Timings,
    ) -> bool {
        if leader != Some(WITNESS_ID) || witness_log.is_none_or(|w| own_log < w) {
            return false;
        }
        if self.last_take_over.is_some_and(|last| now < last + t.election_max) {
            return false;
        }
        self.last_take_over = Some(now);
        true
    }
}

/// The witness' round: which node it backs (see [`quorum::witness_vote`]), and whether it may
/// be elected: only when no live leader exists and every node it hears is behind it (Raft
/// elects the newest log, so only the witness can be), until a node has caught up.
/// `alive`: the nodes it reaches both ways; `peers`: (alive, last log index) of every node it hears.
pub fn witness_round(
    current: Option<NodeId>,
    leader: Option<NodeId>,
    alive: &BTreeSet<NodeId>,
    own_log: u64,
    peers: &[(bool, Option<u64>)],
) -> (Option<NodeId>, bool) {
    let vote = quorum::witness_vote(current, leader.filter(|l| *l != WITNESS_ID), alive);
    let leaderless = leader.is_none_or(|l| l != WITNESS_ID && !alive.contains(&l));
    let all_behind = peers
        .iter()
        .filter(|(alive, _)| *alive)
        .all(|(_, log)| log.unwrap_or(0) < own_log);
    (vote, leaderless && !alive.is_empty() && all_behind)
}

/// The plan the leader's scheduler makes this round: the replicated state as the scheduler's
/// input at `now_ms`, with this node (the leader) as the fencer. `simulate --live` shows it.
pub fn schedule(obs: &Observed, state: &ClusterState, config: &Config) -> crate::scheduler::Plan {
    let input = state.scheduler_input(obs.now_ms, &config.cluster, Some(&obs.me));
    crate::scheduler::schedule(config, &input)
}

/// Raft membership follows the member list: add missing members as learners (one per round),
/// remove departed voters then departed learners, and promote caught-up, reachable learners
/// while there are fewer than [`MAX_VOTERS`] voters.
fn membership(obs: &Observed, state: &ClusterState) -> Vec<ControlAction> {
    let wanted: BTreeMap<NodeId, (&String, &crate::state::NodeRecord)> =
        state.nodes.iter().map(|(n, r)| (r.id, (n, r))).collect();
    if let Some((id, (_, rec))) = wanted.iter().find(|(id, _)| !obs.raft_members.contains(id)) {
        return vec![ControlAction::AddLearner {
            id: *id,
            api: rec.api.clone(),
        }];
    }
    // Departed: recorded once (id within the assigned range) and removed since. An id the state
    // has never recorded is not departed, whatever the membership says.
    let departed: BTreeSet<NodeId> = obs
        .raft_members
        .iter()
        .filter(|id| **id <= state.max_node_id && !wanted.contains_key(id))
        .copied()
        .collect();
    if !departed.is_empty() {
        let voters: BTreeSet<NodeId> = departed.intersection(&obs.voters).copied().collect();
        return vec![if voters.is_empty() {
            ControlAction::RemoveNodes(departed)
        } else {
            ControlAction::RemoveVoters(voters)
        }];
    }
    if obs.voters.len() >= MAX_VOTERS {
        return vec![];
    }
    let caught_up = |id: &NodeId| obs.matched.get(id).is_some_and(|m| m + 1 >= obs.last_log);
    let candidates: BTreeSet<NodeId> = obs
        .raft_members
        .iter()
        .filter(|id| !obs.voters.contains(id))
        .filter(|id| wanted.get(id).is_some_and(|(name, _)| obs.reachable.contains(*name)))
        .filter(|id| caught_up(id))
        .take(MAX_VOTERS - obs.voters.len())
        .copied()
        .collect();
    if candidates.is_empty() {
        vec![]
    } else {
        vec![ControlAction::PromoteVoters(candidates)]
    }
}
