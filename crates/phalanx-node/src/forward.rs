//! Forwarding a write to the leader, the client side: a follower posts the command as JSON to
//! the leader's peer route ([`FORWARD_PATH`], served by `api::peer`), which commits it and
//! answers with the `Outcome` as data. Only commands a node may forward travel this way
//! (`Command::forwardable`: operator requests, agent results, claims); the leader checks again.
//! Errors keep what happened: the leader unreachable (retryable), refusing the command (4xx,
//! with its reason), failing (5xx), or answering something unreadable.

use phalanx_core::{Command, Outcome};

/// The peer route a follower forwards writes to.
pub const FORWARD_PATH: &str = "/peer/write";

/// The header of the route's answer that carries the log index the write was committed at (so
/// the follower can wait to have applied it); a leader of an older build leaves it out.
pub const INDEX_HEADER: &str = "x-phalanx-log-index";

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the leader at {leader} did not answer: {source}")]
    Unreachable {
        leader: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the leader at {leader} refused it ({status}): {reason}")]
    Refused {
        leader: String,
        status: u16,
        reason: String,
    },
    #[error("the leader at {leader} could not commit it ({status}): {reason}")]
    Failed {
        leader: String,
        status: u16,
        reason: String,
    },
    #[error("the leader at {leader} answered something unreadable: {source}")]
    Malformed {
        leader: String,
        #[source]
        source: reqwest::Error,
    },
    /// The test network did not deliver it (a partition, a crashed leader).
    #[error("the leader at {leader} did not answer (test network)")]
    NotDelivered { leader: String },
}

impl ForwardError {
    /// Whether asking again later may succeed (the leader unreachable, or failing for now).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ForwardError::Unreachable { .. } | ForwardError::Failed { .. } | ForwardError::NotDelivered { .. }
        )
    }
}

/// The future of a faked forward.
pub type FakeForward =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(Outcome, Option<u64>), ForwardError>> + Send>>;

/// What carries forwarded writes in tests instead of HTTP (the fake network: it hands the
/// command to the leader's node in the same process, as its peer route would).
pub trait ForwardSeam: Send + Sync {
    /// Forward `cmd` to the leader whose API address is `leader`.
    fn forward(&self, leader: &str, cmd: &Command) -> FakeForward;
}

/// The human reason of an error answer: the `reason` of phalanx's `{error, reason}` body, else
/// the first line of the body, bounded (never a whole page of someone else's server).
fn reason_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.lines().next().unwrap_or("").chars().take(200).collect())
}

/// Post `cmd` to the leader at `leader` (its API address) and return what committing it gave,
/// with the log index it was committed at when the leader says.
pub async fn to_leader(
    http: &reqwest::Client,
    token: &str,
    leader: &str,
    cmd: &Command,
) -> Result<(Outcome, Option<u64>), ForwardError> {
    let resp = http
        .post(crate::transport::url(leader, FORWARD_PATH))
        .bearer_auth(token)
        .json(cmd)
        .send()
        .await
        .map_err(|source| ForwardError::Unreachable {
            leader: leader.to_string(),
            source,
        })?;
    let status = resp.status();
    if status.is_success() {
        let index = resp
            .headers()
            .get(INDEX_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let outcome = resp.json::<Outcome>().await.map_err(|source| ForwardError::Malformed {
            leader: leader.to_string(),
            source,
        })?;
        return Ok((outcome, index));
    }
    let reason = reason_of(&resp.text().await.unwrap_or_default());
    let (leader, status) = (leader.to_string(), status.as_u16());
    Err(if (400..500).contains(&status) {
        ForwardError::Refused { leader, status, reason }
    } else {
        ForwardError::Failed { leader, status, reason }
    })
}

#[cfg(test)]
mod tests {
    use super::reason_of;

    #[test]
    fn the_reason_comes_from_the_json_body_or_its_first_line() {
        assert_eq!(
            reason_of(r#"{"error":"forbidden","reason":"SetPlan is a leader's decision"}"#),
            "SetPlan is a leader's decision"
        );
        assert_eq!(reason_of("Bad gateway\nmore"), "Bad gateway");
        assert_eq!(reason_of(&"x".repeat(1000)).len(), 200);
    }
}
