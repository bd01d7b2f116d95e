//! Secret values in a config's text (issue 17: secrets stay secret): a string whose key names a
//! secret (`passwd`, `password`, `secret`, `token`, `community`, `api_key`, `private_key`,
//! `credential`…, anywhere: fence device and resource params, alert settings) is shown as
//! `"***"` wherever the config is shown (`config show`, its history, the diff of an apply,
//! backups); paths (`key_file`, `secret_files` and its entries, any `*_file`) are not secrets.
//! A config applied with `"***"` where the committed one has a value keeps that value
//! ([`unredact`]), so `config show > f; edit f; config apply f` never writes `***` over a
//! password. Secrets belong in `secret_files` (read at each use, never replicated): this is for
//! what is written inline anyway.

use toml_edit::{DocumentMut, Item, Table, Value};

/// What a secret is shown as.
pub const REDACTED: &str = "***";

/// Whether a key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    const WORDS: [&str; 9] = [
        "pass",
        "secret",
        "token",
        "community",
        "credential",
        "api_key",
        "apikey",
        "private_key",
        "auth",
    ];
    let k = key.to_ascii_lowercase();
    !k.ends_with("_file") && !k.ends_with("_files") && WORDS.iter().any(|w| k.contains(w))
}

/// Call `f` with the path (keys, and `[id]` or `[#index]` for array elements) of every string
/// under a secret key.
fn visit_table(t: &mut Table, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &mut Value)) {
    for (k, item) in t.iter_mut() {
        path.push(k.get().to_string());
        visit_item(k.get(), item, path, f);
        path.pop();
    }
}

fn visit_item(key: &str, item: &mut Item, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &mut Value)) {
    if key.ends_with("_files") || key.ends_with("_file") {
        return;
    }
    match item {
        Item::Table(t) => visit_table(t, path, f),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter_mut().enumerate() {
                path.push(element(t.get("id").or_else(|| t.get("name")).and_then(Item::as_str), i));
                visit_table(t, path, f);
                path.pop();
            }
        }
        Item::Value(v) => visit_value(key, v, path, f),
        Item::None => {}
    }
}

fn visit_value(key: &str, v: &mut Value, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &mut Value)) {
    match v {
        Value::String(_) if is_secret_key(key) => f(path, v),
        Value::InlineTable(t) => {
            for (k, v) in t.iter_mut() {
                if k.get().ends_with("_files") || k.get().ends_with("_file") {
                    continue;
                }
                path.push(k.get().to_string());
                visit_value(k.get(), v, path, f);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                let id = v
                    .as_inline_table()
                    .and_then(|t| t.get("id").or_else(|| t.get("name")))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                path.push(element(id.as_deref(), i));
                visit_value(key, v, path, f);
                path.pop();
            }
        }
        _ => {}
    }
}

/// An array element's place in a path: by its `id` or `name` (so that inserting an element
/// before it does not move it), else by index.
fn element(id: Option<&str>, i: usize) -> String {
    match id {
        Some(id) => format!("[{id}]"),
        None => format!("[#{i}]"),
    }
}

/// `text` with every secret shown as `"***"` (a text that does not parse is returned as it is:
/// only committed, valid texts are shown).
pub fn redact(text: &str) -> String {
    let Ok(mut doc) = text.parse::<DocumentMut>() else {
        return text.to_string();
    };
    let mut any = false;
    visit_table(doc.as_table_mut(), &mut Vec::new(), &mut |_, v| {
        let decor = v.decor().clone();
        *v = Value::from(REDACTED);
        *v.decor_mut() = decor;
        any = true;
    });
    if any {
        doc.to_string()
    } else {
        text.to_string()
    }
}

