//! The operator's moves and bans of resources (`phalanx resource move`, `ban`, `clear`): one
//! move target per placement unit at a time, a new constraint on the same resource and node
//! replacing the old one, each expiring by itself (the scheduler ignores expired ones), with
//! who made it and when (`OperatorOrigin`), and the list `resource constraints` shows
//! (`ClusterState::operator_entries`).

use super::{ClusterState, Outcome};
use crate::scheduler::OperatorConstraint;
use serde::{Deserialize, Serialize};

/// Who made an operator constraint and when (see `ClusterState::operator_origin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorOrigin {
    pub rsc: String,
    pub node: String,
    /// The caller as it named itself to the API (the CLI sends `user@host`).
    pub by: String,
    /// Unix ms, as the API node's clock stamped it.
    pub at_ms: u64,
}

/// One operator constraint as `resource constraints` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorEntry {
    pub resource: String,
    /// "move" or "ban".
    pub kind: String,
    pub node: String,
    /// Who made it; None: recorded by a version that did not keep it.
    pub by: Option<String>,
    /// When it was made (unix ms); None: not known (as `by`).
    pub made_ms: Option<u64>,
    /// When it expires (unix ms); None: never (until cleared).
    pub expires_ms: Option<u64>,
    /// It has expired: the scheduler ignores it (it stays listed until cleared).
    pub expired: bool,
}

impl OperatorEntry {
    fn of(o: &OperatorConstraint, origin: Option<&OperatorOrigin>, now_ms: u64) -> Self {
        OperatorEntry {
            resource: o.rsc.clone(),
            kind: if o.prefer { "move" } else { "ban" }.into(),
            node: o.node.clone(),
            by: origin.map(|x| x.by.clone()),
            made_ms: origin.map(|x| x.at_ms),
            expires_ms: o.expires_ms,
            expired: o.expires_ms.is_some_and(|e| now_ms >= e),
        }
    }
}

impl ClusterState {
    /// Record a move (prefer) or a ban, replacing any on the same resource and node; a move
    /// also replaces the moves of `rsc` and of every id in `unit` (one target per unit).
    fn put_operator(&mut self, constraint: &OperatorConstraint, unit: &[String]) {
        self.operator
            .retain(|o| !(o.rsc == constraint.rsc && o.node == constraint.node));
        if constraint.prefer {
            // One move target at a time.
            self.operator
                .retain(|o| !(o.prefer && (o.rsc == constraint.rsc || unit.contains(&o.rsc))));
        }
        self.operator.push(constraint.clone());
        self.config_version += 1;
    }

    /// Record a move (prefer) or a ban, replacing any on the same resource and node
    /// (`Command::Operator`: who and when are not known).
    pub(super) fn add_operator(&mut self, constraint: &OperatorConstraint) -> Outcome {
        self.put_operator(constraint, &[]);
        self.prune_origins();
        Outcome::Ok
    }

    /// [`add_operator`](Self::add_operator), recording who made it and when.
    pub(super) fn add_operator_by(
        &mut self,
        constraint: &OperatorConstraint,
        by: &str,
        at_ms: u64,
        unit: &[String],
    ) -> Outcome {
        self.put_operator(constraint, unit);
        self.operator_origin
            .retain(|o| !(o.rsc == constraint.rsc && o.node == constraint.node));
        self.operator_origin.push(OperatorOrigin {
            rsc: constraint.rsc.clone(),
            node: constraint.node.clone(),
            by: by.to_string(),
            at_ms,
        });
        self.prune_origins();
        Outcome::Ok
    }

    /// Remove the moves and bans of every one of `rscs`.
    pub(super) fn clear_operators(&mut self, rscs: &[String]) -> Outcome {
        let before = self.operator.len();
        self.operator.retain(|o| !rscs.contains(&o.rsc));
        self.prune_origins();
        if before == self.operator.len() {
            Outcome::Unchanged
        } else {
            Outcome::Ok
        }
    }

