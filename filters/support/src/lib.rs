//! Shared plumbing for meshwork's proxy-wasm filters, on top of the `proxy-wasm` SDK.
//!
//! Everything here is host-neutral: it uses only ABI v0.2.1 hostcalls and Envoy's property
//! paths, so filters built on it run unchanged in Envoy, Istio, Consul, Kuma and meshwork.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshwork_token_bucket::table::{CasStore, SLOT_LEN};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};
use serde::{Deserialize, Deserializer};

/// A duration in config: `"250ms"`, `"1.5s"`, `"2m"`, `"1h"`, `"100us"`, or a number of milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} has no unit (use ms, s, m or h)"))?;
        let (number, unit) = text.split_at(split);
        let value: f64 = number.parse().map_err(|_| format!("duration {text:?} does not start with a number"))?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!("duration {text:?} has unknown unit {other:?} (use ms, s, m or h)"));
            }
        };
        Duration::try_from_secs_f64(value * scale).map_err(|_| format!("duration {text:?} is out of range"))
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

/// An integer property (Envoy serialises int64/uint64 attributes as 8 little-endian bytes).
pub fn property_i64(path: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(property(path)?.as_slice().try_into().ok()?))
}

/// Metrics defined on first use and cached by full name (one cache per VM).
#[derive(Default)]
pub struct MetricCache {
    ids: RefCell<HashMap<String, Option<u32>>>,
}

impl MetricCache {
    fn id(&self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(name) {
            return *id;
        }
        let id = hostcalls::define_metric(kind, name).ok();
        self.ids.borrow_mut().insert(name.to_owned(), id);
        id
    }

    pub fn increment(&self, name: &str, delta: i64) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }

    pub fn record(&self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    pub fn set_gauge(&self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// A metric name with tags in meshwork's tag convention (see `meshwork_measure_core`).
pub fn tagged(base: &str, tags: &[(&str, &str)]) -> String {
    let mut name = String::with_capacity(base.len() + 32 * tags.len());
    let _ = meshwork_measure_core::write_metric_name(&mut name, base, tags);
    name
}

/// Token-bucket slots kept in proxy-wasm shared data under `<prefix>.<slot>`.
pub struct SharedSlots {
    prefix: String,
}

/// Marker of a free slot. Not empty: some hosts treat an empty value as "delete the key".
const FREE_SLOT: &[u8] = &[0];

impl SharedSlots {
    pub fn new(prefix: String) -> SharedSlots {
        SharedSlots { prefix }
    }

    fn key(&self, slot: usize) -> String {
        format!("{}.{slot}", self.prefix)
    }

    /// Creates every slot that does not exist yet. Call from `on_configure`, before traffic:
    /// creation is an unconditional write, and existing slots are left as they are.
    pub fn create(&self, slots: usize) -> Result<(), Status> {
        for slot in 0..slots {
            let key = self.key(slot);
            if let (None, None) = hostcalls::get_shared_data(&key)? {
                hostcalls::set_shared_data(&key, Some(FREE_SLOT), None)?;
            }
        }
        Ok(())
    }
}

impl CasStore for SharedSlots {
    fn get(&mut self, slot: usize, buf: &mut [u8; SLOT_LEN]) -> Option<(usize, u32)> {
        match hostcalls::get_shared_data(&self.key(slot)) {
            Ok((value, Some(cas))) => {
                let value = value.unwrap_or_default();
                if value.len() == SLOT_LEN {
                    buf.copy_from_slice(&value);
                    Some((SLOT_LEN, cas))
                } else {
                    Some((0, cas))
                }
            }
            _ => None,
        }
    }

    fn set(&mut self, slot: usize, value: &[u8], cas: u32) -> bool {
        hostcalls::set_shared_data(&self.key(slot), Some(value), Some(cas)).is_ok()
    }
}

/// FNV-1a of a config blob, to give each configuration its own shared-data namespace.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    meshwork_token_bucket::table::key_hash(bytes)
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
        assert!(ConfigDuration::parse("10").unwrap_err().contains("no unit"));
        assert!(ConfigDuration::parse("10 parsecs").unwrap_err().contains("unknown unit"));
        assert!(ConfigDuration::parse("s").unwrap_err().contains("number"));
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
