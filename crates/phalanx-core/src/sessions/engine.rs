//! A request answered against a [`Store`], purely. For the text protocol: reads (`get gets`)
//! straight from it, writes applied as the log would apply them (the caller passes the time the
//! leader logged), in memcached's reply format (`VALUE key flags bytes [cas]`, `END`, `noreply`
//! silencing). The node's listener will route writes through the sessions Raft group and reads
//! through a read index, and answer with these same bytes; tests use it whole. The meta
//! protocol's answers live in `meta` (see its notes on what differs from memcached 1.6.18).
//!
//! The contract with the node, exact: every request for which [`needs_log`] is true is logged
//! and answered by [`answer_logged`] on every replica at the leader's logged time (so answers
//! and changes are the same everywhere); every other request is answered by [`answer_read`] at
//! a read index (the listener may call `answer_read` first and log the request when it gives
//! None). [`is_write`] is the part of `needs_log` the request alone decides; `needs_log` adds
//! the one read that changes the store: an `mg` without `T`, `N` or `R` that meets a stale item
//! whose recache token no client holds (memcached gives it the token: `X W`, later clients `Z`).
//!
//! The simpler contract, safe but not exact: log what [`is_write`] names and answer everything
//! with [`answer_request`], which is `answer_logged` for those and never changes the store for
//! the rest. The one difference: such an `mg` on a stale item answers `X W` but cannot take the
//! token, so every such reader wins until a logged request (an `mg` with `N`, `R` or `T`) takes
//! it.

mod meta;

use super::protocol::{MetaRequest, Request, TextRequest};
use super::store::{Item, Op, Reply, Store};

/// What a request gets back, and whether the connection ends (`quit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub bytes: Vec<u8>,
    pub close: bool,
}

/// The version line phalanx answers (`VERSION`): memcached clients read the version after it.
pub const VERSION: &str = concat!("phalanx-", env!("CARGO_PKG_VERSION"));

/// The write a request makes, if any (what the listener logs).
pub fn write_of(req: &TextRequest) -> Option<Op> {
    Some(match req {
        TextRequest::Store {
            mode,
            key,
            flags,
            exptime,
            cas,
            data,
            ..
        } => Op::Store {
            mode: *mode,
            key: key.clone(),
            flags: *flags,
            exptime: *exptime,
            cas: *cas,
            data: data.clone(),
        },
        TextRequest::Delete { key, .. } => Op::Delete { key: key.clone() },
        TextRequest::Arith { incr, key, delta, .. } => Op::Arith {
            incr: *incr,
            key: key.clone(),
            delta: *delta,
        },
        TextRequest::Touch { key, exptime, .. } => Op::Touch {
            key: key.clone(),
            exptime: *exptime,
        },
        TextRequest::FlushAll { delay, .. } => Op::FlushAll { delay: *delay },
        _ => return None,
    })
}

/// Whether `req` changes the store whatever it holds (the node logs it through the sessions
/// group and answers with what applying it gave), or only reads it or nothing. An `mg` with
/// `T` (touch), `N` (vivify) or `R` (recache: it may win the token) is a write. See
/// [`needs_log`] for the one read that the store decides.
pub fn is_write(req: &Request) -> bool {
    match req {
        Request::Text(t) => write_of(t).is_some() || matches!(t, TextRequest::Gat { .. }),
        Request::Meta(MetaRequest::Get { flags, .. }) => {
            flags.ttl.is_some() || flags.vivify.is_some() || flags.recache.is_some()
        }
        Request::Meta(MetaRequest::Noop) => false,
        Request::Meta(_) => true,
    }
}

/// Whether `req` must be logged on this store at `now_ms`: [`is_write`], or an `mg` that would
/// win a stale item's recache token (`X W`, which marks the item `Z` for every later client).
pub fn needs_log(store: &Store, req: &Request, now_ms: u64) -> bool {
    answer_read(store, req, now_ms).is_none()
}

/// Answer a request that changes nothing, purely; None when it must be logged ([`needs_log`]).
pub fn answer_read(store: &Store, req: &Request, now_ms: u64) -> Option<Answer> {
    if is_write(req) {
        return None;
    }
    match req {
        Request::Text(t) => Some(read(store, t, now_ms)),
        Request::Meta(MetaRequest::Get { key, flags }) => {
            let (bytes, ops) = meta::get(store, key, flags, now_ms);
            ops.is_empty().then_some(Answer { bytes, close: false })
        }
        Request::Meta(MetaRequest::Noop) => Some(Answer {
            bytes: b"MN\r\n".to_vec(),
            close: false,
        }),
        Request::Meta(_) => None,
    }
}

/// Answer any request against `store` at `now_ms`: [`answer_logged`] for what [`is_write`]
/// names, and for the rest an answer that never changes the store (the one read `needs_log`
/// adds is answered as memcached would, without taking the token it wins).
pub fn answer_request(store: &mut Store, req: &Request, now_ms: u64) -> Answer {
    match (is_write(req), req) {
        (false, Request::Meta(MetaRequest::Get { key, flags })) => Answer {
            bytes: meta::get(store, key, flags, now_ms).0,
            close: false,
        },
        _ => answer_logged(store, req, now_ms),
    }
}

