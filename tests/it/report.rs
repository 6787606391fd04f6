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
