//! Labeling: answers validated against a JSON Schema into `parsed` and typed Parquet columns,
//! invalid answers asked again and paid for exactly, images, tool calls, several choices and
//! fallback models, all against the simulator.

use crate::harness::*;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::Array;
use arrow_schema::DataType;
use bulkprompt::mock::{Fault, MockConfig};
use bulkprompt::output::Status;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::{Path, PathBuf};

const MODEL: &str = "google/gemini-2.0-flash-001";

fn demo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("jobs")
        .join(name)
}

/// The demo's flags for the reviews CSV, with the schema.
fn label_args<'a>(schema: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--model",
        MODEL,
        "--id-column",
        "review_id",
        "--template",
        "Review of the {product} ({stars} stars). {title}: {review}",
        "--json-schema",
        schema,
    ];
    a.extend(extra);
    a
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo("review-labels.schema.json")).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn a_schema_run_over_the_demo_csv_gives_every_record_a_valid_parsed_label() {
    let mut mock_cfg = MockConfig::default();
    mock_cfg.faults.set(Fault::Fenced, 0.3);
    mock_cfg.capture_bodies = true;
    let mock = Mock::start(mock_cfg);
    let dir = Dir::new();
    let out = dir.path("labels.jsonl");
    let schema = demo("review-labels.schema.json");
    let o = run(
        &demo("reviews.csv"),
        &out,
        &mock.url(),
        &label_args(schema.to_str().unwrap(), &["--schema-name", "review_label"]),
    );
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 300);
    let v = validator();
    let mut fenced = 0;
    for r in recs.values() {
        assert_eq!(r.status, Status::Ok, "{r:?}");
        let parsed = r.parsed.as_ref().expect("parsed");
        assert!(v.is_valid(parsed), "{parsed}");
        fenced += usize::from(r.content.as_deref().unwrap().starts_with("```"));
    }
    assert!(fenced > 30, "{fenced} fenced answers were unwrapped");
    // Sent as a strict json_schema response_format, named as asked.
    let body = &mock.bodies()[0];
    let rf = &body["response_format"];
    assert_eq!(rf["type"], "json_schema");
    assert_eq!(rf["json_schema"]["name"], "review_label");
    assert_eq!(rf["json_schema"]["strict"], true);
    assert_eq!(rf["json_schema"]["schema"]["required"][0], "sentiment");
}

