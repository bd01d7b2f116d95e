//! The memcached text protocol: it owns the commands `get gets gat gats set add replace append
//! prepend cas delete incr decr touch version stats flush_all verbosity quit`, their arity and
//! argument checks in memcached 1.6.18's order, and which errors `noreply` silences.

use super::{
    data_block, safe_strtol, safe_strtoul, safe_strtoull, Block, Limits, Parsed, ProtoError, Request, MAX_KEY_LEN,
};

/// The five storage commands and `cas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StoreMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

/// One text-protocol request. Keys are raw bytes (memcached accepts any byte but space and
/// newline in a key, control characters included); exptimes are as sent (the store interprets
/// them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TextRequest {
    Get {
        keys: Vec<Vec<u8>>,
        cas: bool,
    },
    Gat {
        exptime: i32,
        keys: Vec<Vec<u8>>,
        cas: bool,
    },
    Store {
        mode: StoreMode,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        flags: u32,
        exptime: i32,
        cas: Option<u64>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        noreply: bool,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        noreply: bool,
    },
    Arith {
        incr: bool,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        delta: u64,
        noreply: bool,
    },
    Touch {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        exptime: i32,
        noreply: bool,
    },
    Version,
    Stats {
        args: Vec<Vec<u8>>,
    },
    FlushAll {
        delay: Option<i32>,
        noreply: bool,
    },
    Verbosity {
        level: u32,
        noreply: bool,
    },
    Quit,
}

fn done(request: TextRequest, consumed: usize) -> Parsed {
    Parsed::Complete {
        request: Request::Text(request),
        consumed,
    }
}

fn reject(error: ProtoError, silent: bool, consumed: usize) -> Parsed {
    Parsed::Rejected {
        error,
        silent,
        consumed,
    }
}

/// memcached's `set_noreply_maybe`: the last token is exactly `noreply`.
fn noreply(t: &[&[u8]]) -> bool {
    t.last() == Some(&&b"noreply"[..])
}

pub(super) fn parse(t: &[&[u8]], buf: &[u8], consumed: usize, limits: &Limits) -> Result<Parsed, ProtoError> {
    let n = t.len();
    let unknown = Ok(reject(ProtoError::UnknownCommand, false, consumed));
    let Some(&cmd) = t.first() else { return unknown };
    Ok(match cmd {
        b"get" | b"gets" if n >= 2 => keys(&t[1..], limits, consumed, |keys| TextRequest::Get {
            keys,
            cas: cmd == b"gets",
        }),
        b"gat" | b"gats" if n >= 2 => match safe_strtol(t[1]) {
            None => reject(ProtoError::InvalidExptime, false, consumed),
            Some(exptime) => keys(&t[2..], limits, consumed, |keys| TextRequest::Gat {
                exptime,
                keys,
                cas: cmd == b"gats",
            }),
        },
        b"set" | b"add" | b"replace" | b"append" | b"prepend" if n == 5 || n == 6 => {
            let mode = match cmd {
                b"set" => StoreMode::Set,
                b"add" => StoreMode::Add,
                b"replace" => StoreMode::Replace,
                b"append" => StoreMode::Append,
                _ => StoreMode::Prepend,
            };
            store(t, mode, buf, consumed, limits)
        }
        b"cas" if n == 6 || n == 7 => store(t, StoreMode::Cas, buf, consumed, limits),
        b"delete" if (2..=4).contains(&n) => {
            let silent = noreply(t);
            let hold_is_zero = n > 2 && t[2] == b"0";
            let valid = n == 2 || (n == 3 && (hold_is_zero || silent)) || (n == 4 && hold_is_zero && silent);
            if !valid {
                reject(ProtoError::DeleteUsage, silent, consumed)
            } else if t[1].len() > MAX_KEY_LEN {
                reject(ProtoError::BadFormat, silent, consumed)
            } else {
                done(
                    TextRequest::Delete {
                        key: t[1].to_vec(),
                        noreply: silent,
                    },
                    consumed,
                )
            }
        }
        b"incr" | b"decr" if n == 3 || n == 4 => {
            let silent = noreply(t);
            if t[1].len() > MAX_KEY_LEN {
                reject(ProtoError::BadFormat, silent, consumed)
            } else {
                match safe_strtoull(t[2]) {
                    None => reject(ProtoError::InvalidDelta, silent, consumed),
                    Some(delta) => done(
                        TextRequest::Arith {
                            incr: cmd == b"incr",
                            key: t[1].to_vec(),
                            delta,
                            noreply: silent,
                        },
                        consumed,
                    ),
                }
            }
        }
        b"touch" if n == 3 || n == 4 => {
            let silent = noreply(t);
            if t[1].len() > MAX_KEY_LEN {
                reject(ProtoError::BadFormat, silent, consumed)
            } else {
                match safe_strtol(t[2]) {
                    None => reject(ProtoError::InvalidExptime, silent, consumed),
                    Some(exptime) => done(
                        TextRequest::Touch {
                            key: t[1].to_vec(),
                            exptime,
                            noreply: silent,
                        },
                        consumed,
                    ),
                }
            }
        }
        b"version" => done(TextRequest::Version, consumed),
        b"quit" => done(TextRequest::Quit, consumed),
        b"stats" => done(
            TextRequest::Stats {
                args: t[1..].iter().map(|a| a.to_vec()).collect(),
            },
            consumed,
        ),
        b"flush_all" if n <= 3 => {
            let silent = noreply(t);
            if n == if silent { 2 } else { 1 } {
                done(
                    TextRequest::FlushAll {
                        delay: None,
                        noreply: silent,
                    },
                    consumed,
                )
            } else {
                match safe_strtol(t[1]) {
                    None => reject(ProtoError::InvalidExptime, silent, consumed),
                    Some(d) => done(
                        TextRequest::FlushAll {
                            delay: Some(d),
                            noreply: silent,
                        },
                        consumed,
                    ),
                }
            }
        }
        b"verbosity" if n == 2 || n == 3 => {
            let silent = noreply(t);
            match safe_strtoul(t[1]) {
                None => reject(ProtoError::BadFormat, silent, consumed),
                Some(level) => done(TextRequest::Verbosity { level, noreply: silent }, consumed),
            }
        }
        _ => return unknown,
    })
}

