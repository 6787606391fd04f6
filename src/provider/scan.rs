//! A chat completion read in one pass over its text ([`crate::json_scan`]), for the shape
//! nearly every answer has: an object whose `choices` are objects with a `message` whose
//! `content` is a string or null. The fields [`super::response`] keeps are taken as the text is
//! checked; everything else is passed over without being built. Anything this reading does
//! not know for certain to read as serde_json would (a key or a kept string with a surrogate
//! escape, content that is not a string, a field named twice, an `error` beside the choices,
//! no choices, nesting over 64 deep) gives None, and the answer is read through serde_json.

use crate::json_scan::{first, Scan};

/// What an answer holds, as [`super::response`] keeps it.
pub(super) struct Scanned<'a> {
    pub(super) choices: Vec<ScannedChoice<'a>>,
    /// `model` when it is a string.
    pub(super) model: Option<String>,
    /// `usage`'s text, as written, and its fields when they have the usual shape (read in
    /// the same pass).
    pub(super) usage: Option<(&'a str, Option<ScannedUsage<'a>>)>,
}

/// One choice.
pub(super) struct ScannedChoice<'a> {
    pub(super) content: Option<String>,
    /// `finish_reason` when it is a string.
    pub(super) finish_reason: Option<String>,
    /// `tool_calls`' text, as written (`null` included).
    pub(super) tool_calls: Option<&'a str>,
}

/// The answer in `text`, or None for serde_json to read it.
pub(super) fn completion(text: &str) -> Option<Scanned<'_>> {
    let mut s = Scan::new(text);
    let body = body(&mut s)?;
    (s.at_end() && !body.choices.is_empty()).then_some(body)
}

/// `usage` as nearly every provider writes it: each count a whole number (or null), each cost
/// a number (or null, its text kept for serde_json to convert as it would). None for anything
/// else, a field named twice included. A details object's fields are read only when it is
/// an object (`*_details` true), as serde reads them into an `Option` of a struct.
#[derive(Default)]
pub(super) struct ScannedUsage<'a> {
    pub(super) prompt_tokens: Option<u64>,
    pub(super) completion_tokens: Option<u64>,
    pub(super) total_tokens: Option<u64>,
    pub(super) cost: Option<&'a str>,
    pub(super) prompt_details: bool,
    pub(super) cached_tokens: Option<u64>,
    pub(super) cache_write_tokens: Option<u64>,
    pub(super) completion_details: bool,
    pub(super) reasoning_tokens: Option<u64>,
    pub(super) cost_details: bool,
    pub(super) upstream_inference_cost: Option<&'a str>,
}

/// The `usage` in `text`, or None for serde_json to read it.
pub(super) fn usage(text: &str) -> Option<ScannedUsage<'_>> {
    let mut s = Scan::new(text);
    let u = usage_fields(&mut s)?;
    s.at_end().then_some(u)
}

/// `usage` at the scan: its text, and its fields when they have the usual shape.
fn usage_here<'a>(s: &mut Scan<'a>) -> Option<(&'a str, Option<ScannedUsage<'a>>)> {
    s.peek()?;
    let start = s.mark();
    let fields = s.or_back(usage_fields);
    if fields.is_none() {
        s.skip()?;
    }
    Some((s.since(start)?, fields))
}

/// The usage object at the scan, as [`usage`] reads it.
fn usage_fields<'a>(s: &mut Scan<'a>) -> Option<ScannedUsage<'a>> {
    let mut u = ScannedUsage::default();
    let mut seen = [false; 7];
    let mut inner = [false; 4];
    s.object(|s, key| match key {
        "prompt_tokens" => s.count(&mut seen[0], &mut u.prompt_tokens),
        "completion_tokens" => s.count(&mut seen[1], &mut u.completion_tokens),
        "total_tokens" => s.count(&mut seen[2], &mut u.total_tokens),
        "cost" => s.number_text(&mut seen[3], &mut u.cost),
        "prompt_tokens_details" => {
            details(s, &mut seen[4], &mut u.prompt_details, |s, key| match key {
                "cached_tokens" => s.count(&mut inner[0], &mut u.cached_tokens),
                "cache_write_tokens" => s.count(&mut inner[1], &mut u.cache_write_tokens),
                _ => s.skip(),
            })
        }
        "completion_tokens_details" => details(
            s,
            &mut seen[5],
            &mut u.completion_details,
            |s, key| match key {
                "reasoning_tokens" => s.count(&mut inner[2], &mut u.reasoning_tokens),
                _ => s.skip(),
            },
        ),
        "cost_details" => details(s, &mut seen[6], &mut u.cost_details, |s, key| match key {
            "upstream_inference_cost" => {
                s.number_text(&mut inner[3], &mut u.upstream_inference_cost)
            }
            _ => s.skip(),
        }),
        _ => s.skip(),
    })?;
    Some(u)
}

/// A details object of `usage` (its fields through `f`) or null, read once.
fn details<'a>(
    s: &mut Scan<'a>,
    seen: &mut bool,
    object: &mut bool,
    f: impl FnMut(&mut Scan<'a>, &'a str) -> Option<()>,
) -> Option<()> {
    first(seen)?;
    *object = s.object_or_null(f)?;
    Some(())
}

/// The top-level object.
fn body<'a>(s: &mut Scan<'a>) -> Option<Scanned<'a>> {
    let mut body = Scanned {
        choices: Vec::new(),
        model: None,
        usage: None,
    };
    let (mut choices, mut model, mut usage, mut error) = (false, false, false, false);
    s.object(|s, key| match key {
        "choices" => {
            first(&mut choices)?;
            read_choices(s, &mut body.choices)
        }
        "model" => {
            first(&mut model)?;
            body.model = s.string_or_null()?;
            Some(())
        }
        "usage" => {
            first(&mut usage)?;
            body.usage = Some(usage_here(s)?);
            Some(())
        }
        // `error: null` is none; an error beside choices is left to serde_json.
        "error" => {
            first(&mut error)?;
            (s.peek()? == b'n').then_some(())?;
            s.literal(b"null")
        }
        _ => s.skip(),
    })?;
    Some(body)
}

fn read_choices<'a>(s: &mut Scan<'a>, out: &mut Vec<ScannedChoice<'a>>) -> Option<()> {
    if s.peek()? == b'n' {
        return s.literal(b"null");
    }
    s.array(|s| {
        let mut c = ScannedChoice {
            content: None,
            finish_reason: None,
            tool_calls: None,
        };
        let (mut message, mut reason) = (false, false);
        s.object(|s, key| match key {
            "message" => {
                first(&mut message)?;
                read_message(s, &mut c)
            }
            "finish_reason" => {
                first(&mut reason)?;
                c.finish_reason = s.string_or_null()?;
                Some(())
            }
            _ => s.skip(),
        })?;
        out.push(c);
        Some(())
    })
}

fn read_message<'a>(s: &mut Scan<'a>, c: &mut ScannedChoice<'a>) -> Option<()> {
    if s.peek()? == b'n' {
        return s.literal(b"null");
    }
    let (mut content, mut calls) = (false, false);
    s.object(|s, key| match key {
        "content" => {
            first(&mut content)?;
            c.content = s.string_or_null()?;
            Some(())
        }
        "tool_calls" => {
            first(&mut calls)?;
            c.tool_calls = Some(s.raw()?);
            Some(())
        }
        _ => s.skip(),
    })
}
