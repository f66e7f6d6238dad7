//! Per-key state shared by every worker of a proxy, in a fixed table of compare-and-swap slots.
//!
//! Proxy-wasm shared data can only create a key with an unconditional write, so two workers that
//! both find a key missing would both "create" it and one update would be lost. The table avoids
//! creation under traffic: every slot exists from configure time, keys are placed by hash with
//! linear probing, and every change is a CAS. A slot whose state says nothing a fresh state would
//! not (an idle key) can be taken over by another key, so a bounded table serves unbounded keys
//! as long as few are active at once.
#![no_std]

/// The largest slot value: an 8-byte key hash and the state.
pub const MAX_VALUE: usize = 128;

/// Shared storage with compare-and-swap, as proxy-wasm shared data provides.
pub trait CasStore {
    /// Reads a slot into `buf`; returns the value's length (0 or anything unrecognised: a free
    /// slot) and its CAS token. `None` when the slot was never created.
    fn get(&mut self, slot: usize, buf: &mut [u8; MAX_VALUE]) -> Option<(usize, u32)>;
    /// Writes a slot if its CAS token is still `cas`; `false` on mismatch.
    fn set(&mut self, slot: usize, value: &[u8], cas: u32) -> bool;
}

/// A state kept per key.
pub trait SlotState: Sized {
    /// What interpreting the state needs (limits, thresholds).
    type Config;
    /// Encoded length; at most `MAX_VALUE - 8`.
    const LEN: usize;
    fn fresh(config: &Self::Config, now_ns: u64) -> Self;
    /// True when the state carries nothing a fresh one would not: the slot may go to another key.
    fn is_idle(&self, config: &Self::Config, now_ns: u64) -> bool;
    fn encode(&self, out: &mut [u8]);
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    Done(R),
    /// Every probed slot holds another active key: the table is too small for the traffic.
    TableFull,
    /// A slot was missing: the table was not created before traffic.
    NotInitialised,
    /// Too many CAS conflicts in a row (extreme contention on one key).
    Contended,
}

/// FNV-1a: stable across builds and targets, cheap, good enough to spread keys.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const MAX_CAS_RETRIES: usize = 64;

enum Slot<T> {
    /// The key's own state.
    Mine(T),
    /// Never used by any key. A key is always placed at the first free slot of its probe
    /// sequence and slots never return to this state, so no key lives past one.
    NeverUsed,
    /// Another key's idle state: free to take over, but the key may still live further on.
    Idle,
    /// Another key's live state.
    Busy,
}

fn classify<T: SlotState>(buf: &[u8; MAX_VALUE], len: usize, hash: u64, config: &T::Config, now_ns: u64) -> Slot<T> {
    if len != 8 + T::LEN {
        return Slot::NeverUsed;
    }
    let (h, state) = buf[..len].split_at(8);
    let Some(state) = T::decode(state) else { return Slot::NeverUsed };
    if u64::from_le_bytes(h.try_into().unwrap_or_default()) == hash {
        Slot::Mine(state)
    } else if state.is_idle(config, now_ns) {
        Slot::Idle
    } else {
        Slot::Busy
    }
}

/// Where a key's state is, or where it would go.
enum Found<T> {
    Mine { slot: usize, cas: u32, state: T },
    Free { slot: usize, cas: u32 },
    Full,
    Missing,
}

/// Probes for `hash`: its own slot if it has one, else the first slot it may take.
fn find<S: CasStore, T: SlotState>(
    store: &mut S,
    slots: usize,
    max_probe: usize,
    hash: u64,
    config: &T::Config,
    now_ns: u64,
) -> Found<T> {
    let start = (hash % slots as u64) as usize;
    let mut buf = [0u8; MAX_VALUE];
    let mut free = None;
    for probe in 0..max_probe.min(slots) {
        let slot = (start + probe) % slots;
        let Some((len, cas)) = store.get(slot, &mut buf) else { return Found::Missing };
        match classify::<T>(&buf, len, hash, config, now_ns) {
            Slot::Mine(state) => return Found::Mine { slot, cas, state },
            Slot::NeverUsed => {
                free.get_or_insert((slot, cas));
                break;
            }
            Slot::Idle => {
                free.get_or_insert((slot, cas));
            }
            Slot::Busy => {}
        }
    }
    match free {
        Some((slot, cas)) => Found::Free { slot, cas },
        None => Found::Full,
    }
}

