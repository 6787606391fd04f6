//! The run report: the numbers on the page are the output's, read back from the HTML; what came
//! from a job file is escaped; the page needs nothing from the network.

use crate::harness::*;
use bulkprompt::mock::{Fault, MockConfig};
use bulkprompt::output::Status;

/// The text of the element carrying `data-ATTR="NAME"`.
fn figure(html: &str, attr: &str, name: &str) -> String {
    let needle = format!("data-{attr}=\"{name}\">");
    let at = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no {needle} in the report"))
        + needle.len();
    html[at..].split('<').next().unwrap().to_string()
}

fn number(text: &str) -> f64 {
    text.trim_start_matches('$')
        .replace(',', "")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_reports_figures_are_the_outputs() {
    let mock = Mock::start(MockConfig::with_fault(Fault::ServerError, 0.1));
    let dir = Dir::new();
    let mut jobs: String = (0..300)
        .map(|i| {
            format!(
                "{{\"id\":\"j{i}\",\"model\":\"{}\",\"max_tokens\":30,\"messages\":[{{\"role\":\"user\",\"content\":\"Label {i}\"}}]}}\n",
                if i % 3 == 0 { "google/gemini-2.0-flash-lite-001" } else { "google/gemini-2.0-flash-001" }
            )
        })
        .collect();
    // An id a browser would run, if it were not escaped: the dearest job (its long prompt),
    // so it is listed.
    jobs.push_str(&format!("{{\"id\":\"<script>alert(1)</script>\",\"model\":\"google/gemini-2.0-flash-001\",\"max_tokens\":30,\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}\n", "word ".repeat(2000)));
    let input = dir.write("jobs.jsonl", jobs);
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--max-attempts",
            "1",
            "--circuit-breaker",
            "0",
            "--report",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    assert_code(&o, 2);
    let recs = records_by_id(&out);
    let html = std::fs::read_to_string(dir.path("out.jsonl.report.html")).unwrap();
    let ok = recs.values().filter(|r| r.status == Status::Ok).count();
    let failed = recs.len() - ok;
    assert!(failed > 0 && ok > 0, "{ok} ok, {failed} failed");
    assert_eq!(
        number(&figure(&html, "figure", "jobs")) as usize,
        recs.len()
    );
    assert_eq!(number(&figure(&html, "figure", "ok")) as usize, ok);
    assert_eq!(number(&figure(&html, "figure", "failed")) as usize, failed);
    assert_eq!(
        number(&figure(&html, "failed-kind", "server")) as usize,
        failed
    );
    let cost: f64 = recs.values().filter_map(|r| r.cost_usd).sum();
    assert!((number(&figure(&html, "figure", "cost")) - cost).abs() < 1e-6);
    let tokens: u64 = recs.values().filter_map(|r| r.prompt_tokens).sum();
    assert_eq!(
        number(&figure(&html, "figure", "prompt_tokens")) as u64,
        tokens
    );
    let lite: f64 = recs
        .values()
        .filter(|r| r.model == "google/gemini-2.0-flash-lite-001")
        .filter_map(|r| r.cost_usd)
        .sum();
    let shown = figure(&html, "model-cost", "google/gemini-2.0-flash-lite-001");
    assert!((number(&shown) - lite).abs() < 1e-6, "{shown} vs {lite}");
    // The run's own figures come from its summary.
    let s = summary(&sum);
    let rate = number(&figure(&html, "figure", "requests_per_sec"));
    assert!((rate - s["requests_per_sec"].as_f64().unwrap()).abs() < 0.1);
    // Data stays data; the page fetches nothing and runs nothing.
    assert!(!html.contains("<script>"), "an id became markup");
    if recs["<script>alert(1)</script>"].status == Status::Ok {
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }
    for fetch in ["src=", "href=", "<link", "<img", "url(", "@import"] {
        assert!(
            !html.contains(fetch),
            "the page would fetch something: {fetch}"
        );
    }
    assert!(html.matches("<svg").count() >= 4, "charts");
    // The estimate of the job file, beside the actual, per model.
    let est = figure(&html, "estimate", "google/gemini-2.0-flash-lite-001");
    assert!(est.contains("at most $"), "{est}");

    // The same report from the command, and never over the output itself.
    let o = bulkprompt()
        .args(["report"])
        .arg(&out)
        .arg("-o")
        .arg(dir.path("r.html"))
        .output()
        .unwrap();
    assert_code(&o, 0);
    let again = std::fs::read_to_string(dir.path("r.html")).unwrap();
    assert_eq!(
        figure(&again, "figure", "ok"),
        figure(&html, "figure", "ok")
    );
    let o = bulkprompt()
        .args(["report"])
        .arg(&out)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert_eq!(records_by_id(&out).len(), recs.len(), "the output is whole");
}

#[test]
fn a_labeling_runs_report_shows_each_labels_distribution() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let out = dir.path("labels.parquet");
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/label-reviews.toml");
    let o = bulkprompt()
        .args(["run", "-c"])
        .arg(&spec)
        .args([
            "--endpoint",
            &mock.url(),
            "--rpm",
            "1000000",
            "--quiet",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_code(&o, 0);
    let o = bulkprompt().arg("report").arg(&out).output().unwrap();
    assert_code(&o, 0);
    let html = std::fs::read_to_string(dir.path("labels.parquet.report.html")).unwrap();
    let recs = records(&dir.path(".bulkprompt/labels.parquet.journal.jsonl"));
    assert_eq!(
        number(&figure(&html, "figure", "labeled")) as usize,
        recs.len()
    );
    assert!(
        html.contains("data-field=\"sentiment\""),
        "a bar per label value"
    );
    // Each sentiment value's count, as the bars' texts say it.
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for r in &recs {
        let v = r.parsed.as_ref().unwrap()["sentiment"]
            .as_str()
            .unwrap()
            .to_string();
        *counts.entry(v).or_default() += 1;
    }
    let at = html.find("data-field=\"sentiment\"").unwrap();
    let section = &html[at..at + html[at..].find("</svg>").unwrap()];
    for (v, n) in counts {
        assert!(
            section.contains(&format!("<title>{v}: {n} (")),
            "{v} x {n} not in {section}"
        );
    }
}

#[test]
fn the_report_leads_with_how_the_run_went_in_words() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    // A model with no price: every cost is 0.
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--model", "no-price-model", "--report"],
    );
    assert_code(&o, 0);
    let html = std::fs::read_to_string(dir.path("out.jsonl.report.html")).unwrap();
    let this_run = html
        .find("<h2>This run</h2>")
        .expect("the run's own section");
    let over_time = html.find("Completions per second").unwrap_or(usize::MAX);
    assert!(this_run < over_time, "the outcome comes before the charts");
    assert!(
        html.contains("<td>done (exit 0)</td>"),
        "the outcome in words"
    );
    assert!(!html.contains("Completed (exit"), "not a type name");
    assert!(
        !html.contains("The most expensive jobs"),
        "no list of arbitrary ids when nothing cost anything"
    );
    assert!(
        html.contains("<th>status</th>"),
        "the slowest jobs say their status"
    );
}

