//! What a report shows, gathered record by record in bounded memory: counts, money and tokens by
//! model, a latency histogram, attempts, the ten most expensive and slowest jobs, completions
//! and failures over time (tenth-of-a-second bins that widen as the run's span grows, never
//! more than a few thousand), the retries by kind, and the distribution of each labeled field
//! (at most [`MAX_VALUES`] values a field, the rest counted together; numbers also as a
//! sample of at most [`SAMPLE`] for a histogram). A million records take a few MB here.

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
/// The narrowest time bin, in ms: a run of a second still has ten columns.
const FIRST_BIN_MS: u64 = 100;
/// The numbers of a labeled field kept for its histogram (a reservoir sample past this).
pub(crate) const SAMPLE: usize = 10_000;
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

/// Records finished within one time bin: ok, and failed by kind; the attempts their jobs
/// made, and the ones retried by kind.
#[derive(Debug, Default, Clone)]
pub(crate) struct Bin {
    pub(crate) ok: u64,
    pub(crate) failed: BTreeMap<&'static str, u64>,
    pub(crate) attempts: u64,
    pub(crate) retried: BTreeMap<&'static str, u64>,
}

impl Bin {
    fn absorb(&mut self, b: Bin) {
        self.ok += b.ok;
        self.attempts += b.attempts;
        for (k, n) in b.failed {
            *self.failed.entry(k).or_default() += n;
        }
        for (k, n) in b.retried {
            *self.retried.entry(k).or_default() += n;
        }
    }
}

/// The distribution of one labeled field.
#[derive(Debug, Default, Clone)]
pub(crate) struct Field {
    pub(crate) values: BTreeMap<String, u64>,
    pub(crate) other: u64,
    /// Its numbers, when it has some.
    pub(crate) numbers: Option<Numbers>,
}

/// The numbers of a labeled field: exact count, least, most and sum, and a sample of at most
/// [`SAMPLE`] (all of them up to there; past it a reservoir, the same for the same output).
#[derive(Debug, Clone)]
pub(crate) struct Numbers {
    pub(crate) count: u64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) sum: f64,
    pub(crate) sample: Vec<f64>,
    /// Some are whole numbers with a fraction (0.5), not only counts or ratings.
    pub(crate) fractional: bool,
}

impl Numbers {
    fn new() -> Self {
        Numbers {
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            sample: Vec::new(),
            fractional: false,
        }
    }

    fn record(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.fractional |= v.fract() != 0.0;
        if self.sample.len() < SAMPLE {
            self.sample.push(v);
        } else {
            // Algorithm R with a hash for the dice: each number kept with the same chance.
            let j = xxhash_rust::xxh3::xxh3_64(&self.count.to_le_bytes()) % self.count;
            if let Some(slot) = self.sample.get_mut(j as usize) {
                *slot = v;
            }
        }
    }

    pub(crate) fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }
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
    /// Milliseconds since the epoch of each bin's start, `bin_ms` wide.
    pub(crate) bins: BTreeMap<u64, Bin>,
    pub(crate) bin_ms: u64,
    /// Failed attempts that were tried again, by kind (the records' `retries`).
    pub(crate) retried: BTreeMap<&'static str, u64>,
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
            bin_ms: FIRST_BIN_MS,
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
        for (k, n) in r.retries.iter().flatten() {
            *self.retried.entry(k.as_str()).or_default() += u64::from(*n);
        }
        if let Some(f) = finished {
            self.last_finish = Some(self.last_finish.map_or(f, |l| l.max(f)));
            self.bin(r, f, ok, kind);
        }
        if let Some(serde_json::Value::Object(p)) = &r.parsed {
            self.labeled += 1;
            for (k, v) in p {
                self.label(k, v);
            }
        }
    }

    /// `r`, finished at `f`, in its time bin.
    fn bin(&mut self, r: &Record, f: SystemTime, ok: bool, kind: Option<&'static str>) {
        let ms = f
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let bin = self.bins.entry(ms / self.bin_ms * self.bin_ms).or_default();
        if ok {
            bin.ok += 1;
        } else {
            *bin.failed.entry(kind.unwrap_or("unknown")).or_default() += 1;
        }
        bin.attempts += u64::from(r.attempts);
        for (k, n) in r.retries.iter().flatten() {
            *bin.retried.entry(k.as_str()).or_default() += u64::from(*n);
        }
        if self.bins.len() > MAX_BINS {
            self.widen();
        }
    }

    /// One labeled field's value: counted as a word (strings, booleans, whole numbers), and
    /// kept as a number (any number).
    fn label(&mut self, k: &str, v: &serde_json::Value) {
        let text = match v {
            serde_json::Value::String(s) => Some(s.chars().take(80).collect()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            serde_json::Value::Null => Some("null".into()),
            // Free numbers go to the histogram only; lists and objects have nothing to show.
            serde_json::Value::Number(_) => None,
            _ => return,
        };
        if !self.fields.contains_key(k) {
            if self.fields.len() >= MAX_FIELDS {
                self.fields_dropped = true;
                return;
            }
            self.fields.insert(k.to_string(), Field::default());
        }
        let Some(f) = self.fields.get_mut(k) else {
            return;
        };
        if let Some(text) = text {
            f.count(text);
        }
        if let Some(x) = v.as_f64() {
            f.numbers.get_or_insert_with(Numbers::new).record(x);
        }
    }

    /// Bins twice as wide, merged.
    fn widen(&mut self) {
        self.bin_ms *= 2;
        let old = std::mem::take(&mut self.bins);
        for (start, b) in old {
            self.bins
                .entry(start / self.bin_ms * self.bin_ms)
                .or_default()
                .absorb(b);
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
            "retries": if i.is_multiple_of(3) { serde_json::Value::Null } else {
                serde_json::json!({"timeout": i % 3}) },
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
        let score = &a.fields["score"];
        assert!(score.values.is_empty(), "free numbers have no bars");
        let n = score.numbers.as_ref().unwrap();
        assert_eq!((n.count, n.min, n.max, n.mean()), (100, 0.5, 0.5, 0.5));
        assert!(n.fractional);
        // 33 records with 1 retry, 33 with 2 (i % 3 == 1, 2): the attempts less one each.
        assert_eq!(a.retried["timeout"], 33 + 2 * 33);
        let in_bins: u64 = a
            .bins
            .values()
            .filter_map(|b| b.retried.get("timeout"))
            .sum();
        assert_eq!(in_bins, 99);
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
        assert!(a.bin_ms > FIRST_BIN_MS);
        assert_eq!(
            a.bins.values().map(|b| b.ok).sum::<u64>(),
            MAX_BINS as u64 * 3
        );
        let f = &a.fields["free"];
        assert_eq!(f.values.len(), MAX_VALUES);
        assert_eq!(f.other, MAX_BINS as u64 * 3 - MAX_VALUES as u64);
    }

    #[test]
    fn numbers_past_the_sample_keep_exact_figures_and_a_spread_sample() {
        let mut a = Aggregate::new();
        let n = SAMPLE as u64 * 3;
        for i in 0..n {
            let mut r = record(i, true, 1_000);
            r.parsed = Some(serde_json::json!({ "confidence": i as f64 / n as f64 }));
            a.add(&r);
        }
        let c = a.fields["confidence"].numbers.as_ref().unwrap();
        assert_eq!((c.count, c.min), (n, 0.0));
        assert_eq!(c.sample.len(), SAMPLE);
        // A uniform input's sample is uniform: about a third of it in each third.
        let low = c.sample.iter().filter(|&&v| v < 1.0 / 3.0).count();
        assert!((2_900..3_800).contains(&low), "{low}");
    }
}
