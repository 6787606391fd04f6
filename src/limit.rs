//! The client-side rate limiter: two token buckets (requests and tokens per minute), a global
//! pause after a 429, and an AIMD factor that lowers the rate after 429s and recovers slowly.
//!
//! The run sees a limiter only through [`RateLimit`]: [`Limiter`] is the one-process
//! implementation, and a limit shared by many workers (`crate::coordinator::SharedLimit`, on
//! Redis) implements the same calls without touching the engine.
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
//!
//! Finding a limit nobody states: without `--rpm`, the limiter counts, per second over the last
//! minute, the answers the provider accepted and the 429s it gave. When 429s become congestion
//! (at least three in ten seconds, and no fewer than the answers accepted in them) the provider
//! is counting a window that is full: the requests it accepted in the last minute are what it
//! allows, and the limiter paces to 90% of that (multiplicative decrease, measured rather than
//! guessed). While the pace binds and no 429 came for a minute, it rises by 5% every ten seconds
//! (additive increase); a 429 then measures again (at most every ten seconds). A stray 429 among
//! many accepted answers starts nothing, so a provider that refuses at random is not throttled.

use crate::unreachable::Unreachable;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
    /// Waits until one request of `tokens` estimated tokens may be sent, and charges it; an
    /// error when a shared limit cannot be reached (the run must stop: nothing may be sent
    /// unpaced).
    fn acquire(
        &self,
        tokens: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, Unreachable>> + Send + '_>>;
    /// A grant without waiting, when one can be had at once and nothing is owed a remote
    /// store; None otherwise (the caller then uses [`RateLimit::acquire`]).
    fn try_acquire(&self, tokens: u64) -> Option<Grant> {
        let _ = tokens;
        None
    }
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
    /// The provider answered a request without refusing it for its rate (any status but 429).
    fn answered(&self);
    /// The requests-a-minute limit found from the provider's 429s, when one was.
    fn found_rpm(&self) -> Option<u64>;
}