#[test]
fn the_report_prices_the_estimate_with_the_runs_own_price_file() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(10));
    let prices = dir.write(
        "prices.toml",
        "[models.\"house-model\"]\ninput = 1.0\noutput = 2.0\nsource = \"https://example.test/prices\"\nread_on = \"2026-12-04\"\n",
    );
    let out = dir.path("out.jsonl");
    let p = prices.display().to_string();
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--model", "house-model", "--prices", &p],
    );
    assert_code(&o, 0);
    let o = bulkprompt().arg("report").arg(&out).output().unwrap();
    assert_code(&o, 0);
    let html = std::fs::read_to_string(dir.path("out.jsonl.report.html")).unwrap();
    let row = html
        .split("data-estimate=\"house-model\">")
        .nth(1)
        .expect("an estimate row for the model");
    assert!(
        !row.starts_with("no price"),
        "{}",
        &row[..row.len().min(80)]
    );
}

/// The `<title>` texts of the columns inside the element carrying `data-ATTR="NAME"`, as
/// (label, value) pairs.
fn columns_of(html: &str, attr: &str, name: &str) -> Vec<(String, f64)> {
    let at = html
        .find(&format!("data-{attr}=\"{name}\""))
        .unwrap_or_else(|| panic!("no data-{attr}={name:?} in the report"));
    let section = &html[at..at + html[at..].find("</svg>").unwrap()];
    section
        .split("<title>")
        .skip(1)
        .map(|t| {
            let t = t.split("</title>").next().unwrap();
            let (label, v) = t.rsplit_once(": ").unwrap();
            (label.to_string(), number(v))
        })
        .collect()
}

