//! The report as one self-contained HTML page: inline CSS, inline SVG, no script, no font or
//! image fetched, so it opens offline in any browser and prints as it shows. Every headline
//! figure carries `data-figure="NAME"`, so a test (or a script) reads the numbers back.
//! Everything that came from a job file or a provider (ids, models, messages, labels) is
//! escaped: it is data, never markup.

use super::aggregate::{Aggregate, Field, LATENCY_BANDS};
use super::svg::{bars, columns, short, Layer};
use crate::cost::Money;
use crate::estimate::thousands;
use crate::estimate::Estimate;
use crate::progress::Summary;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// `s` safe inside HTML text and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:820px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.sub{color:#5b6474;margin:0 0 16px}.note{color:#5b6474;font-size:12px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:8px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 10px}
.card .v{display:block;font-size:20px;font-weight:600}.card .k{color:#5b6474;font-size:12px}
.bad .v{color:#b42318}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef2}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;word-break:break-all}
svg.chart{width:100%;height:auto;background:#fff;border:1px solid #dde1e7;border-radius:6px}
svg .tick{font-size:11px;fill:#5b6474}
@media print{body{background:#fff}main{padding:0}.card,svg.chart{break-inside:avoid}}
"#;

pub(crate) const OK: &str = "#3b6fd8";
pub(crate) const KIND_COLORS: [&str; 8] = [
    "#d8453b", "#e8912d", "#8e5bd8", "#2f9e8f", "#c2417d", "#7a8699", "#b8a12a", "#4a4f5a",
];

fn usd(picodollars: u64) -> String {
    let v = Money(picodollars).usd();
    if v >= 100.0 {
        format!("${v:.2}")
    } else if v >= 1.0 {
        format!("${v:.4}")
    } else {
        format!("${v:.6}")
    }
}

pub(crate) fn clock(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(11..19).unwrap_or(&s).to_string()
}

fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

pub(crate) fn card(s: &mut String, name: &str, value: &str, label: &str, bad: bool) {
    let _ = write!(
        s,
        r#"<div class="card{}"><span class="v" data-figure="{name}">{}</span><span class="k">{}</span></div>"#,
        if bad { " bad" } else { "" },
        esc(value),
        esc(label)
    );
}

/// One layer of columns.
pub(crate) fn single(values: Vec<f64>, labels: Vec<String>, y_unit: &str) -> String {
    columns(
        vec![Layer {
            name: y_unit,
            color: OK,
            values,
        }],
        labels,
        y_unit,
    )
}

fn field_rows(f: &Field) -> Vec<(String, f64, String)> {
    let total: u64 = f.values.values().sum::<u64>() + f.other;
    let mut v: Vec<(&String, &u64)> = f.values.iter().collect();
    // Numbers (a rating) in their order; words by how often they came.
    if v.iter().all(|(k, _)| k.parse::<i64>().is_ok()) {
        v.sort_by_key(|(k, _)| k.parse::<i64>().unwrap_or(0));
    } else {
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    }
    let pct = |n: u64| n as f64 * 100.0 / total.max(1) as f64;
    const SHOWN: usize = 15;
    let rest: u64 = f.other + v.iter().skip(SHOWN).map(|(_, &n)| n).sum::<u64>();
    let mut rows: Vec<(String, f64, String)> = v
        .into_iter()
        .take(SHOWN)
        .map(|(k, &n)| {
            (
                k.clone(),
                n as f64,
                format!("{} ({:.1}%)", thousands(n), pct(n)),
            )
        })
        .collect();
    if rest > 0 {
        rows.push((
            "(other values)".into(),
            rest as f64,
            format!("{} ({:.1}%)", thousands(rest), pct(rest)),
        ));
    }
    rows
}

/// The page for `a`, read from `source`; `summary` adds this run's own figures, `estimate`
/// what `bulkprompt estimate` foresaw for the job file.
pub(crate) fn page(
    a: &Aggregate,
    source: &str,
    summary: Option<&Summary>,
    estimate: Result<&Estimate, &String>,
) -> String {
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>bulkprompt report: {}</title><style>{CSS}</style></head><body><main>"#,
        esc(source)
    );
    let _ = write!(
        s,
        r#"<h1>bulkprompt run report</h1><p class="sub"><code>{}</code><br>{} records, made {} by bulkprompt {}</p>"#,
        esc(source),
        thousands(a.records),
        humantime::format_rfc3339_seconds(SystemTime::now()),
        esc(crate::version::version())
    );

    // What matters first: how it went, and what failed.
    headline(&mut s, a, summary);
    this_run(&mut s, summary);
    failures(&mut s, a);
    super::over_time::over_time(&mut s, a);
    labels(&mut s, a);
    estimate_and_actual(&mut s, a, estimate);
    latency(&mut s, a);
    models(&mut s, a);
    attempts(&mut s, a);
    top_lists(&mut s, a);
    let _ = write!(
        s,
        r#"<p class="note">Figures are over each id's latest record; a record's cost includes what its earlier attempts and runs paid. Axis numbers: k thousands, M millions ({} = {}).</p></main></body></html>"#,
        short(1500.0),
        1500
    );
    s
}

/// The report's section: headline.
fn headline(s: &mut String, a: &Aggregate, summary: Option<&Summary>) {
    let span = a.span();
    s.push_str(r#"<div class="cards">"#);
    card(
        s,
        "jobs",
        &thousands(a.records),
        "jobs with a record",
        false,
    );
    card(s, "ok", &thousands(a.ok), "ok", false);
    card(s, "failed", &thousands(a.failed), "failed", a.failed > 0);
    card(s, "cost", &usd(a.cost), "cost (all runs)", false);
    if a.deduplicated > 0 {
        card(
            s,
            "deduplicated",
            &thousands(a.deduplicated),
            "answers reused, not bought (--dedupe)",
            false,
        );
    }
    card(
        s,
        "prompt_tokens",
        &thousands(a.prompt_tokens),
        "tokens in",
        false,
    );
    card(
        s,
        "completion_tokens",
        &thousands(a.completion_tokens),
        "tokens out",
        false,
    );
    let (wall, rate) = match summary {
        Some(sm) => (
            Duration::from_secs_f64(sm.elapsed_secs.max(0.0)),
            sm.requests_per_sec,
        ),
        None => {
            let d = span.unwrap_or_default();
            (d, a.attempts as f64 / d.as_secs_f64().max(1e-3))
        }
    };
    card(
        s,
        "wall",
        &duration(wall),
        if summary.is_some() {
            "wall time (this run)"
        } else {
            "first request to last answer"
        },
        false,
    );
    card(
        s,
        "requests_per_sec",
        &format!("{rate:.1}"),
        "requests a second",
        false,
    );
    s.push_str("</div>");
    if summary.is_none() && a.records > 0 {
        s.push_str(r#"<p class="note">Times span every run that wrote this output, pauses between runs included.</p>"#);
    }
}

/// The report's section: labels.
fn labels(s: &mut String, a: &Aggregate) {
    if a.labeled > 0 || a.invalid > 0 {
        s.push_str("<h2>Labels</h2><div class=\"cards\">");
        card(s, "labeled", &thousands(a.labeled), "answers parsed", false);
        card(
            s,
            "invalid",
            &thousands(a.invalid),
            "invalid answers (failed)",
            a.invalid > 0,
        );
        s.push_str("</div>");
        for (name, f) in &a.fields {
            let total = f.values.values().sum::<u64>() + f.other;
            // Numbers with fractions, or too many different ones for bars: a histogram.
            if let Some(n) = f
                .numbers
                .as_ref()
                .filter(|n| n.fractional || f.values.is_empty() || f.other * 2 > total)
            {
                let _ = write!(s, r#"<h2>Label <code>{}</code></h2>"#, esc(name));
                super::numbers::histogram(s, name, n);
                continue;
            }
            if f.other * 2 > total {
                // Free text (a reason, a summary): no value repeats enough to draw.
                let _ = write!(
                    s,
                    r#"<h2>Label <code>{}</code></h2><p class="note">Free text: more than {} different values, not drawn.</p>"#,
                    esc(name),
                    super::aggregate::MAX_VALUES
                );
                continue;
            }
            let _ = write!(
                s,
                r#"<h2>Label <code>{}</code></h2><div data-field="{}">{}</div>"#,
                esc(name),
                esc(name),
                bars(&field_rows(f), OK)
            );
        }
        if a.fields_dropped {
            s.push_str(r#"<p class="note">More fields than are shown here were labeled.</p>"#);
        }
    }
}

/// The report's section: estimate and actual.
fn estimate_and_actual(s: &mut String, a: &Aggregate, estimate: Result<&Estimate, &String>) {
    match estimate {
        Ok(e) => {
            s.push_str(r#"<h2>Estimate and actual</h2><table><tr><th>model</th><th class="n">jobs</th><th class="n">prompt tokens</th><th class="n">estimated cost</th><th class="n">actual cost</th></tr>"#);
            let range = |typical: Option<f64>, worst: Option<f64>| match (typical, worst) {
                (Some(t), Some(w)) => format!("${t:.6} (at most ${w:.6})"),
                (None, Some(w)) => format!("at most ${w:.6}"),
                _ => "no price".to_string(),
            };
            let shown = super::aggregate::MAX_MODELS;
            for m in e.models.iter().take(shown) {
                let actual = a.by_model.get(&m.model);
                let _ = write!(
                    s,
                    r#"<tr><td><code>{}</code></td><td class="n">{} / {}</td><td class="n">{} / {}</td><td class="n" data-estimate="{}">{}</td><td class="n">{}</td></tr>"#,
                    esc(&m.model),
                    thousands(actual.map_or(0, |r| r.jobs)),
                    thousands(m.jobs),
                    thousands(actual.map_or(0, |r| r.prompt_tokens)),
                    thousands(m.prompt_tokens),
                    esc(&m.model),
                    esc(&range(m.cost_typical_usd, m.cost_worst_usd)),
                    usd(actual.map_or(0, |r| r.cost))
                );
            }
            if e.models.len() > shown {
                let _ = write!(
                    s,
                    r#"<tr><td colspan="5">and {} more models</td></tr>"#,
                    thousands(e.models.len() as u64 - shown as u64)
                );
            }
            let _ = write!(
                s,
                r#"</table><p class="note">Actual / estimated for the whole job file ({} jobs; prompt tokens counted with {}, typical answers {}).</p>"#,
                thousands(e.jobs),
                esc(e.tokenizer),
                esc(e.typical_from.as_deref().unwrap_or("unknown"))
            );
        }
        Err(why) => {
            let _ = write!(
                s,
                r#"<p class="note">No estimate beside the actual: {}.</p>"#,
                esc(why)
            );
        }
    }
}

/// The report's section: latency.
fn latency(s: &mut String, a: &Aggregate) {
    if a.latency.count() > 0 {
        let q = |p: f64| a.latency.quantile(p).unwrap_or(0);
        let _ = write!(s, r#"<h2>Latency</h2><div class="cards">"#);
        card(
            s,
            "p50_ms",
            &format!("{} ms", thousands(q(0.5))),
            "p50",
            false,
        );
        card(
            s,
            "p95_ms",
            &format!("{} ms", thousands(q(0.95))),
            "p95",
            false,
        );
        card(
            s,
            "p99_ms",
            &format!("{} ms", thousands(q(0.99))),
            "p99",
            false,
        );
        card(
            s,
            "max_ms",
            &format!("{} ms", thousands(a.latency.max())),
            "slowest",
            false,
        );
        s.push_str("</div>");
        let last = a.latency_bands.iter().rposition(|&c| c > 0).unwrap_or(0);
        let labels: Vec<String> = LATENCY_BANDS[..=last]
            .iter()
            .map(|&b| match b {
                u64::MAX => "longer".to_string(),
                b if b >= 1000 => format!("< {} s", b / 1000),
                b => format!("< {b} ms"),
            })
            .collect();
        let values = a.latency_bands[..=last].iter().map(|&c| c as f64).collect();
        let _ = write!(
            s,
            "<p></p>{}<p class=\"note\">The last attempt of each job.</p>",
            single(values, labels, "jobs")
        );
    }
}

/// The report's section: models.
fn models(s: &mut String, a: &Aggregate) {
    if !a.by_model.is_empty() {
        s.push_str(r#"<h2>Cost and tokens by model</h2><table><tr><th>model</th><th class="n">jobs</th><th class="n">failed</th><th class="n">tokens in</th><th class="n">tokens out</th><th class="n">cost</th></tr>"#);
        let mut models: Vec<_> = a.by_model.iter().collect();
        models.sort_by(|x, y| y.1.cost.cmp(&x.1.cost).then(x.0.cmp(y.0)));
        for (m, r) in &models {
            let _ = write!(
                s,
                r#"<tr><td><code>{}</code></td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n" data-model-cost="{}">{}</td></tr>"#,
                esc(m),
                thousands(r.jobs),
                thousands(r.failed),
                thousands(r.prompt_tokens),
                thousands(r.completion_tokens),
                esc(m),
                usd(r.cost)
            );
        }
        let o = &a.other_models;
        if o.jobs > 0 {
            let _ = write!(
                s,
                r#"<tr><td>other models</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n" data-model-cost="other models">{}</td></tr>"#,
                thousands(o.jobs),
                thousands(o.failed),
                thousands(o.prompt_tokens),
                thousands(o.completion_tokens),
                usd(o.cost)
            );
        }
        s.push_str("</table>");
        if models.len() > 1 && a.cost > 0 {
            let rows: Vec<_> = models
                .iter()
                .map(|(m, r)| ((*m).clone(), r.cost as f64, usd(r.cost)))
                .collect();
            s.push_str("<p></p>");
            s.push_str(&bars(&rows, OK));
        }
    }
}

/// The report's section: attempts.
fn attempts(s: &mut String, a: &Aggregate) {
    if !a.attempts_per_job.is_empty() {
        let labels: Vec<String> = a
            .attempts_per_job
            .keys()
            .map(|&k| if k >= 10 { "10+".into() } else { k.to_string() })
            .collect();
        let values = a.attempts_per_job.values().map(|&c| c as f64).collect();
        let _ = write!(
            s,
            "<h2>Attempts per job</h2>{}<p class=\"note\">{} HTTP attempts for {} jobs.</p>",
            single(values, labels, "jobs"),
            thousands(a.attempts),
            thousands(a.records)
        );
    }
}

/// The report's section: top lists.
fn top_lists(s: &mut String, a: &Aggregate) {
    let table = |s: &mut String, title: &str, jobs: &[super::aggregate::Job]| {
        let _ = write!(
            s,
            r#"<h2>{title}</h2><table><tr><th>id</th><th>model</th><th>status</th><th class="n">cost</th><th class="n">latency</th></tr>"#
        );
        for j in jobs {
            let _ = write!(
                s,
                r#"<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td class="n">{}</td><td class="n">{} ms</td></tr>"#,
                esc(&j.id),
                esc(&j.model),
                if j.ok { "ok" } else { "failed" },
                usd(j.cost),
                thousands(j.latency_ms)
            );
        }
        s.push_str("</table>");
    };
    // Ten arbitrary ids when nothing cost anything say nothing.
    if a.cost > 0 {
        table(s, "The most expensive jobs", &a.dearest());
    }
    if a.records > 0 {
        table(s, "The slowest jobs", &a.slowest());
    }
}

/// The report's section: errors.
fn failures(s: &mut String, a: &Aggregate) {
    if a.failed > 0 {
        s.push_str(r#"<h2>Failures</h2><table><tr><th>kind</th><th class="n">jobs</th></tr>"#);
        for (k, n) in &a.failed_by_kind {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td class="n" data-failed-kind="{}">{}</td></tr>"#,
                esc(k),
                esc(k),
                thousands(*n)
            );
        }
        s.push_str(r#"</table><p></p><table><tr><th>most frequent messages</th><th class="n">jobs</th></tr>"#);
        for (m, _, text) in field_rows(&a.messages).iter().take(5) {
            let _ = write!(
                s,
                r#"<tr><td><code>{}</code></td><td class="n">{}</td></tr>"#,
                esc(m),
                esc(text)
            );
        }
        s.push_str("</table>");
    }
}

/// The report's section: this run.
fn this_run(s: &mut String, summary: Option<&Summary>) {
    if let Some(sm) = summary {
        let _ = write!(
            s,
            r#"<h2>This run</h2><table><tr><td>outcome</td><td>{} (exit {})</td></tr><tr><td>started, ended</td><td>{} to {}</td></tr><tr><td>jobs in the file</td><td class="n">{}</td></tr><tr><td>new, retried, changed</td><td class="n">{}, {}, {}</td></tr><tr><td>requests, retries, 429s</td><td class="n">{}, {}, {}</td></tr><tr><td>cost this run</td><td class="n">${:.6}</td></tr></table>"#,
            sm.outcome.words(),
            sm.exit_code,
            esc(&sm.started_at),
            esc(&sm.ended_at),
            thousands(sm.jobs),
            thousands(sm.new),
            thousands(sm.retried_failed),
            thousands(sm.changed),
            thousands(sm.requests),
            thousands(sm.retries),
            thousands(sm.http_429),
            sm.cost_usd
        );
        if let Some(m) = &sm.message {
            let _ = write!(s, r#"<p class="note">{}</p>"#, esc(m));
        }
    }
}
