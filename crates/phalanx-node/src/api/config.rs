//! The config routes: `GET /v1/config[?version=V]` (a committed version with its text),
//! `GET /v1/config/history` (every kept version, without texts) and `POST /v1/config` (validate a
//! text as this node would run it, show what it changes — a diff against the running version and
//! the plan the scheduler would make for it against the live state — and, unless `dry_run`,
//! commit it through Raft). A text with errors answers 400 with every diagnostic as
//! `FILE:LINE:COL: error: message` and commits nothing; a stale `expect_version` answers 409.

use super::{outcome, parse_json, ApiError, Origin};
use crate::node::Node;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use phalanx_core::config::Severity;
use phalanx_core::state::ConfigRecord;
use phalanx_core::Command;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/config", get(show).post(apply))
        .route("/v1/config/history", get(history))
}

/// A committed version as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigView {
    pub version: u64,
    pub sha256: String,
    pub author: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub time_ms: u64,
    /// None in the history (ask for the version).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
}

impl ConfigView {
    pub(crate) fn of(r: &ConfigRecord, with_text: bool) -> Self {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.time_ms);
        ConfigView {
            version: r.version,
            sha256: r.sha256.clone(),
            author: r.author.clone(),
            time: humantime::format_rfc3339_seconds(at).to_string(),
            time_ms: r.time_ms,
            // Secrets written inline are shown as "***" (an apply puts them back).
            text: with_text.then(|| phalanx_core::config::secrets::redact(&r.text)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Which {
    version: Option<u64>,
}

async fn show(State(node): State<Arc<Node>>, Query(q): Query<Which>) -> Result<Json<ConfigView>, ApiError> {
    node.with_state(|sm| {
        let c = &sm.cluster;
        let rec = match q.version {
            Some(v) => c.config_version_record(v).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no config version {v} (kept: {})",
                    c.configs
                        .iter()
                        .map(|r| r.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
            None => c
                .current_config()
                .ok_or_else(|| ApiError::NotFound("the cluster has no committed config yet".into()))?,
        };
        Ok(Json(ConfigView::of(rec, true)))
    })
}

async fn history(State(node): State<Arc<Node>>) -> Json<Vec<ConfigView>> {
    Json(node.with_state(|sm| sm.cluster.configs.iter().map(|r| ConfigView::of(r, false)).collect()))
}

/// Body of `POST /v1/config`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    pub text: String,
    /// The file name diagnostics name (default `config`).
    #[serde(default)]
    pub file: Option<String>,
    /// Commit only if the current version is still this one.
    #[serde(default)]
    pub expect_version: Option<u64>,
    /// Validate and show what it changes; commit nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Who applies it (the CLI sends `user@host`).
    #[serde(default)]
    pub author: Option<String>,
    /// Where the text's redacted secrets ("***") take their values from: this kept version
    /// (a rollback to it), else the current one.
    #[serde(default)]
    pub secrets_from: Option<u64>,
}

/// The answer of `POST /v1/config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// The version the change was compared with (0: none committed yet).
    pub current_version: u64,
    /// The version it was committed as (None: a dry run, or no change).
    pub version: Option<u64>,
    pub committed: bool,
    /// What it changes, one line each (`phalanx_core::config::diff`).
    pub diff: Vec<String>,
    /// The plan the scheduler would make for it against the live state, one line per action.
    pub plan: Vec<String>,
    /// Warnings (`FILE:LINE:COL: warning: …`).
    pub warnings: Vec<String>,
}

async fn apply(
    State(node): State<Arc<Node>>,
    Extension(origin): Extension<Origin>,
    body: Bytes,
) -> Result<Json<Applied>, ApiError> {
    let mut req: ApplyConfig = parse_json(&body)?;
    let file = req.file.clone().unwrap_or_else(|| "config".into());
    // A text shown by `config show` has its secrets as "***": they keep the committed values.
    let committed = node.with_state(|sm| {
        let c = &sm.cluster;
        match req.secrets_from {
            Some(v) => c.config_version_record(v).map(|r| r.text.clone()),
            None => c.current_config().map(|r| r.text.clone()),
        }
    });
    req.text = phalanx_core::config::secrets::unredact(&req.text, committed.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadInput(format!("{file}: {e}")))?;
    let mut checked = phalanx_core::config::check(&req.text);
    if let Some(runner) = &node.runner {
        runner.check_agents(&mut checked, &req.text).await;
    }
    let render = |sev: Severity| -> Vec<String> {
        checked
            .diagnostics
            .iter()
            .filter(|d| d.severity == sev)
            .map(|d| d.render(&file))
            .collect()
    };
    let errors = render(Severity::Error);
    let warnings = render(Severity::Warning);
    let config = match checked.config {
        Some(c) if errors.is_empty() => c,
        _ => return Err(ApiError::BadInput(errors.join("\n"))),
    };
    let leader = node.leader_name();
    let (current, old_text, mut plan, running) = node.with_state(|sm| {
        let c = &sm.cluster;
        let now = crate::mesh::unix_ms();
        let input = c.scheduler_input(now, &config.cluster, leader.as_deref());
        let plan = phalanx_core::scheduler::schedule(&config, &input);
        let running: Vec<(String, String)> = c
            .resources
            .iter()
            .flat_map(|(id, r)| r.running.keys().map(move |n| (id.clone(), n.clone())))
            .collect();
        (
            c.current_config().map_or(0, |r| r.version),
            c.current_config().map(|r| r.text.clone()),
            plan.summary,
            running,
        )
    });
    // What the switch itself does to what runs (reload or restart in place, stop of a dropped
    // resource), before the scheduler's moves.
    let old_config = old_text.as_deref().and_then(|t| phalanx_core::config::parse(t).ok());
    if let Some(old) = &old_config {
        let mut effects = crate::executor::reconfigure::preview(node.runner.as_ref(), old, &config, &running).await;
        effects.append(&mut plan);
        plan = effects;
    }
    if let Some(expected) = req.expect_version.filter(|e| *e != current) {
        return Err(ApiError::Refused(
            phalanx_core::RejectReason::StaleConfig { expected, current }.to_string(),
        ));
    }
    let diff = match &old_text {
        Some(old) => {
            let mut d = phalanx_core::config::diff(
                &phalanx_core::config::secrets::redact(old),
                &phalanx_core::config::secrets::redact(&req.text),
            );
            if d.is_empty() && old != &req.text {
                d.push("~ a secret changed (shown as \"***\")".into());
            }
            d
        }
        None => vec!["(no committed version yet: all of it)".into()],
    };
    let mut answer = Applied {
        current_version: current,
        version: None,
        committed: false,
        diff,
        plan,
        warnings,
    };
    if req.dry_run {
        return Ok(Json(answer));
    }
    let record = ConfigRecord {
        version: 0,
        sha256: crate::config_watch::sha256(&req.text),
        text: req.text,
        author: req.author.unwrap_or_else(|| "unidentified API client".into()),
        time_ms: crate::mesh::unix_ms(),
    };
    let o = outcome(
        origin
            .write(
                &node,
                Command::ApplyConfig {
                    record,
                    expect_version: Some(req.expect_version.unwrap_or(current)),
                },
            )
            .await?,
    )?;
    if o.0 == phalanx_core::Outcome::Ok {
        answer.committed = true;
        // Accepted only as the successor of the version it expected.
        answer.version = Some(req.expect_version.unwrap_or(current) + 1);
        tracing::warn!(version = ?answer.version, "config applied");
    }
    Ok(Json(answer))
}
