//! Parquet job files: read row group by row group, with the same rules as CSV. The same rows as
//! Parquet (written here with the arrow crates) and as CSV make the same requests.

use crate::harness::*;
use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use bulkprompt::mock::MockConfig;
use std::path::Path;
use std::sync::Arc;

struct Row {
    id: &'static str,
    text: &'static str,
    n: Option<i64>,
    score: f64,
    ok: bool,
    note: Option<&'static str>,
    tags: Vec<&'static str>,
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            id: "r1",
            text: "She said \"great\", then left.",
            n: Some(3),
            score: 2.5,
            ok: true,
            note: Some("first"),
            tags: vec!["a", "b"],
        },
        Row {
            id: "r2",
            text: "two\nlines, and a comma",
            n: None,
            score: -0.125,
            ok: false,
            note: None,
            tags: vec![],
        },
        Row {
            id: "r3",
            text: "naïve café 東京 — ünïcödé",
            n: Some(-42),
            score: 1e21,
            ok: true,
            note: Some("with \"quotes\""),
            tags: vec!["x\"y"],
        },
    ]
}

fn write_parquet(path: &Path, rows: &[Row]) {
    let mut tags = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for t in &r.tags {
            tags.values().append_value(t);
        }
        tags.append(true);
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "id",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.id))),
        ),
        (
            "text",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.text))),
        ),
        (
            "n",
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.n))),
        ),
        (
            "score",
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.score))),
        ),
        (
            "ok",
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.ok)))),
        ),
        (
            "note",
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.note))),
        ),
        ("tags", Arc::new(tags.finish())),
    ];
    write_table(path, columns);
}

/// One row group of `columns`, written with the arrow crates.
fn write_table(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The same rows as a CSV file holds them: a null as an empty cell, a list as JSON text.
fn write_csv(path: &Path, rows: &[Row]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(["id", "text", "n", "score", "ok", "note", "tags"])
        .unwrap();
    for r in rows {
        w.write_record([
            r.id.to_string(),
            r.text.to_string(),
            r.n.map(|n| n.to_string()).unwrap_or_default(),
            serde_json::json!(r.score).to_string(),
            r.ok.to_string(),
            r.note.unwrap_or_default().to_string(),
            serde_json::json!(r.tags).to_string(),
        ])
        .unwrap();
    }
    w.flush().unwrap();
}

const TEMPLATE: &str = "T={text} | N={n} | S={score} | B={ok} | L={tags}";

#[test]
fn a_parquet_job_file_renders_exactly_like_the_same_rows_as_csv() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let pq = dir.path("jobs.parquet");
    write_parquet(&pq, &rows());
    let csv = dir.path("jobs.csv");
    write_csv(&csv, &rows());
    let run_one = |input: &Path, out: &str| {
        let out = dir.path(out);
        let o = run(
            input,
            &out,
            &mock.url(),
            &["--template", TEMPLATE, "--keep-prompt"],
        );
        assert_code(&o, 0);
        records_by_id(&out)
    };
    let from_pq = run_one(&pq, "pq.jsonl");
    let from_csv = run_one(&csv, "csv.jsonl");
    assert_eq!(from_pq.len(), 3);
    for (id, a) in &from_pq {
        let b = &from_csv[id];
        assert_eq!(a.prompt, b.prompt, "{id}: prompts differ");
        assert_eq!(a.metadata, b.metadata, "{id}: metadata differ");
        assert_eq!(a.fingerprint, b.fingerprint, "{id}: requests differ");
        assert_eq!(a.index, b.index);
    }
    let p = from_pq["r3"].prompt.as_ref().unwrap()[0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        p,
        "T=naïve café 東京 — ünïcödé | N=-42 | S=1e+21 | B=true | L=[\"x\\\"y\"]"
    );
    assert_eq!(
        from_pq["r2"].metadata["note"], "",
        "a null is an empty cell"
    );
    // Resumes like any job file: the re-run sends nothing.
    let before = mock.stats().requests;
    run_one(&pq, "pq.jsonl");
    assert_eq!(mock.stats().requests, before);
    // `--input-format parquet` for a file named otherwise; validate and estimate read it too.
    let renamed = dir.path("jobs.bin");
    std::fs::copy(&pq, &renamed).unwrap();
    let o = bulkprompt()
        .args(["validate"])
        .arg(&renamed)
        .args([
            "--input-format",
            "parquet",
            "--template",
            TEMPLATE,
            "--model",
            "m",
        ])
        .output()
        .unwrap();
    assert_code(&o, 0);
    let o = bulkprompt()
        .args(["estimate"])
        .arg(&pq)
        .args([
            "--template",
            TEMPLATE,
            "--model",
            "google/gemini-2.0-flash-001",
        ])
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 jobs"));
}

