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
fn parts_rebuild_the_same_store_that_goes_on_alike() {
    let limit = 3 * (1 + 10 + ITEM_OVERHEAD);
    let mut s = Store::new(limit);
    let now = 1_800_000_000_000;
    for k in ["a", "b", "c", "d"] {
        s.apply(&set(StoreMode::Set, k, "0123456789", 0), now);
    }
    s.apply(&Op::Delete { key: b"b".to_vec() }, now);
    assert!(s.raw(b"a").is_none() && s.raw(b"b").is_none() && s.raw(b"c").is_some());
    assert_eq!(s.meta().evictions, 1, "a evicted for d");

    // Rebuilt from its parts (a snapshot), it is the same store and goes on alike.
    let items: Vec<(Vec<u8>, Item)> = s.items().map(|(k, i)| (k.to_vec(), i.clone())).collect();
    let mut t = Store::from_parts(limit, s.meta(), items);
    assert_eq!(t, s);
    for st in [&mut s, &mut t] {
        st.apply(&set(StoreMode::Set, "e", "0123456789", 0), now);
        st.apply(&set(StoreMode::Set, "f", "0123456789", 0), now);
    }
    assert_eq!(t, s, "the same evictions and CAS uniques after a rebuild");
}

/// What a snapshot took ([`Store::shared_items`]) stays as it was while the store goes on:
/// every way a write changes an item (in place or anew, removed, evicted, flushed) leaves the
/// taken items alone.
#[test]
fn taken_items_do_not_change_with_later_writes() {
    let limit = 4 * (1 + 10 + ITEM_OVERHEAD);
    let mut s = Store::new(limit);
    let now = T0;
    for k in ["a", "b", "c", "n"] {
        s.apply(&set(StoreMode::Set, k, "0123456789", 0), now);
    }
    let before: Vec<(Vec<u8>, Item)> = s.items().map(|(k, i)| (k.to_vec(), i.clone())).collect();
    let taken = s.shared_items();
    let writes = [
        Op::Touch {
            key: b"a".to_vec(),
            exptime: 100,
        },
        Op::Arith {
            incr: true,
            key: b"b".to_vec(),
            delta: 1,
        },
        Op::MetaDelete {
            key: b"c".to_vec(),
            cas: None,
            invalidate: true,
            exptime: Some(5),
        },
        set(StoreMode::Append, "n", "x", 0),
        set(StoreMode::Set, "e", "0123456789", 0),
        Op::FlushAll { delay: None },
    ];
    for w in &writes {
        s.apply(w, now);
    }
    let mut after: Vec<(Vec<u8>, Item)> = taken.iter().map(|(k, i)| (k.to_vec(), (**i).clone())).collect();
    let mut before = before;
    before.sort_by(|x, y| x.0.cmp(&y.0));
    after.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(after, before);
    assert!(s.is_empty(), "the store itself went on");
}

/// A model item: value, flags, expiry (unix ms), CAS unique.
type ModelItem = (Vec<u8>, u32, Option<u64>, u64);

/// The model of the model-based test: what memcached promises, in the plainest form.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    items: BTreeMap<Vec<u8>, ModelItem>,
    cas: u64,
}

impl Model {
    fn live(&self, k: &[u8], now: u64) -> Option<&ModelItem> {
        self.items.get(k).filter(|i| i.2.is_none_or(|e| now < e))
    }

