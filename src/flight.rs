//! How many requests go out at once: `--concurrency` is the ceiling, and below it the run
//! finds what the server can take, as it finds an unstated rate limit. A self-hosted server
//! (llama.cpp, vLLM) serves a few slots at a time and queues the rest: more in flight than it
//! has slots buys nothing but waiting, and a queued request that times out is sent again.
//! A provider behind a load balancer (OpenAI, OpenRouter) answers as fast at 4,096 in flight as
//! at 4: its latency does not grow with load.
//!
//! The signal is latency against the lowest seen, as TCP Vegas reads it: the fastest answer
//! of a window over the fastest answer seen. A window is the next `limit` requests sent after
//! the limit last changed (at least 4), judged once all of them are answered, so it never
//! closes on its fastest answers only. Fastest, not mean: answers differ in length, but every
//! window has short ones, and when requests queue at the server even the fastest waits, about
//! `in flight / served at once` times the fastest alone:
//! - well above 1 (1.5, or 1.15 with two or more requests waiting by Vegas's reckoning): the
//!   rest queue; the limit becomes what the server serves at once (`limit / ratio`), plus one
//!   to keep it fed;
//! - at about 1 with the limit in use and under half a request waiting: there may be room; it
//!   doubles until the first queue is seen, and grows by one after;
//! - a timeout while the window's answers show a queue (their median 1.5 times the fastest)
//!   cuts it at once, to half or to what the wait says was served (the time waited over the
//!   fastest answer seen): a queue so long that answers do not come back in time. A timeout
//!   among answers as fast as ever is a hung connection, and leaves the limit alone;
//! - a window in which three requests or more timed out for each answered (the first wave to
//!   a server slower than the timeout answers a slot's worth and lets the rest wait out their
//!   time, too few answers to show a queue): the limit becomes what the window had answered in
//!   time (at most half, at least 1) and grows by one from there. A window of timeouts alone
//!   lowers nothing: a provider that stopped answering is the circuit breaker's to judge, and
//!   fewer places would only slow its verdict (20 jobs' six attempts each). Fewer timeouts than
//!   three to one (answers longer than the timeout, on a provider that does not queue) lower
//!   nothing either, and a window grows only while its timeouts are at most a fifth of its
//!   answers.
//!
//! The lowest latency drifts up 6% a minute, so a server slower for good is learnt again. The
//! run starts at the ceiling (after its first request, which goes alone): a provider that does
//! not queue loses nothing to a slow start, and a queueing server's first answers bring the
//! limit down within seconds. `--fixed-concurrency` keeps the ceiling.

use std::sync::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A window's fastest answer this far above the fastest seen is a queue.
const TOLERANCE: f64 = 1.5;
/// With two or more requests waiting (by Vegas's reckoning), this far is a queue too: on a
/// small server 6 in flight at 4 slots is only 1.5x.
const SMALL: f64 = 1.15;
/// Below this there may be room.
const ROOM: f64 = 1.25;
/// Seconds added to both sides of every latency ratio: differences within the noise of a
/// connection and a scheduler (an answer of 1 ms against one of 0.2 ms) are no queue.
const NOISE: f64 = 0.05;

/// What one attempt told.
#[derive(Debug, Clone, Copy)]
pub enum Sample {
    /// An answer.
    Answer,
    /// The request timed out.
    Timeout,
    /// Anything else (a refusal, a closed connection): says nothing of the queue.
    Other,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    /// The fastest answer seen (seconds; drifting up 6% a minute), and the fastest ever.
    lowest: Option<f64>,
    fastest: Option<f64>,
    /// Still doubling (no queue seen yet).
    starting: bool,
    /// The window being sent (its number), how many of it are still to send and to answer.
    window: u64,
    to_send: usize,
    to_answer: usize,
    /// The window's fastest answer, how many answered, and their latencies (the first 1,024).
    least: f64,
    n: u32,
    answered: Vec<f64>,
    /// The window's requests that timed out.
    timed_out: u32,
    /// The window's requests found the limit used.
    used: bool,
    /// Whether the limit was ever lowered (for the summary).
    lowered: bool,
    last_drift: Instant,
}

/// The in-flight limiter every attempt passes through.
#[derive(Debug)]
pub struct Flight {
    state: Mutex<State>,
    freed: Notify,
    ceiling: usize,
    adaptive: bool,
}

/// A place for one attempt in flight; give it back with [`Slot::done`] (dropping it gives it
/// back too, saying nothing).
pub struct Slot<'a> {
    flight: &'a Flight,
    sent: Instant,
    open: bool,
    /// The window it counts in, if any.
    window: Option<u64>,
}

