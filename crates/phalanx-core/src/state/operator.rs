//! The operator's moves and bans of resources (`phalanx move`, `ban`, `clear`): one move target
//! per resource at a time, a new constraint on the same resource and node replacing the old
//! one, each expiring by itself (the scheduler ignores expired ones).

use super::{ClusterState, Outcome};
use crate::scheduler::OperatorConstraint;

impl ClusterState {
    /// Record a move (prefer) or a ban, replacing any on the same resource and node.
    pub(super) fn add_operator(&mut self, constraint: &OperatorConstraint) -> Outcome {
        self.operator
            .retain(|o| !(o.rsc == constraint.rsc && o.node == constraint.node));
        if constraint.prefer {
            // One move target at a time.
            self.operator.retain(|o| !(o.rsc == constraint.rsc && o.prefer));
        }
        self.operator.push(constraint.clone());
        self.config_version += 1;
        Outcome::Ok
    }

    /// Remove the moves and bans of `rsc`.
    pub(super) fn clear_operator(&mut self, rsc: &str) -> Outcome {
        let before = self.operator.len();
        self.operator.retain(|o| o.rsc != *rsc);
        if before == self.operator.len() {
            Outcome::Unchanged
        } else {
            Outcome::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::*;

    #[test]
    fn operator_constraints_replace_and_clear() {
        let mut s = ClusterState::default();
        let mv = |node: &str| Command::Operator {
            constraint: OperatorConstraint {
                rsc: "web".into(),
                node: node.into(),
                prefer: true,
                expires_ms: None,
            },
        };
        s.apply(&mv("n2"));
        s.apply(&mv("n3"));
        assert_eq!(s.operator.len(), 1, "one move target at a time");
        assert_eq!(s.operator[0].node, "n3");
        assert_eq!(s.apply(&Command::ClearOperator { rsc: "web".into() }), Outcome::Ok);
        assert!(s.operator.is_empty());
    }
}
