//! A one-way switch tasks can wait on: set once, never unset. It keeps a flag and the `Notify`
//! that wakes its waiters in one type, so the two cannot get out of step. The run uses two:
//! the gate that opens once a first answer shows the endpoint works, and the abort.

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(super) struct Latch {
    set: AtomicBool,
    notify: Notify,
}

impl Latch {
    /// Sets the latch and wakes every waiter; true the first time.
    pub(super) fn set(&self) -> bool {
        let first = !self.set.swap(true, Ordering::AcqRel);
        if first {
            self.notify.notify_waiters();
        }
        first
    }

    pub(super) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the latch is set.
    pub(super) async fn wait(&self) {
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

/// Why the run was aborted, set once (the first reason wins).
#[derive(Debug, Default)]
pub(super) struct Abort {
    reason: std::sync::Mutex<Option<String>>,
    latch: Latch,
    /// The same command would stop the same way: no resume line is offered.
    fatal: std::sync::atomic::AtomicBool,
}

impl Abort {
    /// Aborts for a reason that re-running the same command cannot fix.
    pub(super) fn abort_fatal(&self, reason: String) {
        if !self.is_set() {
            self.fatal.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.abort(reason);
    }

    pub(super) fn is_fatal(&self) -> bool {
        self.fatal.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn abort(&self, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.latch.set();
    }

    pub(super) fn is_set(&self) -> bool {
        self.latch.is_set()
    }

    pub(super) fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) async fn wait(&self) {
        self.latch.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_once_set_and_the_first_reason_wins() {
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
        let a = Abort::default();
        a.abort("first".into());
        a.abort("second".into());
        a.wait().await;
        assert_eq!(a.reason().as_deref(), Some("first"));
    }
}
