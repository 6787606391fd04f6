//! The ids each worker got an ok record for, kept in Redis beside its budget ledger: a shard
//! run again from a fresh folder or disk (a rescheduled pod) does not buy again what an earlier
//! process of the same shard bought. A set per worker (`{prefix}:done:{worker}`) of id hashes,
//! added to in batches as records reach the disk, read once when a worker joins.

use super::link::Link;
use super::scripts;
use crate::job::IdKey;
use crate::latch::Latch;
use crate::unreachable::Unreachable;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Ids sent to Redis in one call at most.
const BATCH: usize = 1000;

/// Ids gathered into one call: those that come within this of the first.
const GATHER: Duration = Duration::from_millis(50);

/// Adds ids to the worker's set, in batches, from any thread.
pub(crate) struct DoneLedger {
    tx: Option<mpsc::UnboundedSender<IdKey>>,
    /// Set at the close: every id has been sent, no gathering waits any more.
    closing: Arc<Latch>,
    task: tokio::task::JoinHandle<()>,
}

/// A handle the writer's thread sends each ok record's id through.
pub(crate) type DoneSender = mpsc::UnboundedSender<IdKey>;

impl DoneLedger {
    pub(super) fn start(link: Arc<Link>, key: String) -> DoneLedger {
        DoneLedger::sending(move |ids: Vec<IdKey>| {
            let (link, key) = (link.clone(), key.clone());
            async move {
                let hex: Vec<String> = ids.iter().map(|k| k.to_hex()).collect();
                if let Err(e) = link
                    .invoke::<i64>(&scripts::DONE_ADD, &key, |_| hex.clone())
                    .await
                {
                    tracing::warn!("the coordinator: done ids not kept ({e}); a shard run again from another disk may buy them again");
                }
            }
        })
    }

    /// The ledger with `send` for each batch of ids, one batch at a time.
    fn sending<F, S>(mut send: S) -> DoneLedger
    where
        S: FnMut(Vec<IdKey>) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<IdKey>();
        let closing = Arc::new(Latch::default());
        let closed = closing.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut ids = Vec::with_capacity(BATCH);
                let open = gather(&mut rx, &mut ids, &closed).await;
                if !ids.is_empty() {
                    send(ids).await;
                }
                if !open {
                    return;
                }
            }
        });
        DoneLedger {
            tx: Some(tx),
            closing,
            task,
        }
    }

    pub(crate) fn sender(&self) -> Option<DoneSender> {
        self.tx.clone()
    }

    /// Sends what is queued (every other sender must be gone), then ends, without waiting out
    /// a gathering: nothing more can come.
    pub(crate) async fn close(mut self) {
        drop(self.tx.take());
        self.closing.set();
        let _ = self.task.await;
    }
}

/// Waits for an id, then takes into `ids` what came within [`GATHER`] of it, at most
/// [`BATCH`]: one wake-up and one round trip for many ids (the writer sends them one by one).
/// A full batch (ids queued while Redis was slow) does not wait, nor does anything once
/// `closing` is set. Returns whether more can come.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<IdKey>,
    ids: &mut Vec<IdKey>,
    closing: &Latch,
) -> bool {
    if rx.recv_many(ids, BATCH).await == 0 {
        return false;
    }
    if ids.len() < BATCH {
        tokio::select! {
            _ = tokio::time::sleep(GATHER) => {}
            _ = closing.wait() => {}
        }
    }
    while ids.len() < BATCH {
        match rx.try_recv() {
            Ok(k) => ids.push(k),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

/// The ids the worker's earlier processes got an ok record for.
pub(super) async fn load(link: &Link, key: &str) -> Result<HashSet<IdKey>, Unreachable> {
    let ids: Vec<String> = link.invoke(&scripts::DONE_LIST, key, |_| vec![]).await?;
    Ok(ids.iter().filter_map(|h| IdKey::from_hex(h)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::{sleep, Instant};

    /// A ledger whose calls take a millisecond each and are kept as their sizes.
    fn ledger() -> (DoneLedger, Arc<Mutex<Vec<usize>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let kept = calls.clone();
        let ledger = DoneLedger::sending(move |ids: Vec<IdKey>| {
            let kept = kept.clone();
            async move {
                sleep(Duration::from_millis(1)).await;
                kept.lock().unwrap().push(ids.len());
            }
        });
        (ledger, calls)
    }

    fn id(i: usize) -> IdKey {
        IdKey::of(format!("j{i}").as_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn ids_that_come_close_together_go_in_one_call() {
        let (ledger, calls) = ledger();
        let tx = ledger.sender().unwrap();
        for i in 0..3 {
            tx.send(id(i)).unwrap();
            sleep(Duration::from_millis(10)).await;
        }
        sleep(GATHER).await;
        tx.send(id(3)).unwrap();
        drop(tx);
        ledger.close().await;
        assert_eq!(*calls.lock().unwrap(), [3, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once() {
        let (ledger, calls) = ledger();
        let tx = ledger.sender().unwrap();
        for i in 0..BATCH + 500 {
            tx.send(id(i)).unwrap();
        }
        // Its call (a millisecond) is made before a gathering's time; the rest gathers.
        sleep(Duration::from_millis(2)).await;
        assert_eq!(*calls.lock().unwrap(), [BATCH]);
        drop(tx);
        ledger.close().await;
        assert_eq!(*calls.lock().unwrap(), [BATCH, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_during_a_gathering_ends_it() {
        let (ledger, calls) = ledger();
        let tx = ledger.sender().unwrap();
        tx.send(id(0)).unwrap();
        sleep(Duration::from_millis(10)).await;
        drop(tx);
        let closing = Instant::now();
        ledger.close().await;
        assert_eq!(*calls.lock().unwrap(), [1]);
        // One call of a millisecond: the gathering under way ended at the close.
        assert_eq!(closing.elapsed(), Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_close_sends_what_is_queued_without_waiting_out_a_gathering() {
        let (ledger, calls) = ledger();
        let tx = ledger.sender().unwrap();
        // More than a call holds: the close comes with a second and a third call to make.
        for i in 0..2 * BATCH + 500 {
            tx.send(id(i)).unwrap();
        }
        drop(tx);
        let closing = Instant::now();
        ledger.close().await;
        assert_eq!(*calls.lock().unwrap(), [BATCH, BATCH, 500]);
        // Three calls of a millisecond, no gathering.
        assert_eq!(closing.elapsed(), Duration::from_millis(3));
    }
}
