//! Batch mode's pieces that are not the engine: the journal that makes a crash never create a
//! batch twice ([`journal`]) and the provider's batch protocol ([`openai`]).

pub mod journal;
pub mod openai;

use std::time::Duration;

/// Which batch protocol the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchApi {
    /// Upload a file, create from it, download result files (OpenAI, Gemini).
    OpenAi,
    /// Requests and results inline, at most 5,000 a batch (OpenRouter).
    OpenRouter,
}

impl BatchApi {
    /// The protocol for an endpoint: OpenRouter's by its host, OpenAI's otherwise.
    pub fn for_endpoint(url: &str) -> BatchApi {
        let host = url
            .split("://")
            .nth(1)
            .unwrap_or(url)
            .split('/')
            .next()
            .unwrap_or("");
        if host == "openrouter.ai" || host.ends_with(".openrouter.ai") {
            BatchApi::OpenRouter
        } else {
            BatchApi::OpenAi
        }
    }
}

/// Batch-mode settings.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub api: BatchApi,
    /// How often open batches are polled (never faster than once a second).
    pub poll: Duration,
    /// Most lines and bytes in one batch.
    pub max_lines: usize,
    pub max_bytes: usize,
    /// Submit and stop (exit 6) instead of waiting for the batches to end.
    pub no_wait: bool,
    /// Send what a batch left unanswered live instead of in a new batch.
    pub fallback_live: bool,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            api: BatchApi::OpenAi,
            poll: Duration::from_secs(30),
            max_lines: 50_000,
            max_bytes: 200 << 20,
            no_wait: false,
            fallback_live: false,
        }
    }
}
