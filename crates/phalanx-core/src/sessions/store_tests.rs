//! The session store's rules, one test per family (memcached's behaviour where a client sees it).

use super::*;

const T0: u64 = 1_800_000_000_000; // unix ms, 2027

fn set(mode: StoreMode, key: &str, value: &str, exptime: i32) -> Op {
    Op::Store {
        mode,
        key: key.into(),
        flags: 7,
        exptime,
        cas: None,
        data: value.into(),
    }
}

fn value(s: &Store, key: &str, now: u64) -> Option<String> {
    s.get(key.as_bytes(), now)
        .map(|i| String::from_utf8_lossy(&i.value).into_owned())
}

#[test]
fn storage_commands_answer_as_memcached() {
    let mut s = Store::new(1 << 20);
    assert_eq!(s.apply(&set(StoreMode::Replace, "k", "a", 0), T0), Reply::NotStored);
    assert_eq!(s.apply(&set(StoreMode::Append, "k", "a", 0), T0), Reply::NotStored);
    assert_eq!(s.apply(&set(StoreMode::Add, "k", "a", 0), T0), Reply::Stored);
    assert_eq!(s.apply(&set(StoreMode::Add, "k", "b", 0), T0), Reply::NotStored);
    assert_eq!(s.apply(&set(StoreMode::Append, "k", "z", 99), T0), Reply::Stored);
    assert_eq!(s.apply(&set(StoreMode::Prepend, "k", "<", 99), T0), Reply::Stored);
    assert_eq!(value(&s, "k", T0).as_deref(), Some("<az"));
    assert_eq!(
        s.get(b"k", T0).unwrap().expires_ms,
        None,
        "append/prepend keep the expiry"
    );
    assert_eq!(s.apply(&set(StoreMode::Replace, "k", "r", 0), T0), Reply::Stored);
    assert_eq!(value(&s, "k", T0).as_deref(), Some("r"));
    assert_eq!(s.apply(&Op::Delete { key: "k".into() }, T0), Reply::Deleted);
    assert_eq!(s.apply(&Op::Delete { key: "k".into() }, T0), Reply::NotFound);
    assert_eq!(Reply::NotFound.bytes(), b"NOT_FOUND\r\n");
}

#[test]
fn cas_uniques_grow_and_guard_the_write() {
    let mut s = Store::new(1 << 20);
    s.apply(&set(StoreMode::Set, "a", "1", 0), T0);
    s.apply(&set(StoreMode::Set, "b", "1", 0), T0);
    let (a, b) = (s.get(b"a", T0).unwrap().cas, s.get(b"b", T0).unwrap().cas);
    assert!(b > a, "monotonic across keys");
    let cas = |unique: u64| Op::Store {
        mode: StoreMode::Cas,
        key: "a".into(),
        flags: 0,
        exptime: 0,
        cas: Some(unique),
        data: "2".into(),
    };
    assert_eq!(s.apply(&cas(a + 100), T0), Reply::Exists);
    assert_eq!(s.apply(&cas(a), T0), Reply::Stored);
    assert!(s.get(b"a", T0).unwrap().cas > b);
    assert_eq!(s.apply(&cas(a), T0), Reply::Exists, "the old unique no longer matches");
    let mut gone = cas(1);
    if let Op::Store { key, .. } = &mut gone {
        *key = "zz".into();
    }
    assert_eq!(s.apply(&gone, T0), Reply::NotFound);
}

#[test]
fn exptimes_are_relative_absolute_never_or_already_on_the_logged_time() {
    assert_eq!(expiry(0, T0), None);
    assert_eq!(expiry(-1, T0), Some(T0));
    assert_eq!(expiry(10, T0), Some(T0 + 10_000));
    assert_eq!(
        expiry(RELATIVE_MAX_S as i32, T0),
        Some(T0 + RELATIVE_MAX_S as u64 * 1000)
    );
    let absolute = (T0 / 1000 + 60) as i32;
    assert_eq!(expiry(absolute, T0), Some(T0 + 60_000), "above 30 days: a unix time");
    let mut s = Store::new(1 << 20);
    s.apply(&set(StoreMode::Set, "t", "v", 10), T0);
    assert!(s.get(b"t", T0 + 9_999).is_some());
    assert!(s.get(b"t", T0 + 10_000).is_none(), "gone at its expiry exactly");
    s.apply(&set(StoreMode::Set, "neg", "v", -1), T0);
    assert!(s.get(b"neg", T0).is_none(), "a negative exptime expires at once");
    // An expired item is not there for add, and touch moves the expiry.
    assert_eq!(s.apply(&set(StoreMode::Add, "t", "new", 0), T0 + 20_000), Reply::Stored);
    assert_eq!(
        s.apply(
            &Op::Touch {
                key: "t".into(),
                exptime: 5
            },
            T0 + 20_000
        ),
        Reply::Touched
    );
    assert!(s.get(b"t", T0 + 25_000).is_none());
    assert_eq!(
        s.apply(
            &Op::Touch {
                key: "none".into(),
                exptime: 5
            },
            T0
        ),
        Reply::NotFound
    );
}

