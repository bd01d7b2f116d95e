//! Unit tests of the stick table (expiry properties are in `tests/lb_props.rs`).

use super::*;

fn cfg() -> StickConfig {
    StickConfig {
        max_idle_ms: Some(100),
        max_life_ms: Some(1000),
        capacity: 3,
    }
}

fn backends() -> Vec<Backend> {
    ["a", "b", "c"]
        .iter()
        .map(|n| Backend::new(BackendId::of(n), 1))
        .collect()
}

#[test]
fn sticks_touches_and_expires_exactly() {
    let c = cfg();
    let bs = backends();
    let mut t = StickTable::new();
    assert_eq!(t.lookup(&c, "k", 0, &bs), Lookup::Unknown);
    assert_eq!(t.stick(&c, "k", bs[1].id, 0), Ok(None));
    assert_eq!(t.lookup(&c, "k", 99, &bs), Lookup::Hit(1));
    assert_eq!(t.lookup(&c, "k", 100, &bs), Lookup::Expired, "idle expiry is exact");
    assert!(t.touch("k", 99));
    assert_eq!(t.lookup(&c, "k", 198, &bs), Lookup::Hit(1));
    assert!(!t.touch("nope", 5));
    // Keep touching: life expiry still ends it at 1000.
    for now in (150..1000).step_by(50) {
        assert!(t.touch("k", now));
    }
    assert_eq!(t.lookup(&c, "k", 999, &bs), Lookup::Hit(1));
    assert_eq!(t.lookup(&c, "k", 1000, &bs), Lookup::Expired, "life expiry is exact");
    assert_eq!(t.expire(&c, 999), 0);
    assert_eq!(t.expire(&c, 1000), 1);
    assert!(t.is_empty());
}

#[test]
fn reports_gone_and_unavailable_backends_and_drain_still_sticks() {
    let c = cfg();
    let mut bs = backends();
    let mut t = StickTable::new();
    t.stick(&c, "k", bs[2].id, 0).unwrap();
    bs[2].state = BackendState::Drain;
    bs[2].weight = 0;
    assert_eq!(t.lookup(&c, "k", 1, &bs), Lookup::Hit(2));
    bs[2].state = BackendState::Down;
    assert_eq!(
        t.lookup(&c, "k", 1, &bs),
        Lookup::Unavailable {
            index: 2,
            state: BackendState::Down
        }
    );
    bs[2].state = BackendState::Maint;
    assert_eq!(
        t.lookup(&c, "k", 1, &bs),
        Lookup::Unavailable {
            index: 2,
            state: BackendState::Maint
        }
    );
    assert_eq!(t.lookup(&c, "k", 1, &bs[..2]), Lookup::Gone(bs[2].id));
    // Re-stick elsewhere: a fresh entry.
    assert_eq!(t.stick(&c, "k", bs[0].id, 50), Ok(None));
    assert_eq!(
        t.get("k"),
        Some(&StickEntry {
            backend: bs[0].id,
            created_ms: 50,
            last_seen_ms: 50
        })
    );
    // The same backend again is a touch, not a new life.
    t.stick(&c, "k", bs[0].id, 60).unwrap();
    assert_eq!(t.get("k").unwrap().created_ms, 50);
    assert_eq!(t.get("k").unwrap().last_seen_ms, 60);
}

#[test]
fn full_table_evicts_the_longest_idle_deterministically() {
    let c = cfg();
    let id = BackendId::of("a");
    let mut t = StickTable::new();
    t.stick(&c, "x", id, 10).unwrap();
    t.stick(&c, "y", id, 10).unwrap();
    t.stick(&c, "z", id, 5).unwrap();
    t.touch("z", 20);
    // x and y are both idle since 10: the smaller key goes first.
    assert_eq!(t.stick(&c, "w", id, 30), Ok(Some("x".into())));
    assert_eq!(t.stick(&c, "v", id, 31), Ok(Some("y".into())));
    assert_eq!(t.stick(&c, "u", id, 32), Ok(Some("z".into())));
    assert_eq!(t.len(), 3);
    let keys: Vec<&str> = t.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["u", "v", "w"]);
}

