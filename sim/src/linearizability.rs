//! Linearizability checking of a key-value history, after Wing & Gong with
//! Lowe's memoisation (the algorithm Porcupine implements).
//!
//! The history is split per key (operations on different keys commute, so
//! the whole history is linearizable iff each key's is). For one key, the
//! search walks the call/return events in time order, tentatively
//! linearising each pending call whose effect the register model allows,
//! and backtracking when a return arrives for an operation not yet
//! linearised. A cache of (set of linearised operations, model state) prunes
//! states already explored. An operation that never returned (timed out)
//! returns at infinity and accepts any output, so it may take effect at any
//! point after its call, or effectively never.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;

use crate::history::{Input, Operation, Output};

/// Search steps allowed per key before giving up.
pub const STEP_BUDGET: u64 = 5_000_000;

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// Some total order explains every answer.
    Ok,
    /// No order does; says which key and how far the search got.
    Illegal(String),
    /// The search ran out of budget.
    Unknown,
}

/// The register model of one key: `Some(value)` or absent. Returns the next
/// state if `input` may answer `output` in `state`. A multi-key write is
/// checked key by key (its atomicity across keys is not).
fn step(
    key: &Bytes,
    state: &Option<Bytes>,
    input: &Input,
    output: &Option<Output>,
) -> Option<Option<Bytes>> {
    match input {
        Input::MSet { pairs } => match output {
            None | Some(Output::Ok) => {
                let last = pairs.iter().rev().find(|(k, _)| k == key);
                Some(last.map_or_else(|| state.clone(), |(_, v)| Some(v.clone())))
            }
            _ => None,
        },
        Input::Get { .. } => match output {
            None => Some(state.clone()),
            Some(Output::Value(v)) if state.as_ref() == Some(v) => Some(state.clone()),
            Some(Output::NotFound) if state.is_none() => Some(None),
            _ => None,
        },
        Input::Set { value, .. } => match output {
            None | Some(Output::Ok) => Some(Some(value.clone())),
            _ => None,
        },
        Input::Del { .. } => match output {
            None => Some(None),
            Some(Output::Ok) if state.is_some() => Some(None),
            Some(Output::NotFound) if state.is_none() => Some(None),
            _ => None,
        },
        Input::Cas { expected, new, .. } => {
            let matches = state.as_ref() == Some(expected);
            match output {
                None if matches => Some(Some(new.clone())),
                None => Some(state.clone()),
                Some(Output::Ok) if matches => Some(Some(new.clone())),
                Some(Output::CasFailed(current)) if !matches && current == state => {
                    Some(state.clone())
                }
                _ => None,
            }
        }
        Input::Incr { by, .. } => {
            let current = match state {
                None => 0,
                Some(v) => kv_engine::kv::parse_integer(v)?,
            };
            let next = current.checked_add(*by)?;
            match output {
                None => Some(Some(Bytes::from(next.to_string()))),
                Some(Output::Int(n)) if *n == next => Some(Some(Bytes::from(next.to_string()))),
                _ => None,
            }
        }
        // The workload issues none of these.
        _ => None,
    }
}

/// Checks a whole history.
pub fn check_history(ops: &[Operation]) -> CheckResult {
    let mut by_key: BTreeMap<&Bytes, Vec<&Operation>> = BTreeMap::new();
    // A read whose answer never came constrains nothing and changes
    // nothing: leaving it out shrinks the search without changing the verdict.
    for op in ops
        .iter()
        .filter(|o| !(o.output.is_none() && matches!(o.input, Input::Get { .. })))
    {
        for key in op.input.keys() {
            by_key.entry(key).or_default().push(op);
        }
    }
    let mut unknown = false;
    for (key, ops) in by_key {
        match check_key(key, &ops) {
            CheckResult::Ok => {}
            CheckResult::Illegal(why) => {
                return CheckResult::Illegal(format!(
                    "key {:?}: {why}",
                    String::from_utf8_lossy(key)
                ))
            }
            CheckResult::Unknown => unknown = true,
        }
    }
    if unknown {
        CheckResult::Unknown
    } else {
        CheckResult::Ok
    }
}

/// One event of the doubly linked event list.
#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return event.
    pair: usize,
    prev: usize,
    next: usize,
}

