//! Prometheus metrics: request counts and latencies by route, bytes in and out, grains
//! written and read, and open store sessions, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Method;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// One route's requests: (method, status) → count, and method → latency.
#[derive(Default)]
struct RouteStats {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// The service's counters.
#[derive(Default)]
pub struct Metrics {
    /// Route → its requests. Keyed by route, looked up by `&str`, so recording a request
    /// allocates nothing once its route has been seen. A std mutex: held for one update.
    routes: Mutex<BTreeMap<String, RouteStats>>,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    grains_written: AtomicU64,
    grains_read: AtomicU64,
}

impl Metrics {
    /// Records one request's outcome and its time to response headers.
    pub fn record_request(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let method = method_label(method);
        let seconds = elapsed.as_secs_f64();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let stats = match routes.get_mut(route) {
            Some(stats) => stats,
            None => routes.entry(route.to_owned()).or_default(),
        };
        *stats.requests.entry((method, status)).or_default() += 1;
        let h = stats.latency.entry(method).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Counts request body bytes.
    pub fn add_received(&self, n: u64) {
        self.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts response body bytes.
    pub fn add_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts grains newly stored.
    pub fn add_grains_written(&self, n: u64) {
        self.grains_written.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts grains sent to clients.
    pub fn add_grains_read(&self, n: u64) {
        self.grains_read.fetch_add(n, Ordering::Relaxed);
    }

    /// The text exposition, with the gauges and the backend's own figures sampled now.
    pub fn render(&self, gauges: &Gauges, store: &[crate::store::StoreMetric]) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP grainstore_http_requests_total HTTP requests by route, method and status."
        );
        let _ = writeln!(out, "# TYPE grainstore_http_requests_total counter");
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for (route, stats) in routes.iter() {
            for ((method, status), n) in &stats.requests {
                let _ = writeln!(
                    out,
                    "grainstore_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP grainstore_http_request_duration_seconds Time to response headers."
        );
        let _ = writeln!(
            out,
            "# TYPE grainstore_http_request_duration_seconds histogram"
        );
        for (route, method, h) in routes
            .iter()
            .flat_map(|(route, s)| s.latency.iter().map(move |(m, h)| (route, m, h)))
        {
            let labels = format!("route=\"{}\",method=\"{method}\"", escape(route));
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "grainstore_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "grainstore_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "grainstore_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "grainstore_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        let counters = [
            (
                "grainstore_http_received_bytes_total",
                "Request body bytes received (grain uploads and JSON bodies).",
                &self.bytes_received,
            ),
            (
                "grainstore_http_sent_bytes_total",
                "Response body bytes sent (JSON counted before compression).",
                &self.bytes_sent,
            ),
            (
                "grainstore_grains_written_total",
                "Grains newly stored.",
                &self.grains_written,
            ),
            (
                "grainstore_grains_read_total",
                "Grains sent to clients.",
                &self.grains_read,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let gauges = [
            (
                "grainstore_store_sessions_active",
                "Open store sessions, read and write.",
                gauges.sessions_active,
            ),
            (
                "grainstore_store_sessions_max",
                "The most store sessions that may be open.",
                gauges.sessions_max,
            ),
            (
                "grainstore_live_streams_open",
                "Live streams open: SSE subscriptions, follow=true reads and /events.",
                gauges.live_streams,
            ),
            (
                "grainstore_live_fanouts",
                "Flows with SSE subscribers, each with one fan-out reading its new grains.",
                gauges.live_fanouts,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        for m in store {
            let kind = if m.counter { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
            let _ = writeln!(out, "# TYPE {} {kind}", m.name);
            let _ = writeln!(out, "{} {}", m.name, m.value);
        }
        out
    }
}

/// The gauges of the exposition, sampled when it is rendered.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Store sessions open now.
    pub sessions_active: usize,
    /// The session pool's capacity.
    pub sessions_max: usize,
    /// Live streams open now.
    pub live_streams: usize,
    /// Per-flow fan-outs running now.
    pub live_fanouts: usize,
}

/// The method as a label; methods other than the standard ones are counted together.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
