//! How much a worker takes from Redis in one round trip while there is plenty: grants in a
//! batch ([`super::limit`]), reservations in a block of the cap ([`super::budget`]). Both start
//! small, double each time what one round trip took is used up quickly, and halve each time
//! some of it goes back unused, so a worker at a real provider's pace keeps the small size and
//! one at thousands of requests a second makes few round trips, holding at most about half of
//! the window's worth of its pace and never more than the most.

use std::time::Duration;
use tokio::time::Instant;

/// A size of `LEAST << doublings`, at most `LEAST << MOST`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Paced<const LEAST: u64, const MOST: u32> {
    doublings: u32,
}

impl<const LEAST: u64, const MOST: u32> Paced<LEAST, MOST> {
    pub(super) fn size(self) -> u64 {
        LEAST << self.doublings
    }

    /// What the last round trip took (at `taken`) is used up: doubled when that took less than
    /// a quarter of `window` (what goes back unused after it).
    pub(super) fn used_up(&mut self, taken: Option<Instant>, window: Duration) {
        if taken.is_some_and(|t| t.elapsed() < window / 4) {
            self.doublings = (self.doublings + 1).min(MOST);
        }
    }

    /// Some of it went back unused: halved.
    pub(super) fn went_back(&mut self) {
        self.doublings = self.doublings.saturating_sub(1);
    }
}
