//! The rate limit every worker of a run shares: the requests and tokens buckets live in Redis
//! ([`scripts::ACQUIRE`]), and each worker queues its own requests so that only one of them
//! at a time asks Redis. While the buckets hold plenty, one round trip takes a batch of
//! grants, kept here for the next requests and given back when not used within [`STASH_FOR`]:
//! 32 at first, doubled (up to 256, [`Batch`]) each time a batch is used up within a
//! quarter of that time and halved each time one goes back unused, so a worker holds at most
//! about what it sends in a twentieth of a second (a pause set by another worker lets through
//! no more than that); when the limit binds, one round trip is one grant, scheduled ahead (so a
//! pause set by another worker holds back at most one request of this one, or a batch taken
//! in the last [`STASH_FOR`]).
//!
//! Tokens are charged up front and reconciled as the local limiter's are: what an answer did
//! not use (or used beyond its charge) is added up here and rides on the next grant, or is
//! sent within a quarter of a second when no grant comes. A refund whose call may have been
//! applied already is dropped, never sent twice: the safe side is a little under the limit.
//!
//! What the provider says (a 429's pause, the AIMD slow-down, advertised limits) goes to Redis
//! for everyone; finding a limit nobody states stays with each worker's own local limiter,
//! which counts its own answers.

use super::link::Link;
use super::scripts;
use super::Unreachable;
use crate::limit::{Advertised, Grant, Limiter, RateLimit};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How far ahead a grant may be scheduled.
const HORIZON_MS: i64 = 1000;
/// Longest sleep before asking again when nothing was granted.
const MAX_POLL: Duration = Duration::from_secs(5);
/// How often refunds are sent when no grant carries them.
const REFUND_EVERY: Duration = Duration::from_millis(250);
/// Grants asked for at once while the buckets hold them: 32 to 256.
type Batch = super::pace::Paced<32, 3>;
/// A batch's grants unused this long go back to the shared buckets.
const STASH_FOR: Duration = Duration::from_millis(100);

/// Grants taken in a batch and not used yet, each charged `each` tokens, and the size of the
/// next batch.
#[derive(Debug, Default)]
struct Stash {
    requests: u64,
    /// The tokens each was charged (a batch is asked at one size).
    each: u64,
    taken: Option<tokio::time::Instant>,
    batch: Batch,
}

impl Stash {
    /// One grant of `tokens`, when the stash has one that is fresh and big enough.
    fn take(&mut self, tokens: u64) -> bool {
        let fresh = self.taken.is_some_and(|t| t.elapsed() < STASH_FOR);
        if !fresh || self.requests == 0 || tokens > self.each {
            return false;
        }
        self.requests -= 1;
        true
    }

    /// Everything left: (requests, the tokens charged for them). The next batch is halved
    /// when grants go back unused, doubled when the last was used up quickly.
    fn drain(&mut self) -> (u64, u64) {
        let left = (self.requests, self.requests * self.each);
        match left.0 {
            0 => self.batch.used_up(self.taken, STASH_FOR),
            _ => self.batch.went_back(),
        }
        *self = Stash {
            batch: self.batch,
            ..Stash::default()
        };
        left
    }
}

pub(crate) struct SharedLimit {
    link: Arc<Link>,
    key: String,
    rpm: u64,
    tpm: u64,
    /// This worker's own limiter: finds a limit nobody states from its own answers.
    local: Limiter,
    /// This worker's requests ask Redis one at a time.
    turn: tokio::sync::Mutex<()>,
    /// Tokens to give back to the shared bucket.
    refund: Arc<AtomicI64>,
    /// A batch's grants not used yet.
    stash: Arc<Mutex<Stash>>,
    /// The lowest limits this worker has told Redis the provider advertised.
    told: Mutex<Advertised>,
    refunder: tokio::task::JoinHandle<()>,
}

impl Drop for SharedLimit {
    fn drop(&mut self) {
        self.refunder.abort();
    }
}

impl SharedLimit {
    pub(super) fn new(
        link: Arc<Link>,
        key: String,
        rpm: Option<u64>,
        tpm: Option<u64>,
        local: Limiter,
    ) -> Self {
        let rpm = rpm.unwrap_or(0);
        let tpm = tpm.unwrap_or(0);
        let refund = Arc::new(AtomicI64::new(0));
        let stash = Arc::new(Mutex::new(Stash::default()));
        let refunder = tokio::spawn(give_back(
            link.clone(),
            key.clone(),
            (rpm, tpm),
            refund.clone(),
            stash.clone(),
        ));
        SharedLimit {
            link,
            key,
            rpm,
            tpm,
            local,
            turn: tokio::sync::Mutex::new(()),
            refund,
            stash,
            told: Mutex::new(Advertised::default()),
            refunder,
        }
    }