#[test]
fn refuses_bad_input() {
    let mut t = StickTable::new();
    let long = "k".repeat(MAX_KEY_LEN + 1);
    assert_eq!(
        t.stick(&cfg(), &long, BackendId(1), 0),
        Err(StickError::KeyTooLong { len: MAX_KEY_LEN + 1 })
    );
    let zero = StickConfig { capacity: 0, ..cfg() };
    assert_eq!(t.stick(&zero, "k", BackendId(1), 0), Err(StickError::ZeroCapacity));
    assert!(t.is_empty());
}

#[test]
fn no_limits_means_no_expiry_and_backends_can_be_forgotten() {
    let c = StickConfig {
        max_idle_ms: None,
        max_life_ms: None,
        capacity: 10,
    };
    let bs = backends();
    let mut t = StickTable::new();
    t.stick(&c, "k1", bs[0].id, 0).unwrap();
    t.stick(&c, "k2", bs[0].id, 0).unwrap();
    t.stick(&c, "k3", bs[1].id, 0).unwrap();
    assert_eq!(t.lookup(&c, "k1", u64::MAX, &bs), Lookup::Hit(0));
    assert_eq!(t.expire(&c, u64::MAX), 0);
    assert_eq!(t.remove_backend(bs[0].id), 2);
    assert_eq!(t.len(), 1);
    assert_eq!(t.remove("k3").map(|e| e.backend), Some(bs[1].id));
    assert_eq!(t.remove("k3"), None);
}

#[test]
fn serializes_sorted_and_compact_and_round_trips() {
    let c = cfg();
    let mut t = StickTable::new();
    t.stick(&c, "b", BackendId(2), 7).unwrap();
    t.stick(&c, "a", BackendId(1), 5).unwrap();
    t.touch("a", 9);
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(
        json,
        r#"{"a":{"backend":1,"created_ms":5,"last_seen_ms":9},"b":{"backend":2,"created_ms":7,"last_seen_ms":7}}"#
    );
    let back: StickTable = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    // The rebuilt index evicts as the original would.
    let (mut t1, mut t2) = (t.clone(), back);
    let c1 = StickConfig { capacity: 2, ..c };
    assert_eq!(
        t1.stick(&c1, "z", BackendId(3), 10),
        t2.stick(&c1, "z", BackendId(3), 10)
    );
    assert_eq!(t1, t2);
}

#[test]
fn merging_a_replicas_entries_moves_last_seen_forward_replaces_and_evicts() {
    let c = StickConfig { capacity: 2, ..cfg() };
    let e = |backend: u64, created_ms: u64, last_seen_ms: u64| StickEntry {
        backend: BackendId(backend),
        created_ms,
        last_seen_ms,
    };
    let mut t = StickTable::new();
    assert_eq!(
        t.merge(&c, "a", e(1, 5, 5)).unwrap(),
        Merged {
            changed: true,
            evicted: None
        }
    );
    assert_eq!(
        t.merge(&c, "a", e(1, 5, 4)).unwrap(),
        Merged {
            changed: false,
            evicted: None
        },
        "an older use changes nothing"
    );
    assert!(t.merge(&c, "a", e(1, 5, 9)).unwrap().changed);
    assert_eq!(t.get("a").unwrap().last_seen_ms, 9);
    assert!(
        t.merge(&c, "a", e(2, 10, 10)).unwrap().changed,
        "re-stuck elsewhere: replaced"
    );
    assert_eq!(t.get("a").unwrap().backend, BackendId(2));
    t.merge(&c, "b", e(1, 11, 11)).unwrap();
    assert_eq!(
        t.merge(&c, "c", e(1, 12, 12)).unwrap().evicted.as_deref(),
        Some("a"),
        "full: the entry idle longest goes"
    );
    assert!(t.merge(&c, &"k".repeat(MAX_KEY_LEN + 1), e(1, 1, 1)).is_err());
    let mut exp = t.clone();
    let idle = StickConfig {
        max_idle_ms: Some(5),
        ..c.clone()
    };
    assert_eq!(exp.expire_keys(&idle, 16), vec!["b".to_string()]);
}
