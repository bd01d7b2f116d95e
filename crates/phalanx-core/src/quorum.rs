//! Quorum: who counts as a vote, how many votes a partition needs (⌊N/2⌋+1), the witness'
//! tie-breaking vote for two-node clusters, and the policy a node applies when it has no quorum.
//! Pure arithmetic over sets of names; the shell feeds it the detector's view.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Raft voters are capped at this many; further members join as non-voting learners (more
/// voters only slow commits and elections without making the cluster meaningfully safer).
pub const MAX_VOTERS: usize = 7;

/// What a node does while it has no quorum (acted on once fencing exists; parsed and stored now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoQuorumPolicy {
    /// Stop every resource (Pacemaker's default, the safe choice).
    #[default]
    Stop,
    /// Keep what runs, start nothing new.
    Freeze,
    /// Demote promoted instances, stop nothing else.
    Demote,
    /// Behave as if quorate (unsafe; for testing).
    Ignore,
}

impl NoQuorumPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            NoQuorumPolicy::Stop => "stop",
            NoQuorumPolicy::Freeze => "freeze",
            NoQuorumPolicy::Demote => "demote",
            NoQuorumPolicy::Ignore => "ignore",
        }
    }
}

/// What a node without quorum does to one resource instance it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoQuorumAction {
    Stop,
    Demote,
}

/// The no-quorum policy applied to what runs on this node (`here`: instance id and role), in
/// the order to run it: `stop` stops everything, virtual IPs first (a VIP must be gone before
/// the majority may start it elsewhere), then the rest, a group's members in reverse order;
/// `demote` demotes promoted instances and leaves the rest; `freeze` and `ignore` do nothing.
pub fn no_quorum_actions(
    policy: NoQuorumPolicy,
    resources: &crate::resources::Resources,
    here: &[(String, crate::model::Role)],
) -> Vec<(String, NoQuorumAction)> {
    match policy {
        NoQuorumPolicy::Stop => {
            let key = |id: &String| {
                let p = resources.primitive_of(id);
                let vip = p.is_some_and(|p| p.agent == crate::resources::AgentSpec::Vip);
                let group = p.and_then(|p| resources.group_of(&p.id));
                let pos = group
                    .zip(p)
                    .and_then(|(g, p)| g.members.iter().position(|m| *m == p.id))
                    .unwrap_or(0);
                (!vip, group.map(|g| g.id.clone()), std::cmp::Reverse(pos), id.clone())
            };
            let mut order: Vec<&String> = here.iter().map(|(id, _)| id).collect();
            order.sort_by_key(|id| key(id));
            order.into_iter().map(|id| (id.clone(), NoQuorumAction::Stop)).collect()
        }
        NoQuorumPolicy::Demote => here
            .iter()
            .filter(|(_, role)| *role == crate::model::Role::Promoted)
            .map(|(id, _)| (id.clone(), NoQuorumAction::Demote))
            .collect(),
        NoQuorumPolicy::Freeze | NoQuorumPolicy::Ignore => Vec::new(),
    }
}

/// Votes needed for a majority of `total` votes: ⌊total/2⌋+1.
pub fn majority(total: usize) -> usize {
    total / 2 + 1
}

/// Whether the voters agree that `node` is lost, as `me` (the leader, which no longer reaches
/// it) hears their word: a majority of `voters` must have lost it — `me`, and every voter `me`
/// reaches (`reachable`) whose latest heartbeat lists `node` among the peers it lost (`lost`;
/// a voter too old to say, None or absent, agrees, as every voter did before they could say).
/// A node whose own links fail loses its peers one after the other, milliseconds apart: alone,
/// its word is never a majority, so in that moment it cannot get a healthy node fenced.
pub fn loss_confirmed(
    node: &str,
    me: &str,
    voters: &BTreeSet<String>,
    reachable: &BTreeSet<String>,
    lost: &BTreeMap<String, Option<BTreeSet<String>>>,
) -> bool {
    let agree = voters
        .iter()
        .filter(|v| *v != node)
        .filter(|v| {
            *v == me
                || (reachable.contains(*v)
                    && lost
                        .get(*v)
                        .is_none_or(|said| said.as_ref().is_none_or(|l| l.contains(node))))
        })
        .count();
    agree >= majority(voters.len())
}

/// The quorum verdict of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumView {
    /// Votes this partition holds (reachable voters, plus the witness' if granted).
    pub votes: usize,
    /// Total votes in the cluster (voters, plus one if a witness is configured).
    pub expected: usize,
    /// Votes needed: majority(expected).
    pub needed: usize,
    pub quorate: bool,
}

/// Evaluate quorum for a partition. `reachable` is the set of nodes this node can reach,
/// itself included; only members of `voters` count. `witness` is None when no witness is
/// configured, else whether the witness granted this partition its vote.
pub fn evaluate(voters: &BTreeSet<String>, reachable: &BTreeSet<String>, witness: Option<bool>) -> QuorumView {
    let mut votes = voters.intersection(reachable).count();
    let mut expected = voters.len();
    if let Some(granted) = witness {
        expected += 1;
        if granted {
            votes += 1;
        }
    }
    let needed = majority(expected);
    QuorumView {
        votes,
        expected,
        needed,
        quorate: expected > 0 && votes >= needed,
    }
}

