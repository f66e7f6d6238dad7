//! A bulkhead: at most `max_concurrent` requests of a key in flight, at most `max_queued`
//! waiting for a place. The state fits one shared-data slot updated with compare-and-swap.
//!
//! The count is kept per holder (a worker's VM), not as one number: a VM that dies with
//! requests in flight never releases them, and a plain counter would leak those places forever.
//! With holders, whoever next updates the key drops the entries of holders that are no longer
//! alive (their heartbeat stopped), so the places come back.
#![no_std]

use meshwork_cas_table::SlotState;

/// Most holders (VMs) with requests of one key in flight at once.
pub const MAX_HOLDERS: usize = 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub max_concurrent: u32,
    pub max_queued: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Holding {
    holder: u32,
    in_flight: u16,
    queued: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    Admitted,
    /// Waiting for a place; call [`Bulkhead::promote`] later, or [`Bulkhead::leave_queue`].
    Queued,
    /// Full, and the queue too (or there is no queue).
    Rejected,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bulkhead {
    holdings: [Holding; MAX_HOLDERS],
    len: u8,
}

impl Bulkhead {
    pub fn in_flight(&self) -> u32 {
        self.live().iter().map(|h| h.in_flight as u32).sum()
    }

    pub fn queued(&self) -> u32 {
        self.live().iter().map(|h| h.queued as u32).sum()
    }

    fn live(&self) -> &[Holding] {
        &self.holdings[..self.len as usize]
    }

    /// The holder's entry, created when there is room for one.
    fn entry(&mut self, holder: u32) -> Option<&mut Holding> {
        let len = self.len as usize;
        match self.holdings[..len].iter().position(|h| h.holder == holder) {
            Some(i) => Some(&mut self.holdings[i]),
            None if len < MAX_HOLDERS => {
                self.holdings[len] = Holding { holder, in_flight: 0, queued: 0 };
                self.len += 1;
                Some(&mut self.holdings[len])
            }
            None => None,
        }
    }

    /// Drops entries that hold nothing.
    fn compact(&mut self) {
        let mut kept = 0;
        for i in 0..self.len as usize {
            let h = self.holdings[i];
            if h.in_flight > 0 || h.queued > 0 {
                self.holdings[kept] = h;
                kept += 1;
            }
        }
        for h in &mut self.holdings[kept..] {
            *h = Holding::default();
        }
        self.len = kept as u8;
    }

    /// Drops the holdings of holders that are not alive; returns how many places came back.
    pub fn reclaim(&mut self, mut alive: impl FnMut(u32) -> bool) -> u32 {
        let mut reclaimed = 0;
        for h in &mut self.holdings[..self.len as usize] {
            if !alive(h.holder) {
                reclaimed += h.in_flight as u32 + h.queued as u32;
                h.in_flight = 0;
                h.queued = 0;
            }
        }
        self.compact();
        reclaimed
    }

    /// A new request of `holder`. Requests already waiting go first: a new one queues behind
    /// them rather than taking a place that has just come free.
    pub fn acquire(&mut self, config: &Config, holder: u32) -> Acquire {
        let (in_flight, queued) = (self.in_flight(), self.queued());
        let Some(entry) = self.entry(holder) else { return Acquire::Rejected };
        let result = if queued == 0 && in_flight < config.max_concurrent && entry.in_flight < u16::MAX {
            entry.in_flight += 1;
            Acquire::Admitted
        } else if queued < config.max_queued && entry.queued < u16::MAX {
            entry.queued += 1;
            Acquire::Queued
        } else {
            Acquire::Rejected
        };
        self.compact();
        result
    }

    /// A waiting request of `holder` takes a place if one is free.
    pub fn promote(&mut self, config: &Config, holder: u32) -> bool {
        if self.in_flight() >= config.max_concurrent {
            return false;
        }
        match self.holdings[..self.len as usize].iter_mut().find(|h| h.holder == holder && h.queued > 0) {
            Some(h) => {
                h.queued -= 1;
                h.in_flight += 1;
                true
            }
            None => false,
        }
    }

    /// A waiting request of `holder` gives up.
    pub fn leave_queue(&mut self, holder: u32) {
        if let Some(h) = self.holdings[..self.len as usize].iter_mut().find(|h| h.holder == holder) {
            h.queued = h.queued.saturating_sub(1);
        }
        self.compact();
    }

    /// A request of `holder` in flight ended.
    pub fn release(&mut self, holder: u32) {
        if let Some(h) = self.holdings[..self.len as usize].iter_mut().find(|h| h.holder == holder) {
            h.in_flight = h.in_flight.saturating_sub(1);
        }
        self.compact();
    }
}

impl SlotState for Bulkhead {
    type Config = Config;
    const LEN: usize = 1 + MAX_HOLDERS * 8;

    fn fresh(_: &Config, _: u64) -> Bulkhead {
        Bulkhead::default()
    }

    fn is_idle(&self, _: &Config, _: u64) -> bool {
        self.len == 0
    }

    fn encode(&self, out: &mut [u8]) {
        out[0] = self.len;
        for (i, h) in self.holdings.iter().enumerate() {
            let at = 1 + i * 8;
            out[at..at + 4].copy_from_slice(&h.holder.to_le_bytes());
            out[at + 4..at + 6].copy_from_slice(&h.in_flight.to_le_bytes());
            out[at + 6..at + 8].copy_from_slice(&h.queued.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Option<Bulkhead> {
        let len = *b.first()?;
        if len as usize > MAX_HOLDERS || b.len() < Self::LEN {
            return None;
        }
        let mut bulkhead = Bulkhead { len, ..Bulkhead::default() };
        for (i, h) in bulkhead.holdings.iter_mut().enumerate() {
            let at = 1 + i * 8;
            h.holder = u32::from_le_bytes(b[at..at + 4].try_into().ok()?);
            h.in_flight = u16::from_le_bytes(b[at + 4..at + 6].try_into().ok()?);
            h.queued = u16::from_le_bytes(b[at + 6..at + 8].try_into().ok()?);
        }
        Some(bulkhead)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use proptest::prelude::*;

    const C: Config = Config { max_concurrent: 2, max_queued: 1 };

    #[test]
    fn admits_then_queues_then_rejects() {
        let mut b = Bulkhead::default();
        assert_eq!(b.acquire(&C, 1), Acquire::Admitted);
        assert_eq!(b.acquire(&C, 2), Acquire::Admitted);
        assert_eq!(b.acquire(&C, 1), Acquire::Queued);
        assert_eq!(b.acquire(&C, 2), Acquire::Rejected);
        assert!(!b.promote(&C, 1), "still full");
        b.release(2);
        assert_eq!(b.acquire(&C, 2), Acquire::Rejected, "a newcomer does not jump the queue");
        assert!(b.promote(&C, 1));
        assert_eq!((b.in_flight(), b.queued()), (2, 0));
        b.release(1);
        b.release(1);
        b.release(2);
        assert_eq!(b, Bulkhead::default(), "nothing held: idle");
    }

    #[test]
    fn a_dead_holders_places_come_back() {
        let mut b = Bulkhead::default();
        b.acquire(&C, 7);
        b.acquire(&C, 7);
        b.acquire(&C, 8);
        assert_eq!(b.reclaim(|h| h != 7), 2);
        assert_eq!((b.in_flight(), b.queued()), (0, 1));
        assert!(b.promote(&C, 8));
    }

    #[test]
    fn too_many_holders_are_rejected_not_lost() {
        let c = Config { max_concurrent: 100, max_queued: 0 };
        let mut b = Bulkhead::default();
        for holder in 0..MAX_HOLDERS as u32 {
            assert_eq!(b.acquire(&c, holder), Acquire::Admitted);
        }
        assert_eq!(b.acquire(&c, 99), Acquire::Rejected);
        assert_eq!(b.in_flight(), MAX_HOLDERS as u32);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire(u32),
        Promote(usize),
        GiveUp(usize),
        Release(usize),
        Die(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..4).prop_map(Op::Acquire),
            2 => any::<usize>().prop_map(Op::Promote),
            1 => any::<usize>().prop_map(Op::GiveUp),
            3 => any::<usize>().prop_map(Op::Release),
            1 => (0u32..4).prop_map(Op::Die),
        ]
    }

    proptest! {
        /// In flight never exceeds the cap, queued never exceeds the queue, the counts always
        /// equal the model's live requests, and when every request has ended the state is idle.
        #[test]
        fn never_over_the_cap_and_never_leaks(ops in proptest::collection::vec(op(), 1..300), max in 1u32..5, queue in 0u32..3) {
            let c = Config { max_concurrent: max, max_queued: queue };
            let mut b = Bulkhead::default();
            let mut running: Vec<u32> = Vec::new();
            let mut waiting: Vec<u32> = Vec::new();
            let mut dead: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire(h) if !dead.contains(&h) => match b.acquire(&c, h) {
                        Acquire::Admitted => running.push(h),
                        Acquire::Queued => waiting.push(h),
                        Acquire::Rejected => {}
                    },
                    Op::Promote(i) if !waiting.is_empty() => {
                        let h = waiting[i % waiting.len()];
                        if b.promote(&c, h) {
                            waiting.remove(i % waiting.len());
                            running.push(h);
                        }
                    }
                    Op::GiveUp(i) if !waiting.is_empty() => b.leave_queue(waiting.remove(i % waiting.len())),
                    Op::Release(i) if !running.is_empty() => b.release(running.remove(i % running.len())),
                    Op::Die(h) => {
                        dead.push(h);
                        running.retain(|x| *x != h);
                        waiting.retain(|x| *x != h);
                        b.reclaim(|x| !dead.contains(&x));
                    }
                    _ => {}
                }
                prop_assert!(b.in_flight() <= max);
                prop_assert!(b.queued() <= queue);
                prop_assert_eq!(b.in_flight() as usize, running.len());
                prop_assert_eq!(b.queued() as usize, waiting.len());
                let mut bytes = [0u8; Bulkhead::LEN];
                b.encode(&mut bytes);
                prop_assert_eq!(Bulkhead::decode(&bytes), Some(b));
            }
            for h in running { b.release(h); }
            for h in waiting { b.leave_queue(h); }
            prop_assert!(b.is_idle(&c, 0));
        }
    }
}
