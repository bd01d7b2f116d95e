//! Properties of the pure load balancer (`phalanx_core::lb`), issue 14: weights are honoured
//! within ±5 % over 10⁵ picks, round robin is exactly even, p2c never takes the most loaded,
//! consistent hashing moves only the departed backend's keys (≤ 1/N + 5 %) while modulo moves
//! most, nothing drained/down/maint/weight-0 is picked for new traffic, health goes down after
//! exactly `fall` failures and up after `rise` successes, slowstart is monotone, and sticky
//! entries expire exactly at max_idle / max_life.

use phalanx_core::lb::{
    AdminState, Algorithm, Backend, BackendId, BackendState, Balancer, CheckResult, Health, HealthConfig, Lookup,
    StickConfig, StickTable, Transition,
};
use proptest::prelude::*;

fn named(i: usize, weight: u16) -> Backend {
    Backend::new(BackendId::of(&format!("backend-{i}")), weight)
}

fn cheap() -> ProptestConfig {
    ProptestConfig {
        cases: 16,
        ..ProptestConfig::default()
    }
}

/// Keys as a caller would hash them (little-endian counters stand in for addresses/cookies).
fn key(k: u32) -> [u8; 4] {
    k.to_le_bytes()
}

const KEYS: u32 = 20_000;

/// For each key, the id of the backend a fresh balancer of `algorithm` picks.
fn placement(algorithm: &Algorithm, bs: &[Backend]) -> Vec<BackendId> {
    let mut b = Balancer::new(algorithm.clone());
    (0..KEYS)
        .map(|k| bs[b.pick(bs, Some(&key(k)), 0).unwrap()].id)
        .collect()
}

fn counts(bs: &[Backend], mut pick: impl FnMut(u64) -> Option<usize>, n: u64) -> Vec<u64> {
    let mut c = vec![0u64; bs.len()];
    for i in 0..n {
        c[pick(i).unwrap()] += 1;
    }
    c
}

proptest! {
    #![proptest_config(cheap())]

    /// Smooth weighted round robin: every backend within ±5 % of its weight's share.
    #[test]
    fn weighted_is_within_5_percent_over_1e5_picks(weights in prop::collection::vec(1u16..=256, 1..8)) {
        let bs: Vec<Backend> = weights.iter().enumerate().map(|(i, w)| named(i, *w)).collect();
        let mut b = Balancer::new(Algorithm::Weighted);
        let n = 100_000u64;
        let c = counts(&bs, |r| b.pick(&bs, None, r), n);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        for (i, w) in weights.iter().enumerate() {
            let expected = n as f64 * f64::from(*w) / total as f64;
            prop_assert!((c[i] as f64 - expected).abs() <= 0.05 * expected, "{i}: {} vs {expected}", c[i]);
        }
    }

    /// p2c at equal load follows the weights too (statistically: ±5 % of the share, or ±0.5 %
    /// of all picks for a tiny share).
    #[test]
    fn p2c_at_equal_load_follows_weights(weights in prop::collection::vec(1u16..=16, 2..6)) {
        let bs: Vec<Backend> = weights.iter().enumerate().map(|(i, w)| named(i, *w)).collect();
        let mut b = Balancer::new(Algorithm::P2c);
        let n = 100_000u64;
        let c = counts(&bs, |r| b.pick(&bs, None, r), n);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        for (i, w) in weights.iter().enumerate() {
            let expected = n as f64 * f64::from(*w) / total as f64;
            let slack = (0.05 * expected).max(0.005 * n as f64);
            prop_assert!((c[i] as f64 - expected).abs() <= slack, "{i}: {} vs {expected}", c[i]);
        }
    }

    /// Round robin: k full cycles give every eligible backend exactly k picks.
    #[test]
    fn round_robin_is_exactly_even(states in prop::collection::vec(0u8..5, 1..10), k in 1u64..50, start in 0u64..20) {
        let bs: Vec<Backend> = states.iter().enumerate().map(|(i, s)| Backend {
            state: if *s == 1 { BackendState::Down } else { BackendState::Up },
            weight: if *s == 2 { 0 } else { u32::from(*s) * 16 + 16 },
            ..named(i, 1)
        }).collect();
        let eligible = bs.iter().filter(|b| b.takes_new()).count() as u64;
        prop_assume!(eligible > 0);
        let mut b = Balancer::new(Algorithm::RoundRobin);
        for r in 0..start { b.pick(&bs, None, r); }
        let c = counts(&bs, |r| b.pick(&bs, None, r), k * eligible);
        for (i, be) in bs.iter().enumerate() {
            prop_assert_eq!(c[i], if be.takes_new() { k } else { 0 });
        }
    }

    /// Consistent (rendezvous) hashing, equal weights: when one of N backends leaves, only its
    /// keys move, at most 1/N + 5 % of them; modulo hashing (N ≥ 4) moves at least half.
    #[test]
    fn consistent_moves_only_the_departed_keys(n in 2usize..=12, weight in 1u16..=256, gone in any::<prop::sample::Index>()) {
        let bs: Vec<Backend> = (0..n).map(|i| named(i, weight)).collect();
        let gone = gone.index(n);
        let rest: Vec<Backend> = bs.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, b)| *b).collect();
        let consistent = Algorithm::parse("source", true).unwrap();
        let (before, after) = (placement(&consistent, &bs), placement(&consistent, &rest));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        prop_assert!(before.iter().zip(&after).all(|(a, b)| a == b || *a == bs[gone].id));
        let frac = moved as f64 / f64::from(KEYS);
        prop_assert!(frac <= 1.0 / n as f64 + 0.05, "consistent moved {frac} of keys, n = {n}");
        let modulo = Algorithm::parse("source", false).unwrap();
        let (before, after) = (placement(&modulo, &bs), placement(&modulo, &rest));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / f64::from(KEYS);
        prop_assert!(n < 4 || moved >= 0.5, "modulo moved only {moved}, n = {n}");
    }

    /// Consistent hashing with unequal weights: each backend's share of keys is its share of
    /// the weight (±5 %), and a departure moves only its keys.
    #[test]
    fn consistent_shares_follow_weights(weights in prop::collection::vec(1u16..=64, 2..8), gone in any::<prop::sample::Index>()) {
        let bs: Vec<Backend> = weights.iter().enumerate().map(|(i, w)| named(i, *w)).collect();
        let consistent = Algorithm::parse("cookie:S", true).unwrap();
        let before = placement(&consistent, &bs);
        let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
        for (i, w) in weights.iter().enumerate() {
            let share = before.iter().filter(|id| **id == bs[i].id).count() as f64 / f64::from(KEYS);
            prop_assert!((share - f64::from(*w) / total).abs() <= 0.05, "{i}: {share}");
        }
        let gone = gone.index(bs.len());
        let rest: Vec<Backend> = bs.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, b)| *b).collect();
        let after = placement(&consistent, &rest);
        prop_assert!(before.iter().zip(&after).all(|(a, b)| a == b || *a == bs[gone].id));
    }
}

