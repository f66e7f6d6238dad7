//! Process-wide shared data (key-value with compare-and-swap) and shared queues, scoped by
//! vm_id as in Envoy, so every worker's VM of one filter sees the same state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::abi::Status;

const SHARDS: usize = 16;

/// A fast hasher with a per-process random seed: filters read and write shared data on every
/// request, and keys may carry request data, so SipHash is too slow and no seed too naive.
type Fast = foldhash::fast::RandomState;

/// vm_id → key → (value, CAS token). Two levels so a lookup borrows its key instead of
/// building an owned (vm_id, key) pair.
type Shard = Mutex<HashMap<String, HashMap<Vec<u8>, (Bytes, u32), Fast>, Fast>>;

/// Shared key-value data. CAS tokens come from one global counter that starts at 1 and never
/// yields 0, because SDKs treat a CAS of 0 as "unconditional".
#[derive(Debug)]
pub struct SharedData {
    shards: Vec<Shard>,
    next_cas: AtomicU32,
    usage: Mutex<HashMap<String, Arc<VmUsage>>>,
}

impl Default for SharedData {
    fn default() -> Self {
        SharedData {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::with_hasher(Fast::default()))).collect(),
            next_cas: AtomicU32::new(1),
            usage: Mutex::default(),
        }
    }
}

/// What one vm_id holds in shared data and queues, for the budgets. Each VM keeps the handle
/// of its vm_id, so accounting costs no lookup.
#[derive(Debug, Default)]
pub struct VmUsage {
    pub keys: AtomicUsize,
    pub bytes: AtomicUsize,
    pub queues: AtomicUsize,
}

/// The budget one `set` may use: the calling filter's limits.
#[derive(Clone, Copy, Debug)]
pub struct SetBudget<'a> {
    pub usage: &'a VmUsage,
    pub max_keys: usize,
    pub max_bytes: usize,
}

/// Why a `set` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    TooManyKeys,
    TooManyBytes,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SharedData {
    fn shard(&self, key: &[u8]) -> &Shard {
        let mut h: u32 = 0x811c_9dc5;
        for b in key {
            h = (h ^ *b as u32).wrapping_mul(0x0100_0193);
        }
        &self.shards[h as usize % SHARDS]
    }

    /// The usage record of `vm_id`, shared by every VM with that id.
    pub fn usage(&self, vm_id: &str) -> Arc<VmUsage> {
        lock(&self.usage).entry(vm_id.to_owned()).or_default().clone()
    }

    fn next_cas(&self) -> u32 {
        loop {
            let cas = self.next_cas.fetch_add(1, Ordering::Relaxed);
            if cas != 0 {
                return cas;
            }
        }
    }

    /// The value and its CAS token; `NotFound` for a key never set.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Result<(Bytes, u32), Status> {
        let shard = lock(self.shard(key));
        shard.get(vm_id).and_then(|keys| keys.get(key)).cloned().ok_or(Status::NotFound)
    }

    /// Stores `value` unless the key exists, `cas` is non-zero and differs from its token.
    /// A missing key is created whatever `cas` says (Envoy's behaviour). Keys and bytes past
    /// `budget` are refused; the store is left as it was.
    pub fn set(&self, vm_id: &str, key: &[u8], value: Bytes, cas: u32, budget: SetBudget<'_>) -> Result<(), SetError> {
        let mut shard = lock(self.shard(key));
        if !shard.contains_key(vm_id) {
            shard.insert(vm_id.to_owned(), HashMap::with_hasher(Fast::default()));
        }
        let keys = shard.get_mut(vm_id).expect("inserted above");
        let usage = budget.usage;
        match keys.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Err(SetError::CasMismatch);
                }
                let (old, new) = (entry.0.len(), value.len());
                if new > old {
                    let grown = usage.bytes.fetch_add(new - old, Ordering::Relaxed) + (new - old);
                    if grown > budget.max_bytes {
                        usage.bytes.fetch_sub(new - old, Ordering::Relaxed);
                        return Err(SetError::TooManyBytes);
                    }
                } else {
                    usage.bytes.fetch_sub(old - new, Ordering::Relaxed);
                }
                *entry = (value, self.next_cas());
            }
            None => {
                if usage.keys.fetch_add(1, Ordering::Relaxed) >= budget.max_keys {
                    usage.keys.fetch_sub(1, Ordering::Relaxed);
                    return Err(SetError::TooManyKeys);
                }
                let size = key.len() + value.len();
                if usage.bytes.fetch_add(size, Ordering::Relaxed) + size > budget.max_bytes {
                    usage.bytes.fetch_sub(size, Ordering::Relaxed);
                    usage.keys.fetch_sub(1, Ordering::Relaxed);
                    return Err(SetError::TooManyBytes);
                }
                keys.insert(key.to_vec(), (value, self.next_cas()));
            }
        }
        Ok(())
    }
}

