//! What an alert recipient is told about an event: its alert kind (Pacemaker's `node`,
//! `fencing`, `resource`, `attribute`, and phalanx's own `quorum`, `config`, `operator`, `plan`,
//! `security`), whether a recipient selected it, and the environment an alert program is called
//! with — Pacemaker's `CRM_alert_*` variables, so that Pacemaker's sample agents (and the
//! operators' own) run unchanged — plus `PHALANX_event_*` with the event itself. Pure: the
//! delivery (the leader's queues, timeouts, retries) is the node's `alerts`.

use crate::config::AlertConfig;
use crate::events::{Event, EventKind};

/// The alert kind of an event kind (None: never alerted: an undeliverable alert, or a fence
/// request, which Pacemaker does not alert either: its result is).
pub fn alert_kind(k: EventKind) -> Option<&'static str> {
    Some(match k {
        EventKind::NodeAdded
        | EventKind::NodeRemoved
        | EventKind::NodeJoined
        | EventKind::NodeLost
        | EventKind::NodeLeaving
        | EventKind::NodeStopped => "node",
        EventKind::FenceSucceeded
        | EventKind::FenceFailed
        | EventKind::FenceDeviceFailed
        | EventKind::FenceDeviceRecovered => "fencing",
        EventKind::ResourceStarted
        | EventKind::ResourceStopped
        | EventKind::ResourcePromoted
        | EventKind::ResourceDemoted
        | EventKind::ResourceReloaded
        | EventKind::ResourceFailed
        | EventKind::MonitorFailed
        | EventKind::NotifyFailed => "resource",
        EventKind::QuorumLost | EventKind::QuorumRegained => "quorum",
        EventKind::ConfigApplied => "config",
        EventKind::OperatorCommand => "operator",
        EventKind::PlanCommitted => "plan",
        EventKind::AuthFailed => "security",
        EventKind::BackendChanged => "balancer",
        EventKind::SessionsLeaderChanged | EventKind::SessionsEvicted => "sessions",
        EventKind::SloBurn | EventKind::SloBurnEnded => "availability",
        EventKind::DrillStarted | EventKind::DrillRun | EventKind::DrillEnded => "drill",
        EventKind::FenceRequested | EventKind::AlertFailed => return None,
    })
}

/// Whether `alert` is to receive `e`.
pub fn selects(alert: &AlertConfig, e: &Event) -> bool {
    match alert_kind(e.kind) {
        Some(k) => alert.kinds.is_empty() || alert.kinds.contains(k),
        None => false,
    }
}

/// What the environment says beyond the event: the recipient, the event node's numeric id, and
/// the version of phalanx.
pub struct Context<'a> {
    pub recipient: Option<&'a str>,
    pub node_id: Option<u64>,
    pub version: &'a str,
}