fn keys(t: &[&[u8]], limits: &Limits, consumed: usize, make: impl FnOnce(Vec<Vec<u8>>) -> TextRequest) -> Parsed {
    if t.iter().any(|k| k.len() > MAX_KEY_LEN) {
        return reject(ProtoError::BadFormat, false, consumed);
    }
    if t.len() > limits.max_keys {
        return reject(ProtoError::TooManyKeys, false, consumed);
    }
    done(make(t.iter().map(|k| k.to_vec()).collect()), consumed)
}

/// `set add replace append prepend cas`, checked in memcached's `process_update_command` order.
fn store(t: &[&[u8]], mode: StoreMode, buf: &[u8], consumed: usize, limits: &Limits) -> Parsed {
    let silent = noreply(t);
    if t[1].len() > MAX_KEY_LEN {
        return reject(ProtoError::BadFormat, silent, consumed);
    }
    let (Some(flags), Some(exptime), Some(bytes)) = (safe_strtoul(t[2]), safe_strtol(t[3]), safe_strtol(t[4])) else {
        return reject(ProtoError::BadFormat, silent, consumed);
    };
    let cas = if mode == StoreMode::Cas {
        match safe_strtoull(t[5]) {
            None => return reject(ProtoError::BadFormat, silent, consumed),
            some => some,
        }
    } else {
        None
    };
    let Ok(bytes) = usize::try_from(bytes) else {
        return reject(ProtoError::BadFormat, silent, consumed);
    };
    if bytes > limits.max_item_size {
        return Parsed::Skip {
            error: ProtoError::TooLarge,
            silent,
            consumed,
            bytes: bytes + 2,
        };
    }
    match data_block(buf, consumed, bytes) {
        Block::Incomplete => Parsed::Incomplete,
        Block::Bad { consumed } => reject(ProtoError::BadDataChunk, silent, consumed),
        Block::Good { data, consumed } => done(
            TextRequest::Store {
                mode,
                key: t[1].to_vec(),
                flags,
                exptime,
                cas,
                data: data.to_vec(),
                noreply: silent,
            },
            consumed,
        ),
    }
}
