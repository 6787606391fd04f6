//! The budget every worker of a run shares. Each worker keeps its own ledger (spent: what its
//! output recorded over all runs; held: its reservations in flight; headroom: a block of the
//! cap leased to it and not yet drawn) and mirrors it to Redis as absolute values with a
//! sequence number ([`scripts::WRITE`]; Redis's `held` is held and headroom together): a write
//! repeated after a lost answer changes nothing. Writes go one at a time, in order.
//!
//! A reservation is drawn from the headroom when it has enough, with no round trip; else one
//! round trip checks it against every worker's spent and every live hold, and brings a new
//! block (about 64 such reservations at first, doubled up to 256, [`Block`], each time a block
//! is drawn whole within a quarter of [`IDLE`] and halved each time headroom goes back idle,
//! so a worker holds at most about what it spends in a twentieth of a second, which is what a
//! kill leaves counted as spent; less as the cap nears: Redis gives at most
//! the room left shared by twice the live workers). Settlements change the local ledger and
//! are mirrored within 20 ms, many in one write; headroom not drawn for [`IDLE`] is given back
//! (a settlement's unused part is never turned into headroom: a hold of money committed
//! before, which no cap checked, must not become room to spend).
//! The cap holds exactly: what any worker may still spend is in its held in Redis. The lease is
//! renewed every quarter of it. A worker that stopped renewing (killed, cut off) without its
//! last write may have been billed for what it held (requests in flight, draws from its block
//! not yet mirrored): its held keeps counting after the lease lapses, and becomes spent when
//! the worker is claimed again. Only a closed worker's holds lapse (batches left running).

use super::link::Link;
use super::{alive, hostname, scripts, Unreachable};
use crate::budget::{Budget, CapReached, Refused, Reservation};
use crate::cost::Money;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Settlements gathered into one write.
const GATHER: Duration = Duration::from_millis(20);
/// A block of headroom asked for is this many times the reservation that asked: 64 to 256.
type Block = super::pace::Paced<64, 2>;
/// Headroom not drawn for this long goes back to the shared cap.
const IDLE: Duration = Duration::from_millis(100);
/// A reservation refused while others hold something is asked again after this (their idle
/// headroom is back by then), up to [`ASK_AGAIN`] times.
const AGAIN_AFTER: Duration = Duration::from_millis(150);
const ASK_AGAIN: u32 = 2;

#[derive(Debug, Default)]
struct Ledger {
    spent: Money,
    held: Money,
    /// Leased from the cap, not drawn yet (in Redis, part of `held`).
    headroom: Money,
    /// When the headroom was last drawn from or granted.
    drawn: Option<tokio::time::Instant>,
    /// When the last block was granted, and the reservations the next one is asked for.
    granted: Option<tokio::time::Instant>,
    block: Block,
    seq: u64,
}

impl Ledger {
    /// Draws `worst` from the headroom, when it has that much.
    fn draw(&mut self, worst: Money) -> bool {
        if self.headroom < worst {
            return false;
        }
        self.headroom = Money(self.headroom.0 - worst.0);
        self.held += worst;
        self.drawn = Some(tokio::time::Instant::now());
        true
    }

    /// Gives the headroom back when it was not drawn for [`IDLE`]; whether it did. The next
    /// block is half as big.
    fn lapse_idle(&mut self) -> bool {
        let idle = self.drawn.is_none_or(|d| d.elapsed() >= IDLE);
        if self.headroom > Money::ZERO && idle {
            self.headroom = Money::ZERO;
            self.block.went_back();
            return true;
        }
        false
    }

    /// The reservations a block is asked for now (the headroom could not serve one): twice the
    /// last when it was drawn whole quickly.
    fn next_block_jobs(&mut self) -> u64 {
        self.block.used_up(self.granted, IDLE);
        self.block.size()
    }
}

