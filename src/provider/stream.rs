//! A streamed answer (`"stream": true`: server-sent events, one `data: {chunk}` per delta)
//! assembled into the body a non-streamed answer would have had: every choice's content and
//! tool calls from their deltas, its `finish_reason`, the served model, and the usage of the
//! final chunk (`stream_options.include_usage`). The rest of the runner then reads it as any
//! answer, so a streamed job costs one generation and gives the same record.

use serde_json::{json, Map, Value};

/// Whether a 2xx body is an event stream rather than one JSON object.
pub fn is_event_stream(content_type: Option<&str>, body: &[u8]) -> bool {
    if content_type.is_some_and(|c| c.trim_start().starts_with("text/event-stream")) {
        return true;
    }
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&[][..], |i| &body[i..]);
    start.starts_with(b"data:") || start.starts_with(b"event:") || start.starts_with(b": ")
}

/// One choice as its deltas built it.
#[derive(Default)]
struct Built {
    content: Option<String>,
    tool_calls: Vec<Map<String, Value>>,
    finish_reason: Option<Value>,
}

/// The event stream as one chat completion body. `Err` when the stream carried an error, or
/// ended before any choice finished (cut on the way: the answer did not arrive whole).
pub fn assemble(body: &[u8]) -> Result<Vec<u8>, String> {
    let text = String::from_utf8_lossy(body);
    let mut choices: Vec<Built> = Vec::new();
    let (mut model, mut usage, mut id) = (None, None, None);
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            break;
        }
        if data.is_empty() {
            continue;
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| format!("streamed answer: a chunk is not JSON ({e}): {data:.120}"))?;
        if let Some(e) = chunk.get("error") {
            return Err(format!("streamed answer carried an error: {e}"));
        }
        if let Some(m) = chunk.get("model").filter(|m| m.is_string()) {
            model = Some(m.clone());
        }
        if let Some(i) = chunk.get("id").filter(|i| i.is_string()) {
            id.get_or_insert_with(|| i.clone());
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            usage = Some(u.clone());
        }
        for c in chunk["choices"].as_array().into_iter().flatten() {
            let at = c["index"].as_u64().unwrap_or(0).min(1024) as usize;
            if choices.len() <= at {
                choices.resize_with(at + 1, Built::default);
            }
            let built = &mut choices[at];
            let delta = c.get("delta").or_else(|| c.get("message"));
            if let Some(s) = delta.and_then(|d| d["content"].as_str()) {
                built.content.get_or_insert_with(String::new).push_str(s);
            }
            for t in delta
                .and_then(|d| d["tool_calls"].as_array())
                .into_iter()
                .flatten()
            {
                tool_delta(&mut built.tool_calls, t);
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                built.finish_reason = Some(f.clone());
            }
        }
    }
    if choices.is_empty() || !(done || choices.iter().all(|c| c.finish_reason.is_some())) {
        return Err(
            "the streamed answer ended before it was whole (no finish_reason, no [DONE])".into(),
        );
    }
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut message = json!({"role": "assistant", "content": c.content});
            if !c.tool_calls.is_empty() {
                message["tool_calls"] =
                    Value::Array(c.tool_calls.into_iter().map(Value::Object).collect());
            }
            json!({"index": i, "message": message, "finish_reason": c.finish_reason})
        })
        .collect();
    let mut out = json!({"object": "chat.completion", "choices": choices});
    for (k, v) in [("id", id), ("model", model), ("usage", usage)] {
        if let Some(v) = v {
            out[k] = v;
        }
    }
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

/// Folds one tool-call delta into the calls so far: the call at its `index` gets the id, type
/// and name when they come, and the arguments' pieces appended.
fn tool_delta(calls: &mut Vec<Map<String, Value>>, t: &Value) {
    let at = t["index"].as_u64().unwrap_or(calls.len() as u64).min(1024) as usize;
    if calls.len() <= at {
        calls.resize_with(at + 1, || {
            let mut m = Map::new();
            m.insert("type".into(), json!("function"));
            m.insert("function".into(), json!({"name": "", "arguments": ""}));
            m
        });
    }
    let call = &mut calls[at];
    for key in ["id", "type"] {
        if let Some(v) = t.get(key).filter(|v| v.is_string()) {
            call.insert(key.into(), v.clone());
        }
    }
    let f = &t["function"];
    let function = call.entry("function").or_insert_with(|| json!({}));
    for key in ["name", "arguments"] {
        if let Some(piece) = f[key].as_str() {
            let so_far = function[key].as_str().unwrap_or("").to_string();
            function[key] = Value::String(so_far + piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(chunks: &[&str]) -> Vec<u8> {
        chunks
            .iter()
            .map(|c| format!("data: {c}\n\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn deltas_become_one_answer_with_usage_from_the_last_chunk() {
        let body = sse(&[
            r#"{"id":"c1","model":"m-served","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"lo"}},{"index":1,"delta":{"content":"Hi"}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"},{"index":1,"delta":{},"finish_reason":"length"}]}"#,
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#,
            "[DONE]",
        ]);
        assert!(is_event_stream(None, &body));
        let c = crate::provider::response::parse_completion(&assemble(&body).unwrap()).unwrap();
        assert_eq!(c.content.as_deref(), Some("Hello"));
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!(c.response_model.as_deref(), Some("m-served"));
        assert_eq!(c.usage.map(|u| (u.prompt, u.completion)), Some((9, 4)));
        assert_eq!(c.more[0].content.as_deref(), Some("Hi"));
        assert_eq!(c.more[0].finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn tool_call_deltas_are_joined() {
        let body = sse(&[
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"label","arguments":"{\"a\""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ]);
        let c = crate::provider::response::parse_completion(&assemble(&body).unwrap()).unwrap();
        let calls: Value = serde_json::from_str(c.tool_calls.unwrap().get()).unwrap();
        assert_eq!(calls[0]["id"], "call_1");
        assert_eq!(calls[0]["function"]["name"], "label");
        assert_eq!(calls[0]["function"]["arguments"], "{\"a\":1}");
        assert!(c.content.is_none());
    }

    #[test]
    fn a_cut_or_failed_stream_is_not_an_answer() {
        let cut = sse(&[r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#]);
        assert!(assemble(&cut).unwrap_err().contains("before it was whole"));
        let failed = sse(&[r#"{"error":{"message":"overloaded"}}"#]);
        assert!(assemble(&failed).unwrap_err().contains("overloaded"));
        assert!(!is_event_stream(
            Some("application/json"),
            b"{\"choices\":[]}"
        ));
        assert!(is_event_stream(
            Some("text/event-stream; charset=utf-8"),
            b""
        ));
    }
}
