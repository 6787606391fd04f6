//! The output record: one per job id, the contract of DESIGN.md. Field order here is the order
//! in every JSONL line. `Record` is written by the runner and read back (as [`RecordHead`]) by
//! the checkpoint scan and `status`.

pub use crate::error_kind::ErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostSource {
    Provider,
    PriceTable,
    /// The answer's usage could not be read: the job's worst case by the price table.
    WorstCase,
}

impl Status {
    /// The name serde writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
        }
    }
}

impl CostSource {
    /// The name serde writes.
    pub fn as_str(self) -> &'static str {
        match self {
            CostSource::Provider => "provider",
            CostSource::PriceTable => "price_table",
            CostSource::WorstCase => "worst_case",
        }
    }
}

/// Why a batch's answer is not the answer to its job as the job file has it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stale {
    /// The job's request changed after the batch was submitted.
    JobChanged,
    /// The job left the job file after the batch was submitted.
    JobRemoved,
}

impl Stale {
    pub fn as_str(self) -> &'static str {
        match self {
            Stale::JobChanged => "job_changed",
            Stale::JobRemoved => "job_removed",
        }
    }
}

/// `error` of a failed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordError {
    pub kind: ErrorKind,
    pub http_status: Option<u16>,
    pub message: String,
}

/// One result line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub id: String,
    pub index: u64,
    pub status: Status,
    pub model: String,
    pub response_model: Option<String>,
    pub content: Option<String>,
    /// The content parsed and validated against the job's schema (or JSON object), else null.
    #[serde(default)]
    pub parsed: Option<Value>,
    pub finish_reason: Option<String>,
    /// The first choice's `tool_calls`, as the provider sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Box<RawValue>>,
    /// Every choice, when the request asked for more than one (`n` > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<Choice>>,
    /// The fallback model that answered, when the job's own model could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
    /// Set on an answer a batch delivered after its job changed or left the job file: paid
    /// for, so recorded (its money counts), but not the answer to the job as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<Stale>,
    /// Under `--dedupe`: the id whose answer this is (the same request, sent once); this
    /// record's cost is 0, the answer's cost is in that id's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Box<RawValue>>,
    /// The messages sent (`--keep-prompt`), for audits of labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Value>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    /// The output billed, when it is not `completion_tokens`: the provider left the answer's
    /// reasoning out of it ([`usage_rule`](Record::usage_rule) says how it was read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_rule: Option<crate::cost::OutputRule>,
    pub cost_usd: Option<f64>,
    pub cost_source: Option<CostSource>,
    /// What the gateway says its upstream provider billed (OpenRouter's
    /// `cost_details.upstream_inference_cost`), when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cost_usd: Option<f64>,
    pub latency_ms: u64,
    pub attempts: u32,
    /// The attempts before the last that failed, by kind (`{"timeout": 2}`): what the run
    /// retried for this job. Absent when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    pub error: Option<RecordError>,
    pub started_at: String,
    pub finished_at: String,
    pub metadata: Map<String, Value>,
    pub fingerprint: String,
}

/// Failed attempts by kind.
pub type Retries = std::collections::BTreeMap<ErrorKind, u32>;

/// One of several choices (`n` > 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parsed: Option<Value>,
}

impl Record {
    /// The output billed: `billed_output_tokens` where the provider's `completion_tokens`
    /// left the reasoning out, else `completion_tokens`.
    pub fn output_tokens(&self) -> Option<u64> {
        self.billed_output_tokens.or(self.completion_tokens)
    }
}

/// The fields a resume needs, read without building the whole record.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordHead {
    pub id: String,
    pub status: Status,
    pub fingerprint: String,
    pub error: Option<ErrorHead>,
    pub cost_usd: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub billed_output_tokens: Option<u64>,
}

impl RecordHead {
    /// The output billed: [`Record::output_tokens`].
    pub fn output_tokens(&self) -> Option<u64> {
        self.billed_output_tokens.or(self.completion_tokens)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorHead {
    pub kind: ErrorKind,
}

/// RFC 3339 time with milliseconds, UTC (`2026-12-07T03:15:02.123Z`), as humantime writes
/// it; written directly for the years 1970 to 9999 (two a record), by humantime otherwise.
pub fn timestamp(t: std::time::SystemTime) -> String {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) if d.as_secs() < 253_402_300_800 => rfc3339_millis(d),
        _ => humantime::format_rfc3339_millis(t).to_string(),
    }
}

fn rfc3339_millis(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, in_day) = (secs / 86_400, secs % 86_400);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    out[..10].copy_from_slice(&date(days));
    let ms = u64::from(since_epoch.subsec_millis());
    for (at, n) in [
        (11, in_day / 3600),
        (14, in_day / 60 % 60),
        (17, in_day % 60),
        (21, ms % 100),
    ] {
        out[at] = b'0' + (n / 10) as u8;
        out[at + 1] = b'0' + (n % 10) as u8;
    }
    out[20] = b'0' + (ms / 100) as u8;
    // Digits and ASCII punctuation only.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01: worked out once a day a thread, not twice
/// a record.
fn date(days: u64) -> [u8; 10] {
    thread_local! {
        static LAST: std::cell::Cell<(u64, [u8; 10])> =
            const { std::cell::Cell::new((u64::MAX, [0; 10])) };
    }
    LAST.with(|last| {
        let (day, text) = last.get();
        if day == days {
            return text;
        }
        let (year, month, day) = civil_from_days(days);
        let mut text = *b"0000-00-00";
        let mut put = |at: usize, width: usize, mut n: u64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        last.set((days, text));
        text
    })
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn timestamps_are_humantimes_to_the_millisecond() {
        // Every day to the year 2380 (leap years, 2000, 2100, 2200, 2300) at a time of day
        // that moves, then a spread to the last millisecond of 9999.
        let mut times: Vec<(u64, u32)> = (0..150_000u64)
            .map(|d| (d * 86_400 + d * 7_919 % 86_400, (d % 1000) as u32))
            .collect();
        let mut secs: u64 = 1;
        while secs < 253_402_300_799 {
            times.push((secs, 999));
            secs = secs * 3 / 2 + 86_399;
        }
        // Seconds in a row across a midnight: the day's text kept, then worked out again.
        times.extend((0..5_000).map(|i| (1_796_601_600 - 2_500 + i, (i % 1000) as u32)));
        times.extend([
            (0, 0),
            (86_399, 999),
            (951_782_400, 1),
            (253_402_300_799, 999),
        ]);
        for (s, ms) in times {
            let t = UNIX_EPOCH + Duration::new(s, ms * 1_000_000 + 456_789);
            assert_eq!(
                timestamp(t),
                humantime::format_rfc3339_millis(t).to_string(),
                "{s} s"
            );
        }
        let now = SystemTime::now();
        assert_eq!(
            timestamp(now),
            humantime::format_rfc3339_millis(now).to_string()
        );
    }
}