#[test]
fn invalid_answers_are_asked_again_counted_and_paid_for_exactly() {
    let mut mock_cfg = MockConfig::default();
    mock_cfg.faults.set(Fault::OffSchema, 0.2);
    mock_cfg.seed = 11;
    let mock = Mock::start(mock_cfg);
    let dir = Dir::new();
    let out = dir.path("labels.parquet");
    let sum = dir.path("s.json");
    let schema = demo("review-labels.schema.json");
    let o = run(
        &demo("reviews.csv"),
        &out,
        &mock.url(),
        &label_args(
            schema.to_str().unwrap(),
            &[
                "--retry-invalid",
                "2",
                "--summary-json",
                sum.to_str().unwrap(),
            ],
        ),
    );
    // Some jobs may draw three invalid answers in a row (0.8% each): those are failures.
    let journal = dir.path(".bulkprompt/labels.parquet.journal.jsonl");
    let recs = records_by_id(&journal);
    assert_eq!(recs.len(), 300);
    let s = typed_summary(&sum);
    let invalid_left = recs
        .values()
        .filter(|r| {
            r.error
                .as_ref()
                .is_some_and(|e| e.kind.as_str() == "invalid_output")
        })
        .count();
    assert_code(&o, if invalid_left > 0 { 2 } else { 0 });
    assert!(invalid_left <= 10, "{invalid_left}");
    let v = validator();
    for r in recs.values() {
        match r.status {
            // Wherever a valid retry came, the record is it.
            Status::Ok => assert!(v.is_valid(r.parsed.as_ref().unwrap())),
            Status::Failed => {
                let e = r.error.as_ref().unwrap();
                assert_eq!(e.kind.as_str(), "invalid_output");
                assert!(
                    e.message.contains("does not match the schema"),
                    "{}",
                    e.message
                );
                assert!(r.parsed.is_none() && r.attempts == 3);
            }
        }
    }
    // The summary counts every invalid answer; the simulator answered each one.
    let retried = recs
        .values()
        .map(|r| u64::from(r.attempts - 1))
        .sum::<u64>();
    assert_eq!(s.invalid_answers, retried + invalid_left as u64);
    assert!(s.invalid_answers > 30, "{}", s.invalid_answers);
    assert_eq!(mock.stats().ok, 300 + retried);
    assert!(s.invalid_cost_usd > 0.0);
    // Money is exact: what the records say is what the simulator billed.
    let recorded: f64 = recs.values().map(|r| r.cost_usd.unwrap()).sum();
    let billed = mock.stats().billed as f64 / 1e12;
    assert!(
        (recorded - billed).abs() < 1e-9,
        "recorded {recorded} vs billed {billed}"
    );
    // A re-run does not buy the invalid ones again.
    let o = run(
        &demo("reviews.csv"),
        &out,
        &mock.url(),
        &label_args(schema.to_str().unwrap(), &[]),
    );
    assert!(
        o.status.code() == Some(0) || o.status.code() == Some(2),
        "{}",
        stderr(&o)
    );
    assert_eq!(mock.stats().ok, 300 + retried);

    // Parquet: parsed as JSON text and one typed column per property.
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&out).unwrap()).unwrap();
    let types: Vec<(String, DataType)> = b
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    for (name, t) in [
        ("parsed", DataType::Utf8),
        ("parsed_sentiment", DataType::Utf8),
        ("parsed_rating", DataType::Int64),
        ("parsed_reason", DataType::Utf8),
    ] {
        assert!(
            types.contains(&(name.to_string(), t.clone())),
            "{name}: {types:?}"
        );
    }
    let batches: Vec<_> = b.build().unwrap().collect::<Result<_, _>>().unwrap();
    let mut by_label = std::collections::BTreeMap::new();
    for batch in &batches {
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        let labels = batch
            .column_by_name("parsed_sentiment")
            .unwrap()
            .as_string::<i32>();
        let ratings = batch
            .column_by_name("parsed_rating")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let r = &recs[ids.value(i)];
            match &r.parsed {
                Some(p) => {
                    assert_eq!(labels.value(i), p["sentiment"].as_str().unwrap());
                    assert_eq!(ratings.value(i), p["rating"].as_i64().unwrap());
                    *by_label.entry(labels.value(i).to_string()).or_insert(0) += 1;
                }
                None => assert!(labels.is_null(i) && ratings.is_null(i)),
            }
        }
    }
    assert!(by_label.len() >= 3, "{by_label:?}");

    // export finds the run's schema in its meta: the same typed columns.
    let exported = dir.path("again.parquet");
    let o = bulkprompt()
        .args(["export"])
        .arg(&journal)
        .arg("-o")
        .arg(&exported)
        .output()
        .unwrap();
    assert_code(&o, 0);
    let b =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&exported).unwrap()).unwrap();
    assert_eq!(
        b.schema()
            .field_with_name("parsed_rating")
            .unwrap()
            .data_type(),
        &DataType::Int64
    );
    // CSV has the same parsed_<property> columns, for a spreadsheet.
    let csv_out = dir.path("labels.csv");
    let o = bulkprompt()
        .args(["export"])
        .arg(&journal)
        .arg("-o")
        .arg(&csv_out)
        .output()
        .unwrap();
    assert_code(&o, 0);
    let mut rd = csv::Reader::from_path(&csv_out).unwrap();
    let header = rd.headers().unwrap().clone();
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (id, sentiment, rating) = (at("id"), at("parsed_sentiment"), at("parsed_rating"));
    for row in rd.records() {
        let row = row.unwrap();
        let r = &recs[&row[id]];
        if let Some(p) = &r.parsed {
            assert_eq!(&row[sentiment], p["sentiment"].as_str().unwrap());
            assert_eq!(
                row[rating].parse::<i64>().unwrap(),
                p["rating"].as_i64().unwrap()
            );
        }
    }
}