/// A set of operation indexes, hashed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The calls and returns of one key's history in time order, as a doubly
/// linked list the search lifts operations out of and puts back
/// (Wing & Gong, with Lowe's cache). Index 0 is a sentinel head.
struct Events {
    list: Vec<Event>,
    /// One past the last event.
    end: usize,
}

impl Events {
    fn new(ops: &[&Operation]) -> Self {
        let n = ops.len();
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.invoke, true, i));
            let ret = if op.output.is_none() {
                u64::MAX
            } else {
                op.ret
            };
            order.push((ret, false, i));
        }
        // Calls before returns at equal times keeps overlapping operations concurrent.
        order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
        let mut list: Vec<Event> = Vec::with_capacity(2 * n + 1);
        list.push(Event {
            op: usize::MAX,
            is_call: false,
            pair: 0,
            prev: 0,
            next: 1,
        });
        let mut return_of = vec![0usize; n];
        for (pos, &(_, is_call, op)) in order.iter().enumerate() {
            let idx = pos + 1;
            if !is_call {
                return_of[op] = idx;
            }
            list.push(Event {
                op,
                is_call,
                pair: 0,
                prev: idx - 1,
                next: idx + 1,
            });
        }
        for e in list.iter_mut().skip(1) {
            if e.is_call {
                e.pair = return_of[e.op];
            }
        }
        let end = list.len();
        Events { list, end }
    }

    /// The first event still in the list (`end` when none is).
    fn first(&self) -> usize {
        self.list[0].next
    }

    /// Takes a call and its return out of the list (the operation is
    /// placed in the order being built).
    fn lift(&mut self, call: usize) {
        let ret = self.list[call].pair;
        self.unlink(call);
        self.unlink(ret);
    }

    /// Puts a lifted call and its return back, the reverse of `lift`.
    fn unlift(&mut self, call: usize) {
        let ret = self.list[call].pair;
        self.relink(ret);
        self.relink(call);
    }

    fn unlink(&mut self, at: usize) {
        let (p, nx) = (self.list[at].prev, self.list[at].next);
        self.list[p].next = nx;
        if nx < self.end {
            self.list[nx].prev = p;
        }
    }

    fn relink(&mut self, at: usize) {
        let (p, nx) = (self.list[at].prev, self.list[at].next);
        self.list[p].next = at;
        if nx < self.end {
            self.list[nx].prev = at;
        }
    }
}

