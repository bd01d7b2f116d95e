//! A small async memcached text-protocol client (tokio) for the session store's checkers:
//! one connection, one request at a time, `get`, `gets`, `set`, `add`, `cas`, `incr` and
//! `delete`, each bounded by a per-operation timeout. Its job is to say, for every request,
//! whether the answer is *definite* (`Ok`: STORED, NOT_STORED, EXISTS, NOT_FOUND, DELETED,
//! VALUE…END, a number; or a definite refusal such as CLIENT_ERROR) or *indeterminate*
//! ([`McError::is_indeterminate`]: SERVER_ERROR, a connection error, a timeout, an answer it
//! cannot parse — a write may or may not have taken effect). After an indeterminate answer the
//! connection is poisoned (its framing is unknown): every later request fails fast with
//! [`McError::Poisoned`]; reconnecting is the caller's business.
//!
//! No crate fits: the memcached crates on crates.io are either synchronous (`memcache`), hide
//! the protocol's outcomes behind their own retries and pools, or flatten NOT_STORED / EXISTS /
//! NOT_FOUND and timeouts into one error, which is exactly the distinction a linearizability
//! check needs.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// memcached's key limit (bytes, no spaces or control characters).
pub const MAX_KEY: usize = 250;
/// The longest reply line accepted (a VALUE header or a status line).
const MAX_LINE: u64 = 1024;
/// The largest value accepted in a reply (memcached's default item limit is 1 MiB).
const MAX_VALUE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum McError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connect to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the server")]
    Closed,
    #[error("SERVER_ERROR {0}")]
    Server(String),
    /// The server refused the request without executing it (definite, nothing changed).
    #[error("CLIENT_ERROR {0}")]
    Client(String),
    /// `ERROR`: the server did not know the command (definite, nothing changed).
    #[error("ERROR (unknown command)")]
    UnknownCommand,
    #[error("unexpected reply {0:?}")]
    Protocol(String),
    /// Refused before sending anything (definite, nothing changed).
    #[error("invalid key {0:?}")]
    BadKey(String),
    #[error("an earlier request on this connection had no definite answer; reconnect")]
    Poisoned,
}

impl McError {
    /// True when the request may or may not have taken effect (and may still take effect later).
    pub fn is_indeterminate(&self) -> bool {
        match self {
            McError::Client(_) | McError::UnknownCommand | McError::BadKey(_) => false,
            // Nothing was sent on a failed or poisoned connection; callers record it as
            // indeterminate anyway only if they want to (it is definite: no effect).
            McError::Connect { .. } | McError::ConnectTimeout { .. } | McError::Poisoned => false,
            McError::Timeout(_) | McError::Io(_) | McError::Closed | McError::Server(_) | McError::Protocol(_) => true,
        }
    }
}

/// The answer to a storage command (`set`, `add`, `cas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Stored,
    NotStored,
    /// `cas`: the item changed since the unique was read.
    Exists,
    /// `cas`: no such item.
    NotFound,
}

/// The answer to `incr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incr {
    Value(u64),
    NotFound,
    /// CLIENT_ERROR: the item's value is not a decimal number (definite, nothing changed).
    NonNumeric,
}

/// The answer to `delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delete {
    Deleted,
    NotFound,
}

/// One connection to a memcached-protocol server.
pub struct McClient {
    conn: BufReader<TcpStream>,
    op_timeout: Duration,
    poisoned: bool,
}

