//! The open-loop schedule, and a timer precise enough to keep it.
//!
//! One global schedule: request `i` is due at `begin + i / rps`, and slot `s` (a connection, or
//! an HTTP/2 stream slot) owns requests `s, s + slots, s + 2·slots, …` — wrk2's per-connection
//! constant rate, with the connections staggered evenly. Workers own disjoint slots, so N
//! workers send exactly the requests one process would have sent, at the same instants.
//!
//! Latency is measured from a request's due time, not from when it could be sent: a request
//! that waits behind a stalled one is charged for the wait (coordinated-omission correction).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use crate::spec::{LoadSpec, Share, Stop};

/// The requests one run records, by global index: `[first, end)`. Requests below `first` are
/// warm-up (sent, not recorded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenPlan {
    pub rps: f64,
    pub slots: usize,
    pub first: u64,
    pub end: u64,
}

impl OpenPlan {
    pub fn new(spec: &LoadSpec, rps: f64) -> OpenPlan {
        let first = (spec.warmup.as_secs_f64() * rps).ceil() as u64;
        let end = match spec.stop {
            Stop::Duration(d) => ((spec.warmup + d).as_secs_f64() * rps).ceil() as u64,
            Stop::Requests(n) => first + n,
        };
        OpenPlan { rps, slots: spec.slots(), first, end }
    }

    /// When request `i` is due, relative to the start.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * 1e9 / self.rps).round() as u64)
    }

    /// The due offset of the last recorded request's successor: the end of the recorded window.
    pub fn window_end(&self) -> Duration {
        self.due(self.end)
    }

    /// The indices slot `s` sends, in order.
    pub fn indices(&self, slot: usize) -> impl Iterator<Item = u64> + use<> {
        (slot as u64..self.end).step_by(self.slots)
    }
}

/// The connections one worker owns (slots of one connection stay together).
pub fn owned_connections(connections: usize, share: Share) -> Vec<usize> {
    (0..connections).filter(|c| c % share.count == share.index).collect()
}

/// A closed-loop request budget split across workers.
pub fn requests_share(total: u64, share: Share) -> u64 {
    total / share.count as u64 + u64::from((share.index as u64) < total % share.count as u64)
}

/// Sleeps until an instant with timerfd precision (tens of µs), where tokio's timer wheel
/// rounds to whole milliseconds. One per slot; idle when the loop is closed.
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
}

impl Pacer {
    pub fn new() -> io::Result<Pacer> {
        // SAFETY: plain syscall; the result is checked before use and owned from then on.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd stays open, and is the same descriptor, for the AsyncFd's life.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(Pacer { fd })
    }

    pub async fn sleep_until(&mut self, when: Instant) -> io::Result<()> {
        let now = Instant::now();
        if when <= now {
            return Ok(());
        }
        let d = when - now;
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long },
        };
        // SAFETY: valid descriptor and a pointer to a live itimerspec.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = 0u64;
            let read = guard.try_io(|fd| {
                // SAFETY: reads 8 bytes into a live u64, as timerfd requires.
                let n = unsafe { libc::read(fd.as_raw_fd(), (&mut expirations as *mut u64).cast(), 8) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
            });
            match read {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Asks the kernel for 1 µs timer slack on this thread (default 50 µs), so wake-ups land on time.
pub fn tighten_timer_slack() {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{RequestSpec, Target};

    fn spec(connections: usize, stop: Stop, warmup: Duration) -> LoadSpec {
        LoadSpec {
            target: Target::parse("http://127.0.0.1:1/").unwrap(),
            request: RequestSpec { method: "GET".into(), headers: vec![], body: vec![] },
            http2: false,
            streams: 1,
            rps: Some(1000.0),
            connections,
            threads: 1,
            stop,
            warmup,
            timeout: Duration::from_secs(1),
            start_at_unix_ns: None,
            samples_file: None,
        }
    }

    #[test]
    fn schedule_covers_the_window_evenly() {
        let s = spec(7, Stop::Duration(Duration::from_secs(5)), Duration::ZERO);
        let plan = OpenPlan::new(&s, 1000.0);
        assert_eq!((plan.first, plan.end), (0, 5000));
        let mut all: Vec<u64> = (0..7).flat_map(|slot| plan.indices(slot)).collect();
        all.sort();
        assert_eq!(all, (0..5000).collect::<Vec<_>>());
        assert_eq!(plan.due(1500), Duration::from_millis(1500));
        assert_eq!(plan.window_end(), Duration::from_secs(5));
    }

    #[test]
    fn warmup_and_request_counts() {
        let s = spec(4, Stop::Requests(300), Duration::from_millis(500));
        let plan = OpenPlan::new(&s, 1000.0);
        assert_eq!((plan.first, plan.end), (500, 800));
    }

    #[test]
    fn workers_share_without_overlap() {
        let mut seen = vec![];
        for index in 0..3 {
            seen.extend(owned_connections(10, Share { index, count: 3 }));
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let total: u64 = (0..3).map(|index| requests_share(100, Share { index, count: 3 })).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn pacer_wakes_close_to_the_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            tighten_timer_slack();
            let mut p = Pacer::new().unwrap();
            let mut worst = Duration::ZERO;
            for _ in 0..20 {
                let when = Instant::now() + Duration::from_micros(1500);
                p.sleep_until(when).await.unwrap();
                worst = worst.max(Instant::now() - when);
            }
            // Lenient: a loaded 2-core VM can preempt us; tokio's wheel would be ~1 ms late.
            assert!(worst < Duration::from_millis(20), "woke {worst:?} late");
        });
    }
}