struct Shared {
    link: Arc<Link>,
    key: String,
    worker: String,
    /// This process's claim on the worker's fields.
    token: String,
    desc: String,
    lease: Duration,
    ledger: Mutex<Ledger>,
    /// Writes go one at a time, in the order of their sequence numbers.
    writing: tokio::sync::Mutex<()>,
    changed: Notify,
    /// Another process took this worker over: nothing more may be reserved.
    lost: AtomicBool,
}

pub(crate) struct SharedBudget {
    shared: Arc<Shared>,
    cap: Money,
    mirror: tokio::task::JoinHandle<()>,
}

impl Drop for SharedBudget {
    fn drop(&mut self) {
        self.mirror.abort();
    }
}

/// What a write answers.
enum Written {
    /// Written, with the block of headroom granted (a reservation's).
    Ok(Money),
    Cap {
        others_spent: Money,
        others_held: Money,
    },
    Lost(String),
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ledger as it is now, numbered: held is held and headroom together.
    fn snapshot(&self) -> (u64, Money, Money) {
        let mut l = self.ledger();
        l.seq += 1;
        (l.seq, l.spent, l.held + l.headroom)
    }

    /// Writes the ledger as it is now. The caller holds `writing`.
    async fn write_now(&self, lease: Duration) -> Result<Written, Unreachable> {
        self.write(self.snapshot(), lease, false, None).await
    }

    /// Writes the ledger `(seq, spent, held)` (a reservation when `cap` is given: checked
    /// against the cap, asking for a block of `cap.1`; `closed` for the process's last
    /// write). The caller holds `writing`.
    async fn write(
        &self,
        (seq, spent, held): (u64, Money, Money),
        lease: Duration,
        closed: bool,
        cap: Option<(Money, Money)>,
    ) -> Result<Written, Unreachable> {
        let mut args = vec![
            self.worker.clone(),
            self.token.clone(),
            self.desc.clone(),
            seq.to_string(),
            spent.0.to_string(),
            held.0.to_string(),
            lease.as_millis().to_string(),
            u8::from(closed).to_string(),
        ];
        if let Some((c, block)) = cap {
            args.push(c.0.to_string());
            args.push(block.0.to_string());
        }
        let v: Vec<String> = self
            .link
            .invoke(&scripts::WRITE, &self.key, |_| args.clone())
            .await?;
        let money = |i: usize| Money(v.get(i).and_then(|s| s.parse().ok()).unwrap_or(0));
        Ok(match v.first().map(String::as_str) {
            Some("1") => Written::Ok(money(1)),
            Some("0") => Written::Cap {
                others_spent: money(1),
                others_held: money(2),
            },
            _ => {
                self.lost.store(true, Relaxed);
                Written::Lost(v.get(1).cloned().unwrap_or_default())
            }
        })
    }

    /// Mirrors the ledger whenever it changes (gathered), gives idle headroom back, and
    /// renews the lease.
    async fn mirror(self: Arc<Self>) {
        let renew = self.lease / 4;
        let mut written = tokio::time::Instant::now();
        loop {
            let due = renew.saturating_sub(written.elapsed());
            let wait = match self.ledger().headroom > Money::ZERO {
                true => IDLE.min(due),
                false => due,
            };
            let changed = tokio::time::timeout(wait, self.changed.notified())
                .await
                .is_ok();
            if changed {
                tokio::time::sleep(GATHER).await;
            }
            let _one = self.writing.lock().await;
            let lapsed = self.ledger().lapse_idle();
            if !changed && !lapsed && written.elapsed() < renew {
                // Woken to look at the headroom, which is in use: nothing to write yet.
                continue;
            }
            written = tokio::time::Instant::now();
            match self.write_now(self.lease).await {
                Ok(Written::Lost(by)) => {
                    tracing::error!("{}", self.lost_message(&by));
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("the shared budget: {e}"),
            }
        }
    }

    fn lost_message(&self, by: &str) -> String {
        format!(
            "the shared budget: worker {} of this run is now run by {by}; this process stops reserving (two processes must not run one shard)",
            self.worker
        )
    }
}

impl SharedBudget {
    /// Claims this worker's fields with what its output already recorded. A live claim by
    /// another process is waited for until its lease lapses (at once when that process is
    /// dead on this host: a re-run after `kill -9` takes over and returns its holds).
    pub(super) async fn join(
        link: Arc<Link>,
        key: String,
        worker: String,
        cap: Money,
        spent_before: Money,
        lease: Duration,
    ) -> Result<SharedBudget, Unreachable> {
        let host = hostname();
        let pid = std::process::id();
        let claim = Claim {
            token: format!("{host}:{pid}:{:016x}", fastrand::u64(..)),
            desc: format!("pid {pid} on {host}"),
            host,
            pid,
            worker,
            spent_before,
            lease,
        };
        let spent = claim.take(&link, &key).await?;
        let Claim {
            worker,
            token,
            desc,
            ..
        } = claim;
        let shared = Arc::new(Shared {
            link,
            key,
            worker,
            token,
            desc,
            lease,
            ledger: Mutex::new(Ledger {
                spent,
                ..Ledger::default()
            }),
            writing: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            lost: AtomicBool::new(false),
        });
        let mirror = tokio::spawn(shared.clone().mirror());
        Ok(SharedBudget {
            shared,
            cap,
            mirror,
        })
    }

