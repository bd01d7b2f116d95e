//! Whether an operator's move can be honoured: [`move_refusal`] asks the scheduler itself
//! (the move added to the input, every other move of the same unit dropped, as the state will
//! record it) and refuses when the target's score stays below zero, quoting the contributions
//! that make it so (a location constraint at -INFINITY, standby, a ban, a fatal failure, a
//! lost node...). No second set of rules to keep in step with the scheduler's.

use super::{schedule, Input, OperatorConstraint};
use crate::config::Config;

/// Why `rsc` cannot be moved to `node` (None: the scheduler would place its unit there). An
/// unknown resource gives None: the caller checks that it exists.
pub fn move_refusal(cfg: &Config, input: &Input, rsc: &str, node: &str) -> Option<String> {
    let ids = cfg.resources.unit_ids(rsc);
    let unit = ids.first()?;
    let who = if unit == rsc {
        rsc.to_string()
    } else {
        format!("{rsc} (placed with {unit})")
    };
    if !super::context::members(cfg, input).contains(&node) {
        return Some(format!(
            "{who} cannot run on {node}: {node} is not a member of the cluster"
        ));
    }
    let mut what_if = input.clone();
    what_if.operator.retain(|o| !(o.prefer && ids.contains(&o.rsc)));
    what_if.operator.push(OperatorConstraint {
        rsc: rsc.to_string(),
        node: node.to_string(),
        prefer: true,
        expires_ms: None,
    });
    let plan = schedule(cfg, &what_if);
    let (score, parts) = plan.explain.get(unit)?.scores.get(node)?;
    if *score >= 0 {
        return None;
    }
    let against: Vec<&str> = parts
        .iter()
        .filter(|p| p.rsplit_once(": ").is_some_and(|(_, s)| s.starts_with('-')))
        .map(String::as_str)
        .collect();
    Some(format!("{who} cannot run on {node}: {}", against.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::NodeState;

    fn config(extra: &str) -> Config {
        let mut src = String::from("[cluster]\nname = \"t\"\nfencing = \"off\"\n");
        for i in 1..=3 {
            src += &format!(
                "[[node]]\nname = \"n{i}\"\nlinks = [\"127.0.0.1:{i}\"]\napi = \"127.0.0.1:{}\"\n",
                100 + i
            );
        }
        src += r#"
[[resource]]
id = "ip"
agent = "ocf:heartbeat:Dummy"

[[resource]]
id = "web"
agent = "ocf:heartbeat:Dummy"

[[group]]
id = "svc"
members = ["ip", "web"]

[[resource]]
id = "db"
agent = "ocf:heartbeat:Dummy"

[[constraint]]
location = "db"
node = "n2"
score = "-INFINITY"
"#;
        src += extra;
        crate::config::parse(&src).unwrap()
    }

    #[test]
    fn a_move_the_scheduler_cannot_honour_is_refused_with_its_reasons() {
        let cfg = config("");
        let mut input = Input::default();
        assert_eq!(move_refusal(&cfg, &input, "db", "n3"), None);
        assert_eq!(move_refusal(&cfg, &input, "web", "n2"), None);
        let r = move_refusal(&cfg, &input, "db", "n2").unwrap();
        assert_eq!(r, "db cannot run on n2: location db on n2: -INFINITY");
        let r = move_refusal(&cfg, &input, "db", "n9").unwrap();
        assert!(r.ends_with("n9 is not a member of the cluster"), "{r}");

        input.nodes.insert(
            "n3".into(),
            NodeState {
                standby: true,
                ..NodeState::default()
            },
        );
        input.nodes.insert(
            "n1".into(),
            NodeState {
                online: false,
                ..NodeState::default()
            },
        );
        let r = move_refusal(&cfg, &input, "web", "n3").unwrap();
        assert_eq!(r, "web (placed with svc) cannot run on n3: n3 in standby: -INFINITY");
        let r = move_refusal(&cfg, &input, "svc", "n1").unwrap();
        assert!(r.contains("n1 lost"), "{r}");
        // A ban of the operator's, on a member, keeps the whole group off.
        input.nodes.clear();
        input.operator.push(OperatorConstraint {
            rsc: "ip".into(),
            node: "n3".into(),
            prefer: false,
            expires_ms: None,
        });
        let r = move_refusal(&cfg, &input, "svc", "n3").unwrap();
        assert!(r.contains("banned from n3 by operator"), "{r}");
        // A hard error there (banned until cleanup), a fatal one (nowhere).
        input.operator.clear();
        let st = input.resources.entry("web".into()).or_default();
        st.banned.insert("n2".into());
        assert!(move_refusal(&cfg, &input, "svc", "n2").is_some());
        input.resources.entry("db".into()).or_default().fatal = true;
        assert!(move_refusal(&cfg, &input, "db", "n1").is_some());
    }

    #[test]
    fn a_member_added_to_the_state_can_host() {
        let cfg = config("");
        let mut input = Input::default();
        assert!(move_refusal(&cfg, &input, "db", "n4").is_some(), "not a member yet");
        input.nodes.insert("n4".into(), NodeState::default());
        assert_eq!(move_refusal(&cfg, &input, "db", "n4"), None);
    }
}