/// `new` with every `"***"` under a secret key replaced by the value at the same place in
/// `committed`; an error naming the place when `committed` has none (the secret must be
/// written out).
pub fn unredact(new: &str, committed: &str) -> Result<String, String> {
    if !new.contains(REDACTED) {
        return Ok(new.to_string());
    }
    let Ok(mut doc) = new.parse::<DocumentMut>() else {
        return Ok(new.to_string());
    };
    let mut known: Vec<(Vec<String>, String)> = Vec::new();
    if let Ok(mut old) = committed.parse::<DocumentMut>() {
        visit_table(old.as_table_mut(), &mut Vec::new(), &mut |p, v| {
            if let Some(s) = v.as_str() {
                known.push((p.to_vec(), s.to_string()));
            }
        });
    }
    let mut missing = Vec::new();
    let mut any = false;
    visit_table(doc.as_table_mut(), &mut Vec::new(), &mut |p, v| {
        if v.as_str() != Some(REDACTED) {
            return;
        }
        match known.iter().find(|(k, _)| k == p) {
            Some((_, s)) => {
                let decor = v.decor().clone();
                *v = Value::from(s.as_str());
                *v.decor_mut() = decor;
                any = true;
            }
            None => missing.push(p.join(".").replace(".[", "[")),
        }
    });
    if !missing.is_empty() {
        return Err(format!(
            "{} is \"***\" (a redacted secret) but the committed config has no value there: write the secret, or \
             keep it in secret_files",
            missing.join(", ")
        ));
    }
    Ok(if any { doc.to_string() } else { new.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[cluster]
name = "c"
key_file = "phalanx.key"

[[fence.device]]
name = "pdu"
agent = "fence_apc"
params = { ip = "10.0.0.5", login = "admin", passwd = "s3cret" }   # the PDU
secret_files = { password = "/etc/phalanx/pdu.pass" }

[[resource]]
id = "db"
agent = "ocf:heartbeat:mysql"
params = { replication_user = "repl", replication_passwd = "r3pl", binary = "/usr/bin/mysqld" }

[[alert]]
name = "hook"
webhook = "https://example.com/hook"
headers = { Authorization = "Bearer xyz" }
"#;

    #[test]
    fn secrets_are_shown_as_stars_and_nothing_else_changes() {
        let r = redact(TEXT);
        for secret in ["s3cret", "r3pl", "Bearer xyz"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        for kept in [
            "login = \"admin\"",
            "passwd = \"***\"",
            "replication_passwd = \"***\"",
            "password = \"/etc/phalanx/pdu.pass\"",
            "key_file = \"phalanx.key\"",
            "# the PDU",
            "binary = \"/usr/bin/mysqld\"",
        ] {
            assert!(r.contains(kept), "{kept} missing from {r}");
        }
        assert_eq!(redact("[cluster]\nname = \"c\"\n"), "[cluster]\nname = \"c\"\n");
    }

    #[test]
    fn an_edited_redacted_text_keeps_the_committed_secrets() {
        // Shown redacted, edited (a new device first, the db's user changed), applied.
        let edited = redact(TEXT)
            .replace(
                "[[fence.device]]\nname = \"pdu\"",
                "[[fence.device]]\nname = \"ipmi\"\nagent = \"fence_ipmilan\"\n\n[[fence.device]]\nname = \"pdu\"",
            )
            .replace("replication_user = \"repl\"", "replication_user = \"repl2\"");
        let back = unredact(&edited, TEXT).unwrap();
        assert!(back.contains("passwd = \"s3cret\""), "{back}");
        assert!(back.contains("replication_passwd = \"r3pl\""), "{back}");
        assert!(back.contains("Authorization = \"Bearer xyz\""), "{back}");
        assert!(back.contains("repl2") && !back.contains(REDACTED), "{back}");
        // A *** with nothing committed at its place is refused, naming it.
        let e = unredact("[[resource]]\nid = \"x\"\nparams = { password = \"***\" }\n", TEXT).unwrap_err();
        assert!(e.starts_with("resource[x].params.password is \"***\""), "{e}");
        // Nothing redacted: the text as it is.
        assert_eq!(unredact(TEXT, "").unwrap(), TEXT);
    }

    #[test]
    fn which_keys_are_secrets() {
        for k in [
            "passwd",
            "password",
            "replication_passwd",
            "secret",
            "api_key",
            "Authorization",
            "snmp_community",
            "token",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["key_file", "secret_files", "login", "ip", "name", "password_file"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
