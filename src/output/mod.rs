//! Results: the record schema and the append-only JSONL writer that is also the checkpoint.

pub mod encode;
pub mod flat;
pub mod jsonl;
pub mod latest;
pub mod merge;
pub mod parquet;
pub mod record;

pub use crate::error_kind::ErrorKind;
pub use record::{CostSource, Record, RecordError, RecordHead, Retries, Stale, Status};
