//! Shared plumbing for meshwork's proxy-wasm filters, on top of the `proxy-wasm` SDK.
//!
//! Everything here is host-neutral: it uses only ABI v0.2.1 hostcalls and Envoy's property
//! paths, so filters built on it run unchanged in Envoy, Istio, Consul, Kuma and meshwork.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod callout;
pub mod config;
pub mod outcome;
pub mod wakeups;

use meshwork_cas_table::{CasStore, MAX_VALUE, Outcome, SlotState};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use serde::{Deserialize, Deserializer};

/// The end of a root context's `on_configure`: true when the configuration was taken; otherwise
/// logs why (hosts refuse the plugin and show the log) and returns false.
pub fn configured<E: core::fmt::Display>(filter: &str, result: Result<(), E>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => {
            let _ = hostcalls::log(proxy_wasm::types::LogLevel::Error, &format!("{filter}: {e}"));
            false
        }
    }
}

/// A duration in config: `"250ms"`, `"1.5s"`, `"2m"`, `"1h"`, `"100us"`, or a number of milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn parse(text: &str) -> Result<Duration, String> {
        meshwork_units::parse_duration(text).map_err(|e| e.to_string())
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(ConfigDuration(Duration::from_millis(ms))),
            Raw::Text(t) => ConfigDuration::parse(&t).map(ConfigDuration).map_err(serde::de::Error::custom),
        }
    }
}

/// A fast random source for sampling decisions (fault percentages, split weights, jitter): a
/// xorshift generator seeded from WASI `random_get`. Not for secrets.
pub struct Random(std::cell::Cell<u64>);

impl Default for Random {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState's keys come from the host's random_get; hashing the clock adds per-VM
        // variety even where a host hands out fixed keys.
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u64(now_ns());
        Random(std::cell::Cell::new(h.finish() | 1))
    }
}

impl Random {
    pub fn next_u64(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.set(x);
        x
    }

    /// Uniform in [0, 1).
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Current time from the host in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t: SystemTime| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

mod raw {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_get_property(path: *const u8, len: usize, ret: *mut *mut u8, ret_len: *mut usize) -> u32;
    }
}

/// A property by its encoded path (segments joined by NUL, e.g. `b"xds\0route_name"`).
/// Calls the hostcall directly: the SDK's `get_property` builds the path anew on every call,
/// and this runs per request. Any status but OK is `None`.
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: the host writes a pointer to `len` bytes it allocated with this module's
    // allocator (proxy_on_memory_allocate), whose ownership passes to us, as the SDK assumes.
    unsafe {
        if raw::proxy_get_property(path.as_ptr(), path.len(), &mut ptr, &mut len) != 0 || ptr.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(ptr, len, len))
    }
}

/// A property as a UTF-8 string (Envoy serialises string attributes as raw bytes).
pub fn property_string(path: &[&str]) -> Option<String> {
    String::from_utf8(property(path.join("\0").as_bytes())?).ok()
}

/// The route's name: `xds.route_name` (Envoy 1.33 and later), else the older top-level
/// `route_name`, else `None`.
pub fn route_name() -> Option<Vec<u8>> {
    property(b"xds\0route_name").or_else(|| property(b"route_name")).filter(|r| !r.is_empty())
}

/// The cluster the route sends to: `xds.cluster_name` (Envoy 1.33 and later), else the older
/// `cluster_name`. Empty before the host has picked one.
pub fn cluster_name() -> Option<Vec<u8>> {
    property(b"xds\0cluster_name").or_else(|| property(b"cluster_name")).filter(|c| !c.is_empty())
}

/// What per-key state (a circuit, a bulkhead, a budget) is kept per.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RequestKey {
    /// The upstream cluster (the route's name when the host has not picked one yet).
    #[default]
    Cluster,
    Route,
    /// Each value of a request header; requests without it share the key `-`.
    Header(String),
}

impl RequestKey {
    /// The current request's key (call while request headers are available).
    pub fn of_request(&self) -> Vec<u8> {
        match self {
            RequestKey::Cluster => cluster_name().or_else(route_name).unwrap_or_default(),
            RequestKey::Route => route_name().unwrap_or_default(),
            RequestKey::Header(name) => {
                hostcalls::get_map_value_bytes(proxy_wasm::types::MapType::HttpRequestHeaders, name)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| b"-".to_vec())
            }
        }
    }
}

/// An integer property (Envoy serialises int64/uint64 attributes as 8 little-endian bytes).
pub fn property_i64(path: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(property(path)?.as_slice().try_into().ok()?))
}

