//! The checker's tests: hand-written histories that are and are not linearizable, and a
//! property test (histories generated from a reference memcached model with random timing that
//! preserves a valid linearization must pass; one read changed to a never-written value must
//! fail).

use super::*;
use proptest::prelude::*;

const K: &str = "k";

fn op(client: usize, call: u64, ret: Option<u64>, input: Input, output: Output) -> Op {
    Op {
        client,
        key: K.to_string(),
        call,
        ret,
        input,
        output,
    }
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn set(c: usize, call: u64, ret: u64, v: &str) -> Op {
    op(c, call, Some(ret), Input::Set(b(v)), Output::Stored)
}

fn set_indet(c: usize, call: u64, v: &str) -> Op {
    op(c, call, None, Input::Set(b(v)), Output::Indeterminate)
}

fn get(c: usize, call: u64, ret: u64, v: Option<&str>) -> Op {
    op(c, call, Some(ret), Input::Get, Output::Value(v.map(b)))
}

fn gets(c: usize, call: u64, ret: u64, v: &str, unique: u64) -> Op {
    op(c, call, Some(ret), Input::Gets, Output::ValueCas(Some((b(v), unique))))
}

fn add(c: usize, call: u64, ret: u64, v: &str, out: Output) -> Op {
    op(c, call, Some(ret), Input::Add(b(v)), out)
}

fn cas(c: usize, call: u64, ret: u64, v: &str, unique: u64, out: Output) -> Op {
    op(c, call, Some(ret), Input::Cas { value: b(v), unique }, out)
}

fn incr(c: usize, call: u64, ret: u64, delta: u64, out: Output) -> Op {
    op(c, call, Some(ret), Input::Incr(delta), out)
}

fn delete(c: usize, call: u64, ret: u64, out: Output) -> Op {
    op(c, call, Some(ret), Input::Delete, out)
}

fn verdict(h: &[Op]) -> Verdict {
    let r = check(h, CheckOptions::default()).expect("a well-formed history");
    assert_eq!(r.keys.len(), 1);
    r.keys[0].verdict.clone()
}

fn assert_ok(h: &[Op]) {
    let v = verdict(h);
    assert_eq!(v, Verdict::Ok, "expected linearizable: {h:#?}");
}

fn assert_violation(h: &[Op]) -> Violation {
    match verdict(h) {
        Verdict::Violation(v) => v,
        other => panic!("expected a violation, got {other:?} for {h:#?}"),
    }
}

#[test]
fn an_empty_history_and_a_sequential_one_are_linearizable() {
    let r = check(&[], CheckOptions::default()).unwrap();
    assert_eq!((r.ops, r.keys.len()), (0, 0));
    assert_ok(&[
        get(0, 0, 1, None),
        set(0, 2, 3, "a"),
        get(0, 4, 5, Some("a")),
        delete(0, 6, 7, Output::Deleted),
        get(0, 8, 9, None),
        delete(0, 10, 11, Output::NotFound),
    ]);
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    // The write spans the reads: the first read sees the old state, the later ones the new.
    assert_ok(&[
        set(0, 0, 100, "a"),
        get(1, 10, 20, None),
        get(1, 30, 40, Some("a")),
        get(2, 50, 60, Some("a")),
    ]);
    // Two overlapping writes, reads agreeing on the second one winning.
    assert_ok(&[
        set(0, 0, 50, "a"),
        set(1, 10, 40, "b"),
        get(2, 60, 70, Some("a")),
        get(2, 80, 90, Some("a")),
    ]);
}

#[test]
fn a_read_going_back_to_an_older_state_is_a_violation() {
    let v = assert_violation(&[set(0, 0, 100, "a"), get(1, 30, 40, Some("a")), get(2, 50, 60, None)]);
    assert_eq!(v.key, K);
    assert!(v.stuck.iter().any(|o| o.call == 50), "{v}");
}

#[test]
fn a_stale_read_after_a_newer_write_returned_is_a_violation() {
    let v = assert_violation(&[set(0, 0, 10, "a"), set(0, 20, 30, "b"), get(1, 40, 50, Some("a"))]);
    assert_eq!(v.linearized, 2, "{v}");
    assert_eq!(v.state.as_deref(), Some("b"));
    assert_eq!(v.stuck.len(), 1);
    assert_eq!(v.stuck[0].output, Output::Value(Some(b("a"))));
    // Shown with the operations involved.
    let text = v.to_string();
    assert!(
        text.contains("set b k -> STORED") && text.contains("get k -> a"),
        "{text}"
    );
}

#[test]
fn a_lost_acknowledged_write_is_a_violation() {
    assert_violation(&[set(0, 0, 10, "a"), get(1, 20, 30, None)]);
    // A read of a value nobody wrote.
    assert_violation(&[set(0, 0, 10, "a"), get(1, 20, 30, Some("zzz"))]);
}

#[test]
fn an_indeterminate_write_may_have_taken_effect_or_not() {
    let base = [set(0, 0, 10, "a"), set_indet(1, 20, "b")];
    // It did (even long after its call):
    let mut h = base.to_vec();
    h.extend([get(2, 30, 40, Some("a")), get(2, 1_000, 1_010, Some("b"))]);
    assert_ok(&h);
    // It did not:
    let mut h = base.to_vec();
    h.extend([get(2, 30, 40, Some("a")), get(2, 1_000, 1_010, Some("a"))]);
    assert_ok(&h);
    // Once seen it cannot be undone:
    let mut h = base.to_vec();
    h.extend([get(2, 30, 40, Some("b")), get(2, 1_000, 1_010, Some("a"))]);
    assert_violation(&h);
    // Nor take effect before its call:
    assert_violation(&[get(2, 0, 5, Some("b")), set_indet(1, 20, "b")]);
}

#[test]
fn an_indeterminate_delete_and_incr_may_take_effect() {
    assert_ok(&[
        set(0, 0, 10, "5"),
        op(1, 20, None, Input::Delete, Output::Indeterminate),
        get(2, 30, 40, Some("5")),
        get(2, 50, 60, None),
    ]);
    assert_ok(&[
        set(0, 0, 10, "5"),
        op(1, 20, None, Input::Incr(2), Output::Indeterminate),
        get(2, 50, 60, Some("7")),
        incr(2, 70, 80, 1, Output::Number(8)),
    ]);
}

#[test]
fn two_adds_of_one_key_both_stored_is_a_violation() {
    assert_violation(&[add(0, 0, 10, "a", Output::Stored), add(1, 5, 15, "b", Output::Stored)]);
    // With a delete that may fall between them, both may succeed.
    assert_ok(&[
        add(0, 0, 10, "a", Output::Stored),
        delete(2, 2, 20, Output::Deleted),
        add(1, 5, 30, "b", Output::Stored),
        get(0, 40, 50, Some("b")),
    ]);
    assert_ok(&[
        add(0, 0, 10, "a", Output::Stored),
        add(1, 5, 15, "b", Output::NotStored),
        get(0, 40, 50, Some("a")),
    ]);
}

#[test]
fn two_cas_with_one_unique_both_stored_is_a_violation() {
    let base = [set(0, 0, 10, "v1"), gets(1, 20, 30, "v1", 7), gets(2, 20, 30, "v1", 7)];
    let mut h = base.to_vec();
    h.extend([
        cas(1, 40, 50, "v2", 7, Output::Stored),
        cas(2, 45, 55, "v3", 7, Output::Stored),
    ]);
    assert_violation(&h);
    let mut h = base.to_vec();
    h.extend([
        cas(1, 40, 50, "v2", 7, Output::Stored),
        cas(2, 45, 55, "v3", 7, Output::Exists),
        gets(0, 60, 70, "v2", 8),
    ]);
    assert_ok(&h);
    // A cas that fails although nothing changed since the unique was read is one too.
    let mut h = base.to_vec();
    h.push(cas(1, 40, 50, "v2", 7, Output::Exists));
    assert_violation(&h);
    // cas on an absent item: NOT_FOUND.
    assert_ok(&[cas(0, 0, 10, "v", 3, Output::NotFound)]);
    assert_violation(&[set(0, 0, 10, "v1"), cas(0, 20, 30, "v", 3, Output::NotFound)]);
}

#[test]
fn a_cas_with_an_unseen_unique_is_judged_by_which_value_the_unique_belongs_to() {
    // v2's unique was never observed, 7 belongs to v1: a cas(7) over v2 must fail.
    assert_violation(&[
        set(0, 0, 10, "v1"),
        gets(1, 20, 30, "v1", 7),
        set(0, 40, 50, "v2"),
        cas(1, 60, 70, "v3", 7, Output::Stored),
    ]);
    // One value with two uniques, one unique on two values: violations without a search.
    let v = assert_violation(&[set(0, 0, 10, "v1"), gets(1, 20, 30, "v1", 7), gets(1, 40, 50, "v1", 8)]);
    assert!(v.reason.contains("two different cas uniques"), "{v}");
    let v = assert_violation(&[
        set(0, 0, 10, "v1"),
        gets(1, 20, 30, "v1", 7),
        set(0, 40, 50, "v2"),
        gets(1, 60, 70, "v2", 7),
    ]);
    assert!(v.reason.contains("two different values"), "{v}");
}

#[test]
fn an_indeterminate_cas_may_store_or_not() {
    let base = [
        set(0, 0, 10, "v1"),
        gets(1, 20, 30, "v1", 7),
        op(
            1,
            40,
            None,
            Input::Cas {
                value: b("v2"),
                unique: 7,
            },
            Output::Indeterminate,
        ),
    ];
    let mut h = base.to_vec();
    h.push(get(2, 100, 110, Some("v2")));
    assert_ok(&h);
    let mut h = base.to_vec();
    h.push(get(2, 100, 110, Some("v1")));
    assert_ok(&h);
    // Not after v1 was replaced by a write that returned before the cas was called.
    let h = [
        set(0, 0, 10, "v1"),
        gets(1, 20, 30, "v1", 7),
        set(0, 32, 35, "v9"),
        op(
            1,
            40,
            None,
            Input::Cas {
                value: b("v2"),
                unique: 7,
            },
            Output::Indeterminate,
        ),
        get(2, 100, 110, Some("v2")),
    ];
    assert_violation(&h);
}

#[test]
fn an_unread_indeterminate_write_still_explains_presence() {
    // "b" is never read, but its having happened is the only way add can answer NOT_STORED
    // and delete DELETED.
    assert_ok(&[
        set_indet(0, 0, "b"),
        add(1, 10, 20, "c", Output::NotStored),
        delete(1, 30, 40, Output::Deleted),
        get(1, 50, 60, None),
    ]);
    assert_violation(&[
        add(1, 10, 20, "c", Output::NotStored),
        set_indet(0, 30, "b"),
        get(1, 50, 60, None),
    ]);
    // A read of it is an observation: it keeps its value.
    assert_ok(&[set(2, 0, 5, "a"), set_indet(0, 10, "b"), get(1, 20, 30, Some("b"))]);
}

#[test]
fn hundreds_of_pending_indeterminate_writes_are_decided_within_the_budget() {
    let opts = CheckOptions { max_steps: 200_000 };
    let mut h = Vec::new();
    for i in 0..100u64 {
        let t = 100 * i;
        h.push(set(0, t, t + 10, &format!("w{i}")));
        h.push(get(1, t + 20, t + 30, Some(&format!("w{i}"))));
        h.push(set_indet(2, t + 40, &format!("lost{i}")));
        h.push(op(3, t + 45, None, Input::Delete, Output::Indeterminate));
        h.push(op(3, t + 46, None, Input::Incr(1), Output::Indeterminate));
    }
    let refs: Vec<&Op> = h.iter().collect();
    let (v, steps) = check_key(K, &refs, opts).unwrap();
    assert_eq!(v, Verdict::Ok, "after {steps} steps");
    // A stale read at the end: still a verdict, not "unknown".
    h.push(get(1, 20_000, 20_010, Some("w50")));
    let refs: Vec<&Op> = h.iter().collect();
    let (v, steps) = check_key(K, &refs, opts).unwrap();
    assert!(matches!(v, Verdict::Violation(_)), "{v:?} after {steps} steps");
}

#[test]
fn incr_results_going_backwards_is_a_violation() {
    assert_violation(&[
        set(0, 0, 10, "10"),
        incr(1, 20, 30, 1, Output::Number(12)),
        incr(2, 40, 50, 1, Output::Number(11)),
    ]);
    // Overlapping incrs may return in either order.
    assert_ok(&[
        set(0, 0, 10, "10"),
        incr(1, 20, 60, 1, Output::Number(12)),
        incr(2, 25, 40, 1, Output::Number(11)),
        get(0, 70, 80, Some("12")),
    ]);
    assert_ok(&[
        incr(0, 0, 10, 1, Output::NotFound),
        set(0, 20, 30, "x"),
        incr(0, 40, 50, 1, Output::NonNumeric),
    ]);
    assert_violation(&[set(0, 0, 10, "x"), incr(0, 40, 50, 1, Output::Number(1))]);
}

#[test]
fn keys_are_checked_independently_and_reported_in_order() {
    let mut a = set(0, 0, 10, "a");
    a.key = "x".into();
    let mut stale = get(0, 20, 30, None);
    stale.key = "x".into();
    let h = vec![a, stale, set(1, 0, 10, "b"), get(1, 20, 30, Some("b"))];
    let r = check(&h, CheckOptions::default()).unwrap();
    assert_eq!(r.ops, 4);
    assert_eq!(r.keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["k", "x"]);
    assert_eq!(r.keys[0].verdict, Verdict::Ok);
    assert!(matches!(r.keys[1].verdict, Verdict::Violation(_)));
    assert_eq!(r.violations().count(), 1);
}

#[test]
fn malformed_histories_are_errors_not_verdicts() {
    assert!(matches!(
        check(&[set(0, 10, 5, "a")], CheckOptions::default()),
        Err(CheckError::ReturnBeforeCall { .. })
    ));
    assert!(matches!(
        check(&[set(0, 0, 5, "a"), set(0, 10, 15, "a")], CheckOptions::default()),
        Err(CheckError::DuplicateValue { .. })
    ));
}

#[test]
fn the_step_budget_gives_unknown_rather_than_hanging() {
    // Many concurrent indeterminate incrs (every subset has its own sum) and a read nothing
    // can explain: the search would visit every subset.
    let mut h = vec![set(0, 0, 1, "0")];
    h.extend((0..40).map(|i| op(i, 10 + i as u64, None, Input::Incr(1 << i), Output::Indeterminate)));
    h.push(get(99, 100, 110, Some("nobody")));
    let (v, steps) = check_key(K, &h.iter().collect::<Vec<_>>(), CheckOptions { max_steps: 10_000 }).unwrap();
    assert_eq!(v, Verdict::Unknown { steps: 10_000 });
    assert_eq!(steps, 10_000);
}

/// A reference memcached for one key: real cas uniques from a counter.
#[derive(Default)]
struct Reference {
    item: Option<(Vec<u8>, u64)>,
    next_unique: u64,
}

impl Reference {
    fn new_unique(&mut self) -> u64 {
        self.next_unique += 1;
        self.next_unique
    }

    fn apply(&mut self, input: &Input) -> Output {
        match input {
            Input::Get => Output::Value(self.item.as_ref().map(|(v, _)| v.clone())),
            Input::Gets => Output::ValueCas(self.item.clone()),
            Input::Set(v) => {
                let u = self.new_unique();
                self.item = Some((v.clone(), u));
                Output::Stored
            }
            Input::Add(v) => {
                if self.item.is_some() {
                    return Output::NotStored;
                }
                let u = self.new_unique();
                self.item = Some((v.clone(), u));
                Output::Stored
            }
            Input::Cas { value, unique } => match &self.item {
                None => Output::NotFound,
                Some((_, u)) if u != unique => Output::Exists,
                Some(_) => {
                    let u = self.new_unique();
                    self.item = Some((value.clone(), u));
                    Output::Stored
                }
            },
            Input::Incr(d) => match &self.item {
                None => Output::NotFound,
                Some((v, _)) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok()) {
                    None => Output::NonNumeric,
                    Some(n) => {
                        let n = n.wrapping_add(*d);
                        let u = self.new_unique();
                        self.item = Some((n.to_string().into_bytes(), u));
                        Output::Number(n)
                    }
                },
            },
            Input::Delete => match self.item.take() {
                None => Output::NotFound,
                Some(_) => Output::Deleted,
            },
        }
    }
}

