//! When to try again. Two pure pieces: the backoff schedule (exponential with full jitter,
//! capped) and the reading of a provider's "come back later" headers (`Retry-After` as seconds
//! or an HTTP date, `x-ratelimit-reset-*` as `1s`, `6m0s`, `20ms`).

use std::time::{Duration, SystemTime};

/// Exponential backoff with full jitter: the n-th retry waits a uniform time in
/// `[0, min(cap, base * 2^(n-1))]`, which spreads retries of many jobs apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The ceiling of the wait before retry number `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry number `retry`, with `unit` a uniform draw in `[0, 1)`.
    /// A provider's `Retry-After` is a floor: never come back earlier than asked.
    pub fn delay(&self, retry: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let jitter = self.ceiling(retry).mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            // Spread the herd a little past the provider's time, by at most one base step.
            Some(after) => after + self.base.mul_f64(unit.clamp(0.0, 1.0)),
            None => jitter,
        }
    }
}

/// Reads `Retry-After`: whole or fractional seconds, or an HTTP date relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(86_400)),
    )
}

/// Reads OpenAI-style reset durations: `1s`, `6m0s`, `20ms`, `1h2m3.5s`; plain numbers are seconds.
pub fn parse_reset(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let mut total = 0f64;
    let mut rest = v;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total.min(86_400.0)))
}

/// How long a provider's quota is used up, from `x-ratelimit-remaining-*` / `-reset-*`: when a
/// remaining count is zero, until its reset. Sent on successful answers too, so the runner can
/// pause before the 429 rather than after it.
pub fn quota_exhausted(
    remaining_requests: Option<&str>,
    reset_requests: Option<&str>,
    remaining_tokens: Option<&str>,
    reset_tokens: Option<&str>,
) -> Option<Duration> {
    let empty = |r: Option<&str>| {
        r.and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|n| n <= 0.0)
    };
    let req = empty(remaining_requests)
        .then(|| reset_requests.and_then(parse_reset))
        .flatten();
    let tok = empty(remaining_tokens)
        .then(|| reset_tokens.and_then(parse_reset))
        .flatten();
    req.max(tok).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let c: Vec<u128> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(c, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(500), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        assert_eq!(b.delay(3, 0.0, None), Duration::ZERO);
        assert_eq!(b.delay(3, 0.5, None), Duration::from_millis(200));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let d = b.delay(1, 0.5, Some(Duration::from_secs(5)));
        assert_eq!(d, Duration::from_millis(5050));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(42))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn exhausted_quota_pauses_until_reset() {
        assert_eq!(
            quota_exhausted(Some("0"), Some("1.5s"), Some("900"), Some("1s")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            quota_exhausted(Some("3"), Some("1s"), Some("0"), Some("20ms")),
            Some(Duration::from_millis(20))
        );
        assert_eq!(quota_exhausted(Some("3"), Some("1s"), None, None), None);
        assert_eq!(quota_exhausted(None, None, None, None), None);
    }

    #[test]
    fn reset_forms() {
        assert_eq!(parse_reset("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_reset("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_reset("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_reset("x"), None);
    }
}
