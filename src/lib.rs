//! bulkprompt: a batch runner for bulk LLM prompts against OpenAI-compatible chat-completions
//! endpoints. Job files stream in ([`job`]), a scheduler admits each job past the checkpoint
//! (`checkpoint`), the rate limiter (`limit`) and an in-flight permit, the client
//! ([`provider`]) makes and retries attempts (`retry`), and one writer ([`output`]) appends
//! every result with its usage and cost ([`cost`]). [`run::run`] wires it together; the binary
//! is a thin shell over [`app`]. [`mock`] is the offline simulator used by the demo, the tests
//! and the benchmarks.
//!
//! Embedding: resolve a [`config::RunConfig`] (for example with [`config::resolve_run`] from
//! parsed [`cli`] flags), call [`run::run`] with a [`shutdown::Shutdown`] you can trigger, and
//! read the [`progress::Summary`]; records are [`output::Record`]s.
//!
//! Pricing a response, to the picodollar:
//!
//! ```
//! use bulkprompt::cost::{PriceTable, Usage};
//!
//! let prices = PriceTable::embedded();
//! let flash = prices.get("google/gemini-2.0-flash-001").unwrap();
//! let usage = Usage { prompt: 1_000, completion: 200, ..Usage::default() };
//! assert_eq!(flash.cost(&usage, 0).to_string(), "$0.000180");
//! ```

pub mod answer;
pub mod app;
pub(crate) mod batch;
pub(crate) mod budget;
pub(crate) mod calibrate;
pub(crate) mod checkpoint;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod cost;
pub mod error_kind;
pub(crate) mod estimate;
pub(crate) mod flight;
pub(crate) mod histogram;
pub mod job;
pub(crate) mod json_scan;
pub(crate) mod json_write;
pub(crate) mod latch;
pub(crate) mod limit;
pub(crate) mod metrics;
pub mod mock;
pub mod name_hash;
pub mod output;
pub(crate) mod paths;
pub(crate) mod prices_sync;
pub mod progress;
pub mod provider;
pub(crate) mod providers;
pub mod report;
pub(crate) mod retry;
pub mod run;
pub mod run_files;
pub mod secret;
pub mod shutdown;
pub(crate) mod status;
pub(crate) mod term;
pub mod unreachable;
pub mod version;

// What an embedding program needs, at the root.
pub use config::{resolve_run, RunConfig};
pub use limit::Advertised;
pub use output::Record;
pub use progress::Summary;
pub use run::{run, RunError};
pub use shutdown::Shutdown;
