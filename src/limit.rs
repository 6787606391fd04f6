//! The client-side rate limiter: two token buckets (requests and tokens per minute), a global
//! pause after a 429, and an AIMD factor that lowers the rate after 429s and recovers slowly.
//!
//! The run sees a limiter only through [`RateLimit`]: [`Limiter`] is the one-process
//! implementation, and a limit shared by many workers (a Redis-backed one) implements the same
//! four calls without touching the engine.
//!
//! Why not `governor`: we need to charge a job's *estimated* tokens up front and reconcile them
//! with the real `usage` afterwards, to pause everything on `Retry-After`, and to let one job
//! larger than the burst through on its own; governor's GCRA cannot give tokens back.
//!
//! Sizing: a provider counting a sliding 60-second window sees at most `floor(burst + rate *
//! 60)` requests from a token bucket. From 100 a minute up, the burst is 1% of the limit and
//! the bucket refills at `(0.99 * limit - burst) / 60` a second: any 60 seconds carry at most
//! 99% of the limit, and a long run achieves about 98% of it. Below 100 a minute (free tiers
//! allow 1 or 2) the burst is one request, which must fit whole, and the refill is
//! `0.99 * limit / 60`: `floor(1 + 0.99 * limit) <= limit` still holds, so `--rpm 1` sends one
//! request every 60.6 s.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;

/// The limits a provider says a key has (`x-ratelimit-limit-requests` / `-tokens`), per minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Advertised {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// A rate limit the run's requests pass through.
pub trait RateLimit: Send + Sync {
    /// Waits until one request of `tokens` estimated tokens may be sent, and charges it.
    fn acquire(&self, tokens: u64) -> Pin<Box<dyn Future<Output = Grant> + Send + '_>>;
    /// Settles a grant with the tokens the response really used.
    fn reconcile(&self, grant: Grant, actual: u64);
    /// The provider says its quota is used up until `d` from now: nobody sends until then.
    fn pause(&self, d: Duration);
    /// A 429: nobody sends for `pause`, and the rate drops. True when this made the pause
    /// longer (so the caller can say so once, not at every 429).
    fn rate_limited(&self, pause: Option<Duration>) -> bool;
    /// The provider advertised its limits: never run faster than they allow.
    fn advertised(&self, limits: Advertised);
    /// The lowest limits the provider advertised during the run.
    fn provider_limits(&self) -> Advertised;
}

impl RateLimit for Limiter {
    fn acquire(&self, tokens: u64) -> Pin<Box<dyn Future<Output = Grant> + Send + '_>> {
        Box::pin(Limiter::acquire(self, tokens))
    }
    fn reconcile(&self, grant: Grant, actual: u64) {
        Limiter::reconcile(self, grant, actual)
    }
    fn pause(&self, d: Duration) {
        Limiter::pause(self, d)
    }
    fn rate_limited(&self, pause: Option<Duration>) -> bool {
        Limiter::rate_limited(self, pause)
    }
    fn advertised(&self, limits: Advertised) {
        Limiter::advertised(self, limits)
    }
    fn provider_limits(&self) -> Advertised {
        self.state().advertised
    }
}

/// Share of the limit the buckets aim at, leaving room for arrival jitter at the server.
const TARGET: f64 = 0.99;
/// Burst as a share of the per-minute limit.
const BURST: f64 = 0.01;
/// Lowest the AIMD factor goes.
const MIN_FACTOR: f64 = 0.1;
/// Factor applied on a 429 (at most once a second).
const DECREASE: f64 = 0.7;
/// Factor regained per second without a 429.
const RECOVERY_PER_SEC: f64 = 0.02;

#[derive(Debug, Clone)]
struct Bucket {
    /// The per-minute limit it was sized for.
    limit: u64,
    capacity: f64,
    per_sec: f64,
    level: f64,
}

impl Bucket {
    /// A bucket for requests: each costs one, so the burst is at least one.
    fn requests_per_minute(limit: u64) -> Bucket {
        let target = limit as f64 * TARGET;
        let burst = limit as f64 * BURST;
        let (capacity, per_sec) = if burst >= 1.0 {
            (burst, (target - burst) / 60.0)
        } else {
            (1.0, target / 60.0)
        };
        Bucket {
            limit,
            capacity,
            per_sec,
            level: capacity,
        }
    }

    /// A bucket for tokens: a job larger than the burst waits for a full bucket and goes alone.
    fn tokens_per_minute(limit: u64) -> Bucket {
        let target = limit as f64 * TARGET;
        let capacity = (limit as f64 * BURST).max(1.0).min(target);
        let per_sec = ((target - capacity) / 60.0).max(target / 600.0);
        Bucket {
            limit,
            capacity,
            per_sec,
            level: capacity,
        }
    }

    /// The same bucket sized for a lower limit, keeping what it holds (up to its new size).
    fn lowered(&self, to: Bucket) -> Bucket {
        Bucket {
            level: self.level.min(to.capacity),
            ..to
        }
    }

