//! The meta protocol's answers (`mg ms md ma mn`) in memcached 1.6.18's bytes
//! (`proto_text.c`, compared in `tests/memcached_golden.rs`): the status (`HD`, `VA <size>`,
//! `EN`, `NF`, `NS`, `EX`, `MN`), then the return flags in the order the request sent them
//! (memcached walks the request's flags to build its reply, and `T`, `N`, `R` act on the item as
//! the walk reaches them, so `mg k t T30` shows the old TTL and `mg k T30 t` the new one), then
//! `Z`, `X`, `W` for `mg`.
//!
//! What memcached does, kept: `q` hides `EN` on `mg`, `HD` on `ms` and `md`, and `HD`/`VA` on an
//! `ma` that changed a counter, but never `NF`, `NS`, `EX`, an error, an `mg` hit or an `ma`
//! that created its item; `mg k` on a hit returns the key base64 (`b`) only if the item was
//! stored with a base64 key, while `EN`, `md`, `ms` and `ma` echo the request's key as sent;
//! `ms` answers `c0` when it stored nothing; an `ma T` whose result outgrows the old value
//! changes nothing in 1.6.18 (it sets the expiry of the item the new one replaced), nor here;
//! `md I` and an `ms I C<older>` mark the item stale (`X`) and the first `mg` after wins the
//! token (`W`), later ones see `Z`; `mg N` on a miss creates an empty item and wins. An opaque
//! token too long is answered `CLIENT_ERROR opaque token too long` by `mg` and `ma` when the
//! reply reaches it, after what they changed: an `ma` counts, an `mg N` creates its item, a
//! `T` before the `O` applies (one after it does not), no token is won.
//!
//! What differs, and why:
//! - `E` (explicit CAS, newer memcached) is refused as 1.6.18 refuses it (`CLIENT_ERROR invalid
//!   flag`): the store's uniques only grow, and a client-chosen unique could break that.
//! - `h` always answers `h0`: memcached marks an item fetched on every read, but a read here
//!   changes nothing (it is answered at a read index, on one replica). `l` is the seconds since
//!   the item was last written (memcached bumps its access time at most once a minute, so it is
//!   the same for an item written in the last minute). `u` changes nothing (no read LRU).
//! - `t` counts seconds from the logged time in ms, rounded up (memcached counts whole seconds of
//!   its own clock); an item that a `T` with a past time has just expired answers `t0` (1.6.18
//!   answers a number that wraps around its uptime).
//! - A reply of memcached that depends on its process (`SERVER_ERROR` on an allocation failure)
//!   is answered as the store's memory limit decides.
//! - memcached changes a counter in place (keeping an `ma T`) only if no reply it has still to
//!   send holds the item (an `mg` of the same key earlier in the same pipelined batch makes it
//!   replace the item, and drop the `T`); here the lengths alone decide, as memcached does for a
//!   client that waits for its replies.
//! - `C`, `P`, `L` on `mg` and `N` on `ms` are accepted and ignored, as in 1.6.18.
//!
//! Reads: an `mg` without `T`, `N` or `R` is a read ([`super::is_write`]), but meeting a stale
//! item whose token no client holds it wins the token, which changes the item: such a read must
//! be logged too ([`super::needs_log`]); [`super::answer_read`] refuses it, and
//! [`super::answer_request`] answers it without taking the token (see the engine's contracts).

use crate::sessions::protocol::{MetaFlags, StoreMode};
use crate::sessions::store::{expiry, Op, Reply, Store};

