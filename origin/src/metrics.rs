//! Prometheus metrics, one registry per running origin.
//!
//! A registry per instance (rather than a process-global recorder) keeps two origins in
//! one test process apart, which the "one controller among replicas" test relies on.
//! Hot-path counters are resolved once, so recording is an atomic add.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The origin's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub ingest_accepted: IntCounter,
    pub ingest_events: IntCounter,
    pub ingest_rejected: IntCounterVec,
    pub ingest_latency: Histogram,
    pub signature_failures: IntCounterVec,
    pub aggregate_entries: IntCounterVec,
    pub aggregate_claimed: IntCounter,
    pub control_rounds: IntCounter,
    pub control_leader: IntGauge,
    pub plans_published: IntCounter,
    pub publish_failures: IntCounter,
    pub plan_log_failures: IntCounter,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let ingest_latency = Histogram::with_opts(
            HistogramOpts::new("allot_ingest_duration_seconds", "Time to verify and store an event body.")
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5]),
        )
        .expect("valid histogram");
        r.register(Box::new(ingest_latency.clone())).expect("registered once");
        let control_leader = IntGauge::new("allot_control_leader", "1 while this instance holds the control lease.")
            .expect("valid metric name");
        r.register(Box::new(control_leader.clone())).expect("registered once");
        Self {
            ingest_accepted: counter(&r, "allot_ingest_accepted_total", "Event bodies stored in the stream."),
            ingest_events: counter(&r, "allot_ingest_events_total", "Events stored in the stream."),
            ingest_rejected: counter_vec(
                &r,
                "allot_ingest_rejected_total",
                "Event bodies refused, by HTTP status.",
                &["status"],
            ),
            signature_failures: counter_vec(
                &r,
                "allot_ingest_signature_failures_total",
                "Forged, tampered, stale or replayed event bodies.",
                &["reason"],
            ),
            aggregate_entries: counter_vec(
                &r,
                "allot_aggregate_entries_total",
                "Stream entries processed by the aggregator, by result.",
                &["result"],
            ),
            aggregate_claimed: counter(&r, "allot_aggregate_claimed_total", "Entries claimed from idle consumers."),
            control_rounds: counter(&r, "allot_control_rounds_total", "Control rounds run by this instance."),
            control_leader,
            plans_published: counter(&r, "allot_plans_published_total", "Plans published."),
            publish_failures: counter(&r, "allot_publish_failures_total", "Plans that failed to publish."),
            plan_log_failures: counter(
                &r,
                "allot_plan_log_failures_total",
                "Published plans whose snapshot could not be appended to the plan log.",
            ),
            ingest_latency,
            registry: r,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
