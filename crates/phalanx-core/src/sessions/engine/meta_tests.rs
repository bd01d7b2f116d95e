//! What the golden trace cannot show: replicas agree, reads change nothing, the stale and
//! vivify rules over time, and the changes a node persists.

use super::super::{answer_logged, answer_read, answer_request, is_write, needs_log};
use crate::sessions::protocol::{parse, Limits, Parsed, Request};
use crate::sessions::store::{Item, Store};

const T0: u64 = 1_800_000_000_000;

fn req(line: &str) -> Request {
    let raw = line.replace('|', "\r\n") + "\r\n";
    match parse(raw.as_bytes(), &Limits::default()) {
        Ok(Parsed::Complete { request, .. }) => request,
        other => panic!("{line}: {other:?}"),
    }
}

/// What the node does with one request: logged ones through `answer_logged`, the rest read.
fn node(s: &mut Store, line: &str, now: u64) -> String {
    let r = req(line);
    let bytes = if needs_log(s, &r, now) {
        answer_logged(s, &r, now).bytes
    } else {
        let before = s.clone();
        let a = answer_read(s, &r, now).expect("a read answers");
        assert_eq!(answer_request(s, &r, now).bytes, a.bytes, "{line}: both paths alike");
        assert_eq!(*s, before, "{line}: a read changes nothing");
        a.bytes
    };
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn replicas_applying_the_same_logged_requests_agree() {
    let log = [
        "ms a 2 T30 F3|10",
        "ma a D5 T100",
        "mg v N20 c t",
        "mg v R30 c",
        "md a I T5",
        "mg a v c",
        "ms a 2 I C1|20",
        "mg a c t",
        "ma n N0 J41 v",
        "ms Zm9v 1 b MS|x",
        "ms b 1 MA|y",
        "md zz q",
        "ma a MD D99",
    ];
    let (mut x, mut y) = (Store::new(1 << 20), Store::new(1 << 20));
    for (i, line) in log.iter().enumerate() {
        let now = T0 + i as u64 * 700;
        let r = req(line);
        assert_eq!(needs_log(&x, &r, now), needs_log(&y, &r, now));
        let (ax, ay) = (answer_logged(&mut x, &r, now), answer_logged(&mut y, &r, now));
        assert_eq!(ax, ay, "{line}: the same answer on every replica");
        assert_eq!(x, y, "{line}: the same store on every replica");
    }
    // A replica rebuilt from what the other persisted goes on alike.
    let items: Vec<(Vec<u8>, Item)> = x.items().map(|(k, i)| (k.to_vec(), i.clone())).collect();
    let mut z = Store::from_parts(1 << 20, x.meta(), items);
    let now = T0 + 60_000;
    for line in ["mg a c v t", "md v I", "mg v c", "ma n v c"] {
        let r = req(line);
        assert_eq!(
            answer_logged(&mut x, &r, now).bytes,
            answer_logged(&mut z, &r, now).bytes
        );
    }
}

#[test]
fn a_stale_item_makes_the_first_read_a_write_and_only_it_wins() {
    let mut s = Store::new(1 << 20);
    assert_eq!(node(&mut s, "ms k 1 T100 c|v", T0), "HD c1\r\n");
    assert_eq!(node(&mut s, "md k I T30 q", T0), "", "invalidated, HD hidden");
    let plain = req("mg k c t v");
    assert!(!is_write(&plain), "mg without T/N/R is a read by itself");
    assert!(needs_log(&s, &plain, T0), "but it wins the token here: logged");
    assert!(answer_read(&s, &plain, T0).is_none());
    // Answered as a read all the same (the simpler contract), it wins but takes nothing.
    let before = s.clone();
    let read = answer_request(&mut s, &plain, T0);
    assert_eq!(read.bytes, b"VA 1 c2 t30 X W\r\nv\r\n");
    assert_eq!(s, before, "answer_request never changes the store for a read");
    assert_eq!(node(&mut s, "mg k c t v", T0), "VA 1 c2 t30 X W\r\nv\r\n");
    assert!(s.raw(b"k").is_some_and(|i| i.stale && i.token_sent));
    assert!(!needs_log(&s, &plain, T0), "the token is taken: a read again");
    assert_eq!(node(&mut s, "mg k c t v", T0 + 1), "VA 1 c2 t30 Z X\r\nv\r\n");
    // An older unique with I stores the new value still stale, keeping TTL and token.
    assert_eq!(node(&mut s, "ms k 1 I C1 c|w", T0 + 2), "HD c3\r\n");
    assert_eq!(node(&mut s, "mg k t v", T0 + 2), "VA 1 t30 Z X\r\nw\r\n");
    // The current unique stores it fresh: neither stale nor taken.
    assert_eq!(node(&mut s, "ms k 1 C3 T0 c|x", T0 + 3), "HD c4\r\n");
    assert_eq!(node(&mut s, "mg k t v", T0 + 3), "VA 1 t-1\r\nx\r\n");
    // md I guarded by C: a wrong unique changes nothing.
    assert_eq!(node(&mut s, "md k I C3", T0 + 4), "EX\r\n");
    assert!(s.raw(b"k").is_some_and(|i| !i.stale && i.cas == 4));
    // Append makes a new item: the stale mark goes with the old one.
    assert_eq!(node(&mut s, "md k I", T0 + 5), "HD\r\n");
    assert_eq!(node(&mut s, "ms k 1 MA|y", T0 + 5), "HD\r\n");
    assert!(s
        .raw(b"k")
        .is_some_and(|i| !i.stale && !i.token_sent && i.value == b"xy"));
}

#[test]
fn vivify_creates_once_and_expires_on_the_logged_time() {
    let mut s = Store::new(1 << 20);
    assert!(is_write(&req("mg k N10")) && is_write(&req("mg k T10")) && is_write(&req("mg k R10")));
    assert_eq!(node(&mut s, "mg k N10 s t v c f", T0), "VA 0 s0 t10 c1 f0 W\r\n\r\n");
    assert_eq!(node(&mut s, "mg k N10 t", T0 + 500), "HD t10 Z\r\n", "t rounds up");
    assert_eq!(node(&mut s, "mg k t", T0 + 9_001), "HD t1 Z\r\n");
    assert_eq!(node(&mut s, "mg k t", T0 + 10_000), "EN\r\n", "gone at its TTL");
    assert_eq!(
        node(&mut s, "mg k N10 c", T0 + 10_000),
        "HD c2 W\r\n",
        "a new item, a new win"
    );
    // R wins when the TTL left is below it, once.
    assert_eq!(node(&mut s, "ms r 1 T10|x", T0), "HD\r\n");
    assert_eq!(node(&mut s, "mg r R5", T0), "HD\r\n");
    assert_eq!(node(&mut s, "mg r R5", T0 + 6_000), "HD W\r\n");
    assert_eq!(node(&mut s, "mg r R5", T0 + 6_000), "HD Z\r\n");
    // ma vivifies with J and N, then counts.
    assert_eq!(node(&mut s, "ma n N5 J9 v t", T0), "VA 1 t5\r\n9\r\n");
    assert_eq!(node(&mut s, "ma n v t", T0 + 1_000), "VA 2 t4\r\n10\r\n");
    assert_eq!(node(&mut s, "ma n q", T0 + 5_000), "NF\r\n", "expired with N's TTL");
    // A T that does not outlive the request: the hit is answered, the item gone after.
    assert_eq!(node(&mut s, "ms g 1|x", T0), "HD\r\n");
    assert_eq!(node(&mut s, "mg g T-1 v t", T0), "VA 1 t0\r\nx\r\n");
    assert_eq!(node(&mut s, "mg g v", T0), "EN\r\n");
}

#[test]
fn meta_writes_change_the_store_refused_ones_do_not_and_a_rebuild_keeps_it() {
    let mut s = Store::new(1 << 20);
    for line in ["ms a 1|x", "ms b 1|1", "ms c 1|x", "ms d 1|x"] {
        node(&mut s, line, T0);
    }
    let mut changes = |line: &str, expected: bool| {
        let before = s.clone();
        node(&mut s, line, T0);
        assert_eq!(s != before, expected, "{line}: changes the store");
    };
    for line in ["mg a v", "mg zz", "mg c R1", "ms a 1 ME|x", "md zz", "ma zz"] {
        changes(line, false);
    }
    for line in [
        "mg a T10",
        "ma b",
        "md c I",
        "md d",
        "mg v N1",
        "ma w N1",
        "mg c",
        "ms e 1 ME|x",
    ] {
        changes(line, true);
    }
    assert!(s.raw(b"c").is_some_and(|i| i.token_sent), "a won token is kept");
    // A snapshot's parts rebuild the same store.
    let items: Vec<(Vec<u8>, Item)> = s.items().map(|(k, i)| (k.to_vec(), i.clone())).collect();
    assert_eq!(Store::from_parts(1 << 20, s.meta(), items), s);
}

#[test]
fn cas_uniques_only_grow() {
    let mut s = Store::new(1 << 20);
    let mut last = 0;
    for line in [
        "ms a 1|x",
        "ms a 1 MA|y",
        "md a I",
        "ma n N0 J1",
        "ma n",
        "mg v N10",
        "ms a 1 I C1|z",
        "ma n D100000000000",
        "ms b 1 MS|q",
    ] {
        node(&mut s, line, T0);
        let now = s.meta().last_cas;
        assert!(now > last, "{line}: a new unique");
        assert!(s.items().all(|(_, i)| i.cas <= now));
        last = now;
    }
    // Writes that change no item's value give no unique.
    for line in ["mg a T5", "mg a", "md zz", "ms a 1 ME|x", "ma zz"] {
        node(&mut s, line, T0);
        assert_eq!(s.meta().last_cas, last, "{line}");
    }
}

#[test]
fn base64_keys_round_trip() {
    assert_eq!(super::base64_encode(b"foo"), b"Zm9v");
    assert_eq!(super::base64_encode(b"fo"), b"Zm8=");
    assert_eq!(super::base64_encode(b"f"), b"Zg==");
    assert_eq!(super::base64_encode(b""), b"");
    let mut s = Store::new(1 << 20);
    assert_eq!(node(&mut s, "ms Zm8= 1 b k|x", T0), "HD kZm8= b\r\n");
    assert_eq!(node(&mut s, "mg fo k v", T0), "VA 1 kZm8= b\r\nx\r\n");
    assert_eq!(node(&mut s, "ms fo 1 k|y", T0), "HD kfo\r\n");
    assert_eq!(node(&mut s, "mg Zm8= b k", T0), "HD kfo\r\n", "a text key now");
}

#[test]
fn a_too_long_opaque_is_answered_after_the_work_as_1_6_18_does() {
    let long = format!("O{}", "o".repeat(40));
    let error = "CLIENT_ERROR opaque token too long\r\n";
    let mut s = Store::new(1 << 20);
    node(&mut s, "ms n 1|5", T0);
    assert_eq!(node(&mut s, &format!("ma n T30 {long} q"), T0), error);
    assert_eq!(
        node(&mut s, "mg n v t", T0),
        "VA 1 t30\r\n6\r\n",
        "counted, T before O applied"
    );
    assert_eq!(node(&mut s, &format!("mg v N30 {long}"), T0), error);
    assert_eq!(node(&mut s, "mg v t", T0), "HD t30\r\n", "created, no token won");
    assert_eq!(node(&mut s, &format!("mg v {long} T5"), T0), error);
    assert_eq!(
        node(&mut s, "mg v t", T0),
        "HD t30\r\n",
        "a T after the O is not reached"
    );
    node(&mut s, "md v I", T0);
    let stale = req(&format!("mg v {long}"));
    assert!(!needs_log(&s, &stale, T0), "an error wins nothing: a read");
    assert_eq!(node(&mut s, &format!("mg v {long}"), T0), error);
    assert_eq!(node(&mut s, "mg v", T0), "HD X W\r\n");
    let md = format!("md v {long}\r\n");
    assert!(
        matches!(
            parse(md.as_bytes(), &Limits::default()),
            Ok(Parsed::Rejected { error: e, .. }) if e.reply() == error.as_bytes()
        ),
        "md refuses it before anything"
    );
}

/// Request shapes for the model test (`K` is a key, `|` ends the line before a data block).
const SHAPES: &[&str] = &[
    "ms K 1|x",
    "ms K 2 T3 c|12",
    "ms K 1 I C2|s",
    "ms K 1 I C9 MR|s",
    "ms K 1 MA|y",
    "ms K 1 ME T1|z",
    "mg K v c t",
    "mg K s f k h l",
    "mg K N2 v c",
    "mg K R2 c",
    "mg K T1 t",
    "md K I T2",
    "md K q",
    "md K C3",
    "ma K N2 J5 v",
    "ma K MD D3 t",
    "ma K v T4 c",
    "set K 0 1 1|7",
    "incr K 9",
    "touch K 3",
    "gets K",
    "flush_all",
];

proptest::proptest! {
    /// A follower that applies only what the leader logged holds what the leader holds, and
    /// answers the same: reads change nothing, logged requests do the same everywhere.
    #[test]
    fn a_follower_applying_only_the_log_holds_what_the_leader_holds(
        steps in proptest::collection::vec((0..SHAPES.len(), 0..3usize, 0u64..2_500), 1..60)
    ) {
        let (mut leader, mut follower) = (Store::new(130), Store::new(130));
        let mut now = T0;
        for (shape, key, dt) in steps {
            now += dt;
            let line = SHAPES[shape].replace('K', ["a", "b", "c"][key]);
            let r = req(&line);
            if needs_log(&leader, &r, now) {
                let a = answer_logged(&mut leader, &r, now);
                let b = answer_logged(&mut follower, &r, now);
                proptest::prop_assert_eq!(a, b, "{}", line);
            } else {
                // A read, answered either way: the same bytes, and nothing the follower lacks.
                let read = answer_read(&leader, &r, now);
                proptest::prop_assert!(read.is_some(), "{}", line);
                let a = answer_request(&mut leader, &r, now);
                proptest::prop_assert_eq!(read, Some(a), "{}", line);
            }
            proptest::prop_assert_eq!(&leader, &follower, "{}", line);
            let last = leader.meta().last_cas;
            proptest::prop_assert!(leader.items().all(|(_, i)| i.cas <= last));
        }
    }
}