/// An `mg`'s answer and the writes it implies (a vivified item, a `T`, a won token), found
/// without changing the store: applied in order at the same time, they make the store what
/// memcached's would be after the request.
pub(super) fn get(store: &Store, key: &[u8], f: &MetaFlags, now_ms: u64) -> (Vec<u8>, Vec<Op>) {
    let mut ops = Vec::new();
    let hit = store.get(key, now_ms);
    let created = hit.is_none() && f.vivify.is_some();
    // What the reply needs of the item: the live one, or the one `N` creates (empty, flags 0,
    // no expiry yet, the next unique).
    let (flags, value, cas, expires_ms, stored_ms, stale, token_sent, key_binary) = match hit {
        Some(i) => (
            i.flags,
            i.value.as_slice(),
            i.cas,
            i.expires_ms,
            i.stored_ms(),
            i.stale,
            i.token_sent,
            i.key_binary,
        ),
        None if created => {
            ops.push(Op::Vivify { key: key.to_vec() });
            let cas = store.meta().last_cas + 1;
            (0, &[][..], cas, None, now_ms, false, false, false)
        }
        None => {
            if f.opaque_too_long() {
                return (TOO_LONG.to_vec(), ops);
            }
            if f.quiet {
                return (Vec::new(), ops);
            }
            let mut out = b"EN".to_vec();
            echo(&mut out, key, f, f.base64);
            out.extend_from_slice(b"\r\n");
            return (out, ops);
        }
    };
    let mut out = match f.return_value {
        true => format!("VA {}", value.len()).into_bytes(),
        false => b"HD".to_vec(),
    };
    let (mut exp, mut set_expiry, mut won) = (expires_ms, false, false);
    let mut too_long = false;
    for o in &f.order {
        match o {
            b'T' => {
                if let Some(t) = f.ttl {
                    exp = expiry(t, now_ms);
                    set_expiry = true;
                }
            }
            b'N' => {
                if let (true, Some(n)) = (created, f.vivify) {
                    exp = expiry(n, now_ms);
                    set_expiry = true;
                    won = true;
                }
            }
            b'R' => {
                let recache_at = f.recache.and_then(|r| expiry(r, now_ms));
                if !token_sent && !created && exp.is_some_and(|e| recache_at.is_some_and(|r| e < r)) {
                    won = true;
                }
            }
            b's' => out.extend_from_slice(format!(" s{}", value.len()).as_bytes()),
            b't' => ttl(&mut out, exp, now_ms),
            b'c' => out.extend_from_slice(format!(" c{cas}").as_bytes()),
            b'f' => out.extend_from_slice(format!(" f{flags}").as_bytes()),
            b'l' => out.extend_from_slice(format!(" l{}", now_ms.saturating_sub(stored_ms) / 1000).as_bytes()),
            b'h' => out.extend_from_slice(b" h0"),
            b'O' if f.opaque_too_long() => {
                too_long = true;
                break;
            }
            b'O' => opaque(&mut out, f),
            b'k' => key_flag(&mut out, key, key_binary),
            _ => {}
        }
    }
    if too_long {
        // What the walk did before the `O` stays done; no token is won.
        if set_expiry {
            ops.push(amend(key, exp, false));
        }
        return (TOO_LONG.to_vec(), ops);
    }
    // Z before W: a client never sees both.
    if token_sent {
        out.extend_from_slice(b" Z");
    }
    if stale {
        out.extend_from_slice(b" X");
        won |= !token_sent;
    }
    if won {
        out.extend_from_slice(b" W");
    }
    out.extend_from_slice(b"\r\n");
    if f.return_value {
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if set_expiry || won {
        ops.push(Op::Amend {
            key: key.to_vec(),
            set_expiry,
            expires_ms: exp,
            token_sent: won,
        });
    }
    (out, ops)
}

const TOO_LONG: &[u8] = b"CLIENT_ERROR opaque token too long\r\n";

fn amend(key: &[u8], expires_ms: Option<u64>, token_sent: bool) -> Op {
    Op::Amend {
        key: key.to_vec(),
        set_expiry: true,
        expires_ms,
        token_sent,
    }
}

/// `ms`: the mode from `M` (none: set), `C` making a set or replace a cas.
pub(super) fn set(store: &mut Store, key: &[u8], f: &MetaFlags, data: &[u8], now_ms: u64) -> Vec<u8> {
    let mode = match f.mode {
        Some(b'E') => StoreMode::Add,
        Some(b'A') => StoreMode::Append,
        Some(b'P') => StoreMode::Prepend,
        Some(b'R') => StoreMode::Replace,
        _ => StoreMode::Set,
    };
    let op = Op::MetaStore {
        mode,
        key: key.to_vec(),
        flags: f.client_flags.unwrap_or(0),
        exptime: f.ttl.unwrap_or(0),
        cas: f.compare_cas,
        invalidate: f.invalidate,
        key_binary: f.base64,
        data: data.to_vec(),
    };
    let (status, cas): (&[u8], u64) = match store.apply(&op, now_ms) {
        Reply::Stored if f.quiet => return Vec::new(),
        Reply::Stored => (b"HD", store.meta().last_cas),
        Reply::NotStored => (b"NS", 0),
        Reply::Exists => (b"EX", 0),
        Reply::NotFound => (b"NF", 0),
        other => return other.bytes(),
    };
    let mut out = status.to_vec();
    for o in &f.order {
        match o {
            b'O' => opaque(&mut out, f),
            b'k' => key_flag(&mut out, key, f.base64),
            b'c' => out.extend_from_slice(format!(" c{cas}").as_bytes()),
            _ => {}
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `md`: delete, or with `I` mark stale; `C` guards either.
pub(super) fn delete(store: &mut Store, key: &[u8], f: &MetaFlags, now_ms: u64) -> Vec<u8> {
    let op = Op::MetaDelete {
        key: key.to_vec(),
        cas: f.compare_cas,
        invalidate: f.invalidate,
        exptime: f.ttl,
    };
    let status: &[u8] = match store.apply(&op, now_ms) {
        Reply::Deleted if f.quiet => return Vec::new(),
        Reply::Deleted => b"HD",
        Reply::Exists => b"EX",
        _ => b"NF",
    };
    let mut out = status.to_vec();
    echo(&mut out, key, f, f.base64);
    out.extend_from_slice(b"\r\n");
    out
}

/// `ma`: incr (default, `MI`, `M+`) or decr (`MD`, `M-`) by `D` (default 1); on a miss with `N`,
/// create the item holding `J` (default 0), its expiry `N`'s.
pub(super) fn arith(store: &mut Store, key: &[u8], f: &MetaFlags, now_ms: u64) -> Vec<u8> {
    let op = Op::MetaArith {
        incr: !matches!(f.mode, Some(b'D' | b'-')),
        key: key.to_vec(),
        delta: f.delta.unwrap_or(1),
        cas: f.compare_cas,
        vivify: f.vivify.map(|_| f.initial.unwrap_or(0)),
    };
    let (value, in_place, created) = match store.apply(&op, now_ms) {
        Reply::Counter {
            value,
            in_place,
            created,
        } => (value, in_place, created),
        Reply::NotFound | Reply::Exists if f.opaque_too_long() => return TOO_LONG.to_vec(),
        reply @ (Reply::NotFound | Reply::Exists) => {
            let mut out = match reply {
                Reply::NotFound => b"NF".to_vec(),
                _ => b"EX".to_vec(),
            };
            echo(&mut out, key, f, f.base64);
            out.extend_from_slice(b"\r\n");
            return out;
        }
        Reply::OutOfMemory => return b"SERVER_ERROR out of memory\r\n".to_vec(),
        other => return other.bytes(),
    };
    let (cas, expires_ms) = store.raw(key).map_or((0, None), |i| (i.cas, i.expires_ms));
    let digits = value.to_string();
    let mut out = match f.return_value {
        true => format!("VA {}", digits.len()).into_bytes(),
        false => b"HD".to_vec(),
    };
    let (mut exp, mut set_expiry, mut too_long) = (expires_ms, false, false);
    for o in &f.order {
        match o {
            b'c' => out.extend_from_slice(format!(" c{cas}").as_bytes()),
            b't' => ttl(&mut out, exp, now_ms),
            b'T' => {
                if let Some(t) = f.ttl {
                    exp = expiry(t, now_ms);
                    set_expiry = true;
                }
            }
            b'N' => {
                if let (true, Some(n)) = (created, f.vivify) {
                    exp = expiry(n, now_ms);
                    set_expiry = true;
                }
            }
            b'O' if f.opaque_too_long() => {
                too_long = true;
                break;
            }
            b'O' => opaque(&mut out, f),
            b'k' => key_flag(&mut out, key, f.base64),
            _ => {}
        }
    }
    if f.return_value {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(digits.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    // 1.6.18 sets the expiry on the item it holds: the counter's own when it changed in place
    // or was created, the replaced one's otherwise (so lost).
    if set_expiry && (in_place || created) {
        store.apply(&amend(key, exp, false), now_ms);
    }
    match (too_long, f.quiet && !created) {
        (true, _) => TOO_LONG.to_vec(),
        (false, true) => Vec::new(),
        (false, false) => out,
    }
}

/// The `O` and `k` flags, in request order (the replies that carry no item's data).
fn echo(out: &mut Vec<u8>, key: &[u8], f: &MetaFlags, binary: bool) {
    for o in &f.order {
        match o {
            b'O' => opaque(out, f),
            b'k' => key_flag(out, key, binary),
            _ => {}
        }
    }
}

fn opaque(out: &mut Vec<u8>, f: &MetaFlags) {
    if let Some(o) = &f.opaque {
        out.extend_from_slice(b" O");
        out.extend_from_slice(o);
    }
}

fn key_flag(out: &mut Vec<u8>, key: &[u8], binary: bool) {
    out.extend_from_slice(b" k");
    if binary {
        out.extend_from_slice(&base64_encode(key));
        out.extend_from_slice(b" b");
    } else {
        out.extend_from_slice(key);
    }
}

/// ` t<seconds left>`, `-1` for never (rounded up from the logged ms; 0 once gone).
fn ttl(out: &mut Vec<u8>, expires_ms: Option<u64>, now_ms: u64) {
    let t = match expires_ms {
        None => "-1".to_string(),
        Some(at) => at.saturating_sub(now_ms).div_ceil(1000).to_string(),
    };
    out.extend_from_slice(b" t");
    out.extend_from_slice(t.as_bytes());
}

/// Standard base64 with padding (memcached's encoder).
pub(crate) fn base64_encode(data: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "meta_tests.rs"]
mod tests;