/// The environment of an alert program for `e`, as Pacemaker sets it (every variable present,
/// empty when it does not apply, as the sample agents expect), then `PHALANX_event_*`.
pub fn crm_env(e: &Event, ctx: &Context, json: &str) -> Vec<(String, String)> {
    let kind = alert_kind(e.kind).unwrap_or("phalanx");
    let ok = matches!(
        e.kind,
        EventKind::FenceSucceeded
            | EventKind::ResourceStarted
            | EventKind::ResourceStopped
            | EventKind::ResourcePromoted
            | EventKind::ResourceDemoted
            | EventKind::ResourceReloaded
    );
    let (task, desc, rc) = match kind {
        "node" => (
            String::new(),
            match e.kind {
                EventKind::NodeJoined => "member",
                EventKind::NodeAdded => "added",
                EventKind::NodeRemoved => "removed",
                EventKind::NodeLeaving => "leaving",
                _ => "lost",
            }
            .to_string(),
            String::new(),
        ),
        "fencing" => {
            let target = &e.node;
            let by = &e.reporter;
            let desc = match e.kind {
                EventKind::FenceSucceeded => format!("Operation reboot of {target} by {by} for phalanx@{by}: OK"),
                EventKind::FenceFailed => format!(
                    "Operation reboot of {target} by {by} for phalanx@{by}: Error ({})",
                    e.exit_reason.as_deref().unwrap_or("failed")
                ),
                _ => e.summary.clone(),
            };
            ("reboot".to_string(), desc, if ok { "0" } else { "1" }.to_string())
        }
        "resource" => {
            let rc = e.rc.unwrap_or(if ok { 0 } else { 1 });
            let desc = if ok {
                "OK".to_string()
            } else {
                match e.rc {
                    Some(7) => "not running".to_string(),
                    _ => e.exit_reason.clone().unwrap_or_else(|| "error".into()),
                }
            };
            (e.task.clone().unwrap_or_default(), desc, rc.to_string())
        }
        _ => (e.task.clone().unwrap_or_default(), e.summary.clone(), String::new()),
    };
    let secs = e.time_ms / 1000;
    let usec = (e.time_ms % 1000) * 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let vars: Vec<(&str, String)> = vec![
        ("CRM_alert_kind", kind.to_string()),
        ("CRM_alert_version", ctx.version.to_string()),
        ("CRM_alert_recipient", ctx.recipient.unwrap_or("").to_string()),
        ("CRM_alert_node_sequence", e.seq.to_string()),
        // Pacemaker's default timestamp format, %H:%M:%S.%06N (UTC here).
        ("CRM_alert_timestamp", format!("{h:02}:{m:02}:{s:02}.{usec:06}")),
        ("CRM_alert_timestamp_epoch", secs.to_string()),
        ("CRM_alert_timestamp_usec", usec.to_string()),
        ("CRM_alert_node", e.node.clone()),
        (
            "CRM_alert_nodeid",
            ctx.node_id.map(|i| i.to_string()).unwrap_or_default(),
        ),
        ("CRM_alert_desc", desc),
        ("CRM_alert_task", task),
        ("CRM_alert_rc", rc),
        ("CRM_alert_rsc", e.resource.clone().unwrap_or_default()),
        ("CRM_alert_interval", "0".to_string()),
        (
            "CRM_alert_target_rc",
            if kind == "resource" { "0" } else { "" }.to_string(),
        ),
        // Pacemaker's operation status: 0 done, 4 error.
        (
            "CRM_alert_status",
            if kind == "resource" {
                if ok {
                    "0"
                } else {
                    "4"
                }
            } else {
                ""
            }
            .to_string(),
        ),
        (
            "CRM_alert_exec_time",
            e.exec_ms.map(|m| m.to_string()).unwrap_or_default(),
        ),
        ("CRM_alert_attribute_name", String::new()),
        ("CRM_alert_attribute_value", String::new()),
        ("PHALANX_event_seq", e.seq.to_string()),
        ("PHALANX_event_kind", e.kind.as_str().to_string()),
        ("PHALANX_event_summary", e.summary.clone()),
        ("PHALANX_event_json", json.to_string()),
    ];
    vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlertTarget;
    use std::collections::BTreeMap;

    fn event(kind: EventKind) -> Event {
        Event {
            seq: 42,
            reporter: "n2".into(),
            ..Event::new(kind, "n1", 1_796_119_200_123, "s")
        }
    }

    fn env(e: &Event) -> BTreeMap<String, String> {
        let ctx = Context {
            recipient: Some("/tmp/x"),
            node_id: Some(1),
            version: "0.1.0",
        };
        crm_env(e, &ctx, "{}").into_iter().collect()
    }

    #[test]
    fn a_node_loss_a_fence_and_a_start_read_as_pacemaker_writes_them() {
        let lost = env(&event(EventKind::NodeLost));
        assert_eq!(lost["CRM_alert_kind"], "node");
        assert_eq!(lost["CRM_alert_desc"], "lost");
        assert_eq!(lost["CRM_alert_node_sequence"], "42");
        assert_eq!(lost["CRM_alert_timestamp"], "10:00:00.123000");
        assert_eq!(lost["CRM_alert_timestamp_epoch"], "1796119200");
        let fenced = env(&event(EventKind::FenceSucceeded));
        assert_eq!(fenced["CRM_alert_kind"], "fencing");
        assert_eq!(
            fenced["CRM_alert_desc"],
            "Operation reboot of n1 by n2 for phalanx@n2: OK"
        );
        assert_eq!(fenced["CRM_alert_rc"], "0");
        let mut started = event(EventKind::ResourceStarted);
        started.resource = Some("web".into());
        started.task = Some("start".into());
        started.rc = Some(0);
        started.exec_ms = Some(12);
        let st = env(&started);
        assert_eq!(
            (
                st["CRM_alert_kind"].as_str(),
                st["CRM_alert_rsc"].as_str(),
                st["CRM_alert_task"].as_str()
            ),
            ("resource", "web", "start")
        );
        assert_eq!(
            (st["CRM_alert_desc"].as_str(), st["CRM_alert_rc"].as_str()),
            ("OK", "0")
        );
        assert_eq!(
            (st["CRM_alert_interval"].as_str(), st["CRM_alert_target_rc"].as_str()),
            ("0", "0")
        );
        assert_eq!(st["CRM_alert_exec_time"], "12");
    }

    #[test]
    fn recipients_select_by_alert_kind() {
        let mut a = AlertConfig {
            id: "a".into(),
            target: AlertTarget::Webhook("http://x".into()),
            recipient: None,
            timeout: std::time::Duration::from_secs(1),
            retries: 0,
            kinds: Default::default(),
        };
        assert!(selects(&a, &event(EventKind::PlanCommitted)));
        assert!(!selects(&a, &event(EventKind::AlertFailed)), "never: it would loop");
        a.kinds.insert("fencing".into());
        assert!(selects(&a, &event(EventKind::FenceFailed)));
        assert!(!selects(&a, &event(EventKind::NodeLost)));
    }
}
