//! One worker thread: a single-threaded runtime with its own listener socket (SO_REUSEPORT),
//! its own VM per filter and its own upstream pools, as Envoy's workers. It serves the
//! generation in force and builds the next one when the configuration is reloaded.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use meshwork_wasm_host::{QueueOwner, Services};
use tokio::sync::mpsc;

use super::dispatch::FilterSlot;
use super::generation::{Blueprint, Generation};
use super::stats::WorkerStats;

/// Shared-queue deliveries: (filter slot id, queue id).
pub type QueueDeliveries = mpsc::UnboundedReceiver<(u64, u32)>;

/// What the reload controller asks of a worker.
pub enum Command {
    /// Build a generation from this blueprint and report whether every filter started.
    Prepare { blueprint: Arc<Blueprint>, reply: std::sync::mpsc::Sender<Result<(), String>> },
    /// Serve the prepared generation from now on (and say when it does).
    Commit { reply: std::sync::mpsc::Sender<()> },
    /// Drop the prepared generation (another worker failed to build its own).
    Abort,
}

pub struct Worker {
    pub index: usize,
    pub services: Arc<Services>,
    pub stats: WorkerStats,
    current: RefCell<Rc<Generation>>,
    prepared: RefCell<Option<Rc<Generation>>>,
    next_connection: Cell<u64>,
    rng: Cell<u64>,
    /// Shared-queue deliveries, by the id of the filter slot that registered the queue.
    queue_tx: mpsc::UnboundedSender<(u64, u32)>,
    queue_slots: RefCell<HashMap<u64, Weak<FilterSlot>>>,
    next_slot: Cell<u64>,
}

/// Routes `proxy_on_queue_ready` to the worker (and filter slot) that registered a queue; it
/// may be called from any thread.
struct WorkerQueueOwner {
    tx: mpsc::UnboundedSender<(u64, u32)>,
    slot: u64,
}

impl QueueOwner for WorkerQueueOwner {
    fn queue_ready(&self, queue_id: u32) {
        let _ = self.tx.send((self.slot, queue_id));
    }
}

impl Worker {
    /// Builds the worker and its first generation; returns the receiver of queue deliveries
    /// for [`Worker::deliver_queues`].
    pub fn start(
        index: usize,
        services: Arc<Services>,
        blueprint: &Blueprint,
    ) -> anyhow::Result<(Rc<Worker>, QueueDeliveries)> {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let worker = Rc::new(Worker {
            index,
            stats: WorkerStats::new(&services, index),
            services: services.clone(),
            current: RefCell::new(Rc::new(Generation::empty(blueprint))),
            prepared: RefCell::new(None),
            next_connection: Cell::new((index as u64) << 48),
            rng: Cell::new(u64::from_le_bytes(seed) | 1),
            queue_tx,
            queue_slots: RefCell::default(),
            next_slot: Cell::new(0),
        });
        let first = Generation::build(blueprint, &worker, None)?;
        *worker.current.borrow_mut() = Rc::new(first);
        Ok((worker, queue_rx))
    }

    /// The generation new requests use.
    pub fn current(&self) -> Rc<Generation> {
        self.current.borrow().clone()
    }

    pub fn handle(self: &Rc<Self>, command: Command) {
        match command {
            Command::Prepare { blueprint, reply } => {
                let current = self.current.borrow().clone();
                let result = Generation::build(&blueprint, self, Some(&current)).map(Rc::new);
                let answer = result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
                *self.prepared.borrow_mut() = result.ok();
                let _ = reply.send(answer);
            }
            Command::Commit { reply } => {
                if let Some(next) = self.prepared.borrow_mut().take() {
                    next.bind_dispatcher();
                    *self.current.borrow_mut() = next;
                }
                self.queue_slots.borrow_mut().retain(|_, slot| slot.strong_count() > 0);
                let _ = reply.send(());
            }
            Command::Abort => {
                self.prepared.borrow_mut().take();
            }
        }
    }

    /// A queue owner for a new filter slot, and the slot id it reports (see
    /// [`Worker::register_slot`]).
    pub fn queue_owner(&self) -> (u64, Arc<dyn QueueOwner>) {
        let slot = self.next_slot.get();
        self.next_slot.set(slot + 1);
        (slot, Arc::new(WorkerQueueOwner { tx: self.queue_tx.clone(), slot }))
    }

    /// Queue deliveries for `id` go to `slot`'s current VM.
    pub fn register_slot(&self, id: u64, slot: &Rc<FilterSlot>) {
        self.queue_slots.borrow_mut().insert(id, Rc::downgrade(slot));
    }

    /// Delivers `proxy_on_queue_ready` to the VM of the slot that registered each queue.
    pub async fn deliver_queues(self: Rc<Self>, mut rx: mpsc::UnboundedReceiver<(u64, u32)>) {
        while let Some((slot, queue)) = rx.recv().await {
            let slot = self.queue_slots.borrow().get(&slot).and_then(Weak::upgrade);
            if let Some(vm) = slot.and_then(|s| s.current()) {
                let _ = vm.on_queue_ready(queue);
            }
        }
    }

    pub fn connection_id(&self) -> u64 {
        let id = self.next_connection.get() + 1;
        self.next_connection.set(id);
        id
    }

    /// xorshift64: request ids and retry jitter, not secrets.
    fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    /// Uniform in [0, 1).
    pub fn random_unit(&self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A version-4 UUID for `x-request-id`, as Envoy generates, formatted by hand: this runs for
    /// every request without one.
    pub fn request_id(&self) -> http::HeaderValue {
        let next = || self.next_random();
        let a = (next() & 0xffff_ffff_ffff_0fff) | 0x4000; // version 4
        let b = (next() & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // RFC 4122 variant
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_be_bytes());
        bytes[8..].copy_from_slice(&b.to_be_bytes());
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00000000-0000-0000-0000-000000000000";
        // Where each of the 16 bytes lands in the 8-4-4-4-12 layout.
        const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        for (byte, at) in bytes.iter().zip(AT) {
            out[at] = HEX[(byte >> 4) as usize];
            out[at + 1] = HEX[(byte & 0xf) as usize];
        }
        http::HeaderValue::from_bytes(&out).unwrap_or(http::HeaderValue::from_static("0"))
    }
}