#[test]
fn incr_wraps_decr_stops_at_zero_and_keeps_the_length() {
    let mut s = Store::new(1 << 20);
    let arith = |incr: bool, delta: u64| Op::Arith {
        incr,
        key: "n".into(),
        delta,
    };
    assert_eq!(s.apply(&arith(true, 1), T0), Reply::NotFound);
    s.apply(&set(StoreMode::Set, "n", "10", 0), T0);
    assert_eq!(s.apply(&arith(false, 1), T0), Reply::Number(9));
    assert_eq!(
        value(&s, "n", T0).as_deref(),
        Some("9 "),
        "memcached pads a shorter result"
    );
    assert_eq!(
        s.apply(&arith(true, 5), T0),
        Reply::Number(14),
        "a padded value still counts"
    );
    assert_eq!(s.apply(&arith(false, 100), T0), Reply::Number(0));
    s.apply(&set(StoreMode::Set, "n", &u64::MAX.to_string(), 0), T0);
    assert_eq!(s.apply(&arith(true, 2), T0), Reply::Number(1), "wraps at 2^64");
    s.apply(&set(StoreMode::Set, "n", "abc", 0), T0);
    assert_eq!(s.apply(&arith(true, 1), T0), Reply::NonNumeric);
    assert_eq!(
        Reply::NonNumeric.bytes(),
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    );
}

#[test]
fn flush_all_now_or_later() {
    let mut s = Store::new(1 << 20);
    s.apply(&set(StoreMode::Set, "a", "1", 0), T0);
    assert_eq!(s.apply(&Op::FlushAll { delay: None }, T0), Reply::Ok);
    assert!(s.get(b"a", T0).is_none() && s.is_empty() && s.bytes() == 0);
    s.apply(&set(StoreMode::Set, "b", "1", 0), T0);
    assert!(s.get(b"b", T0).is_some(), "stored after the flush, in the same ms");
    s.apply(&Op::FlushAll { delay: Some(10) }, T0);
    s.apply(&set(StoreMode::Set, "c", "1", 0), T0 + 5_000);
    assert!(s.get(b"b", T0 + 9_000).is_some() && s.get(b"c", T0 + 9_000).is_some());
    assert!(
        s.get(b"b", T0 + 10_000).is_none() && s.get(b"c", T0 + 10_000).is_none(),
        "what was stored before the flush time goes when it comes"
    );
    s.apply(&set(StoreMode::Set, "d", "1", 0), T0 + 11_000);
    assert!(s.get(b"d", T0 + 12_000).is_some());
}

#[test]
fn memory_is_bounded_by_evicting_the_oldest_write_alike_on_every_replica() {
    let limit = 3 * (1 + 10 + ITEM_OVERHEAD);
    let ops: Vec<Op> = (0..6)
        .map(|i| set(StoreMode::Set, &i.to_string(), "0123456789", 0))
        .chain([Op::Touch {
            key: "3".into(),
            exptime: 0,
        }])
        .chain([set(StoreMode::Set, "9", "0123456789", 0)])
        .collect();
    let (mut a, mut b) = (Store::new(limit), Store::new(limit));
    for op in &ops {
        assert_eq!(a.apply(op, T0), b.apply(op, T0));
    }
    assert_eq!(a, b, "replicas applying the same log hold the same items");
    assert_eq!(a.len(), 3);
    assert!(a.bytes() <= limit);
    let held: Vec<bool> = ["3", "4", "5", "9"]
        .iter()
        .map(|k| a.get(k.as_bytes(), T0).is_some())
        .collect();
    assert_eq!(held, [false, true, true, true], "a touch is not a write: 3 went first");
    let huge = set(StoreMode::Set, "big", &"x".repeat(limit), 0);
    assert_eq!(a.apply(&huge, T0), Reply::OutOfMemory);
    assert_eq!(
        Reply::OutOfMemory.bytes(),
        b"SERVER_ERROR out of memory storing object\r\n"
    );
}

#[test]
fn changes_name_what_a_node_must_persist_and_parts_rebuild_the_same_store() {
    let limit = 3 * (1 + 10 + ITEM_OVERHEAD);
    let mut s = Store::new(limit);
    let now = 1_800_000_000_000;
    for k in ["a", "b", "c", "d"] {
        s.apply(&set(StoreMode::Set, k, "0123456789", 0), now);
    }
    s.apply(&Op::Delete { key: b"b".to_vec() }, now);
    let ch = s.take_changes();
    assert!(!ch.cleared);
    let keys: Vec<&[u8]> = ch.keys.iter().map(Vec::as_slice).collect();
    assert_eq!(
        keys,
        [&b"a"[..], b"b", b"c", b"d"],
        "written, evicted (a) and deleted (b)"
    );
    assert!(s.raw(b"a").is_none() && s.raw(b"b").is_none() && s.raw(b"c").is_some());
    assert_eq!(s.meta().evictions, 1);
    assert_eq!(s.take_changes(), Changes::default(), "taken once");

    // Rebuilt from its parts, it is the same store and goes on alike.
    let items: Vec<(Vec<u8>, Item)> = s.items().map(|(k, i)| (k.clone(), i.clone())).collect();
    let mut t = Store::from_parts(limit, s.meta(), items);
    assert_eq!(t, s);
    for st in [&mut s, &mut t] {
        st.apply(&set(StoreMode::Set, "e", "0123456789", 0), now);
        st.apply(&set(StoreMode::Set, "f", "0123456789", 0), now);
    }
    assert_eq!(t, s, "the same evictions and CAS uniques after a rebuild");
    s.apply(&Op::FlushAll { delay: None }, now);
    assert!(s.take_changes().cleared);
}
