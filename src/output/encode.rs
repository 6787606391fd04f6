//! A record's JSONL line, as serde writes [`Record`] (its fields in order, the optional ones
//! left out when absent), written field by field (`json_write.rs`): the keys are
//! constants, the strings are copied whole when they need no escaping. serde's derived
//! serializer sent every key through serde_json's escape loop; this was half the writer
//! thread's time. The records are read back by serde (`status`, the resume's scan), and a
//! unit test holds the two equal.

use super::record::{CostSource, Record};
use crate::json_write::{object, string, uint, value};
use serde_json::Result;

/// Appends `r` as one JSON object (no newline).
pub fn record(out: &mut Vec<u8>, r: &Record) -> Result<()> {
    let mut w = Fields { out, first: true };
    w.key("id");
    string(w.out, &r.id)?;
    w.key("index");
    uint(w.out, r.index);
    w.key("status");
    string(w.out, r.status.as_str())?;
    w.key("model");
    string(w.out, &r.model)?;
    w.opt_str("response_model", r.response_model.as_deref())?;
    w.opt_str("content", r.content.as_deref())?;
    w.key("parsed");
    match &r.parsed {
        Some(v) => value(w.out, v)?,
        None => w.raw("null"),
    }
    w.opt_str("finish_reason", r.finish_reason.as_deref())?;
    head_extras(&mut w, r)?;
    usage(&mut w, r)?;
    money_and_time(&mut w, r)?;
    w.key("metadata");
    object(w.out, &r.metadata)?;
    w.key("fingerprint");
    string(w.out, &r.fingerprint)?;
    w.out.push(b'}');
    Ok(())
}

/// The fields serde leaves out when they are absent, between the answer and its usage.
fn head_extras(w: &mut Fields, r: &Record) -> Result<()> {
    if let Some(t) = &r.tool_calls {
        w.key("tool_calls");
        w.raw(t.get());
    }
    if let Some(c) = &r.choices {
        w.key("choices");
        serde_json::to_writer(&mut *w.out, c)?;
    }
    if let Some(m) = &r.fallback_model {
        w.key("fallback_model");
        string(w.out, m)?;
    }
    if let Some(s) = r.stale {
        w.key("stale");
        string(w.out, s.as_str())?;
    }
    if let Some(d) = &r.dedup_of {
        w.key("dedup_of");
        string(w.out, d)?;
    }
    if let Some(resp) = &r.response {
        w.key("response");
        w.raw(resp.get());
    }
    if let Some(p) = &r.prompt {
        w.key("prompt");
        value(w.out, p)?;
    }
    Ok(())
}

fn usage(w: &mut Fields, r: &Record) -> Result<()> {
    w.opt_uint("prompt_tokens", r.prompt_tokens);
    w.opt_uint("completion_tokens", r.completion_tokens);
    w.opt_uint("total_tokens", r.total_tokens);
    w.opt_uint("cached_tokens", r.cached_tokens);
    w.opt_uint("reasoning_tokens", r.reasoning_tokens);
    if let Some(n) = r.billed_output_tokens {
        w.key("billed_output_tokens");
        uint(w.out, n);
    }
    if let Some(rule) = r.usage_rule {
        w.key("usage_rule");
        string(w.out, rule.as_str())?;
    }
    Ok(())
}

fn money_and_time(w: &mut Fields, r: &Record) -> Result<()> {
    w.key("cost_usd");
    match r.cost_usd {
        Some(c) => serde_json::to_writer(&mut *w.out, &c)?,
        None => w.raw("null"),
    }
    w.opt_str("cost_source", r.cost_source.map(CostSource::as_str))?;
    if let Some(c) = r.upstream_cost_usd {
        w.key("upstream_cost_usd");
        serde_json::to_writer(&mut *w.out, &c)?;
    }
    w.key("latency_ms");
    uint(w.out, r.latency_ms);
    w.key("attempts");
    uint(w.out, u64::from(r.attempts));
    if let Some(retries) = &r.retries {
        w.key("retries");
        serde_json::to_writer(&mut *w.out, retries)?;
    }
    w.key("error");
    match &r.error {
        Some(e) => serde_json::to_writer(&mut *w.out, e)?,
        None => w.raw("null"),
    }
    w.key("started_at");
    string(w.out, &r.started_at)?;
    w.key("finished_at");
    string(w.out, &r.finished_at)
}

