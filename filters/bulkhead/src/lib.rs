//! `bulkhead`: caps the requests of a key (route, cluster or header value) in flight at once,
//! with an optional bounded queue, across every worker of the proxy.
//!
//! Places are taken in `on_http_request_headers` and given back in `on_log`, which hosts call
//! for every stream however it ends (completed, reset by either side, answered locally, failed
//! by another filter). What `on_log` cannot cover is this filter's own VM dying with requests in
//! flight: so each VM holds its places under its own holder id and writes a heartbeat, and any
//! worker reclaims the places of holders whose heartbeat stopped (see `meshwork-bulkhead`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use meshwork_bulkhead::{Acquire, Bulkhead, Config as BulkheadConfig};
use meshwork_cas_table::Outcome as TableOutcome;
use meshwork_filter_support::wakeups::{Wakeups, act_for};
use meshwork_filter_support::{
    ConfigDuration, Random, RequestKey, SharedTable, configured, fingerprint, now_ns, property_string, tagged,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BulkheadRoot::default()) });
}}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    max_concurrent: u32,
    #[serde(default)]
    max_queued: u32,
    #[serde(default = "one_second")]
    queue_timeout: ConfigDuration,
    #[serde(default = "route_key")]
    key: RequestKey,
    #[serde(default = "service_unavailable")]
    status: u32,
    /// A holder whose heartbeat is older than this is presumed dead and its places reclaimed.
    #[serde(default = "ten_seconds")]
    lease: ConfigDuration,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
}

fn one_second() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn route_key() -> RequestKey {
    RequestKey::Route
}
fn service_unavailable() -> u32 {
    503
}
fn ten_seconds() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn default_max_keys() -> usize {
    256
}

/// How often a waiting request looks for a place that another worker gave back. Places given
/// back on the same worker are handed over at once.
const QUEUE_POLL: Duration = Duration::from_millis(1);

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where a stream of this VM stands.
enum Place {
    Holding { key: Vec<u8> },
    Waiting { key: Vec<u8>, deadline_ns: u64, arrived: u64 },
}

/// Everything the root and the streams of one VM share.
struct Shared {
    config: Config,
    limits: BulkheadConfig,
    table: SharedTable,
    /// This VM's holder id, and the shared-data key prefix of heartbeats.
    holder: u32,
    heartbeats: String,
    last_heartbeat: Cell<u64>,
    /// Other holders' heartbeats: (heartbeat, when read).
    seen: RefCell<HashMap<u32, (u64, u64)>>,
    places: RefCell<HashMap<u32, Place>>,
    /// Streams of this VM waiting in the queue: most of the time none, and then a finished
    /// request need not look for one to hand its place to.
    waiting: Cell<usize>,
    arrivals: Cell<u64>,
    wakeups: Wakeups,
    /// admitted, queued, rejected, timed_out, undecided, reclaimed
    metrics: [u32; 6],
    plugin: String,
}

const ADMITTED: usize = 0;
const QUEUED: usize = 1;
const REJECTED: usize = 2;
const TIMED_OUT: usize = 3;
const UNDECIDED: usize = 4;
const RECLAIMED: usize = 5;

impl Shared {
    fn count(&self, which: usize, n: u64) {
        let _ = hostcalls::increment_metric(self.metrics[which], n as i64);
    }

    fn heartbeat(&self, now: u64) {
        let key = format!("{}.{}", self.heartbeats, self.holder);
        if hostcalls::set_shared_data(&key, Some(&now.to_le_bytes()), None).is_ok() {
            self.last_heartbeat.set(now);
        }
    }

    fn lease_ns(&self) -> u64 {
        nanos(self.config.lease.0)
    }

    /// Whether `holder`'s heartbeat is recent. Heartbeats are re-read at most every quarter
    /// lease, so this costs no hostcall on most requests.
    fn alive(&self, holder: u32, now: u64) -> bool {
        if holder == self.holder {
            return true;
        }
        let lease = self.lease_ns();
        let mut seen = self.seen.borrow_mut();
        let entry = seen.entry(holder).or_insert((0, 0));
        if now.saturating_sub(entry.1) > lease / 4 {
            let key = format!("{}.{holder}", self.heartbeats);
            let beat = match hostcalls::get_shared_data(&key) {
                Ok((Some(v), _)) => v.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(0),
                _ => 0,
            };
            *entry = (beat, now);
        }
        now.saturating_sub(entry.0) < lease
    }

