//! Power-of-two (bcc-style "log2") histograms of durations in nanoseconds.
//!
//! # Buckets
//!
//! There are 64 buckets. Bucket `i` holds the values `v` with `floor(log2(v)) == i`,
//! that is the closed range `[2^i, 2^(i+1) - 1]`, except that bucket 0 also holds 0:
//!
//! | bucket | values (ns, inclusive)     | `le_ns`        |
//! |--------|----------------------------|----------------|
//! | 0      | 0 ..= 1                    | 1              |
//! | 1      | 2 ..= 3                    | 3              |
//! | i      | 2^i ..= 2^(i+1) - 1        | 2^(i+1) - 1    |
//! | 63     | 2^63 ..= u64::MAX          | u64::MAX       |
//!
//! `le_ns` ("less than or equal", as in Prometheus) is the bucket's *inclusive* upper
//! bound, `2^(i+1) - 1`. Every value of a bucket is `<= le_ns`, and every value of the
//! bucket below is `< 2^i`.
//!
//! # Exactness
//!
//! [`Log2Histogram::merge`] adds bucket counts, counts and totals and takes the larger
//! maximum, so merging is exact, associative and commutative: merging the histograms of
//! any partition of a set of samples, in any order and grouping, gives the histogram of
//! the whole set. Sums saturate at `u64::MAX` (584 years of nanoseconds) instead of
//! wrapping; saturating addition of unsigned numbers is still associative and
//! commutative.

use serde::{Deserialize, Serialize};

/// Number of buckets: one per bit of a `u64`.
pub const BUCKETS: usize = 64;

/// One non-empty bucket, as serialized: `{"le_ns": int, "count": int}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// The bucket's inclusive upper bound, `2^(i+1) - 1` for bucket `i`.
    pub le_ns: u64,
    /// Number of samples in the bucket.
    pub count: u64,
}

/// A log2 histogram of nanosecond durations, with exact count, total and maximum.
///
/// Serializes as `{"count":int,"total_ns":int,"max_ns":int,"min_ns":int,"buckets":[Bucket...]}`
/// (`min_ns` only when not empty) listing only non-empty buckets in ascending order; deserializing checks that the
/// parts agree (see [`Log2Histogram::from_parts`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "HistogramRepr", try_from = "HistogramRepr")]
pub struct Log2Histogram {
    buckets: [u64; BUCKETS],
    count: u64,
    total_ns: u64,
    max_ns: u64,
    /// Smallest sample (0 when empty): bounds quantile estimates from below, as `max_ns`
    /// does from above, so a tight cluster of stalls is not smeared over its bucket.
    min_ns: u64,
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Log2Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log2Histogram")
            .field("count", &self.count)
            .field("total_ns", &self.total_ns)
            .field("max_ns", &self.max_ns)
            .field("buckets", &self.buckets())
            .finish()
    }
}

/// The bucket index a value falls into (see the module documentation).
pub const fn bucket_index(ns: u64) -> usize {
    // `| 1` puts 0 into bucket 0 together with 1.
    (63 - (ns | 1).leading_zeros()) as usize
}

/// The smallest value of bucket `index` (0 for bucket 0, else `2^index`).
///
/// # Panics
/// If `index >= BUCKETS`.
pub const fn bucket_lower_ns(index: usize) -> u64 {
    assert!(index < BUCKETS);
    if index == 0 { 0 } else { 1u64 << index }
}

/// The inclusive upper bound (`le_ns`) of bucket `index`: `2^(index+1) - 1`.
///
/// # Panics
/// If `index >= BUCKETS`.
pub const fn bucket_le_ns(index: usize) -> u64 {
    assert!(index < BUCKETS);
    u64::MAX >> (BUCKETS - 1 - index)
}

/// The bucket whose `le_ns` is exactly `le_ns`, if `le_ns` is of the form `2^k - 1`
/// with `1 <= k <= 64`.
pub const fn bucket_of_le(le_ns: u64) -> Option<usize> {
    // 2^k - 1 has all low k bits set: adding 1 clears them (wrapping for u64::MAX).
    if le_ns == 0 || le_ns & le_ns.wrapping_add(1) != 0 {
        return None;
    }
    Some((63 - le_ns.leading_zeros()) as usize)
}

