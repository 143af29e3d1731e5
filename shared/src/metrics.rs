//! Prometheus metrics, in the text exposition format, served on `/metrics` by both
//! services. A small registry of labelled counters and histograms: enough for what the
//! services count, without a metrics framework on the request path.
//!
//! Label values come only from configuration and from a fixed vocabulary (source names,
//! status codes, sink names, outcomes), never from request paths or payloads, so an
//! attacker cannot grow the registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Every metric: name, type, help.
const METRICS: &[(&str, &str, &str)] = &[
    (
        "hookline_ingest_requests_total",
        "counter",
        "Webhook requests by source and HTTP status.",
    ),
    (
        "hookline_publish_seconds",
        "histogram",
        "Time for the queue to confirm a publish.",
    ),
    (
        "hookline_sink_seconds",
        "histogram",
        "Time per sink call (retries included), by sink and outcome.",
    ),
    (
        "hookline_sink_retries_total",
        "counter",
        "In-process sink retries, by sink.",
    ),
    (
        "hookline_messages_total",
        "counter",
        "Messages settled by the worker, by outcome (ack, duplicate, nack, dead_letter).",
    ),
    (
        "hookline_dead_lettered_total",
        "counter",
        "Messages dead-lettered by the worker, by failing sink.",
    ),
    (
        "hookline_slack_possible_duplicates_total",
        "counter",
        "Slack posts that may be repeated: an attempt found one that may already have posted (a crash between Slack's answer and its record), or a post got no answer though Slack may have received it (a timeout).",
    ),
    (
        "hookline_queue_lag_seconds",
        "histogram",
        "Time from ingest receiving a delivery to the worker starting on it.",
    ),
];

/// Histogram bucket bounds in seconds: 1 ms to 1 min.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

type Key = (&'static str, Vec<(&'static str, String)>);

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Registry {
    counters: BTreeMap<Key, u64>,
    histograms: BTreeMap<Key, Histogram>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds one to a counter.
pub fn inc(name: &'static str, labels: &[(&'static str, &str)]) {
    let key = (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    );
    *registry().counters.entry(key).or_default() += 1;
}

/// Records one observation in a histogram.
pub fn observe(name: &'static str, labels: &[(&'static str, &str)], value: Duration) {
    let secs = value.as_secs_f64();
    let key = (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    );
    let mut reg = registry();
    let h = reg.histograms.entry(key).or_insert_with(|| Histogram {
        counts: vec![0; BUCKETS.len()],
        ..Histogram::default()
    });
    for (i, bound) in BUCKETS.iter().enumerate() {
        if secs <= *bound {
            h.counts[i] += 1;
        }
    }
    h.sum += secs;
    h.count += 1;
}

fn labels(pairs: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The whole registry in Prometheus' text format.
pub fn render() -> String {
    let reg = registry();
    let mut out = String::new();
    for (name, kind, help) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for ((n, l), v) in reg.counters.iter().filter(|((n, _), _)| n == name) {
            let _ = writeln!(out, "{n}{} {v}", labels(l, None));
        }
        for ((n, l), h) in reg.histograms.iter().filter(|((n, _), _)| n == name) {
            for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "{n}_bucket{} {count}",
                    labels(l, Some(("le", bound.to_string())))
                );
            }
            let _ = writeln!(
                out,
                "{n}_bucket{} {}",
                labels(l, Some(("le", "+Inf".into()))),
                h.count
            );
            let _ = writeln!(out, "{n}_sum{} {}", labels(l, None), h.sum);
            let _ = writeln!(out, "{n}_count{} {}", labels(l, None), h.count);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_prometheus_text_format() {
        inc("hookline_sink_retries_total", &[("sink", "unit-test")]);
        inc("hookline_sink_retries_total", &[("sink", "unit-test")]);
        observe(
            "hookline_sink_seconds",
            &[("sink", "unit-test"), ("outcome", "ok")],
            Duration::from_millis(30),
        );
        let text = render();
        assert!(text.contains("# TYPE hookline_sink_retries_total counter"));
        assert!(
            text.contains("hookline_sink_retries_total{sink=\"unit-test\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "hookline_sink_seconds_bucket{sink=\"unit-test\",outcome=\"ok\",le=\"0.025\"} 0\n"
        ));
        assert!(text.contains(
            "hookline_sink_seconds_bucket{sink=\"unit-test\",outcome=\"ok\",le=\"0.05\"} 1\n"
        ));
        assert!(text.contains(
            "hookline_sink_seconds_bucket{sink=\"unit-test\",outcome=\"ok\",le=\"+Inf\"} 1\n"
        ));
        assert!(
            text.contains("hookline_sink_seconds_count{sink=\"unit-test\",outcome=\"ok\"} 1\n")
        );
    }
}
