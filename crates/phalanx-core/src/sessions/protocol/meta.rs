//! The memcached meta protocol: it owns `mg ms md ma mn`, their flags (memcached 1.6.18's set,
//! parsed into [`MetaFlags`] in the order and with the error precedence of its
//! `_meta_flag_preparse`), base64 keys (`b`), and which refusals swallow an `ms` data block.

use super::{
    data_block, safe_strtol, safe_strtoul, safe_strtoull, Block, Limits, Parsed, ProtoError, Request, MAX_KEY_LEN,
};

/// The longest `O` token memcached echoes, the `O` included (`MFLAG_MAX_OPAQUE_LENGTH`). `ms`
/// and `md` refuse a longer one before doing anything; `mg` and `ma` only when their reply
/// reaches it, after what they changed (1.6.18): the parser passes those on, the engine answers
/// the error ([`MetaFlags::opaque_too_long`]).
pub const MAX_OPAQUE_TOKEN: usize = 32;
/// The fewest tokens (command, key, arguments) memcached refuses as too many flags: its
/// `ntokens > MFLAG_MAX_OPT_LENGTH` (20), counting the terminal empty token.
const TOO_MANY_TOKENS: usize = 20;

/// A meta command's flags. Return flags are booleans; flags with a token hold it parsed.
/// memcached 1.6.18 knows no `E` (explicit cas) and no `x`: both are refused as unknown there,
/// and here (phalanx keeps 1.6.18's refusal: an explicit CAS value would let a client move an
/// item's unique backwards, and the store's uniques only grow). `order` keeps the flags'
/// letters as sent: memcached walks them in that order to build its reply (return flags come
/// back in request order, and `T`, `N`, `R`, `t` act on the item as the walk reaches them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetaFlags {
    /// `b`: the key was sent base64-encoded (the request's key is decoded).
    pub base64: bool,
    /// `O`: an opaque token echoed in the reply (without the `O`).
    #[serde(with = "serde_bytes")]
    pub opaque: Option<Vec<u8>>,
    /// `q`: no reply on the common outcome (EN, HD, NF).
    pub quiet: bool,
    /// `k`: return the key.
    pub return_key: bool,
    /// `c`: return the cas unique.
    pub return_cas: bool,
    /// `f`: return the client flags.
    pub return_flags: bool,
    /// `s`: return the item size.
    pub return_size: bool,
    /// `t`: return the remaining TTL.
    pub return_ttl: bool,
    /// `v`: return the value.
    pub return_value: bool,
    /// `h`: return whether the item was hit before.
    pub return_hit: bool,
    /// `l`: return the time since last access.
    pub return_last_access: bool,
    /// `u`: do not bump the item in the LRU.
    pub no_update: bool,
    /// `I`: invalidate (mark stale) instead of removing or replacing.
    pub invalidate: bool,
    /// `P`, `L`: proxy hints, accepted and ignored.
    pub proxy_hint: bool,
    /// `C`: compare this cas unique.
    pub compare_cas: Option<u64>,
    /// `T`: set this TTL.
    pub ttl: Option<i32>,
    /// `N`: vivify on miss with this TTL.
    pub vivify: Option<i32>,
    /// `R`: win the recache when the TTL is below this.
    pub recache: Option<i32>,
    /// `F`: client flags to store.
    pub client_flags: Option<u32>,
    /// `M`: the mode byte (`ms`: E A P R S; `ma`: I + D -; upper case only, as in 1.6.18), as sent.
    pub mode: Option<u8>,
    /// `J`: `ma`'s initial value on autovivify.
    pub initial: Option<u64>,
    /// `D`: `ma`'s delta.
    pub delta: Option<u64>,
    /// Every flag's letter, in the order sent (each at most once).
    #[serde(default, with = "serde_bytes")]
    pub order: Vec<u8>,
}

