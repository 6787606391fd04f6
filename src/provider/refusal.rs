//! What a provider's error body says, whatever its dialect: the provider's own message (never a
//! raw JSON dump), its error codes, how long it asks to wait, and which quota ran out.
//!
//! The shapes met in practice:
//! - OpenAI and OpenRouter: `{"error": {"message", "type", "code", ...}}`; OpenAI's
//!   `insufficient_quota` means the account is out of money, not "slow down".
//! - Google's Gemini (OpenAI-compatible endpoint): the same object or wrapped in an array,
//!   `[{"error": {"code": 429, "message": "... Please retry in 55.57s.", "status":
//!   "RESOURCE_EXHAUSTED", "details": [{"@type": "...QuotaFailure", "violations": [{"quotaId":
//!   "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}, {"@type": "...RetryInfo",
//!   "retryDelay": "47s"}]}}]`, and no rate-limit headers at all.
//! - AIML API and vLLM: the message at the top, `{"message", "path", "requestId",
//!   "statusCode", "timestamp"}` or `{"object": "error", "message", "type", "code"}`.
//! - `{"error": "text"}` and `{"detail": "text"}` from other servers.

use serde_json::Value;
use std::time::Duration;

/// The parts of an error body the runner acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refusal {
    /// The provider's message (or the start of the body when it has none).
    pub message: String,
    /// Error type, code and status strings, lower-cased (`insufficient_quota`,
    /// `resource_exhausted`, `402`).
    pub codes: Vec<String>,
    /// How long the provider asks to wait: Google's `RetryInfo.retryDelay`, or "retry in
    /// 55.57s" in the message.
    pub retry_delay: Option<Duration>,
    /// Quotas the provider says ran out (Google's `QuotaFailure` ids).
    pub quota_ids: Vec<String>,
}

/// Longest message kept.
const MAX_MESSAGE: usize = 500;

/// Reads an error body.
pub fn parse(body: &[u8]) -> Refusal {
    let mut r = Refusal::default();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        read_value(&v, &mut r);
    }
    if r.message.is_empty() {
        r.message = truncate(&String::from_utf8_lossy(body), MAX_MESSAGE);
    }
    if r.retry_delay.is_none() {
        r.retry_delay = delay_in_message(&r.message);
    }
    r
}

