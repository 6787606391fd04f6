//! The pure decision at the heart of retrying: given what came back from one HTTP attempt,
//! is the job done, worth another try (and when), failed for good, or is the whole run wrong?
//! No I/O here, so every branch is unit-tested.

use super::response::{parse_completion, Completion};
pub use crate::error_kind::ErrorKind;
use crate::retry::{parse_reset, parse_retry_after};
use std::time::{Duration, SystemTime};

/// What one attempt produced, before judging it.
#[derive(Debug)]
pub enum Attempt {
    /// The provider answered with a status and a body.
    Http {
        status: u16,
        retry_after: Option<String>,
        reset_requests: Option<String>,
        reset_tokens: Option<String>,
        /// The provider said a quota is used up (`x-ratelimit-remaining-*: 0`) until then.
        quota_exhausted: Option<Duration>,
        /// The limits the provider says the key has (`x-ratelimit-limit-*`).
        advertised: crate::limit::Advertised,
        body: bytes::Bytes,
    },
    /// No answer: the connection failed, or the answer took longer than the timeout.
    Transport { kind: ErrorKind, message: String },
    /// The body was larger than the cap; it was not read.
    TooLarge { status: u16, limit: usize },
}

/// The judgement of an attempt.
#[derive(Debug)]
pub enum Verdict {
    /// A usable completion.
    Done(Box<Completion>),
    /// Worth another attempt, not before `after` when the provider said so.
    Retry {
        kind: ErrorKind,
        status: Option<u16>,
        after: Option<Duration>,
        message: String,
    },
    /// This job fails; trying it again as it is will not help.
    Fail {
        kind: ErrorKind,
        status: Option<u16>,
        message: String,
    },
    /// Nothing in this run can succeed (bad key, no access: kind `auth`; no credits or a
    /// used-up daily quota: kind `quota`): stop the run.
    Abort {
        kind: ErrorKind,
        status: u16,
        message: String,
    },
}

/// Judges one attempt. `now` resolves `Retry-After` dates (read only for a refusal).
pub fn classify(attempt: Attempt, now: impl FnOnce() -> SystemTime) -> Verdict {
    match attempt {
        Attempt::Transport { kind, message } => Verdict::Retry {
            kind,
            status: None,
            after: None,
            message,
        },
        Attempt::TooLarge { status, limit } => Verdict::Fail {
            kind: ErrorKind::BadResponse,
            status: Some(status),
            message: format!(
                "response body over the {limit}-byte limit (--max-response-bytes); not read"
            ),
        },
        Attempt::Http {
            status: status @ 200..=299,
            body,
            ..
        } => answered(status, &body),
        Attempt::Http {
            status,
            retry_after,
            reset_requests,
            reset_tokens,
            body,
            ..
        } => {
            let waits = Waits {
                retry_after,
                reset_requests,
                reset_tokens,
            };
            refused(status, &waits, &body, now())
        }
    }
}

/// A 2xx answer: its completion, or another try when it cannot be read.
fn answered(status: u16, body: &[u8]) -> Verdict {
    match parse_completion(body) {
        Ok(c) => Verdict::Done(Box::new(c)),
        Err(message) => Verdict::Retry {
            kind: ErrorKind::BadResponse,
            status: Some(status),
            after: None,
            message,
        },
    }
}

/// What a refusal's headers say about when to ask again.
struct Waits {
    retry_after: Option<String>,
    reset_requests: Option<String>,
    reset_tokens: Option<String>,
}

impl Waits {
    /// `Retry-After`, a number of seconds or a date (resolved against `now`).
    fn header(&self, now: SystemTime) -> Option<Duration> {
        self.retry_after
            .as_deref()
            .and_then(|v| parse_retry_after(v, now))
    }

    /// The later of the two `x-ratelimit-reset-*` headers.
    fn reset(&self) -> Option<Duration> {
        let r = self.reset_requests.as_deref().and_then(parse_reset);
        let t = self.reset_tokens.as_deref().and_then(parse_reset);
        r.max(t)
    }
}

/// A status other than 2xx, judged by the status and what the provider said
/// ([`super::refusal`]).
fn refused(status: u16, waits: &Waits, body: &[u8], now: SystemTime) -> Verdict {
    let refusal = super::refusal::parse(body);
    if refusal.out_of_credits(status) {
        return Verdict::Abort {
            kind: ErrorKind::Quota,
            status,
            message: refusal.message,
        };
    }
    let retry = |kind, after, message| Verdict::Retry {
        kind,
        status: Some(status),
        after,
        message,
    };
    match status {
        429 => match refusal.daily_quota() {
            Some(quota) => Verdict::Abort {
                kind: ErrorKind::Quota,
                status,
                message: format!(
                    "the daily quota {quota} is used up until it resets at {}: {}",
                    super::pacific::describe_reset(now),
                    refusal.message
                ),
            },
            None => retry(
                ErrorKind::RateLimited,
                waits
                    .header(now)
                    .or_else(|| waits.reset())
                    .or(refusal.retry_delay),
                refusal.message,
            ),
        },
        408 => retry(ErrorKind::Timeout, None, refusal.message),
        409 | 425 | 500..=599 => retry(
            ErrorKind::Server,
            waits.header(now).or(refusal.retry_delay),
            refusal.message,
        ),
        401 | 403 => Verdict::Abort {
            kind: ErrorKind::Auth,
            status,
            message: refusal.message,
        },
        _ => Verdict::Fail {
            kind: ErrorKind::Client,
            status: Some(status),
            message: refusal.message,
        },
    }
}