impl Log2Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            buckets: [0; BUCKETS],
            count: 0,
            total_ns: 0,
            max_ns: 0,
            min_ns: 0,
        }
    }

    /// Adds one sample.
    pub fn record(&mut self, ns: u64) {
        self.record_n(ns, 1);
    }

    /// Adds `n` samples of the same value.
    pub fn record_n(&mut self, ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        let b = &mut self.buckets[bucket_index(ns)];
        *b = b.saturating_add(n);
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.count = self.count.saturating_add(n);
        self.total_ns = self.total_ns.saturating_add(ns.saturating_mul(n));
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds every sample of `other` to `self`. Exact, associative and commutative.
    pub fn merge(&mut self, other: &Log2Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        if other.count > 0 {
            self.min_ns = if self.count == 0 {
                other.min_ns
            } else {
                self.min_ns.min(other.min_ns)
            };
        }
        self.count = self.count.saturating_add(other.count);
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of all samples, in nanoseconds (saturating).
    pub fn total_ns(&self) -> u64 {
        self.total_ns
    }

    /// The largest sample (0 when empty).
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// Whether no sample was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The count of bucket `index`.
    ///
    /// # Panics
    /// If `index >= BUCKETS`.
    pub fn bucket_count(&self, index: usize) -> u64 {
        self.buckets[index]
    }

    /// Indexes of the lowest and highest non-empty buckets, if any.
    pub fn bucket_range(&self) -> Option<(usize, usize)> {
        let lo = self.buckets.iter().position(|&c| c != 0)?;
        let hi = self.buckets.iter().rposition(|&c| c != 0)?;
        Some((lo, hi))
    }

    /// The non-empty buckets, ascending: what is serialized as `buckets`.
    pub fn buckets(&self) -> Vec<Bucket> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != 0)
            .map(|(i, &count)| Bucket {
                le_ns: bucket_le_ns(i),
                count,
            })
            .collect()
    }

    /// Rebuilds a histogram from its serialized parts, checking that they agree:
    /// every `le_ns` is a bucket bound (`2^k - 1`) listed once, the bucket counts add up
    /// to `count`, `max_ns` lies in the highest non-empty bucket (or is 0 when empty) and
    /// `min_ns`, when given, in the lowest (reports written before it existed have none:
    /// the lowest bucket's lower bound stands in). Buckets with a zero count are accepted
    /// and ignored; order does not matter.
    pub fn from_parts(
        count: u64,
        total_ns: u64,
        max_ns: u64,
        min_ns: Option<u64>,
        buckets: &[Bucket],
    ) -> Result<Self, String> {
        let mut h = Self::new();
        let mut seen = [false; BUCKETS];
        let mut sum: u64 = 0;
        for b in buckets {
            let i = bucket_of_le(b.le_ns).ok_or_else(|| {
                format!(
                    "le_ns {} is not a bucket bound (must be 2^k-1 for k in 1..=64)",
                    b.le_ns
                )
            })?;
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("bucket le_ns {} is listed twice", b.le_ns));
            }
            h.buckets[i] = b.count;
            sum = sum.saturating_add(b.count);
        }
        if sum != count {
            return Err(format!(
                "bucket counts add up to {sum}, but count is {count}"
            ));
        }
        match h.bucket_range() {
            None if max_ns != 0 => {
                return Err(format!("histogram is empty but max_ns is {max_ns}"));
            }
            Some((_, hi)) if bucket_index(max_ns) != hi => {
                return Err(format!(
                    "max_ns {max_ns} is not in the highest non-empty bucket (le_ns {})",
                    bucket_le_ns(hi)
                ));
            }
            _ => {}
        }
        h.min_ns = match (h.bucket_range(), min_ns) {
            (None, _) => 0,
            (Some((lo, _)), None) => bucket_lower_ns(lo),
            (Some((lo, _)), Some(min)) if bucket_index(min) == lo && min <= max_ns => min,
            (Some((lo, _)), Some(min)) => {
                return Err(format!(
                    "min_ns {min} is not in the lowest non-empty bucket (le_ns {})",
                    bucket_le_ns(lo)
                ));
            }
        };
        h.count = count;
        h.total_ns = total_ns;
        h.max_ns = max_ns;
        Ok(h)
    }

    /// Estimates the `q`-quantile (`q` in `[0, 1]`, clamped) of the samples, in ns.
    ///
    /// Takes the sample of rank `ceil(q * count)` (at least 1), finds its bucket, and
    /// interpolates linearly inside the bucket, whose upper end is capped at the exact
    /// `max_ns`. The estimate always lies in the bucket that holds the true sample, so
    /// it is within a factor of 2 of it; `quantile(1.0)` is exactly `max_ns`.
    /// `None` when the histogram is empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut before: u64 = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if before.saturating_add(c) >= rank {
                let hi = bucket_le_ns(i).min(self.max_ns);
                let lo = bucket_lower_ns(i).max(self.min_ns).min(hi);
                let within = (rank - before) as f64 / c as f64;
                let est = lo as f64 + (hi - lo) as f64 * within;
                // `as` saturates; the clamp guards against float rounding.
                return Some((est as u64).clamp(lo, hi));
            }
            before = before.saturating_add(c);
        }
        // Only reachable if counts saturated; the maximum is the honest answer.
        Some(self.max_ns)
    }
}

