//! `phalanx simulate`: run the scheduler offline on a config and a state file, with what-ifs
//! (`--node-down N`, `--fail R@N`), and print the plan it would produce — the same pure function
//! the leader runs, so what you see is what the cluster would do. With `--live` it takes the
//! replicated state from the running cluster (like `crm_simulate -L`), applies the what-ifs
//! through the real state machine, and runs the leader's own controller on it.

use anyhow::{anyhow, bail, Context, Result};
use phalanx_core::config::Fencing;
use phalanx_core::controller::{self, ControlAction, Controller, Observed};
use phalanx_core::scheduler::{schedule, Input, Plan, Role};
use phalanx_core::state::CallOutcome;
use phalanx_core::{ClusterState, Command, Config, Liveness, Timings};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

pub struct SimulateArgs<'a> {
    pub state: Option<&'a Path>,
    pub node_down: &'a [String],
    pub fail: &'a [String],
}

/// Read a state file: TOML (the scenario `[input]` form, top level) or JSON.
pub fn load_state(path: &Path) -> Result<Input> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    if path.extension().map(|e| e == "json").unwrap_or(false) {
        serde_json::from_str(&text).map_err(|e| anyhow!("{name}:{}:{}: error: {e}", e.line(), e.column()))
    } else {
        toml::from_str(&text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| phalanx_core::config::line_col(&text, s.start))
                .unwrap_or((1, 1));
            anyhow!("{name}:{line}:{col}: error: {}", e.message().trim())
        })
    }
}

/// A `--fail RESOURCE@NODE` what-if, checked against the config and the nodes `known`.
fn parse_fail<'a>(config: &Config, f: &'a str, known: impl Fn(&str) -> bool) -> Result<(&'a str, &'a str)> {
    let (r, n) = f
        .split_once('@')
        .ok_or_else(|| anyhow!("--fail {f:?}: write RESOURCE@NODE"))?;
    if config.resources.primitive_of(r).is_none() {
        bail!("--fail {f}: {r} is not a [[resource]] (or an instance such as web:0) in the config");
    }
    if !known(n) {
        bail!("--fail {f}: no such node {n}");
    }
    Ok((r, n))
}

pub fn run(config: &Config, args: &SimulateArgs) -> Result<(Input, Plan)> {
    let mut input = match args.state {
        Some(p) => load_state(p)?,
        None => Input::default(),
    };
    let known = |n: &str| config.nodes.iter().any(|x| x.name == n);
    for n in args.node_down {
        if !known(n) {
            bail!("--node-down {n}: no such node in the config");
        }
        // Lost just now, as the leader records it: unclean (what it held may still run there)
        // until a fence is recorded with `fencing = "required"`, or for the lease hold with
        // "watchdog" — so the plan starts with `Fence N`, as the live cluster's does.
        // (`ClusterState::scheduler_input` applies the same rule to recorded liveness.)
        let node = input.nodes.entry(n.clone()).or_default();
        node.online = false;
        node.online_since_ms = input.now_ms;
        node.unclean = config.cluster.fencing != Fencing::Off;
    }
    for f in args.fail {
        let (r, n) = parse_fail(config, f, known)?;
        let st = input.resources.entry(r.to_string()).or_default();
        st.running.insert(n.to_string(), Role::Failed);
        st.failures.entry(n.to_string()).or_default().push(input.now_ms);
    }
    let plan = schedule(config, &input);
    Ok((input, plan))
}

/// Human output: the plan, and with `explain` every unit's scores.
pub fn render(plan: &Plan, explain: bool) -> String {
    let mut o = String::from("Plan:\n");
    for l in plan.render().lines() {
        o += &format!("  {l}\n");
    }
    if explain {
        o += "\nPlacement:\n";
        for (unit, e) in &plan.explain {
            o += &format!("  {unit}: {}\n", e.verdict);
            for (node, (score, parts)) in &e.scores {
                o += &format!(
                    "    {node:<8} {:>10}  {}\n",
                    phalanx_core::resources::score_str(*score),
                    parts.join("; ")
                );
            }
            o += "    (any other node: 0, no constraint)\n";
        }
    }
    o
}

/// What `simulate --live` found: the controller's decision and the scheduler's full plan.
pub struct Live {
    /// The controller holds a new plan back for starts still in flight (their plan id).
    pub waits_for: Option<u64>,
    /// The plan matches what the current plan still has to do: nothing new is committed.
    pub unchanged: bool,
    pub plan: Plan,
}

/// `simulate --live`: the what-ifs applied to the live `state` as the leader would record them
/// (`--node-down`: lost now; `--fail`: a failed monitor now), then one round of the leader's
/// controller (`leader` decides; if it is itself down, the first other online node).
pub fn run_live(config: &Config, mut state: ClusterState, leader: &str, args: &SimulateArgs) -> Result<Live> {
    let now_ms = phalanx_node::mesh::unix_ms();
    for n in args.node_down {
        if !state.nodes.contains_key(n) {
            bail!("--node-down {n}: no such node in the cluster");
        }
        state.apply(&Command::SetLiveness {
            name: n.clone(),
            liveness: Liveness::Offline,
            at_ms: now_ms,
        });
    }
    for f in args.fail {
        let (r, n) = parse_fail(config, f, |n| state.nodes.contains_key(n))?;
        state.apply(&Command::MonitorFailed {
            rsc: r.to_string(),
            node: n.to_string(),
            outcome: CallOutcome::Soft,
            at_ms: now_ms,
            reason: Some("simulated monitor failure".into()),
        });
    }
    let online: BTreeSet<String> = state
        .nodes
        .iter()
        .filter(|(_, r)| r.liveness == Liveness::Online)
        .map(|(n, _)| n.clone())
        .collect();
    let me = if online.contains(leader) {
        leader.to_string()
    } else {
        online
            .iter()
            .next()
            .cloned()
            .ok_or_else(|| anyhow!("no node would be online to lead"))?
    };
    let ids: BTreeSet<u64> = state.nodes.values().map(|r| r.id).collect();
    // Every node online has lost every node offline: the losses are confirmed.
    let offline: BTreeSet<String> = state.nodes.keys().filter(|n| !online.contains(*n)).cloned().collect();
    let lost = online.iter().map(|n| (n.clone(), Some(offline.clone()))).collect();
    let observed = Observed {
        me,
        now_ms,
        // Long settled: the leader has heard everyone it will hear.
        uptime: Duration::from_secs(3600),
        reachable: online,
        lost,
        witness_backs_me: false,
        raft_members: ids.clone(),
        voters: ids,
        last_log: 0,
        matched: Default::default(),
    };
    let actions = Controller::default().reconcile(&observed, &state, config, &Timings::from(&config.cluster));
    let waits_for = actions.iter().find_map(|a| match a {
        ControlAction::WaitForInFlight { plan_id } => Some(*plan_id),
        _ => None,
    });
    let unchanged = !actions.iter().any(|a| {
        matches!(
            a,
            ControlAction::Write(
                Command::SetPlan { .. } | Command::SetPlanAfter { .. } | Command::SetPlanNotify { .. }
            )
        )
    }) && waits_for.is_none();
    Ok(Live {
        waits_for,
        unchanged,
        plan: controller::schedule(&observed, &state, config),
    })
}