fn arb_backend() -> impl Strategy<Value = (u16, u32, BackendState)> {
    let state = prop_oneof![
        3 => Just(BackendState::Up),
        1 => Just(BackendState::Drain),
        1 => Just(BackendState::Maint),
        1 => Just(BackendState::Down),
    ];
    (0u16..=4, 0u32..8, state)
}

fn arb_algorithm() -> impl Strategy<Value = Algorithm> {
    let names = [
        "roundrobin",
        "weighted",
        "leastconn",
        "p2c",
        "source",
        "uri",
        "header:X-User",
        "cookie:SESSION",
    ];
    (prop::sample::select(names.to_vec()), any::<bool>())
        .prop_map(|(name, c)| Algorithm::parse(name, c && Algorithm::parse(name, true).is_ok()).unwrap())
}

proptest! {
    /// Whatever the algorithm, state, load, key and random word: only up backends with a weight
    /// above 0 are picked, a pick exists whenever one of them does, a redispatch never returns
    /// the avoided backend, and p2c never picks the strictly most loaded of several.
    #[test]
    fn only_eligible_backends_are_picked(
        spec in prop::collection::vec(arb_backend(), 0..8),
        algorithm in arb_algorithm(),
        requests in prop::collection::vec((prop::option::of(any::<u32>()), any::<u64>()), 1..40),
    ) {
        let bs: Vec<Backend> = spec.iter().enumerate()
            .map(|(i, (w, f, s))| Backend { in_flight: *f, state: *s, ..named(i, *w) }).collect();
        let eligible: Vec<usize> = (0..bs.len()).filter(|i| bs[*i].takes_new()).collect();
        let mut b = Balancer::new(algorithm.clone());
        for (k, rng) in requests {
            let key = k.map(key);
            let picked = b.pick(&bs, key.as_ref().map(|k| &k[..]), rng);
            prop_assert_eq!(picked.is_some(), !eligible.is_empty(), "{}", algorithm);
            if let Some(i) = picked {
                prop_assert!(bs[i].takes_new(), "{} picked {:?}", algorithm, bs[i]);
                let again = b.redispatch(&bs, key.as_ref().map(|k| &k[..]), rng, i);
                prop_assert_eq!(again.is_some(), eligible.len() > 1);
                prop_assert!(again.is_none_or(|j| j != i && bs[j].takes_new()));
                if algorithm == Algorithm::P2c && eligible.len() > 1 {
                    let others_max = eligible.iter().filter(|j| **j != i).map(|j| bs[*j].in_flight).max().unwrap();
                    let min = eligible.iter().map(|j| bs[*j].in_flight).min().unwrap();
                    prop_assert!(bs[i].in_flight <= others_max || bs[i].in_flight == min);
                }
            }
        }
    }
}