/// The witness' vote (qnetd's ffsplit, made sticky): it backs the Raft leader while it sees the
/// leader alive, so its vote and the log agree; else it keeps the node it backed while that one
/// is alive (a vote that hops would hand quorum to both sides of a split in turn); else the
/// lowest alive id. `alive` holds the node ids the witness hears. None: it backs nobody.
pub fn witness_vote(current: Option<u64>, leader: Option<u64>, alive: &BTreeSet<u64>) -> Option<u64> {
    leader
        .filter(|l| alive.contains(l))
        .or(current.filter(|c| alive.contains(c)))
        .or_else(|| alive.iter().next().copied())
}

/// Whether the witness' vote counts for this node's partition: the witness is reachable and
/// backs a node of the partition (`reachable`, this node included). A vote for a node this node
/// lost less than a grace ago (`recently_lost`) also counts: the witness hears of that death a
/// moment later than we do, and the survivors of a crash must not drop their resources in
/// between. The grace is shorter than the lease the quorate side waits before recovering.
pub fn witness_grants(
    witness_reachable: bool,
    vote: Option<&str>,
    reachable: &BTreeSet<String>,
    recently_lost: &BTreeSet<String>,
) -> bool {
    witness_reachable && vote.is_some_and(|v| reachable.contains(v) || recently_lost.contains(v))
}