/// The serialized shape of a [`Log2Histogram`].
#[derive(Serialize, Deserialize)]
struct HistogramRepr {
    count: u64,
    total_ns: u64,
    max_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_ns: Option<u64>,
    buckets: Vec<Bucket>,
}

impl From<Log2Histogram> for HistogramRepr {
    fn from(h: Log2Histogram) -> Self {
        HistogramRepr {
            count: h.count,
            total_ns: h.total_ns,
            max_ns: h.max_ns,
            min_ns: (h.count > 0).then_some(h.min_ns),
            buckets: h.buckets(),
        }
    }
}

impl TryFrom<HistogramRepr> for Log2Histogram {
    type Error = String;
    fn try_from(r: HistogramRepr) -> Result<Self, String> {
        Log2Histogram::from_parts(r.count, r.total_ns, r.max_ns, r.min_ns, &r.buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_edges() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 0);
        assert_eq!(bucket_index(2), 1);
        assert_eq!(bucket_index(3), 1);
        assert_eq!(bucket_index(4), 2);
        for k in 1..64 {
            let p = 1u64 << k;
            assert_eq!(bucket_index(p - 1), k - 1, "2^{k}-1");
            assert_eq!(bucket_index(p), k, "2^{k}");
            assert_eq!(bucket_index(p + 1), k, "2^{k}+1");
        }
        assert_eq!(bucket_index(u64::MAX), 63);
        assert_eq!(bucket_index(u64::MAX - 1), 63);
        assert_eq!(bucket_index(1 << 63), 63);
        assert_eq!(bucket_index((1 << 63) - 1), 62);
    }

    #[test]
    fn bucket_bounds_agree_with_index() {
        assert_eq!(bucket_lower_ns(0), 0);
        assert_eq!(bucket_le_ns(0), 1);
        assert_eq!(bucket_le_ns(1), 3);
        assert_eq!(bucket_le_ns(62), (1 << 63) - 1);
        assert_eq!(bucket_le_ns(63), u64::MAX);
        for i in 0..BUCKETS {
            assert_eq!(bucket_index(bucket_lower_ns(i)), i);
            assert_eq!(bucket_index(bucket_le_ns(i)), i);
            if i + 1 < BUCKETS {
                assert_eq!(bucket_le_ns(i) + 1, bucket_lower_ns(i + 1));
            }
            assert_eq!(bucket_of_le(bucket_le_ns(i)), Some(i));
        }
        assert_eq!(bucket_of_le(0), None);
        assert_eq!(bucket_of_le(2), None);
        assert_eq!(bucket_of_le(4), None);
        assert_eq!(bucket_of_le(1 << 40), None);
        assert_eq!(bucket_of_le(u64::MAX - 1), None);
    }