impl MetaFlags {
    /// Whether the `O` token is longer than memcached echoes (only an `mg` or `ma` holds one).
    pub fn opaque_too_long(&self) -> bool {
        self.opaque.as_ref().is_some_and(|o| o.len() >= MAX_OPAQUE_TOKEN)
    }
}

/// One meta-protocol request; keys are decoded when `b` was given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MetaRequest {
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        flags: MetaFlags,
    },
    Set {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        flags: MetaFlags,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        flags: MetaFlags,
    },
    Arith {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        flags: MetaFlags,
    },
    Noop,
}

fn done(request: MetaRequest, consumed: usize) -> Parsed {
    Parsed::Complete {
        request: Request::Meta(request),
        consumed,
    }
}

fn reject(error: ProtoError, consumed: usize) -> Parsed {
    // The meta protocol's `q` never silences an error.
    Parsed::Rejected {
        error,
        silent: false,
        consumed,
    }
}

pub(super) fn parse(t: &[&[u8]], buf: &[u8], consumed: usize, limits: &Limits) -> Result<Parsed, ProtoError> {
    let cmd = t[0];
    if cmd == b"mn" {
        return Ok(done(MetaRequest::Noop, consumed));
    }
    if t.len() < 2 {
        return Ok(reject(ProtoError::UnknownCommand, consumed));
    }
    if t[1].len() > MAX_KEY_LEN {
        return Ok(reject(ProtoError::BadFormat, consumed));
    }
    // Checked before anything else of the flags (for ms, before the data length: nothing is
    // swallowed).
    if t.len() >= TOO_MANY_TOKENS {
        let error = match cmd {
            b"mg" => ProtoError::GetFlagsTooLong,
            _ => ProtoError::FlagsTooLong,
        };
        return Ok(reject(error, consumed));
    }
    if cmd == b"ms" {
        return Ok(set(t, buf, consumed, limits));
    }
    let parsed = preparse(t[1], &t[2..]);
    // md and ma answer every flag error alike.
    let parsed = match (cmd, parsed) {
        (b"md" | b"ma", Err(_)) => Err(ProtoError::InvalidOrDuplicateFlag),
        (_, p) => p,
    };
    let parsed = match cmd {
        b"md" => parsed.and_then(|p| opaque_ok(&t[2..]).map(|()| p)),
        _ => parsed,
    };
    let (key, flags) = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(reject(e, consumed)),
    };
    Ok(match cmd {
        b"mg" => done(MetaRequest::Get { key, flags }, consumed),
        b"md" => done(MetaRequest::Delete { key, flags }, consumed),
        _ => match flags.mode {
            None | Some(b'I' | b'+' | b'D' | b'-') => done(MetaRequest::Arith { key, flags }, consumed),
            Some(_) => reject(ProtoError::InvalidArithMode, consumed),
        },
    })
}

/// `ms <key> <datalen> <flags>*`: refusals before the data length is known leave the data block
/// to be parsed as commands (as memcached does); later ones swallow it.
fn set(t: &[&[u8]], buf: &[u8], consumed: usize, limits: &Limits) -> Parsed {
    let Some(len) = t.get(2).and_then(|l| safe_strtol(l)) else {
        return reject(ProtoError::BadFormat, consumed);
    };
    let Ok(bytes) = usize::try_from(len) else {
        return reject(ProtoError::BadFormat, consumed);
    };
    let skip = |error| Parsed::Skip {
        error,
        silent: false,
        consumed,
        bytes: bytes + 2,
    };
    let (key, flags) = match preparse(t[1], &t[3..]).and_then(|p| opaque_ok(&t[3..]).map(|()| p)) {
        Ok(p) => p,
        Err(e) => return skip(e),
    };
    if !matches!(flags.mode, None | Some(b'E' | b'A' | b'P' | b'R' | b'S')) {
        return skip(ProtoError::InvalidSetMode);
    }
    if bytes > limits.max_item_size {
        return skip(ProtoError::TooLarge);
    }
    match data_block(buf, consumed, bytes) {
        Block::Incomplete => Parsed::Incomplete,
        Block::Bad { consumed } => reject(ProtoError::BadDataChunk, consumed),
        Block::Good { data, consumed } => done(
            MetaRequest::Set {
                key,
                flags,
                data: data.to_vec(),
            },
            consumed,
        ),
    }
}

