//! Parquet output read back with the parquet/arrow crates: schema, values, resume, export.

use crate::harness::*;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use bulkprompt::mock::MockConfig;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

fn read(path: &Path) -> (arrow_schema::SchemaRef, Vec<RecordBatch>) {
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let schema = b.schema().clone();
    let batches = b.build().unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    (schema, batches)
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> &'a dyn Array {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_ref()
}

#[test]
fn parquet_has_real_types_and_the_same_values_as_the_journal() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let csv = "id,text,lang\nr1,Très bien — 很好,fr\nr2,fine,en\nr3,\"multi\nline\",en\n";
    // Answers include non-ASCII words (the simulator's vocabulary has some).
    let input = dir.write("reviews.csv", csv);
    let out = dir.path("out.parquet");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--template",
            "{text}",
            "--model",
            "google/gemini-2.0-flash-001",
            "--content-json",
        ],
    );
    assert_code(&o, 0);
    let journal = dir.path(".bulkprompt/out.parquet.journal.jsonl");
    let recs = records_by_id(&journal);
    let (schema, batches) = read(&out);
    let types: HashMap<&str, &DataType> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    for (name, t) in [
        ("id", DataType::Utf8),
        ("index", DataType::Int64),
        ("content", DataType::Utf8),
        ("prompt_tokens", DataType::Int64),
        ("cost_usd", DataType::Float64),
        ("error_http_status", DataType::Int32),
        ("content_json_ok", DataType::Boolean),
        ("meta_lang", DataType::Utf8),
        (
            "started_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        ),
    ] {
        assert_eq!(types.get(name).copied(), Some(&t), "column {name}");
    }
    assert!(
        !types.contains_key("meta_text"),
        "template fields are not metadata"
    );
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 3);
    assert!(
        recs.values()
            .any(|r| !r.content.as_deref().unwrap().is_ascii()),
        "some answer should be non-ASCII"
    );
    for b in &batches {
        let ids = column(b, "id").as_string::<i32>();
        let content = column(b, "content").as_string::<i32>();
        let cost = column(b, "cost_usd").as_primitive::<Float64Type>();
        let prompt = column(b, "prompt_tokens").as_primitive::<Int64Type>();
        let lang = column(b, "meta_lang").as_string::<i32>();
        for i in 0..b.num_rows() {
            let r = &recs[ids.value(i)];
            assert_eq!(content.value(i), r.content.as_deref().unwrap());
            assert_eq!(cost.value(i), r.cost_usd.unwrap());
            assert_eq!(prompt.value(i) as u64, r.prompt_tokens.unwrap());
            assert_eq!(lang.value(i), r.metadata["lang"]);
        }
    }
}

#[test]
fn failed_rows_have_null_usage_and_their_error() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let mut jobs = chat_jobs(3);
    jobs.push_str(&rejected_job("bad"));
    let input = dir.write("jobs.jsonl", jobs);
    let out = dir.path("out.parquet");
    assert_code(&run(&input, &out, &mock.url(), &[]), 2);
    let (_, batches) = read(&out);
    let mut seen_bad = false;
    for b in &batches {
        let ids = column(b, "id").as_string::<i32>();
        for i in 0..b.num_rows() {
            if ids.value(i) == "bad" {
                seen_bad = true;
                assert!(column(b, "prompt_tokens").is_null(i));
                assert!(column(b, "cost_usd").is_null(i));
                assert_eq!(
                    column(b, "error_kind").as_string::<i32>().value(i),
                    "client"
                );
                assert_eq!(
                    column(b, "error_http_status")
                        .as_primitive::<Int32Type>()
                        .value(i),
                    400
                );
                assert_eq!(column(b, "status").as_string::<i32>().value(i), "failed");
            } else {
                assert!(column(b, "error_kind").is_null(i));
            }
        }
    }
    assert!(seen_bad);
}

#[test]
fn a_killed_parquet_run_resumes_to_one_row_per_id() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(30),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(600));
    let out = dir.path("out.parquet");
    let journal = dir.path(".bulkprompt/out.parquet.journal.jsonl");
    let mut child = run_cmd(&input, &out, &mock.url(), &["--concurrency", "32"])
        .spawn()
        .unwrap();
    let lines = || std::fs::read(&journal).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    while lines() < 150 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "no Parquet file before a run finishes");
    assert_code(&run(&input, &out, &mock.url(), &["--concurrency", "32"]), 0);
    let (_, batches) = read(&out);
    let mut ids: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let a = column(b, "id").as_string::<i32>();
            (0..b.num_rows())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((n, ids.len()), (600, 600));
    // status reads the journal of a Parquet output.
    let st = bulkprompt()
        .args(["status", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("600 in file: 600 done"),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
}

#[test]
fn export_converts_a_jsonl_output() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(25));
    let out = dir.path("out.jsonl");
    assert_code(
        &run(
            &input,
            &out,
            &mock.url(),
            &["--model", "google/gemini-2.0-flash-001"],
        ),
        0,
    );
    let pq = dir.path("x.parquet");
    let o = bulkprompt()
        .args(["export", out.to_str().unwrap(), "-o", pq.to_str().unwrap()])
        .output()
        .unwrap();
    assert_code(&o, 0);
    let (_, batches) = read(&pq);
    let total: f64 = batches
        .iter()
        .map(|b| {
            column(b, "cost_usd")
                .as_primitive::<Float64Type>()
                .iter()
                .flatten()
                .sum::<f64>()
        })
        .sum();
    let expect: f64 = records(&out).iter().filter_map(|r| r.cost_usd).sum();
    assert!((total - expect).abs() < 1e-12);
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 25);
}
