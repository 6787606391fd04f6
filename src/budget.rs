//! The cost cap (`--max-cost`). Before a job is sent its worst-case cost is reserved; when its
//! record is written the reservation is settled with the real cost. A job whose reservation
//! would take spent + reserved past the cap is not sent, so the money recorded in the output
//! (this run's and earlier runs') never exceeds the cap as long as each worst case holds.
//!
//! The cap sits behind a small trait: a run on one machine uses [`LocalBudget`]; a budget
//! shared by several workers (the roadmap's `--shard`) would implement the same two calls
//! against a shared store.

use crate::cost::Money;
use std::sync::Mutex;

/// Money held for one job until its cost is known.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation must be settled"]
pub struct Reservation(Money);

/// Why a job could not reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapReached {
    pub cap: Money,
    pub spent: Money,
    pub reserved: Money,
    pub wanted: Money,
}

impl std::fmt::Display for CapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cost cap {} reached: {} recorded + {} held by requests in flight + up to {} for the next job would pass it; re-run with a larger --max-cost to continue",
            self.cap, self.spent, self.reserved, self.wanted
        )
    }
}

/// A spending cap that jobs reserve against.
pub trait Budget: Send + Sync {
    /// Holds `worst` for one job, or says the cap would be crossed.
    fn reserve(&self, worst: Money) -> Result<Reservation, CapReached>;
    /// Replaces a reservation with what the job really cost (zero if it failed).
    fn settle(&self, reservation: Reservation, actual: Money);
    /// Holds `worst` whatever the cap says: money already committed (a batch an earlier run
    /// submitted), so that nothing new is reserved against it.
    fn hold(&self, worst: Money) -> Reservation;
}

#[derive(Debug)]
struct Ledger {
    spent: Money,
    reserved: Money,
}

/// A cap for one process.
#[derive(Debug)]
pub struct LocalBudget {
    cap: Money,
    ledger: Mutex<Ledger>,
}

impl LocalBudget {
    /// A cap of `cap`, of which `already_spent` went to earlier runs of the same output.
    pub fn new(cap: Money, already_spent: Money) -> Self {
        LocalBudget {
            cap,
            ledger: Mutex::new(Ledger {
                spent: already_spent,
                reserved: Money::ZERO,
            }),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Budget for LocalBudget {
    fn reserve(&self, worst: Money) -> Result<Reservation, CapReached> {
        let mut l = self.ledger();
        if l.spent.0 + l.reserved.0 + worst.0 > self.cap.0 {
            return Err(CapReached {
                cap: self.cap,
                spent: l.spent,
                reserved: l.reserved,
                wanted: worst,
            });
        }
        l.reserved = Money(l.reserved.0 + worst.0);
        Ok(Reservation(worst))
    }

    fn settle(&self, reservation: Reservation, actual: Money) {
        let mut l = self.ledger();
        l.reserved = Money(l.reserved.0.saturating_sub(reservation.0 .0));
        l.spent += actual;
    }

    fn hold(&self, worst: Money) -> Reservation {
        let mut l = self.ledger();
        l.reserved = Money(l.reserved.0 + worst.0);
        Reservation(worst)
    }
}

#[cfg(test)]
impl LocalBudget {
    fn spent(&self) -> Money {
        self.ledger().spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_hold_room_until_settled() {
        let b = LocalBudget::new(Money(100), Money(20));
        let r1 = b.reserve(Money(50)).unwrap();
        let e = b.reserve(Money(40)).unwrap_err();
        assert_eq!(
            (e.spent, e.reserved, e.wanted),
            (Money(20), Money(50), Money(40))
        );
        b.settle(r1, Money(10));
        assert_eq!(b.spent(), Money(30));
        let r2 = b.reserve(Money(70)).unwrap();
        assert!(b.reserve(Money(1)).is_err());
        b.settle(r2, Money(70));
        assert_eq!(b.spent(), Money(100));
    }

    #[test]
    fn earlier_spend_counts_against_the_cap() {
        let b = LocalBudget::new(Money(100), Money(100));
        assert!(b.reserve(Money(1)).is_err());
        assert!(b.reserve(Money::ZERO).is_ok());
    }
}
