//! Metrics: plain atomics where the daemons count (cheap enough for the
//! packet path, and embeddable in the time server's per-worker cache-line
//! blocks), exposed through `prometheus-client`.
//!
//! At each scrape a role takes a snapshot of its values into an
//! [`Exposition`] (summing per-worker blocks, reading gauges), which is then
//! registered as a `prometheus_client::collector::Collector` and encoded by
//! prometheus-client in the Prometheus text format 0.0.4: names, `_total`
//! suffixes, label escaping, HELP/TYPE lines and number formatting are
//! prometheus-client's. Why not its own `Counter`: each is an `Arc` to its
//! own allocation, which would scatter a worker's counters over the heap
//! (shared cache lines between cores) instead of one aligned block per worker.
//!
//! Naming follows Prometheus conventions and is checked here: counters end in
//! `_total`, gauges do not; units are in the names (`_seconds`, `_bytes`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The `Content-Type` of what [`Exposition::finish`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// prometheus-client's name for [`add`](Self::add).
    pub fn inc_by(&self, n: u64) {
        self.add(n);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One sample's value, as prometheus-client encodes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Count(u64),
    Int(i64),
    Float(f64),
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(i64::from(v))
            }
        }
    )*};
}
int_value!(i64, i32, u32, u8, bool);

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

type Labels = Vec<(String, String)>;

#[derive(Debug)]
struct Family {
    /// Without `_total` for counters: prometheus-client appends it.
    name: String,
    help: String,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

/// A snapshot of metric families, encoded by prometheus-client.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, name: &str, help: &str, kind: MetricType, samples: Vec<(Labels, Value)>) {
        let name = match kind {
            MetricType::Counter => {
                debug_assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
                name.strip_suffix("_total").unwrap_or(name)
            }
            _ => {
                debug_assert!(
                    !name.ends_with("_total"),
                    "gauge {name} must not end in _total"
                );
                name
            }
        };
        self.families.push(Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            samples,
        });
    }

    /// A counter without labels; `name` ends in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.push(
            name,
            help,
            MetricType::Counter,
            vec![(Labels::new(), Value::Count(value))],
        );
    }

    /// A counter family: one sample per label set.
    pub fn counters(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]) {
        let samples = samples
            .iter()
            .map(|(l, v)| (labels(l), Value::Count(*v)))
            .collect();
        self.push(name, help, MetricType::Counter, samples);
    }

    /// A counter family with one label: `(label value, count)` per sample.
    pub fn counters_by<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let samples = samples
            .into_iter()
            .map(|(v, n)| (labels(&[(label, v)]), Value::Count(n)))
            .collect();
        self.push(name, help, MetricType::Counter, samples);
    }

    /// A gauge family with one label: `(label value, value)` per sample.
    pub fn gauges_by<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        let samples = samples
            .into_iter()
            .map(|(v, x)| (labels(&[(label, v)]), Value::Float(x)))
            .collect();
        self.push(name, help, MetricType::Gauge, samples);
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Into<Value>) {
        self.push(
            name,
            help,
            MetricType::Gauge,
            vec![(Labels::new(), value.into())],
        );
    }

    /// A gauge family.
    pub fn gauges(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        let samples = samples
            .iter()
            .map(|(l, v)| (labels(l), Value::Float(*v)))
            .collect();
        self.push(name, help, MetricType::Gauge, samples);
    }

    /// The Prometheus text (format 0.0.4) of every family, in order.
    pub fn finish(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail; a family that could not be
        // encoded would show as a truncated scrape, never a panic.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

fn encode_value(m: &mut MetricEncoder<'_>, v: Value) -> Result<(), std::fmt::Error> {
    match v {
        Value::Count(c) => m.encode_counter::<NoLabelSet, u64, u64>(&c, None),
        Value::Int(i) => m.encode_gauge(&i),
        Value::Float(f) => m.encode_gauge(&f),
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let mut m = encoder.encode_descriptor(&f.name, &f.help, None, f.kind)?;
            for (labels, v) in &f.samples {
                if labels.is_empty() {
                    encode_value(&mut m, *v)?;
                } else {
                    encode_value(&mut m.encode_family(labels)?, *v)?;
                }
            }
        }
        Ok(())
    }
}

/// The family names (`# TYPE` lines) of a text exposition.
pub fn family_names(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// The families of `text` whose name `docs` never mentions as a whole word
/// (followed by anything but a name character): what a role's test asserts
/// is empty, so a metric cannot be added without documenting it.
pub fn undocumented<'a>(text: &'a str, docs: &str) -> Vec<&'a str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    family_names(text)
        .into_iter()
        .filter(|name| {
            !docs.match_indices(name).any(|(i, _)| {
                let before = docs[..i].chars().next_back().is_none_or(|c| !is_name(c));
                let after = docs[i + name.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !is_name(c));
                before && after
            })
        })
        .collect()
}

