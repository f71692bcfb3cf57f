//! Benchmark results: samples per (measurement, target), summarized as median, min and max,
//! written as JSON lines and as a Markdown report with ratios to `direct`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Better {
    Higher,
    Lower,
}

#[derive(Clone, Debug)]
pub(crate) struct Metric {
    pub(crate) name: String,
    pub(crate) unit: &'static str,
    pub(crate) better: Better,
}

#[derive(Default)]
pub(crate) struct Results {
    pub(crate) metrics: Vec<Metric>,
    pub(crate) samples: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    pub(crate) errors: Vec<String>,
}

pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

impl Results {
    pub(crate) fn add(&mut self, name: &str, unit: &'static str, better: Better, target: &str, v: f64) {
        if !self.metrics.iter().any(|m| m.name == name) {
            self.metrics.push(Metric { name: name.to_string(), unit, better });
        }
        self.samples.entry(name.to_string()).or_default().entry(target.to_string()).or_default().push(v);
    }

    pub(crate) fn error(&mut self, what: &str, e: String) {
        eprintln!("  measurement failed: {what}: {e}");
        self.errors.push(format!("{what}: {e}"));
    }

    pub(crate) fn summary(&self, name: &str, target: &str) -> Option<Summary> {
        let mut v = self.samples.get(name)?.get(target)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
        Some(Summary { median, min: v[0], max: v[v.len() - 1], n: v.len() })
    }

    /// One JSON object per (measurement, target).
    pub(crate) fn json_lines(&self) -> String {
        let mut out = String::new();
        for m in &self.metrics {
            for (target, samples) in &self.samples[&m.name] {
                if let Some(s) = self.summary(&m.name, target) {
                    let ratio = self.summary(&m.name, "direct").filter(|_| target != "direct").map(|d| s.median / d.median);
                    let line = json!({"measurement": m.name, "target": target, "unit": m.unit, "median": s.median, "min": s.min, "max": s.max, "samples": samples, "ratio_to_direct": ratio});
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        out
    }

    /// A Markdown table: one row per measurement, a column per target, ratios to `direct`.
    pub(crate) fn markdown_table(&self, targets: &[String]) -> String {
        let mut out = String::from("| measurement | unit | better |");
        for t in targets {
            let _ = write!(out, " {t} (median [min–max]) |");
        }
        for t in targets.iter().filter(|t| *t != "direct") {
            let _ = write!(out, " {t} / direct |");
        }
        out.push_str("\n|---|---|---|");
        out.push_str(&"---|".repeat(targets.len() * 2 - targets.iter().filter(|t| *t == "direct").count()));
        out.push('\n');
        for m in &self.metrics {
            let _ = write!(out, "| {} | {} | {} |", m.name, m.unit, if m.better == Better::Higher { "higher" } else { "lower" });
            for t in targets {
                match self.summary(&m.name, t) {
                    Some(s) if s.n > 1 => {
                        let _ = write!(out, " {} [{}–{}] |", fmt(s.median), fmt(s.min), fmt(s.max));
                    }
                    Some(s) => {
                        let _ = write!(out, " {} |", fmt(s.median));
                    }
                    None => out.push_str(" – |"),
                }
            }
            for t in targets.iter().filter(|t| *t != "direct") {
                match (self.summary(&m.name, t), self.summary(&m.name, "direct")) {
                    (Some(a), Some(d)) if d.median != 0.0 => {
                        let _ = write!(out, " {:.2}× |", a.median / d.median);
                    }
                    _ => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out
    }
}

pub(crate) fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
