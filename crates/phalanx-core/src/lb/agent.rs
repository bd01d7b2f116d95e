//! The agent-check line, as HAProxy's `agent-check` reads it: one ASCII line of words
//! separated by spaces, tabs or commas — an operational state (`up`, `down`, `fail`,
//! `stopped`), an administrative state (`ready`, `drain`, `maint`), a weight `NN%` (of the
//! configured weight, 0..=100), `maxconn:N`, and after `#` a free message. A pure parser:
//! anything else (unknown words, two states of one kind, control bytes, an overlong line) is
//! an error and changes nothing.

use super::backend::AdminState;

/// The longest agent line accepted (bytes, without the line end).
pub const MAX_AGENT_LINE: usize = 512;

/// What the agent says about the backend's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operational {
    /// The agent sees the service working (health checks still decide whether it is up).
    Up,
    /// The agent sees it failed: down whatever the checks say (`down`, `fail`, `stopped`).
    Down,
}

/// A parsed agent line; every part is optional, an empty reply is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReply {
    pub operational: Option<Operational>,
    pub admin: Option<AdminState>,
    /// Percentage of the configured weight, 0..=100.
    pub weight_pct: Option<u8>,
    pub maxconn: Option<u32>,
    /// The text after `#`, trimmed (for status), if any.
    pub message: Option<String>,
}

/// Why an agent line was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("empty agent reply")]
    Empty,
    #[error("agent reply of {len} bytes is longer than {MAX_AGENT_LINE}")]
    TooLong { len: usize },
    #[error("agent reply has a control or non-ASCII byte 0x{byte:02x} at offset {offset}")]
    BadByte { byte: u8, offset: usize },
    #[error(
        "unknown word {word:?} in agent reply (expected up, down, fail, stopped, ready, drain, maint, NN%, maxconn:N)"
    )]
    UnknownWord { word: String },
    #[error("agent reply says both {first:?} and {second:?}")]
    Conflict { first: String, second: String },
    #[error("bad weight {word:?} in agent reply: expected 0% to 100%")]
    BadPercent { word: String },
    #[error("bad maxconn {word:?} in agent reply: expected maxconn:N")]
    BadMaxconn { word: String },
}

/// Set `slot` once; a second value (even the same word) is a conflict.
fn set_once<T>(slot: &mut Option<(T, String)>, value: T, word: &str) -> Result<(), AgentError> {
    if let Some((_, first)) = slot {
        return Err(AgentError::Conflict {
            first: first.clone(),
            second: word.to_string(),
        });
    }
    *slot = Some((value, word.to_string()));
    Ok(())
}

impl AgentReply {
    /// Parse one line (a trailing `\n` or `\r\n` is allowed). Words are case-insensitive.
    pub fn parse(line: &str) -> Result<AgentReply, AgentError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > MAX_AGENT_LINE {
            return Err(AgentError::TooLong { len: line.len() });
        }
        if let Some((offset, &byte)) = line
            .as_bytes()
            .iter()
            .enumerate()
            .find(|(_, b)| !(b.is_ascii_graphic() || **b == b' ' || **b == b'\t'))
        {
            return Err(AgentError::BadByte { byte, offset });
        }
        let (words, message) = match line.split_once('#') {
            Some((w, m)) => (w, Some(m.trim().to_string())),
            None => (line, None),
        };
        let mut operational = None;
        let mut admin = None;
        let mut pct = None;
        let mut maxconn = None;
        let mut any = message.as_ref().is_some_and(|m| !m.is_empty());
        for word in words.split([' ', '\t', ',']).filter(|w| !w.is_empty()) {
            any = true;
            let lower = word.to_ascii_lowercase();
            match lower.as_str() {
                "up" => set_once(&mut operational, Operational::Up, word)?,
                "down" | "fail" | "stopped" => set_once(&mut operational, Operational::Down, word)?,
                "ready" => set_once(&mut admin, AdminState::Ready, word)?,
                "drain" => set_once(&mut admin, AdminState::Drain, word)?,
                "maint" => set_once(&mut admin, AdminState::Maint, word)?,
                _ if lower.ends_with('%') => set_once(&mut pct, percent(word)?, word)?,
                _ if lower.starts_with("maxconn:") => {
                    let n = lower["maxconn:".len()..]
                        .parse()
                        .map_err(|_| AgentError::BadMaxconn { word: word.into() })?;
                    set_once(&mut maxconn, n, word)?
                }
                _ => return Err(AgentError::UnknownWord { word: word.to_string() }),
            }
        }
        if !any {
            return Err(AgentError::Empty);
        }
        Ok(AgentReply {
            operational: operational.map(|(v, _)| v),
            admin: admin.map(|(v, _)| v),
            weight_pct: pct.map(|(v, _)| v),
            maxconn: maxconn.map(|(v, _)| v),
            message: message.filter(|m| !m.is_empty()),
        })
    }
}

