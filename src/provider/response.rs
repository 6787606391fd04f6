//! Reading a chat-completions response body: the first choice's content and finish reason,
//! the model that served it, and `usage` (including OpenRouter's `usage.cost` and the cached
//! and reasoning token details). Unknown fields are ignored; the raw body is kept for
//! `--keep-response`.

use crate::cost::Usage;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// What the runner keeps of a successful response.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    pub response_model: Option<String>,
    pub usage: Option<Usage>,
    /// Provider-reported cost in USD (OpenRouter `usage.cost`).
    pub provider_cost: Option<f64>,
    /// What the upstream provider billed the gateway (OpenRouter's
    /// `usage.cost_details.upstream_inference_cost`), when said.
    pub upstream_cost: Option<f64>,
    /// The first choice's tool calls, as sent.
    pub tool_calls: Option<Box<RawValue>>,
    /// The other choices (`n` > 1), in order after the first.
    pub more: Vec<OtherChoice>,
    /// Why `usage` (or `usage.cost`) could not be read, when the answer carried one that was
    /// not numbers: the answer is still paid for, so its cost is taken at the worst case.
    pub usage_problem: Option<String>,
}

/// A choice after the first.
#[derive(Debug, Clone)]
pub struct OtherChoice {
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    pub tool_calls: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Body<'a> {
    choices: Option<Vec<ChoiceIn>>,
    model: Option<Value>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceIn {
    message: Option<MessageIn>,
    finish_reason: Option<Value>,
}

#[derive(Deserialize)]
struct MessageIn {
    content: Option<Value>,
    tool_calls: Option<Box<RawValue>>,
}

/// The answer's text: a string, or the text parts of a list of parts (as some gateways send
/// it); anything else as its JSON. A paid answer is never refused for its shape.
fn text(v: Option<Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s),
        Value::Array(parts)
            if parts
                .iter()
                .all(|p| p.get("text").is_some_and(Value::is_string)) =>
        {
            Some(
                parts
                    .iter()
                    .filter_map(|p| p.get("text")?.as_str())
                    .collect(),
            )
        }
        other => Some(other.to_string()),
    }
}

/// `finish_reason` when it is a string.
fn reason(v: Option<Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// `tool_calls: null` is no tool calls.
fn calls(raw: Option<Box<RawValue>>) -> Option<Box<RawValue>> {
    raw.filter(|r| r.get() != "null")
}

/// `usage` as read: counts that are whole numbers (integers, floats such as `10.0`, or
/// numeric strings), a cost that is a number or a numeric string.
struct UsageRead {
    usage: Option<Usage>,
    cost: Option<f64>,
    /// OpenRouter's `cost_details.upstream_inference_cost`: what the upstream provider billed.
    upstream: Option<f64>,
    problem: Option<String>,
}

/// A dollar amount: a non-negative number, or a string of one.
fn dollars(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    f.filter(|f| f.is_finite() && *f >= 0.0)
}

/// A token count: a non-negative whole number, however it was written.
fn count(v: &Value) -> Result<u64, String> {
    let f = match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) => return Ok(u),
            None => n.as_f64(),
        },
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match f {
        Some(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => Ok(f as u64),
        _ => Err(v.to_string()),
    }
}

/// A field of `usage` (or of one of its details objects): absent or null is 0.
fn field(obj: Option<&Value>, name: &str) -> Result<u64, String> {
    match obj.and_then(|o| o.get(name)) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => count(v).map_err(|bad| format!("usage.{name} is {bad}")),
    }
}

/// `usage` as nearly every provider writes it: whole numbers, a cost that is a number. Read
/// straight into fields; anything else (a count written as a string or as `10.0`, a repeated
/// key, a negative cost) goes to [`read_usage`], which reads it through a `Value` and says
/// what it could not read. For the usage this reads, both give the same.
#[derive(Deserialize)]
struct PlainUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    cost: Option<f64>,
    prompt_tokens_details: Option<PlainPrompt>,
    completion_tokens_details: Option<PlainCompletion>,
    cost_details: Option<PlainCost>,
}

