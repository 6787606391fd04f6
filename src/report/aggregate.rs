//! What a report shows, gathered record by record in bounded memory: counts, money and tokens by
//! model, a latency histogram, attempts, the ten most expensive and slowest jobs, completions
//! and failures over time (bins that widen as the run's span grows, never more than a few
//! thousand), and the distribution of each labeled field (at most [`MAX_VALUES`] values a
//! field, the rest counted together). A million records take a few hundred KB here.

use crate::histogram::Histogram;
use crate::output::{Record, Status};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, SystemTime};

/// Values of one labeled field kept apart; more are counted as one "(other)".
pub(crate) const MAX_VALUES: usize = 40;
/// Labeled fields followed (the schema's top-level properties, in practice).
const MAX_FIELDS: usize = 24;
/// Time bins kept before they are merged into bins twice as wide.
const MAX_BINS: usize = 4000;
/// Jobs listed as the most expensive and the slowest.
pub(crate) const TOP: usize = 10;
/// Models with a row of their own; the rest share one ("other models"), so an output naming
/// a model per record keeps the page and the memory bounded.
pub(crate) const MAX_MODELS: usize = 40;
/// Latency bands of the histogram chart, in ms (upper bounds; the last is open).
pub(crate) const LATENCY_BANDS: [u64; 12] = [
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    60_000,
    120_000,
    u64::MAX,
];

/// One job, for the top lists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Job {
    pub(crate) id: String,
    pub(crate) model: String,
    /// Picodollars.
    pub(crate) cost: u64,
    pub(crate) latency_ms: u64,
    /// Its record is ok (else failed).
    pub(crate) ok: bool,
}

/// Money and tokens of one model.
#[derive(Debug, Default, Clone)]
pub(crate) struct ModelRow {
    pub(crate) jobs: u64,
    pub(crate) failed: u64,
    /// Picodollars.
    pub(crate) cost: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
}

/// Records finished within one time bin: ok, and failed by kind.
#[derive(Debug, Default, Clone)]
pub(crate) struct Bin {
    pub(crate) ok: u64,
    pub(crate) failed: BTreeMap<&'static str, u64>,
}

/// The distribution of one labeled field.
#[derive(Debug, Default, Clone)]
pub(crate) struct Field {
    pub(crate) values: BTreeMap<String, u64>,
    pub(crate) other: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Aggregate {
    pub(crate) records: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) failed_by_kind: BTreeMap<&'static str, u64>,
    /// The most frequent failure messages come from here (bounded like a field).
    pub(crate) messages: Field,
    pub(crate) attempts: u64,
    pub(crate) attempts_per_job: BTreeMap<u32, u64>,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    /// Picodollars.
    pub(crate) cost: u64,
    pub(crate) by_model: BTreeMap<String, ModelRow>,
    /// Every model past the first [`MAX_MODELS`], together.
    pub(crate) other_models: ModelRow,
    pub(crate) latency: Histogram,
    pub(crate) latency_bands: [u64; LATENCY_BANDS.len()],
    pub(crate) first_start: Option<SystemTime>,
    pub(crate) last_finish: Option<SystemTime>,
    /// Seconds since the epoch of each bin's start, `bin_secs` wide.
    pub(crate) bins: BTreeMap<u64, Bin>,
    pub(crate) bin_secs: u64,
    dearest: BinaryHeap<Reverse<(u64, Job)>>,
    slowest: BinaryHeap<Reverse<(u64, Job)>>,
    /// Answers that did not match their schema (records failed as `invalid_output`).
    pub(crate) invalid: u64,
    /// Records answered with another id's answer (`--dedupe`), not bought.
    pub(crate) deduplicated: u64,
    /// Records with a `parsed` value.
    pub(crate) labeled: u64,
    pub(crate) fields: BTreeMap<String, Field>,
    pub(crate) fields_dropped: bool,
}

fn bounded(heap: &mut BinaryHeap<Reverse<(u64, Job)>>, key: u64, job: &Job) {
    if heap.len() < TOP {
        heap.push(Reverse((key, job.clone())));
    } else if heap.peek().is_some_and(|Reverse((k, _))| key > *k) {
        heap.pop();
        heap.push(Reverse((key, job.clone())));
    }
}