/// The provider's error message, whatever its dialect ([`super::refusal`]), else the start
/// of the body.
pub fn error_message(body: &[u8]) -> String {
    super::refusal::parse(body).message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, body: &str) -> Attempt {
        Attempt::Http {
            status,
            retry_after: None,
            reset_requests: None,
            reset_tokens: None,
            quota_exhausted: None,
            advertised: Default::default(),
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    const OK: &str = r#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

    #[test]
    fn each_providers_way_of_saying_no() {
        let abort_quota = |v: Verdict| match v {
            Verdict::Abort {
                kind: ErrorKind::Quota,
                message,
                ..
            } => message,
            other => panic!("{other:?}"),
        };
        // OpenAI: out of money is not "slow down".
        let m = abort_quota(classify(
            http(
                429,
                r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            ),
            now,
        ));
        assert!(m.starts_with("You exceeded your current quota"), "{m}");
        // OpenRouter: 402.
        let m = abort_quota(classify(
            http(
                402,
                r#"{"error":{"code":402,"message":"Insufficient credits"}}"#,
            ),
            now,
        ));
        assert_eq!(m, "Insufficient credits");
        // AIML API: 403 with its own shape.
        let m = abort_quota(classify(
            http(
                403,
                r#"{"message":"Insufficient balance","path":"/v1/chat/completions","requestId":"r","statusCode":403,"timestamp":"t"}"#,
            ),
            now,
        ));
        assert_eq!(m, "Insufficient balance");
        // Gemini: a per-day quota stops the run, naming the quota.
        let m = abort_quota(classify(
            http(
                429,
                r#"[{"error":{"code":429,"message":"Quota exceeded.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}]"#,
            ),
            now,
        ));
        assert!(
            m.contains("GenerateRequestsPerDayPerProjectPerModel-FreeTier")
                && m.contains("00:00 Pacific time ("),
            "{m}"
        );
        // Gemini: a per-minute quota pauses for its retryDelay, with no header at all.
        match classify(
            http(
                429,
                r#"[{"error":{"code":429,"message":"Please retry in 47.2s.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}}]"#,
            ),
            now,
        ) {
            Verdict::Retry {
                kind: ErrorKind::RateLimited,
                after,
                message,
                ..
            } => {
                assert_eq!(after, Some(Duration::from_secs(47)));
                assert_eq!(message, "Please retry in 47.2s.");
            }
            other => panic!("{other:?}"),
        }
        // A bad key stays an authentication stop.
        assert!(matches!(
            classify(http(401, r#"{"error":{"message":"Invalid API key"}}"#), now),
            Verdict::Abort {
                kind: ErrorKind::Auth,
                ..
            }
        ));
    }

    #[test]
    fn success_parses() {
        assert!(matches!(classify(http(200, OK), now), Verdict::Done(_)));
    }

    #[test]
    fn unreadable_200_and_error_in_200_are_retried() {
        let v = classify(http(200, "<html>oops"), now);
        assert!(
            matches!(
                v,
                Verdict::Retry {
                    kind: ErrorKind::BadResponse,
                    ..
                }
            ),
            "{v:?}"
        );
        let v = classify(
            http(
                200,
                r#"{"error":{"message":"upstream overloaded","code":502}}"#,
            ),
            now,
        );
        match v {
            Verdict::Retry {
                kind: ErrorKind::BadResponse,
                message,
                ..
            } => assert!(message.contains("upstream overloaded")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_limits_carry_their_wait() {
        let a = Attempt::Http {
            status: 429,
            retry_after: Some("7".into()),
            reset_requests: None,
            reset_tokens: None,
            quota_exhausted: None,
            advertised: Default::default(),
            body: bytes::Bytes::new(),
        };
        assert!(
            matches!(classify(a, now), Verdict::Retry { kind: ErrorKind::RateLimited, after: Some(d), .. } if d == Duration::from_secs(7))
        );
        let a = Attempt::Http {
            status: 429,
            retry_after: None,
            reset_requests: Some("1s".into()),
            reset_tokens: Some("6m0s".into()),
            quota_exhausted: None,
            advertised: Default::default(),
            body: bytes::Bytes::new(),
        };
        assert!(
            matches!(classify(a, now), Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(360))
        );
    }

    #[test]
    fn statuses_map_to_decisions() {
        for s in [408, 409, 425, 500, 502, 503, 504] {
            assert!(
                matches!(classify(http(s, ""), now), Verdict::Retry { .. }),
                "{s}"
            );
        }
        for s in [400, 404, 413, 422] {
            assert!(
                matches!(
                    classify(http(s, ""), now),
                    Verdict::Fail {
                        kind: ErrorKind::Client,
                        ..
                    }
                ),
                "{s}"
            );
        }
        for s in [401, 403] {
            assert!(
                matches!(
                    classify(http(s, ""), now),
                    Verdict::Abort {
                        kind: ErrorKind::Auth,
                        ..
                    }
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn transport_errors_are_retried() {
        let a = Attempt::Transport {
            kind: ErrorKind::Timeout,
            message: "timed out".into(),
        };
        assert!(matches!(
            classify(a, now),
            Verdict::Retry {
                kind: ErrorKind::Timeout,
                ..
            }
        ));
    }

    #[test]
    fn error_messages_prefer_the_provider_text() {
        assert_eq!(
            error_message(br#"{"error":{"message":"bad temperature"}}"#),
            "bad temperature"
        );
        assert_eq!(error_message(b"plain text"), "plain text");
        assert!(error_message("é".repeat(400).as_bytes()).ends_with('…'));
    }
}