#[derive(Deserialize)]
struct PlainPrompt {
    cached_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct PlainCompletion {
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct PlainCost {
    upstream_inference_cost: Option<f64>,
}

/// `usage` read from its text.
fn usage_of(raw: Option<&str>) -> UsageRead {
    usage_from(raw.map(|r| (r, super::scan::usage(r))))
}

/// `usage` read from its text, its fields already scanned when they have the usual shape.
fn usage_from(usage: Option<(&str, Option<super::scan::ScannedUsage<'_>>)>) -> UsageRead {
    let Some((raw, fields)) = usage else {
        return read_usage(None);
    };
    if let Some(read) = fields.and_then(scanned_usage) {
        return read;
    }
    if let Some(read) = plain_usage(raw) {
        return read;
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(v) => read_usage(Some(&v)),
        // A number past a float's range: the answer is kept, its cost taken at the worst case.
        Err(e) => UsageRead {
            usage: None,
            cost: None,
            upstream: None,
            problem: Some(format!("usage cannot be read ({e})")),
        },
    }
}

/// [`PlainUsage`]'s reading, or None for [`read_usage`] to read it.
fn plain_usage(text: &str) -> Option<UsageRead> {
    plain_read(serde_json::from_str(text).ok()?)
}

/// The usage [`super::scan`] read, as [`PlainUsage`] (its costs converted by serde_json).
fn scanned_usage(u: super::scan::ScannedUsage<'_>) -> Option<UsageRead> {
    let money = |t: Option<&str>| match t {
        Some(t) => serde_json::from_str::<f64>(t).ok().map(Some),
        None => Some(None),
    };
    plain_read(PlainUsage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.total_tokens,
        cost: money(u.cost)?,
        prompt_tokens_details: u.prompt_details.then_some(PlainPrompt {
            cached_tokens: u.cached_tokens,
            cache_write_tokens: u.cache_write_tokens,
        }),
        completion_tokens_details: u.completion_details.then_some(PlainCompletion {
            reasoning_tokens: u.reasoning_tokens,
        }),
        cost_details: match u.cost_details {
            true => Some(PlainCost {
                upstream_inference_cost: money(u.upstream_inference_cost)?,
            }),
            false => None,
        },
    })
}

fn plain_read(u: PlainUsage) -> Option<UsageRead> {
    let fine = |f: Option<f64>| f.is_none_or(|f| f.is_finite() && f >= 0.0);
    let upstream = u.cost_details.and_then(|d| d.upstream_inference_cost);
    if !fine(u.cost) || !fine(upstream) {
        return None;
    }
    let (details, reasoning) = (u.prompt_tokens_details, u.completion_tokens_details);
    let usage = Usage::reported(
        u.prompt_tokens.unwrap_or(0),
        u.completion_tokens.unwrap_or(0),
        u.total_tokens,
        details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0),
        reasoning.and_then(|r| r.reasoning_tokens).unwrap_or(0),
        details.and_then(|d| d.cache_write_tokens).unwrap_or(0),
    );
    Some(UsageRead {
        usage: Some(usage),
        cost: u.cost,
        upstream,
        problem: None,
    })
}

fn read_usage(u: Option<&Value>) -> UsageRead {
    let Some(u) = u.filter(|u| !u.is_null()) else {
        return UsageRead {
            usage: None,
            cost: None,
            upstream: None,
            problem: None,
        };
    };
    if !u.is_object() {
        return UsageRead {
            usage: None,
            cost: None,
            upstream: None,
            problem: Some(format!("usage is not an object: {u}")),
        };
    }
    let mut problem = None;
    let cost = match u.get("cost") {
        None | Some(Value::Null) => None,
        Some(v) => match dollars(v) {
            Some(f) => Some(f),
            None => {
                problem = Some(format!("usage.cost is {v}"));
                None
            }
        },
    };
    let upstream = u
        .get("cost_details")
        .and_then(|d| d.get("upstream_inference_cost"))
        .and_then(dollars);
    let read = || -> Result<Usage, String> {
        let total = match u.get("total_tokens") {
            None | Some(Value::Null) => None,
            Some(_) => Some(field(Some(u), "total_tokens")?),
        };
        let details = u.get("prompt_tokens_details");
        Ok(Usage::reported(
            field(Some(u), "prompt_tokens")?,
            field(Some(u), "completion_tokens")?,
            total,
            field(details, "cached_tokens")?,
            field(u.get("completion_tokens_details"), "reasoning_tokens")?,
            field(details, "cache_write_tokens")?,
        ))
    };
    match read() {
        Ok(usage) => UsageRead {
            usage: Some(usage),
            cost,
            upstream,
            problem,
        },
        Err(why) => UsageRead {
            usage: None,
            cost,
            upstream,
            problem: Some(why),
        },
    }
}

/// Parses a 2xx body. `Err` carries a message: the body was not JSON, held an `error` object,
/// or had no choices.
pub fn parse_completion(body: &[u8]) -> Result<Completion, String> {
    // UTF-8 checked once for the whole body, not string by string (a body that is not UTF-8
    // is read as bytes, for serde_json to say where).
    let utf8 = std::str::from_utf8(body).ok();
    match utf8.and_then(super::scan::completion).and_then(scanned) {
        Some(c) => Ok(c),
        None => by_serde(body, utf8),
    }
}

/// [`parse_completion`] through serde_json, for every answer the one-pass reading leaves.
fn by_serde(body: &[u8], utf8: Option<&str>) -> Result<Completion, String> {
    let read = match utf8 {
        Some(text) => serde_json::from_str::<Body>(text),
        None => serde_json::from_slice::<Body>(body),
    };
    let b = read.map_err(|e| {
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
        Some(m) => (text(m.content), calls(m.tool_calls)),
        None => (None, None),
    };
    let more = choices
        .map(|c| {
            let (content, tool_calls) = match c.message {
                Some(m) => (text(m.content), calls(m.tool_calls)),
                None => (None, None),
            };
            OtherChoice {
                content,
                finish_reason: reason(c.finish_reason),
                tool_calls,
            }
        })
        .collect();
    let usage = usage_of(b.usage.map(RawValue::get));
    Ok(Completion {
        content,
        finish_reason: reason(choice.finish_reason),
        // A model that is not a string is no model name.
        response_model: match b.model {
            Some(Value::String(m)) => Some(m),
            _ => None,
        },
        usage: usage.usage,
        provider_cost: usage.cost,
        upstream_cost: usage.upstream,
        tool_calls,
        more,
        usage_problem: usage.problem,
    })
}

/// The answer [`super::scan`] read, as serde_json's reading gives it; None when its tool
/// calls cannot be kept as text (never, for text the scan checked).
fn scanned(s: super::scan::Scanned<'_>) -> Option<Completion> {
    let mut choices = s.choices.into_iter().map(|c| {
        let tool_calls = match c.tool_calls {
            None | Some("null") => None,
            Some(raw) => Some(RawValue::from_string(raw.to_owned()).ok()?),
        };
        Some(OtherChoice {
            content: c.content,
            finish_reason: c.finish_reason,
            tool_calls,
        })
    });
    let first = choices.next()??;
    let more = choices.collect::<Option<Vec<_>>>()?;
    let usage = usage_from(s.usage);
    Some(Completion {
        content: first.content,
        finish_reason: first.finish_reason,
        response_model: s.model,
        usage: usage.usage,
        provider_cost: usage.cost,
        upstream_cost: usage.upstream,
        tool_calls: first.tool_calls,
        more,
        usage_problem: usage.problem,
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
                reasoning: 2,
                total: Some(15),
                ..Usage::default()
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
    fn usage_written_oddly_is_read_where_it_can_be() {
        let body = br#"{"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":10.0,"completion_tokens":"5","cost":"0.01"}}"#;
        let c = parse_completion(body).unwrap();
        assert_eq!(c.usage.map(|u| (u.prompt, u.completion)), Some((10, 5)));
        assert_eq!(c.provider_cost, Some(0.01));
        assert!(c.usage_problem.is_none());
        for bad in [
            r#"{"prompt_tokens":-3,"completion_tokens":5}"#,
            r#"{"prompt_tokens":2.5}"#,
            r#"{"prompt_tokens":[1]}"#,
            r#""lots""#,
        ] {
            let body = format!(
                r#"{{"choices":[{{"message":{{"content":"ok"}}}}],"model":7,"usage":{bad}}}"#
            );
            let c = parse_completion(body.as_bytes()).unwrap();
            assert!(c.usage.is_none(), "{bad}");
            assert!(c.usage_problem.is_some(), "{bad}");
            assert!(c.response_model.is_none());
        }
        let c = parse_completion(
            br#"{"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":1,"cost":-1}}"#,
        )
        .unwrap();
        assert_eq!(c.provider_cost, None);
        assert!(c.usage.is_some() && c.usage_problem.is_some());
    }

    #[test]
    fn plain_usage_reads_as_the_general_reading_does() {
        let texts = [
            r#"{"prompt_tokens":10,"completion_tokens":5}"#,
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"cost":0.0000042}"#,
            r#"{"prompt_tokens":20,"completion_tokens":198,"total_tokens":623,"completion_tokens_details":{"reasoning_tokens":405},"prompt_tokens_details":{"cached_tokens":3,"cache_write_tokens":12},"cost":0,"cost_details":{"upstream_inference_cost":0.0014}}"#,
            r#"{"prompt_tokens":null,"completion_tokens":5,"total_tokens":null,"cost":null,"prompt_tokens_details":null,"completion_tokens_details":{},"cost_details":{"upstream_inference_cost":null},"other":[1,{"a":"b"}]}"#,
            r#"{}"#,
        ];
        let same = |a: &UsageRead, b: &UsageRead| {
            (a.usage, a.cost, a.upstream, &a.problem) == (b.usage, b.cost, b.upstream, &b.problem)
        };
        for t in texts {
            let plain = plain_usage(t).unwrap_or_else(|| panic!("{t} is plain"));
            let general = read_usage(Some(&serde_json::from_str(t).unwrap()));
            assert!(same(&plain, &general), "{t}");
        }
        // What the plain reading leaves to the general one.
        for t in [
            r#"{"prompt_tokens":10.0}"#,
            r#"{"prompt_tokens":"5"}"#,
            r#"{"prompt_tokens":-3}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"cost":-1}"#,
            r#"{"cost":"0.01"}"#,
            r#"{"cost_details":{"upstream_inference_cost":-0.5}}"#,
            r#"{"prompt_tokens_details":5}"#,
            r#""lots""#,
            r#"null"#,
        ] {
            assert!(plain_usage(t).is_none(), "{t}");
        }
        assert!(usage_of(None).usage.is_none());
        let huge = r#"{"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":1,"cost":1e400}}"#;
        let c = parse_completion(huge.as_bytes()).unwrap();
        assert!(
            c.usage.is_none(),
            "a paid answer is kept, its usage not read"
        );
        assert!(c.usage_problem.unwrap().starts_with("usage cannot be read"));
        let null = serde_json::from_str::<&RawValue>("null").unwrap();
        let read = usage_of(Some(null.get()));
        assert!(read.usage.is_none() && read.problem.is_none());
    }

    #[test]
    fn a_body_that_is_not_utf8_is_refused_with_its_start() {
        let mut body = br#"{"choices":[{"message":{"content":"ok "#.to_vec();
        body.extend_from_slice(b"\xff\xfe\"}}]}");
        let e = parse_completion(&body).unwrap_err();
        assert!(e.starts_with("response is not a chat completion"), "{e}");
        let body = "{\"choices\":[{\"message\":{\"content\":\"caf\u{e9} \u{1F600}\"}}]}";
        let c = parse_completion(body.as_bytes()).unwrap();
        assert_eq!(c.content.as_deref(), Some("caf\u{e9} \u{1F600}"));
    }

    #[test]
    fn empty_choices_is_an_error() {
        assert!(parse_completion(br#"{"choices":[]}"#).is_err());
        assert!(parse_completion(b"").is_err());
    }

    #[test]
    fn reasoning_outside_completion_and_cache_writes_and_upstream_cost_are_read() {
        // A gateway in front of Gemini: prompt 20, completion 198, total 623, reasoning 405.
        let body = br#"{"model":"google/gemini-2.5-flash","choices":[{"message":{"content":"ok"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":20,"completion_tokens":198,"total_tokens":623,
            "completion_tokens_details":{"reasoning_tokens":405},
            "prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":12},
            "cost":0.0015,"cost_details":{"upstream_inference_cost":0.0014}}}"#;
        let c = parse_completion(body).unwrap();
        let u = c.usage.unwrap();
        assert_eq!((u.prompt, u.completion, u.reasoning), (20, 603, 405));
        assert_eq!(u.reported_completion, Some(198));
        assert_eq!(u.total, Some(623));
        assert_eq!(u.cache_write, 12);
        assert_eq!(u.rule, Some(crate::cost::OutputRule::TotalMinusPrompt));
        assert_eq!(c.provider_cost, Some(0.0015));
        assert_eq!(c.upstream_cost, Some(0.0014));
    }

    /// Answers of many shapes: the usual ones the one-pass reading must read itself (`true`),
    /// and the rest, which it may leave to serde_json.
    const SHAPES: &[(bool, &str)] = &[
        (true, r#"{"id":"gen-1","object":"chat.completion","created":1796621697,"model":"google/gemini-2.0-flash-001","provider":"bulkprompt-mock","choices":[{"index":0,"message":{"role":"assistant","content":"Mixed quality and mixed the setup."},"finish_reason":"stop"}],"usage":{"prompt_tokens":29,"completion_tokens":25,"total_tokens":54}}"#),
        (true, r#"{"id":"gen-2","provider":"Google","model":"google/gemini-2.5-flash","object":"chat.completion","created":1,"choices":[{"logprobs":null,"finish_reason":"stop","native_finish_reason":"STOP","index":0,"message":{"role":"assistant","content":"{\"label\": \"positive\", \"score\": 0.9}\n","refusal":null,"reasoning":null}}],"system_fingerprint":null,"usage":{"prompt_tokens":20,"completion_tokens":198,"total_tokens":623,"cost":0.0015,"is_byok":false,"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":12},"cost_details":{"upstream_inference_cost":0.0014},"completion_tokens_details":{"reasoning_tokens":405}}}"#),
        (true, r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}]}"#),
        (true, r#"{"choices":[{"message":{"content":"a"},"finish_reason":"stop"},{"message":{"content":"b"},"finish_reason":"length"},{"message":null,"finish_reason":null},{"message":{"content":"d","tool_calls":null}}],"model":null}"#),
        (true, "{\n  \"choices\" : [ {\t\"message\" : { \"content\" : \"caf\\u00e9 \\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u0000 日本\" } } ] ,\r\n \"usage\" : null , \"x\" : [ -0 , 1e10 , 1.5E-3 , 0.0 , true , false , { } , [ ] , \"\" ] }\n "),
        (true, r#"{"choices":[{"message":{"content":""}}],"error":null}"#),
        (true, r#"{"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":10.0,"completion_tokens":"5","cost":"0.01"}}"#),
        (true, r#"{"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":1,"cost":1e400}}"#),
        (true, r#"{"choices":[{"message":{"content":"ok"}}],"usage":"lots","x":1,"x":2}"#),
        (false, r#"{"choices":[{"message":{"content":"\ud83d\ude00"}}]}"#),
        (false, r#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#),
        (false, r#"{"choices":[{"message":{"content":{"a":1}}}]}"#),
        (false, r#"{"choices":[{"message":{"content":"a","content":"b"}}]}"#),
        (false, r#"{"choices":[],"choices":[{"message":{"content":"a"}}]}"#),
        (false, r#"{"choi\u0063es":[{"message":{"content":"a"}}]}"#),
        (false, r#"{"choices":[{"message":{"content":"a"}}],"error":{"message":"x"}}"#),
        (false, r#"{"error":{"message":"x","code":429}}"#),
        (false, r#"{"choices":[]}"#),
        (false, r#"{"choices":null}"#),
        (false, r#"{"choices":[{"message":{"content":"a"}}],"model":7}"#),
        (false, r#"{"choices":[{"message":{"content":"a"},"finish_reason":1e400}]}"#),
        (false, r#"{"choices":[{"message":{"content":"a"}}]} x"#),
        (false, r#"[{"message":{"content":"a"}}]"#),
        (false, r#"{"choices":[["a"]]}"#),
        (false, ""),
    ];

    /// What the one-pass reading gives, if it reads the body.
    fn one_pass(body: &str) -> Option<Completion> {
        super::super::scan::completion(body).and_then(scanned)
    }

    /// The one-pass reading gives what serde_json's reading gives, or leaves the body to it.
    fn same_as_serde(body: &str) -> bool {
        let Some(fast) = one_pass(body) else {
            return false;
        };
        match by_serde(body.as_bytes(), Some(body)) {
            Ok(slow) => assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{body}"),
            Err(e) => panic!("read in one pass, refused by serde_json ({e}): {body}"),
        }
        true
    }

    #[test]
    fn the_one_pass_reading_reads_as_serde_json_or_not_at_all() {
        for (usual, body) in SHAPES {
            assert_eq!(same_as_serde(body), *usual, "{body}");
        }
        let deep = |n: usize| {
            format!(
                r#"{{"x":{}1{},"choices":[{{"message":{{"content":"a"}}}}]}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(same_as_serde(&deep(60)));
        assert!(!same_as_serde(&deep(70)));
        assert!(!same_as_serde(&deep(200)));
    }

    #[test]
    fn every_body_one_byte_off_reads_as_serde_json_or_not_at_all() {
        // Each usual shape with a byte deleted, replaced or inserted at every place: a body
        // cut, a quote or bracket lost, a stray control character, a number broken.
        let bytes: &[u8] = b"\"\\{}[],:0-e.nu \x00\x1f\x7fa";
        let mut read = 0;
        for (_, body) in SHAPES.iter().filter(|(usual, _)| *usual).take(5) {
            for text in crate::json_scan::one_byte_off(body, bytes) {
                read += usize::from(same_as_serde(&text));
            }
        }
        // Most of the changes still read (inside strings, whitespace): the reading is tried.
        assert!(read > 5_000, "{read}");
    }

    #[test]
    fn the_usage_scan_reads_as_serde_json_or_not_at_all() {
        let same = |a: &UsageRead, b: &UsageRead| {
            (a.usage, a.cost, a.upstream, &a.problem) == (b.usage, b.cost, b.upstream, &b.problem)
        };
        let usual = [
            r#"{"prompt_tokens":29,"completion_tokens":25,"total_tokens":54}"#,
            r#"{"prompt_tokens":20,"completion_tokens":198,"total_tokens":623,"cost":0.0015,"is_byok":false,"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":12},"cost_details":{"upstream_inference_cost":0.0014},"completion_tokens_details":{"reasoning_tokens":405}}"#,
            r#"{ "prompt_tokens" : null , "completion_tokens":5,"total_tokens":null,"cost":null,"prompt_tokens_details":null,"completion_tokens_details":{},"cost_details":{"upstream_inference_cost":null},"other":[1,{"a":"b"}]}"#,
            r#"{"prompt_tokens":18446744073709551615,"cost":1e-7,"cost_details":{"upstream_inference_cost":2E+3}}"#,
            r#"{}"#,
        ];
        let left = [
            r#"{"prompt_tokens":10.0}"#,
            r#"{"prompt_tokens":-0}"#,
            r#"{"prompt_tokens":1e2}"#,
            r#"{"prompt_tokens":18446744073709551616}"#,
            r#"{"prompt_tokens":"5"}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":1}}"#,
            r#"{"cost":"0.01"}"#,
            r#"{"prompt_tokens_details":5}"#,
            r#""lots""#,
            r#"null"#,
        ];
        for t in usual {
            let scanned = super::super::scan::usage(t).and_then(scanned_usage);
            let plain = plain_usage(t).unwrap();
            assert!(same(&scanned.expect(t), &plain), "{t}");
        }
        for t in left {
            assert!(super::super::scan::usage(t).is_none(), "{t}");
        }
        // Each usual text with a byte deleted, replaced or inserted at every place.
        let bytes: &[u8] = b"\"{}[],:0-e.n5 \x1fE+";
        let mut read = 0;
        for t in usual {
            for text in crate::json_scan::one_byte_off(t, bytes) {
                let Some(scanned) = super::super::scan::usage(&text).and_then(scanned_usage) else {
                    continue;
                };
                read += 1;
                let plain = plain_usage(&text)
                    .unwrap_or_else(|| panic!("scanned, left by serde_json: {text}"));
                assert!(same(&scanned, &plain), "{text}");
            }
        }
        assert!(read > 2_000, "{read}");
    }
}
