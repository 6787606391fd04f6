//! Why the run was aborted: the first reason, kept, and a [`Latch`] tasks wait on.

use crate::latch::Latch;

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
    async fn the_first_reason_wins() {
        let a = Abort::default();
        a.abort("first".into());
        a.abort("second".into());
        a.wait().await;
        assert_eq!(a.reason().as_deref(), Some("first"));
    }
}