#[test]
fn a_schema_that_is_not_one_is_refused_before_anything_is_sent() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    let out = dir.path("out.jsonl");
    for (file, text, says) in [
        (
            "bad.json",
            r#"{"type": "strin"}"#,
            "not a valid JSON Schema",
        ),
        (
            "broken.json",
            "{\"type\":\n  \"object\",,}",
            "broken.json:2:",
        ),
    ] {
        let schema = dir.write(file, text);
        let o = run(
            &input,
            &out,
            &mock.url(),
            &["--json-schema", schema.to_str().unwrap()],
        );
        assert_code(&o, 1);
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
    // A job's own schema is checked as its line is.
    let job = r#"{"id":"a","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"objekt"}}}}"#;
    let input = dir.write("own.jsonl", format!("{job}\n"));
    let o = run(&input, &out, &mock.url(), &[]);
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("own.jsonl:1")
            && stderr(&o).contains("response_format.json_schema.schema"),
        "{}",
        stderr(&o)
    );
    assert_eq!(mock.stats().requests, 0);
}

#[test]
fn tool_calls_and_several_choices_are_kept() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write(
        "reviews.csv",
        "id,review\nr1,Great speaker\nr2,Broke in a week\n",
    );
    let out = dir.path("out.jsonl");
    let tools = r#"[{"type":"function","function":{"name":"record_label","parameters":{"type":"object","properties":{"label":{"type":"string","enum":["good","bad"]}},"required":["label"]}}}]"#;
    let tools_param = format!("tools={tools}");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--template",
            "{review}",
            "--param",
            &tools_param,
            "--param",
            "tool_choice=required",
        ],
    );
    assert_code(&o, 0);
    for r in records_by_id(&out).values() {
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
        let calls: serde_json::Value =
            serde_json::from_str(r.tool_calls.as_ref().expect("tool_calls").get()).unwrap();
        assert_eq!(calls[0]["function"]["name"], "record_label");
        let args: serde_json::Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args["label"] == "good" || args["label"] == "bad", "{args}");
    }

    // n = 3 with a schema: every choice kept, each parsed; content is the first.
    let out = dir.path("choices.jsonl");
    let schema = demo("review-labels.schema.json");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--template",
            "{review}",
            "--param",
            "n=3",
            "--json-schema",
            schema.to_str().unwrap(),
        ],
    );
    assert_code(&o, 0);
    for r in records_by_id(&out).values() {
        let choices = r.choices.as_ref().expect("choices");
        assert_eq!(choices.len(), 3);
        assert_eq!(choices[0].content, r.content);
        assert!(choices.iter().all(|c| c.parsed.is_some()));
        assert_eq!(choices[0].parsed, r.parsed);
    }
}

#[test]
fn an_unknown_model_falls_back_to_the_next_and_the_record_says_so() {
    let mock = Mock::start(MockConfig {
        refuse_unknown_models: true,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--model",
            "acme/retired-model",
            "--fallback-model",
            "acme/also-gone",
            "--fallback-model",
            MODEL,
        ],
    );
    assert_code(&o, 0);
    for r in records_by_id(&out).values() {
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.model, "acme/retired-model");
        assert_eq!(r.fallback_model.as_deref(), Some(MODEL));
        assert_eq!(r.attempts, 3);
        // Priced as the model that answered.
        assert!(r.cost_usd.unwrap() > 0.0);
    }
    // Without a fallback: a 404 is the job's failure, with the provider's message.
    let out = dir.path("none.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--model", "acme/retired-model"],
    );
    assert_code(&o, 2);
    let r = records(&out).pop().unwrap();
    let e = r.error.unwrap();
    assert_eq!((e.kind.as_str(), e.http_status), ("client", Some(404)));
    assert!(e.message.contains("does not exist"), "{}", e.message);
}

