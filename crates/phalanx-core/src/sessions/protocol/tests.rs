use super::*;
use proptest::prelude::*;

fn lim() -> Limits {
    Limits::default()
}

fn one(input: &[u8]) -> Parsed {
    match parse(input, &lim()) {
        Ok(p) => p,
        Err(e) => panic!("fatal {e:?} for {input:?}"),
    }
}

fn text(input: &[u8]) -> TextRequest {
    match one(input) {
        Parsed::Complete {
            request: Request::Text(r),
            consumed,
        } => {
            assert_eq!(consumed, input.len(), "{input:?}");
            r
        }
        other => panic!("{input:?} gave {other:?}"),
    }
}

fn meta(input: &[u8]) -> MetaRequest {
    match one(input) {
        Parsed::Complete {
            request: Request::Meta(r),
            consumed,
        } => {
            assert_eq!(consumed, input.len(), "{input:?}");
            r
        }
        other => panic!("{input:?} gave {other:?}"),
    }
}

/// The reply bytes for a refused request, empty when silenced, and what it consumed.
fn refusal(input: &[u8]) -> (&'static [u8], usize) {
    match one(input) {
        Parsed::Rejected {
            error,
            silent,
            consumed,
        } => (if silent { b"" } else { error.reply() }, consumed),
        other => panic!("{input:?} gave {other:?}"),
    }
}

fn err(input: &[u8]) -> &'static [u8] {
    let (reply, consumed) = refusal(input);
    assert_eq!(consumed, input.len(), "{input:?}");
    reply
}

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[test]
fn get_and_gets_take_many_keys() {
    assert_eq!(
        text(b"get a b c\r\n"),
        TextRequest::Get {
            keys: vec![k("a"), k("b"), k("c")],
            cas: false
        }
    );
    assert_eq!(
        text(b"gets a\r\n"),
        TextRequest::Get {
            keys: vec![k("a")],
            cas: true
        }
    );
    assert_eq!(
        text(b"  get  a  \n"),
        TextRequest::Get {
            keys: vec![k("a")],
            cas: false
        }
    );
    // memcached keeps control characters in keys (1.6.18 answers END for `get a\x01b`).
    assert_eq!(
        text(b"get a\x01b\r\n"),
        TextRequest::Get {
            keys: vec![b"a\x01b".to_vec()],
            cas: false
        }
    );
    let max = format!("get {}\r\n", "k".repeat(250));
    assert_eq!(
        text(max.as_bytes()),
        TextRequest::Get {
            keys: vec![k(&"k".repeat(250))],
            cas: false
        }
    );
}

#[test]
fn gat_and_gats_take_an_exptime_then_keys() {
    assert_eq!(
        text(b"gat 10 a b\r\n"),
        TextRequest::Gat {
            exptime: 10,
            keys: vec![k("a"), k("b")],
            cas: false
        }
    );
    assert_eq!(
        text(b"gats -1 a\r\n"),
        TextRequest::Gat {
            exptime: -1,
            keys: vec![k("a")],
            cas: true
        }
    );
    assert_eq!(
        text(b"gat 10\r\n"),
        TextRequest::Gat {
            exptime: 10,
            keys: vec![],
            cas: false
        }
    );
    assert_eq!(err(b"gat abc k\r\n"), b"CLIENT_ERROR invalid exptime argument\r\n");
    assert_eq!(err(b"gat\r\n"), b"ERROR\r\n");
}