    fn stash(&self) -> std::sync::MutexGuard<'_, Stash> {
        self.stash.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A grant from the stash: its charge was `each`, this request's is `tokens`.
    fn take_stashed(&self, tokens: u64) -> bool {
        let mut stash = self.stash();
        let each = stash.each;
        if !stash.take(tokens) {
            return false;
        }
        drop(stash);
        if each > tokens {
            self.refund.fetch_add((each - tokens) as i64, Relaxed);
        }
        true
    }

    async fn acquire_shared(&self, tokens: u64) -> Result<Grant, Unreachable> {
        let local = self.local.acquire(tokens).await;
        if self.take_stashed(tokens) {
            return Ok(local);
        }
        let _turn = self.turn.lock().await;
        if self.take_stashed(tokens) {
            return Ok(local);
        }
        loop {
            // A stash this request could not use (stale, or charged less) goes back with it.
            let ((back, back_tokens), batch) = {
                let mut stash = self.stash();
                (stash.drain(), stash.batch.size())
            };
            let refund = self.refund.swap(0, Relaxed) + back_tokens as i64;
            let (rpm, tpm) = (self.rpm, self.tpm);
            let answer = self
                .link
                .invoke::<(i64, i64)>(&scripts::ACQUIRE, &self.key, |first| {
                    let (refund, back) = if first { (refund, back) } else { (0, 0) };
                    let mut a = args(rpm, tpm, tokens, refund, HORIZON_MS);
                    a.extend([batch.to_string(), back.to_string()]);
                    a
                })
                .await;
            match answer {
                Ok((n, wait_ms)) if n >= 1 => {
                    if n > 1 {
                        // This request's grant, and the rest kept for the next ones.
                        let mut stash = self.stash();
                        *stash = Stash {
                            requests: n as u64 - 1,
                            each: tokens,
                            taken: Some(tokio::time::Instant::now()),
                            batch: stash.batch,
                        };
                    }
                    if wait_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
                    }
                    return Ok(local);
                }
                Ok((_, wait_ms)) => tokio::time::sleep(poll_after(wait_ms)).await,
                Err(e) => {
                    self.local.reconcile(local, 0);
                    return Err(e);
                }
            }
        }
    }

    /// Sends a pause or a 429 to Redis without holding up the job that saw it; a batch's
    /// grants not used yet are dropped (the pause holds everyone back).
    fn penalize(&self, pause: Option<Duration>, is_429: bool) {
        self.stash().drain();
        let (link, key) = (self.link.clone(), self.key.clone());
        let ms = pause.map_or(0, |d| d.as_millis().max(1) as u64);
        tokio::spawn(async move {
            let r = link
                .invoke::<i64>(&scripts::PENALIZE, &key, |_| {
                    vec![ms.to_string(), u8::from(is_429).to_string()]
                })
                .await;
            if let Err(e) = r {
                tracing::warn!("{e}");
            }
        });
    }
}

/// Every [`REFUND_EVERY`], the tokens answers did not use; within [`STASH_FOR`] and a half, a
/// batch's grants that were not used. Each only on the first try of its call: a refund is
/// never given twice.
async fn give_back(
    link: Arc<Link>,
    key: String,
    (rpm, tpm): (u64, u64),
    refund: Arc<AtomicI64>,
    stash: Arc<Mutex<Stash>>,
) {
    let tick = STASH_FOR / 2;
    let mut since_refund = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        since_refund += tick;
        let (requests, tokens) = {
            let mut s = stash.lock().unwrap_or_else(|p| p.into_inner());
            match s.taken.is_some_and(|t| t.elapsed() >= STASH_FOR) {
                true => s.drain(),
                false => (0, 0),
            }
        };
        let mut r = tokens as i64;
        if since_refund >= REFUND_EVERY || requests > 0 {
            r += refund.swap(0, Relaxed);
            since_refund = Duration::ZERO;
        }
        if r != 0 || requests > 0 {
            let _ = link
                .invoke::<(i64, i64)>(&scripts::ACQUIRE, &key, |first| {
                    let (r, q) = if first { (r, requests) } else { (0, 0) };
                    let mut a = args(rpm, tpm, 0, r, -1);
                    a.extend(["1".into(), q.to_string()]);
                    a
                })
                .await;
        }
    }
}

/// How long to wait before asking again after `wait_ms` was said and nothing granted: a wait
/// beyond the horizon is asked again within it (then a grant is scheduled), a shorter one (the
/// end of a pause) is waited out; never longer than [`MAX_POLL`], never a busy loop.
fn poll_after(wait_ms: i64) -> Duration {
    let ms = if wait_ms > HORIZON_MS {
        wait_ms - HORIZON_MS / 2
    } else {
        wait_ms
    };
    Duration::from_millis(ms.max(1) as u64).min(MAX_POLL)
}