    #[test]
    fn record_tracks_count_total_max() {
        let mut h = Log2Histogram::new();
        assert!(h.is_empty());
        for v in [0, 1, 2, 1023, 1024, u64::MAX] {
            h.record(v);
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.max_ns(), u64::MAX);
        assert_eq!(h.total_ns(), u64::MAX, "total saturates");
        assert_eq!(h.bucket_count(0), 2);
        assert_eq!(h.bucket_count(1), 1);
        assert_eq!(h.bucket_count(9), 1);
        assert_eq!(h.bucket_count(10), 1);
        assert_eq!(h.bucket_count(63), 1);
        assert_eq!(
            h.buckets(),
            vec![
                Bucket { le_ns: 1, count: 2 },
                Bucket { le_ns: 3, count: 1 },
                Bucket {
                    le_ns: 1023,
                    count: 1
                },
                Bucket {
                    le_ns: 2047,
                    count: 1
                },
                Bucket {
                    le_ns: u64::MAX,
                    count: 1
                },
            ]
        );
        let mut small = Log2Histogram::new();
        small.record(10);
        small.record(30);
        assert_eq!(small.total_ns(), 40);
    }

    #[test]
    fn serializes_only_non_empty_buckets_and_back() {
        let mut h = Log2Histogram::new();
        h.record(5);
        h.record(6);
        h.record(1_000_000);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            r#"{"count":3,"total_ns":1000011,"max_ns":1000000,"min_ns":5,"buckets":[{"le_ns":7,"count":2},{"le_ns":1048575,"count":1}]}"#
        );
        let back: Log2Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        let mut max = Log2Histogram::new();
        max.record(u64::MAX);
        let back: Log2Histogram =
            serde_json::from_str(&serde_json::to_string(&max).unwrap()).unwrap();
        assert_eq!(back, max);
    }

    #[test]
    fn from_parts_rejects_inconsistent_input() {
        let b = |le_ns, count| Bucket { le_ns, count };
        let err = Log2Histogram::from_parts(1, 5, 5, None, &[b(6, 1)]).unwrap_err();
        assert!(err.contains("not a bucket bound"), "{err}");
        let err = Log2Histogram::from_parts(2, 10, 5, None, &[b(7, 1), b(7, 1)]).unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let err = Log2Histogram::from_parts(3, 10, 5, None, &[b(7, 2)]).unwrap_err();
        assert!(err.contains("add up to 2"), "{err}");
        let err = Log2Histogram::from_parts(1, 9, 9, None, &[b(7, 1)]).unwrap_err();
        assert!(err.contains("max_ns 9"), "{err}");
        let err = Log2Histogram::from_parts(0, 0, 3, None, &[]).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        // Zero-count buckets and any order are fine.
        let h =
            Log2Histogram::from_parts(2, 105, 100, None, &[b(127, 1), b(3, 0), b(7, 1)]).unwrap();
        assert_eq!(h.buckets(), vec![b(7, 1), b(127, 1)]);
        assert_eq!(
            Log2Histogram::from_parts(0, 0, 0, None, &[]).unwrap(),
            Log2Histogram::new()
        );
    }

    #[test]
    fn a_tight_cluster_is_not_smeared_over_its_bucket() {
        // Three ~200 ms stalls share the bucket [134 ms, 268 ms): p50 stays among them.
        let mut h = Log2Histogram::new();
        for ns in [201_200_000, 200_400_000, 200_400_000] {
            h.record(ns);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((200_400_000..=201_200_000).contains(&p50), "p50={p50}");
        // Merged and reloaded histograms keep the bound.
        let mut merged = Log2Histogram::new();
        merged.merge(&h);
        let reloaded: Log2Histogram =
            serde_json::from_str(&serde_json::to_string(&merged).unwrap()).unwrap();
        assert_eq!(reloaded.quantile(0.5), Some(p50));
        // A report written before min_ns existed falls back to the bucket's lower bound.
        let old =
            Log2Histogram::from_parts(3, 602_000_000, 201_200_000, None, &h.buckets()).unwrap();
        assert!(old.quantile(0.5).unwrap() < 200_400_000);
        assert!(Log2Histogram::from_parts(3, 1, 201_200_000, Some(5), &h.buckets()).is_err());
    }

    #[test]
    fn quantiles() {
        let h = Log2Histogram::new();
        assert_eq!(h.quantile(0.5), None);

        // One value: every quantile lies in its bucket, and the top is exact.
        let mut one = Log2Histogram::new();
        one.record(1500);
        for q in [0.0, 0.5, 0.99, 1.0] {
            let v = one.quantile(q).unwrap();
            assert!((1024..=1500).contains(&v), "q={q} v={v}");
        }
        assert_eq!(one.quantile(1.0), Some(1500));

        // 90 fast samples (~1 ms) and 10 slow ones (~100 ms).
        let mut h = Log2Histogram::new();
        for _ in 0..90 {
            h.record(1_000_000);
        }
        for _ in 0..10 {
            h.record(100_000_000);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert_eq!(bucket_index(p50), bucket_index(1_000_000), "p50={p50}");
        let p90 = h.quantile(0.9).unwrap();
        assert_eq!(bucket_index(p90), bucket_index(1_000_000), "p90={p90}");
        let p91 = h.quantile(0.91).unwrap();
        assert_eq!(bucket_index(p91), bucket_index(100_000_000), "p91={p91}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((1 << 26..=100_000_000).contains(&p99), "p99={p99}");
        assert_eq!(h.quantile(1.0), Some(100_000_000));
        assert_eq!(h.quantile(7.0), Some(100_000_000), "q is clamped");
        // The smallest sample bounds estimates from below.
        assert!((1_000_000..=1_048_575).contains(&h.quantile(-1.0).unwrap()));
        // Monotonic in q.
        let mut last = 0;
        for i in 0..=100 {
            let v = h.quantile(i as f64 / 100.0).unwrap();
            assert!(v >= last, "q={i}%: {v} < {last}");
            last = v;
        }
    }

    #[test]
    fn quantile_of_zeros_and_max() {
        let mut h = Log2Histogram::new();
        h.record(0);
        h.record(0);
        assert_eq!(h.quantile(0.5), Some(0));
        assert_eq!(h.quantile(1.0), Some(0));
        let mut h = Log2Histogram::new();
        h.record(u64::MAX);
        assert_eq!(h.quantile(1.0), Some(u64::MAX));
        assert!(h.quantile(0.0).unwrap() >= 1 << 63);
    }

    fn hist_of(values: &[u64]) -> Log2Histogram {
        let mut h = Log2Histogram::new();
        for &v in values {
            h.record(v);
        }
        h
    }

    fn merged(a: &Log2Histogram, b: &Log2Histogram) -> Log2Histogram {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    #[test]
    fn merge_equals_recording_everything() {
        let a = hist_of(&[1, 2, 3, 1000]);
        let b = hist_of(&[0, 5_000_000]);
        assert_eq!(merged(&a, &b), hist_of(&[1, 2, 3, 1000, 0, 5_000_000]));
        assert_eq!(merged(&a, &Log2Histogram::new()), a);
    }

    fn values() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(
            prop_oneof![
                0u64..4096,
                0u64..10_000_000_000,
                any::<u64>(),
                (0u32..64).prop_map(|k| 1u64 << k),
                (1u32..=64).prop_map(|k| u64::MAX >> (64 - k)),
            ],
            0..40,
        )
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in values(), b in values()) {
            let (ha, hb) = (hist_of(&a), hist_of(&b));
            prop_assert_eq!(merged(&ha, &hb), merged(&hb, &ha));
        }

        #[test]
        fn merge_is_associative(a in values(), b in values(), c in values()) {
            let (ha, hb, hc) = (hist_of(&a), hist_of(&b), hist_of(&c));
            prop_assert_eq!(merged(&merged(&ha, &hb), &hc), merged(&ha, &merged(&hb, &hc)));
        }

        #[test]
        fn merge_is_exact(a in values(), b in values()) {
            let all: Vec<u64> = a.iter().chain(b.iter()).copied().collect();
            prop_assert_eq!(merged(&hist_of(&a), &hist_of(&b)), hist_of(&all));
        }

        #[test]
        fn serde_round_trip(a in values()) {
            let h = hist_of(&a);
            let back: Log2Histogram = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
            prop_assert_eq!(back, h);
        }

        #[test]
        fn quantile_lies_in_the_true_bucket(mut a in values(), q in 0.0f64..=1.0) {
            prop_assume!(!a.is_empty());
            let h = hist_of(&a);
            a.sort_unstable();
            let rank = ((q * a.len() as f64).ceil() as usize).clamp(1, a.len());
            let truth = a[rank - 1];
            let est = h.quantile(q).unwrap();
            prop_assert_eq!(bucket_index(est), bucket_index(truth), "q={} est={} truth={}", q, est, truth);
            prop_assert!(est <= h.max_ns());
        }
    }
}