    fn apply(&mut self, op: &Op, now: u64) -> Reply {
        let live = |m: &Model, k: &Vec<u8>| m.live(k, now).cloned();
        match op {
            Op::Store {
                mode,
                key,
                flags,
                exptime,
                cas,
                data,
            } => {
                let cur = live(self, key);
                let (value, flags, exp) = match (mode, &cur) {
                    (StoreMode::Add, Some(_)) | (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => {
                        return Reply::NotStored
                    }
                    (StoreMode::Cas, None) => return Reply::NotFound,
                    (StoreMode::Cas, Some(c)) if Some(c.3) != *cas => return Reply::Exists,
                    (StoreMode::Append, Some(c)) => ([c.0.clone(), data.clone()].concat(), c.1, c.2),
                    (StoreMode::Prepend, Some(c)) => ([data.clone(), c.0.clone()].concat(), c.1, c.2),
                    _ => (data.clone(), *flags, expiry(*exptime, now)),
                };
                self.cas += 1;
                self.items.insert(key.clone(), (value, flags, exp, self.cas));
                Reply::Stored
            }
            Op::Delete { key } => match live(self, key) {
                Some(_) => {
                    self.items.remove(key);
                    Reply::Deleted
                }
                None => Reply::NotFound,
            },
            Op::Arith { incr, key, delta } => {
                let Some(c) = live(self, key) else {
                    return Reply::NotFound;
                };
                let Some(n) = std::str::from_utf8(&c.0)
                    .ok()
                    .and_then(|s| s.trim_end().parse::<u64>().ok())
                    .filter(|_| c.0.first().is_some_and(u8::is_ascii_digit))
                else {
                    return Reply::NonNumeric;
                };
                let n = if *incr {
                    n.wrapping_add(*delta)
                } else {
                    n.saturating_sub(*delta)
                };
                let mut v = n.to_string().into_bytes();
                if v.len() < c.0.len() {
                    v.resize(c.0.len(), b' ');
                }
                self.cas += 1;
                self.items.insert(key.clone(), (v, c.1, c.2, self.cas));
                Reply::Number(n)
            }
            Op::Touch { key, exptime } => match live(self, key) {
                Some(c) => {
                    self.items.insert(key.clone(), (c.0, c.1, expiry(*exptime, now), c.3));
                    Reply::Touched
                }
                None => Reply::NotFound,
            },
            Op::FlushAll { .. } => {
                self.items.clear();
                Reply::Ok
            }
            // The meta protocol's writes have their own tests (engine/meta_tests.rs).
            _ => unreachable!("the model covers the text protocol's writes"),
        }
    }
}

/// One step of the model-based test: an operation on one of three keys, time moving on, or a
/// restart (the store rebuilt from what a node persists: its meta and its items).
#[derive(Debug, Clone)]
enum Step {
    Op(Op),
    /// A `cas` with the unique the key's item has now (a client that just read it).
    CasCurrent(usize, String),
    Wait(u64),
    Restart,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let key = (0usize..3).prop_map(|k| format!("k{k}").into_bytes());
    let value = prop_oneof![
        (0u64..1000).prop_map(|n| n.to_string()),
        "[a-z ]{0,6}".prop_map(String::from),
    ];
    // Never, at once, a few seconds, or an absolute time a few seconds after T0.
    let exptime = prop_oneof![
        Just(0i32),
        Just(-1),
        1i32..4,
        (2i32..5).prop_map(|s| (T0 / 1000) as i32 + s)
    ];
    let mode = prop_oneof![
        Just(StoreMode::Set),
        Just(StoreMode::Add),
        Just(StoreMode::Replace),
        Just(StoreMode::Append),
        Just(StoreMode::Prepend),
        Just(StoreMode::Cas),
    ];
    prop_oneof![
        4 => (mode, key.clone(), value.clone(), exptime.clone(), 0u64..50).prop_map(|(mode, key, v, exptime, cas)| {
            // As the text protocol sends them: a unique with `cas` alone.
            let cas = (mode == StoreMode::Cas).then_some(cas);
            Step::Op(Op::Store { mode, key, flags: 3, exptime, cas, data: v.into_bytes() })
        }),
        1 => key.clone().prop_map(|key| Step::Op(Op::Delete { key })),
        2 => (any::<bool>(), key.clone(), prop_oneof![0u64..20, Just(u64::MAX)]).prop_map(|(incr, key, delta)| Step::Op(Op::Arith { incr, key, delta })),
        1 => (key.clone(), exptime).prop_map(|(key, exptime)| Step::Op(Op::Touch { key, exptime })),
        1 => (0usize..3, value).prop_map(|(k, v)| Step::CasCurrent(k, v)),
        2 => (0u64..2500).prop_map(Step::Wait),
        1 => Just(Step::Restart),
        1 => Just(Step::Op(Op::FlushAll { delay: None })),
    ]
}

proptest::proptest! {
    /// The store against the model over random steps: the same answers, and after every step
    /// every key reads the same (value, flags, CAS unique) at the same time; restarts (a
    /// rebuild from the persisted parts) change nothing.
    #[test]
    fn the_store_behaves_as_its_model_across_time_and_restarts(steps in proptest::collection::vec(step(), 1..80)) {
        let limit = 1 << 20;
        let mut s = Store::new(limit);
        let mut m = Model { items: BTreeMap::new(), cas: 0 };
        let mut now = T0;
        for st in &steps {
            match st {
                Step::Op(op) => proptest::prop_assert_eq!(s.apply(op, now), m.apply(op, now), "{:?}", op),
                Step::CasCurrent(k, v) => {
                    let key = format!("k{k}").into_bytes();
                    let cas = s.get(&key, now).map(|i| i.cas);
                    proptest::prop_assert_eq!(cas, m.live(&key, now).map(|i| i.3));
                    let op = Op::Store { mode: StoreMode::Cas, key, flags: 1, exptime: 0, cas, data: v.clone().into_bytes() };
                    proptest::prop_assert_eq!(s.apply(&op, now), m.apply(&op, now), "{:?}", op);
                }
                Step::Wait(ms) => now += ms,
                Step::Restart => {
                    let items: Vec<(Vec<u8>, Item)> = s.items().map(|(k, i)| (k.to_vec(), i.clone())).collect();
                    s = Store::from_parts(limit, s.meta(), items);
                }
            }
            for k in 0..3 {
                let key = format!("k{k}").into_bytes();
                let got = s.get(&key, now).map(|i| (i.value.clone(), i.flags, i.cas));
                let want = m.live(&key, now).map(|i| (i.0.clone(), i.1, i.3));
                proptest::prop_assert_eq!(got, want, "k{} after {:?}", k, st);
            }
        }
    }
}
