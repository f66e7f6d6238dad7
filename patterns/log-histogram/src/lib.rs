//! Log-linear histogram buckets for u64 values.
//!
//! Values below `SUB_BUCKETS` get a bucket each; above that, every power of two is split into
//! `SUB_BUCKETS` equal-width buckets, so a bucket's width is at most 1/32 of its lower bound and a
//! percentile read from bucket bounds is within about 3% of the true value. The bucket index is a
//! few shifts (no floating point, no loops), so the same function serves the proxy's metrics, the
//! filters and eBPF programs, and histograms with the same layout merge by adding counts.
#![no_std]

/// log2 of the number of linear sub-buckets per power of two.
pub const SUB_BUCKET_BITS: u32 = 5;
/// Linear sub-buckets per power of two.
pub const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Buckets needed to cover every u64.
pub const BUCKETS: usize = (64 - SUB_BUCKET_BITS as usize + 1) * SUB_BUCKETS;

/// The bucket holding `value`.
#[inline]
pub fn bucket_index(value: u64) -> usize {
    if value < SUB_BUCKETS as u64 {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BUCKET_BITS;
    let sub = (value >> shift) as usize & (SUB_BUCKETS - 1);
    (shift as usize + 1) * SUB_BUCKETS + sub
}

/// The smallest value that lands in bucket `index`.
#[inline]
pub fn bucket_lower(index: usize) -> u64 {
    if index < 2 * SUB_BUCKETS {
        return index as u64;
    }
    let shift = (index / SUB_BUCKETS - 1) as u32;
    let sub = (index % SUB_BUCKETS) as u64;
    (SUB_BUCKETS as u64 + sub) << shift
}

/// The largest value that lands in bucket `index`.
#[inline]
pub fn bucket_upper(index: usize) -> u64 {
    if index + 1 >= BUCKETS {
        return u64::MAX;
    }
    bucket_lower(index + 1) - 1
}

/// A whole histogram in one fixed array. 15 KiB; keep it out of small stacks.
#[derive(Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: [0; BUCKETS], total: 0, sum: 0, min: u64::MAX, max: 0 }
    }
}

impl core::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("min", &self.min())
            .field("max", &self.max)
            .finish()
    }
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    pub fn record_n(&mut self, value: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[bucket_index(value)] += n;
        self.total += n;
        self.sum += value as u128 * n as u128;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every count of `other` into `self`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn sum(&self) -> u128 {
        self.sum
    }

    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.sum as f64 / self.total as f64 }
    }

    /// Number of recorded values `<= value`'s bucket upper bound.
    pub fn count_at_or_below(&self, value: u64) -> u64 {
        let last = bucket_index(value);
        let mut n = 0;
        for (i, c) in self.counts.iter().enumerate() {
            if i > last {
                break;
            }
            n += c;
        }
        n
    }

    /// The value at quantile `q` (0.0..=1.0): the upper bound of the bucket holding the
    /// ceil(q * count)-th value, clamped to the recorded min and max.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        // ceil(q * count), forgiving the last bits of float error (0.1 * 10 = 1.0000000000000002).
        // (`f64::ceil` is not in `core`; truncation plus one step does the same for positives.)
        let exact = q.clamp(0.0, 1.0) * self.total as f64 - 1e-9;
        let truncated = exact as u64;
        let rank = if (truncated as f64) < exact { truncated + 1 } else { truncated }.clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Non-empty buckets as (lower, upper, count).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (bucket_lower(i), bucket_upper(i), *c))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::boxed::Box;
    use std::vec::Vec;

    #[test]
    fn small_values_are_exact() {
        for v in 0..64u64 {
            assert_eq!(bucket_lower(bucket_index(v)), v);
            assert_eq!(bucket_upper(bucket_index(v)), v);
        }
    }

    #[test]
    fn extremes_fit() {
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_upper(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn quantiles_of_uniform_values() {
        let mut h = Box::<Histogram>::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 5000.0), (0.9, 9000.0), (0.99, 9900.0), (0.999, 9990.0)] {
            let got = h.value_at_quantile(q) as f64;
            assert!((got - want).abs() / want < 0.035, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.value_at_quantile(1.0), 10_000);
        assert_eq!(h.value_at_quantile(0.0), 1);
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn empty_histogram_reads_zero() {
        let h = Box::<Histogram>::default();
        assert_eq!(h.value_at_quantile(0.99), 0);
        assert_eq!(h.min(), 0);
        assert_eq!(h.mean(), 0.0);
    }

    proptest! {
        #[test]
        fn every_value_lies_inside_its_bucket(v in any::<u64>()) {
            let i = bucket_index(v);
            prop_assert!(i < BUCKETS);
            prop_assert!(bucket_lower(i) <= v && v <= bucket_upper(i));
            // Width is at most 1/32 of the lower bound above the exact range.
            if v >= SUB_BUCKETS as u64 {
                let width = bucket_upper(i) - bucket_lower(i) + 1;
                prop_assert!(width <= bucket_lower(i) / SUB_BUCKETS as u64 + 1);
            }
        }

        #[test]
        fn buckets_are_ordered(i in 0usize..BUCKETS - 1) {
            prop_assert_eq!(bucket_upper(i) + 1, bucket_lower(i + 1));
        }

        #[test]
        fn merge_equals_recording_everything(
            a in proptest::collection::vec(any::<u32>(), 0..200),
            b in proptest::collection::vec(any::<u32>(), 0..200),
        ) {
            let mut ha = Box::<Histogram>::default();
            let mut hb = Box::<Histogram>::default();
            let mut all = Box::<Histogram>::default();
            for v in &a { ha.record(*v as u64); all.record(*v as u64); }
            for v in &b { hb.record(*v as u64); all.record(*v as u64); }
            ha.merge(&hb);
            let x: Vec<_> = ha.buckets().collect();
            let y: Vec<_> = all.buckets().collect();
            prop_assert_eq!(x, y);
            prop_assert_eq!(ha.sum(), all.sum());
            prop_assert_eq!(ha.min(), all.min());
        }

        #[test]
        fn quantile_error_is_bounded(mut values in proptest::collection::vec(1u64..10_000_000, 1..500), q in 0.01f64..1.0) {
            let mut h = Box::<Histogram>::default();
            for v in &values { h.record(*v); }
            values.sort_unstable();
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let truth = values[rank - 1] as f64;
            let got = h.value_at_quantile(q) as f64;
            prop_assert!(got >= truth && (got - truth) / truth <= 1.0 / 32.0 + 1e-9, "q {q} truth {truth} got {got}");
        }
    }
}
