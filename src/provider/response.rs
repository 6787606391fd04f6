//! Reading a chat-completions response body: the first choice's content and finish reason,
//! the model that served it, and `usage` (including OpenRouter's `usage.cost` and the cached
//! and reasoning token details). Unknown fields are ignored; the raw body is kept for
//! `--keep-response`.

use crate::cost::Usage;
use serde::Deserialize;
use serde_json::value::RawValue;

/// What the runner keeps of a successful response.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    pub response_model: Option<String>,
    pub usage: Option<Usage>,
    /// Provider-reported cost in USD (OpenRouter `usage.cost`).
    pub provider_cost: Option<f64>,
    /// The first choice's tool calls, as sent.
    pub tool_calls: Option<Box<RawValue>>,
    /// The other choices (`n` > 1), in order after the first.
    pub more: Vec<OtherChoice>,
}

/// A choice after the first.
#[derive(Debug, Clone)]
pub struct OtherChoice {
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    pub tool_calls: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Body {
    choices: Option<Vec<ChoiceIn>>,
    model: Option<String>,
    usage: Option<UsageIn>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoiceIn {
    message: Option<MessageIn>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct MessageIn {
    content: Option<String>,
    tool_calls: Option<Box<RawValue>>,
}

/// `tool_calls: null` is no tool calls.
fn calls(raw: Option<Box<RawValue>>) -> Option<Box<RawValue>> {
    raw.filter(|r| r.get() != "null")
}

#[derive(Deserialize)]
struct UsageIn {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
    cost: Option<f64>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

/// Parses a 2xx body. `Err` carries a message: the body was not JSON, held an `error` object,
/// or had no choices.
pub fn parse_completion(body: &[u8]) -> Result<Completion, String> {
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        let start = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
        format!("response is not a chat completion ({e}): {start}")
    })?;
    let mut choices = match b.choices {
        Some(c) if !c.is_empty() => c.into_iter(),
        _ => {
            return Err(match b.error {
                Some(e) => format!(
                    "provider error in a 200 response: {}",
                    super::classify::error_message(format!("{{\"error\":{e}}}").as_bytes())
                ),
                None => "response has no choices".to_string(),
            })
        }
    };
    let Some(choice) = choices.next() else {
        return Err("response has no choices".into());
    };
    let (content, tool_calls) = match choice.message {
        Some(m) => (m.content, calls(m.tool_calls)),
        None => (None, None),
    };
    let more = choices
        .map(|c| {
            let (content, tool_calls) = match c.message {
                Some(m) => (m.content, calls(m.tool_calls)),
                None => (None, None),
            };
            OtherChoice {
                content,
                finish_reason: c.finish_reason,
                tool_calls,
            }
        })
        .collect();
    let (usage, provider_cost) = match b.usage {
        Some(u) => (
            Some(Usage {
                prompt: u.prompt_tokens.unwrap_or(0),
                completion: u.completion_tokens.unwrap_or(0),
                cached: u
                    .prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0),
                reasoning: u
                    .completion_tokens_details
                    .and_then(|d| d.reasoning_tokens)
                    .unwrap_or(0),
            }),
            u.cost.filter(|c| c.is_finite() && *c >= 0.0),
        ),
        None => (None, None),
    };
    Ok(Completion {
        content,
        finish_reason: choice.finish_reason,
        response_model: b.model,
        usage,
        provider_cost,
        tool_calls,
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openrouter_usage_details_and_cost() {
        let body = br#"{"id":"x","model":"google/gemini-2.0-flash-001","choices":[{"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"cost":0.0000042,
            "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        let c = parse_completion(body).unwrap();
        assert_eq!(c.content.as_deref(), Some("ok"));
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt: 10,
                completion: 5,
                cached: 4,
                reasoning: 2
            })
        );
        assert_eq!(c.provider_cost, Some(0.0000042));
        assert_eq!(
            c.response_model.as_deref(),
            Some("google/gemini-2.0-flash-001")
        );
    }

    #[test]
    fn tool_calls_and_null_content_are_kept() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]},"finish_reason":"tool_calls"}]}"#;
        let c = parse_completion(body).unwrap();
        assert_eq!(c.tool_calls.unwrap().get(), r#"[{"id":"1"}]"#);
        assert!(c.content.is_none() && c.usage.is_none());
    }

    #[test]
    fn empty_choices_is_an_error() {
        assert!(parse_completion(br#"{"choices":[]}"#).is_err());
        assert!(parse_completion(b"").is_err());
    }
}