/// Applies `f` to `key`'s state (fresh if the key has none) and stores the result with CAS,
/// retrying on conflict; `f` may therefore run more than once and must only compute. When `f`
/// changes nothing the slot is not written: a decision that only reads costs one read.
pub fn update<S: CasStore, T: SlotState, R>(
    store: &mut S,
    slots: usize,
    max_probe: usize,
    key: &[u8],
    config: &T::Config,
    now_ns: u64,
    mut f: impl FnMut(&mut T) -> R,
) -> Outcome<R> {
    if slots == 0 {
        return Outcome::TableFull;
    }
    let hash = key_hash(key);
    let mut out = [0u8; MAX_VALUE];
    for _ in 0..MAX_CAS_RETRIES {
        let (slot, cas, mut state) = match find::<S, T>(store, slots, max_probe, hash, config, now_ns) {
            Found::Mine { slot, cas, state } => (slot, cas, state),
            Found::Free { slot, cas } => (slot, cas, T::fresh(config, now_ns)),
            Found::Full => return Outcome::TableFull,
            Found::Missing => return Outcome::NotInitialised,
        };
        let mut before = [0u8; MAX_VALUE];
        state.encode(&mut before[..T::LEN]);
        let result = f(&mut state);
        out[..8].copy_from_slice(&hash.to_le_bytes());
        state.encode(&mut out[8..8 + T::LEN]);
        if out[8..8 + T::LEN] == before[..T::LEN] {
            return Outcome::Done(result);
        }
        if store.set(slot, &out[..8 + T::LEN], cas) {
            return Outcome::Done(result);
        }
    }
    Outcome::Contended
}

/// Reads `key`'s state without writing: fresh when it has none yet, `None` when the table
/// holds no place for it or was not created.
pub fn read<S: CasStore, T: SlotState>(
    store: &mut S,
    slots: usize,
    max_probe: usize,
    key: &[u8],
    config: &T::Config,
    now_ns: u64,
) -> Option<T> {
    if slots == 0 {
        return None;
    }
    match find::<S, T>(store, slots, max_probe, key_hash(key), config, now_ns) {
        Found::Mine { state, .. } => Some(state),
        Found::Free { .. } => Some(T::fresh(config, now_ns)),
        Found::Full | Found::Missing => None,
    }
}

/// An in-memory [`CasStore`] with the host's CAS semantics, for tests and simulators.
#[cfg(any(test, feature = "mem"))]
pub mod mem {
    extern crate alloc;
    use alloc::vec;
    use alloc::vec::Vec;

    use super::{CasStore, MAX_VALUE};

    /// Every slot created (holding a one-byte "free" marker), CAS tokens bumped on every write.
    pub struct MemStore {
        pub slots: Vec<Option<(Vec<u8>, u32)>>,
        next_cas: u32,
    }

    impl MemStore {
        pub fn created(n: usize) -> MemStore {
            MemStore { slots: vec![Some((vec![0], 1)); n], next_cas: 2 }
        }

        pub fn uncreated(n: usize) -> MemStore {
            MemStore { slots: vec![None; n], next_cas: 1 }
        }
    }

    impl CasStore for MemStore {
        fn get(&mut self, slot: usize, buf: &mut [u8; MAX_VALUE]) -> Option<(usize, u32)> {
            let (v, cas) = self.slots[slot].as_ref()?;
            buf[..v.len()].copy_from_slice(v);
            Some((v.len(), *cas))
        }

        fn set(&mut self, slot: usize, value: &[u8], cas: u32) -> bool {
            let Some(entry) = self.slots[slot].as_mut() else { return false };
            if cas != 0 && cas != entry.1 {
                return false;
            }
            *entry = (value.to_vec(), self.next_cas);
            self.next_cas += 1;
            true
        }
    }