#[test]
fn storage_commands_read_their_data_block() {
    for (cmd, mode) in [
        ("set", StoreMode::Set),
        ("add", StoreMode::Add),
        ("replace", StoreMode::Replace),
        ("append", StoreMode::Append),
        ("prepend", StoreMode::Prepend),
    ] {
        let input = format!("{cmd} key 5 100 3\r\na\nc\r\n");
        assert_eq!(
            text(input.as_bytes()),
            TextRequest::Store {
                mode,
                key: k("key"),
                flags: 5,
                exptime: 100,
                cas: None,
                data: k("a\nc"),
                noreply: false
            }
        );
    }
    assert_eq!(
        text(b"cas key 0 0 1 77 noreply\r\nx\r\n"),
        TextRequest::Store {
            mode: StoreMode::Cas,
            key: k("key"),
            flags: 0,
            exptime: 0,
            cas: Some(77),
            data: k("x"),
            noreply: true
        }
    );
    // A sixth token that is not `noreply` is ignored, as memcached does.
    assert!(matches!(
        text(b"set k 0 0 0 bogus\r\n\r\n"),
        TextRequest::Store { noreply: false, .. }
    ));
    // memcached's numbers: '+' accepted, flags truncated to 32 bits, lengths to 32 bits.
    assert!(matches!(
        text(b"set k 4294967296 0 +1\r\na\r\n"),
        TextRequest::Store { flags: 0, .. }
    ));
    assert!(matches!(
        text(b"set k 0 0 4294967299\r\nabc\r\n"),
        TextRequest::Store { .. }
    ));
    assert_eq!(one(b"set k 0 0 3\r\nab"), Parsed::Incomplete);
    assert_eq!(one(b"set k 0 0 3\r\nabc\r"), Parsed::Incomplete);
    assert_eq!(one(b"set k 0 0 3\nabc\n"), Parsed::Incomplete);
}

#[test]
fn storage_errors_are_memcacheds() {
    assert_eq!(err(b"set k 0 0 x\r\n"), b"CLIENT_ERROR bad command line format\r\n");
    assert_eq!(err(b"set k 0 0 -1\r\n"), b"CLIENT_ERROR bad command line format\r\n");
    assert_eq!(err(b"set k -1 0 1\r\n"), b"CLIENT_ERROR bad command line format\r\n");
    assert_eq!(err(b"set k 0 x 1\r\n"), b"CLIENT_ERROR bad command line format\r\n");
    assert_eq!(err(b"cas k 0 0 1 x\r\n"), b"CLIENT_ERROR bad command line format\r\n");
    assert_eq!(err(b"set k 0 0\r\n"), b"ERROR\r\n");
    assert_eq!(err(b"cas k 0 0 1\r\n"), b"ERROR\r\n");
    assert_eq!(err(b"set k 0 0 1 noreply x\r\n"), b"ERROR\r\n");
    let long = format!("set {} 0 0 1\r\n", "a".repeat(251));
    assert_eq!(err(long.as_bytes()), b"CLIENT_ERROR bad command line format\r\n");
    // noreply silences them.
    let long = format!("set {} 0 0 1 noreply\r\n", "a".repeat(251));
    assert_eq!(err(long.as_bytes()), b"");
    // A data block not followed by \r\n: the whole block and two bytes are consumed.
    assert_eq!(
        refusal(b"set k 0 0 3\r\nabcX\r\n"),
        (&b"CLIENT_ERROR bad data chunk\r\n"[..], 18)
    );
    assert_eq!(refusal(b"set k 0 0 3 noreply\r\nabcX\r\n"), (&b""[..], 26));
}

#[test]
fn too_large_swallows_the_data_block() {
    let limits = Limits {
        max_item_size: 10,
        ..lim()
    };
    assert_eq!(
        parse(b"set k 0 0 11\r\n", &limits),
        Ok(Parsed::Skip {
            error: ProtoError::TooLarge,
            silent: false,
            consumed: 14,
            bytes: 13
        })
    );
    assert_eq!(
        parse(b"set k 0 0 11 noreply\r\n", &limits),
        Ok(Parsed::Skip {
            error: ProtoError::TooLarge,
            silent: true,
            consumed: 22,
            bytes: 13
        })
    );
    assert_eq!(
        parse(b"ms k 11 q\r\n", &limits),
        Ok(Parsed::Skip {
            error: ProtoError::TooLarge,
            silent: false,
            consumed: 11,
            bytes: 13
        })
    );
    assert!(matches!(
        parse(b"set k 0 0 10\r\n0123456789\r\n", &limits),
        Ok(Parsed::Complete { .. })
    ));
    assert_eq!(
        ProtoError::TooLarge.reply(),
        b"SERVER_ERROR object too large for cache\r\n"
    );
}