/// A tiny PNG and JPEG (their magic bytes and a little more: the simulator only checks that
/// the base64 decodes, the runner that the type is known).
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01";

#[test]
fn images_from_files_and_urls_are_sent_as_data_urls_and_checked_first() {
    let mock = Mock::start(MockConfig {
        capture_bodies: true,
        ..Default::default()
    });
    let dir = Dir::new();
    dir.write("img/shoe.png", PNG);
    dir.write("img/bag.jpg", JPEG);
    let csv = "id,caption,photo\n\
               p1,a shoe,img/shoe.png\n\
               p2,a bag,img/bag.jpg\n\
               p3,a hat,https://example.test/hat.webp\n\
               p4,no photo,\n";
    let input = dir.write("products.csv", csv);
    let out = dir.path("out.jsonl");
    let args = [
        "--template",
        "Describe: {caption}",
        "--image-column",
        "photo",
        "--model",
        MODEL,
    ];
    let o = run(&input, &out, &mock.url(), &args);
    assert_code(&o, 0);
    let b64 = |bytes: &[u8]| {
        // The runner's encoding, checked against a plain implementation.
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(table[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    };
    let mut urls = std::collections::BTreeMap::new();
    for body in mock.bodies() {
        let content = &body["messages"][0]["content"];
        let text = match content {
            serde_json::Value::Array(parts) => {
                if let Some(url) = parts
                    .get(1)
                    .map(|p| p["image_url"]["url"].as_str().unwrap())
                {
                    urls.insert(
                        parts[0]["text"].as_str().unwrap().to_string(),
                        url.to_string(),
                    );
                }
                parts[0]["text"].as_str().unwrap().to_string()
            }
            serde_json::Value::String(s) => s.clone(),
            _ => panic!("{content}"),
        };
        assert!(text.starts_with("Describe"));
    }
    assert_eq!(
        urls["Describe: a shoe"],
        format!("data:image/png;base64,{}", b64(PNG))
    );
    assert_eq!(
        urls["Describe: a bag"],
        format!("data:image/jpeg;base64,{}", b64(JPEG))
    );
    assert_eq!(urls["Describe: a hat"], "https://example.test/hat.webp");
    assert!(!urls.contains_key("Describe: no photo"));
    assert_eq!(mock.stats().images, 3);
    // Priced per image: the model's per-image price is in the record's cost.
    let recs = records_by_id(&out);
    let text_only = recs["p4"].cost_usd.unwrap();
    assert!(recs["p1"].cost_usd.unwrap() > text_only);

    // A changed image re-runs its job (its fingerprint covers the bytes); the others stay.
    dir.write("img/shoe.png", [PNG, b"changed"].concat());
    let before = mock.stats().requests;
    let o = run(&input, &out, &mock.url(), &args);
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, before + 1);

    // A missing file and a file that is no image: input errors with their lines, nothing sent.
    let bad = dir.write(
        "bad.csv",
        "id,caption,photo\nq1,x,img/gone.png\nq2,y,products.csv\n",
    );
    let before = mock.stats().requests;
    let o = run(&bad, &dir.path("bad.jsonl"), &mock.url(), &args);
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("bad.csv:2") && err.contains("gone.png"),
        "{err}"
    );
    assert!(
        err.contains("bad.csv:3") && err.contains("not a PNG, JPEG, GIF or WebP"),
        "{err}"
    );
    assert_eq!(mock.stats().requests, before);

    // estimate counts the images.
    let o = bulkprompt()
        .args(["estimate"])
        .arg(&input)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert_code(&o, 0);
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["images"], 3, "{e}");
}
