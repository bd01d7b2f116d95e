//! The memcached wire protocol, parsing only: it owns the incremental parser that turns a
//! connection's buffered bytes into one [`Request`] at a time, and the mapping from every
//! [`ProtoError`] to the reply bytes memcached 1.6 (Debian's 1.6.18, compared in
//! `tests/memcached_golden.rs`) sends for it. The text protocol lives in `text`, the meta protocol
//! in `meta`; both share the line splitting, tokenizing and memcached's number parsing here.
//!
//! The parser keeps no state between calls: the caller keeps the unconsumed bytes and calls again
//! when more arrive. What memcached does across calls is returned as data: [`Parsed::Skip`] says
//! how many bytes of a refused data block to discard (memcached's "swallow" state), and a fatal
//! `Err` says the caller must close the connection.

mod meta;
mod text;

pub use meta::{MetaFlags, MetaRequest, MAX_OPAQUE_TOKEN};
pub use text::{StoreMode, TextRequest};

/// The longest key memcached accepts (`KEY_MAX_LENGTH`).
pub const MAX_KEY_LEN: usize = 250;

/// Bounds on what one request may hold, so a client cannot make the parser buffer without end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest data block of a storage command (memcached's `-I`, default 1 MiB).
    pub max_item_size: usize,
    /// The longest command line without its line ending (memcached: 2048 bytes). A `get` or
    /// `gets` line, which memcached lets grow with its keys, may instead reach
    /// `max_keys * (MAX_KEY_LEN + 1) + max_line`.
    pub max_line: usize,
    /// The most keys one `get gets gat gats` may ask for (memcached has no bound).
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_item_size: 1024 * 1024,
            max_line: 2048,
            max_keys: 1024,
        }
    }
}

impl Limits {
    fn max_get_line(&self) -> usize {
        self.max_keys
            .saturating_mul(MAX_KEY_LEN + 1)
            .saturating_add(self.max_line)
    }
}

/// One parsed request (serde: the session store logs its writes as they were asked).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    Text(TextRequest),
    Meta(MetaRequest),
}

/// What [`parse`] found at the start of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// No whole request yet: call again with more bytes (none are consumed).
    Incomplete,
    /// A request, and how many bytes it took.
    Complete { request: Request, consumed: usize },
    /// A refused request: answer `error.reply()` unless `silent` (the text protocol's `noreply`
    /// silences memcached's errors too), drop `consumed` bytes and go on.
    Rejected {
        error: ProtoError,
        silent: bool,
        consumed: usize,
    },
    /// A refused storage command whose data block memcached swallows: answer as for `Rejected`,
    /// drop the `consumed` bytes of the command line, then discard the next `bytes` bytes (the
    /// data block and its `\r\n`) whenever they arrive, without parsing them.
    Skip {
        error: ProtoError,
        silent: bool,
        consumed: usize,
        bytes: usize,
    },
}

/// Why a request was refused; [`ProtoError::reply`] gives memcached's bytes for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("unknown command or wrong number of arguments")]
    UnknownCommand,
    #[error("bad command line format")]
    BadFormat,
    #[error("bad delete command line")]
    DeleteUsage,
    #[error("data block not followed by \\r\\n")]
    BadDataChunk,
    #[error("object too large")]
    TooLarge,
    #[error("invalid numeric delta argument")]
    InvalidDelta,
    #[error("invalid exptime argument")]
    InvalidExptime,
    #[error("more keys than the limit")]
    TooManyKeys,
    #[error("invalid meta flag")]
    InvalidFlag,
    #[error("duplicate meta flag")]
    DuplicateFlag,
    #[error("invalid or duplicate meta flag (md, ma)")]
    InvalidOrDuplicateFlag,
    #[error("bad numeric token in a meta flag")]
    BadToken,
    #[error("opaque token too long")]
    OpaqueTooLong,
    #[error("more than 17 flags on an mg")]
    GetFlagsTooLong,
    #[error("more than 16 flags on an ms, 17 on an md or ma")]
    FlagsTooLong,
    #[error("base64 key does not decode")]
    DecodeKey,
    #[error("invalid numeric initial value (J)")]
    InvalidInitial,
    #[error("invalid numeric delta value (D)")]
    InvalidDeltaValue,
    #[error("M token of the wrong length")]
    ModeLength,
    #[error("invalid mode for ms")]
    InvalidSetMode,
    #[error("invalid mode for ma")]
    InvalidArithMode,
    #[error("command line too long")]
    LineTooLong,
    #[error("binary protocol")]
    Binary,
}