    /// Forget the origins of constraints that are gone.
    fn prune_origins(&mut self) {
        let operator = &self.operator;
        self.operator_origin
            .retain(|x| operator.iter().any(|o| o.rsc == x.rsc && o.node == x.node));
    }

    /// Every operator move and ban, in the order they were made, with who made it, when, and
    /// when it expires (as of `now_ms`).
    pub fn operator_entries(&self, now_ms: u64) -> Vec<OperatorEntry> {
        self.operator
            .iter()
            .map(|o| {
                let origin = self.operator_origin.iter().find(|x| x.rsc == o.rsc && x.node == o.node);
                OperatorEntry::of(o, origin, now_ms)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::*;

    fn constraint(rsc: &str, node: &str, prefer: bool) -> OperatorConstraint {
        OperatorConstraint {
            rsc: rsc.into(),
            node: node.into(),
            prefer,
            expires_ms: None,
        }
    }

    fn by(rsc: &str, node: &str, prefer: bool, at_ms: u64, unit: &[&str]) -> Command {
        Command::OperatorBy {
            constraint: constraint(rsc, node, prefer),
            by: "alice@ops1".into(),
            at_ms,
            unit: unit.iter().map(|u| u.to_string()).collect(),
        }
    }

    #[test]
    fn operator_constraints_replace_and_clear() {
        let mut s = ClusterState::default();
        let mv = |node: &str| Command::Operator {
            constraint: constraint("web", node, true),
        };
        s.apply(&mv("n2"));
        s.apply(&mv("n3"));
        assert_eq!(s.operator.len(), 1, "one move target at a time");
        assert_eq!(s.operator[0].node, "n3");
        assert_eq!(s.apply(&Command::ClearOperator { rsc: "web".into() }), Outcome::Ok);
        assert!(s.operator.is_empty());
    }

    #[test]
    fn who_and_when_follow_their_constraint() {
        let mut s = ClusterState::default();
        s.apply(&by("web", "n2", true, 10, &["svc", "ip", "web"]));
        s.apply(&Command::Operator {
            constraint: OperatorConstraint {
                expires_ms: Some(50),
                ..constraint("db", "n1", false)
            },
        });
        let e = s.operator_entries(20);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].kind.as_str(), e[0].by.as_deref(), e[0].made_ms, e[0].expires_ms),
            ("move", Some("alice@ops1"), Some(10), None)
        );
        assert_eq!(
            (e[1].kind.as_str(), e[1].by.as_deref(), e[1].expires_ms, e[1].expired),
            ("ban", None, Some(50), false),
            "made by a command that does not say who"
        );
        assert!(s.operator_entries(50)[1].expired);
        // A move of the group replaces the move made through its member, origin included.
        s.apply(&by("svc", "n3", true, 30, &["svc", "ip", "web"]));
        let e = s.operator_entries(40);
        assert_eq!(
            e.iter()
                .map(|x| (x.resource.as_str(), x.node.as_str()))
                .collect::<Vec<_>>(),
            [("db", "n1"), ("svc", "n3")]
        );
        assert_eq!(s.operator_origin.len(), 1);
        // A ban elsewhere in the unit does not replace the move.
        s.apply(&by("ip", "n1", false, 35, &["svc", "ip", "web"]));
        assert_eq!(s.operator.len(), 3);
    }

    #[test]
    fn clearing_a_unit_clears_what_was_made_through_any_of_its_ids() {
        let mut s = ClusterState::default();
        s.apply(&by("web", "n2", true, 10, &[]));
        s.apply(&by("ip", "n1", false, 11, &[]));
        s.apply(&by("db", "n1", false, 12, &[]));
        let clear = Command::ClearOperators {
            rscs: vec!["svc".into(), "ip".into(), "web".into()],
        };
        assert_eq!(s.apply(&clear), Outcome::Ok);
        assert_eq!(s.operator, [constraint("db", "n1", false)]);
        assert_eq!(s.operator_origin.len(), 1);
        assert_eq!(s.apply(&clear), Outcome::Unchanged);
    }
}