#[test]
fn delete_follows_memcacheds_hold_rules() {
    assert_eq!(
        text(b"delete k\r\n"),
        TextRequest::Delete {
            key: k("k"),
            noreply: false
        }
    );
    assert_eq!(
        text(b"delete k 0\r\n"),
        TextRequest::Delete {
            key: k("k"),
            noreply: false
        }
    );
    assert_eq!(
        text(b"delete k noreply\r\n"),
        TextRequest::Delete {
            key: k("k"),
            noreply: true
        }
    );
    assert_eq!(
        text(b"delete k 0 noreply\r\n"),
        TextRequest::Delete {
            key: k("k"),
            noreply: true
        }
    );
    let usage: &[u8] = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
    assert_eq!(err(b"delete k 5\r\n"), usage);
    assert_eq!(err(b"delete k noreply x\r\n"), usage);
    assert_eq!(err(b"delete k 5 noreply\r\n"), b"");
    assert_eq!(err(b"delete\r\n"), b"ERROR\r\n");
    assert_eq!(err(b"delete a b c d\r\n"), b"ERROR\r\n");
}

#[test]
fn incr_decr_touch() {
    assert_eq!(
        text(b"incr k 5\r\n"),
        TextRequest::Arith {
            incr: true,
            key: k("k"),
            delta: 5,
            noreply: false
        }
    );
    assert_eq!(
        text(b"decr k 18446744073709551615 noreply\r\n"),
        TextRequest::Arith {
            incr: false,
            key: k("k"),
            delta: u64::MAX,
            noreply: true
        }
    );
    assert!(matches!(
        text(b"incr k 1 2\r\n"),
        TextRequest::Arith { noreply: false, .. }
    ));
    assert_eq!(
        err(b"incr k abc\r\n"),
        b"CLIENT_ERROR invalid numeric delta argument\r\n"
    );
    assert_eq!(
        err(b"incr k -1\r\n"),
        b"CLIENT_ERROR invalid numeric delta argument\r\n"
    );
    assert_eq!(
        err(b"incr k 18446744073709551616\r\n"),
        b"CLIENT_ERROR invalid numeric delta argument\r\n"
    );
    assert_eq!(err(b"incr k x noreply\r\n"), b"");
    assert_eq!(err(b"incr k\r\n"), b"ERROR\r\n");
    assert_eq!(
        text(b"touch k -5\r\n"),
        TextRequest::Touch {
            key: k("k"),
            exptime: -5,
            noreply: false
        }
    );
    assert_eq!(err(b"touch k abc\r\n"), b"CLIENT_ERROR invalid exptime argument\r\n");
    assert_eq!(err(b"touch k\r\n"), b"ERROR\r\n");
}

#[test]
fn the_small_commands() {
    assert_eq!(text(b"version\r\n"), TextRequest::Version);
    assert_eq!(text(b"version x\r\n"), TextRequest::Version);
    assert_eq!(text(b"quit\r\n"), TextRequest::Quit);
    assert_eq!(text(b"stats\r\n"), TextRequest::Stats { args: vec![] });
    assert_eq!(text(b"stats slabs\r\n"), TextRequest::Stats { args: vec![k("slabs")] });
    assert_eq!(
        text(b"flush_all\r\n"),
        TextRequest::FlushAll {
            delay: None,
            noreply: false
        }
    );
    assert_eq!(
        text(b"flush_all noreply\r\n"),
        TextRequest::FlushAll {
            delay: None,
            noreply: true
        }
    );
    assert_eq!(
        text(b"flush_all 10 noreply\r\n"),
        TextRequest::FlushAll {
            delay: Some(10),
            noreply: true
        }
    );
    assert_eq!(
        text(b"flush_all 1 2\r\n"),
        TextRequest::FlushAll {
            delay: Some(1),
            noreply: false
        }
    );
    assert_eq!(err(b"flush_all x\r\n"), b"CLIENT_ERROR invalid exptime argument\r\n");
    assert_eq!(
        text(b"verbosity 1\r\n"),
        TextRequest::Verbosity {
            level: 1,
            noreply: false
        }
    );
    assert_eq!(
        text(b"verbosity 1 noreply\r\n"),
        TextRequest::Verbosity {
            level: 1,
            noreply: true
        }
    );
    assert_eq!(err(b"verbosity abc\r\n"), b"CLIENT_ERROR bad command line format\r\n");
    assert_eq!(err(b"verbosity noreply\r\n"), b"");
    assert_eq!(err(b"verbosity\r\n"), b"ERROR\r\n");
    assert_eq!(err(b"verbosity 1 2 3\r\n"), b"ERROR\r\n");
}

