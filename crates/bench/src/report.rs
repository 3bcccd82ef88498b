//! The table: one row per figure, its baseline, ours, the ratio and the target.

use std::fmt::Write as _;
use std::time::Duration;

/// What a measured number is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    /// A duration.
    Time(Duration),
    /// A size in bytes (peak RSS).
    Bytes(u64),
    /// Operations per second.
    Rate(f64),
    /// A plain count (downloads).
    Count(u64),
}

impl Value {
    fn number(self) -> f64 {
        match self {
            Value::Time(d) => d.as_secs_f64(),
            Value::Bytes(b) => b as f64,
            Value::Rate(r) => r,
            Value::Count(c) => c as f64,
        }
    }

    fn show(self) -> String {
        match self {
            Value::Time(d) => show_time(d),
            Value::Bytes(b) => format!("{:.1} MiB", b as f64 / MIB),
            Value::Rate(r) if r >= 1e6 => format!("{:.2} M/s", r / 1e6),
            Value::Rate(r) => format!("{:.0} k/s", r / 1e3),
            Value::Count(c) => c.to_string(),
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn show_time(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else if s >= 1e-6 {
        format!("{:.2} µs", s * 1e6)
    } else {
        format!("{:.0} ns", s * 1e9)
    }
}

/// The goal of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Target {
    /// ours / baseline at most this.
    RatioAtMost(f64),
    /// ours at most this (same unit as ours).
    AtMost(Value),
    /// ours at least this.
    AtLeast(Value),
    /// ours exactly this.
    Exactly(Value),
}

impl Target {
    fn show(self) -> String {
        match self {
            Target::RatioAtMost(r) => format!("≤ {r:.2}x"),
            Target::AtMost(v) => format!("≤ {}", v.show()),
            Target::AtLeast(v) => format!("≥ {}", v.show()),
            Target::Exactly(v) => format!("= {}", v.show()),
        }
    }
}

/// One figure of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// What is measured (e.g. "cold HTTP fetch, 64 MiB").
    pub(crate) figure: String,
    /// What the baseline is (e.g. "curl -o file").
    pub(crate) baseline_name: String,
    /// The baseline, measured in the same run.
    pub(crate) baseline: Value,
    /// Our figure.
    pub(crate) ours: Value,
    /// The goal.
    pub(crate) target: Target,
}

impl Row {
    /// ours / baseline.
    pub(crate) fn ratio(&self) -> f64 {
        let b = self.baseline.number();
        if b == 0.0 {
            f64::INFINITY
        } else {
            self.ours.number() / b
        }
    }

    /// Whether the target is met.
    pub(crate) fn met(&self) -> bool {
        let ours = self.ours.number();
        match self.target {
            Target::RatioAtMost(r) => self.ratio() <= r,
            Target::AtMost(v) => ours <= v.number(),
            Target::AtLeast(v) => ours >= v.number(),
            Target::Exactly(v) => (ours - v.number()).abs() < f64::EPSILON,
        }
    }
}

/// The markdown table of `rows`.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| Figure | Baseline | Baseline value | wasm-cache | Ratio | Target | Met |\n");
    out.push_str("|---|---|---:|---:|---:|---|:---:|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2}x | {} | {} |",
            r.figure,
            r.baseline_name,
            r.baseline.show(),
            r.ours.show(),
            r.ratio(),
            r.target.show(),
            if r.met() { "yes" } else { "**no**" },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_targets() {
        let row = Row {
            figure: "cold".into(),
            baseline_name: "curl".into(),
            baseline: Value::Time(Duration::from_millis(100)),
            ours: Value::Time(Duration::from_millis(120)),
            target: Target::RatioAtMost(1.3),
        };
        assert!((row.ratio() - 1.2).abs() < 1e-9);
        assert!(row.met());
        let slow = Row {
            ours: Value::Time(Duration::from_millis(140)),
            ..row.clone()
        };
        assert!(!slow.met());
        let rss = Row {
            target: Target::AtMost(Value::Bytes(32 << 20)),
            baseline: Value::Bytes(10 << 20),
            ours: Value::Bytes(33 << 20),
            ..row.clone()
        };
        assert!(!rss.met());
        let once = Row {
            target: Target::Exactly(Value::Count(1)),
            baseline: Value::Count(1),
            ours: Value::Count(1),
            ..row
        };
        assert!(once.met());
        let t = table(&[rss, once]);
        assert!(
            t.contains("| 33.0 MiB | 3.30x | ≤ 32.0 MiB | **no** |"),
            "{t}"
        );
        assert!(t.contains("| 1 | 1.00x | = 1 | yes |"), "{t}");
    }

    #[test]
    fn units() {
        assert_eq!(Value::Time(Duration::from_nanos(850)).show(), "850 ns");
        assert_eq!(Value::Time(Duration::from_micros(1500)).show(), "1.5 ms");
        assert_eq!(Value::Rate(2_500_000.0).show(), "2.50 M/s");
        assert_eq!(Value::Rate(250_000.0).show(), "250 k/s");
    }
}