impl Field {
    fn count(&mut self, value: String) {
        if let Some(n) = self.values.get_mut(&value) {
            *n += 1;
        } else if self.values.len() < MAX_VALUES {
            self.values.insert(value, 1);
        } else {
            self.other += 1;
        }
    }
}

impl Aggregate {
    pub(crate) fn new() -> Self {
        Aggregate {
            bin_secs: 1,
            ..Default::default()
        }
    }

    pub(crate) fn add(&mut self, r: &Record) {
        self.records += 1;
        let ok = r.status == Status::Ok;
        let kind = r.error.as_ref().map(|e| e.kind.as_str());
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
            *self
                .failed_by_kind
                .entry(kind.unwrap_or("unknown"))
                .or_default() += 1;
            if let Some(e) = &r.error {
                self.messages.count(e.message.chars().take(200).collect());
            }
        }
        if kind == Some("invalid_output") {
            self.invalid += 1;
        }
        self.deduplicated += u64::from(r.dedup_of.is_some());
        self.attempts += u64::from(r.attempts);
        *self.attempts_per_job.entry(r.attempts.min(10)).or_default() += 1;
        let (pt, ct) = (r.prompt_tokens.unwrap_or(0), r.output_tokens().unwrap_or(0));
        self.prompt_tokens += pt;
        self.completion_tokens += ct;
        let cost = crate::cost::Money::from_usd(r.cost_usd.unwrap_or(0.0)).0;
        self.cost += cost;
        let m = match self.by_model.contains_key(&r.model) || self.by_model.len() < MAX_MODELS {
            true => self.by_model.entry(r.model.clone()).or_default(),
            false => &mut self.other_models,
        };
        m.jobs += 1;
        m.failed += u64::from(!ok);
        m.cost += cost;
        m.prompt_tokens += pt;
        m.completion_tokens += ct;
        if r.attempts > 0 {
            self.latency.record(r.latency_ms);
            let band = LATENCY_BANDS
                .iter()
                .position(|&b| r.latency_ms < b)
                .unwrap_or(LATENCY_BANDS.len() - 1);
            self.latency_bands[band] += 1;
        }
        let job = Job {
            id: r.id.clone(),
            model: r.model.clone(),
            cost,
            latency_ms: r.latency_ms,
            ok: r.status == crate::output::Status::Ok,
        };
        bounded(&mut self.dearest, cost, &job);
        bounded(&mut self.slowest, r.latency_ms, &job);
        let started = humantime::parse_rfc3339(&r.started_at).ok();
        let finished = humantime::parse_rfc3339(&r.finished_at).ok();
        if let Some(s) = started {
            self.first_start = Some(self.first_start.map_or(s, |f| f.min(s)));
        }
        if let Some(f) = finished {
            self.last_finish = Some(self.last_finish.map_or(f, |l| l.max(f)));
            let secs = f
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let bin = self
                .bins
                .entry(secs / self.bin_secs * self.bin_secs)
                .or_default();
            if ok {
                bin.ok += 1;
            } else {
                *bin.failed.entry(kind.unwrap_or("unknown")).or_default() += 1;
            }
            if self.bins.len() > MAX_BINS {
                self.widen();
            }
        }
        if let Some(serde_json::Value::Object(p)) = &r.parsed {
            self.labeled += 1;
            for (k, v) in p {
                let text = match v {
                    serde_json::Value::String(s) => s.chars().take(80).collect(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                    serde_json::Value::Null => "null".into(),
                    // Free numbers, lists and objects have no bars to show.
                    _ => continue,
                };
                if let Some(f) = self.fields.get_mut(k) {
                    f.count(text);
                } else if self.fields.len() < MAX_FIELDS {
                    let mut f = Field::default();
                    f.count(text);
                    self.fields.insert(k.clone(), f);
                } else {
                    self.fields_dropped = true;
                }
            }
        }
    }