#[test]
fn unknown_commands_and_bad_keys() {
    for input in [
        &b"foo\r\n"[..],
        b"\r\n",
        b"\n",
        b"GET k\r\n",
        b"get\r\n",
        b"mx k\r\n",
        b"mgk\r\n",
    ] {
        assert_eq!(err(input), b"ERROR\r\n", "{input:?}");
    }
    let long = format!("get a {}\r\n", "b".repeat(251));
    assert_eq!(err(long.as_bytes()), b"CLIENT_ERROR bad command line format\r\n");
    let many = format!("get{}\r\n", " k".repeat(5));
    assert_eq!(
        parse(many.as_bytes(), &Limits { max_keys: 4, ..lim() }).map(|p| matches!(
            p,
            Parsed::Rejected {
                error: ProtoError::TooManyKeys,
                ..
            }
        )),
        Ok(true)
    );
}

#[test]
fn lines_longer_than_the_limit_close_the_connection() {
    let limits = lim();
    assert_eq!(parse(&[b'x'; 2048], &limits), Ok(Parsed::Incomplete));
    assert_eq!(parse(&[b'x'; 2049], &limits), Err(ProtoError::LineTooLong));
    let mut line = vec![b'x'; 2049];
    line.extend_from_slice(b"\r\n");
    assert_eq!(parse(&line, &limits), Err(ProtoError::LineTooLong));
    // get lines may grow with their keys.
    let get = format!("get{}", " k".repeat(1500));
    assert_eq!(parse(get.as_bytes(), &limits), Ok(Parsed::Incomplete));
    assert!(ProtoError::LineTooLong.closes());
    assert_eq!(ProtoError::LineTooLong.reply(), b"");
}

#[test]
fn binary_protocol_is_refused() {
    assert_eq!(parse(b"\x80\x01\x00\x00", &lim()), Err(ProtoError::Binary));
    assert!(ProtoError::Binary.closes());
    assert!(ProtoError::Binary.reply().starts_with(b"SERVER_ERROR "));
    assert!(ProtoError::Binary.reply().ends_with(b"\r\n"));
}

#[test]
fn meta_get_flags() {
    let MetaRequest::Get { key, flags } = meta(b"mg k O123 q k c C5 T10 N30 I v t s f h l u R5\r\n") else {
        panic!("not mg")
    };
    assert_eq!(key, k("k"));
    let want = MetaFlags {
        opaque: Some(k("123")),
        quiet: true,
        return_key: true,
        return_cas: true,
        compare_cas: Some(5),
        ttl: Some(10),
        vivify: Some(30),
        invalidate: true,
        return_value: true,
        return_ttl: true,
        return_size: true,
        return_flags: true,
        return_hit: true,
        return_last_access: true,
        no_update: true,
        recache: Some(5),
        order: b"OqkcCTNIvtsfhluR".to_vec(),
        ..MetaFlags::default()
    };
    assert_eq!(flags, want);
    assert_eq!(
        meta(b"mg Zm9v b v\r\n"),
        MetaRequest::Get {
            key: k("foo"),
            flags: MetaFlags {
                base64: true,
                return_value: true,
                order: b"bv".to_vec(),
                ..MetaFlags::default()
            }
        }
    );
    assert_eq!(meta(b"mn\r\n"), MetaRequest::Noop);
    assert_eq!(meta(b"mn x\r\n"), MetaRequest::Noop);
}

