//! The load loop: threads, each a single-threaded event loop; connections, each one task per
//! schedule slot; one histogram and one set of counters per thread, merged at the end.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use crate::client::{self, Fail, H1, H2, Reply};
use crate::error::LoadError;
use crate::histogram::{self, Latency};
use crate::schedule::{self, OpenPlan, Pacer};
use crate::spec::{LoadSpec, Share, Stop};

/// What a run counted besides latencies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Responses received (each one's latency is in the histogram).
    pub responses: u64,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Requests that got no response, by kind: connect, write, read, timeout, protocol, and
    /// `unsent` (open loop: still not sent `timeout` after the schedule ended).
    pub errors: BTreeMap<String, u64>,
    pub bytes_read: u64,
    pub connects: u64,
}

impl Counters {
    pub fn merge(&mut self, other: &Counters) {
        self.responses += other.responses;
        for (k, v) in &other.status {
            *self.status.entry(*k).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.bytes_read += other.bytes_read;
        self.connects += other.connects;
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Responses outside 2xx and 3xx.
    pub fn bad_status(&self) -> u64 {
        self.status.iter().filter(|(s, _)| !(200..400).contains(*s)).map(|(_, n)| n).sum()
    }

    pub fn attempted(&self) -> u64 {
        self.responses + self.errors_total()
    }

    /// Requests that failed or got a status outside 2xx/3xx, over all attempted.
    pub fn error_rate(&self) -> f64 {
        let n = self.attempted();
        if n == 0 { 0.0 } else { (self.errors_total() + self.bad_status()) as f64 / n as f64 }
    }
}

/// One run's (or one merged set of workers') outcome.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub spec: LoadSpec,
    pub workers: usize,
    /// Start of the recorded window (after warm-up), Unix ns.
    pub start_unix_ns: u64,
    /// Last recorded completion, Unix ns.
    pub end_unix_ns: u64,
    /// Length of the recorded window, seconds: what achieved rates divide by.
    pub window_s: f64,
    pub counters: Counters,
    pub latency: Latency,
}

impl RunResult {
    pub fn achieved_rps(&self) -> f64 {
        if self.window_s > 0.0 { self.counters.responses as f64 / self.window_s } else { 0.0 }
    }