    fn update<R>(&self, key: &[u8], now: u64, f: impl FnMut(&mut Bulkhead) -> R) -> TableOutcome<R> {
        self.table.update(key, &self.limits, now, f)
    }

    /// Takes a place for a new request, after reclaiming those of dead holders.
    fn acquire(&self, key: &[u8], now: u64) -> TableOutcome<(Acquire, u32)> {
        self.update(key, now, |b| {
            let reclaimed = b.reclaim(|h| self.alive(h, now));
            (b.acquire(&self.limits, self.holder), reclaimed)
        })
    }

    fn reject(&self, status_header: &str) {
        let _ = hostcalls::send_http_response(
            self.config.status,
            vec![("x-meshwork-bulkhead", status_header), ("content-type", "text/plain")],
            Some(format!("bulkhead {status_header}\n").as_bytes()),
        );
    }

    /// Lets waiting requests of this VM in, oldest first, while places are free; rejects those
    /// whose queue timeout passed; returns those that must keep waiting.
    fn serve_queue(&self, due: &[u32], now: u64) -> Vec<u32> {
        let mut ordered: Vec<(u64, u32)> = {
            let places = self.places.borrow();
            due.iter()
                .filter_map(|id| match places.get(id) {
                    Some(Place::Waiting { arrived, .. }) => Some((*arrived, *id)),
                    _ => None,
                })
                .collect()
        };
        ordered.sort_unstable();
        let mut still_waiting = Vec::new();
        for (_, id) in ordered {
            let (key, deadline_ns) = match self.places.borrow().get(&id) {
                Some(Place::Waiting { key, deadline_ns, .. }) => (key.clone(), *deadline_ns),
                _ => continue,
            };
            if matches!(self.update(&key, now, |b| b.promote(&self.limits, self.holder)), TableOutcome::Done(true)) {
                self.waiting.set(self.waiting.get() - 1);
                self.places.borrow_mut().insert(id, Place::Holding { key });
                if act_for(id) {
                    let _ = hostcalls::resume_http_request();
                }
            } else if now >= deadline_ns {
                let _ = self.update(&key, now, |b| b.leave_queue(self.holder));
                self.waiting.set(self.waiting.get() - 1);
                self.places.borrow_mut().remove(&id);
                self.count(TIMED_OUT, 1);
                if act_for(id) {
                    self.reject("queue-timeout");
                }
            } else {
                still_waiting.push(id);
            }
        }
        still_waiting
    }
}

#[derive(Default)]
struct BulkheadRoot {
    shared: Option<Rc<Shared>>,
}

impl BulkheadRoot {
    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config: Config = meshwork_filter_support::config::parse(bytes)?;
        if config.max_concurrent == 0 {
            return Err("max_concurrent must be at least 1".into());
        }
        if config.max_keys == 0 {
            return Err("max_keys must be at least 1".into());
        }
        if config.lease.0 < Duration::from_secs(1) {
            return Err("lease must be at least 1s".into());
        }
        if !(200..=599).contains(&config.status) {
            return Err(format!("status {} is not an HTTP status code", config.status));
        }
        let limits = BulkheadConfig { max_concurrent: config.max_concurrent, max_queued: config.max_queued };
        let plugin = property_string(&["plugin_name"]).unwrap_or_else(|| "bulkhead".into());
        let namespace = format!("meshwork.bulkhead.{plugin}.{:016x}", fingerprint(bytes));
        let table = SharedTable::new(format!("{namespace}.slot"), config.max_keys);
        table.create().map_err(|s| format!("cannot create shared-data slots: {s:?}"))?;
        let metrics = ["admitted", "queued", "rejected", "timed_out", "undecided"]
            .map(|o| tagged("meshwork_bulkhead_requests_total", &[("plugin", &plugin), ("outcome", o)]));
        let metrics = [
            &metrics[0],
            &metrics[1],
            &metrics[2],
            &metrics[3],
            &metrics[4],
            &tagged("meshwork_bulkhead_reclaimed_total", &[("plugin", &plugin)]),
        ]
        .map(|name| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0));
        let holder = (Random::default().next_u64() as u32).max(1);
        let shared = Shared {
            limits,
            table,
            holder,
            heartbeats: format!("{namespace}.heartbeat"),
            last_heartbeat: Cell::new(0),
            seen: RefCell::default(),
            places: RefCell::default(),
            waiting: Cell::new(0),
            arrivals: Cell::new(0),
            wakeups: Wakeups::with_idle_period(config.lease.0 / 4),
            metrics,
            plugin,
            config,
        };
        shared.heartbeat(now_ns());
        self.shared = Some(Rc::new(shared));
        Ok(())
    }
}