impl Flight {
    /// A limit of `ceiling` requests in flight; `adaptive` finds a lower one the server needs.
    pub fn new(ceiling: usize, adaptive: bool) -> Self {
        let ceiling = ceiling.max(1);
        Flight {
            state: Mutex::new(State {
                limit: ceiling as f64,
                in_flight: 0,
                lowest: None,
                fastest: None,
                starting: true,
                window: 0,
                to_send: ceiling.max(4),
                to_answer: ceiling.max(4),
                least: 0.0,
                n: 0,
                answered: Vec::new(),
                timed_out: 0,
                used: false,
                lowered: false,
                last_drift: Instant::now(),
            }),
            freed: Notify::new(),
            ceiling,
            adaptive,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a place under the limit ([`Flight::try_acquire`] first where a wait is
    /// rare: this registers a waiter before it looks).
    pub async fn acquire(&self) -> Slot<'_> {
        loop {
            // Registered before the look, so a place freed in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire() {
                return slot;
            }
            freed.await;
        }
    }

    /// A place under the limit, if there is one now.
    pub fn try_acquire(&self) -> Option<Slot<'_>> {
        let mut s = self.lock();
        let limit = (s.limit.floor() as usize).max(1);
        if s.in_flight >= limit {
            return None;
        }
        s.in_flight += 1;
        let window = (s.to_send > 0).then(|| {
            s.to_send -= 1;
            s.used |= s.in_flight >= limit;
            s.window
        });
        Some(Slot {
            flight: self,
            sent: Instant::now(),
            open: true,
            window,
        })
    }

    /// The limit now.
    #[cfg(test)]
    pub fn limit(&self) -> usize {
        (self.lock().limit.floor() as usize).max(1)
    }

    /// The limit found, when the run had to lower it below the ceiling.
    pub fn found(&self) -> Option<usize> {
        let s = self.lock();
        (self.adaptive && s.lowered).then(|| (s.limit.floor() as usize).max(1))
    }

    fn release(&self, slot: &Slot<'_>, sample: Sample) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if self.adaptive {
            self.learn(&mut s, slot, sample);
        }
        drop(s);
        // Every waiter looks again. Waiters exist only while the limit is below the engine's
        // ceiling (a queueing server, answering a few a second), so this is no herd on a
        // provider's fast path, where nobody waits here.
        self.freed.notify_waiters();
    }

    fn learn(&self, s: &mut State, slot: &Slot<'_>, sample: Sample) {
        let took = slot.sent.elapsed().as_secs_f64();
        let ours = slot.window == Some(s.window);
        match sample {
            Sample::Timeout if ours => {
                if self.queueing(s) {
                    // A queue so long that answers do not come back in time: at least half as
                    // many, and as few as the wait says the server served.
                    let waited = s.fastest.map_or(2.0, |f| (took + NOISE) / (f + NOISE));
                    s.limit = (s.limit / 2.0).min(s.limit / waited + 1.0).max(1.0);
                    s.starting = false;
                    s.lowered = true;
                    self.next_window(s);
                    return;
                }
                s.timed_out += 1;
            }
            Sample::Answer => {
                if s.lowest.is_none_or(|l| took < l) {
                    s.lowest = Some(took);
                }
                if s.fastest.is_none_or(|f| took < f) {
                    s.fastest = Some(took);
                }
                if ours {
                    s.least = if s.n == 0 { took } else { s.least.min(took) };
                    s.n += 1;
                    if s.answered.len() < 1024 {
                        s.answered.push(took);
                    }
                }
            }
            _ => {}
        }
        if !ours {
            return;
        }
        s.to_answer = s.to_answer.saturating_sub(1);
        if s.to_answer > 0 || s.to_send > 0 {
            return;
        }
        // Used or not: 63 in flight timing out under a ceiling of 64 are as much a queue.
        if s.n > 0 && s.timed_out >= 3 * s.n {
            self.too_late(s);
        } else if s.n > 0 && s.used {
            self.judge(s);
        }
        self.next_window(s);
    }

    /// A window in which three or more timed out for each answered: what it answered in time
    /// is what the server serves within the timeout (half the limit at most), and the limit
    /// grows by one from there.
    fn too_late(&self, s: &mut State) {
        let before = s.limit;
        s.limit = f64::from(s.n).min(before / 2.0).max(1.0);
        s.lowered |= s.limit < before;
        s.starting = false;
    }

    /// Whether the window's answers so far show a queue: their median well above the fastest
    /// answer seen (a server answering in turn: 1 s, 2 s, 3 s...). A timeout without that is a
    /// hung connection, not a queue, and leaves the limit alone.
    fn queueing(&self, s: &mut State) -> bool {
        let Some(fastest) = s.fastest else {
            return false;
        };
        if s.answered.len() < 4 {
            return false;
        }
        s.answered.sort_by(f64::total_cmp);
        (s.answered[s.answered.len() / 2] + NOISE) > (fastest + NOISE) * TOLERANCE
    }

    /// A whole window answered: is there a queue, or room?
    fn judge(&self, s: &mut State) {
        let least = s.least;
        let now = Instant::now();
        let drift = 1.0 + 0.001 * now.duration_since(s.last_drift).as_secs_f64().min(60.0);
        s.last_drift = now;
        let lowest = s.lowest.map_or(least, |l| (l * drift).min(least));
        s.lowest = Some(lowest);
        let ratio = (least + NOISE) / (lowest + NOISE);
        // Requests waiting at the server, by Vegas's reckoning.
        let queue = s.limit * (1.0 - 1.0 / ratio);
        let before = s.limit;
        if ratio > TOLERANCE || (queue > 1.5 && ratio > SMALL) {
            s.limit = (s.limit / ratio + 1.0).clamp(1.0, s.limit);
            s.lowered |= s.limit < before;
            s.starting = false;
        } else if ratio < ROOM && (s.starting || queue < 0.5) && 5 * s.timed_out <= s.n {
            let step = if s.starting { s.limit } else { 1.0 };
            s.limit = (s.limit + step).min(self.ceiling as f64);
        }
    }

    fn next_window(&self, s: &mut State) {
        s.window += 1;
        let size = (s.limit.floor() as usize).max(4);
        s.to_send = size;
        s.to_answer = size;
        s.least = 0.0;
        s.answered.clear();
        s.n = 0;
        s.timed_out = 0;
        s.used = false;
    }
}

