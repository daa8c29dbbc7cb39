//! The packed instance table against the plain form it replaced (a `Vec<Use>` and a finding
//! per key in a map): the same operations, in any order, leave the same uses in the same order,
//! the same finding and the same keys — including when the first use (kept inside the record)
//! is dropped, replaced or takes another's place, and when slots are freed and reused.

use super::super::record::UseRef;
use super::super::table::InstanceTable;
use super::*;

/// A small deterministic generator: the sequence is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn a_use(n: u64) -> Use {
    Use {
        user: format!("user-{n}").into(),
        tenant: (n % 3 == 0).then(|| format!("t{}", n % 7).into()),
        first_ns: n,
        last_ns: n * 7 % 101,
        intervals: (0..n % 3).map(|i| (n + i, n + i + 1)).collect(),
        first: Seed {
            time_ns: n + 1,
            trace_id: (n % 2 == 0).then_some(crate::normalize::TraceId([n as u8 | 1; 16])),
            span_id: (n % 4 == 1).then_some(crate::normalize::SpanId([n as u8 | 1; 8])),
            signal: [Signal::Span, Signal::Log, Signal::Event][n as usize % 3],
            scope: n as u32 % 5,
        },
    }
}

fn key(n: u64) -> InstanceKey {
    InstanceKey {
        watch: (n % 2) as u16,
        scope: (n % 3) as u32,
        id: format!("instance-{n}").into(),
    }
}

#[test]
fn the_table_keeps_what_a_plain_list_per_instance_would() {
    let mut table = InstanceTable::default();
    let mut plain: BTreeMap<u64, InstanceState> = BTreeMap::new();
    let mut rng = Lcg(7);
    for step in 0..20_000u64 {
        let k = rng.next(12);
        let slot = table.find(key(k).as_ref());
        assert_eq!(slot.is_some(), plain.contains_key(&k), "step {step}");
        match (slot, plain.get_mut(&k)) {
            (None, _) => {
                let u = a_use(step);
                table.insert(key(k).as_ref(), u.as_ref(), step);
                let state = InstanceState {
                    uses: vec![u],
                    finding: None,
                    touched_s: step,
                };
                plain.insert(k, state);
            }
            (Some(slot), Some(state)) => match rng.next(7) {
                0 if state.uses.len() < 40 => {
                    let u = a_use(step);
                    assert_eq!(table.push_use(slot, u.as_ref()), state.uses.len());
                    state.uses.push(u);
                }
                1 if state.uses.len() > 1 => {
                    let i = rng.next(state.uses.len() as u64) as usize;
                    table.swap_remove_use(slot, i);
                    state.uses.swap_remove(i);
                }
                2 => {
                    let i = rng.next(state.uses.len() as u64) as usize;
                    let u = a_use(step);
                    table.replace_use(slot, i, u.as_ref());
                    state.uses[i] = u;
                }
                3 => {
                    let i = rng.next(state.uses.len() as u64) as usize;
                    let u = &mut state.uses[i];
                    let tenant = format!("late-{step}");
                    table.widen(slot, i, (step / 2, step * 2), Some(&tenant));
                    u.first_ns = u.first_ns.min(step / 2);
                    u.last_ns = u.last_ns.max(step * 2);
                    if u.tenant.is_none() {
                        u.tenant = Some(tenant.into());
                    }
                    if let Some(intervals) = table.intervals_mut(slot, i) {
                        intervals.push((step, step));
                    }
                    u.intervals.push((step, step));
                }
                4 => {
                    let finding = (rng.next(2) == 0).then(|| format!("f{step}").into());
                    let before = table.set_finding(slot, finding.clone());
                    assert_eq!(before, std::mem::replace(&mut state.finding, finding));
                }
                5 => {
                    let gone = table.remove(slot, true);
                    let state = plain.remove(&k);
                    assert_eq!(format!("{gone:?}"), format!("{state:?}"), "step {step}");
                }
                _ => {
                    // Undo: put back what it was a moment ago, over what it is now.
                    let before = table.state(slot);
                    table.widen(slot, 0, (0, u64::MAX), None);
                    assert!(!table.put(key(k).as_ref(), before.clone()));
                    *state = before;
                }
            },
            (Some(_), None) => unreachable!(),
        }
        for (k, state) in &plain {
            let slot = table.find(key(*k).as_ref()).expect("tracked");
            let got = table.state(slot);
            assert_eq!(format!("{got:?}"), format!("{state:?}"), "step {step}");
            assert_eq!(table.users(slot), state.uses.len());
            for (i, u) in state.uses.iter().enumerate() {
                assert_eq!(table.use_of(slot, &u.user), Some(i), "step {step}");
                assert_eq!(table.last_ns(slot, i), u.last_ns);
            }
        }
        assert_eq!(table.len(), plain.len());
        let mut keys: Vec<InstanceKey> = table.keys().map(InstanceRef::owned).collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        let mut expected: Vec<InstanceKey> = plain.keys().map(|&k| key(k)).collect();
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(keys, expected);
    }
}

#[test]
fn conflicts_compare_principals_and_copy_only_the_conflicting_uses() {
    let mut table = InstanceTable::default();
    let (alice, bob) = (a_use(3), a_use(4));
    let slot = table.insert(key(1).as_ref(), alice.as_ref(), 0);
    table.push_use(slot, bob.as_ref());
    let users =
        |found: Vec<Use>| -> Vec<String> { found.iter().map(|u| u.user.to_string()).collect() };
    let all = |_: &UseRef<'_>| true;
    assert_eq!(
        users(table.conflicts(slot, (false, Some("user-3")), all)),
        ["user-4"]
    );
    assert_eq!(
        users(table.conflicts(slot, (false, Some("carol")), all)),
        ["user-3", "user-4"]
    );
    // By tenant: alice has one (user 3: "t3"), bob none.
    assert_eq!(
        users(table.conflicts(slot, (true, Some("t3")), all)),
        ["user-4"]
    );
    assert_eq!(users(table.conflicts(slot, (true, None), all)), ["user-3"]);
    assert!(
        table
            .conflicts(slot, (false, Some("carol")), |_| false)
            .is_empty()
    );
}