fn opaque_ok(flags: &[&[u8]]) -> Result<(), ProtoError> {
    match flags
        .iter()
        .any(|f| f.first() == Some(&b'O') && f.len() > MAX_OPAQUE_TOKEN)
    {
        true => Err(ProtoError::OpaqueTooLong),
        false => Ok(()),
    }
}

/// memcached's `_meta_flag_preparse`: an unknown or repeated flag stops at once; a bad token is
/// remembered and parsing goes on, the last such error winning (`F`'s leaves the previous one).
fn preparse(raw_key: &[u8], tokens: &[&[u8]]) -> Result<(Vec<u8>, MetaFlags), ProtoError> {
    let mut f = MetaFlags::default();
    let mut key = raw_key.to_vec();
    let mut seen = [false; 128];
    let mut error: Option<ProtoError> = None;
    let mut has_error = false;
    let mut fail = |e: ProtoError, has_error: &mut bool| {
        error = Some(e);
        *has_error = true;
    };
    for tok in tokens {
        let (o, arg) = (tok[0], &tok[1..]);
        if o >= 127 || seen[usize::from(o)] {
            return Err(ProtoError::DuplicateFlag);
        }
        seen[usize::from(o)] = true;
        f.order.push(o);
        match o {
            b'b' => match base64_decode(raw_key) {
                Some(k) => {
                    f.base64 = true;
                    key = k;
                }
                None => fail(ProtoError::DecodeKey, &mut has_error),
            },
            b'N' | b'T' | b'R' => match safe_strtol(arg) {
                Some(v) => {
                    *match o {
                        b'N' => &mut f.vivify,
                        b'T' => &mut f.ttl,
                        _ => &mut f.recache,
                    } = Some(v)
                }
                None => fail(ProtoError::BadToken, &mut has_error),
            },
            b'l' => f.return_last_access = true,
            b'O' => f.opaque = Some(arg.to_vec()),
            b'P' | b'L' => f.proxy_hint = true,
            b'k' => f.return_key = true,
            b's' => f.return_size = true,
            b't' => f.return_ttl = true,
            b'c' => f.return_cas = true,
            b'f' => f.return_flags = true,
            b'v' => f.return_value = true,
            b'h' => f.return_hit = true,
            b'u' => f.no_update = true,
            b'q' => f.quiet = true,
            b'I' => f.invalidate = true,
            b'F' => match safe_strtoul(arg) {
                Some(v) => f.client_flags = Some(v),
                None => has_error = true,
            },
            b'C' => match safe_strtoull(arg) {
                Some(v) => f.compare_cas = Some(v),
                None => fail(ProtoError::BadToken, &mut has_error),
            },
            b'M' => match arg {
                [m] => f.mode = Some(*m),
                _ => fail(ProtoError::ModeLength, &mut has_error),
            },
            b'J' => match safe_strtoull(arg) {
                Some(v) => f.initial = Some(v),
                None => fail(ProtoError::InvalidInitial, &mut has_error),
            },
            b'D' => match safe_strtoull(arg) {
                Some(v) => f.delta = Some(v),
                None => fail(ProtoError::InvalidDeltaValue, &mut has_error),
            },
            _ => return Err(ProtoError::InvalidFlag),
        }
    }
    match has_error {
        true => Err(error.unwrap_or(ProtoError::BadFormat)),
        false => Ok((key, f)),
    }
}

/// Standard base64 with padding, as memcached's decoder wants it: whole 4-character groups, `=`
/// only at the end.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let groups = s.len() / 4;
    for (i, g) in s.chunks(4).enumerate() {
        let pad = g.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != groups) {
            return None;
        }
        let mut n = 0u32;
        for &c in &g[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}
