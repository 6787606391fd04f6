//! What went wrong with a job, as one word: the client classifies its failures by these, the
//! retry policy and the run decide by them, and a record carries one (`error.kind`). A leaf:
//! the client knows them without knowing the record format.

use serde::{Deserialize, Serialize};

/// The kinds of error a record can carry (`error.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    RateLimited,
    Server,
    Timeout,
    Connection,
    BadResponse,
    Client,
    Auth,
    Budget,
    /// A bug in bulkprompt (a job's task panicked); retried by the next run.
    Internal,
    /// The provider's account is out of credits, or a daily quota is used up: the run stops
    /// and the next run retries the job.
    Quota,
    /// The answer does not match the job's schema (or is not the JSON asked for), after
    /// `--retry-invalid` more tries. Paid for, so the next run does not buy it again unless
    /// `--retry-failed`.
    InvalidOutput,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::Client => "client",
            ErrorKind::Auth => "auth",
            ErrorKind::Budget => "budget",
            ErrorKind::Internal => "internal",
            ErrorKind::Quota => "quota",
            ErrorKind::InvalidOutput => "invalid_output",
        }
    }

    /// Permanent failures are not retried on the next run unless `--retry-failed`.
    pub fn is_permanent(self) -> bool {
        matches!(self, ErrorKind::Client | ErrorKind::InvalidOutput)
    }
}
