//! Request metrics per origin: counts by status class and a latency histogram.
//!
//! The counters are plain atomics owned by the splitter (no process-wide recorder, so tests
//! run side by side). They are read two ways from the same numbers: the Prometheus text
//! format on `/metrics`, and JSON snapshots on `/status` that the canary subtracts to get
//! one interval's success rate and p99, as `rate()` and `histogram_quantile()` would.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status classes, and "error" for requests that got no response from the origin.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

#[derive(Default)]
pub struct OriginMetrics {
    classes: [AtomicU64; 6],
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    retries: AtomicU64,
}

/// Cumulative numbers of one origin at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub requests: u64,
    /// Indexed like [`CLASSES`].
    pub classes: [u64; 6],
    /// Cumulative counts for each bound of [`BUCKETS`], then +Inf.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
    /// Attempts made again after a connection failure.
    pub retries: u64,
}

impl OriginMetrics {
    /// A response with `status` (None: no response) after `latency`.
    pub fn record(&self, status: Option<u16>, latency: Duration) {
        let class = match status {
            Some(s) if (100..600).contains(&s) => (s / 100 - 1) as usize,
            _ => 5,
        };
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let classes: [u64; 6] = std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed));
        let mut total = 0;
        let buckets = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        Snapshot {
            requests: classes.iter().sum(),
            classes,
            buckets,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// One interval's numbers: the difference of two snapshots.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Window {
    pub requests: u64,
    /// 5xx and no response.
    pub failures: u64,
    /// Percent of requests that were not failures; None without requests.
    pub success_rate: Option<f64>,
    /// Seconds; None without requests.
    pub p99: Option<f64>,
}

impl Snapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Window {
        let requests = self.requests.saturating_sub(earlier.requests);
        let failures = (self.classes[4] + self.classes[5])
            .saturating_sub(earlier.classes[4] + earlier.classes[5]);
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| b.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        Window {
            requests,
            failures,
            success_rate: (requests > 0)
                .then(|| 100.0 * (requests - failures.min(requests)) as f64 / requests as f64),
            p99: quantile(0.99, &buckets),
        }
    }
}

/// The `q` quantile of cumulative bucket counts, interpolated within its bucket the way
/// Prometheus' `histogram_quantile` does; a quantile in +Inf reports the largest bound.
pub fn quantile(q: f64, cumulative: &[u64]) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = cumulative.iter().position(|c| *c as f64 >= rank)?;
    if i >= BUCKETS.len() {
        return Some(BUCKETS[BUCKETS.len() - 1]);
    }
    let (lower, below) = if i == 0 {
        (0.0, 0)
    } else {
        (BUCKETS[i - 1], cumulative[i - 1])
    };
    let in_bucket = (cumulative[i] - below) as f64;
    if in_bucket == 0.0 {
        return Some(BUCKETS[i]);
    }
    Some(lower + (BUCKETS[i] - lower) * (rank - below as f64) / in_bucket)
}

/// A label value in the exposition format: backslash, double quote and newline escaped.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Origin gauges shown beside the counters.
pub struct Gauges<'a> {
    pub origin: &'a str,
    pub up: bool,
    pub weight: u8,
    pub in_flight: u64,
}

/// The Prometheus text format of every origin.
pub fn render(origins: &[(Gauges<'_>, Snapshot)]) -> String {
    let mut out = String::new();
    out.push_str("# HELP cutover_splitter_requests_total Requests answered, by origin and status class (error: no response from the origin).\n# TYPE cutover_splitter_requests_total counter\n");
    for (g, s) in origins {
        for (i, class) in CLASSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "cutover_splitter_requests_total{{origin=\"{}\",class=\"{class}\"}} {}",
                escape(g.origin),
                s.classes[i]
            );
        }
    }
    out.push_str("# HELP cutover_splitter_request_duration_seconds Time to the origin's response headers.\n# TYPE cutover_splitter_request_duration_seconds histogram\n");
    for (g, s) in origins {
        let o = escape(g.origin);
        for (i, count) in s.buckets.iter().enumerate() {
            let le = BUCKETS
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                out,
                "cutover_splitter_request_duration_seconds_bucket{{origin=\"{o}\",le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "cutover_splitter_request_duration_seconds_sum{{origin=\"{o}\"}} {}",
            s.sum_seconds
        );
        let _ = writeln!(
            out,
            "cutover_splitter_request_duration_seconds_count{{origin=\"{o}\"}} {}",
            s.requests
        );
    }
    let gauge = |out: &mut String,
                 name: &str,
                 help: &str,
                 kind: &str,
                 f: &dyn Fn(&Gauges<'_>, &Snapshot) -> String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (g, s) in origins {
            let _ = writeln!(out, "{name}{{origin=\"{}\"}} {}", escape(g.origin), f(g, s));
        }
    };
    gauge(
        &mut out,
        "cutover_splitter_retries_total",
        "Attempts made again after a connection failure.",
        "counter",
        &|_, s| s.retries.to_string(),
    );
    gauge(
        &mut out,
        "cutover_splitter_origin_up",
        "1 when the origin passes its health checks.",
        "gauge",
        &|g, _| u8::from(g.up).to_string(),
    );
    gauge(
        &mut out,
        "cutover_splitter_weight_percent",
        "Share of new users sent to the origin.",
        "gauge",
        &|g, _| g.weight.to_string(),
    );
    gauge(
        &mut out,
        "cutover_splitter_in_flight",
        "Requests (and upgraded connections) in progress.",
        "gauge",
        &|g, _| g.in_flight.to_string(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_subtract_and_p99_interpolates() {
        let m = OriginMetrics::default();
        let before = m.snapshot();
        for _ in 0..98 {
            m.record(Some(200), Duration::from_millis(3));
        }
        m.record(Some(503), Duration::from_millis(3));
        m.record(None, Duration::from_millis(700));
        let w = m.snapshot().since(&before);
        assert_eq!(w.requests, 100);
        assert_eq!(w.failures, 2);
        assert_eq!(w.success_rate, Some(98.0));
        // 99 of 100 are in (0.0025, 0.005]; the 99th is at its upper bound
        assert_eq!(w.p99, Some(0.005));
        let empty = m.snapshot().since(&m.snapshot());
        assert_eq!((empty.success_rate, empty.p99), (None, None));
    }

    #[test]
    fn exposition_escapes_labels_and_has_every_series() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let m = OriginMetrics::default();
        m.record(Some(204), Duration::from_millis(20));
        let text = render(&[(
            Gauges {
                origin: "old",
                up: true,
                weight: 90,
                in_flight: 0,
            },
            m.snapshot(),
        )]);
        assert!(text.contains("cutover_splitter_requests_total{origin=\"old\",class=\"2xx\"} 1\n"));
        assert!(text.contains(
            "cutover_splitter_request_duration_seconds_bucket{origin=\"old\",le=\"0.025\"} 1\n"
        ));
        assert!(text.contains(
            "cutover_splitter_request_duration_seconds_bucket{origin=\"old\",le=\"+Inf\"} 1\n"
        ));
        assert!(text.contains("cutover_splitter_weight_percent{origin=\"old\"} 90\n"));
    }
}