/// Metric names written as string literals (`"PREFIX…"`, name characters
/// only) in the `.rs` files under `dir`: with [`undocumented`], a role's test
/// also covers families that only some configurations render.
pub fn names_in_sources(dir: &std::path::Path, prefix: &str) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p)?;
                let quoted = format!("\"{prefix}");
                for (i, _) in text.match_indices(&quoted) {
                    let rest = &text[i + 1..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let name = &rest[..end];
                    let whole = name.len() > prefix.len() && !name.ends_with('_');
                    if whole && rest[end..].starts_with('"') && !names.iter().any(|n| n == name) {
                        names.push(name.to_string());
                    }
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Check for a role's tests: every family in `rendered` and every name in the
/// role's sources (`src_dir`, names starting with `prefix`) is in `docs`.
/// Returns the names missing (the test asserts it is empty).
pub fn missing_from_docs(
    rendered: &str,
    src_dir: &std::path::Path,
    prefix: &str,
    docs: &str,
) -> Vec<String> {
    let mut missing: Vec<String> = undocumented(rendered, docs)
        .into_iter()
        .map(str::to_string)
        .collect();
    let names = names_in_sources(src_dir, prefix).unwrap_or_default();
    assert!(
        !names.is_empty(),
        "no metric names found under {}",
        src_dir.display()
    );
    let listing: String = names
        .iter()
        .map(|n| format!("# TYPE {n} gauge\n"))
        .collect();
    for n in undocumented(&listing, docs) {
        if !missing.iter().any(|m| m == n) {
            missing.push(n.to_string());
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format_through_prometheus_client() {
        let c = Counter::default();
        c.add(3);
        c.inc_by(1);
        let mut e = Exposition::new();
        e.counter("nts_requests_total", "Requests.", c.get());
        e.counters(
            "nts_dropped_total",
            "Drops by reason.",
            &[(&[("reason", "short")], 2), (&[("reason", "a\"b")], 1)],
        );
        e.gauge("nts_up", "Up.", 1);
        e.gauge("nts_offset_seconds", "Offset.", -0.25);
        e.gauges("nts_nan", "Unknown.", &[(&[("source", "x")], f64::NAN)]);
        let s = e.finish();
        assert!(
            s.contains(
                "# HELP nts_requests_total Requests.\n# TYPE nts_requests_total counter\nnts_requests_total 4\n"
            ),
            "{s}"
        );
        assert!(s.contains("nts_dropped_total{reason=\"short\"} 2\n"), "{s}");
        assert!(
            s.contains("nts_dropped_total{reason=\"a\\\"b\"} 1\n"),
            "{s}"
        );
        assert!(s.contains("# TYPE nts_up gauge\nnts_up 1\n"), "{s}");
        assert!(s.contains("nts_offset_seconds -0.25\n"), "{s}");
        assert!(s.contains("nts_nan{source=\"x\"} NaN\n"), "{s}");
        assert_eq!(
            family_names(&s),
            [
                "nts_requests_total",
                "nts_dropped_total",
                "nts_up",
                "nts_offset_seconds",
                "nts_nan"
            ]
        );
    }

    #[test]
    #[should_panic(expected = "must end in _total")]
    #[cfg(debug_assertions)]
    fn a_counter_without_total_is_refused() {
        Exposition::new().counter("nts_requests", "Requests.", 1);
    }

    #[test]
    #[should_panic(expected = "must not end in _total")]
    #[cfg(debug_assertions)]
    fn a_gauge_named_total_is_refused() {
        Exposition::new().gauge("nts_naks_total", "NAKs.", 1);
    }

    #[test]
    fn names_in_sources_finds_literals_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(
            d.path().join("a.rs"),
            "e.counter(\"nts_x_total\", \"nts_x things\", 1);\n// nts_comment\n",
        )
        .unwrap();
        std::fs::write(d.path().join("sub/b.rs"), "(\"nts_y\", 1) \"nts_x_total\"").unwrap();
        std::fs::write(d.path().join("c.txt"), "\"nts_z\"").unwrap();
        assert_eq!(
            names_in_sources(d.path(), "nts_").unwrap(),
            ["nts_x_total", "nts_y"]
        );
        let mut e = Exposition::new();
        e.gauge("nts_w", "W.", 1);
        assert_eq!(
            missing_from_docs(&e.finish(), d.path(), "nts_", "`nts_x_total`"),
            ["nts_w", "nts_y"]
        );
    }

    #[test]
    fn undocumented_finds_names_missing_as_whole_words() {
        let mut e = Exposition::new();
        e.counter("nts_a_total", "A.", 1);
        e.gauge("nts_a", "A gauge.", 1);
        e.gauge("nts_b_seconds", "B.", 1);
        let text = e.finish();
        // `nts_a` appears only inside `nts_a_total`: not documented.
        let docs = "| `nts_a_total` | a |\n| `nts_b_seconds{source}` | b |";
        assert_eq!(undocumented(&text, docs), ["nts_a"]);
        assert!(undocumented(&text, &format!("{docs}\nnts_a")).is_empty());
    }
}
