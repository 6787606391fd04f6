//! A constant-memory latency histogram: exact below 1,024 ms, then 64 log-linear sub-buckets
//! per power of two (under 1.6% error). A million-job run keeps a few KB here, not a vector.

const LINEAR: u64 = 1024;
const SUB: u64 = 64;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; (LINEAR + 54 * SUB) as usize],
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() as u64; // >= 10
    let sub = (v >> (exp - 6)) & (SUB - 1);
    (LINEAR + (exp - 10) * SUB + sub) as usize
}

fn lower_bound(b: usize) -> u64 {
    let b = b as u64;
    if b < LINEAR {
        return b;
    }
    let exp = (b - LINEAR) / SUB + 10;
    let sub = (b - LINEAR) % SUB;
    (1 << exp) | (sub << (exp - 6))
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        let b = bucket(v).min(self.counts.len() - 1);
        self.counts[b] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(lower_bound(b).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_below_a_second_close_above() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), Some(50));
        assert_eq!(h.quantile(0.95), Some(95));
        assert_eq!(h.max(), 100);
        let mut h = Histogram::default();
        h.record(123_456);
        let q = h.quantile(0.5).unwrap();
        assert!(q <= 123_456 && q as f64 >= 123_456.0 * 0.984, "{q}");
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn buckets_round_trip() {
        for v in [1024u64, 1500, 65_535, 1 << 40] {
            assert!(lower_bound(bucket(v)) <= v);
            assert!(lower_bound(bucket(v) + 1) > v);
        }
    }
}
