//! What an answer must be, and whether it is: a job's `response_format` becomes an [`Expect`]
//! (free text, a JSON object, or a JSON Schema), and each answer's content is unwrapped from a
//! markdown fence, parsed and validated against it. A run-wide schema (`--json-schema`) is read
//! and checked once, before anything is sent; validators are compiled once per schema and
//! shared by every job that uses it.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A JSON Schema an answer must satisfy, with a hash of its text to share its validator.
#[derive(Debug, PartialEq)]
pub struct Schema {
    pub hash: u64,
    pub value: Value,
}

impl Schema {
    pub fn new(value: Value) -> Self {
        let hash = xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(&value).unwrap_or_default());
        Schema { hash, value }
    }
}

/// What a job's answers must be.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Expect {
    /// Anything (no `response_format`, or `text`).
    #[default]
    Text,
    /// `json_object`: content that parses as a JSON object.
    JsonObject,
    /// `json_schema`: content valid against the schema.
    Schema(Arc<Schema>),
}

impl Expect {
    /// What a request body's `response_format` asks for. `Err` names the field that is wrong.
    pub fn of_request(body: &Map<String, Value>) -> Result<Expect, String> {
        let Some(rf) = body.get("response_format") else {
            return Ok(Expect::Text);
        };
        let kind = rf.get("type").and_then(Value::as_str);
        match kind {
            Some("text") => Ok(Expect::Text),
            Some("json_object") => Ok(Expect::JsonObject),
            Some("json_schema") => {
                let schema = rf
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .ok_or("field \"response_format.json_schema.schema\": missing")?;
                Ok(Expect::Schema(Arc::new(Schema::new(schema.clone()))))
            }
            // Provider-specific kinds pass through unchecked.
            _ => Ok(Expect::Text),
        }
    }

    pub fn is_text(&self) -> bool {
        matches!(self, Expect::Text)
    }
}

/// Checks that `schema` is a JSON Schema a validator can be built from (draft 2020-12 unless
/// its `$schema` names another, draft 7 included).
pub fn check_schema(schema: &Value) -> Result<(), String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a JSON Schema is an object".into());
    }
    jsonschema::meta::validate(schema).map_err(|e| describe(&e))?;
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    let path = e.instance_path().to_string();
    if path.is_empty() {
        e.to_string()
    } else {
        format!("at {path}: {e}")
    }
}

/// A `--json-schema` file, read and checked.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    pub name: String,
    pub schema: Value,
}

impl SchemaFile {
    /// Reads `path`; the name is `name` or the file's stem (letters, digits, `_` and `-`).
    pub fn load(path: &Path, name: Option<&str>) -> Result<SchemaFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}:{}:{}: not JSON: {e}",
                path.display(),
                e.line(),
                e.column()
            )
        })?;
        check_schema(&schema)
            .map_err(|e| format!("{}: not a valid JSON Schema: {e}", path.display()))?;
        let name = match name {
            Some(n) => n.to_string(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        // Providers take 1-64 of [a-zA-Z0-9_-] (OpenAI's rule).
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let name = if name.is_empty() {
            "answer".into()
        } else {
            name
        };
        Ok(SchemaFile { name, schema })
    }

    /// The `response_format` sent with every job that brings none.
    pub fn response_format(&self) -> Value {
        serde_json::json!({
            "type": "json_schema",
            "json_schema": {"name": self.name, "strict": true, "schema": self.schema},
        })
    }
}

/// The content inside a markdown code fence (```json ... ``` or ``` ... ```), or the content.
pub fn unfence(content: &str) -> &str {
    let t = content.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let Some(body) = rest.strip_suffix("```") else {
        return t;
    };
    // The info string (`json`) runs to the end of the first line.
    match body.find('\n') {
        Some(nl) if body[..nl].chars().all(|c| c.is_ascii_alphanumeric()) => body[nl + 1..].trim(),
        _ => body.trim(),
    }
}

/// Compiled validators, one per schema, shared by the jobs of a run.
#[derive(Default)]
pub struct Validators {
    compiled: Mutex<HashMap<u64, Arc<jsonschema::Validator>>>,
}

impl Validators {
    fn get(&self, schema: &Schema) -> Result<Arc<jsonschema::Validator>, String> {
        let mut map = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get(&schema.hash) {
            return Ok(v.clone());
        }
        let v = Arc::new(jsonschema::validator_for(&schema.value).map_err(|e| describe(&e))?);
        map.insert(schema.hash, v.clone());
        Ok(v)
    }

    /// The parsed answer (None for free text), or why it is not what was asked for.
    pub fn check(&self, expect: &Expect, content: Option<&str>) -> Result<Option<Value>, String> {
        if expect.is_text() {
            return Ok(None);
        }
        let Some(content) = content else {
            return Err("the answer has no content".into());
        };
        let value: Value = serde_json::from_str(unfence(content))
            .map_err(|e| format!("the answer is not JSON: {e}"))?;
        match expect {
            Expect::Text => Ok(None),
            Expect::JsonObject if value.is_object() => Ok(Some(value)),
            Expect::JsonObject => Err("the answer is JSON but not an object".into()),
            Expect::Schema(schema) => {
                let validator = self.get(schema)?;
                let first = validator.iter_errors(&value).next().map(|e| {
                    let path = e.instance_path().to_string();
                    let at = if path.is_empty() { "/".into() } else { path };
                    format!("the answer does not match the schema: at {at}: {e}")
                });
                match first {
                    None => Ok(Some(value)),
                    Some(e) => Err(e),
                }
            }
        }
    }
}