    fn refill(&mut self, elapsed: Duration, factor: f64) {
        self.level =
            (self.level + elapsed.as_secs_f64() * self.per_sec * factor).min(self.capacity);
    }

    /// Time until `need` is available at `factor`.
    fn wait_for(&self, need: f64, factor: f64) -> Duration {
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / (self.per_sec * factor))
        }
    }
}

#[derive(Debug)]
struct State {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    last_refill: Instant,
    paused_until: Option<Instant>,
    /// AIMD factor as of `last_decrease`.
    factor_at_decrease: f64,
    /// The lowest limits the provider advertised.
    advertised: Advertised,
    last_decrease: Option<Instant>,
}

impl State {
    fn factor(&self, now: Instant) -> f64 {
        match self.last_decrease {
            None => 1.0,
            Some(t) => (self.factor_at_decrease
                + now.duration_since(t).as_secs_f64() * RECOVERY_PER_SEC)
                .min(1.0),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.last_refill);
        self.last_refill = now;
        let f = self.factor(now);
        for b in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            b.refill(elapsed, f);
        }
    }
}

/// Requests- and tokens-per-minute limiter shared by every task of a run.
#[derive(Debug)]
pub struct Limiter {
    /// Waiters queue here, first come first served; only the head polls the buckets.
    turn: tokio::sync::Mutex<()>,
    state: std::sync::Mutex<State>,
}

/// What a job was charged, to reconcile once its real usage is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub tokens: u64,
}