impl Slot<'_> {
    /// Gives the place back with what the attempt told.
    pub fn done(mut self, sample: Sample) {
        self.open = false;
        self.flight.release(&self, sample);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.open {
            self.open = false;
            let me: &Slot<'_> = self;
            me.flight.release(me, Sample::Other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The run's first request, which goes alone, answered in `took`.
    async fn first_alone(flight: &Flight, took: Duration) {
        let first = flight.acquire().await;
        tokio::time::sleep(took).await;
        first.done(Sample::Answer);
    }

    /// A server of `slots` places, each answer `service` long, fed by `jobs` tasks through
    /// the limiter: the limit it settles at.
    async fn settle(slots: usize, ceiling: usize, jobs: usize) -> (usize, usize) {
        let flight = std::sync::Arc::new(Flight::new(ceiling, true));
        let server = std::sync::Arc::new(tokio::sync::Semaphore::new(slots));
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        first_alone(&flight, Duration::from_millis(400)).await;
        let mut tasks = tokio::task::JoinSet::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..jobs {
            let (flight, server, most) = (flight.clone(), server.clone(), most.clone());
            // Answers of different lengths: 300 to 500 ms of the server's time.
            let service = Duration::from_millis(rng.u64(300..500));
            tasks.spawn(async move {
                let slot = flight.acquire().await;
                let _place = server.acquire().await.unwrap();
                tokio::time::sleep(service).await;
                most.fetch_max(flight.limit(), std::sync::atomic::Ordering::Relaxed);
                slot.done(Sample::Answer);
            });
        }
        while tasks.join_next().await.is_some() {}
        (
            flight.limit(),
            most.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    #[tokio::test(start_paused = true)]
    /// Within one of the slots (two at 8: a queue of two there is only 1.25x).
    async fn a_queueing_server_brings_the_limit_to_its_slots() {
        for slots in [2, 4, 8] {
            let (limit, _) = settle(slots, 64, 400).await;
            assert!(
                limit >= slots.saturating_sub(1).max(1) && limit <= slots + 1 + slots / 8,
                "{slots} slots: limit {limit}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_does_not_queue_keeps_the_ceiling() {
        let (limit, _) = settle(10_000, 256, 3000).await;
        assert_eq!(limit, 256);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_cuts_only_where_answers_show_a_queue() {
        // Answers as fast as ever, then a timeout: a hung connection, the limit stays.
        let f = Flight::new(64, true);
        for _ in 0..8 {
            let slot = f.acquire().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            slot.done(Sample::Answer);
        }
        f.acquire().await.done(Sample::Timeout);
        assert_eq!((f.limit(), f.found()), (64, None));
        // Answers taking longer and longer (a server answering in turn), then a timeout.
        let f = Flight::new(64, true);
        first_alone(&f, Duration::from_millis(100)).await;
        let slots: Vec<_> = futures_join(&f, 9).await;
        for (i, slot) in slots.into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(100 * i as u64)).await;
            match i {
                8 => slot.done(Sample::Timeout),
                _ => slot.done(Sample::Answer),
            }
        }
        assert!(f.limit() <= 32 && f.found().is_some(), "{}", f.limit());
        let fixed = Flight::new(64, false);
        fixed.acquire().await.done(Sample::Timeout);
        assert_eq!((fixed.limit(), fixed.found()), (64, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_slower_than_the_timeout_at_the_ceiling_is_found_from_its_first_wave() {
        // 2 slots, 4 s an answer, a 6 s timeout: of the first wave of 64 two are answered in
        // time, too few to show a queue; the rest time out (a queued request that times out
        // is dropped by the server), and each is sent again until answered.
        let flight = std::sync::Arc::new(Flight::new(64, true));
        let server = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
        let timeouts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        first_alone(&flight, Duration::from_secs(4)).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (flight, server, timeouts) = (flight.clone(), server.clone(), timeouts.clone());
            tasks.spawn(async move {
                loop {
                    let slot = flight.acquire().await;
                    let served = tokio::time::timeout(Duration::from_secs(6), async {
                        let _place = server.acquire().await.unwrap();
                        tokio::time::sleep(Duration::from_secs(4)).await;
                    });
                    if served.await.is_ok() {
                        slot.done(Sample::Answer);
                        return;
                    }
                    timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    slot.done(Sample::Timeout);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let timeouts = timeouts.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            flight.limit() <= 3 && flight.found().is_some(),
            "{}",
            flight.limit()
        );
        // The first wave's 62 and at most one more a job (3 in flight: the third waits up to
        // an answer's 4 s for its turn, and a timeout of 6 s is close); the limit left at 64
        // times out about 990.
        assert!(timeouts <= 62 + 64, "{timeouts} timeouts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_whose_long_answers_time_out_keeps_its_limit() {
        // No queue at all, but every other answer is longer than the timeout (a timeout set too
        // short for the answers asked for): lowering the limit would change nothing for them.
        let flight = std::sync::Arc::new(Flight::new(256, true));
        first_alone(&flight, Duration::from_millis(500)).await;
        let mut tasks = tokio::task::JoinSet::new();
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..4000 {
            let flight = flight.clone();
            let long = rng.bool();
            let took = Duration::from_millis(rng.u64(500..800));
            tasks.spawn(async move {
                let slot = flight.acquire().await;
                if long {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    slot.done(Sample::Timeout);
                } else {
                    tokio::time::sleep(took).await;
                    slot.done(Sample::Answer);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!((flight.limit(), flight.found()), (256, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_lowered_by_a_queue_grows_back_past_a_few_hung_connections() {
        // A server of 4 slots brings the limit down; then it serves everything at once, and
        // one request in 12 hangs until the timeout: the limit grows back all the same.
        let flight = std::sync::Arc::new(Flight::new(64, true));
        let server = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
        first_alone(&flight, Duration::from_millis(400)).await;
        let mut rng = fastrand::Rng::with_seed(5);
        for phase in 0..2 {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..if phase == 0 { 400 } else { 6000 } {
                let (flight, server) = (flight.clone(), server.clone());
                let hung = phase == 1 && rng.u32(0..12) == 0;
                let took = Duration::from_millis(rng.u64(300..500));
                tasks.spawn(async move {
                    let slot = flight.acquire().await;
                    let _place = server.acquire().await.unwrap();
                    if hung {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return slot.done(Sample::Timeout);
                    }
                    tokio::time::sleep(took).await;
                    slot.done(Sample::Answer);
                });
            }
            while tasks.join_next().await.is_some() {}
            if phase == 0 {
                assert!(flight.limit() <= 6, "{}", flight.limit());
                server.add_permits(100_000);
            }
        }
        assert!(flight.limit() >= 32, "{}", flight.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_stops_answering_keeps_its_limit() {
        // Answers at once, then none: every request after the 50th hangs until its timeout.
        // The limit stays, so the circuit breaker sees 20 jobs fail at the run's own pace
        // (halving it window by window made that 9 times slower: 182 s against 20 by hand).
        let flight = std::sync::Arc::new(Flight::new(64, true));
        first_alone(&flight, Duration::from_millis(5)).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1000 {
            let flight = flight.clone();
            tasks.spawn(async move {
                let slot = flight.acquire().await;
                if i < 50 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    slot.done(Sample::Answer);
                } else {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    slot.done(Sample::Timeout);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!((flight.limit(), flight.found()), (64, None));
    }

    async fn futures_join(f: &Flight, n: usize) -> Vec<Slot<'_>> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(f.acquire().await);
        }
        v
    }
}
