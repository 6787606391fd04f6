//! The simulator's rate limits, counted the way providers count them: requests and tokens over
//! a sliding 60-second window. A request that would cross either limit is refused with the
//! number of whole seconds until enough of the window has expired.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The window providers count over.
pub const MINUTE: Duration = Duration::from_secs(60);

/// Sliding-window counter of requests and tokens.
#[derive(Debug)]
pub struct SlidingWindow {
    rpm: Option<u64>,
    tpm: Option<u64>,
    /// The window's length: a minute, or shorter to make tests quick.
    window: Duration,
    events: VecDeque<(Instant, u64)>,
    tokens: u64,
}

impl SlidingWindow {
    pub fn new(rpm: Option<u64>, tpm: Option<u64>) -> Self {
        Self::with_window(rpm, tpm, MINUTE)
    }

    /// Limits counted over `window` instead of a minute.
    pub fn with_window(rpm: Option<u64>, tpm: Option<u64>, window: Duration) -> Self {
        SlidingWindow {
            rpm,
            tpm,
            window,
            events: VecDeque::new(),
            tokens: 0,
        }
    }

    pub fn is_limited(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some()
    }

    /// Admits a request of `tokens` at `now`, or says how long until it could be admitted.
    pub fn admit(&mut self, now: Instant, tokens: u64) -> Result<(), Duration> {
        while let Some(&(t, n)) = self.events.front() {
            if now.duration_since(t) < self.window {
                break;
            }
            self.events.pop_front();
            self.tokens -= n;
        }
        let over_requests = self.rpm.is_some_and(|r| self.events.len() as u64 + 1 > r);
        let over_tokens = self
            .tpm
            .is_some_and(|t| self.tokens + tokens > t && !self.events.is_empty());
        if over_requests || over_tokens {
            // Wait until the oldest events leave the window; the client retries after that.
            let mut freed_tokens = 0;
            let mut wait = Duration::from_secs(1);
            for (i, &(t, n)) in self.events.iter().enumerate() {
                freed_tokens += n;
                wait = (t + self.window).saturating_duration_since(now);
                let requests_ok = self.rpm.is_none_or(|r| (self.events.len() - i) as u64 <= r);
                let tokens_ok = self
                    .tpm
                    .is_none_or(|l| self.tokens - freed_tokens + tokens <= l);
                if requests_ok && tokens_ok {
                    break;
                }
            }
            return Err(wait.max(Duration::from_millis(1)));
        }
        self.events.push_back((now, tokens));
        self.tokens += tokens;
        Ok(())
    }
}

impl SlidingWindow {
    /// Requests left in the window now, and the time until the oldest request leaves it (the
    /// `x-ratelimit-remaining-requests` / `x-ratelimit-reset-requests` a provider would send).
    pub fn headroom(&self, now: Instant) -> (u64, Duration) {
        let remaining = self
            .rpm
            .map_or(u64::MAX, |r| r.saturating_sub(self.events.len() as u64));
        let reset = self.events.front().map_or(Duration::ZERO, |&(t, _)| {
            (t + self.window).saturating_duration_since(now)
        });
        (remaining, reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_window() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(Some(3), None);
        for i in 0..3 {
            assert!(w.admit(t0 + Duration::from_secs(i), 0).is_ok());
        }
        let wait = w.admit(t0 + Duration::from_secs(10), 0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(w.admit(t0 + Duration::from_secs(60), 0).is_ok());
    }

    #[test]
    fn tokens_per_window() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(None, Some(100));
        assert!(w.admit(t0, 60).is_ok());
        assert!(w.admit(t0 + Duration::from_secs(1), 30).is_ok());
        assert_eq!(
            w.admit(t0 + Duration::from_secs(2), 30).unwrap_err(),
            Duration::from_secs(58)
        );
        assert!(w.admit(t0 + Duration::from_secs(61), 30).is_ok());
    }

    #[test]
    fn a_single_request_larger_than_the_window_is_admitted_alone() {
        let mut w = SlidingWindow::new(None, Some(10));
        assert!(w.admit(Instant::now(), 50).is_ok());
    }
}