    async fn reserve_shared(&self, worst: Money) -> Result<Reservation, Refused> {
        let s = &self.shared;
        if s.lost.load(Relaxed) {
            return Err(Refused::Unreachable(Unreachable(
                s.lost_message("another process"),
            )));
        }
        if s.ledger().draw(worst) {
            return Ok(Reservation(worst));
        }
        let mut again = 0;
        loop {
            match self.ask(worst).await {
                Err(Refused::Cap(c)) if again < ASK_AGAIN && c.reserved > Money::ZERO => {
                    // Others' idle headroom comes back within IDLE: ask once more then.
                    again += 1;
                    tokio::time::sleep(AGAIN_AFTER).await;
                    if s.ledger().draw(worst) {
                        return Ok(Reservation(worst));
                    }
                }
                answer => return answer,
            }
        }
    }

    /// One round trip for `worst` and a block of headroom (the headroom first, in case a
    /// reservation before this one brought a block meanwhile).
    async fn ask(&self, worst: Money) -> Result<Reservation, Refused> {
        let s = &self.shared;
        let _one = s.writing.lock().await;
        if s.ledger().draw(worst) {
            return Ok(Reservation(worst));
        }
        // Held before the round trip, so the write includes it.
        let jobs = {
            let mut l = s.ledger();
            l.held += worst;
            l.next_block_jobs()
        };
        let snapshot = s.snapshot();
        let block = Money(worst.0.saturating_mul(jobs - 1));
        let answer = s
            .write(snapshot, s.lease, false, Some((self.cap, block)))
            .await;
        let release = || {
            let mut l = s.ledger();
            l.held = Money(l.held.0.saturating_sub(worst.0));
            drop(l);
            s.changed.notify_one();
        };
        match answer {
            Ok(Written::Ok(block)) => {
                let mut l = s.ledger();
                l.headroom += block;
                l.drawn = Some(tokio::time::Instant::now());
                l.granted = l.drawn;
                Ok(Reservation(worst))
            }
            Ok(Written::Cap {
                others_spent,
                others_held,
            }) => {
                release();
                let (_, spent, held) = snapshot;
                Err(Refused::Cap(CapReached {
                    cap: self.cap,
                    spent: spent + others_spent,
                    reserved: Money(held.0.saturating_sub(worst.0)) + others_held,
                    wanted: worst,
                    shared: true,
                }))
            }
            Ok(Written::Lost(by)) => {
                release();
                Err(Refused::Unreachable(Unreachable(s.lost_message(&by))))
            }
            Err(e) => {
                release();
                Err(Refused::Unreachable(e))
            }
        }
    }
}

impl Budget for SharedBudget {
    fn reserve(
        &self,
        worst: Money,
    ) -> Pin<Box<dyn Future<Output = Result<Reservation, Refused>> + Send + '_>> {
        Box::pin(self.reserve_shared(worst))
    }