/// `NN%` with NN in 0..=100 (digits only).
fn percent(word: &str) -> Result<u8, AgentError> {
    let bad = || AgentError::BadPercent { word: word.to_string() };
    let digits = &word[..word.len() - 1];
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u8 = digits.parse().map_err(|_| bad())?;
    if n > 100 {
        return Err(bad());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> AgentReply {
        AgentReply::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn parses_haproxy_style_lines() {
        assert_eq!(ok("up\n").operational, Some(Operational::Up));
        assert_eq!(ok("DOWN\r\n").operational, Some(Operational::Down));
        assert_eq!(ok("stopped").operational, Some(Operational::Down));
        assert_eq!(ok("drain").admin, Some(AdminState::Drain));
        let r = ok("up, ready 75%\tmaxconn:30 # load 0.4 ");
        assert_eq!(
            r,
            AgentReply {
                operational: Some(Operational::Up),
                admin: Some(AdminState::Ready),
                weight_pct: Some(75),
                maxconn: Some(30),
                message: Some("load 0.4".into()),
            }
        );
        assert_eq!(ok("0%").weight_pct, Some(0));
        assert_eq!(ok("100%").weight_pct, Some(100));
        assert_eq!(ok("fail # disk full").message.as_deref(), Some("disk full"));
        assert_eq!(ok("maint").admin, Some(AdminState::Maint));
    }

    #[test]
    fn refuses_malformed_lines() {
        let err = |l: &str| AgentReply::parse(l).unwrap_err();
        assert_eq!(err(""), AgentError::Empty);
        assert_eq!(err(" ,\t\n"), AgentError::Empty);
        assert!(matches!(err("#"), AgentError::Empty));
        assert_eq!(err("upp"), AgentError::UnknownWord { word: "upp".into() });
        assert_eq!(
            err("up down"),
            AgentError::Conflict {
                first: "up".into(),
                second: "down".into()
            }
        );
        assert_eq!(
            err("drain maint"),
            AgentError::Conflict {
                first: "drain".into(),
                second: "maint".into()
            }
        );
        assert_eq!(
            err("50% 60%"),
            AgentError::Conflict {
                first: "50%".into(),
                second: "60%".into()
            }
        );
        for bad in ["101%", "%", "-1%", "5.5%", "1000%", "abc%", "+5%"] {
            assert_eq!(err(bad), AgentError::BadPercent { word: bad.into() }, "{bad}");
        }
        assert_eq!(
            err("maxconn:x"),
            AgentError::BadMaxconn {
                word: "maxconn:x".into()
            }
        );
        assert_eq!(
            err("maxconn:"),
            AgentError::BadMaxconn {
                word: "maxconn:".into()
            }
        );
        assert_eq!(err("up\0"), AgentError::BadByte { byte: 0, offset: 2 });
        assert_eq!(err("up\ndown"), AgentError::BadByte { byte: b'\n', offset: 2 });
        assert!(matches!(err("drain é"), AgentError::BadByte { offset: 6, .. }));
        assert_eq!(
            err(&"x".repeat(MAX_AGENT_LINE + 1)),
            AgentError::TooLong {
                len: MAX_AGENT_LINE + 1
            }
        );
        assert!(err("up down").to_string().contains("both \"up\" and \"down\""));
    }
}