impl Limiter {
    pub fn new(rpm: Option<u64>, tpm: Option<u64>) -> Self {
        Limiter {
            turn: tokio::sync::Mutex::new(()),
            state: std::sync::Mutex::new(State {
                requests: rpm.filter(|&r| r > 0).map(Bucket::requests_per_minute),
                tokens: tpm.filter(|&t| t > 0).map(Bucket::tokens_per_minute),
                last_refill: Instant::now(),
                paused_until: None,
                factor_at_decrease: 1.0,
                advertised: Advertised::default(),
                last_decrease: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until one request of `tokens` estimated tokens may be sent, and charges it.
    pub async fn acquire(&self, tokens: u64) -> Grant {
        let _turn = self.turn.lock().await;
        loop {
            let wait = {
                let now = Instant::now();
                let mut s = self.state();
                s.refill(now);
                let f = s.factor(now);
                let pause = s
                    .paused_until
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                let req = s
                    .requests
                    .as_ref()
                    .map_or(Duration::ZERO, |b| b.wait_for(1.0, f));
                // A job larger than the burst waits for a full bucket, then goes alone.
                let tok = s.tokens.as_ref().map_or(Duration::ZERO, |b| {
                    b.wait_for((tokens as f64).min(b.capacity), f)
                });
                let wait = pause.max(req).max(tok);
                if wait.is_zero() {
                    if let Some(b) = s.requests.as_mut() {
                        b.level -= 1.0;
                    }
                    if let Some(b) = s.tokens.as_mut() {
                        b.level -= tokens as f64;
                    }
                    return Grant { tokens };
                }
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Settles a grant with the tokens the response really used.
    pub fn reconcile(&self, grant: Grant, actual: u64) {
        let mut s = self.state();
        if let Some(b) = s.tokens.as_mut() {
            b.level = (b.level + grant.tokens as f64 - actual as f64).min(b.capacity);
        }
    }

    /// The provider says its quota is used up until `d` from now: nobody sends until then.
    pub fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut s = self.state();
        s.paused_until = Some(s.paused_until.map_or(until, |t| t.max(until)));
    }

    /// The provider advertised its limits: a bucket above them (or none at all) is brought
    /// down to them. Never raised: `--rpm`/`--tpm` below the advertised limit stay.
    pub fn advertised(&self, limits: Advertised) {
        let mut s = self.state();
        let now = Instant::now();
        s.refill(now);
        let low = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        s.advertised = Advertised {
            rpm: low(s.advertised.rpm, limits.rpm),
            tpm: low(s.advertised.tpm, limits.tpm),
        };
        if let Some(rpm) = limits.rpm {
            if s.requests.as_ref().is_none_or(|b| rpm < b.limit) {
                let new = Bucket::requests_per_minute(rpm);
                s.requests = Some(match &s.requests {
                    Some(b) => b.lowered(new),
                    None => new,
                });
                tracing::info!("the provider allows {rpm} requests a minute: pacing to that");
            }
        }
        if let Some(tpm) = limits.tpm {
            if s.tokens.as_ref().is_none_or(|b| tpm < b.limit) {
                let new = Bucket::tokens_per_minute(tpm);
                s.tokens = Some(match &s.tokens {
                    Some(b) => b.lowered(new),
                    None => new,
                });
                tracing::info!("the provider allows {tpm} tokens a minute: pacing to that");
            }
        }
    }

    /// A 429: nobody sends for `pause`, and the rate drops (at most once a second). True when
    /// the pause got longer.
    pub fn rate_limited(&self, pause: Option<Duration>) -> bool {
        let now = Instant::now();
        let mut s = self.state();
        s.refill(now);
        let mut longer = false;
        if let Some(p) = pause {
            let until = now + p;
            longer = s
                .paused_until
                .is_none_or(|t| until > t + Duration::from_secs(1));
            s.paused_until = Some(s.paused_until.map_or(until, |t| t.max(until)));
        }
        if s.last_decrease
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            s.factor_at_decrease = (s.factor(now) * DECREASE).max(MIN_FACTOR);
            s.last_decrease = Some(now);
        }
        longer
    }

    /// The current rate factor (1.0 when no 429 was seen recently).
    #[cfg(test)]
    fn factor(&self) -> f64 {
        self.state().factor(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count_in(limiter: &Limiter, span: Duration, tokens: u64) -> u64 {
        let end = Instant::now() + span;
        let mut n = 0;
        loop {
            limiter.acquire(tokens).await;
            if Instant::now() > end {
                return n;
            }
            n += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_the_limit_in_a_sliding_minute() {
        let l = Limiter::new(Some(600), None);
        let n = count_in(&l, Duration::from_secs(60), 0).await;
        assert!((585..=600).contains(&n), "{n} requests in the first minute");
        let n = count_in(&l, Duration::from_secs(60), 0).await;
        assert!(
            (580..=600).contains(&n),
            "{n} requests in the second minute"
        );
    }

    /// Grant times over `span` at `rpm`, checked against every sliding 60-second window.
    async fn grants_at(rpm: u64, span: Duration) -> Vec<Instant> {
        let l = Limiter::new(Some(rpm), None);
        let start = Instant::now();
        let mut at = Vec::new();
        loop {
            l.acquire(0).await;
            if Instant::now() >= start + span {
                break;
            }
            at.push(Instant::now());
        }
        for (i, t) in at.iter().enumerate() {
            let in_window = at[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) <= Duration::from_secs(60))
                .count();
            assert!(
                in_window as u64 <= rpm,
                "--rpm {rpm}: {in_window} requests in the minute from {:?}",
                t.duration_since(start)
            );
        }
        at
    }

    #[tokio::test(start_paused = true)]
    async fn free_tier_limits_of_one_two_and_three_a_minute_send() {
        for (rpm, least) in [(1, 9), (2, 19), (3, 29)] {
            let at = grants_at(rpm, Duration::from_secs(600)).await;
            // Ten minutes: about ten requests per one a minute (98-99% of the limit).
            assert!(
                at.len() as u64 >= least && at.len() as u64 <= rpm * 10,
                "--rpm {rpm}: {} requests in ten minutes",
                at.len()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn limits_around_the_burst_threshold_hold_the_window() {
        for rpm in [50, 99, 100, 101, 250] {
            let at = grants_at(rpm, Duration::from_secs(180)).await;
            assert!(
                at.len() as u64 >= rpm * 3 * 95 / 100,
                "--rpm {rpm}: {}",
                at.len()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_reconciled() {
        let l = Limiter::new(None, Some(6000));
        // Charged 100, used 10: the 90 come back.
        let g = l.acquire(100).await;
        l.reconcile(g, 10);
        let n = count_in(&l, Duration::from_secs(60), 10).await;
        assert!((580..=600).contains(&n), "{n}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_larger_than_the_burst_still_goes() {
        let l = Limiter::new(None, Some(1000));
        let started = Instant::now();
        l.acquire(5000).await;
        l.acquire(5000).await;
        // The second waits for the first's debt to be repaid.
        assert!(started.elapsed() >= Duration::from_secs(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_everyone_and_lowers_the_rate() {
        let l = Limiter::new(Some(6000), None);
        l.rate_limited(Some(Duration::from_secs(5)));
        let started = Instant::now();
        l.acquire(0).await;
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert!(l.factor() < 0.9);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(l.factor(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn advertised_limits_lower_the_buckets_and_never_raise_them() {
        let l = Limiter::new(Some(6000), None);
        l.advertised(Advertised {
            rpm: Some(60),
            tpm: None,
        });
        let start = Instant::now();
        for _ in 0..11 {
            l.acquire(0).await;
        }
        // One at once (the new burst), then 0.99 a second.
        assert!(
            start.elapsed() >= Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        l.advertised(Advertised {
            rpm: Some(6000),
            tpm: Some(1000),
        });
        assert_eq!(
            RateLimit::provider_limits(&l),
            Advertised {
                rpm: Some(60),
                tpm: Some(1000)
            }
        );
        assert_eq!(l.state().requests.as_ref().unwrap().limit, 60);
        assert_eq!(l.state().tokens.as_ref().unwrap().limit, 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let l = Limiter::new(None, None);
        let started = Instant::now();
        for _ in 0..10_000 {
            l.acquire(1_000_000).await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