/// The type of a `parsed_<property>` column, from the property's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Utf8,
    Int64,
    Float64,
    Boolean,
    /// Anything else, as JSON text.
    Json,
}

/// One typed column per top-level property of an object schema, in the schema's order.
pub fn typed_columns(schema: &Value) -> Vec<(String, ColumnType)> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, p)| {
            let ty = match p.get("type") {
                Some(Value::String(t)) => t.as_str(),
                // ["string", "null"]: the one type besides null.
                Some(Value::Array(ts)) => {
                    let mut non_null = ts.iter().filter_map(Value::as_str).filter(|t| *t != "null");
                    match (non_null.next(), non_null.next()) {
                        (Some(t), None) => t,
                        _ => "",
                    }
                }
                // An enum of strings alone is a string.
                _ if p
                    .get("enum")
                    .and_then(Value::as_array)
                    .is_some_and(|e| e.iter().all(Value::is_string)) =>
                {
                    "string"
                }
                _ => "",
            };
            let ty = match ty {
                "string" => ColumnType::Utf8,
                "integer" => ColumnType::Int64,
                "number" => ColumnType::Float64,
                "boolean" => ColumnType::Boolean,
                _ => ColumnType::Json,
            };
            (name.clone(), ty)
        })
        .collect()
}

/// The schema a run's jobs were given by default (`params.response_format`), if any.
pub fn run_schema(params: &Map<String, Value>) -> Option<&Value> {
    params
        .get("response_format")
        .filter(|rf| rf.get("type").and_then(Value::as_str) == Some("json_schema"))
        .and_then(|rf| rf.get("json_schema"))
        .and_then(|j| j.get("schema"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Expect {
        Expect::Schema(Arc::new(Schema::new(json!({
            "type": "object",
            "properties": {
                "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                "rating": {"type": "integer", "minimum": 1, "maximum": 5},
            },
            "required": ["sentiment", "rating"],
            "additionalProperties": false,
        }))))
    }

    #[test]
    fn fences_are_unwrapped() {
        assert_eq!(unfence("```json\n{\"a\": 1}\n```"), "{\"a\": 1}");
        assert_eq!(unfence("  ```\n[1]\n```  "), "[1]");
        assert_eq!(unfence("{\"a\": 1}"), "{\"a\": 1}");
        assert_eq!(unfence("```{\"a\": 1}```"), "{\"a\": 1}");
    }

    #[test]
    fn answers_are_checked_against_the_schema() {
        let v = Validators::default();
        let s = schema();
        assert_eq!(
            v.check(
                &s,
                Some("```json\n{\"sentiment\": \"positive\", \"rating\": 5}\n```")
            ),
            Ok(Some(json!({"sentiment": "positive", "rating": 5})))
        );
        let e = v
            .check(&s, Some(r#"{"sentiment": "positive", "rating": 7}"#))
            .unwrap_err();
        assert!(e.contains("/rating") && e.contains('7'), "{e}");
        let e = v
            .check(&s, Some(r#"{"sentiment": "meh", "rating": 2}"#))
            .unwrap_err();
        assert!(e.contains("/sentiment"), "{e}");
        let e = v.check(&s, Some("I think it is positive")).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        assert!(v.check(&s, None).is_err());
        assert_eq!(v.check(&Expect::Text, Some("anything")), Ok(None));
        assert!(v.check(&Expect::JsonObject, Some("[1]")).is_err());
        assert!(v.check(&Expect::JsonObject, Some("{}")).is_ok());
    }

    #[test]
    fn invalid_schemas_are_refused_with_the_reason() {
        assert!(check_schema(&json!({"type": "object"})).is_ok());
        assert!(check_schema(
            &json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"})
        )
        .is_ok());
        let e = check_schema(&json!({"type": "strin"})).unwrap_err();
        assert!(e.contains("strin"), "{e}");
        assert!(check_schema(&json!({"minimum": "one"})).is_err());
        assert!(check_schema(&json!([1])).is_err());
    }

    #[test]
    fn columns_follow_the_property_types() {
        let cols = typed_columns(&json!({"properties": {
            "a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "number"},
            "d": {"type": "boolean"}, "e": {"type": "array"}, "f": {"type": ["string", "null"]},
            "g": {"enum": ["x", "y"]}
        }}));
        use ColumnType::*;
        assert_eq!(
            cols.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
            vec![Utf8, Int64, Float64, Boolean, Json, Utf8, Utf8]
        );
    }

    #[test]
    fn a_request_says_what_it_expects() {
        let body = |rf: Value| json!({"response_format": rf}).as_object().unwrap().clone();
        assert_eq!(Expect::of_request(&Map::new()), Ok(Expect::Text));
        assert_eq!(
            Expect::of_request(&body(json!({"type": "json_object"}))),
            Ok(Expect::JsonObject)
        );
        assert!(matches!(
            Expect::of_request(&body(
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
            )),
            Ok(Expect::Schema(_))
        ));
        assert!(Expect::of_request(&body(json!({"type": "json_schema"}))).is_err());
    }
}