/// A metric name with tags in meshwork's tag convention (see `meshwork_measure_core`).
pub fn tagged(base: &str, tags: &[(&str, &str)]) -> String {
    let mut name = String::with_capacity(base.len() + 32 * tags.len());
    let _ = meshwork_measure_core::write_metric_name(&mut name, base, tags);
    name
}

/// Per-key state shared by every worker, in proxy-wasm shared data under `<prefix>.<slot>`:
/// a fixed table of CAS slots (see `meshwork_cas_table` for why slots are created up front).
pub struct SharedTable {
    /// The shared-data key of each slot, formatted once: every request reads and writes them.
    keys: Vec<String>,
    slots: usize,
}

/// Linear probing looks at most this many slots; past it the table counts as full.
pub const MAX_PROBE: usize = 8;

/// Marker of a never-used slot. Not empty: some hosts treat an empty value as "delete the key".
const FREE_SLOT: &[u8] = &[0];

impl SharedTable {
    /// A table of `slots` slots under `prefix`. Give each configuration its own prefix
    /// (see [`fingerprint`]) so a changed configuration starts from fresh state.
    pub fn new(prefix: String, slots: usize) -> SharedTable {
        SharedTable { keys: (0..slots).map(|slot| format!("{prefix}.{slot}")).collect(), slots }
    }

    fn key(&self, slot: usize) -> &str {
        &self.keys[slot]
    }

    /// Creates every slot that does not exist yet. Call from `on_configure`, before traffic:
    /// creation is an unconditional write, and existing slots are left as they are.
    pub fn create(&self) -> Result<(), Status> {
        for slot in 0..self.slots {
            let key = self.key(slot);
            if let (None, None) = hostcalls::get_shared_data(key)? {
                hostcalls::set_shared_data(key, Some(FREE_SLOT), None)?;
            }
        }
        Ok(())
    }

    /// Applies `f` to `key`'s state with compare-and-swap (`f` may run more than once).
    pub fn update<T: SlotState, R>(
        &self,
        key: &[u8],
        config: &T::Config,
        now_ns: u64,
        f: impl FnMut(&mut T) -> R,
    ) -> Outcome<R> {
        meshwork_cas_table::update(&mut Store(self), self.slots, MAX_PROBE, key, config, now_ns, f)
    }

    /// `key`'s state without writing (fresh when it has none yet).
    pub fn read<T: SlotState>(&self, key: &[u8], config: &T::Config, now_ns: u64) -> Option<T> {
        meshwork_cas_table::read(&mut Store(self), self.slots, MAX_PROBE, key, config, now_ns)
    }
}

struct Store<'a>(&'a SharedTable);

impl CasStore for Store<'_> {
    fn get(&mut self, slot: usize, buf: &mut [u8; MAX_VALUE]) -> Option<(usize, u32)> {
        match hostcalls::get_shared_data(self.0.key(slot)) {
            Ok((value, Some(cas))) => {
                let value = value.unwrap_or_default();
                let len = value.len().min(MAX_VALUE);
                buf[..len].copy_from_slice(&value[..len]);
                Some((if value.len() > MAX_VALUE { 0 } else { len }, cas))
            }
            _ => None,
        }
    }

    fn set(&mut self, slot: usize, value: &[u8], cas: u32) -> bool {
        hostcalls::set_shared_data(self.0.key(slot), Some(value), Some(cas)).is_ok()
    }
}

/// FNV-1a of a config blob, to give each configuration its own shared-data namespace.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    meshwork_cas_table::key_hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(ConfigDuration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(ConfigDuration::parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(ConfigDuration::parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(ConfigDuration::parse("100us"), Ok(Duration::from_micros(100)));
        assert!(ConfigDuration::parse("10").unwrap_err().contains("needs a unit"));
        assert!(ConfigDuration::parse("10 parsecs").unwrap_err().contains("unknown unit"));
        assert!(ConfigDuration::parse("s").unwrap_err().contains("is not a duration"));
        let d: ConfigDuration = serde_json_from_str("1500");
        assert_eq!(d.0, Duration::from_millis(1500));
    }

    fn serde_json_from_str(s: &str) -> ConfigDuration {
        // serde_json is not a dependency of this crate; a u64 deserializer is enough here.
        use serde::de::IntoDeserializer;
        let n: u64 = s.parse().unwrap();
        let d: serde::de::value::U64Deserializer<serde::de::value::Error> = n.into_deserializer();
        ConfigDuration::deserialize(d).unwrap()
    }
}