    fn settle(&self, reservation: Reservation, actual: Money) {
        let mut l = self.shared.ledger();
        l.held = Money(l.held.0.saturating_sub(reservation.0 .0));
        l.spent += actual;
        drop(l);
        self.shared.changed.notify_one();
    }

    fn hold(&self, worst: Money) -> Reservation {
        self.shared.ledger().held += worst;
        self.shared.changed.notify_one();
        Reservation(worst)
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.mirror.abort();
            let s = &self.shared;
            let _one = s.writing.lock().await;
            s.ledger().headroom = Money::ZERO;
            // Nothing held: a lease of zero (its spent stays). Batches left running at the
            // provider (`--no-wait`) still hold their worst case, for the batch window, until
            // the worker's next run collects them.
            let snapshot = s.snapshot();
            let lease = if snapshot.2 > Money::ZERO {
                Duration::from_secs(24 * 3600)
            } else {
                Duration::ZERO
            };
            let done = tokio::time::timeout(
                Duration::from_secs(5).min(s.lease),
                s.write(snapshot, lease, true, None),
            )
            .await;
            if !matches!(done, Ok(Ok(Written::Ok(_)))) {
                tracing::warn!(
                    "the shared budget: this worker's last state was not written; what it holds keeps counting under the cap, and becomes its spent when it runs again"
                );
            }
        })
    }
}

/// What [`scripts::CLAIM`] answers: claimed, the holder, its lease's ms left, the worker's
/// spent by Redis's count and what of it was held by a process that did not close.
type Claimed = (i64, String, i64, Option<String>, Option<String>);

/// This process claiming a worker's fields in the shared budget.
struct Claim {
    worker: String,
    token: String,
    desc: String,
    host: String,
    pid: u32,
    spent_before: Money,
    lease: Duration,
}

/// Who holds the worker, as its `pid P on HOST` says.
enum Holder {
    /// A process of this host that is gone: taken over at once.
    DeadHere,
    /// Another live process of this host: the same shard twice.
    AliveHere,
    /// Another host's (or not told): waited for.
    Elsewhere,
}

impl Claim {
    /// Claims the worker, waiting for another process's lease to lapse; returns what the
    /// worker spent (by Redis's count when more than its output records: spend only grows).
    async fn take(&self, link: &Link, key: &str) -> Result<Money, Unreachable> {
        let started = tokio::time::Instant::now();
        let mut force = false;
        let mut said = false;
        let mut last_left: Option<(i64, tokio::time::Instant)> = None;
        loop {
            let args = vec![
                self.worker.clone(),
                self.token.clone(),
                self.desc.clone(),
                self.spent_before.0.to_string(),
                "0".into(),
                self.lease.as_millis().to_string(),
                u8::from(force).to_string(),
            ];
            let (ok, holder, left_ms, known, folded): Claimed =
                link.invoke(&scripts::CLAIM, key, |_| args.clone()).await?;
            if ok == 1 {
                return Ok(self.claimed(force, &holder, known, folded));
            }
            match self.holder(&holder) {
                Holder::DeadHere => {
                    force = true;
                    continue;
                }
                // Waiting would only run the shard again, from this folder's idea of what is
                // done, once the other ends.
                Holder::AliveHere => return Err(self.refused(&holder, "")),
                Holder::Elsewhere => {}
            }
            // Its lease did not run down while this one waited: renewed, so its process is
            // alive (on another host: one here was told apart above).
            if last_left.is_some_and(|(before, at)| {
                left_ms > before - at.elapsed().as_millis() as i64 + 250
            }) {
                return Err(self.refused(&holder, ", which renewed its lease just now"));
            }
            last_left = Some((left_ms, tokio::time::Instant::now()));
            if started.elapsed() > self.lease * 2 {
                return Err(Unreachable(format!(
                    "the shared budget: worker {} of this run is held by {holder}, which keeps renewing it; is that shard running twice?",
                    self.worker
                )));
            }
            if !said {
                tracing::warn!(
                    "the shared budget: worker {} is held by {holder}; waiting up to {:.0} s for its lease to lapse",
                    self.worker,
                    left_ms as f64 / 1000.0
                );
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(left_ms.clamp(100, 2000) as u64)).await;
        }
    }

