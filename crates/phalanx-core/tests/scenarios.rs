//! The scheduler's golden scenarios: every `tests/scenarios/**/NAME.toml` holds node names, a
//! resource config and the observed state; `NAME.out` holds the expected plan summary and
//! ordering. `PHALANX_REWRITE=1 cargo test -p phalanx-core --test scenarios` rewrites the `.out`
//! files (review the diff). Scenarios run with fencing required and a fence device for every
//! node unless they set `cluster` keys of their own. Every scenario is also scheduled twice to check determinism.

use phalanx_core::scheduler::{schedule, Input};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    nodes: Vec<String>,
    config: String,
    /// Extra `[cluster]` keys. Without them the cluster has fencing required and one fence
    /// device (`pdu`) for every node, as a production config would.
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    input: Input,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().map(|e| e == "toml").unwrap_or(false) {
            out.push(p);
        }
    }
}

/// Run one scenario: the rendered plan, or an error text.
fn run(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let sc: Scenario = toml::from_str(&text).map_err(|e| format!("scenario file: {e}"))?;
    let mut src = format!(
        "[cluster]\nname = \"scenario\"\n{}\n",
        sc.cluster.clone().unwrap_or_default()
    );
    if sc.cluster.is_none() {
        src += "[[fence_device]]\nname = \"pdu\"\nagent = \"fence_dummy\"\n";
    }
    for (i, n) in sc.nodes.iter().enumerate() {
        src += &format!(
            "[[node]]\nname = \"{n}\"\nlinks = [\"127.0.0.1:{}\"]\napi = \"127.0.0.1:{}\"\n",
            10000 + i,
            20000 + i
        );
    }
    src += &sc.config;
    let cfg = phalanx_core::config::parse(&src).map_err(|e| format!("config:\n{}", e.render("scenario")))?;
    let plan = schedule(&cfg, &sc.input);
    let again = schedule(&cfg, &sc.input);
    if plan != again {
        return Err("the scheduler is not deterministic: two runs gave different plans".into());
    }
    Ok(plan.render())
}

#[test]
fn golden_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut all = Vec::new();
    files(&dir, &mut all);
    assert!(all.len() >= 40, "only {} scenarios", all.len());
    let rewrite = std::env::var_os("PHALANX_REWRITE").is_some();
    let mut failures = Vec::new();
    for path in &all {
        let name = path.strip_prefix(&dir).unwrap().display().to_string();
        let got = match run(path) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let out = path.with_extension("out");
        if rewrite {
            std::fs::write(&out, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&out) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!("{name}:\n--- expected\n{want}--- got\n{got}")),
            Err(_) => failures.push(format!("{name}: no {} (run with PHALANX_REWRITE=1)", out.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
}