    /// Bins twice as wide, merged.
    fn widen(&mut self) {
        self.bin_secs *= 2;
        let old = std::mem::take(&mut self.bins);
        for (start, b) in old {
            let e = self
                .bins
                .entry(start / self.bin_secs * self.bin_secs)
                .or_default();
            e.ok += b.ok;
            for (k, n) in b.failed {
                *e.failed.entry(k).or_default() += n;
            }
        }
    }

    /// From the first request's start to the last answer.
    pub(crate) fn span(&self) -> Option<Duration> {
        match (self.first_start, self.last_finish) {
            (Some(a), Some(b)) => b.duration_since(a).ok(),
            _ => None,
        }
    }

    /// The most expensive jobs, dearest first.
    pub(crate) fn dearest(&self) -> Vec<Job> {
        sorted(&self.dearest)
    }

    /// The slowest jobs, slowest first.
    pub(crate) fn slowest(&self) -> Vec<Job> {
        sorted(&self.slowest)
    }
}

fn sorted(heap: &BinaryHeap<Reverse<(u64, Job)>>) -> Vec<Job> {
    let mut v: Vec<(u64, Job)> = heap.iter().map(|Reverse(x)| x.clone()).collect();
    v.sort_by(|a, b| b.cmp(a));
    v.into_iter().map(|(_, j)| j).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64, ok: bool, secs: u64) -> Record {
        let t = |s: u64| {
            crate::output::record::timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        };
        serde_json::from_value(serde_json::json!({
            "id": format!("j{i}"), "index": i, "status": if ok { "ok" } else { "failed" },
            "model": if i.is_multiple_of(2) { "a" } else { "b" }, "response_model": null, "content": "x",
            "parsed": {"label": if i.is_multiple_of(3) { "yes" } else { "no" }, "score": 0.5},
            "finish_reason": "stop", "prompt_tokens": 10, "completion_tokens": 5,
            "total_tokens": 15, "cached_tokens": 0, "reasoning_tokens": 0,
            "cost_usd": i as f64 * 1e-6, "cost_source": "price_table", "latency_ms": i * 10,
            "attempts": 1 + (i % 3) as u32,
            "error": if ok { serde_json::Value::Null } else {
                serde_json::json!({"kind": "server", "http_status": 500, "message": "boom"}) },
            "started_at": t(secs), "finished_at": t(secs + 1), "metadata": {},
            "fingerprint": "f"
        }))
        .unwrap()
    }

    #[test]
    fn counts_money_tops_and_fields_add_up() {
        let mut a = Aggregate::new();
        for i in 0..100 {
            a.add(&record(i, !i.is_multiple_of(10), 1_000 + i));
        }
        assert_eq!((a.records, a.ok, a.failed), (100, 90, 10));
        assert_eq!(a.failed_by_kind["server"], 10);
        assert_eq!(a.by_model["a"].jobs + a.by_model["b"].jobs, 100);
        assert_eq!(a.cost, (0..100).map(|i| i * 1_000_000).sum::<u64>());
        let dear = a.dearest();
        assert_eq!(dear.len(), TOP);
        assert_eq!(dear[0].id, "j99");
        assert_eq!(a.slowest()[0].latency_ms, 990);
        assert_eq!(a.fields["label"].values["yes"], 34);
        assert!(!a.fields.contains_key("score"), "free numbers have no bars");
        assert_eq!(a.span(), Some(Duration::from_secs(100)));
        assert_eq!(a.attempts_per_job.values().sum::<u64>(), 100);
    }

    #[test]
    fn bins_widen_and_fields_stay_bounded() {
        let mut a = Aggregate::new();
        for i in 0..(MAX_BINS as u64 * 3) {
            let mut r = record(i, true, i * 7);
            r.parsed = Some(serde_json::json!({ "free": format!("v{i}") }));
            a.add(&r);
        }
        assert!(a.bins.len() <= MAX_BINS, "{}", a.bins.len());
        assert!(a.bin_secs > 1);
        assert_eq!(
            a.bins.values().map(|b| b.ok).sum::<u64>(),
            MAX_BINS as u64 * 3
        );
        let f = &a.fields["free"];
        assert_eq!(f.values.len(), MAX_VALUES);
        assert_eq!(f.other, MAX_BINS as u64 * 3 - MAX_VALUES as u64);
    }
}
