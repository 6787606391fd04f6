//! How the simulator says no, provider by provider: the error body shapes, whether rate-limit
//! headers come at all, and what an exhausted account looks like. `--dialect` picks one, so the
//! runner is tested against each provider's real manners:
//! - `openai`: `{"error": {...}}`, `Retry-After` and `x-ratelimit-*` headers; an exhausted
//!   account is a 429 with `insufficient_quota`.
//! - `openrouter`: the same shapes; an exhausted account is a 402 "Insufficient credits".
//! - `gemini`: Google's error, wrapped in an array, with a `RetryInfo.retryDelay` and a
//!   `QuotaFailure`, and no rate-limit headers at all; an exhausted account is a per-day quota.
//! - `aiml`: `{"message", "path", "requestId", "statusCode", "timestamp"}`, no rate-limit
//!   headers; an exhausted account is a 403 about the balance.

use serde_json::json;

/// One provider's manners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    #[default]
    OpenAi,
    OpenRouter,
    Gemini,
    Aiml,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [
        Dialect::OpenAi,
        Dialect::OpenRouter,
        Dialect::Gemini,
        Dialect::Aiml,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::OpenRouter => "openrouter",
            Dialect::Gemini => "gemini",
            Dialect::Aiml => "aiml",
        }
    }

    pub fn parse(name: &str) -> Option<Dialect> {
        Dialect::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Whether answers and 429s carry `Retry-After` and `x-ratelimit-*` headers.
    pub fn sends_limit_headers(self) -> bool {
        matches!(self, Dialect::OpenAi | Dialect::OpenRouter)
    }

    /// An error body in this dialect.
    pub fn error_body(self, status: u16, kind: &str, message: &str) -> Vec<u8> {
        let v = match self {
            Dialect::OpenAi | Dialect::OpenRouter => {
                json!({"error": {"message": message, "type": kind, "code": status}})
            }
            Dialect::Gemini => json!([{"error": {
                "code": status,
                "message": message,
                "status": google_status(status),
            }}]),
            Dialect::Aiml => json!({
                "message": message,
                "path": "/v1/chat/completions",
                "requestId": "mock-request",
                "statusCode": status,
                "timestamp": "2026-01-01T00:00:00.000Z",
            }),
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// A rate-limit refusal asking to wait `secs`: the body, and whether `Retry-After` goes
    /// with it.
    pub fn rate_limited(self, secs: u64) -> (Vec<u8>, bool) {
        match self {
            Dialect::Gemini => {
                let v = json!([{"error": {
                    "code": 429,
                    "message": format!("You exceeded your current quota, please check your plan and billing details. Please retry in {secs}.0s."),
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                         "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                                         "quotaValue": "15"}]},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")}
                    ]
                }}]);
                (serde_json::to_vec(&v).unwrap_or_default(), false)
            }
            d => (
                d.error_body(429, "rate_limit_exceeded", "rate limit reached"),
                d.sends_limit_headers(),
            ),
        }
    }

    /// The refusal of an account that is out of credits or quota: status and body.
    pub fn exhausted(self) -> (u16, Vec<u8>) {
        match self {
            Dialect::OpenAi => (
                429,
                serde_json::to_vec(&json!({"error": {
                    "message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}))
                .unwrap_or_default(),
            ),
            Dialect::OpenRouter => (
                402,
                serde_json::to_vec(&json!({"error": {"code": 402,
                    "message": "Insufficient credits. Add more using https://openrouter.ai/credits"}}))
                .unwrap_or_default(),
            ),
            Dialect::Gemini => (
                429,
                serde_json::to_vec(&json!([{"error": {
                    "code": 429,
                    "message": "You exceeded your current quota, please check your plan and billing details.",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                         "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                                         "quotaValue": "250"}]},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3600s"}
                    ]}}]))
                .unwrap_or_default(),
            ),
            Dialect::Aiml => (
                403,
                Dialect::Aiml.error_body(403, "forbidden", "Insufficient balance: top up your account to continue"),
            ),
        }
    }
}

fn google_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::refusal;

    #[test]
    fn the_runner_reads_every_dialect() {
        for d in Dialect::ALL {
            let body = d.error_body(500, "server_error", "model overloaded");
            assert_eq!(refusal::parse(&body).message, "model overloaded", "{d:?}");
            let (status, body) = d.exhausted();
            let r = refusal::parse(&body);
            assert!(
                r.out_of_credits(status) || r.daily_quota().is_some(),
                "{d:?}: {r:?}"
            );
            let (body, header) = d.rate_limited(7);
            let r = refusal::parse(&body);
            assert!(!r.out_of_credits(429) && r.daily_quota().is_none(), "{d:?}");
            assert_eq!(header, d.sends_limit_headers());
            if d == Dialect::Gemini {
                assert_eq!(r.retry_delay, Some(std::time::Duration::from_secs(7)));
            }
        }
    }
}