#[test]
fn meta_errors_are_memcacheds() {
    assert_eq!(err(b"mg\r\n"), b"ERROR\r\n");
    assert_eq!(err(b"md\r\n"), b"ERROR\r\n");
    assert_eq!(err(b"mg k v v\r\n"), b"CLIENT_ERROR duplicate flag\r\n");
    assert_eq!(err(b"mg k S\r\n"), b"CLIENT_ERROR invalid flag\r\n");
    assert_eq!(err(b"mg k E5\r\n"), b"CLIENT_ERROR invalid flag\r\n");
    assert_eq!(err(b"mg k 1\r\n"), b"CLIENT_ERROR invalid flag\r\n");
    assert_eq!(
        err(b"mg k Tabc\r\n"),
        b"CLIENT_ERROR bad token in command line format\r\n"
    );
    assert_eq!(err(b"mg k Jx\r\n"), b"CLIENT_ERROR invalid numeric initial value\r\n");
    assert_eq!(err(b"mg k Dx\r\n"), b"CLIENT_ERROR invalid numeric delta value\r\n");
    // mg and ma answer a too long opaque after what they do (the engine); md refuses it.
    let opaque = format!("mg k O{}\r\n", "o".repeat(32));
    assert!(matches!(meta(opaque.as_bytes()), MetaRequest::Get { flags, .. } if flags.opaque_too_long()));
    let opaque = format!("md k O{}\r\n", "o".repeat(32));
    assert_eq!(err(opaque.as_bytes()), b"CLIENT_ERROR opaque token too long\r\n");
    let opaque = format!("ma k MX O{}\r\n", "o".repeat(32));
    assert_eq!(err(opaque.as_bytes()), b"CLIENT_ERROR invalid mode for ma M token\r\n");
    let opaque = format!("mg k O{}\r\n", "o".repeat(31));
    assert!(matches!(meta(opaque.as_bytes()), MetaRequest::Get { .. }));
    assert_eq!(err(b"mg !!! b v\r\n"), b"CLIENT_ERROR error decoding key\r\n");
    assert_eq!(err(b"mg Zm9v= b\r\n"), b"CLIENT_ERROR error decoding key\r\n");
    let long = format!("mg {} v\r\n", "a".repeat(251));
    assert_eq!(err(long.as_bytes()), b"CLIENT_ERROR bad command line format\r\n");
    assert_eq!(err(b"md k S\r\n"), b"CLIENT_ERROR invalid or duplicate flag\r\n");
    assert_eq!(err(b"md k q q\r\n"), b"CLIENT_ERROR invalid or duplicate flag\r\n");
    assert_eq!(err(b"ma k Dabc\r\n"), b"CLIENT_ERROR invalid or duplicate flag\r\n");
    assert_eq!(err(b"ma k MX\r\n"), b"CLIENT_ERROR invalid mode for ma M token\r\n");
    let many = |cmd: &str, n: usize| format!("{cmd} {}\r\n", vec!["a"; n].join(" "));
    assert_eq!(
        err(many("mg k", 18).as_bytes()),
        b"CLIENT_ERROR options flags are too long\r\n"
    );
    assert_eq!(err(many("mg k", 17).as_bytes()), b"CLIENT_ERROR invalid flag\r\n");
    assert_eq!(
        err(many("md k", 18).as_bytes()),
        b"CLIENT_ERROR options flags too long\r\n"
    );
    assert_eq!(
        err(many("ms k 1", 17).as_bytes()),
        b"CLIENT_ERROR options flags too long\r\n"
    );
    // 1.6.18 knows upper-case modes only.
    assert_eq!(err(b"ma k Mi\r\n"), b"CLIENT_ERROR invalid mode for ma M token\r\n");
    assert_eq!(err(b"ma k Mx1\r\n"), b"CLIENT_ERROR invalid or duplicate flag\r\n");
}