fn health_cfg(rise: u32, fall: u32, slowstart_ms: u64) -> HealthConfig {
    HealthConfig {
        rise,
        fall,
        slowstart_ms,
        ..HealthConfig::default()
    }
}

proptest! {
    /// Exactly `fall` consecutive failures take an up backend down and exactly `rise`
    /// consecutive successes bring it up: any transition is preceded by that many same results,
    /// and such a run always causes one.
    #[test]
    fn health_needs_exactly_rise_and_fall(rise in 1u32..6, fall in 1u32..6, results in prop::collection::vec(any::<bool>(), 0..80)) {
        let cfg = health_cfg(rise, fall, 0);
        let mut h = Health::new(true);
        let mut up = true;
        let mut run = 0u32; // consecutive results against the current state
        for (t, pass) in results.iter().enumerate() {
            let r = if *pass { CheckResult::Pass } else { CheckResult::Fail };
            let change = h.record_check(&cfg, r, t as u64);
            run = if *pass != up { run + 1 } else { 0 };
            let due = if up { fall } else { rise };
            if run == due {
                let (from, to) = if up { (BackendState::Up, BackendState::Down) } else { (BackendState::Down, BackendState::Up) };
                prop_assert_eq!(change, Some(Transition { from, to }), "step {}", t);
                up = !up;
                run = 0;
            } else {
                prop_assert_eq!(change, None, "step {}", t);
            }
            prop_assert_eq!(h.state() == BackendState::Up, up);
        }
    }

    /// Slowstart: the effective weight never decreases with time, stays within 1..=full while
    /// ramping, and is full from `slowstart` on.
    #[test]
    fn slowstart_is_monotone(slowstart in 1u64..100_000, weight in 1u16..=256, came_up in 0u64..1000, times in prop::collection::vec(0u64..200_000, 1..50)) {
        let cfg = health_cfg(1, 1, slowstart);
        let mut h = Health::new(true);
        h.set_operator(AdminState::Maint, 0);
        h.set_operator(AdminState::Ready, came_up);
        let full = u32::from(weight) * 16;
        let mut times = times;
        times.sort_unstable();
        let mut last = 0;
        for t in times {
            let w = h.effective_weight(&cfg, weight, t);
            prop_assert!(w >= last && w >= 1 && w <= full, "{} at {}", w, t);
            if t >= came_up + slowstart { prop_assert_eq!(w, full); }
            last = w;
        }
    }

    /// Sticky entries expire exactly at min(last use + max_idle, creation + max_life).
    #[test]
    fn sticky_expires_exactly(
        idle in prop::option::of(1u64..1000), life in prop::option::of(1u64..5000),
        created in 0u64..1000, touches in prop::collection::vec(0u64..300, 0..10),
    ) {
        let cfg = StickConfig { max_idle_ms: idle, max_life_ms: life, capacity: 4 };
        let bs = [named(0, 1)];
        let mut t = StickTable::new();
        t.stick(&cfg, "client", bs[0].id, created).unwrap();
        let mut now = created;
        for d in touches {
            let at = now + d;
            if t.lookup(&cfg, "client", at, &bs) != Lookup::Hit(0) { break; }
            t.touch("client", at);
            now = at;
        }
        let idle_end = idle.map(|d| now + d);
        let life_end = life.map(|d| created + d);
        match idle_end.into_iter().chain(life_end).min() {
            None => prop_assert_eq!(t.lookup(&cfg, "client", u64::MAX, &bs), Lookup::Hit(0)),
            Some(end) => {
                prop_assert!(end > now);
                prop_assert_eq!(t.lookup(&cfg, "client", end - 1, &bs), Lookup::Hit(0));
                prop_assert_eq!(t.lookup(&cfg, "client", end, &bs), Lookup::Expired);
                prop_assert_eq!(t.expire(&cfg, end - 1), 0);
                prop_assert_eq!(t.expire(&cfg, end), 1);
            }
        }
    }

    /// Any sequence of sticks stays within capacity, and a serde round trip changes nothing.
    #[test]
    fn sticky_is_bounded_and_round_trips(capacity in 1usize..6, ops in prop::collection::vec((0u8..12, 0u8..3, 0u64..50), 0..60)) {
        let cfg = StickConfig { max_idle_ms: Some(100), max_life_ms: None, capacity };
        let mut t = StickTable::new();
        let mut now = 0;
        for (k, b, dt) in ops {
            now += dt;
            t.stick(&cfg, &format!("k{k}"), BackendId(u64::from(b)), now).unwrap();
            prop_assert!(t.len() <= capacity);
            prop_assert_eq!(t.get(&format!("k{k}")).map(|e| e.backend), Some(BackendId(u64::from(b))));
        }
        let back: StickTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        prop_assert_eq!(back, t);
    }
}
