//! The one failure a gate (the rate limiter, the budget) can have besides saying no: the piece
//! it shares with other workers could not be reached or refused the call. A leaf, so the
//! local gates know that a gate may be shared without knowing what shares it (the coordinator).

/// A shared piece (Redis) could not be reached or refused the call: the run stops (exit 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);