/// Which voter should campaign at once after the leader is declared dead: among the reachable
/// voters `(id, last log index)`, the one with the longest log (Raft elects only an up-to-date
/// log), ties to the lowest id. None when the reachable voters are no majority of `voters`.
/// `witness` (its id) counts towards the majority but never campaigns.
pub fn campaigner(reachable_voters: &[(u64, u64)], voters: usize, witness: Option<u64>) -> Option<u64> {
    if reachable_voters.len() < majority(voters) {
        return None;
    }
    reachable_voters
        .iter()
        .filter(|(id, _)| Some(*id) != witness)
        .max_by_key(|(id, log)| (*log, std::cmp::Reverse(*id)))
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_loss_needs_a_majority_of_the_voters_to_agree() {
        let voters = set(&["n1", "n2", "n3"]);
        let said = |l: &[&str]| Some(set(l));
        // n1 leads and lost n2; n3 still reaches n2: not confirmed, until n3 lost it too.
        let mut lost = BTreeMap::from([("n3".to_string(), said(&[]))]);
        assert!(!loss_confirmed("n2", "n1", &voters, &set(&["n1", "n3"]), &lost));
        lost.insert("n3".into(), said(&["n2"]));
        assert!(loss_confirmed("n2", "n1", &voters, &set(&["n1", "n3"]), &lost));
        // A voter's word counts only while n1 reaches it: n1 alone is no majority.
        assert!(!loss_confirmed("n2", "n1", &voters, &set(&["n1"]), &lost));
        // A voter too old to say agrees (as before it could say).
        lost.insert("n3".into(), None);
        assert!(loss_confirmed("n2", "n1", &voters, &set(&["n1", "n3"]), &lost));
        // Five voters: the leader and two others.
        let five = set(&["n1", "n2", "n3", "n4", "n5"]);
        let lost = BTreeMap::from([
            ("n3".to_string(), said(&["n2"])),
            ("n4".to_string(), said(&[])),
            ("n5".to_string(), said(&["n2", "n4"])),
        ]);
        let all = set(&["n1", "n3", "n4", "n5"]);
        assert!(!loss_confirmed("n2", "n1", &five, &set(&["n1", "n4", "n5"]), &lost));
        assert!(loss_confirmed("n2", "n1", &five, &all, &lost));
        // The witness is a voter like any other: two nodes and a witness.
        let two = set(&["n1", "n2", "witness"]);
        let lost = BTreeMap::from([("witness".to_string(), said(&["n2"]))]);
        assert!(loss_confirmed("n2", "n1", &two, &set(&["n1", "witness"]), &lost));
        assert!(!loss_confirmed("n2", "n1", &two, &set(&["n1"]), &lost));
    }

    #[test]
    fn majority_is_floor_half_plus_one() {
        let expect = [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)];
        for (n, m) in expect {
            assert_eq!(majority(n), m, "majority({n})");
        }
    }

    #[test]
    fn five_nodes_split_two_three() {
        let voters = set(&["a", "b", "c", "d", "e"]);
        assert!(evaluate(&voters, &set(&["c", "d", "e"]), None).quorate);
        let minority = evaluate(&voters, &set(&["a", "b"]), None);
        assert!(!minority.quorate);
        assert_eq!((minority.votes, minority.needed), (2, 3));
    }

    #[test]
    fn even_split_has_no_quorum_without_witness() {
        let voters = set(&["a", "b", "c", "d"]);
        assert!(!evaluate(&voters, &set(&["a", "b"]), None).quorate);
        assert!(!evaluate(&voters, &set(&["c", "d"]), None).quorate);
    }

    #[test]
    fn witness_breaks_a_two_node_tie_for_exactly_one_side() {
        let voters = set(&["a", "b"]);
        assert!(evaluate(&voters, &set(&["a"]), Some(true)).quorate);
        assert!(!evaluate(&voters, &set(&["b"]), Some(false)).quorate);
        assert!(evaluate(&voters, &set(&["a", "b"]), Some(false)).quorate);
    }

    #[test]
    fn non_voters_do_not_count() {
        let voters = set(&["a", "b", "c"]);
        let v = evaluate(&voters, &set(&["a", "x", "y", "z"]), None);
        assert_eq!(v.votes, 1);
        assert!(!v.quorate);
    }

    #[test]
    fn the_longest_log_campaigns_ties_to_the_lowest_id() {
        assert_eq!(campaigner(&[(1, 10), (3, 10)], 3, None), Some(1));
        assert_eq!(
            campaigner(&[(1, 9), (3, 10)], 3, None),
            Some(3),
            "a node one entry behind must not campaign"
        );
        assert_eq!(campaigner(&[(2, 7), (4, 7), (5, 6)], 5, None), Some(2));
        assert_eq!(campaigner(&[(1, 10)], 3, None), None, "no majority, no campaign");
        assert_eq!(campaigner(&[], 0, None), None);
        assert_eq!(
            campaigner(&[(2, 9), (99, 10)], 3, Some(99)),
            Some(2),
            "the witness counts, never runs"
        );
    }

    #[test]
    fn the_witness_backs_the_leader_then_sticks_then_the_lowest() {
        let alive = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(
            witness_vote(None, Some(2), &alive(&[1, 2])),
            Some(2),
            "the leader first"
        );
        assert_eq!(witness_vote(Some(1), Some(2), &alive(&[1, 2])), Some(2));
        assert_eq!(
            witness_vote(Some(2), Some(1), &alive(&[2])),
            Some(2),
            "a dead leader: stay"
        );
        assert_eq!(witness_vote(Some(2), None, &alive(&[1, 2])), Some(2), "sticky");
        assert_eq!(witness_vote(Some(2), None, &alive(&[1, 3])), Some(1), "lowest alive");
        assert_eq!(witness_vote(Some(2), Some(2), &alive(&[])), None);
    }

    #[test]
    fn in_a_split_both_sides_reach_the_witness_and_exactly_one_is_quorate() {
        let voters = set(&["a", "b"]);
        let none = BTreeSet::new();
        for vote in ["a", "b"] {
            let quorate: Vec<bool> = [set(&["a"]), set(&["b"])]
                .iter()
                .map(|side| evaluate(&voters, side, Some(witness_grants(true, Some(vote), side, &none))).quorate)
                .collect();
            assert_eq!(
                quorate.iter().filter(|q| **q).count(),
                1,
                "vote for {vote}: {quorate:?}"
            );
        }
        assert!(
            !witness_grants(false, Some("a"), &set(&["a"]), &none),
            "unreachable witness"
        );
        assert!(
            !witness_grants(true, None, &set(&["a"]), &none),
            "a witness backing nobody"
        );
        assert!(
            witness_grants(true, Some("a"), &set(&["b"]), &set(&["a"])),
            "grace after a death"
        );
    }

    #[test]
    fn each_no_quorum_policy_does_what_it_says() {
        use crate::model::Role;
        let cfg = crate::config::parse(
            r#"[cluster]
name = "c"
fencing = "watchdog"
[[node]]
name = "a"
links = ["127.0.0.1:1"]
[[resource]]
id = "ip"
agent = "vip"
params = { address = "10.0.0.1/24" }
[[resource]]
id = "app"
agent = "ocf:heartbeat:Dummy"
[[resource]]
id = "db"
agent = "ocf:heartbeat:Dummy"
[[group]]
id = "stack"
members = ["app", "ip"]
[[clone]]
id = "dbs"
resource = "db"
promotable = true
"#,
        )
        .unwrap();
        let here = vec![
            ("app".to_string(), Role::Started),
            ("db:0".to_string(), Role::Promoted),
            ("ip".to_string(), Role::Started),
        ];
        let r = &cfg.resources;
        let stop: Vec<String> = no_quorum_actions(NoQuorumPolicy::Stop, r, &here)
            .into_iter()
            .map(|(id, a)| {
                assert_eq!(a, NoQuorumAction::Stop);
                id
            })
            .collect();
        assert_eq!(stop[0], "ip", "the VIP goes first: {stop:?}");
        assert_eq!(stop.len(), 3);
        assert_eq!(
            no_quorum_actions(NoQuorumPolicy::Demote, r, &here),
            vec![("db:0".to_string(), NoQuorumAction::Demote)]
        );
        assert!(no_quorum_actions(NoQuorumPolicy::Freeze, r, &here).is_empty());
        assert!(no_quorum_actions(NoQuorumPolicy::Ignore, r, &here).is_empty());
    }

    #[test]
    fn empty_cluster_is_never_quorate() {
        assert!(!evaluate(&BTreeSet::new(), &set(&["a"]), None).quorate);
    }
}