impl McClient {
    pub async fn connect(addr: SocketAddr, connect_timeout: Duration, op_timeout: Duration) -> Result<Self, McError> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(McError::ConnectTimeout {
                    addr,
                    timeout: connect_timeout,
                })
            }
            Ok(Err(source)) => return Err(McError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        // Small requests, one at a time: Nagle would add a round trip's worth of delay.
        stream
            .set_nodelay(true)
            .map_err(|source| McError::Connect { addr, source })?;
        Ok(McClient {
            conn: BufReader::new(stream),
            op_timeout,
            poisoned: false,
        })
    }

    /// `get`: the value, or `None` on a miss.
    pub async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, McError> {
        check_key(key)?;
        let req = format!("get {key}\r\n").into_bytes();
        Ok(self.retrieve(req, key, false).await?.map(|(v, _)| v))
    }

    /// `gets`: the value and its cas unique, or `None` on a miss.
    pub async fn gets(&mut self, key: &str) -> Result<Option<(Vec<u8>, u64)>, McError> {
        check_key(key)?;
        let req = format!("gets {key}\r\n").into_bytes();
        match self.retrieve(req, key, true).await? {
            None => Ok(None),
            Some((v, Some(cas))) => Ok(Some((v, cas))),
            Some((_, None)) => Err(self.poison(McError::Protocol("gets: VALUE without a cas unique".into()))),
        }
    }

    pub async fn set(&mut self, key: &str, value: &[u8]) -> Result<Store, McError> {
        self.store("set", key, value, None).await
    }

    pub async fn add(&mut self, key: &str, value: &[u8]) -> Result<Store, McError> {
        self.store("add", key, value, None).await
    }

    pub async fn cas(&mut self, key: &str, value: &[u8], unique: u64) -> Result<Store, McError> {
        self.store("cas", key, value, Some(unique)).await
    }

    pub async fn incr(&mut self, key: &str, delta: u64) -> Result<Incr, McError> {
        check_key(key)?;
        let req = format!("incr {key} {delta}\r\n").into_bytes();
        match self.simple(req).await {
            Ok(line) if line == "NOT_FOUND" => Ok(Incr::NotFound),
            Ok(line) => match line.parse::<u64>() {
                Ok(n) => Ok(Incr::Value(n)),
                Err(_) => Err(self.poison(McError::Protocol(line))),
            },
            Err(McError::Client(m)) if m.contains("non-numeric") => Ok(Incr::NonNumeric),
            Err(e) => Err(e),
        }
    }

    pub async fn delete(&mut self, key: &str) -> Result<Delete, McError> {
        check_key(key)?;
        let req = format!("delete {key}\r\n").into_bytes();
        let line = self.simple(req).await?;
        match line.as_str() {
            "DELETED" => Ok(Delete::Deleted),
            "NOT_FOUND" => Ok(Delete::NotFound),
            _ => Err(self.poison(McError::Protocol(line))),
        }
    }

    async fn store(&mut self, cmd: &str, key: &str, value: &[u8], unique: Option<u64>) -> Result<Store, McError> {
        check_key(key)?;
        let mut req = match unique {
            Some(u) => format!("{cmd} {key} 0 0 {} {u}\r\n", value.len()),
            None => format!("{cmd} {key} 0 0 {}\r\n", value.len()),
        }
        .into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        let line = self.simple(req).await?;
        match line.as_str() {
            "STORED" => Ok(Store::Stored),
            "NOT_STORED" => Ok(Store::NotStored),
            "EXISTS" => Ok(Store::Exists),
            "NOT_FOUND" => Ok(Store::NotFound),
            _ => Err(self.poison(McError::Protocol(line))),
        }
    }

    /// Sends `req` and reads one status line (errors already mapped).
    async fn simple(&mut self, req: Vec<u8>) -> Result<String, McError> {
        if self.poisoned {
            return Err(McError::Poisoned);
        }
        let t = self.op_timeout;
        let r = tokio::time::timeout(t, async {
            self.conn.get_mut().write_all(&req).await?;
            let line = read_line(&mut self.conn).await?;
            status(line)
        })
        .await;
        self.settle(r)
    }

    /// Sends a `get`/`gets` request for one key and reads `VALUE … END` or `END`.
    async fn retrieve(
        &mut self,
        req: Vec<u8>,
        key: &str,
        with_cas: bool,
    ) -> Result<Option<(Vec<u8>, Option<u64>)>, McError> {
        if self.poisoned {
            return Err(McError::Poisoned);
        }
        let t = self.op_timeout;
        let r = tokio::time::timeout(t, async {
            self.conn.get_mut().write_all(&req).await?;
            let line = status(read_line(&mut self.conn).await?)?;
            if line == "END" {
                return Ok(None);
            }
            let (len, cas) = parse_value_header(&line, key, with_cas)?;
            let mut data = vec![0u8; len + 2];
            self.conn.read_exact(&mut data).await.map_err(eof)?;
            if !data.ends_with(b"\r\n") {
                return Err(McError::Protocol("value block not terminated by CRLF".into()));
            }
            data.truncate(len);
            let end = read_line(&mut self.conn).await?;
            if end != "END" {
                return Err(McError::Protocol(end));
            }
            Ok::<_, McError>(Some((data, cas)))
        })
        .await;
        self.settle(r)
    }

    /// Maps a timeout to an error and poisons the connection on any indeterminate outcome.
    fn settle<T>(&mut self, r: Result<Result<T, McError>, tokio::time::error::Elapsed>) -> Result<T, McError> {
        let r = r.unwrap_or(Err(McError::Timeout(self.op_timeout)));
        match r {
            Err(e) if e.is_indeterminate() => Err(self.poison(e)),
            r => r,
        }
    }

    fn poison(&mut self, e: McError) -> McError {
        self.poisoned = true;
        e
    }
}

