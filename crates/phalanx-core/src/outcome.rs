//! What applying one state command gave: `Outcome`, and for a refused command the typed
//! `RejectReason` (why it changed nothing). Reasons are data, not text: the API maps them to a
//! 409 with their message, a forwarding node receives them as JSON
//! (`{"Rejected":{"kind":"node_exists","name":"n2"}}`) and tests match on the variant.

use serde::{Deserialize, Serialize};

/// The outcome of applying one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok,
    /// Applied but nothing changed.
    Unchanged,
    /// The command names a node that is not a member.
    NoSuchNode(String),
    /// Refused: the state is unchanged.
    Rejected(RejectReason),
}

/// Why a command was refused (see [`Outcome::Rejected`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RejectReason {
    #[error("a node needs a name and at least one link")]
    NodeIncomplete,
    #[error("node {name:?} already exists")]
    NodeExists { name: String },
    #[error("node id {id} was already assigned")]
    NodeIdAssigned { id: u64 },
    #[error("link {link} is already used by {by}")]
    LinkInUse { link: String, by: String },
    #[error("api {api} is already used by {by}")]
    ApiInUse { api: String, by: String },
    #[error("plan edge {from} -> {to} is out of range ({actions} actions)")]
    PlanEdgeOutOfRange { from: usize, to: usize, actions: usize },
    #[error("plan {plan_id} is not the current plan ({current})")]
    StalePlan { plan_id: u64, current: u64 },
    #[error("action {index} of plan {plan_id} is not {node}'s to run now")]
    ActionNotOpen { index: usize, plan_id: u64, node: String },
    #[error("attribute key is empty")]
    EmptyAttrKey,
    #[error("the fence of {target} in plan {plan_id} was decided before {target} came back online")]
    FenceOfAnEarlierLife { target: String, plan_id: u64 },
    #[error("{name} is not online: only an online node can be asked to stop")]
    NotOnline { name: String },
    #[error("{name} was not asked to stop")]
    NotLeaving { name: String },
    #[error("{name} still holds resources: it cannot leave without a fence")]
    StillHolds { name: String },
    #[error("the config was changed since version {expected} was read: the current version is {current} (see `phalanx config diff {expected} {current}`)")]
    StaleConfig { expected: u64, current: u64 },
    #[error("the config is not valid: {reason}")]
    InvalidConfig { reason: String },
    #[error("the cluster cannot be renamed (from {from:?} to {to:?}): its heartbeats carry the name")]
    ClusterRenamed { from: String, to: String },
    #[error("a plan made on plan {plan_id} came too late: plan {current} or its claims moved on")]
    PlanMovedOn { plan_id: u64, current: u64 },
    #[error("a stamped command cannot hold another stamped command")]
    NestedStamp,
    #[error("a {what} name must be 1 to {max} bytes")]
    BadName { what: String, max: usize },
    #[error("balancer {balancer} already records {max} backends")]
    TooManyBackends { balancer: String, max: usize },
    #[error("weight {weight} is out of range (0..={max})")]
    BadWeight { weight: u16, max: u16 },
    #[error("a stick batch of {entries} entries for a table of {capacity} is out of bounds")]
    BadStickBatch { entries: usize, capacity: usize },
    #[error("drill {scenario} of {resource} is running (started by {by}, until it ends or at unix ms {expires_ms})")]
    DrillRunning {
        scenario: String,
        resource: String,
        by: String,
        expires_ms: u64,
    },
    #[error("token {name:?} already exists (revoke it first to replace it)")]
    TokenExists { name: String },
    #[error("no token named {name:?}")]
    NoToken { name: String },
    #[error("a token needs a name of 1 to 64 letters, digits, '.', '_', '-' or '@' and a SHA-256 in hex")]
    BadToken,
    #[error("the cluster keeps at most {max} tokens")]
    TooManyTokens { max: usize },
    #[error("not a trust record the cluster can take: {why}")]
    BadTrust { why: String },
    #[error("the trust record changed since it was read (another rotation step went first): read it again")]
    TrustChanged,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_well_as_json_and_text() {
        let o = Outcome::Rejected(RejectReason::NodeExists { name: "n2".into() });
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(json, r#"{"Rejected":{"kind":"node_exists","name":"n2"}}"#);
        assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
        let unit = Outcome::Rejected(RejectReason::EmptyAttrKey);
        let json = serde_json::to_string(&unit).unwrap();
        assert_eq!(json, r#"{"Rejected":{"kind":"empty_attr_key"}}"#);
        assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), unit);
        assert_eq!(
            RejectReason::StalePlan { plan_id: 3, current: 5 }.to_string(),
            "plan 3 is not the current plan (5)"
        );
    }
}
