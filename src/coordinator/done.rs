//! The ids each worker got an ok record for, kept in Redis beside its budget ledger: a shard
//! run again from a fresh folder or disk (a rescheduled pod) does not buy again what an earlier
//! process of the same shard bought. A set per worker (`{prefix}:done:{worker}`) of id hashes,
//! added to in batches as records reach the disk, read once when a worker joins.

use super::link::Link;
use super::scripts;
use crate::job::IdKey;
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
    /// Told at the close: every id has been sent, a gathering under way ends now.
    closing: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// A handle the writer's thread sends each ok record's id through.
pub(crate) type DoneSender = mpsc::UnboundedSender<IdKey>;

impl DoneLedger {
    pub(super) fn start(link: Arc<Link>, key: String) -> DoneLedger {
        let (tx, mut rx) = mpsc::unbounded_channel::<IdKey>();
        let closing = Arc::new(tokio::sync::Notify::new());
        let closed = closing.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let open = match rx.recv().await {
                    Some(k) => {
                        batch.push(k.to_hex());
                        // Gather what came meanwhile, a round trip for many ids; at the
                        // close, nothing more can come.
                        tokio::select! {
                            _ = tokio::time::sleep(GATHER) => {}
                            _ = closed.notified() => {}
                        }
                        while batch.len() < BATCH {
                            match rx.try_recv() {
                                Ok(k) => batch.push(k.to_hex()),
                                Err(_) => break,
                            }
                        }
                        true
                    }
                    None => false,
                };
                if !batch.is_empty() {
                    let ids = std::mem::take(&mut batch);
                    if let Err(e) = link
                        .invoke::<i64>(&scripts::DONE_ADD, &key, |_| ids.clone())
                        .await
                    {
                        tracing::warn!("the coordinator: done ids not kept ({e}); a shard run again from another disk may buy them again");
                    }
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

    /// Sends what is queued (every sender must be gone), then ends, without waiting out a
    /// gathering: the run's end waited up to [`GATHER`] for it.
    pub(crate) async fn close(mut self) {
        drop(self.tx.take());
        self.closing.notify_one();
        let _ = self.task.await;
    }
}

/// The ids the worker's earlier processes got an ok record for.
pub(super) async fn load(link: &Link, key: &str) -> Result<HashSet<IdKey>, Unreachable> {
    let ids: Vec<String> = link.invoke(&scripts::DONE_LIST, key, |_| vec![]).await?;
    Ok(ids.iter().filter_map(|h| IdKey::from_hex(h)).collect())
}
