//! Small self-contained SVG line charts: latency by percentile (log-scaled percentile axis,
//! scenarios overlaid) and latency against offered rate (the adaptive search).

use std::fmt::Write;

use crate::histogram::{self, Latency};

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Tick positions on the x axis and their labels.
    pub x_ticks: Vec<(f64, String)>,
    pub series: Vec<Series>,
    /// Horizontal reference lines (label, y), e.g. an SLO.
    pub lines: Vec<(String, f64)>,
}

const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A round axis maximum at or above `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let exp = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * exp >= v {
            return m * exp;
        }
    }
    10.0 * exp
}

impl Chart {
    pub fn render(&self) -> String {
        let (w, h) = (900.0, 520.0);
        let (left, right, top, bottom) = (80.0, 200.0, 50.0, 60.0);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let all = self.series.iter().flat_map(|s| s.points.iter());
        let x_min = all.clone().map(|p| p.0).chain(self.x_ticks.iter().map(|t| t.0)).fold(f64::INFINITY, f64::min);
        let x_max = all.clone().map(|p| p.0).chain(self.x_ticks.iter().map(|t| t.0)).fold(f64::NEG_INFINITY, f64::max);
        let (x_min, x_max) = if x_min.is_finite() && x_max > x_min { (x_min, x_max) } else { (0.0, 1.0) };
        let y_top = all.map(|p| p.1).chain(self.lines.iter().map(|l| l.1)).fold(0.0, f64::max);
        let y_max = nice_max(y_top * 1.05);
        let sx = |x: f64| left + (x - x_min) / (x_max - x_min) * pw;
        let sy = |y: f64| top + ph - (y / y_max) * ph;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            escape(&self.title)
        );
        // Grid and y ticks.
        for i in 0..=5 {
            let y = y_max * i as f64 / 5.0;
            let _ = writeln!(
                out,
                r##"<line x1="{left}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + pw,
                left - 6.0,
                sy(y) + 4.0,
                trim(y),
                py = sy(y)
            );
        }
        for (x, label) in &self.x_ticks {
            let px = sx(*x);
            let _ = writeln!(
                out,
                r##"<line x1="{px:.1}" x2="{px:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
                top + ph,
                top + ph + 18.0,
                escape(label)
            );
        }
        let _ = writeln!(out, r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            h - 15.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            out,
            r#"<text transform="translate(20,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + ph / 2.0,
            escape(&self.y_label)
        );
        for (label, y) in &self.lines {
            let _ = writeln!(
                out,
                r##"<line x1="{left}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#555" stroke-dasharray="6,4"/><text x="{}" y="{:.1}" fill="#555">{}</text>"##,
                left + pw,
                left + 4.0,
                sy(*y) - 4.0,
                escape(label),
                py = sy(*y)
            );
        }
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<String> = s.points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
            let _ = writeln!(
                out,
                r#"<polyline class="series" data-name="{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                escape(&s.name),
                pts.join(" ")
            );
            if s.points.len() < 40 {
                for (x, y) in &s.points {
                    let _ = writeln!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, sx(*x), sy(*y));
                }
            }
            let ly = top + 10.0 + 20.0 * i as f64;
            let _ = writeln!(
                out,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                left + pw + 12.0,
                left + pw + 36.0,
                left + pw + 42.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Points of a latency-by-percentile curve: x = log10(1 / (1 − q)), y = latency in ms.
pub fn percentile_curve(h: &Latency) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return vec![];
    }
    // Stop where the data runs out: past 1 − 1/count every quantile is the maximum.
    let x_end = (h.len() as f64).log10().clamp(1.0, 6.0);
    let mut points: Vec<(f64, f64)> = (0..=((x_end * 20.0) as usize))
        .map(|k| {
            let x = k as f64 / 20.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, histogram::ms(h.value_at_quantile(q)))
        })
        .collect();
    // The curve ends at the maximum (rounding near 1 − 1/count could stop one sample short).
    if let Some(last) = points.last_mut() {
        last.1 = histogram::ms(h.max());
    }
    points
}

pub fn percentile_ticks() -> Vec<(f64, String)> {
    ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64, l.to_string()))
        .collect()
}

/// One chart of latency by percentile for each named histogram.
pub fn latency_by_percentile(title: &str, histograms: &[(String, &Latency)]) -> String {
    let series: Vec<Series> =
        histograms.iter().map(|(name, h)| Series { name: name.clone(), points: percentile_curve(h) }).collect();
    let max_x = series.iter().flat_map(|s| s.points.last()).map(|p| p.0).fold(1.0, f64::max);
    Chart {
        title: title.to_owned(),
        x_label: "percentile (log scale)".into(),
        y_label: "latency (ms)".into(),
        x_ticks: percentile_ticks().into_iter().filter(|(x, _)| *x <= max_x.ceil()).collect(),
        series,
        lines: vec![],
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series() {
        let mut a = histogram::new_latency();
        let mut b = histogram::new_latency();
        for v in 1..10_000u64 {
            a.record(v).unwrap();
            b.record(v * 2).unwrap();
        }
        let svg = latency_by_percentile("t <&>", &[("direct".into(), &a), ("via \"proxy\"".into(), &b)]);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(svg.contains("via &quot;proxy&quot;"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn nice_axis() {
        assert_eq!(nice_max(0.83), 1.0);
        assert_eq!(nice_max(190.0), 200.0);
        assert_eq!(nice_max(2100.0), 2500.0);
    }
}