/// Called (from any thread) when an item is enqueued; the owner schedules `proxy_on_queue_ready`
/// on its own worker. It must not call into a VM synchronously.
pub trait QueueOwner: Send + Sync {
    fn queue_ready(&self, queue_id: u32);
}

struct Queue {
    items: VecDeque<Bytes>,
    owner: Arc<dyn QueueOwner>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
}

/// Shared queues: registered by (vm_id, name), addressed by a process-wide id.
#[derive(Default)]
pub struct SharedQueues {
    inner: Mutex<Queues>,
}

impl std::fmt::Debug for SharedQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedQueues").field("queues", &lock(&self.inner).queues.len()).finish()
    }
}

impl SharedQueues {
    /// Registers (or re-registers) a queue; the latest registrant receives `queue_ready`.
    /// A new queue past `max_queues` for the vm_id is refused (`None`).
    pub fn register(
        &self,
        vm_id: &str,
        name: &str,
        owner: Arc<dyn QueueOwner>,
        usage: &VmUsage,
        max_queues: usize,
    ) -> Option<u32> {
        let mut q = lock(&self.inner);
        if let Some(id) = q.by_name.get(&(vm_id.to_owned(), name.to_owned())).copied() {
            if let Some(queue) = q.queues.get_mut(&id) {
                queue.owner = owner;
            }
            return Some(id);
        }
        if usage.queues.load(Ordering::Relaxed) >= max_queues {
            return None;
        }
        usage.queues.fetch_add(1, Ordering::Relaxed);
        let id = loop {
            q.next_id = q.next_id.wrapping_add(1);
            if q.next_id != 0 && !q.queues.contains_key(&q.next_id) {
                break q.next_id;
            }
        };
        q.by_name.insert((vm_id.to_owned(), name.to_owned()), id);
        q.queues.insert(id, Queue { items: VecDeque::new(), owner });
        Some(id)
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Result<u32, Status> {
        lock(&self.inner).by_name.get(&(vm_id.to_owned(), name.to_owned())).copied().ok_or(Status::NotFound)
    }

    /// Appends `value`; a queue already holding `max_depth` items refuses it
    /// (`Err(None)`), an unknown id is `Err(Some(NotFound))`.
    pub fn enqueue(&self, id: u32, value: Bytes, max_depth: usize) -> Result<(), Option<Status>> {
        let owner = {
            let mut q = lock(&self.inner);
            let queue = q.queues.get_mut(&id).ok_or(Some(Status::NotFound))?;
            if queue.items.len() >= max_depth {
                return Err(None);
            }
            queue.items.push_back(value);
            Arc::clone(&queue.owner)
        };
        owner.queue_ready(id);
        Ok(())
    }

    pub fn dequeue(&self, id: u32) -> Result<Bytes, Status> {
        let mut q = lock(&self.inner);
        let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(usage: &VmUsage) -> SetBudget<'_> {
        SetBudget { usage, max_keys: 1000, max_bytes: 1 << 20 }
    }

    #[test]
    fn cas_semantics_match_envoy() {
        let d = SharedData::default();
        let usage = VmUsage::default();
        let budget = budget(&usage);
        assert_eq!(d.get("vm", b"k"), Err(Status::NotFound));
        // A missing key is created whatever the CAS says.
        d.set("vm", b"k", Bytes::from_static(b"1"), 12345, budget).unwrap();
        let (v, cas) = d.get("vm", b"k").unwrap();
        assert_eq!(&v[..], b"1");
        assert_ne!(cas, 0);
        assert_eq!(d.set("vm", b"k", Bytes::from_static(b"2"), cas + 1, budget), Err(SetError::CasMismatch));
        d.set("vm", b"k", Bytes::from_static(b"2"), cas, budget).unwrap();
        assert_eq!(d.set("vm", b"k", Bytes::from_static(b"3"), cas, budget), Err(SetError::CasMismatch));
        d.set("vm", b"k", Bytes::from_static(b"4"), 0, budget).unwrap();
        assert_eq!(&d.get("vm", b"k").unwrap().0[..], b"4");
        // vm_ids are separate namespaces.
        assert_eq!(d.get("other", b"k"), Err(Status::NotFound));
    }

    struct Count(std::sync::atomic::AtomicU32);
    impl QueueOwner for Count {
        fn queue_ready(&self, _: u32) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn queues_register_resolve_and_move_delivery() {
        let q = SharedQueues::default();
        let first = Arc::new(Count(AtomicU32::new(0)));
        let second = Arc::new(Count(AtomicU32::new(0)));
        let usage = VmUsage::default();
        let id = q.register("vm", "jobs", first.clone(), &usage, 10).unwrap();
        assert_eq!(q.resolve("vm", "jobs"), Ok(id));
        assert_eq!(q.resolve("vm", "other"), Err(Status::NotFound));
        assert_eq!(q.dequeue(id), Err(Status::Empty));
        q.enqueue(id, Bytes::from_static(b"a"), 10).unwrap();
        assert_eq!(q.register("vm", "jobs", second.clone(), &usage, 10), Some(id));
        q.enqueue(id, Bytes::from_static(b"b"), 10).unwrap();
        assert_eq!(first.0.load(Ordering::SeqCst), 1);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(&q.dequeue(id).unwrap()[..], b"a");
        assert_eq!(&q.dequeue(id).unwrap()[..], b"b");
        assert_eq!(q.enqueue(id + 100, Bytes::new(), 10), Err(Some(Status::NotFound)));
        assert_eq!(q.dequeue(id + 100), Err(Status::NotFound));
    }

    #[test]
    fn budgets_refuse_without_changing_the_store() {
        let d = SharedData::default();
        let usage = d.usage("vm");
        let tight = SetBudget { usage: &usage, max_keys: 2, max_bytes: 10 };
        d.set("vm", b"a", Bytes::from_static(b"1234"), 0, tight).unwrap();
        d.set("vm", b"b", Bytes::from_static(b"1"), 0, tight).unwrap();
        assert_eq!(d.set("vm", b"c", Bytes::new(), 0, tight), Err(SetError::TooManyKeys));
        assert_eq!(d.get("vm", b"c"), Err(Status::NotFound));
        // a(1+4) + b(1+1) = 7 bytes: growing a by 4 would make 11.
        assert_eq!(d.set("vm", b"a", Bytes::from_static(b"12345678"), 0, tight), Err(SetError::TooManyBytes));
        assert_eq!(&d.get("vm", b"a").unwrap().0[..], b"1234");
        // Shrinking frees bytes for others.
        d.set("vm", b"a", Bytes::new(), 0, tight).unwrap();
        d.set("vm", b"b", Bytes::from_static(b"12345678"), 0, tight).unwrap();
        assert_eq!(usage.keys.load(Ordering::Relaxed), 2);
        assert_eq!(usage.bytes.load(Ordering::Relaxed), 1 + 1 + 8);

        let q = SharedQueues::default();
        let owner = Arc::new(Count(AtomicU32::new(0)));
        let id = q.register("vm", "one", owner.clone(), &usage, 1).unwrap();
        assert_eq!(q.register("vm", "two", owner.clone(), &usage, 1), None, "one queue allowed");
        assert_eq!(q.register("vm", "one", owner, &usage, 1), Some(id), "re-registering is not a new queue");
        q.enqueue(id, Bytes::from_static(b"x"), 2).unwrap();
        q.enqueue(id, Bytes::from_static(b"y"), 2).unwrap();
        assert_eq!(q.enqueue(id, Bytes::from_static(b"z"), 2), Err(None), "the queue is full");
        assert_eq!(&q.dequeue(id).unwrap()[..], b"x");
        q.enqueue(id, Bytes::from_static(b"z"), 2).unwrap();
    }
}