#[test]
fn the_report_shows_the_retries_by_kind_and_the_records_carry_them() {
    let mock = Mock::start(MockConfig::with_fault(Fault::ServerError, 0.4));
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(160));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--max-attempts", "4", "--circuit-breaker", "0", "--report"],
    );
    assert!(o.status.code() == Some(0) || o.status.code() == Some(2));
    let recs = records_by_id(&out);
    // Every failed attempt before a job's last was retried, and the record says by what.
    let mut retried = 0u64;
    for r in recs.values() {
        let said: u32 = r.retries.iter().flatten().map(|(_, n)| *n).sum();
        assert_eq!(said, r.attempts - 1, "{}: {:?}", r.id, r.retries);
        retried += u64::from(said);
    }
    let attempts: u64 = recs.values().map(|r| u64::from(r.attempts)).sum();
    assert_eq!(
        attempts,
        mock.stats().requests,
        "the simulator saw each attempt"
    );
    assert!(retried > 20, "{retried} retries at a 40% fault rate");
    let html = std::fs::read_to_string(dir.path("out.jsonl.report.html")).unwrap();
    assert_eq!(number(&figure(&html, "figure", "retried")) as u64, retried);
    assert_eq!(number(&figure(&html, "retried", "server")) as u64, retried);
    assert!(html.contains("<h2>Attempts and retries over time</h2>"));
}

#[test]
fn a_numeric_label_is_drawn_as_a_histogram() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let schema = dir.write(
        "s.json",
        r#"{"type":"object","additionalProperties":false,"required":["label","confidence"],
            "properties":{"label":{"enum":["spam","ham"]},
                          "confidence":{"type":"number","minimum":0,"maximum":1}}}"#,
    );
    let input = dir.write("jobs.jsonl", chat_jobs(300));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--json-schema", schema.to_str().unwrap(), "--report"],
    );
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    let values: Vec<f64> = recs
        .values()
        .map(|r| r.parsed.as_ref().unwrap()["confidence"].as_f64().unwrap())
        .collect();
    let html = std::fs::read_to_string(dir.path("out.jsonl.report.html")).unwrap();
    assert_eq!(
        number(&figure(&html, "figure", "confidence.count")) as usize,
        300
    );
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let shown = number(&figure(&html, "figure", "confidence.mean"));
    assert!((shown - mean).abs() < 0.0006, "{shown} vs {mean}");
    // Twenty columns of 0.05 from 0, every answer in one, each as many as the output has.
    let cols = columns_of(&html, "histogram", "confidence");
    assert!(!cols.is_empty() && cols.len() <= 20, "{cols:?}");
    assert_eq!(cols.iter().map(|c| c.1).sum::<f64>() as usize, 300);
    for (label, n) in &cols {
        let lo: f64 = label.parse().unwrap();
        let inside = values
            .iter()
            .filter(|&&v| v >= lo - 1e-9 && (v < lo + 0.05 - 1e-9 || (lo >= 0.95 - 1e-9)))
            .count();
        assert_eq!(inside as f64, *n, "the column from {label}");
    }
    // The word label keeps its bars.
    assert!(html.contains("data-field=\"label\""));
}

#[test]
fn a_short_run_has_tenth_of_a_second_columns_and_the_latency_bands_all_labels() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(50));
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &mock.url(), &["--report"]);
    assert_code(&o, 0);
    let html = std::fs::read_to_string(dir.path("out.jsonl.report.html")).unwrap();
    assert!(
        html.contains("0.1 s a column before merging"),
        "a run of under a second is not one column"
    );
    // Each latency band drawn is named under its column.
    let at = html.find("<h2>Latency</h2>").unwrap();
    let svg = &html[at..at + html[at..].find("</svg>").unwrap()];
    let bars = svg.matches("<rect").count();
    let ticks = svg.matches("class=\"tick\">&lt;").count() + svg.matches(">longer<").count();
    assert!(
        bars > 0 && ticks >= bars,
        "{bars} bars, {ticks} band labels"
    );
}
