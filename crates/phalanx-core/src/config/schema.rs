//! The schema stage of a config check, made to report every schema error at once. serde stops
//! at the first key it cannot take (an unknown key, a value of the wrong type), so after each
//! such error the offending key-value (or, for an error about a whole table, that table) is
//! blanked out of a working copy of the text and the file is deserialized again, until it
//! deserializes. Blanking keeps every byte offset, so the spans of what remains, and of every
//! later diagnostic, still point into the file as written. A TOML syntax error stops the check
//! there: nothing more can be said of a file that does not parse. The keys set aside are told
//! to the [`Checker`], so that the later stages do not also report them as missing.

use crate::diag::Checker;
use serde::de::DeserializeOwned;
use std::ops::Range;

/// At most this many schema errors are collected (each costs a parse of the file).
const MAX_SCHEMA_ERRORS: usize = 200;

/// Deserialize `source` into `T`, reporting every schema error to `c`. None after a TOML syntax
/// error (reported), or when an error could not be set aside (reported).
pub(super) fn deserialize<T: DeserializeOwned>(c: &mut Checker, source: &str) -> Option<T> {
    let mut text = source.to_string();
    let mut parts: Option<Parts> = None;
    for _ in 0..MAX_SCHEMA_ERRORS {
        let e = match toml::from_str::<T>(&text) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let span = e.span().unwrap_or(0..0);
        c.error(span.clone(), e.message().trim().to_string());
        // The parts of the file as written, found once: blanking only ever removes whole parts.
        let parts = match &parts {
            Some(p) => p,
            None => match Parts::of(source) {
                Some(p) => parts.insert(p),
                None => return None, // a syntax error: reported above, nothing more to say
            },
        };
        let (region, key) = parts.around(span.start, text.len())?;
        if !blank(&mut text, region.clone()) {
            return None; // already blank: the error is not in a part that can be set aside
        }
        if let Some(key) = key {
            c.set_aside(region, key);
        }
    }
    c.error(0..0, format!("more than {MAX_SCHEMA_ERRORS} errors; stopped checking"));
    None
}

/// Where the key-values and table headers of a parsed file are.
struct Parts {
    /// Every `key = value`, from the key's start to the value's end (nested inline tables too),
    /// with its key.
    entries: Vec<(Range<usize>, String)>,
    /// Every `[table]` and `[[array.of.tables]]` header, by start.
    headers: Vec<Range<usize>>,
}

impl Parts {
    /// None when `source` is not valid TOML.
    fn of(source: &str) -> Option<Parts> {
        let doc = toml_edit::ImDocument::parse(source).ok()?;
        let mut parts = Parts {
            entries: Vec::new(),
            headers: Vec::new(),
        };
        parts.table(doc.as_table());
        parts.headers.sort_by_key(|h| h.start);
        Some(parts)
    }

    fn table(&mut self, t: &toml_edit::Table) {
        for (k, _) in t.iter() {
            let Some((key, item)) = t.get_key_value(k) else {
                continue;
            };
            match item {
                toml_edit::Item::Value(v) => self.entry(key, v),
                toml_edit::Item::Table(sub) => {
                    if let Some(h) = sub.span().filter(|_| !sub.is_dotted() && !sub.is_implicit()) {
                        self.headers.push(h);
                    }
                    self.table(sub);
                }
                toml_edit::Item::ArrayOfTables(a) => {
                    for sub in a.iter() {
                        if let Some(h) = sub.span() {
                            self.headers.push(h);
                        }
                        self.table(sub);
                    }
                }
                toml_edit::Item::None => {}
            }
        }
    }

    fn entry(&mut self, key: &toml_edit::Key, v: &toml_edit::Value) {
        if let (Some(k), Some(v)) = (key.span(), v.span()) {
            self.entries.push((k.start..v.end, key.get().to_string()));
        }
        self.value(v);
    }

    /// The key-values inside a value: an inline table's, and those of inline tables in arrays.
    fn value(&mut self, v: &toml_edit::Value) {
        match v {
            toml_edit::Value::InlineTable(t) => {
                for (k, _) in t.iter() {
                    if let Some((key, toml_edit::Item::Value(v))) = t.get_key_value(k) {
                        self.entry(key, v);
                    }
                }
            }
            toml_edit::Value::Array(a) => a.iter().for_each(|v| self.value(v)),
            _ => {}
        }
    }

    /// What to set aside for an error at byte `at`: the innermost key-value around it, else the
    /// table whose header or body it is in (to the next header); with the key of a key-value.
    fn around(&self, at: usize, len: usize) -> Option<(Range<usize>, Option<String>)> {
        let inside = |r: &Range<usize>| r.start <= at && (at < r.end || r.is_empty());
        if let Some((r, key)) = self
            .entries
            .iter()
            .filter(|(r, _)| inside(r))
            .min_by_key(|(r, _)| r.end - r.start)
        {
            return Some((r.clone(), Some(key.clone())));
        }
        let i = self.headers.iter().rposition(|h| h.start <= at)?;
        let end = self.headers.get(i + 1).map(|h| h.start).unwrap_or(len);
        Some((self.headers[i].start..end, None))
    }
}

/// Blank `region` of `text` (every byte but newlines becomes a space, so every offset stays);
/// false when there was nothing left to blank.
fn blank(text: &mut String, region: Range<usize>) -> bool {
    let end = region.end.min(text.len());
    let start = region.start.min(end);
    let mut bytes = std::mem::take(text).into_bytes();
    let mut changed = false;
    for b in &mut bytes[start..end] {
        if *b != b'\n' && *b != b' ' {
            *b = b' ';
            changed = true;
        }
    }
    // Only whole characters were replaced by ASCII spaces: still UTF-8. Should a region ever
    // cut a character, the lossy conversion keeps the text valid (and its errors reported).
    *text = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanking_keeps_offsets_and_newlines() {
        let mut t = "a = \"é\"\nb = 1\n".to_string();
        assert!(blank(&mut t, 0..9));
        assert_eq!(t.len(), "a = \"é\"\nb = 1\n".len());
        assert_eq!(t, format!("{}\nb = 1\n", " ".repeat(8)));
        assert!(!blank(&mut t, 0..9), "nothing left to blank");
    }

    #[test]
    fn the_innermost_key_value_is_set_aside() {
        let src = "[cluster]\nname = \"x\"\nops = { a = 1, b = \"two\" }\n[[node]]\nx = 1\n";
        let p = Parts::of(src).unwrap();
        let two = src.find("\"two\"").unwrap();
        let (r, key) = p.around(two, src.len()).unwrap();
        assert_eq!((&src[r], key.as_deref()), ("b = \"two\"", Some("b")));
        let header = src.find("[[node]]").unwrap();
        let (r, key) = p.around(header + 2, src.len()).unwrap();
        assert_eq!((&src[r], key), ("[[node]]\nx = 1\n", None));
    }
}