    /// Exact merge of another worker's result of the same run.
    pub fn merge(&mut self, other: &RunResult) -> Result<(), LoadError> {
        histogram::merge(&mut self.latency, &other.latency)?;
        self.counters.merge(&other.counters);
        self.start_unix_ns = self.start_unix_ns.min(other.start_unix_ns);
        self.end_unix_ns = self.end_unix_ns.max(other.end_unix_ns);
        self.window_s = self.window_s.max(other.window_s);
        self.workers += other.workers;
        Ok(())
    }
}

/// Set on Ctrl-C: slots stop sending, in-flight requests finish, and the run reports what it has.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    // A second Ctrl-C ends the process at once. (Both calls are async-signal-safe.)
    // SAFETY: resetting a signal's disposition to the default.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Ctrl-C stops the run gracefully instead of losing it.
pub fn stop_on_sigint() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic and resets the disposition.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Live counts for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Runs this worker's share of `spec` to completion.
pub fn run(spec: &LoadSpec, share: Share, progress: Arc<Progress>) -> Result<RunResult, LoadError> {
    spec.validate()?;
    let addr = spec.target.resolve()?;
    // One connection up front, so a dead target is one clear error, not a run of failures.
    std::net::TcpStream::connect_timeout(&addr, spec.timeout.min(Duration::from_secs(5)))
        .map_err(|e| LoadError::Unreachable { addr: addr.to_string(), reason: e.to_string() })?;
    let connections = schedule::owned_connections(spec.connections, share);
    if connections.is_empty() {
        return Err(LoadError::BadInput(format!(
            "worker {} of {} has no connection: use at least as many --connections as workers",
            share.index, share.count
        )));
    }
    let threads = spec.threads.clamp(1, connections.len());
    let budget = match (spec.rps, spec.stop) {
        (None, Stop::Requests(n)) => Some(Arc::new(AtomicU64::new(schedule::requests_share(n, share)))),
        _ => None,
    };
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut begins = Vec::new();
    let mut handles = Vec::new();
    for t in 0..threads {
        let mine: Vec<usize> = connections.iter().copied().skip(t).step_by(threads).collect();
        let (begin_tx, begin_rx) = mpsc::channel::<Instant>();
        begins.push(begin_tx);
        let (spec, ready, progress, budget) = (spec.clone(), ready_tx.clone(), progress.clone(), budget.clone());
        let handle = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || thread_main(spec, addr, mine, ready, begin_rx, progress, budget))
            .map_err(|e| LoadError::io("cannot start a load thread", e))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..threads {
        let _ = ready_rx.recv();
    }
    // Every thread has its connections: start the clock (at the shared wall-clock instant
    // when workers run in step).
    let now_i = Instant::now();
    let now_s = SystemTime::now();
    let begin = match spec.start_at_unix_ns {
        Some(at) => now_i + Duration::from_nanos(at.saturating_sub(unix_ns(now_s))),
        None => now_i + Duration::from_millis(2),
    };
    let begin_unix = unix_ns(now_s) + (begin - now_i).as_nanos() as u64;
    for tx in &begins {
        let _ = tx.send(begin);
    }
    let mut latency = histogram::new_latency();
    let mut counters = Counters::default();
    let mut last_done = begin;
    let mut samples = Vec::new();
    for h in handles {
        let out = h.join().map_err(|_| LoadError::Worker("a load thread panicked".into()))?;
        histogram::merge(&mut latency, &out.latency)?;
        counters.merge(&out.counters);
        last_done = last_done.max(out.last_done);
        samples.extend(out.samples);
    }
    let record_from = begin + spec.warmup;
    let planned_end = match (spec.rps, spec.stop) {
        (Some(r), _) => begin + OpenPlan::new(spec, r).window_end(),
        (None, Stop::Duration(d)) => record_from + d,
        (None, Stop::Requests(_)) => record_from,
    };
    // Interrupted: the window ends with the last response, not with the plan.
    let end = if interrupted() { last_done } else { last_done.max(planned_end) };
    if let Some(path) = &spec.samples_file {
        let text: String = samples.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(path, text).map_err(|e| LoadError::io(format!("cannot write {path}"), e))?;
    }
    Ok(RunResult {
        spec: spec.clone(),
        workers: 1,
        start_unix_ns: begin_unix + spec.warmup.as_nanos() as u64,
        end_unix_ns: begin_unix + (end - begin).as_nanos() as u64,
        window_s: end.saturating_duration_since(record_from).as_secs_f64(),
        counters,
        latency,
    })
}

struct ThreadOut {
    latency: Latency,
    counters: Counters,
    last_done: Instant,
    samples: Vec<u64>,
}

/// Per-thread recording state, shared by the thread's tasks.
struct Recorder {
    latency: Latency,
    counters: Counters,
    last_done: Option<Instant>,
    samples: Option<Vec<u64>>,
}

struct Ctx {
    spec: LoadSpec,
    addr: SocketAddr,
    begin: Instant,
    open: Option<OpenPlan>,
    h1_request: Rc<[u8]>,
    head: bool,
    budget: Option<Arc<AtomicU64>>,
    progress: Arc<Progress>,
    recorder: RefCell<Recorder>,
}

impl Ctx {
    fn record(&self, outcome: Result<Reply, Fail>, latency: Duration, done: Instant) {
        let mut r = self.recorder.borrow_mut();
        r.last_done = Some(done);
        match outcome {
            Ok(reply) => {
                let us = ((latency.as_nanos() + 500) / 1000).max(1) as u64;
                r.latency.saturating_record(us);
                r.counters.responses += 1;
                *r.counters.status.entry(reply.status).or_default() += 1;
                r.counters.bytes_read += reply.bytes;
                if let Some(s) = r.samples.as_mut() {
                    s.push(us.min(histogram::HIGHEST_US));
                }
            }
            Err(fail) => {
                *r.counters.errors.entry(fail.kind().to_owned()).or_default() += 1;
                self.progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.progress.done.fetch_add(1, Ordering::Relaxed);
    }

    fn count_unsent(&self, n: u64) {
        if n > 0 {
            *self.recorder.borrow_mut().counters.errors.entry("unsent".into()).or_default() += n;
            self.progress.errors.fetch_add(n, Ordering::Relaxed);
        }
    }
}

fn thread_main(
    spec: LoadSpec,
    addr: SocketAddr,
    connections: Vec<usize>,
    ready: mpsc::Sender<()>,
    begin_rx: mpsc::Receiver<Instant>,
    progress: Arc<Progress>,
    budget: Option<Arc<AtomicU64>>,
) -> ThreadOut {
    schedule::tighten_timer_slack();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let streams = if spec.http2 { spec.streams.max(1) } else { 1 };
        // Connect first, so connection set-up is not charged to the first requests.
        let mut conns = Vec::new();
        let mut connects = 0;
        for &c in &connections {
            let conn = if spec.http2 {
                let h2 = H2::connect(addr).await.ok();
                connects += u64::from(h2.is_some());
                Conn::H2(Rc::new(RefCell::new(h2)))
            } else {
                let h1 = client::connect(addr).await.ok().map(H1::new);
                connects += u64::from(h1.is_some());
                Conn::H1(h1)
            };
            conns.push((c, conn));
        }
        let _ = ready.send(());
        let begin = begin_rx.recv().unwrap_or_else(|_| Instant::now());
        let open = spec.rps.map(|r| OpenPlan::new(&spec, r));
        let ctx = Rc::new(Ctx {
            h1_request: spec.request.encode_h1(&spec.target).into(),
            head: spec.request.method.eq_ignore_ascii_case("HEAD"),
            recorder: RefCell::new(Recorder {
                latency: histogram::new_latency(),
                counters: Counters { connects, ..Counters::default() },
                last_done: None,
                samples: spec.samples_file.as_ref().map(|_| Vec::new()),
            }),
            spec,
            addr,
            begin,
            open,
            budget,
            progress,
        });
        let mut tasks = Vec::new();
        for (c, conn) in conns {
            match conn {
                Conn::H1(h1) => {
                    tasks.push(tokio::task::spawn_local(slot_loop(ctx.clone(), c, Slot::H1(h1))));
                }
                Conn::H2(shared) => {
                    for s in 0..streams {
                        let slot = Slot::H2(shared.clone());
                        tasks.push(tokio::task::spawn_local(slot_loop(ctx.clone(), c * streams + s, slot)));
                    }
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        let r = std::mem::replace(
            &mut *ctx.recorder.borrow_mut(),
            Recorder {
                latency: histogram::new_latency(),
                counters: Counters::default(),
                last_done: None,
                samples: None,
            },
        );
        ThreadOut {
            latency: r.latency,
            counters: r.counters,
            last_done: r.last_done.unwrap_or(begin),
            samples: r.samples.unwrap_or_default(),
        }
    })
}

enum Conn {
    H1(Option<H1>),
    H2(Rc<RefCell<Option<H2>>>),
}

enum Slot {
    H1(Option<H1>),
    H2(Rc<RefCell<Option<H2>>>),
}

impl Slot {
    /// One request, bounded by the timeout; a failed connection is dropped and redialled next time.
    async fn request(&mut self, ctx: &Ctx) -> Result<Reply, Fail> {
        let timeout = ctx.spec.timeout;
        match self {
            Slot::H1(conn) => {
                let result = tokio::time::timeout(timeout, async {
                    if conn.is_none() {
                        *conn = Some(H1::new(client::connect(ctx.addr).await?));
                        ctx.recorder.borrow_mut().counters.connects += 1;
                    }
                    let c = conn.as_mut().ok_or(Fail::Connect)?;
                    c.exchange(&ctx.h1_request, ctx.head).await
                })
                .await
                .unwrap_or(Err(Fail::Timeout));
                match result {
                    Ok(r) if r.keep_alive => {}
                    _ => *conn = None,
                }
                result
            }
            Slot::H2(shared) => {
                let result = tokio::time::timeout(timeout, async {
                    let current = shared.borrow().clone().filter(|h| !h.is_closed());
                    let mut h2 = match current {
                        Some(h) => h,
                        None => {
                            let h = H2::connect(ctx.addr).await?;
                            ctx.recorder.borrow_mut().counters.connects += 1;
                            *shared.borrow_mut() = Some(h.clone());
                            h
                        }
                    };
                    h2.exchange(h2_request(ctx)).await
                })
                .await
                .unwrap_or(Err(Fail::Timeout));
                if matches!(result, Err(Fail::Connect | Fail::Write)) {
                    *shared.borrow_mut() = None;
                }
                result
            }
        }
    }
}

fn h2_request(ctx: &Ctx) -> http::Request<Full<Bytes>> {
    let spec = &ctx.spec;
    let mut b = http::Request::builder().method(spec.request.method.as_str()).uri(format!(
        "http://{}{}",
        spec.target.authority(),
        spec.target.path
    ));
    for (k, v) in &spec.request.headers {
        if !k.eq_ignore_ascii_case("host") {
            b = b.header(k.as_str(), v.as_str());
        }
    }
    b.body(Full::new(Bytes::from(spec.request.body.clone()))).expect("headers were validated when parsed")
}

async fn slot_loop(ctx: Rc<Ctx>, slot_index: usize, mut slot: Slot) {
    match ctx.open {
        Some(plan) => {
            let mut pacer = Pacer::new().ok();
            // Requests still unsent this long after the schedule ended are given up on and
            // counted, so an overloaded target cannot stretch a run without bound.
            let give_up = ctx.begin + plan.window_end() + ctx.spec.timeout;
            let mut indices = plan.indices(slot_index);
            'requests: while let Some(i) = indices.next() {
                let due = ctx.begin + plan.due(i);
                // Sleep in steps of at most 100 ms, so Ctrl-C is noticed even at low rates.
                loop {
                    if interrupted() {
                        break 'requests;
                    }
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    let until = due.min(now + Duration::from_millis(100));
                    let paced = match pacer.as_mut() {
                        Some(p) => p.sleep_until(until).await.is_ok(),
                        None => false,
                    };
                    if !paced {
                        tokio::time::sleep_until(until.into()).await;
                    }
                }
                if Instant::now() > give_up {
                    let left = std::iter::once(i).chain(indices).filter(|&j| j >= plan.first).count();
                    ctx.count_unsent(left as u64);
                    break;
                }
                let outcome = slot.request(&ctx).await;
                let done = Instant::now();
                if i >= plan.first {
                    ctx.record(outcome, done.saturating_duration_since(due), done);
                }
            }
        }
        None => {
            tokio::time::sleep_until(ctx.begin.into()).await;
            let record_from = ctx.begin + ctx.spec.warmup;
            let end = match ctx.spec.stop {
                Stop::Duration(d) => Some(record_from + d),
                Stop::Requests(_) => None,
            };
            loop {
                let sent = Instant::now();
                if end.is_some_and(|e| sent >= e) || interrupted() {
                    break;
                }
                let recording = sent >= record_from;
                if recording
                    && let Some(budget) = &ctx.budget
                    && budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_err()
                {
                    break;
                }
                let outcome = slot.request(&ctx).await;
                let done = Instant::now();
                let failed_connect = outcome == Err(Fail::Connect);
                if recording {
                    ctx.record(outcome, done - sent, done);
                }
                if failed_connect {
                    // Closed loop against a refusing port would otherwise spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_merge_and_rates() {
        let mut a = Counters { responses: 90, status: BTreeMap::from([(200, 80), (503, 10)]), ..Counters::default() };
        a.errors.insert("timeout".into(), 5);
        let b = Counters {
            responses: 5,
            status: BTreeMap::from([(200, 5)]),
            errors: BTreeMap::from([("timeout".into(), 1), ("connect".into(), 4)]),
            bytes_read: 10,
            connects: 2,
        };
        a.merge(&b);
        assert_eq!(a.responses, 95);
        assert_eq!(a.status[&200], 85);
        assert_eq!(a.errors["timeout"], 6);
        assert_eq!(a.errors_total(), 10);
        assert_eq!(a.bad_status(), 10);
        assert_eq!(a.attempted(), 105);
        assert!((a.error_rate() - 20.0 / 105.0).abs() < 1e-12);
        assert_eq!(Counters::default().error_rate(), 0.0);
    }
}
