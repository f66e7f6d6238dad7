//! Wake-ups for HTTP contexts. Proxy-wasm has no per-stream timers, only the root context's
//! tick, so a stream that must wait (a fault delay, a retry back-off) is registered here and the
//! root's `on_tick` asks which are due. The tick runs fast only while something is waiting; the
//! rest of the time at the idle period (none unless the filter asks for a periodic tick).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use proxy_wasm::hostcalls;

/// Tick period while wake-ups are pending: the resolution of every delay.
const RESOLUTION: Duration = Duration::from_millis(1);

#[derive(Default)]
pub struct Wakeups {
    /// (due time in ns since the epoch, context id), earliest first.
    pending: RefCell<BinaryHeap<Reverse<(u64, u32)>>>,
    /// Tick period when nothing is waiting (zero: no tick).
    idle_period: Cell<Duration>,
}

impl Wakeups {
    /// For a root that also needs a periodic tick of its own (heartbeats, probes).
    pub fn with_idle_period(period: Duration) -> Wakeups {
        let _ = hostcalls::set_tick_period(period);
        Wakeups { pending: RefCell::default(), idle_period: Cell::new(period) }
    }

    /// Wakes `context_id` at `due_ns` (host clock, ns since the epoch) or on the first tick after.
    /// Callable from any context of the VM: the tick belongs to the VM's root context.
    pub fn schedule(&self, context_id: u32, due_ns: u64) {
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            let _ = hostcalls::set_tick_period(RESOLUTION);
        }
        pending.push(Reverse((due_ns, context_id)));
    }

    /// The contexts due at `now_ns`, earliest first; stops the tick when nothing is left.
    /// Call from the root context's `on_tick`.
    pub fn take_due(&self, now_ns: u64) -> Vec<u32> {
        let mut pending = self.pending.borrow_mut();
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = pending.peek().copied() {
            if at > now_ns {
                break;
            }
            pending.pop();
            due.push(id);
        }
        if pending.is_empty() {
            let _ = hostcalls::set_tick_period(self.idle_period.get());
        }
        due
    }

    pub fn is_empty(&self) -> bool {
        self.pending.borrow().is_empty()
    }
}

/// Makes `context_id` the target of the stream hostcalls that follow (the root context acting
/// for a stream it woke up). `false` when the stream has ended meanwhile.
pub fn act_for(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}
