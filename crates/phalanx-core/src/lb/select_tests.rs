//! Unit tests of each selection algorithm (the property tests are in `tests/lb_props.rs`).

use super::*;
use crate::lb::algorithm::Algorithm;
use crate::lb::backend::{BackendId, BackendState};

fn backends(weights: &[u16]) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Backend::new(BackendId::of(&format!("b{i}")), *w))
        .collect()
}

fn balancer(name: &str, consistent: bool) -> Balancer {
    Balancer::new(Algorithm::parse(name, consistent).unwrap())
}

fn picks(b: &mut Balancer, bs: &[Backend], n: usize) -> Vec<usize> {
    (0..n).map(|i| b.pick(bs, None, i as u64).unwrap()).collect()
}

#[test]
fn round_robin_cycles_and_skips_ineligible() {
    let mut bs = backends(&[1, 5, 1, 1]);
    let mut b = balancer("roundrobin", false);
    assert_eq!(picks(&mut b, &bs, 8), [0, 1, 2, 3, 0, 1, 2, 3]);
    bs[1].state = BackendState::Drain;
    bs[3].weight = 0;
    assert_eq!(picks(&mut b, &bs, 4), [0, 2, 0, 2]);
    bs[0].state = BackendState::Down;
    bs[2].state = BackendState::Maint;
    assert_eq!(b.pick(&bs, None, 0), None);
    assert_eq!(b.pick(&[], None, 0), None);
}

#[test]
fn round_robin_survives_a_shrinking_slice() {
    let bs = backends(&[1, 1, 1]);
    let mut b = balancer("roundrobin", false);
    assert_eq!(picks(&mut b, &bs, 3), [0, 1, 2]);
    assert_eq!(picks(&mut b, &bs[..1], 2), [0, 0]);
}

#[test]
fn weighted_follows_weights() {
    let bs = backends(&[2, 1]);
    let mut b = balancer("weighted", false);
    assert_eq!(picks(&mut b, &bs, 6), [0, 1, 0, 0, 1, 0]);
}

#[test]
fn least_conn_prefers_fewest_and_rotates_ties() {
    let mut bs = backends(&[1, 1, 1]);
    let mut b = balancer("leastconn", false);
    bs[0].in_flight = 3;
    bs[1].in_flight = 1;
    bs[2].in_flight = 1;
    assert_eq!(picks(&mut b, &bs, 4), [1, 2, 1, 2]);
    // Weight counts: 4 in flight on weight 2 beats 2 on weight 1, as (4+1)/2 < (2+1)/1.
    bs[0].weight = 32;
    bs[0].in_flight = 4;
    bs[1].in_flight = 2;
    bs[2].in_flight = 2;
    assert_eq!(b.pick(&bs, None, 0), Some(0));
    bs[0].state = BackendState::Drain;
    assert_eq!(b.pick(&bs, None, 0), Some(1));
}

#[test]
fn p2c_keeps_the_less_loaded_of_two() {
    let mut bs = backends(&[1, 1]);
    bs[0].in_flight = 10;
    let mut b = balancer("p2c", false);
    // With two eligible backends both are always drawn: the idle one always wins.
    assert!(picks(&mut b, &bs, 100).iter().all(|&i| i == 1));
    bs[1].state = BackendState::Down;
    assert!(picks(&mut b, &bs, 10).iter().all(|&i| i == 0));
    bs[0].weight = 0;
    assert_eq!(b.pick(&bs, None, 1), None);
}

#[test]
fn p2c_is_deterministic_in_its_random_word() {
    let bs = backends(&[1, 2, 3, 4, 5]);
    let mut a = balancer("p2c", false);
    let mut b = balancer("p2c", false);
    assert_eq!(picks(&mut a, &bs, 50), picks(&mut b, &bs, 50));
    let seen: std::collections::BTreeSet<usize> = picks(&mut a, &bs, 500).into_iter().collect();
    assert_eq!(seen.len(), 5);
}

