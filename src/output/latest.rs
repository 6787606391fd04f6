//! Which line of an output is each id's record, and what its superseded lines cost. A re-run job
//! (changed, or failed before) gets a new line; the old one is dropped when the output is
//! compacted or converted. What the old line cost was paid all the same, so it is carried into
//! the surviving record: a record's `cost_usd` is everything paid for its job, over all runs,
//! and the output's total stays what the provider billed (the cost cap counts on it). Used by
//! the checkpoint's compaction and by the Parquet conversion.

use crate::cost::Money;
use crate::job::keys::KeyMap;
use crate::job::IdKey;
use std::collections::HashMap;

/// Each id's last line, and the money of its earlier lines.
#[derive(Debug, Default)]
pub struct Latest {
    last: KeyMap,
    /// Cost of each line, by line number, while reading (empty once sealed).
    costs: Vec<u64>,
    /// Which paid answer each line is, by line number, where known ([`Latest::push_answer`]):
    /// lines of one id with the same answer are copies of one record, paid once.
    answers: Vec<u64>,
    /// Last line -> the money of the same id's earlier lines, where there is some.
    carried: HashMap<u64, Money>,
}

impl Latest {
    pub fn with_capacity(lines: usize) -> Self {
        Latest {
            last: KeyMap::with_capacity(lines),
            ..Latest::default()
        }
    }

    /// Notes line `line` (1-based, increasing), a record of `key` that cost `cost_usd`.
    pub fn push(&mut self, key: IdKey, line: u64, cost_usd: Option<f64>) {
        self.last.push(key, line);
        let cost = cost_usd.map_or(0, |c| Money::from_usd(c).0);
        if cost > 0 {
            let i = line as usize;
            if self.costs.len() <= i {
                self.costs.resize(i + 1, 0);
            }
            self.costs[i] = cost;
        }
    }

    /// [`Latest::push`] of a line whose paid answer is `answer` (a hash of what identifies
    /// it: its times and request). Copies of one record (an output merged with an output that
    /// already holds it) then count once, at the most any copy says (a merged copy carries
    /// the money of what it superseded), instead of once a copy.
    pub fn push_answer(&mut self, key: IdKey, line: u64, cost_usd: Option<f64>, answer: u64) {
        self.push(key, line, cost_usd);
        let i = line as usize;
        if self.answers.len() <= i {
            self.answers.resize(i + 1, 0);
        }
        self.answers[i] = answer;
    }

    /// Done reading: picks each id's last line and adds up what its earlier lines cost.
    pub fn seal(&mut self) {
        self.last.seal_ordered();
        let costs = std::mem::take(&mut self.costs);
        let answers = std::mem::take(&mut self.answers);
        let cost = |line: u64| costs.get(line as usize).copied().unwrap_or(0);
        let answer = |line: u64| answers.get(line as usize).copied().filter(|&a| a != 0);
        let mut copies: HashMap<u64, u64> = HashMap::new();
        for run in self.last.runs() {
            // Everything paid for the id: each distinct answer once, at its dearest copy.
            let (mut paid, mut last) = (0u64, None);
            copies.clear();
            for line in run {
                last = Some(line);
                match answer(line) {
                    Some(a) => {
                        let most = copies.entry(a).or_default();
                        paid = paid - *most + (*most).max(cost(line));
                        *most = (*most).max(cost(line));
                    }
                    None => paid += cost(line),
                }
            }
            if let Some(line) = last {
                let earlier = paid.saturating_sub(cost(line));
                if earlier > 0 {
                    self.carried.insert(line, Money(earlier));
                }
            }
        }
        self.last.keep_last();
    }

    /// Whether `line` is the last record of `key`.
    pub fn is_last(&self, key: &IdKey, line: u64) -> bool {
        self.last.get(key) == Some(line)
    }

    /// Money of superseded lines to add to the record on `line`.
    pub fn carried(&self, line: u64) -> Option<Money> {
        self.carried.get(&line).copied()
    }
}

/// `cost_usd` plus money carried from superseded records.
pub fn add_carried(cost_usd: Option<f64>, carried: Money) -> f64 {
    (cost_usd.map_or(Money::ZERO, Money::from_usd) + carried).usd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_lines_cost_is_carried_into_the_last() {
        let mut l = Latest::default();
        let (a, b) = (IdKey::of(b"a"), IdKey::of(b"b"));
        l.push(a, 1, Some(0.25));
        l.push(b, 2, Some(1.0));
        l.push(a, 3, None);
        l.push(a, 4, Some(0.5));
        l.seal();
        assert!(l.is_last(&a, 4) && !l.is_last(&a, 1) && l.is_last(&b, 2));
        assert_eq!(l.carried(4), Some(Money::from_usd(0.25)));
        assert_eq!(l.carried(2), None);
        assert_eq!(add_carried(Some(0.5), Money::from_usd(0.25)), 0.75);
    }

    #[test]
    fn copies_of_one_answer_count_once() {
        let mut l = Latest::default();
        let a = IdKey::of(b"a");
        // A shard's record (0.25), then a merged copy of it that also carries 0.5 of a
        // superseded answer (0.75), then the shard's record again.
        l.push_answer(a, 1, Some(0.25), 7);
        l.push_answer(a, 2, Some(0.75), 7);
        l.push_answer(a, 3, Some(0.25), 7);
        l.seal();
        assert!(l.is_last(&a, 3));
        assert_eq!(add_carried(Some(0.25), l.carried(3).unwrap()), 0.75);
        // Two different answers add up.
        let mut l = Latest::default();
        l.push_answer(a, 1, Some(0.25), 7);
        l.push_answer(a, 2, Some(0.5), 8);
        l.seal();
        assert_eq!(l.carried(2), Some(Money::from_usd(0.25)));
    }
}