impl Context for BulkheadRoot {}

impl RootContext for BulkheadRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        configured("bulkhead", self.configure(&bytes))
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let now = now_ns();
        if now.saturating_sub(shared.last_heartbeat.get()) >= shared.lease_ns() / 4 {
            shared.heartbeat(now);
        }
        let due = shared.wakeups.take_due(now);
        for id in shared.serve_queue(&due, now) {
            shared.wakeups.schedule(id, now + nanos(QUEUE_POLL));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Bounded { shared: self.shared.clone()?, id: context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Bounded {
    shared: Rc<Shared>,
    id: u32,
}

impl Context for Bounded {}

impl HttpContext for Bounded {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let s = Rc::clone(&self.shared);
        let key = s.config.key.of_request();
        let now = now_ns();
        let (decision, reclaimed) = match s.acquire(&key, now) {
            TableOutcome::Done(d) => d,
            other => {
                s.count(UNDECIDED, 1);
                let _ = hostcalls::log(
                    LogLevel::Warn,
                    &format!("{}: {other:?} for key {:?}; allowing", s.plugin, String::from_utf8_lossy(&key)),
                );
                return Action::Continue;
            }
        };
        if reclaimed > 0 {
            s.count(RECLAIMED, reclaimed as u64);
            let _ = hostcalls::log(
                LogLevel::Warn,
                &format!("{}: reclaimed {reclaimed} places held by a worker that stopped", s.plugin),
            );
        }
        match decision {
            Acquire::Admitted => {
                s.count(ADMITTED, 1);
                s.places.borrow_mut().insert(self.id, Place::Holding { key });
                Action::Continue
            }
            Acquire::Queued => {
                s.count(QUEUED, 1);
                let arrived = s.arrivals.get() + 1;
                s.arrivals.set(arrived);
                let deadline_ns = now.saturating_add(nanos(s.config.queue_timeout.0));
                s.places.borrow_mut().insert(self.id, Place::Waiting { key, deadline_ns, arrived });
                s.waiting.set(s.waiting.get() + 1);
                s.wakeups.schedule(self.id, now + nanos(QUEUE_POLL));
                Action::Pause
            }
            Acquire::Rejected => {
                s.count(REJECTED, 1);
                s.reject("full");
                Action::Pause
            }
        }
    }

    fn on_log(&mut self) {
        let s = Rc::clone(&self.shared);
        let now = now_ns();
        let place = s.places.borrow_mut().remove(&self.id);
        match place {
            Some(Place::Holding { key }) => {
                let _ = s.update(&key, now, |b| b.release(s.holder));
                // Hand the place to this VM's oldest waiting request at once, if any.
                if s.waiting.get() == 0 {
                    return;
                }
                let waiting: Vec<u32> = s
                    .places
                    .borrow()
                    .iter()
                    .filter(|(_, p)| matches!(p, Place::Waiting { key: k, .. } if *k == key))
                    .map(|(id, _)| *id)
                    .collect();
                if !waiting.is_empty() {
                    s.serve_queue(&waiting, now);
                }
            }
            Some(Place::Waiting { key, .. }) => {
                s.waiting.set(s.waiting.get() - 1);
                let _ = s.update(&key, now, |b| b.leave_queue(s.holder));
            }
            None => {}
        }
    }
}
