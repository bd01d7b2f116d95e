//! What changed between two config texts, as an operator reads it (`phalanx config apply`
//! prints it before committing, `phalanx config diff V1 V2`): sections, the entries of each
//! array section matched by their `id` (or `name`), and each key added, removed or changed, one
//! line each, in file order. Comments and formatting are not changes.

use toml::Value;

/// One line per change, `+` added, `-` removed, `~` changed. Texts that do not parse give one
/// line saying so.
pub fn diff(old: &str, new: &str) -> Vec<String> {
    let (a, b) = match (old.parse::<toml::Table>(), new.parse::<toml::Table>()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return vec!["(a version does not parse: no structured diff)".into()],
    };
    let mut out = Vec::new();
    let keys = ordered_keys(&a, &b);
    for k in keys {
        match (a.get(&k), b.get(&k)) {
            (Some(Value::Array(x)), Some(Value::Array(y))) if is_tables(x) && is_tables(y) => {
                entries(&k, x, y, &mut out)
            }
            (x, y) => value(&format!("[{k}]"), true, x, y, &mut out),
        }
    }
    out
}

fn is_tables(v: &[Value]) -> bool {
    v.iter().all(Value::is_table)
}

/// The keys of both tables: `a`'s in order, then those only `b` has.
fn ordered_keys(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let mut keys: Vec<String> = a.keys().cloned().collect();
    keys.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    keys
}

/// What names an entry of an array section: its `id`, else its `name`, else its position.
fn entry_name(section: &str, i: usize, v: &Value) -> String {
    let label = v
        .get("id")
        .or_else(|| v.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("#{}", i + 1));
    format!("{section} {label}")
}

fn entries(section: &str, a: &[Value], b: &[Value], out: &mut Vec<String>) {
    let named = |v: &[Value]| -> Vec<(String, Value)> {
        v.iter()
            .enumerate()
            .map(|(i, x)| (entry_name(section, i, x), x.clone()))
            .collect()
    };
    let (a, b) = (named(a), named(b));
    for (name, x) in &a {
        match b.iter().find(|(n, _)| n == name) {
            None => out.push(format!("- {name}")),
            Some((_, y)) => value(name, true, Some(x), Some(y), out),
        }
    }
    for (name, _) in b.iter().filter(|(n, _)| !a.iter().any(|(m, _)| m == n)) {
        out.push(format!("+ {name}"));
    }
}

/// `top`: `path` names a section or an entry (its keys follow a colon), not a key.
fn value(path: &str, top: bool, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
    match (a, b) {
        (Some(Value::Table(x)), Some(Value::Table(y))) => {
            let sep = if top { ": " } else { "." };
            for k in ordered_keys(x, y) {
                value(&format!("{path}{sep}{k}"), false, x.get(&k), y.get(&k), out);
            }
        }
        (Some(x), Some(y)) if x == y => {}
        (Some(x), Some(y)) => out.push(format!("~ {path}: {x} -> {y}")),
        (Some(x), None) => out.push(format!("- {path} (was {x})")),
        (None, Some(y)) => out.push(format!("+ {path} = {y}")),
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_entries_and_keys() {
        let a = r#"
[cluster]
name = "c"
heartbeat_interval = "100ms"

[[resource]]
id = "web"
agent = "process"
params = { command = "serve", port = "21800" }

[[resource]]
id = "old"
agent = "exec"
"#;
        let b = r#"
# a comment is no change
[cluster]
name = "c"
heartbeat_interval = "200ms"

[[resource]]
id = "web"
agent = "process"
params = { command = "serve", port = "21802", extra = "1" }

[[resource]]
id = "new"
agent = "exec"
"#;
        assert_eq!(
            diff(a, b),
            vec![
                "~ [cluster]: heartbeat_interval: \"100ms\" -> \"200ms\"",
                "~ resource web: params.port: \"21800\" -> \"21802\"",
                "+ resource web: params.extra = \"1\"",
                "- resource old",
                "+ resource new",
            ]
        );
        assert!(diff(a, a).is_empty());
    }
}
