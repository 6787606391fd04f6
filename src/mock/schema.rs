//! Answers shaped by a JSON Schema, as a provider's structured output gives them: a value that
//! conforms (deterministic in the request), or on purpose one that does not, for the runner's
//! validation to catch. Covers the schema vocabulary labeling uses: objects, arrays, enums,
//! strings, integers and numbers with bounds, booleans, `["type", "null"]`, `const`.

use serde_json::{json, Map, Value};

/// A value valid against `schema`.
pub fn conforming(schema: &Value, rng: &mut fastrand::Rng) -> Value {
    conforming_at(schema, rng, 0)
}

fn conforming_at(schema: &Value, rng: &mut fastrand::Rng, depth: usize) -> Value {
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.is_empty() {
            return options[rng.usize(..options.len())].clone();
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (name, p) in props {
                    if depth < 8 {
                        out.insert(name.clone(), conforming_at(p, rng, depth + 1));
                    }
                }
            }
            Value::Object(out)
        }
        "array" => {
            let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(1);
            let max = schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .unwrap_or(min.max(3));
            let n = rng.u64(min..=max.max(min));
            let items = schema.get("items").cloned().unwrap_or(json!({}));
            Value::Array(
                (0..n)
                    .map(|_| conforming_at(&items, rng, depth + 1))
                    .collect(),
            )
        }
        "integer" => {
            let lo = schema.get("minimum").and_then(Value::as_i64).unwrap_or(0);
            let hi = schema
                .get("maximum")
                .and_then(Value::as_i64)
                .unwrap_or(lo + 100);
            json!(rng.i64(lo..=hi.max(lo)))
        }
        "number" => {
            let lo = schema.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
            let hi = schema
                .get("maximum")
                .and_then(Value::as_f64)
                .unwrap_or(lo + 1.0);
            let x = lo + (hi - lo) * rng.f64();
            json!((x * 100.0).round() / 100.0)
        }
        "boolean" => json!(rng.bool()),
        "null" => Value::Null,
        _ => {
            let max = schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .unwrap_or(60) as usize;
            let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(1) as usize;
            let mut s = super::content::words(rng, 6);
            s.truncate(s.char_indices().nth(max).map_or(s.len(), |(i, _)| i));
            while s.chars().count() < min {
                s.push('x');
            }
            Value::String(s)
        }
    }
}

/// A value that `schema` refuses: a conforming one with its first property given the wrong
/// type (or, for a schema that is not an object, a value of the wrong type).
pub fn off_schema(schema: &Value, rng: &mut fastrand::Rng) -> Value {
    let wrong = |s: &Value| match s.get("type").and_then(Value::as_str) {
        Some("string") | None => json!(12345),
        Some("boolean") => json!("perhaps"),
        _ => json!("none of these"),
    };
    let mut v = conforming(schema, rng);
    match (&mut v, schema.get("properties").and_then(Value::as_object)) {
        (Value::Object(out), Some(props)) if !props.is_empty() => {
            if let Some((name, p)) = props.iter().next() {
                let bad = if p.get("enum").is_some() && p.get("type").is_none() {
                    json!("not-an-option")
                } else {
                    wrong(p)
                };
                out.insert(name.clone(), bad);
            }
            v
        }
        _ => wrong(schema),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Value {
        json!({
            "type": "object",
            "properties": {
                "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "reason": {"type": "string", "maxLength": 20},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                "spam": {"type": "boolean"},
                "note": {"type": ["string", "null"]},
            },
            "required": ["sentiment", "rating", "score", "reason", "tags", "spam", "note"],
            "additionalProperties": false,
        })
    }

    #[test]
    fn conforming_values_validate_and_off_schema_ones_do_not() {
        let schema = labels();
        let v = jsonschema::validator_for(&schema).unwrap();
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let good = conforming(&schema, &mut rng);
            assert!(v.is_valid(&good), "{good}");
            let bad = off_schema(&schema, &mut rng);
            assert!(!v.is_valid(&bad), "{bad}");
        }
        let enum_only = json!({"properties": {"a": {"enum": ["x"]}}, "required": ["a"]});
        let v = jsonschema::validator_for(&enum_only).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(v.is_valid(&conforming(&enum_only, &mut rng)));
        assert!(!v.is_valid(&off_schema(&enum_only, &mut rng)));
    }
}
