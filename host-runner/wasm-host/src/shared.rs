//! Process-wide shared data (key-value with compare-and-swap) and shared queues, scoped by
//! vm_id as in Envoy, so every worker's VM of one filter sees the same state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
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
}

impl Default for SharedData {
    fn default() -> Self {
        SharedData {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::with_hasher(Fast::default()))).collect(),
            next_cas: AtomicU32::new(1),
        }
    }
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
    /// A missing key is created whatever `cas` says (Envoy's behaviour).
    pub fn set(&self, vm_id: &str, key: &[u8], value: Bytes, cas: u32) -> Result<(), Status> {
        let mut shard = lock(self.shard(key));
        if !shard.contains_key(vm_id) {
            shard.insert(vm_id.to_owned(), HashMap::with_hasher(Fast::default()));
        }
        let keys = shard.get_mut(vm_id).expect("inserted above");
        match keys.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Err(Status::CasMismatch);
                }
                *entry = (value, self.next_cas());
            }
            None => {
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
    pub fn register(&self, vm_id: &str, name: &str, owner: Arc<dyn QueueOwner>) -> u32 {
        let mut q = lock(&self.inner);
        if let Some(id) = q.by_name.get(&(vm_id.to_owned(), name.to_owned())).copied() {
            if let Some(queue) = q.queues.get_mut(&id) {
                queue.owner = owner;
            }
            return id;
        }
        let id = loop {
            q.next_id = q.next_id.wrapping_add(1);
            if q.next_id != 0 && !q.queues.contains_key(&q.next_id) {
                break q.next_id;
            }
        };
        q.by_name.insert((vm_id.to_owned(), name.to_owned()), id);
        q.queues.insert(id, Queue { items: VecDeque::new(), owner });
        id
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Result<u32, Status> {
        lock(&self.inner).by_name.get(&(vm_id.to_owned(), name.to_owned())).copied().ok_or(Status::NotFound)
    }

    pub fn enqueue(&self, id: u32, value: Bytes) -> Result<(), Status> {
        let owner = {
            let mut q = lock(&self.inner);
            let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
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

    #[test]
    fn cas_semantics_match_envoy() {
        let d = SharedData::default();
        assert_eq!(d.get("vm", b"k"), Err(Status::NotFound));
        // A missing key is created whatever the CAS says.
        d.set("vm", b"k", Bytes::from_static(b"1"), 12345).unwrap();
        let (v, cas) = d.get("vm", b"k").unwrap();
        assert_eq!(&v[..], b"1");
        assert_ne!(cas, 0);
        assert_eq!(d.set("vm", b"k", Bytes::from_static(b"2"), cas + 1), Err(Status::CasMismatch));
        d.set("vm", b"k", Bytes::from_static(b"2"), cas).unwrap();
        assert_eq!(d.set("vm", b"k", Bytes::from_static(b"3"), cas), Err(Status::CasMismatch));
        d.set("vm", b"k", Bytes::from_static(b"4"), 0).unwrap();
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
        let id = q.register("vm", "jobs", first.clone());
        assert_eq!(q.resolve("vm", "jobs"), Ok(id));
        assert_eq!(q.resolve("vm", "other"), Err(Status::NotFound));
        assert_eq!(q.dequeue(id), Err(Status::Empty));
        q.enqueue(id, Bytes::from_static(b"a")).unwrap();
        assert_eq!(q.register("vm", "jobs", second.clone()), id);
        q.enqueue(id, Bytes::from_static(b"b")).unwrap();
        assert_eq!(first.0.load(Ordering::SeqCst), 1);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(&q.dequeue(id).unwrap()[..], b"a");
        assert_eq!(&q.dequeue(id).unwrap()[..], b"b");
        assert_eq!(q.enqueue(id + 100, Bytes::new()), Err(Status::NotFound));
        assert_eq!(q.dequeue(id + 100), Err(Status::NotFound));
    }
}
