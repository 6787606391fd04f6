//! A one-way switch tasks can wait on: set once, never unset. It keeps a flag and the `Notify`
//! that wakes its waiters in one type, so the two cannot get out of step. The run uses two
//! (the gate that opens once a first answer shows the endpoint works, and the abort), the
//! coordinator's done ledger one (its close).

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Latch {
    set: AtomicBool,
    notify: Notify,
}

impl Latch {
    /// Sets the latch and wakes every waiter; true the first time.
    pub(crate) fn set(&self) -> bool {
        let first = !self.set.swap(true, Ordering::AcqRel);
        if first {
            self.notify.notify_waiters();
        }
        first
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the latch is set.
    pub(crate) async fn wait(&self) {
        // Set nearly always (the gate after the first answer): no waiter registered.
        if self.is_set() {
            return;
        }
        loop {
            // Registered before the check: a `set` in between still wakes this waiter.
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_once_set() {
        let l = std::sync::Arc::new(Latch::default());
        let w = tokio::spawn({
            let l = l.clone();
            async move { l.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(l.set());
        assert!(!l.set());
        w.await.unwrap();
        l.wait().await;
    }
}