    /// A store in which, between a worker's read and its write, a rival worker runs a whole
    /// operation of its own whenever `schedule` says so: the race compare-and-swap must survive.
    pub struct Interfering<'a, F: FnMut(&mut MemStore) -> bool> {
        pub inner: MemStore,
        schedule: &'a [bool],
        step: usize,
        rival: F,
        /// How many of the rival's operations succeeded (its closure returned true).
        pub rival_successes: u64,
    }

    impl<'a, F: FnMut(&mut MemStore) -> bool> Interfering<'a, F> {
        pub fn new(inner: MemStore, schedule: &'a [bool], rival: F) -> Self {
            Interfering { inner, schedule, step: 0, rival, rival_successes: 0 }
        }
    }

    impl<F: FnMut(&mut MemStore) -> bool> CasStore for Interfering<'_, F> {
        fn get(&mut self, slot: usize, buf: &mut [u8; MAX_VALUE]) -> Option<(usize, u32)> {
            self.inner.get(slot, buf)
        }

        fn set(&mut self, slot: usize, value: &[u8], cas: u32) -> bool {
            let interfere = self.schedule.get(self.step).copied().unwrap_or(false);
            self.step += 1;
            if interfere && (self.rival)(&mut self.inner) {
                self.rival_successes += 1;
            }
            self.inner.set(slot, value, cas)
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::mem::{Interfering, MemStore};
    use super::*;
    use proptest::prelude::*;

    /// A counter that is idle at zero.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Count(u64);

    impl SlotState for Count {
        type Config = ();
        const LEN: usize = 8;
        fn fresh(_: &(), _: u64) -> Count {
            Count(0)
        }
        fn is_idle(&self, _: &(), _: u64) -> bool {
            self.0 == 0
        }
        fn encode(&self, out: &mut [u8]) {
            out.copy_from_slice(&self.0.to_le_bytes());
        }
        fn decode(b: &[u8]) -> Option<Count> {
            Some(Count(u64::from_le_bytes(b.try_into().ok()?)))
        }
    }

    fn bump(store: &mut MemStore, key: &[u8], delta: i64) -> Outcome<u64> {
        let n = store.slots.len();
        update(store, n, 4, key, &(), 0, |c: &mut Count| {
            c.0 = (c.0 as i64 + delta) as u64;
            c.0
        })
    }

    #[test]
    fn keys_have_separate_state_and_idle_slots_are_reused() {
        let mut s = MemStore::created(2);
        assert_eq!(bump(&mut s, b"a", 1), Outcome::Done(1));
        assert_eq!(bump(&mut s, b"b", 5), Outcome::Done(5));
        assert_eq!(bump(&mut s, b"a", 1), Outcome::Done(2));
        assert_eq!(bump(&mut s, b"c", 1), Outcome::TableFull);
        assert_eq!(bump(&mut s, b"a", -2), Outcome::Done(0), "a is idle now");
        assert_eq!(bump(&mut s, b"c", 1), Outcome::Done(1), "c takes a's slot");
        assert_eq!(read::<_, Count>(&mut s, 2, 2, b"b", &(), 0), Some(Count(5)));
        assert_eq!(read::<_, Count>(&mut s, 2, 2, b"zz", &(), 0), None, "no room for a new key");
    }

    #[test]
    fn a_key_behind_a_slot_that_went_idle_keeps_its_state() {
        // Find two keys that hash to the same first slot of a 4-slot table.
        let first = |k: &[u8]| key_hash(k) % 4;
        let j = b"j0".to_vec();
        let k = (0..1000u32).map(|i| std::format!("k{i}").into_bytes()).find(|k| first(k) == first(&j)).unwrap();
        let mut s = MemStore::created(4);
        assert_eq!(bump(&mut s, &j, 1), Outcome::Done(1));
        assert_eq!(bump(&mut s, &k, 7), Outcome::Done(7), "k lands after j");
        assert_eq!(bump(&mut s, &j, -1), Outcome::Done(0), "j's slot is idle now");
        assert_eq!(bump(&mut s, &k, 1), Outcome::Done(8), "k finds its own state, not j's free slot");
        assert_eq!(read::<_, Count>(&mut s, 4, 4, &k, &(), 0), Some(Count(8)));
    }

    #[test]
    fn an_uncreated_table_is_reported() {
        let mut s = MemStore::uncreated(4);
        assert_eq!(bump(&mut s, b"k", 1), Outcome::NotInitialised);
    }

    proptest! {
        /// Racing increments are never lost: the final count is every increment that reported success.
        #[test]
        fn racing_updates_are_never_lost(schedule in proptest::collection::vec(any::<bool>(), 0..200), n in 1u64..40) {
            // Between a read and its write, a second worker may run a whole update on the same key.
            let mut store = Interfering::new(MemStore::created(8), &schedule, |s| bump(s, b"k", 1) != Outcome::Contended);
            let mut mine = 0;
            for _ in 0..n {
                let done = update(&mut store, 8, 4, b"k", &(), 0, |c: &mut Count| c.0 += 1);
                if done == Outcome::Done(()) { mine += 1; }
            }
            let total = read::<_, Count>(&mut store.inner, 8, 4, b"k", &(), 0).unwrap().0;
            prop_assert_eq!(total, mine + store.rival_successes);
        }
    }
}
