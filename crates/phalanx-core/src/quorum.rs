//! Quorum: who counts as a vote, how many votes a partition needs (⌊N/2⌋+1), the witness'
//! tie-breaking vote for two-node clusters, and the policy a node applies when it has no quorum.
//! Pure arithmetic over sets of names; the shell feeds it the detector's view.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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

/// Votes needed for a majority of `total` votes: ⌊total/2⌋+1.
pub fn majority(total: usize) -> usize {
    total / 2 + 1
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

/// Which voter should campaign at once after the leader is declared dead: among the reachable
/// voters `(id, last log index)`, the one with the longest log (Raft elects only an up-to-date
/// log), ties to the lowest id. None when the reachable voters are no majority of `voters`.
pub fn campaigner(reachable_voters: &[(u64, u64)], voters: usize) -> Option<u64> {
    if reachable_voters.len() < majority(voters) {
        return None;
    }
    reachable_voters
        .iter()
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
        assert_eq!(campaigner(&[(1, 10), (3, 10)], 3), Some(1));
        assert_eq!(
            campaigner(&[(1, 9), (3, 10)], 3),
            Some(3),
            "a node one entry behind must not campaign"
        );
        assert_eq!(campaigner(&[(2, 7), (4, 7), (5, 6)], 5), Some(2));
        assert_eq!(campaigner(&[(1, 10)], 3), None, "no majority, no campaign");
        assert_eq!(campaigner(&[], 0), None);
    }

    #[test]
    fn empty_cluster_is_never_quorate() {
        assert!(!evaluate(&BTreeSet::new(), &set(&["a"]), None).quorate);
    }
}