    /// The claim is this process's: what the worker spent, said when Redis knows more.
    fn claimed(
        &self,
        forced: bool,
        holder: &str,
        known: Option<String>,
        folded: Option<String>,
    ) -> Money {
        let worker = &self.worker;
        let before = self.spent_before;
        let money = |s: Option<String>| {
            s.and_then(|k| k.parse::<f64>().ok())
                .map_or(Money::ZERO, |k| Money(k as u64))
        };
        let (known, folded) = (money(known), money(folded));
        let gone = match forced {
            true => format!("'s previous process ({holder}) is gone"),
            false => " was not closed by its previous process".into(),
        };
        if folded > Money::ZERO {
            tracing::warn!(
                "the shared budget: worker {worker}{gone}; the {folded} it held counts as spent (its requests in flight may have been billed)"
            );
        } else if forced {
            tracing::warn!("the shared budget: worker {worker}{gone}; it had closed");
        }
        if Money(known.0.saturating_sub(folded.0)) > before {
            tracing::warn!(
                "the shared budget: worker {worker} spent {known} by Redis's count, more than its output here records ({before}): the run counts {known} (an earlier run from another folder or disk)"
            );
        }
        known.max(before)
    }

    fn holder(&self, holder: &str) -> Holder {
        let Some((p, h)) = holder
            .strip_prefix("pid ")
            .and_then(|r| r.split_once(" on "))
        else {
            return Holder::Elsewhere;
        };
        match (h == self.host, p.parse::<u32>()) {
            (true, Ok(p)) if !alive(p) => Holder::DeadHere,
            (true, Ok(p)) if p != self.pid => Holder::AliveHere,
            _ => Holder::Elsewhere,
        }
    }

    fn refused(&self, holder: &str, how: &str) -> Unreachable {
        Unreachable(format!(
            "the shared budget: worker {} of this run is being run by {holder}{how}; one process a shard (or give this one another --shard or output)",
            self.worker
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn headroom_is_drawn_whole_reservations_at_a_time_and_lapses_when_idle() {
        let mut l = Ledger {
            headroom: Money(250),
            drawn: Some(tokio::time::Instant::now()),
            ..Ledger::default()
        };
        assert!(l.draw(Money(100)) && l.draw(Money(100)));
        assert!(!l.draw(Money(100)), "50 left is not a reservation of 100");
        assert_eq!((l.held, l.headroom), (Money(200), Money(50)));
        assert!(!l.lapse_idle(), "drawn just now");
        tokio::time::advance(IDLE).await;
        assert!(l.lapse_idle());
        assert_eq!((l.held, l.headroom), (Money(200), Money::ZERO));
        assert!(!l.lapse_idle(), "nothing left to give back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_grows_while_it_is_drawn_whole_quickly_and_shrinks_when_it_lapses() {
        let mut l = Ledger::default();
        assert_eq!(l.next_block_jobs(), 64, "the first block");
        let mut sizes = Vec::new();
        for _ in 0..6 {
            l.granted = Some(tokio::time::Instant::now());
            tokio::time::advance(IDLE / 8).await;
            sizes.push(l.next_block_jobs());
        }
        assert_eq!(sizes, [128, 256, 256, 256, 256, 256]);
        // Drawn whole, but not within a quarter of IDLE: kept.
        l.granted = Some(tokio::time::Instant::now());
        tokio::time::advance(IDLE / 4).await;
        assert_eq!(l.next_block_jobs(), 256);
        // Headroom given back idle: halved, down to the first size.
        let mut sizes = Vec::new();
        for _ in 0..6 {
            l.headroom = Money(10);
            l.drawn = Some(tokio::time::Instant::now());
            tokio::time::advance(IDLE).await;
            assert!(l.lapse_idle());
            sizes.push(l.next_block_jobs());
        }
        assert_eq!(sizes, [128, 64, 64, 64, 64, 64]);
    }
}
