//! Provider presets: `--provider openrouter|aimlapi|openai|gemini|vllm` fills what is known of
//! a provider (its base URL, the environment variable its key usually lives in, its attribution
//! headers, whether it sends rate-limit headers), so a run needs only the model. `--endpoint`
//! and `--api-key-env` (or the spec's `endpoint` and `api_key_env`) still win.

/// What bulkprompt knows of one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub base_url: &'static str,
    /// The environment variable its key usually lives in (none for a local server).
    pub key_env: Option<&'static str>,
    /// It takes OpenRouter's attribution headers (`HTTP-Referer`, `X-Title`).
    pub attribution: bool,
    /// Its answers and 429s carry `Retry-After` / `x-ratelimit-*` headers.
    pub sends_limit_headers: bool,
    /// How it says it is out of money or quota.
    pub exhausted: &'static str,
    /// Without `--rpm` and without headers: the documented requests-a-minute default the
    /// runner starts from before it finds the key's own limit from the 429s.
    pub start_rpm: Option<u64>,
}

pub const PRESETS: [Preset; 5] = [
    Preset {
        name: "openrouter",
        base_url: "https://openrouter.ai/api/v1",
        key_env: Some("OPENROUTER_API_KEY"),
        attribution: true,
        sends_limit_headers: true,
        exhausted: "402 Insufficient credits",
        start_rpm: None,
    },
    Preset {
        name: "aimlapi",
        base_url: "https://api.aimlapi.com/v1",
        key_env: Some("AIMLAPI_API_KEY"),
        attribution: false,
        sends_limit_headers: false,
        exhausted: "403 about the balance",
        start_rpm: None,
    },
    Preset {
        name: "openai",
        base_url: "https://api.openai.com/v1",
        key_env: Some("OPENAI_API_KEY"),
        attribution: false,
        sends_limit_headers: true,
        exhausted: "429 insufficient_quota",
        start_rpm: None,
    },
    Preset {
        name: "gemini",
        base_url: "https://generativelanguage.googleapis.com/v1beta/openai",
        key_env: Some("GEMINI_API_KEY"),
        attribution: false,
        sends_limit_headers: false,
        exhausted: "429 RESOURCE_EXHAUSTED, a per-day quota",
        // Google's published Tier 1 limit for gemini-2.0-flash; the free tier's 15 is found
        // from the first 429s (their retryDelay pauses dispatch meanwhile).
        start_rpm: Some(2000),
    },
    Preset {
        name: "vllm",
        base_url: "http://127.0.0.1:8000/v1",
        key_env: None,
        attribution: false,
        sends_limit_headers: false,
        exhausted: "-",
        start_rpm: None,
    },
];

/// The preset called `name`.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The names, for messages.
pub fn names() -> String {
    PRESETS.map(|p| p.name).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_found_by_name() {
        assert_eq!(
            preset("OpenRouter").unwrap().key_env,
            Some("OPENROUTER_API_KEY")
        );
        assert!(preset("vllm").unwrap().key_env.is_none());
        assert!(preset("nope").is_none());
        assert_eq!(names(), "openrouter, aimlapi, openai, gemini, vllm");
    }
}