fn read_value(v: &Value, r: &mut Refusal) {
    // Google wraps the error in an array.
    let v = match v {
        Value::Array(items) => match items.first() {
            Some(first) => first,
            None => return,
        },
        other => other,
    };
    let Value::Object(top) = v else { return };
    let error = match top.get("error") {
        Some(Value::Object(e)) => e,
        Some(Value::String(s)) => {
            r.message = truncate(s, MAX_MESSAGE);
            return;
        }
        // The message at the top (AIML API, vLLM, FastAPI's `detail`).
        _ => top,
    };
    r.message = match error.get("message").or_else(|| error.get("detail")) {
        Some(Value::String(s)) => truncate(s, MAX_MESSAGE),
        Some(Value::Array(parts)) => truncate(
            &parts.iter().map(text_of).collect::<Vec<_>>().join("; "),
            MAX_MESSAGE,
        ),
        _ => String::new(),
    };
    for key in ["type", "code", "status", "statusCode"] {
        if let Some(c) = error.get(key) {
            let c = text_of(c).to_ascii_lowercase();
            if !c.is_empty() {
                r.codes.push(c);
            }
        }
    }
    for d in error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(delay) = d.get("retryDelay").and_then(Value::as_str) {
            r.retry_delay = crate::retry::parse_reset(delay);
        }
        for violation in d
            .get("violations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(id) = violation.get("quotaId").and_then(Value::as_str) {
                r.quota_ids.push(id.to_string());
            }
        }
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// "Please retry in 55.57s." / "retry after 20 seconds" in a message.
fn delay_in_message(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    let at = lower
        .find("retry in ")
        .map(|i| i + 9)
        .or_else(|| lower.find("retry after ").map(|i| i + 12))?;
    let rest = &lower[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let secs: f64 = rest[..end].parse().ok()?;
    let unit = rest[end..].trim_start();
    let scale = if unit.starts_with("ms") {
        0.001
    } else if unit.starts_with("min") {
        60.0
    } else {
        1.0
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64((secs * scale).min(86_400.0)))
}

impl Refusal {
    /// The account is out of money or credits (OpenAI's `insufficient_quota`, OpenRouter's
    /// 402, a balance or credits message): no retry can succeed until someone pays.
    pub fn out_of_credits(&self, status: u16) -> bool {
        if status == 402 {
            return true;
        }
        let codes = self.codes.iter().any(|c| {
            c == "insufficient_quota"
                || c == "insufficient_credits"
                || c == "billing_hard_limit_reached"
        });
        let m = self.message.to_ascii_lowercase();
        // Not "exceeded your current quota": Google says that of per-minute limits too.
        codes
            || m.contains("insufficient credits")
            || m.contains("insufficient balance")
            || (m.contains("balance") && (m.contains("exhausted") || m.contains("not enough")))
    }

    /// A per-day quota that ran out (Google's `...PerDay...` quota ids): retrying is pointless
    /// until it resets.
    pub fn daily_quota(&self) -> Option<&str> {
        self.quota_ids
            .iter()
            .find(|id| id.contains("PerDay"))
            .map(String::as_str)
    }
}

fn truncate(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_and_openrouter_shapes() {
        let r = parse(br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#);
        assert!(r.message.starts_with("You exceeded your current quota"));
        assert!(r.out_of_credits(429));
        let r = parse(br#"{"error":{"code":402,"message":"Insufficient credits. Add more using https://openrouter.ai/credits"}}"#);
        assert!(r.out_of_credits(402));
        assert_eq!(r.codes, ["402"]);
        let r = parse(br#"{"error":{"message":"Rate limit exceeded","code":429}}"#);
        assert!(!r.out_of_credits(429));
        assert_eq!(r.retry_delay, None);
    }

    #[test]
    fn googles_per_minute_quota_is_a_pause_not_a_stop() {
        let r = parse(br#"[{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details. Please retry in 20s.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"20s"}]}}]"#);
        assert!(!r.out_of_credits(429));
        assert_eq!(r.daily_quota(), None);
        assert_eq!(r.retry_delay, Some(Duration::from_secs(20)));
    }

    #[test]
    fn google_array_wrapped_with_retry_info_and_a_daily_quota() {
        let body = br#"[{"error":{"code":429,"message":"You exceeded your current quota. Please retry in 55.57s.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaValue":"250"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}}]"#;
        let r = parse(body);
        assert_eq!(r.retry_delay, Some(Duration::from_secs(47)));
        assert_eq!(
            r.daily_quota(),
            Some("GenerateRequestsPerDayPerProjectPerModel-FreeTier")
        );
        assert!(r.codes.contains(&"resource_exhausted".to_string()));
        assert!(r.message.ends_with("Please retry in 55.57s."));
        // Without RetryInfo, the message's delay counts.
        let r = parse(br#"{"error":{"code":429,"message":"Resource has been exhausted. Please retry in 1.5s.","status":"RESOURCE_EXHAUSTED"}}"#);
        assert_eq!(r.retry_delay, Some(Duration::from_millis(1500)));
        assert_eq!(r.daily_quota(), None);
    }

    #[test]
    fn aiml_vllm_and_plain_shapes() {
        let r = parse(br#"{"message":"Insufficient balance: top up your account","path":"/v1/chat/completions","requestId":"abc","statusCode":403,"timestamp":"2026-11-22T00:00:00Z"}"#);
        assert_eq!(r.message, "Insufficient balance: top up your account");
        assert!(r.out_of_credits(403));
        let r = parse(
            br#"{"object":"error","message":"model not found","type":"NotFoundError","code":404}"#,
        );
        assert_eq!(r.message, "model not found");
        assert!(!r.out_of_credits(404));
        assert_eq!(parse(br#"{"error":"bad things"}"#).message, "bad things");
        assert_eq!(parse(br#"{"detail":"Not Found"}"#).message, "Not Found");
        assert_eq!(
            parse(b"<html>502 Bad Gateway</html>").message,
            "<html>502 Bad Gateway</html>"
        );
        assert_eq!(parse(b"[]").message, "[]");
    }
}