impl RateLimit for Limiter {
    fn acquire(
        &self,
        tokens: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, Unreachable>> + Send + '_>> {
        Box::pin(async move { Ok(Limiter::acquire(self, tokens).await) })
    }
    fn try_acquire(&self, tokens: u64) -> Option<Grant> {
        Limiter::try_acquire(self, tokens)
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
    fn answered(&self) {
        let now = Instant::now();
        self.recent.count(now, 1, 0);
    }
    fn found_rpm(&self) -> Option<u64> {
        let s = self.state();
        s.finding
            .as_ref()
            .filter(|f| f.found && f.last_429.is_some())
            .and(s.requests.as_ref().map(|b| b.limit))
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
/// A found limit paces to this share of what the provider accepted in the last minute.
const FOUND_SHARE: f64 = 0.9;
/// A found limit rises by this share ...
const RAISE: f64 = 0.05;
/// ... at most this often, and measures again after a 429 at most this often.
const ADJUST_EVERY: Duration = Duration::from_secs(10);
/// 429s in the last ten seconds that can make congestion.
const CONGESTED_AT: u64 = 3;

/// Accepted answers and 429s per second over the last minute. Counted with atomics, outside
/// the limiter's lock: every answer is counted, and a request must not take a lock for it.
/// A count racing a slot's turn to a new second may land in either: an estimate loses nothing
/// by that.
#[derive(Debug)]
struct Recent {
    start: Instant,
    /// Per slot: the second (since `start`) it counts, accepted, refused.
    slots: [[AtomicU64; 3]; 60],
}

impl Recent {
    fn new(start: Instant) -> Self {
        Recent {
            start,
            slots: std::array::from_fn(|_| Default::default()),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    fn count(&self, now: Instant, accepted: u64, refused: u64) {
        let s = self.second(now);
        let slot = &self.slots[(s % 60) as usize];
        if slot[0].load(Relaxed) != s && slot[0].swap(s, Relaxed) != s {
            slot[1].store(0, Relaxed);
            slot[2].store(0, Relaxed);
        }
        slot[1].fetch_add(accepted, Relaxed);
        slot[2].fetch_add(refused, Relaxed);
    }

    /// Accepted and refused over the last `secs` seconds (this one included).
    fn last(&self, now: Instant, secs: u64) -> (u64, u64) {
        let s = self.second(now);
        self.slots
            .iter()
            .filter(|slot| {
                let at = slot[0].load(Relaxed);
                at <= s && at + secs > s
            })
            .fold((0, 0), |(a, r), slot| {
                (a + slot[1].load(Relaxed), r + slot[2].load(Relaxed))
            })
    }
}

/// The requests limit being found (no `--rpm`): its state between 429s.
#[derive(Debug)]
struct Finding {
    /// `--rpm`: the found limit never goes above it.
    ceiling: Option<u64>,
    /// The requests bucket is a found (or a starting) limit, not `--rpm` or the advertised one.
    found: bool,
    /// The last 429, and the last time the found limit was set or raised.
    last_429: Option<Instant>,
    last_change: Instant,
    /// The found limit held a request back since it last changed.
    binding: bool,
}

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
    /// Some when the requests limit is found from the provider's answers (no `--rpm`); the
    /// requests bucket is then the found one (or the advertised one until a 429 says less).
    finding: Option<Finding>,
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

    /// The factor the requests bucket refills at: a found limit is its own decrease.
    fn requests_factor(&self, now: Instant) -> f64 {
        if self.finding.as_ref().is_some_and(|f| f.found) {
            1.0
        } else {
            self.factor(now)
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.last_refill);
        self.last_refill = now;
        let (fr, ft) = (self.requests_factor(now), self.factor(now));
        if let Some(b) = self.requests.as_mut() {
            b.refill(elapsed, fr);
        }
        if let Some(b) = self.tokens.as_mut() {
            b.refill(elapsed, ft);
        }
    }

    /// The most a found limit may be: `--rpm` and what the provider advertised.
    fn found_ceiling(&self) -> Option<u64> {
        let ceiling = self.finding.as_ref().and_then(|f| f.ceiling);
        match (ceiling, self.advertised.rpm) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sets the found requests limit to `rpm` (never above the ceiling).
    fn set_found(&mut self, rpm: u64, now: Instant) {
        let rpm = self.found_ceiling().map_or(rpm, |c| rpm.min(c)).max(1);
        let new = Bucket::requests_per_minute(rpm);
        self.requests = Some(match &self.requests {
            Some(b) => Bucket {
                level: b.level.min(new.capacity),
                ..new
            },
            // Found in congestion: the provider's window is full, so no burst now.
            None => Bucket { level: 0.0, ..new },
        });
        if let Some(f) = self.finding.as_mut() {
            f.found = true;
            f.last_change = now;
            f.binding = false;
        }
    }

    /// A 429 while finding the limit: measure what the provider accepts.
    fn found_429(&mut self, now: Instant, recent: &Recent) {
        let Some(f) = self.finding.as_mut() else {
            return;
        };
        let since_change = now.duration_since(f.last_change);
        f.last_429 = Some(now);
        let (accepted_10, refused_10) = recent.last(now, 10);
        let limit = self.requests.as_ref().map(|b| b.limit);
        let measure = if f.found {
            since_change >= ADJUST_EVERY
        } else {
            // Nothing found yet: only congestion starts it, never a stray 429.
            refused_10 >= CONGESTED_AT && refused_10 >= accepted_10
        };
        if !measure {
            return;
        }
        let (accepted, _) = recent.last(now, 60);
        let rpm = ((accepted as f64 * FOUND_SHARE) as u64).max(1);
        if limit.is_none_or(|l| rpm < l) {
            self.set_found(rpm, now);
            tracing::info!(
                "the provider refuses requests for their rate and states no limit: pacing to {rpm} requests a minute (90% of what it accepted in the last minute)"
            );
        } else if let Some(f) = self.finding.as_mut() {
            f.last_change = now;
        }
    }

    /// No 429 for a minute while the found limit held requests back: raise it.
    fn found_raise(&mut self, now: Instant) {
        let Some(f) = self.finding.as_ref().filter(|f| f.found) else {
            return;
        };
        let Some(limit) = self.requests.as_ref().map(|b| b.limit) else {
            return;
        };
        let quiet = f
            .last_429
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
        if f.binding && quiet && now.duration_since(f.last_change) >= ADJUST_EVERY {
            if self.found_ceiling().is_some_and(|c| limit >= c) {
                return;
            }
            let raised = limit + ((limit as f64 * RAISE) as u64).max(1);
            self.set_found(raised, now);
            tracing::debug!("no 429 for a minute: pacing to {raised} requests a minute");
        }
    }
}

/// Requests- and tokens-per-minute limiter shared by every task of a run.
#[derive(Debug)]
pub struct Limiter {
    /// Waiters queue here, first come first served; only the head polls the buckets.
    turn: tokio::sync::Mutex<()>,
    state: std::sync::Mutex<State>,
    /// The provider's answers and 429s, for finding a limit nobody states.
    recent: Recent,
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
                finding: None,
            }),
            recent: Recent::new(Instant::now()),
        }
    }

    /// Finds the requests limit from the provider's answers when they say less than `--rpm`
    /// (or when there is none), starting from `start` requests a minute when there is no
    /// `--rpm` and the provider's documented default is known.
    pub fn finding(self, start: Option<u64>) -> Self {
        {
            let mut s = self.state();
            let now = Instant::now();
            let ceiling = s.requests.as_ref().map(|b| b.limit);
            s.finding = Some(Finding {
                ceiling,
                found: false,
                last_429: None,
                last_change: now,
                binding: false,
            });
            if let (None, Some(rpm)) = (ceiling, start.filter(|&r| r > 0)) {
                s.requests = Some(Bucket::requests_per_minute(rpm));
                if let Some(f) = s.finding.as_mut() {
                    f.found = true;
                }
            }
        }
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until one request of `tokens` estimated tokens may be sent, and charges it.
    pub async fn acquire(&self, tokens: u64) -> Grant {
        let _turn = self.turn.lock().await;
        loop {
            match self.charge(tokens, Instant::now()) {
                Ok(grant) => return grant,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// A grant at once when nobody waits for one and no limit makes this request wait; None
    /// sends the caller to [`Limiter::acquire`] (which queues it behind any waiting request).
    pub fn try_acquire(&self, tokens: u64) -> Option<Grant> {
        let _turn = self.turn.try_lock().ok()?;
        self.charge(tokens, Instant::now()).ok()
    }

    /// Charges one request of `tokens` at `now`, or says how long it must wait.
    fn charge(&self, tokens: u64, now: Instant) -> Result<Grant, Duration> {
        let mut s = self.state();
        s.found_raise(now);
        s.refill(now);
        let f = s.factor(now);
        let pause = s
            .paused_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let fr = s.requests_factor(now);
        let req = s
            .requests
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for(1.0, fr));
        if !req.is_zero() {
            if let Some(f) = s.finding.as_mut() {
                f.binding = true;
            }
        }
        // A job larger than the burst waits for a full bucket, then goes alone.
        let tok = s.tokens.as_ref().map_or(Duration::ZERO, |b| {
            b.wait_for((tokens as f64).min(b.capacity), f)
        });
        let wait = pause.max(req).max(tok);
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(b) = s.requests.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = s.tokens.as_mut() {
            b.level -= tokens as f64;
        }
        Ok(Grant { tokens })
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
        self.recent.count(now, 0, 1);
        s.found_429(now, &self.recent);
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

    /// A grant at once only when no bucket holds the request back and nobody waits: a request
    /// waiting for its turn is never overtaken by a smaller one the bucket could take.
    #[tokio::test(start_paused = true)]
    async fn a_grant_at_once_only_when_nothing_holds_it_back_and_nobody_waits() {
        // A bucket of 600 tokens.
        let l = std::sync::Arc::new(Limiter::new(None, Some(60_000)));
        assert_eq!(l.try_acquire(500), Some(Grant { tokens: 500 }));
        assert_eq!(l.try_acquire(400), None, "100 tokens left");
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(400).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            l.try_acquire(50),
            None,
            "the bucket holds 50, but one waits already"
        );
        assert_eq!(waiter.await.unwrap(), Grant { tokens: 400 });
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.try_acquire(50), Some(Grant { tokens: 50 }));
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

    fn requests_limit(l: &Limiter) -> Option<u64> {
        l.state().requests.as_ref().map(|b| b.limit)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stray_429_finds_nothing_but_congestion_finds_what_was_accepted() {
        let l = Limiter::new(None, None).finding(None);
        for _ in 0..100 {
            RateLimit::answered(&l);
        }
        l.rate_limited(None);
        l.rate_limited(None);
        l.rate_limited(None);
        assert_eq!(
            requests_limit(&l),
            None,
            "3 refused of 103 is not congestion"
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        for _ in 0..3 {
            l.rate_limited(None);
        }
        // Refused as often as accepted in ten seconds: 90% of the 100 accepted in the minute.
        assert_eq!(requests_limit(&l), Some(90));
        // It goes on 429: measured again at most every ten seconds, never raised by that.
        tokio::time::sleep(Duration::from_secs(10)).await;
        l.rate_limited(None);
        assert_eq!(requests_limit(&l), Some(90));
    }

    #[tokio::test(start_paused = true)]
    async fn a_found_limit_rises_while_it_binds_and_no_429_comes() {
        let l = Limiter::new(None, None).finding(Some(60));
        let start = Instant::now();
        // Two and a half minutes of requests as fast as the limit lets them go.
        while start.elapsed() < Duration::from_secs(150) {
            l.acquire(0).await;
        }
        let raised = requests_limit(&l).unwrap();
        assert!(raised > 60, "{raised}");
        // --rpm is a ceiling the finding never passes.
        let l = Limiter::new(Some(60), None).finding(None);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(150) {
            l.acquire(0).await;
        }
        assert_eq!(requests_limit(&l), Some(60));
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
