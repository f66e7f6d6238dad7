//! Latency histograms: one HdrHistogram layout for every process, and its wire form.
//!
//! Every recorder uses the same bounds (1 µs to 1 h, 3 significant digits), so histograms from
//! any worker add bucket for bucket: merging is exact, never an approximation. Between processes
//! a histogram travels in the HdrHistogram V2 compressed (deflate) encoding, base64 in JSON.

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

use crate::error::LoadError;

/// Values are microseconds.
pub type Latency = Histogram<u64>;

/// The highest latency tracked (1 h, in µs); longer ones saturate to it.
pub const HIGHEST_US: u64 = 3_600_000_000;
pub const SIGFIG: u8 = 3;

pub fn new_latency() -> Latency {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).expect("static histogram bounds are valid")
}

/// V2 deflate encoding, base64 (standard alphabet): what HdrHistogram's tools call a
/// "compressed histogram" and what `HistogramLogReader`s accept.
pub fn encode(h: &Latency) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).expect("serialising into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode(text: &str) -> Result<Latency, LoadError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| LoadError::Histogram(format!("not base64: {e}")))?;
    let h: Latency = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| LoadError::Histogram(format!("not an HdrHistogram V2 encoding: {e:?}")))?;
    // Re-home into the standard layout so any two decoded histograms add exactly.
    let mut out = new_latency();
    out.add(&h).map_err(|e| LoadError::Histogram(format!("histogram does not fit 1 µs..1 h: {e:?}")))?;
    Ok(out)
}

/// Adds `other` into `into`; both use the standard layout, so this is exact.
pub fn merge(into: &mut Latency, other: &Latency) -> Result<(), LoadError> {
    into.add(other).map_err(|e| LoadError::Histogram(format!("cannot merge histograms: {e:?}")))
}

/// Microseconds to milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The percentiles the summary and the JSON report list.
pub const REPORT_PERCENTILES: [f64; 8] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0];

/// Latency at percentile `p` (0–100) in µs; 0 when empty.
pub fn at(h: &Latency, p: f64) -> u64 {
    if h.is_empty() {
        return 0;
    }
    h.value_at_quantile(p / 100.0)
}

/// Every (value, count) pair recorded, in value order: what "count for count" compares.
pub fn buckets(h: &Latency) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u64> {
        // xorshift: deterministic, spread over six decades like real latencies.
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let decade = 10u64.pow((x % 6) as u32);
                1 + (x >> 8) % (decade * 9)
            })
            .collect()
    }

    #[test]
    fn encoded_parts_merge_to_exactly_the_whole() {
        let samples = pseudo_random(200_000, 42);
        let mut whole = new_latency();
        for &s in &samples {
            whole.record(s).unwrap();
        }
        for parts in [1, 2, 3, 7] {
            let mut merged = new_latency();
            for chunk in samples.chunks(samples.len().div_ceil(parts)) {
                let mut h = new_latency();
                for &s in chunk {
                    h.record(s).unwrap();
                }
                let wire = encode(&h);
                merge(&mut merged, &decode(&wire).unwrap()).unwrap();
            }
            assert_eq!(merged.len(), whole.len());
            assert_eq!(buckets(&merged), buckets(&whole), "{parts} parts");
            assert_eq!(merged.max(), whole.max());
            assert_eq!(merged.min(), whole.min());
        }
    }

    #[test]
    fn decode_refuses_garbage() {
        assert!(decode("not base64!").is_err());
        assert!(decode("aGVsbG8gd29ybGQ=").is_err());
    }

    #[test]
    fn compressed_is_small() {
        let mut h = new_latency();
        for s in pseudo_random(100_000, 7) {
            h.record(s).unwrap();
        }
        assert!(encode(&h).len() < 40_000, "{}", encode(&h).len());
    }
}
