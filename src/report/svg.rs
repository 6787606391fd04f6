//! The report's charts, as inline SVG written by hand: stacked columns (over time, histograms)
//! and horizontal bars (categories). Text stays text (selectable, searchable, sharp in print),
//! every shape has a `<title>` a browser shows on hover, and a chart of 4,000 bins is a few
//! hundred KB at most (bins are merged to at most [`MAX_COLUMNS`] columns).

use super::html::esc;
use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 40.0;
/// Columns drawn at most; longer series are summed into wider columns.
pub(crate) const MAX_COLUMNS: usize = 240;

/// One stacked layer of a column chart.
pub(crate) struct Layer<'a> {
    pub(crate) name: &'a str,
    pub(crate) color: &'a str,
    pub(crate) values: Vec<f64>,
}

/// 1, 2 or 5 times a power of ten, at least `v`.
pub(crate) fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// A number for an axis: 1200 -> "1.2k".
pub(crate) fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Sums neighbouring columns until at most [`MAX_COLUMNS`] are left; the labels of the first
/// of each group stay.
fn merge(layers: &mut [Layer<'_>], labels: &mut Vec<String>) {
    let n = labels.len();
    if n <= MAX_COLUMNS {
        return;
    }
    let k = n.div_ceil(MAX_COLUMNS);
    for l in layers.iter_mut() {
        l.values = l.values.chunks(k).map(|c| c.iter().sum()).collect();
    }
    *labels = labels.iter().step_by(k).cloned().collect();
}

/// Stacked columns, one per label, with a legend when there is more than one layer.
pub(crate) fn columns(mut layers: Vec<Layer<'_>>, mut labels: Vec<String>, y_unit: &str) -> String {
    merge(&mut layers, &mut labels);
    let n = labels.len().max(1);
    let totals = (0..n).map(|i| {
        layers
            .iter()
            .map(|l| l.values.get(i).copied().unwrap_or(0.0))
            .sum::<f64>()
    });
    let most = totals.fold(0.0, f64::max);
    // Counts get whole ticks: a step of 1, 2, 5, 10, ... jobs, never 1.25.
    let whole = layers
        .iter()
        .all(|l| l.values.iter().all(|v| v.fract() == 0.0));
    let top = match whole {
        true => nice(most / 4.0).max(1.0).ceil() * 4.0,
        false => nice(most),
    };
    let frame = Frame::new(top, n);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img">"#
    );
    frame.axis(&mut s, y_unit);
    frame.stacks(&mut s, &layers, &labels);
    // Every column of a short series (a histogram's bands, the last one too), else about
    // eight labels along the bottom.
    let every = match n <= 12 {
        true => 1,
        false => n.div_ceil(8),
    };
    for (i, label) in labels.iter().enumerate().step_by(every) {
        let x = LEFT + (i as f64 + 0.5) * frame.step;
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"#,
            TOP + frame.h + 16.0,
            esc(label)
        );
    }
    if layers.len() > 1 {
        legend(&mut s, &layers);
    }
    s.push_str("</svg>");
    s
}

/// The plotting area of a column chart: its top value, size, and a column's step and width.
struct Frame {
    top: f64,
    h: f64,
    step: f64,
    bar: f64,
}

impl Frame {
    fn new(top: f64, columns: usize) -> Frame {
        let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let step = w / columns as f64;
        Frame {
            top,
            h,
            step,
            bar: (step * 0.85).max(0.5),
        }
    }

    fn y(&self, v: f64) -> f64 {
        TOP + self.h - v / self.top * self.h
    }

    /// Five grid lines with their values, and the unit along the side.
    fn axis(&self, s: &mut String, y_unit: &str) {
        for t in 0..=4 {
            let v = self.top * t as f64 / 4.0;
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                self.y(v) + 4.0,
                short(v),
                y = self.y(v),
            );
        }
        let _ = write!(
            s,
            r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle" class="tick">{}</text>"#,
            TOP + self.h / 2.0,
            TOP + self.h / 2.0,
            esc(y_unit)
        );
    }

    /// Each label's column, its layers stacked.
    fn stacks(&self, s: &mut String, layers: &[Layer<'_>], labels: &[String]) {
        for (i, label) in labels.iter().enumerate() {
            let x = LEFT + i as f64 * self.step + (self.step - self.bar) / 2.0;
            let mut base = 0.0;
            for l in layers {
                let v = l.values.get(i).copied().unwrap_or(0.0);
                if v <= 0.0 {
                    continue;
                }
                let _ = write!(
                    s,
                    r#"<rect x="{x:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="{}"><title>{}: {} {}</title></rect>"#,
                    self.y(base + v),
                    self.bar,
                    (self.y(base) - self.y(base + v)).max(0.3),
                    l.color,
                    esc(label),
                    short(v),
                    esc(l.name)
                );
                base += v;
            }
        }
    }
}

/// The layers' colours and names, along the bottom.
fn legend(s: &mut String, layers: &[Layer<'_>]) {
    let mut x = LEFT;
    for l in layers {
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
            HEIGHT - 12.0,
            l.color,
            x + 14.0,
            HEIGHT - 3.0,
            esc(l.name)
        );
        x += 24.0 + 7.0 * l.name.len() as f64;
    }
}

/// Horizontal bars: a label, a bar as long as its value, and the value's text.
pub(crate) fn bars(rows: &[(String, f64, String)], color: &str) -> String {
    let row_h = 20.0;
    let label_w = 220.0;
    let text_w = 150.0;
    let height = row_h * rows.len().max(1) as f64 + 6.0;
    let max = rows
        .iter()
        .map(|r| r.1)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let w = WIDTH - label_w - text_w;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" role="img">"#
    );
    for (i, (label, v, text)) in rows.iter().enumerate() {
        let y = 3.0 + i as f64 * row_h;
        let len = (v / max * w).max(if *v > 0.0 { 1.0 } else { 0.0 });
        let shown: String = label.chars().take(34).collect();
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text><rect x="{label_w}" y="{y:.1}" width="{len:.2}" height="{:.1}" fill="{color}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
            label_w - 6.0,
            y + 13.0,
            esc(&shown),
            row_h - 6.0,
            esc(label),
            esc(text),
            label_w + len + 6.0,
            y + 13.0,
            esc(text)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_long_series_are_merged() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(120.0), 200.0);
        assert_eq!(nice(0.3), 0.5);
        // Whole counts: ticks at whole steps.
        let chart = columns(
            vec![Layer {
                name: "jobs",
                color: "#000",
                values: vec![5.0, 3.0],
            }],
            vec!["a".into(), "b".into()],
            "jobs",
        );
        assert!(
            chart.contains(">8<") && !chart.contains(">1.25<"),
            "{chart}"
        );
        assert_eq!(short(1200.0), "1.2k");
        assert_eq!(short(0.25), "0.25");
        let values: Vec<f64> = (0..1000).map(|_| 1.0).collect();
        let labels: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        let svg = columns(
            vec![Layer {
                name: "ok",
                color: "#333",
                values,
            }],
            labels,
            "per s",
        );
        assert!(
            svg.matches("<rect").count() <= MAX_COLUMNS,
            "columns merged"
        );
        assert!(
            svg.contains(": 5 ok</title>"),
            "merged columns add up: {svg}"
        );
        let b = bars(&[("<script>".into(), 2.0, "2 & more".into())], "#333");
        assert!(!b.contains("<script>") && b.contains("&lt;script&gt;"));
    }
}