/// Answer a logged request against `store` at the leader's `now_ms`, changing it as memcached
/// would (what the sessions state machine runs, on every replica alike).
pub fn answer_logged(store: &mut Store, req: &Request, now_ms: u64) -> Answer {
    let bytes = match req {
        Request::Text(t) => return answer(store, t, now_ms),
        Request::Meta(MetaRequest::Get { key, flags }) => {
            let (bytes, ops) = meta::get(store, key, flags, now_ms);
            for op in &ops {
                store.apply(op, now_ms);
            }
            bytes
        }
        Request::Meta(MetaRequest::Set { key, flags, data }) => meta::set(store, key, flags, data, now_ms),
        Request::Meta(MetaRequest::Delete { key, flags }) => meta::delete(store, key, flags, now_ms),
        Request::Meta(MetaRequest::Arith { key, flags }) => meta::arith(store, key, flags, now_ms),
        Request::Meta(MetaRequest::Noop) => b"MN\r\n".to_vec(),
    };
    Answer { bytes, close: false }
}

fn value_line(out: &mut Vec<u8>, key: &[u8], item: &Item, cas: bool) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.extend_from_slice(format!(" {} {}", item.flags, item.value.len()).as_bytes());
    if cas {
        out.extend_from_slice(format!(" {}", item.cas).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&item.value);
    out.extend_from_slice(b"\r\n");
}

/// A text request that writes nothing, answered against `store` (a write answers
/// `SERVER_ERROR`: call [`answer`] for those).
fn read(store: &Store, req: &TextRequest, now_ms: u64) -> Answer {
    let bytes = match req {
        TextRequest::Get { keys, cas } => {
            let mut out = Vec::new();
            for k in keys {
                if let Some(item) = store.get(k, now_ms) {
                    value_line(&mut out, k, item, *cas);
                }
            }
            out.extend_from_slice(b"END\r\n");
            out
        }
        TextRequest::Version => format!("VERSION {VERSION}\r\n").into_bytes(),
        TextRequest::Verbosity { noreply, .. } => quiet(*noreply, b"OK\r\n".to_vec()),
        TextRequest::Stats { .. } => format!(
            "STAT curr_items {}\r\nSTAT bytes {}\r\nEND\r\n",
            store.len(),
            store.bytes()
        )
        .into_bytes(),
        TextRequest::Quit => {
            return Answer {
                bytes: Vec::new(),
                close: true,
            }
        }
        _ => b"SERVER_ERROR a write answered as a read\r\n".to_vec(),
    };
    Answer { bytes, close: false }
}

/// Answer `req` against `store` at `now_ms`.
pub fn answer(store: &mut Store, req: &TextRequest, now_ms: u64) -> Answer {
    let bytes = match req {
        TextRequest::Get { .. }
        | TextRequest::Version
        | TextRequest::Verbosity { .. }
        | TextRequest::Stats { .. }
        | TextRequest::Quit => return read(store, req, now_ms),
        TextRequest::Gat { exptime, keys, cas } => {
            let mut out = Vec::new();
            for k in keys {
                let touch = Op::Touch {
                    key: k.clone(),
                    exptime: *exptime,
                };
                if store.apply(&touch, now_ms) == Reply::Touched {
                    if let Some(item) = store.get(k, now_ms) {
                        value_line(&mut out, k, item, *cas);
                    }
                }
            }
            out.extend_from_slice(b"END\r\n");
            out
        }
        write => {
            let noreply = matches!(
                write,
                TextRequest::Store { noreply: true, .. }
                    | TextRequest::Delete { noreply: true, .. }
                    | TextRequest::Arith { noreply: true, .. }
                    | TextRequest::Touch { noreply: true, .. }
                    | TextRequest::FlushAll { noreply: true, .. }
            );
            let reply = write_of(write).map_or(Reply::Ok, |op| store.apply(&op, now_ms));
            quiet(noreply, reply.bytes())
        }
    };
    Answer { bytes, close: false }
}

fn quiet(noreply: bool, bytes: Vec<u8>) -> Vec<u8> {
    if noreply {
        Vec::new()
    } else {
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::protocol::StoreMode;

    fn store(key: &str, value: &str, noreply: bool) -> TextRequest {
        TextRequest::Store {
            mode: StoreMode::Set,
            key: key.into(),
            flags: 3,
            exptime: 0,
            cas: None,
            data: value.into(),
            noreply,
        }
    }

    #[test]
    fn reads_and_writes_answer_in_memcached_format() {
        let mut s = Store::new(1 << 20);
        let now = 1_800_000_000_000;
        assert_eq!(answer(&mut s, &store("k", "v", false), now).bytes, b"STORED\r\n");
        assert!(answer(&mut s, &store("j", "w", true), now).bytes.is_empty(), "noreply");
        let get = TextRequest::Get {
            keys: vec!["k".into(), "none".into(), "j".into()],
            cas: true,
        };
        assert_eq!(
            answer(&mut s, &get, now).bytes,
            b"VALUE k 3 1 1\r\nv\r\nVALUE j 3 1 2\r\nw\r\nEND\r\n"
        );
        let quit = answer(&mut s, &TextRequest::Quit, now);
        assert!(quit.close && quit.bytes.is_empty());
        assert!(write_of(&get).is_none(), "a read logs nothing");
    }
}
