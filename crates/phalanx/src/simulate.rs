//! `phalanx simulate`: run the scheduler offline on a config and a state file, with what-ifs
//! (`--node-down N`, `--fail R@N`), and print the plan it would produce — the same pure function
//! the leader runs, so what you see is what the cluster would do.

use anyhow::{anyhow, bail, Context, Result};
use phalanx_core::scheduler::{schedule, Input, Plan, Role};
use phalanx_core::Config;
use std::path::Path;

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
        input.nodes.entry(n.clone()).or_default().online = false;
    }
    for f in args.fail {
        let (r, n) = f
            .split_once('@')
            .ok_or_else(|| anyhow!("--fail {f:?}: write RESOURCE@NODE"))?;
        if config.resources.primitive_of(r).is_none() {
            bail!("--fail {f}: {r} is not a [[resource]] (or an instance such as web:0) in the config");
        }
        if !known(n) {
            bail!("--fail {f}: no such node {n}");
        }
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