/// A generated step: which op (0..7), a pick among observed uniques, whether it is
/// indeterminate (and then whether it took effect), and its interval around its point.
type Step = (u8, usize, u8, u64, u64);

/// Indeterminate ops per generated history (at most: half the writes are).
const MAX_INDET: usize = 30;

/// Builds a history from a sequential execution of the reference model: op `i` takes effect at
/// instant `10 * (i + 1)`, and its interval `[point - before, point + after]` contains it, so
/// the sequential order is a valid linearization. Some writes (at most [`MAX_INDET`]) are
/// indeterminate: those that "did not happen" are left out of the reference execution.
fn generate(steps: &[Step]) -> Vec<Op> {
    let mut r = Reference::default();
    let mut seen_uniques: Vec<u64> = Vec::new();
    let mut written = 0u64;
    let mut h = Vec::new();
    let mut indets = 0;
    for (i, &(kind, pick, indet, before, after)) in steps.iter().enumerate() {
        let point = 10 * (i as u64 + 1) + 1_000;
        let mut value = || {
            written += 1;
            (written << 32).to_string().into_bytes()
        };
        let input = match kind {
            0 => Input::Get,
            1 => Input::Gets,
            2 => Input::Set(value()),
            3 => Input::Add(value()),
            4 => Input::Cas {
                value: value(),
                unique: if seen_uniques.is_empty() {
                    12345
                } else {
                    seen_uniques[pick % seen_uniques.len()]
                },
            },
            5 => Input::Incr(1 + pick as u64 % 3),
            _ => Input::Delete,
        };
        // indet: 0..=1 determinate; 2 indeterminate and took effect; 3 indeterminate, never did.
        let is_write = !input.is_read();
        let indet = if is_write && indet >= 2 && indets < MAX_INDET {
            indets += 1;
            indet
        } else {
            0
        };
        let took_effect = !(is_write && indet == 3);
        let output = if took_effect {
            r.apply(&input)
        } else {
            Output::Indeterminate
        };
        if let Output::ValueCas(Some((_, u))) = &output {
            seen_uniques.push(*u);
        }
        let (ret, output) = if is_write && indet >= 2 {
            (None, Output::Indeterminate)
        } else {
            (Some(point + after), output)
        };
        h.push(Op {
            client: i % 8,
            key: K.to_string(),
            call: point - before,
            ret,
            input,
            output,
        });
    }
    h
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec((0u8..7, 0usize..8, 0u8..4, 0u64..40, 0u64..40), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn histories_from_a_sequential_execution_with_overlapping_timing_are_linearizable(s in steps()) {
        let h = generate(&s);
        let r = check(&h, CheckOptions::default()).unwrap();
        prop_assert_eq!(&r.keys[0].verdict, &Verdict::Ok, "{:#?}", h);
    }

    #[test]
    fn one_read_of_a_value_never_written_makes_a_history_not_linearizable(s in steps(), which in 0usize..1000) {
        let mut h = generate(&s);
        let reads: Vec<usize> = (0..h.len()).filter(|&i| h[i].input == Input::Get && h[i].ret.is_some()).collect();
        prop_assume!(!reads.is_empty());
        let i = reads[which % reads.len()];
        h[i].output = Output::Value(Some(b"never written".to_vec()));
        let r = check(&h, CheckOptions::default()).unwrap();
        prop_assert!(matches!(r.keys[0].verdict, Verdict::Violation(_)), "{:#?}", h);
    }
}
