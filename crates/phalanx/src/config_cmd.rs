//! `phalanx config apply|show|history|diff|rollback`: the cluster's committed config through the
//! API (`/v1/config`). `apply` always asks the cluster first what the text changes (a dry run:
//! the diff against the running version and the plan the scheduler would make), prints it, and
//! commits only what it showed: the commit expects the version the dry run compared with, so a
//! change made meanwhile by someone else is refused (409), never overwritten unseen.

use crate::client::Client;
use anyhow::{bail, Context, Result};
use phalanx_node::api::config::{Applied, ApplyConfig, ConfigView};
use std::io::IsTerminal;
use std::path::Path;

/// `user@host` of whoever runs the CLI (what the cluster records as a version's author).
pub fn operator() -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}

/// What `apply` and `rollback` print and return.
pub struct Outcome {
    pub json: serde_json::Value,
    pub human: String,
    pub code: i32,
}

fn render_changes(a: &Applied) -> String {
    let mut out = String::new();
    if a.diff.is_empty() {
        out += &format!("No change against the running version {}.\n", a.current_version);
    } else {
        out += &format!("Changes against the running version {}:\n", a.current_version);
        for l in &a.diff {
            out += &format!("  {l}\n");
        }
    }
    if a.plan.is_empty() {
        out += "Plan: nothing to do (no resource moves, starts or stops).\n";
    } else {
        out += "Plan the scheduler would make for it now:\n";
        for l in &a.plan {
            out += &format!("  {l}\n");
        }
    }
    for w in &a.warnings {
        out += &format!("{w}\n");
    }
    out
}

/// Ask `question` on the terminal (no terminal: refused, `--yes` is needed).
fn confirm(question: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("not applied: no terminal to confirm on (use --yes to apply without asking)");
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// `config apply` of `text` (named `file` in diagnostics).
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    client: &Client,
    api: &str,
    file: &str,
    text: String,
    expect_version: Option<u64>,
    dry_run: bool,
    yes: bool,
    secrets_from: Option<u64>,
) -> Result<Outcome> {
    let mut req = ApplyConfig {
        text,
        file: Some(file.to_string()),
        expect_version,
        dry_run: true,
        author: Some(operator()),
        secrets_from,
    };
    let preview: Applied = client
        .post_retrying(api, "/v1/config", &req, crate::client::RETRY_WRITES)
        .await?;
    let mut human = render_changes(&preview);
    if dry_run {
        human += "Dry run: nothing applied.";
        return Ok(Outcome {
            json: serde_json::to_value(&preview)?,
            human,
            code: 0,
        });
    }
    if preview.diff.is_empty() {
        human += "Nothing to apply.";
        return Ok(Outcome {
            json: serde_json::to_value(&preview)?,
            human,
            code: 0,
        });
    }
    let next = preview.current_version + 1;
    if !yes {
        print!("{human}");
        human.clear();
        if !confirm(&format!("Apply it as version {next}?"))? {
            return Ok(Outcome {
                json: serde_json::to_value(&preview)?,
                human: "Not applied.".into(),
                code: 1,
            });
        }
    }
    req.dry_run = false;
    // Exactly what was shown: if someone applied meanwhile, this is refused.
    req.expect_version = Some(preview.current_version);
    let done: Applied = client
        .post_retrying(api, "/v1/config", &req, crate::client::RETRY_WRITES)
        .await?;
    human += &match done.version {
        Some(v) if done.committed => format!("Applied as version {v}: every node switches to it now."),
        _ => "Nothing applied (the same text is already running).".to_string(),
    };
    Ok(Outcome {
        json: serde_json::to_value(&done)?,
        human,
        code: 0,
    })
}

/// `config apply FILE`: read it, then [`apply`].
pub async fn apply_file(
    client: &Client,
    api: &str,
    path: &Path,
    expect_version: Option<u64>,
    dry_run: bool,
    yes: bool,
) -> Result<Outcome> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    apply(
        client,
        api,
        &path.display().to_string(),
        text,
        expect_version,
        dry_run,
        yes,
        None,
    )
    .await
}

/// One committed version, with its text.
pub async fn show(client: &Client, api: &str, version: Option<u64>) -> Result<ConfigView> {
    let path = match version {
        Some(v) => format!("/v1/config?version={v}"),
        None => "/v1/config".to_string(),
    };
    client.get(api, &path).await
}

/// Every kept version, oldest first.
pub async fn history(client: &Client, api: &str) -> Result<Vec<ConfigView>> {
    client.get(api, "/v1/config/history").await
}

pub fn render_history(h: &[ConfigView]) -> String {
    let mut out = String::from("VERSION  TIME                  AUTHOR                          SHA256\n");
    for v in h {
        out += &format!(
            "{:<8} {:<21} {:<31} {}\n",
            v.version,
            v.time,
            v.author,
            &v.sha256[..v.sha256.len().min(16)]
        );
    }
    out.trim_end().to_string()
}

/// `config diff V1 V2`: what V2 changes against V1.
pub async fn diff(client: &Client, api: &str, v1: u64, v2: u64) -> Result<Vec<String>> {
    let a = show(client, api, Some(v1)).await?;
    let b = show(client, api, Some(v2)).await?;
    Ok(phalanx_core::config::diff(
        a.text.as_deref().unwrap_or_default(),
        b.text.as_deref().unwrap_or_default(),
    ))
}

/// `config rollback V`: apply version V's text again, as a new version.
pub async fn rollback(client: &Client, api: &str, version: u64, dry_run: bool, yes: bool) -> Result<Outcome> {
    let old = show(client, api, Some(version)).await?;
    let text = old.text.context("the API returned no text")?;
    // Its text is shown redacted: its secrets are that version's.
    apply(
        client,
        api,
        &format!("version {version}"),
        text,
        None,
        dry_run,
        yes,
        Some(version),
    )
    .await
}
