//! The `[[alert]]` sections: who is told about events, and which. An alert is a program called
//! as Pacemaker calls its alert agents (`path`, with `recipient` as `CRM_alert_recipient`), or a
//! `webhook` that receives each event's JSON; `kinds` (or Pacemaker's `select_nodes`,
//! `select_fencing`, `select_resources`, `select_attributes`) narrows what it receives, by the
//! alert kind of `crate::alerts`.

use crate::diag::Checker;
use crate::duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;
use toml::Spanned;

/// One alert recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertConfig {
    /// Names the recipient (its delivery position is kept under it): the `id` key, else
    /// `alert-N` by position.
    pub id: String,
    pub target: AlertTarget,
    /// `CRM_alert_recipient` (a file, an address: whatever the program makes of it).
    pub recipient: Option<String>,
    /// A delivery taking longer is killed (a program) or abandoned (a webhook).
    #[serde(with = "crate::duration::duration_ms")]
    pub timeout: Duration,
    /// Attempts after the first failed one, before the event is given up as an `alert_failed`.
    pub retries: u32,
    /// The alert kinds it receives (`node`, `fencing`, `resource`, `quorum`…); empty: all.
    pub kinds: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertTarget {
    Program(String),
    Webhook(String),
}

/// Every alert kind a recipient can select (see `crate::alerts::alert_kind`).
pub const ALERT_KINDS: [&str; 13] = [
    "node",
    "fencing",
    "resource",
    "attribute",
    "quorum",
    "config",
    "operator",
    "plan",
    "security",
    "balancer",
    "sessions",
    "availability",
    "drill",
];

pub const DEFAULT_ALERT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ALERT_RETRIES: u32 = 2;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlert {
    id: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    webhook: Option<Spanned<String>>,
    recipient: Option<String>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    kinds: Option<Vec<Spanned<String>>>,
    select_nodes: Option<bool>,
    select_fencing: Option<bool>,
    select_resources: Option<bool>,
    select_attributes: Option<bool>,
}

/// Validate the `[[alert]]` sections (those with errors are dropped).
pub(super) fn validate(c: &mut Checker, raw: Vec<Spanned<RawAlert>>) -> Vec<AlertConfig> {
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, section) in raw.into_iter().enumerate() {
        let span = section.span();
        let a = section.into_inner();
        let errors = c.error_count();
        let id = match &a.id {
            Some(id) if id.get_ref().is_empty() || id.get_ref().chars().any(|ch| ch.is_control() || ch == '/') => {
                c.error(
                    id.span(),
                    format!("alert id {:?} must be a non-empty name without '/'", id.get_ref()),
                );
                String::new()
            }
            Some(id) => id.get_ref().clone(),
            None => format!("alert-{}", i + 1),
        };
        if !ids.insert(id.clone()) {
            let at = a.id.as_ref().map(|s| s.span()).unwrap_or(span.clone());
            c.error(at, format!("alert id {id:?} is used twice"));
        }
        let target = match (&a.path, &a.webhook) {
            (Some(p), None) if p.get_ref().starts_with('/') => Some(AlertTarget::Program(p.get_ref().clone())),
            (Some(p), None) => {
                c.error(p.span(), format!("alert path {:?} must be absolute", p.get_ref()));
                None
            }
            (None, Some(w)) if w.get_ref().starts_with("http://") || w.get_ref().starts_with("https://") => {
                Some(AlertTarget::Webhook(w.get_ref().clone()))
            }
            (None, Some(w)) => {
                c.error(
                    w.span(),
                    format!("webhook {:?} must be an http:// or https:// URL", w.get_ref()),
                );
                None
            }
            (Some(_), Some(w)) => {
                c.error(w.span(), "an alert has a `path` or a `webhook`, not both");
                None
            }
            (None, None) => {
                c.error(
                    span.clone(),
                    "an [[alert]] needs a `path` (a program) or a `webhook` (a URL)",
                );
                None
            }
        };
        let timeout = duration::checked_or(c, "alert timeout", &a.timeout, DEFAULT_ALERT_TIMEOUT);
        if timeout.is_zero() {
            let at = a.timeout.as_ref().map(|t| t.span()).unwrap_or(span.clone());
            c.error(at, "alert timeout must be above 0");
        }
        let retries = match &a.retries {
            None => DEFAULT_ALERT_RETRIES,
            Some(r) if (0..=10).contains(r.get_ref()) => *r.get_ref() as u32,
            Some(r) => {
                c.error(r.span(), format!("alert retries {} is outside 0..10", r.get_ref()));
                DEFAULT_ALERT_RETRIES
            }
        };
        let mut kinds = BTreeSet::new();
        for k in a.kinds.iter().flatten() {
            if ALERT_KINDS.contains(&k.get_ref().as_str()) {
                kinds.insert(k.get_ref().clone());
            } else {
                c.error(
                    k.span(),
                    format!("alert kind {:?} is not one of {}", k.get_ref(), ALERT_KINDS.join(", ")),
                );
            }
        }
        for (on, kind) in [
            (a.select_nodes, "node"),
            (a.select_fencing, "fencing"),
            (a.select_resources, "resource"),
            (a.select_attributes, "attribute"),
        ] {
            if on == Some(true) {
                kinds.insert(kind.to_string());
            }
        }
        if let (Some(target), true) = (target, c.error_count() == errors) {
            out.push(AlertConfig {
                id,
                target,
                recipient: a.recipient,
                timeout,
                retries,
                kinds,
            });
        }
    }
    out
}
