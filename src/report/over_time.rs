//! The report's sections along the run's time: completions and failures a second, and the
//! attempts a second with the retries among them by kind. Each record counts in the bin of
//! its job's end (a record does not say when each of its attempts was made).

use super::aggregate::{Aggregate, Bin};
use super::html::{clock, KIND_COLORS, OK};
use super::svg::{columns, Layer};
use crate::estimate::thousands;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// The columns along the run's time: one per bin from the first to the last, empty ones too.
struct Axis {
    start: u64,
    width_ms: u64,
    labels: Vec<String>,
}

impl Axis {
    fn of(a: &Aggregate) -> Option<Axis> {
        let start = *a.bins.keys().next()?;
        let end = *a.bins.keys().next_back()?;
        let n = ((end - start) / a.bin_ms + 1) as usize;
        let labels = (0..n as u64)
            .map(|i| {
                let at = start + i * a.bin_ms;
                let t = SystemTime::UNIX_EPOCH + Duration::from_millis(at);
                match a.bin_ms % 1000 {
                    0 => clock(t),
                    _ => format!("{}.{}", clock(t), at % 1000 / 100),
                }
            })
            .collect();
        Some(Axis {
            start,
            width_ms: a.bin_ms,
            labels,
        })
    }

    /// `value` of each bin, a second, in column order.
    fn per_second(&self, a: &Aggregate, value: impl Fn(&Bin) -> u64) -> Vec<f64> {
        let per = self.width_ms as f64 / 1000.0;
        let mut v = vec![0.0; self.labels.len()];
        for (t, b) in &a.bins {
            v[((t - self.start) / self.width_ms) as usize] = value(b) as f64 / per;
        }
        v
    }

    /// One layer a kind, coloured in the order of `kinds`.
    fn by_kind<'a>(
        &self,
        a: &Aggregate,
        kinds: &[&'a str],
        of: impl Fn(&Bin) -> &BTreeMap<&'static str, u64>,
    ) -> Vec<Layer<'a>> {
        kinds
            .iter()
            .enumerate()
            .map(|(j, k)| Layer {
                name: k,
                color: KIND_COLORS[j % KIND_COLORS.len()],
                values: self.per_second(a, |b| of(b).get(k).copied().unwrap_or(0)),
            })
            .collect()
    }

    fn width(&self) -> String {
        match self.width_ms {
            w if w < 1000 => format!("{:.1} s", w as f64 / 1000.0),
            w => format!("{} s", w / 1000),
        }
    }
}

/// Completions a second (ok, and failed by kind), failures alone, and the attempts with their
/// retries.
pub(crate) fn over_time(s: &mut String, a: &Aggregate) {
    let Some(axis) = Axis::of(a) else {
        return;
    };
    let kinds: Vec<&str> = a.failed_by_kind.keys().copied().collect();
    let mut layers = vec![Layer {
        name: "ok",
        color: OK,
        values: axis.per_second(a, |b| b.ok),
    }];
    layers.extend(axis.by_kind(a, &kinds, |b| &b.failed));
    let _ = write!(
        s,
        "<h2>Completions per second</h2>{}<p class=\"note\">UTC; {} a column before merging.</p>",
        columns(layers, axis.labels.clone(), "records / s"),
        axis.width()
    );
    if a.failed > 0 {
        let _ = write!(
            s,
            "<h2>Failures by kind over time</h2>{}",
            columns(
                axis.by_kind(a, &kinds, |b| &b.failed),
                axis.labels.clone(),
                "failures / s"
            )
        );
    }
    retries(s, a, &axis);
}

/// Attempts a second: each job's last, and the ones retried before it by kind.
fn retries(s: &mut String, a: &Aggregate, axis: &Axis) {
    let retried: u64 = a.retried.values().sum();
    if retried == 0 {
        return;
    }
    let kinds: Vec<&str> = a.retried.keys().copied().collect();
    let last = |b: &Bin| b.attempts.saturating_sub(b.retried.values().sum());
    let mut layers = vec![Layer {
        name: "last attempt",
        color: OK,
        values: axis.per_second(a, last),
    }];
    layers.extend(axis.by_kind(a, &kinds, |b| &b.retried));
    let by_kind: Vec<String> = a
        .retried
        .iter()
        .map(|(k, n)| format!(r#"<span data-retried="{k}">{}</span> {k}"#, thousands(*n)))
        .collect();
    let _ = write!(
        s,
        r#"<h2>Attempts and retries over time</h2><p><span data-figure="retried">{}</span> of {} attempts were retried: {}.</p>{}<p class="note">Each job's attempts count when it ended.</p>"#,
        thousands(retried),
        thousands(a.attempts),
        by_kind.join(", "),
        columns(layers, axis.labels.clone(), "attempts / s"),
    );
}