#[test]
fn hashes_are_sticky_per_key_and_fall_back_without_one() {
    for consistent in [false, true] {
        let bs = backends(&[1, 1, 1, 1]);
        let mut b = balancer("header:X-User", consistent);
        for k in 0..50u32 {
            let key = k.to_le_bytes();
            let first = b.pick(&bs, Some(&key), 0).unwrap();
            assert!((0..5).all(|r| b.pick(&bs, Some(&key), r) == Some(first)));
        }
        // No key: smooth weighted round robin.
        assert_eq!(picks(&mut b, &bs, 4), [0, 1, 2, 3]);
    }
}

#[test]
fn hashes_skip_ineligible_backends() {
    for consistent in [false, true] {
        let mut bs = backends(&[1, 1, 1, 1]);
        bs[0].state = BackendState::Drain;
        bs[1].weight = 0;
        bs[2].state = BackendState::Maint;
        let mut b = balancer("source", consistent);
        for k in 0..100u32 {
            assert_eq!(b.pick(&bs, Some(&k.to_le_bytes()), 0), Some(3));
        }
        bs[3].state = BackendState::Down;
        assert_eq!(b.pick(&bs, Some(b"k"), 0), None);
    }
}

#[test]
fn redispatch_avoids_the_failed_backend() {
    let bs = backends(&[1, 1, 1]);
    for name in ["roundrobin", "weighted", "leastconn", "p2c", "uri"] {
        for consistent in [false, name == "uri"] {
            let mut b = balancer(name, consistent);
            for r in 0..30u64 {
                let key = r.to_le_bytes();
                let first = b.pick(&bs, Some(&key), r).unwrap();
                let second = b.redispatch(&bs, Some(&key), r, first).unwrap();
                assert_ne!(first, second, "{name} consistent={consistent}");
            }
            assert_eq!(b.redispatch(&bs[..1], Some(b"k"), 0, 0), None, "{name}");
        }
    }
}

#[test]
fn consistent_redispatch_is_the_second_choice() {
    let bs = backends(&[1, 1, 1, 1]);
    let mut b = balancer("cookie:S", true);
    for k in 0..100u32 {
        let key = k.to_le_bytes();
        let first = b.pick(&bs, Some(&key), 0).unwrap();
        let second = b.redispatch(&bs, Some(&key), 0, first).unwrap();
        // Removing the first choice from the slice gives the same backend.
        let rest: Vec<Backend> = bs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first)
            .map(|(_, b)| *b)
            .collect();
        let without = b.pick(&rest, Some(&key), 0).unwrap();
        assert_eq!(bs[second].id, rest[without].id);
    }
}

fn arb_backends() -> impl proptest::strategy::Strategy<Value = Vec<Backend>> {
    use proptest::prelude::*;
    let one = (0u16..=8, 0u32..20, 0u8..4);
    proptest::collection::vec(one, 0..10).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (w, in_flight, s))| Backend {
                in_flight,
                state: [
                    BackendState::Up,
                    BackendState::Up,
                    BackendState::Drain,
                    BackendState::Down,
                ][usize::from(s)],
                ..Backend::new(BackendId::of(&format!("b{i}")), w)
            })
            .collect()
    })
}

proptest::proptest! {
    /// p2c's two draws are distinct eligible backends, and it keeps the one with no more
    /// in-flight requests than the other — never one with more than both choices.
    #[test]
    fn p2c_keeps_the_lesser_of_its_two_draws(bs in arb_backends(), rng in proptest::prelude::any::<u64>()) {
        let picked = p2c(&bs, rng, |_| true);
        match p2c_draws(&bs, rng, |_| true) {
            None => proptest::prop_assert!(picked.is_none() && !bs.iter().any(|b| b.takes_new())),
            Some((a, b)) => {
                let picked = picked.unwrap();
                proptest::prop_assert!(bs[a].takes_new());
                let min = match b {
                    Some(b) => {
                        proptest::prop_assert!(b != a && bs[b].takes_new());
                        proptest::prop_assert!(picked == a || picked == b);
                        bs[a].in_flight.min(bs[b].in_flight)
                    }
                    None => {
                        proptest::prop_assert_eq!(bs.iter().filter(|b| b.takes_new()).count(), 1);
                        bs[a].in_flight
                    }
                };
                proptest::prop_assert_eq!(bs[picked].in_flight, min);
            }
        }
    }
}
