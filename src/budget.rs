//! The cost cap (`--max-cost`). Before a job is sent its worst-case cost is reserved; when its
//! record is written the reservation is settled with the real cost. A job whose reservation
//! would take spent + reserved past the cap is not sent, so the money recorded in the output
//! (this run's and earlier runs') never exceeds the cap as long as each worst case holds.
//!
//! The cap sits behind a small trait: a run on one machine uses [`LocalBudget`]; a budget
//! shared by several workers (`--coordinator`) implements the same calls against Redis
//! (`crate::coordinator::SharedBudget`).

use crate::cost::Money;
use crate::unreachable::Unreachable;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// Money held for one job until its cost is known.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation must be settled"]
pub struct Reservation(pub(crate) Money);

/// Why a job could not reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The cap would be crossed.
    Cap(CapReached),
    /// The shared budget cannot be reached: the run must stop (exit 4).
    Unreachable(Unreachable),
}

/// What stood in the way of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapReached {
    pub cap: Money,
    pub spent: Money,
    pub reserved: Money,
    pub wanted: Money,
    /// The cap is shared by the workers of a run: `spent` and `reserved` are all of theirs.
    pub shared: bool,
}

impl CapReached {
    /// "", or what makes the figures a run's: " (every worker of the run together)".
    pub fn scope(&self) -> &'static str {
        if self.shared {
            " (every worker of the run together)"
        } else {
            ""
        }
    }
}

impl std::fmt::Display for CapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cost cap {} reached: {} recorded + {} held by requests in flight{} + up to {} for the next job would pass it; re-run with a larger --max-cost to continue",
            self.cap,
            self.spent,
            self.reserved,
            self.scope(),
            self.wanted
        )
    }
}

/// A spending cap that jobs reserve against.
pub trait Budget: Send + Sync {
    /// Holds `worst` for one job, or says why it cannot.
    fn reserve(
        &self,
        worst: Money,
    ) -> Pin<Box<dyn Future<Output = Result<Reservation, Refused>> + Send + '_>>;
    /// Replaces a reservation with what the job really cost (zero if it failed).
    fn settle(&self, reservation: Reservation, actual: Money);
    /// Holds `worst` whatever the cap says: money already committed (a batch an earlier run
    /// submitted), so that nothing new is reserved against it.
    fn hold(&self, worst: Money) -> Reservation;
    /// The run is over (every reservation settled): a shared budget says so, so that nothing
    /// of this worker is held any more.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
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

impl LocalBudget {
    fn reserve_now(&self, worst: Money) -> Result<Reservation, CapReached> {
        let mut l = self.ledger();
        if l.spent.0 + l.reserved.0 + worst.0 > self.cap.0 {
            return Err(CapReached {
                cap: self.cap,
                spent: l.spent,
                reserved: l.reserved,
                wanted: worst,
                shared: false,
            });
        }
        l.reserved = Money(l.reserved.0 + worst.0);
        Ok(Reservation(worst))
    }
}

impl Budget for LocalBudget {
    fn reserve(
        &self,
        worst: Money,
    ) -> Pin<Box<dyn Future<Output = Result<Reservation, Refused>> + Send + '_>> {
        let r = self.reserve_now(worst).map_err(Refused::Cap);
        Box::pin(std::future::ready(r))
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
        let r1 = b.reserve_now(Money(50)).unwrap();
        let e = b.reserve_now(Money(40)).unwrap_err();
        assert_eq!(
            (e.spent, e.reserved, e.wanted),
            (Money(20), Money(50), Money(40))
        );
        b.settle(r1, Money(10));
        assert_eq!(b.spent(), Money(30));
        let r2 = b.reserve_now(Money(70)).unwrap();
        assert!(b.reserve_now(Money(1)).is_err());
        b.settle(r2, Money(70));
        assert_eq!(b.spent(), Money(100));
    }

    #[test]
    fn earlier_spend_counts_against_the_cap() {
        let b = LocalBudget::new(Money(100), Money(100));
        assert!(b.reserve_now(Money(1)).is_err());
        b.settle(b.reserve_now(Money::ZERO).unwrap(), Money::ZERO);
    }
}