/// Checks the operations of one key: a depth-first search for an order
/// of the operations that the register model accepts and that respects
/// real time, with a cache of (operations placed, state) already explored.
fn check_key(key: &Bytes, ops: &[&Operation]) -> CheckResult {
    let n = ops.len();
    let mut events = Events::new(ops);
    let end = events.end;
    // Model states interned as small ids so the cache hashes cheaply.
    let mut state_ids: HashMap<Option<Bytes>, u32> = HashMap::new();
    let mut intern = |s: &Option<Bytes>| -> u32 {
        let next = state_ids.len() as u32;
        *state_ids.entry(s.clone()).or_insert(next)
    };
    let mut cache: HashSet<(Bits, u32)> = HashSet::new();
    let mut linearized = Bits::new(n);
    let mut state: Option<Bytes> = None;
    let mut stack: Vec<(usize, Option<Bytes>)> = Vec::new();
    let mut deepest = 0usize;
    let mut steps = 0u64;
    let mut entry = events.first();
    while events.first() < end {
        steps += 1;
        if steps > STEP_BUDGET {
            return CheckResult::Unknown;
        }
        // None: every remaining event was tried (cannot happen with a
        // pending return in the list, but keep the search total).
        let e = events.list.get(entry).copied().filter(|_| entry < end);
        if let Some(e) = e.filter(|e| e.is_call) {
            let op = ops[e.op];
            if let Some(next_state) = step(key, &state, &op.input, &op.output) {
                let mut candidate = linearized.clone();
                candidate.set(e.op);
                let id = intern(&next_state);
                if cache.insert((candidate.clone(), id)) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    linearized = candidate;
                    events.lift(entry);
                    deepest = deepest.max(stack.len());
                    entry = events.first();
                    continue;
                }
            }
            entry = e.next;
            continue;
        }
        // A return whose operation is not placed yet, or nothing left to
        // try: undo the last choice.
        let Some((call, prev_state)) = stack.pop() else {
            let Some(op) = e.and_then(|e| ops.get(e.op)) else {
                return CheckResult::Illegal("no order explains the history".into());
            };
            return CheckResult::Illegal(format!(
                "{:?} -> {:?} (client {}, {}..{} ms) cannot be placed; {} of {n} operations ordered at most",
                op.input, op.output, op.client, op.at_ms.0, op.at_ms.1, deepest
            ));
        };
        state = prev_state;
        linearized.clear(events.list[call].op);
        events.unlift(call);
        entry = events.list[call].next;
    }
    CheckResult::Ok
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn op(client: u64, input: Input, output: Option<Output>, invoke: u64, ret: u64) -> Operation {
        Operation {
            client,
            input,
            output,
            invoke,
            ret,
            at_ms: (invoke, ret),
        }
    }

    fn set(v: &str) -> Input {
        Input::Set {
            key: b("k"),
            value: b(v),
        }
    }

    fn get() -> Input {
        Input::Get { key: b("k") }
    }

    fn cas(e: &str, n: &str) -> Input {
        Input::Cas {
            key: b("k"),
            expected: b(e),
            new: b(n),
        }
    }

    fn val(v: &str) -> Option<Output> {
        Some(Output::Value(b(v)))
    }

    #[test]
    fn a_sequential_history_that_follows_the_model_is_linearizable() {
        let h = vec![
            op(1, get(), Some(Output::NotFound), 1, 2),
            op(1, set("a"), Some(Output::Ok), 3, 4),
            op(2, get(), val("a"), 5, 6),
            op(2, cas("a", "b"), Some(Output::Ok), 7, 8),
            op(
                1,
                cas("a", "c"),
                Some(Output::CasFailed(Some(b("b")))),
                9,
                10,
            ),
            op(1, Input::Del { key: b("k") }, Some(Output::Ok), 11, 12),
            op(
                2,
                Input::Del { key: b("k") },
                Some(Output::NotFound),
                13,
                14,
            ),
        ];
        assert_eq!(check_history(&h), CheckResult::Ok);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        let h = vec![
            op(1, set("a"), Some(Output::Ok), 1, 2),
            op(1, set("b"), Some(Output::Ok), 3, 4),
            op(2, get(), val("a"), 5, 6),
        ];
        assert!(matches!(check_history(&h), CheckResult::Illegal(_)));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps both writes: either value (or none) is fine.
        for seen in ["a", "b"] {
            let h = vec![
                op(1, set("a"), Some(Output::Ok), 1, 5),
                op(2, set("b"), Some(Output::Ok), 2, 6),
                op(3, get(), val(seen), 3, 7),
            ];
            assert_eq!(check_history(&h), CheckResult::Ok, "read {seen}");
        }
    }

    #[test]
    fn reading_a_value_nobody_wrote_is_not_linearizable() {
        let h = vec![
            op(1, set("a"), Some(Output::Ok), 1, 2),
            op(2, get(), val("z"), 3, 4),
        ];
        assert!(matches!(check_history(&h), CheckResult::Illegal(_)));
    }

    #[test]
    fn two_cas_from_the_same_value_cannot_both_succeed() {
        let h = vec![
            op(1, set("a"), Some(Output::Ok), 1, 2),
            op(2, cas("a", "b"), Some(Output::Ok), 3, 6),
            op(3, cas("a", "c"), Some(Output::Ok), 4, 7),
        ];
        assert!(matches!(check_history(&h), CheckResult::Illegal(_)));
        let h = vec![
            op(1, set("a"), Some(Output::Ok), 1, 2),
            op(2, cas("a", "b"), Some(Output::Ok), 3, 6),
            op(
                3,
                cas("a", "c"),
                Some(Output::CasFailed(Some(b("b")))),
                4,
                7,
            ),
        ];
        assert_eq!(check_history(&h), CheckResult::Ok);
    }

    #[test]
    fn an_indeterminate_write_may_or_may_not_have_happened() {
        // It happened: a later read sees it.
        let happened = vec![
            op(1, set("a"), None, 1, u64::MAX),
            op(2, get(), val("a"), 5, 6),
        ];
        assert_eq!(check_history(&happened), CheckResult::Ok);
        // It did not: a later read does not see it.
        let not = vec![
            op(1, set("a"), None, 1, u64::MAX),
            op(2, get(), Some(Output::NotFound), 5, 6),
        ];
        assert_eq!(check_history(&not), CheckResult::Ok);
        // But it cannot take effect before it was invoked.
        let early = vec![
            op(2, get(), val("a"), 1, 2),
            op(1, set("a"), None, 3, u64::MAX),
        ];
        assert!(matches!(check_history(&early), CheckResult::Illegal(_)));
        // Nor come and go: once seen, a later read must see it or a newer write.
        let flicker = vec![
            op(1, set("a"), None, 1, u64::MAX),
            op(2, get(), val("a"), 2, 3),
            op(2, get(), Some(Output::NotFound), 4, 5),
        ];
        assert!(matches!(check_history(&flicker), CheckResult::Illegal(_)));
    }

    #[test]
    fn keys_are_checked_independently() {
        let h = vec![
            op(
                1,
                Input::Set {
                    key: b("x"),
                    value: b("1"),
                },
                Some(Output::Ok),
                1,
                2,
            ),
            op(2, Input::Get { key: b("y") }, Some(Output::NotFound), 3, 4),
            op(2, Input::Get { key: b("x") }, Some(Output::NotFound), 5, 6),
        ];
        match check_history(&h) {
            CheckResult::Illegal(why) => assert!(why.contains("\"x\""), "{why}"),
            other => panic!("expected illegal, got {other:?}"),
        }
    }

    /// A random history produced by a real sequential execution with
    /// overlapping, jittered intervals around each linearization point.
    fn random_linearizable(seed: u64, ops: usize, keys: u64) -> Vec<Operation> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let mut out = Vec::new();
        for i in 0..ops {
            let key = Bytes::from(format!("k{}", rng.random_range(0..keys)));
            let point = 10 * i as u64 + 1000;
            let invoke = point - rng.random_range(0..40);
            let ret = point + rng.random_range(0..40);
            let value = Bytes::from(format!("v{i}"));
            let current = model.get(&key).cloned();
            let (input, output) = match rng.random_range(0..4) {
                0 => (
                    Input::Get { key: key.clone() },
                    current.map_or(Output::NotFound, Output::Value),
                ),
                1 => {
                    model.insert(key.clone(), value.clone());
                    (
                        Input::Set {
                            key: key.clone(),
                            value,
                        },
                        Output::Ok,
                    )
                }
                2 => {
                    let existed = model.remove(&key).is_some();
                    (
                        Input::Del { key: key.clone() },
                        if existed {
                            Output::Ok
                        } else {
                            Output::NotFound
                        },
                    )
                }
                _ => {
                    let expected = current.clone().unwrap_or_else(|| b("none"));
                    if current.as_ref() == Some(&expected) {
                        model.insert(key.clone(), value.clone());
                        (
                            Input::Cas {
                                key: key.clone(),
                                expected,
                                new: value,
                            },
                            Output::Ok,
                        )
                    } else {
                        (
                            Input::Cas {
                                key: key.clone(),
                                expected,
                                new: value,
                            },
                            Output::CasFailed(current),
                        )
                    }
                }
            };
            let indeterminate = rng.random_bool(0.05);
            out.push(op(
                i as u64 % 8,
                input,
                if indeterminate { None } else { Some(output) },
                invoke,
                if indeterminate { u64::MAX } else { ret },
            ));
        }
        out
    }

    #[test]
    fn large_random_linearizable_histories_pass() {
        for seed in 0..20 {
            let h = random_linearizable(seed, 2000, 10);
            assert_eq!(check_history(&h), CheckResult::Ok, "seed {seed}");
        }
        // 10,000 operations over 10 keys (about 6 ms in a release build).
        let h = random_linearizable(99, 10_000, 10);
        assert_eq!(check_history(&h), CheckResult::Ok);
    }

    #[test]
    fn a_corrupted_random_history_fails() {
        let mut caught = 0;
        for seed in 0..20 {
            let mut h = random_linearizable(seed, 500, 3);
            // Make one definite read return a value that was never written.
            if let Some(o) = h
                .iter_mut()
                .find(|o| matches!(o.input, Input::Get { .. }) && o.output.is_some())
            {
                o.output = Some(Output::Value(b("never-written")));
                if matches!(check_history(&h), CheckResult::Illegal(_)) {
                    caught += 1;
                }
            }
        }
        assert_eq!(caught, 20);
    }
}
