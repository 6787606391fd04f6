//! Integration tests: the real `bulkprompt` binary against the project's simulator on
//! 127.0.0.1, port 0. One test binary; modules by concern.

mod harness;

mod batch;
mod billed;
mod coordinator;
mod core;
mod docs;
mod hostile;
mod inprocess;
mod input;
mod labeling;
mod manners;
mod metrics;
mod money;
mod paid_once;
mod parquet;
mod parquet_input;
mod promises;
mod providers;
mod ratelimit;
mod real_server;
mod report;
mod resume;
mod secrets;
mod shards;
mod waste;