/// An object being written: the comma before every key but the first.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    /// `"name":`, after `{` or `,` (the names are plain: nothing to escape).
    // Inlined: each call's name is a constant, copied in a few moves.
    #[inline(always)]
    fn key(&mut self, name: &str) {
        let open = if std::mem::take(&mut self.first) {
            b'{'
        } else {
            b','
        };
        self.out.extend_from_slice(&[open, b'"']);
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn raw(&mut self, json: &str) {
        self.out.extend_from_slice(json.as_bytes());
    }

    fn opt_str(&mut self, name: &str, v: Option<&str>) -> Result<()> {
        self.key(name);
        match v {
            Some(s) => string(self.out, s),
            None => {
                self.raw("null");
                Ok(())
            }
        }
    }

    fn opt_uint(&mut self, name: &str, v: Option<u64>) {
        self.key(name);
        match v {
            Some(n) => uint(self.out, n),
            None => self.raw("null"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same(v: serde_json::Value) {
        let r: Record = serde_json::from_value(v).expect("a record");
        let mut out = Vec::new();
        record(&mut out, &r).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&r).unwrap()
        );
    }

    fn plain() -> serde_json::Value {
        json!({"id": "j1", "index": 0, "status": "ok", "model": "m", "response_model": "m-2",
            "content": "hi", "parsed": null, "finish_reason": "stop", "prompt_tokens": 3,
            "completion_tokens": 2, "total_tokens": 5, "cached_tokens": null,
            "reasoning_tokens": null, "cost_usd": 0.000125, "cost_source": "price_table",
            "latency_ms": 12, "attempts": 1, "error": null,
            "started_at": "2026-12-07T03:15:02.123Z", "finished_at": "2026-12-07T03:15:02.135Z",
            "metadata": {}, "fingerprint": "a9a39ee5b8d3ce84991048e79c9cfa5c"})
    }

    #[test]
    fn a_record_is_written_as_serde_writes_it() {
        same(plain());
        // Every optional field present, strings that need escaping, odd numbers.
        let mut all = plain();
        let extra = json!({"status": "failed", "id": "a \"quoted\"\nid", "index": u64::MAX,
            "content": "tab\there \\ é 漢字 \u{1}", "parsed": {"label": "pos", "n": [1, 2.5, null]},
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            "choices": [{"content": "a", "finish_reason": "stop"}, {"content": null, "finish_reason": "length", "parsed": {"x": 1}}],
            "fallback_model": "google/gemini-2.5-flash", "stale": "job_changed", "dedup_of": "j0",
            "response": {"id": "r", "choices": []}, "prompt": [{"role": "user", "content": "q"}],
            "cached_tokens": 7, "reasoning_tokens": 0, "billed_output_tokens": 9,
            "usage_rule": "completion_plus_reasoning", "cost_usd": 1e-12, "cost_source": "worst_case",
            "upstream_cost_usd": 12345.678, "attempts": 4294967295u32,
            "retries": {"timeout": 2, "rate_limited": 1},
            "error": {"kind": "timeout", "http_status": 504, "message": "no \"answer\""},
            "metadata": {"row": 3, "tags": ["a", "b"], "nested": {"k": "v\u{7f}"}}});
        for (k, v) in extra.as_object().unwrap() {
            all[k] = v.clone();
        }
        same(all);
        // Absent usage and cost, the provider's cost.
        let mut none = plain();
        for k in [
            "response_model",
            "content",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cost_usd",
            "cost_source",
        ] {
            none[k] = serde_json::Value::Null;
        }
        same(none);
        let mut provider = plain();
        provider["cost_source"] = json!("provider");
        same(provider);
    }
}