fn check_key(key: &str) -> Result<(), McError> {
    if key.is_empty() || key.len() > MAX_KEY || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(McError::BadKey(key.to_string()));
    }
    Ok(())
}

fn eof(e: std::io::Error) -> McError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        McError::Closed
    } else {
        McError::Io(e)
    }
}

/// One CRLF-terminated line, without the CRLF.
async fn read_line(conn: &mut BufReader<TcpStream>) -> Result<String, McError> {
    let mut buf = Vec::new();
    let n = (&mut *conn).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Err(McError::Closed);
    }
    if !buf.ends_with(b"\r\n") {
        return Err(McError::Protocol(String::from_utf8_lossy(&buf).into_owned()));
    }
    buf.truncate(buf.len() - 2);
    String::from_utf8(buf).map_err(|e| McError::Protocol(String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Maps the protocol's error lines to errors; passes any other line through.
fn status(line: String) -> Result<String, McError> {
    if let Some(m) = line.strip_prefix("SERVER_ERROR") {
        return Err(McError::Server(m.trim().to_string()));
    }
    if let Some(m) = line.strip_prefix("CLIENT_ERROR") {
        return Err(McError::Client(m.trim().to_string()));
    }
    if line == "ERROR" {
        return Err(McError::UnknownCommand);
    }
    Ok(line)
}

/// `VALUE <key> <flags> <bytes> [<cas unique>]` → (bytes, cas unique).
fn parse_value_header(line: &str, key: &str, with_cas: bool) -> Result<(usize, Option<u64>), McError> {
    let bad = || McError::Protocol(line.to_string());
    let mut f = line.split(' ');
    if f.next() != Some("VALUE") || f.next() != Some(key) {
        return Err(bad());
    }
    f.next().and_then(|s| s.parse::<u32>().ok()).ok_or_else(bad)?;
    let len = f.next().and_then(|s| s.parse::<usize>().ok()).ok_or_else(bad)?;
    if len > MAX_VALUE {
        return Err(bad());
    }
    let cas = match f.next() {
        Some(s) => Some(s.parse::<u64>().map_err(|_| bad())?),
        None if with_cas => return Err(bad()),
        None => None,
    };
    if f.next().is_some() {
        return Err(bad());
    }
    Ok((len, cas))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_headers_parse_with_and_without_cas() {
        assert_eq!(parse_value_header("VALUE k 0 5", "k", false).unwrap(), (5, None));
        assert_eq!(parse_value_header("VALUE k 3 5 42", "k", true).unwrap(), (5, Some(42)));
        assert!(parse_value_header("VALUE k 0 5", "k", true).is_err());
        assert!(parse_value_header("VALUE other 0 5", "k", false).is_err());
        assert!(parse_value_header("VALUE k 0 x", "k", false).is_err());
        assert!(parse_value_header("VALUE k 0 5 1 2", "k", true).is_err());
    }

    #[test]
    fn error_lines_map_to_definite_or_indeterminate_errors() {
        assert!(matches!(status("SERVER_ERROR out of memory".into()), Err(McError::Server(m)) if m == "out of memory"));
        assert!(status("SERVER_ERROR x".into()).unwrap_err().is_indeterminate());
        assert!(!status("CLIENT_ERROR bad".into()).unwrap_err().is_indeterminate());
        assert!(!status("ERROR".into()).unwrap_err().is_indeterminate());
        assert_eq!(status("STORED".into()).unwrap(), "STORED");
        assert!(McError::Timeout(Duration::from_secs(1)).is_indeterminate());
        assert!(McError::Closed.is_indeterminate());
    }

    #[test]
    fn keys_with_spaces_or_too_long_are_refused_before_sending() {
        assert!(check_key("a b").is_err());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(251)).is_err());
        assert!(check_key("lin-1-k0").is_ok());
    }
}