#[test]
fn parquet_problems_name_the_row_and_images_come_from_a_column() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    // An empty id on row 2 and a missing column: row numbers, before anything is sent.
    let pq = dir.path("bad.parquet");
    write_table(
        &pq,
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "", "c"])) as ArrayRef,
            ),
            (
                "text",
                Arc::new(StringArray::from(vec!["x", "y", "z"])) as ArrayRef,
            ),
        ],
    );
    let o = run(
        &pq,
        &dir.path("o.jsonl"),
        &mock.url(),
        &["--template", "{text}"],
    );
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("bad.parquet:2: column \"id\": empty id"),
        "{}",
        stderr(&o)
    );
    let o = run(
        &pq,
        &dir.path("o.jsonl"),
        &mock.url(),
        &["--template", "{nope}"],
    );
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("template field {nope}: no such column"),
        "{}",
        stderr(&o)
    );
    // Not Parquet at all.
    let fake = dir.write("fake.parquet", "id,text\n1,x\n");
    let o = run(
        &fake,
        &dir.path("o.jsonl"),
        &mock.url(),
        &["--template", "{text}"],
    );
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("not a readable Parquet file"),
        "{}",
        stderr(&o)
    );
    assert_eq!(mock.stats().requests, 0);

    // An image column of files beside the job file.
    dir.write(
        "img/p.png",
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01",
    );
    let pq = dir.path("img.parquet");
    write_table(
        &pq,
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            (
                "caption",
                Arc::new(StringArray::from(vec!["shoe", "bag"])) as ArrayRef,
            ),
            (
                "photo",
                Arc::new(StringArray::from(vec![Some("img/p.png"), None])) as ArrayRef,
            ),
        ],
    );
    let o = run(
        &pq,
        &dir.path("img.jsonl"),
        &mock.url(),
        &[
            "--template",
            "Describe: {caption}",
            "--image-column",
            "photo",
        ],
    );
    assert_code(&o, 0);
    assert_eq!(
        mock.stats().images,
        1,
        "one row has a photo, the other none"
    );
}

#[test]
fn parquet_dates_before_1970_and_after_9999_are_ordinary_data() {
    use arrow_array::{Date32Array, TimestampSecondArray};
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let pq = dir.path("people.parquet");
    write_table(
        &pq,
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
            (
                "born",
                // 1900-01-01, 1969-12-31, and a year past 9999.
                Arc::new(Date32Array::from(vec![-25_567, -1, 2_932_897])) as ArrayRef,
            ),
            (
                "seen",
                Arc::new(TimestampSecondArray::from(vec![-1, -2_208_988_800, 0])) as ArrayRef,
            ),
        ],
    );
    let o = bulkprompt()
        .args(["validate"])
        .arg(&pq)
        .args(["--template", "{born} {seen}", "--model", "m"])
        .output()
        .unwrap();
    assert_code(&o, 0);
    let out = dir.path("o.jsonl");
    let o = run(
        &pq,
        &out,
        &mock.url(),
        &["--template", "born {born}, seen {seen}", "--keep-prompt"],
    );
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    let prompt = |id: &str| {
        recs[id].prompt.as_ref().unwrap()[0]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        prompt("a"),
        "born 1900-01-01, seen 1969-12-31T23:59:59.000000000Z"
    );
    assert_eq!(
        prompt("b"),
        "born 1969-12-31, seen 1900-01-01T00:00:00.000000000Z"
    );
    assert_eq!(
        prompt("c"),
        "born +10000-01-01, seen 1970-01-01T00:00:00.000000000Z"
    );
}
