//! Which state commands a node may hand to another node. Facts go up, decisions come down: a
//! follower forwards to the leader what an operator asked for, what its agents found and the
//! plan actions it claims; the leader's own decisions (bootstrap, liveness, plans) are written
//! only by the leader's controller, on its own view, and never travel between nodes. The
//! allowed set is listed explicitly; anything else (including a command added later and not
//! listed here) is refused.

use crate::state::Command;

impl Command {
    /// The command's variant name, for messages and logs (no payload: it may be large).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Bootstrap { .. } => "Bootstrap",
            Command::AddNode { .. } => "AddNode",
            Command::RemoveNode { .. } => "RemoveNode",
            Command::SetStandby { .. } => "SetStandby",
            Command::SetLiveness { .. } => "SetLiveness",
            Command::SetAttr { .. } => "SetAttr",
            Command::SetPlan { .. } => "SetPlan",
            Command::SetPlanAfter { .. } => "SetPlanAfter",
            Command::SetPlanNotify { .. } => "SetPlanNotify",
            Command::ClaimAction { .. } => "ClaimAction",
            Command::ActionResult { .. } => "ActionResult",
            Command::MonitorFailed { .. } => "MonitorFailed",
            Command::Probe { .. } => "Probe",
            Command::DeviceHealth { .. } => "DeviceHealth",
            Command::Cleanup { .. } => "Cleanup",
            Command::Operator { .. } => "Operator",
            Command::ClearOperator { .. } => "ClearOperator",
            Command::SetMaintenance { .. } => "SetMaintenance",
            Command::SetLeaving { .. } => "SetLeaving",
            Command::ApplyConfig { .. } => "ApplyConfig",
            Command::OperatorBy { .. } => "OperatorBy",
            Command::ClearOperators { .. } => "ClearOperators",
            Command::Stamped { cmd, .. } => cmd.name(),
            Command::Note(_) => "Note",
            Command::AlertsDelivered { .. } => "AlertsDelivered",
            Command::BackendHealth { .. } => "BackendHealth",
            Command::BackendAdmin { .. } => "BackendAdmin",
            Command::Stick { .. } => "Stick",
            Command::Drill(_) => "Drill",
            Command::CreateToken { .. } => "CreateToken",
            Command::RevokeToken { .. } => "RevokeToken",
            Command::SetTrust { .. } => "SetTrust",
        }
    }

    /// Whether a node may forward this command to the leader (deny by default): operator
    /// requests, agent results and claims. `Bootstrap`, `SetLiveness` and `SetPlan` are the
    /// leader's decisions and are not forwardable.
    pub fn forwardable(&self) -> bool {
        if let Command::Stamped { cmd, .. } = self {
            return !matches!(cmd.as_ref(), Command::Stamped { .. }) && cmd.forwardable();
        }
        matches!(
            self,
            // Operator requests (the API builds them from validated input).
            Command::AddNode { .. }
                | Command::RemoveNode { .. }
                | Command::CreateToken { .. }
                | Command::RevokeToken { .. }
                | Command::SetTrust { .. }
                | Command::SetStandby { .. }
                | Command::SetAttr { .. }
                | Command::Cleanup { .. }
                | Command::Operator { .. }
                | Command::ClearOperator { .. }
                | Command::OperatorBy { .. }
                | Command::ClearOperators { .. }
                | Command::SetMaintenance { .. }
                | Command::SetLeaving { .. }
                | Command::ApplyConfig { .. }
                | Command::BackendAdmin { .. }
                // What a node's agents, devices and balancer checks found.
                | Command::BackendHealth { .. }
                | Command::Stick { .. }
                | Command::ActionResult { .. }
                | Command::MonitorFailed { .. }
                | Command::Probe { .. }
                | Command::DeviceHealth { .. }
                // A node taking its actions of the current plan.
                | Command::ClaimAction { .. }
                // What a node observed for the event history.
                | Command::Note(_)
                // An operator's drill (the API checks it).
                | Command::Drill(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::state::{Command, Liveness};

    #[test]
    fn the_leaders_decisions_are_not_forwardable() {
        let decisions = [
            Command::Bootstrap { nodes: vec![] },
            Command::SetLiveness {
                name: "n3".into(),
                liveness: Liveness::Offline,
                at_ms: 1,
            },
            Command::SetPlan {
                actions: vec![],
                edges: vec![],
            },
        ];
        for c in &decisions {
            assert!(!c.forwardable(), "{} must not be forwardable", c.name());
        }
        let operator = Command::SetStandby {
            name: "n1".into(),
            standby: true,
        };
        assert!(operator.forwardable());
        let claim = Command::ClaimAction {
            plan_id: 1,
            indices: vec![0],
            node: "n1".into(),
            incarnation: 1,
        };
        assert!(claim.forwardable());
    }
}