#[test]
fn meta_set_delete_arith() {
    assert_eq!(
        meta(b"ms k 3 T0 F5 I MS C9 q\r\nabc\r\n"),
        MetaRequest::Set {
            key: k("k"),
            flags: MetaFlags {
                ttl: Some(0),
                client_flags: Some(5),
                invalidate: true,
                mode: Some(b'S'),
                compare_cas: Some(9),
                quiet: true,
                order: b"TFIMCq".to_vec(),
                ..MetaFlags::default()
            },
            data: k("abc")
        }
    );
    assert_eq!(
        meta(b"md k q C3\r\n"),
        MetaRequest::Delete {
            key: k("k"),
            flags: MetaFlags {
                quiet: true,
                compare_cas: Some(3),
                order: b"qC".to_vec(),
                ..MetaFlags::default()
            }
        }
    );
    assert_eq!(
        meta(b"ma k N5 J7 D3 MD\r\n"),
        MetaRequest::Arith {
            key: k("k"),
            flags: MetaFlags {
                vivify: Some(5),
                initial: Some(7),
                delta: Some(3),
                mode: Some(b'D'),
                order: b"NJDM".to_vec(),
                ..MetaFlags::default()
            }
        }
    );
}

#[test]
fn meta_set_errors_and_what_they_swallow() {
    // Before the length is known, nothing is swallowed.
    assert_eq!(err(b"ms k\r\n"), b"CLIENT_ERROR bad command line format\r\n");
    assert_eq!(err(b"ms k x\r\n"), b"CLIENT_ERROR bad command line format\r\n");
    assert_eq!(err(b"ms k -1\r\n"), b"CLIENT_ERROR bad command line format\r\n");
    let long = format!("ms {} 3\r\n", "a".repeat(251));
    assert_eq!(err(long.as_bytes()), b"CLIENT_ERROR bad command line format\r\n");
    // After it, a refusal swallows the data block.
    for (input, reply) in [
        (&b"ms k 3 S\r\n"[..], &b"CLIENT_ERROR invalid flag\r\n"[..]),
        (b"ms k 3 v v\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
        (b"ms k 3 MX\r\n", b"CLIENT_ERROR invalid mode for ms M token\r\n"),
        (b"ms k 3 Mxx\r\n", b"CLIENT_ERROR incorrect length for M token\r\n"),
        (b"ms k 3 Fabc\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"ms k 3 Tabc\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
        (b"ms k 3 b\r\n", b"CLIENT_ERROR error decoding key\r\n"),
    ] {
        match one(input) {
            Parsed::Skip {
                error,
                silent: false,
                consumed,
                bytes: 5,
            } => {
                assert_eq!(error.reply(), reply, "{input:?}");
                assert_eq!(consumed, input.len());
            }
            other => panic!("{input:?} gave {other:?}"),
        }
    }
    assert_eq!(
        refusal(b"ms k 3 q\r\nabcX\r\n"),
        (&b"CLIENT_ERROR bad data chunk\r\n"[..], 15)
    );
}

/// Every request of a valid stream, parsed one after another.
fn parse_all(stream: &[u8]) -> Vec<Parsed> {
    let mut out = vec![];
    let mut at = 0;
    while at < stream.len() {
        match parse(&stream[at..], &lim()) {
            Ok(Parsed::Incomplete) | Err(_) => break,
            Ok(p) => {
                at += match &p {
                    Parsed::Complete { consumed, .. } | Parsed::Rejected { consumed, .. } => *consumed,
                    Parsed::Skip { consumed, bytes, .. } => consumed + bytes,
                    Parsed::Incomplete => 0,
                };
                out.push(p);
            }
        }
    }
    out
}

/// The same stream delivered in two pieces: parse what is buffered, append the rest when the
/// parser wants more, as a connection would.
fn parse_split(stream: &[u8], split: usize) -> Vec<Parsed> {
    let mut buf = stream[..split].to_vec();
    let mut rest = &stream[split..];
    let mut out = vec![];
    let mut skip = 0usize;
    loop {
        let drop = skip.min(buf.len());
        buf.drain(..drop);
        skip -= drop;
        if skip > 0 || buf.is_empty() {
            if rest.is_empty() {
                break;
            }
            buf.extend_from_slice(rest);
            rest = &[];
            continue;
        }
        match parse(&buf, &lim()) {
            Ok(Parsed::Incomplete) | Err(_) if !rest.is_empty() => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Ok(Parsed::Incomplete) | Err(_) => break,
            Ok(p) => {
                match &p {
                    Parsed::Complete { consumed, .. } | Parsed::Rejected { consumed, .. } => {
                        buf.drain(..*consumed);
                    }
                    Parsed::Skip { consumed, bytes, .. } => {
                        buf.drain(..*consumed);
                        skip = *bytes;
                    }
                    Parsed::Incomplete => {}
                }
                out.push(p);
            }
        }
    }
    out
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let key = "[a-z0-9_:]{1,12}";
    prop_oneof![
        proptest::collection::vec(key, 1..4).prop_map(|ks| format!("get {}\r\n", ks.join(" ")).into_bytes()),
        (key, 0u32..10, "[a-z\r\n]{0,20}", any::<bool>()).prop_map(|(k, f, d, nr)| {
            let nr = if nr { " noreply" } else { "" };
            format!("set {k} {f} 0 {}{nr}\r\n{d}\r\n", d.len()).into_bytes()
        }),
        (key, any::<u64>()).prop_map(|(k, c)| format!("cas {k} 0 0 2 {c}\r\nab\r\n").into_bytes()),
        (key, any::<u64>()).prop_map(|(k, d)| format!("incr {k} {d}\r\n").into_bytes()),
        key.prop_map(|k| format!("delete {k} noreply\n").into_bytes()),
        (key, "[a-z]{0,10}").prop_map(|(k, d)| format!("ms {k} {} T0 F1 q\r\n{d}\r\n", d.len()).into_bytes()),
        key.prop_map(|k| format!("mg {k} v k c O1 q\r\n").into_bytes()),
        key.prop_map(|k| format!("ma {k} D2 MI N0\r\n").into_bytes()),
        Just(b"mn\r\n".to_vec()),
        Just(b"bogus command\r\n".to_vec()),
        Just(b"set k 0 0 3\r\nabcX\r\n".to_vec()),
        Just(b"mg k zz\r\n".to_vec()),
        Just(b"ms k 3 S\r\nabc\r\n".to_vec()),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), max in 0usize..64) {
        let limits = Limits { max_item_size: max, max_line: max * 4, max_keys: max };
        let mut at = 0;
        // Whatever comes back, consuming it must make progress and stay within the buffer.
        while let Ok(p) = parse(&bytes[at..], &limits) {
            let step = match p {
                Parsed::Incomplete => break,
                Parsed::Complete { consumed, .. } | Parsed::Rejected { consumed, .. } | Parsed::Skip { consumed, .. } => consumed,
            };
            prop_assert!(step > 0 && at + step <= bytes.len());
            at += step;
        }
    }

    #[test]
    fn splitting_a_valid_stream_changes_nothing(reqs in proptest::collection::vec(request(), 1..8), split in any::<prop::sample::Index>()) {
        let stream: Vec<u8> = reqs.concat();
        let whole = parse_all(&stream);
        // A bad data chunk leaves its trailing "\n" to be answered as an empty command: one more.
        prop_assert!(whole.len() >= reqs.len());
        let split = split.index(stream.len() + 1);
        prop_assert_eq!(parse_split(&stream, split), whole);
    }
}