fn args(rpm: u64, tpm: u64, tokens: u64, refund: i64, horizon: i64) -> Vec<String> {
    vec![
        rpm.to_string(),
        tpm.to_string(),
        tokens.to_string(),
        refund.to_string(),
        horizon.to_string(),
    ]
}

impl RateLimit for SharedLimit {
    fn acquire(
        &self,
        tokens: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, Unreachable>> + Send + '_>> {
        Box::pin(self.acquire_shared(tokens))
    }

    fn reconcile(&self, grant: Grant, actual: u64) {
        self.local.reconcile(grant, actual);
        let delta = grant.tokens as i64 - actual as i64;
        if delta != 0 {
            self.refund.fetch_add(delta, Relaxed);
        }
    }

    fn pause(&self, d: Duration) {
        self.local.pause(d);
        self.penalize(Some(d), false);
    }

    fn rate_limited(&self, pause: Option<Duration>) -> bool {
        self.penalize(pause, true);
        self.local.rate_limited(pause)
    }

    fn advertised(&self, limits: Advertised) {
        self.local.advertised(limits);
        // Told once per new low, not at every answer.
        let lower = |new: Option<u64>, old: Option<u64>| new.filter(|&n| old.is_none_or(|o| n < o));
        let news = {
            let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
            let news = Advertised {
                rpm: lower(limits.rpm, told.rpm),
                tpm: lower(limits.tpm, told.tpm),
            };
            told.rpm = news.rpm.or(told.rpm);
            told.tpm = news.tpm.or(told.tpm);
            news
        };
        if news == Advertised::default() {
            return;
        }
        let (link, key) = (self.link.clone(), self.key.clone());
        tokio::spawn(async move {
            let r = link
                .invoke::<i64>(&scripts::ADVERTISE, &key, |_| {
                    vec![
                        news.rpm.unwrap_or(0).to_string(),
                        news.tpm.unwrap_or(0).to_string(),
                    ]
                })
                .await;
            if let Err(e) = r {
                tracing::warn!("{e}");
            }
        });
    }

    fn provider_limits(&self) -> Advertised {
        self.local.provider_limits()
    }

    fn answered(&self) {
        self.local.answered()
    }

    fn found_rpm(&self) -> Option<u64> {
        self.local.found_rpm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stash_gives_fresh_grants_no_bigger_than_their_charge() {
        let mut s = Stash {
            requests: 2,
            each: 100,
            taken: Some(tokio::time::Instant::now()),
            ..Stash::default()
        };
        assert!(
            !s.take(150),
            "charged 100 each: a request of 150 asks Redis"
        );
        assert!(s.take(80) && s.take(100));
        assert!(!s.take(1), "empty");
        s = Stash {
            requests: 5,
            each: 100,
            taken: Some(tokio::time::Instant::now()),
            ..Stash::default()
        };
        tokio::time::advance(STASH_FOR).await;
        assert!(!s.take(1), "stale grants are given back, not used");
        assert_eq!(s.drain(), (5, 500));
        assert_eq!(s.drain(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_grows_while_it_is_used_up_quickly_and_shrinks_when_grants_go_back() {
        let mut s = Stash::default();
        let mut sizes = Vec::new();
        // Each batch used up at once: 32, 64, ... up to the most.
        for _ in 0..8 {
            s.requests = 0;
            s.taken = Some(tokio::time::Instant::now());
            s.drain();
            sizes.push(s.batch.size());
        }
        assert_eq!(sizes, [64, 128, 256, 256, 256, 256, 256, 256]);
        // Used up, but not within a quarter of its time: kept.
        s.taken = Some(tokio::time::Instant::now());
        tokio::time::advance(STASH_FOR / 4).await;
        s.drain();
        assert_eq!(s.batch.size(), 256);
        // Grants given back unused: halved, down to the first size.
        let mut sizes = Vec::new();
        for _ in 0..7 {
            s.requests = 3;
            s.each = 10;
            s.taken = Some(tokio::time::Instant::now());
            assert_eq!(s.drain(), (3, 30));
            sizes.push(s.batch.size());
        }
        assert_eq!(sizes, [128, 64, 32, 32, 32, 32, 32]);
    }

    #[test]
    fn a_refusal_is_asked_again_soon_enough_and_never_in_a_loop() {
        // The end of a pause: waited out whole.
        assert_eq!(poll_after(500), Duration::from_millis(500));
        assert_eq!(poll_after(1), Duration::from_millis(1));
        // A bucket far from a token: asked again when a grant could be scheduled.
        assert_eq!(poll_after(3000), Duration::from_millis(2500));
        assert_eq!(poll_after(60_000), MAX_POLL);
        assert_eq!(poll_after(0), Duration::from_millis(1));
    }
}