impl ProtoError {
    /// The reply memcached 1.6 sends for this error. `LineTooLong` is empty: memcached closes the
    /// connection without a word. `Binary` is phalanx's own line (memcached speaks binary).
    pub fn reply(&self) -> &'static [u8] {
        match self {
            ProtoError::UnknownCommand => b"ERROR\r\n",
            ProtoError::BadFormat => b"CLIENT_ERROR bad command line format\r\n",
            ProtoError::DeleteUsage => b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
            ProtoError::BadDataChunk => b"CLIENT_ERROR bad data chunk\r\n",
            ProtoError::TooLarge => b"SERVER_ERROR object too large for cache\r\n",
            ProtoError::InvalidDelta => b"CLIENT_ERROR invalid numeric delta argument\r\n",
            ProtoError::InvalidExptime => b"CLIENT_ERROR invalid exptime argument\r\n",
            ProtoError::TooManyKeys => b"CLIENT_ERROR too many keys\r\n",
            ProtoError::InvalidFlag => b"CLIENT_ERROR invalid flag\r\n",
            ProtoError::DuplicateFlag => b"CLIENT_ERROR duplicate flag\r\n",
            ProtoError::InvalidOrDuplicateFlag => b"CLIENT_ERROR invalid or duplicate flag\r\n",
            ProtoError::BadToken => b"CLIENT_ERROR bad token in command line format\r\n",
            ProtoError::OpaqueTooLong => b"CLIENT_ERROR opaque token too long\r\n",
            ProtoError::GetFlagsTooLong => b"CLIENT_ERROR options flags are too long\r\n",
            ProtoError::FlagsTooLong => b"CLIENT_ERROR options flags too long\r\n",
            ProtoError::DecodeKey => b"CLIENT_ERROR error decoding key\r\n",
            ProtoError::InvalidInitial => b"CLIENT_ERROR invalid numeric initial value\r\n",
            ProtoError::InvalidDeltaValue => b"CLIENT_ERROR invalid numeric delta value\r\n",
            ProtoError::ModeLength => b"CLIENT_ERROR incorrect length for M token\r\n",
            ProtoError::InvalidSetMode => b"CLIENT_ERROR invalid mode for ms M token\r\n",
            ProtoError::InvalidArithMode => b"CLIENT_ERROR invalid mode for ma M token\r\n",
            ProtoError::LineTooLong => b"",
            ProtoError::Binary => b"SERVER_ERROR binary protocol not supported, use the text protocol\r\n",
        }
    }

    /// Whether the caller must close the connection after the reply (only `parse`'s `Err`s).
    pub fn closes(&self) -> bool {
        matches!(self, ProtoError::LineTooLong | ProtoError::Binary)
    }
}

/// Parses the request at the start of `buf`. `Ok` for anything memcached answers and goes on
/// after; `Err` only for what ends the connection: a line longer than the limit (memcached closes
/// silently) or the binary protocol's magic byte 0x80 (refused with one line, then closed).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtoError> {
    if buf.first() == Some(&0x80) {
        return Err(ProtoError::Binary);
    }
    let bound = if is_get_line(buf) {
        limits.max_get_line()
    } else {
        limits.max_line
    };
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > bound {
            Err(ProtoError::LineTooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    if nl > bound {
        return Err(ProtoError::LineTooLong);
    }
    // memcached strips one '\r' before the '\n' (not from a line that is only "\r").
    let line = if nl > 1 && buf[nl - 1] == b'\r' {
        &buf[..nl - 1]
    } else {
        &buf[..nl]
    };
    let consumed = nl + 1;
    let tokens = tokenize(line);
    match tokens.first() {
        Some(&(b"mg" | b"ms" | b"md" | b"ma" | b"mn")) => meta::parse(&tokens, buf, consumed, limits),
        _ => text::parse(&tokens, buf, consumed, limits),
    }
}

/// memcached lets `get` and `gets` lines outgrow the line limit (large multigets): at most 100
/// leading spaces, then `get ` or `gets `.
fn is_get_line(buf: &[u8]) -> bool {
    let spaces = buf.iter().take_while(|&&b| b == b' ').count();
    let rest = &buf[spaces..];
    spaces <= 100 && (rest.starts_with(b"get ") || rest.starts_with(b"gets "))
}

/// memcached's tokenizer: split on single spaces, runs of spaces make no empty tokens.
fn tokenize(line: &[u8]) -> Vec<&[u8]> {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty()).collect()
}

/// The outcome of parsing a data block of `bytes` bytes after a command line of `consumed` bytes.
enum Block<'a> {
    Incomplete,
    Bad { consumed: usize },
    Good { data: &'a [u8], consumed: usize },
}

fn data_block(buf: &[u8], consumed: usize, bytes: usize) -> Block<'_> {
    let end = consumed.saturating_add(bytes).saturating_add(2);
    if buf.len() < end {
        return Block::Incomplete;
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Block::Bad { consumed: end };
    }
    Block::Good {
        data: &buf[consumed..end - 2],
        consumed: end,
    }
}

/// An optional sign and the decimal digits after it (None: no digits, or anything else).
fn signed_digits(tok: &[u8]) -> Option<(bool, &[u8])> {
    let (neg, digits) = match tok.first() {
        Some(b'-') => (true, &tok[1..]),
        Some(b'+') => (false, &tok[1..]),
        _ => (false, tok),
    };
    (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit)).then_some((neg, digits))
}

/// `strtoull`-style parsing as memcached's `safe_strto*` do it: an optional sign, decimal digits,
/// nothing after. A '-' negates modulo 2^64. `None` when there are no digits, junk follows or the
/// magnitude overflows 64 bits.
fn strtou64(tok: &[u8]) -> Option<(u64, bool)> {
    let (neg, digits) = signed_digits(tok)?;
    let mut v: u64 = 0;
    for d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((if neg { v.wrapping_neg() } else { v }, neg))
}

/// memcached's `safe_strtoull`: a value that is negative as a signed number is refused only if
/// the text had a '-'.
fn safe_strtoull(tok: &[u8]) -> Option<u64> {
    let (v, neg) = strtou64(tok)?;
    if neg && i64::try_from(v).is_err() {
        return None;
    }
    Some(v)
}

/// memcached's `safe_strtoul` on 64-bit Linux: as `safe_strtoull`, then truncated to 32 bits.
fn safe_strtoul(tok: &[u8]) -> Option<u32> {
    safe_strtoull(tok).map(|v| v as u32)
}

/// memcached's `safe_strtol`: `strtol` into a `long`, then truncated to 32 bits (so 4294967299
/// reads as 3, as memcached 1.6.18 does).
fn safe_strtol(tok: &[u8]) -> Option<i32> {
    let (neg, digits) = signed_digits(tok)?;
    let mut v: i64 = 0;
    for d in digits {
        let d = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if neg { v.checked_sub(d)? } else { v.checked_add(d)? };
    }
    Some(v as i32)
}

#[cfg(test)]
mod tests;
