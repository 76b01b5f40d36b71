//! Prometheus metrics, one registry per running origin.
//!
//! A registry per instance (rather than a process-global recorder) keeps two origins in
//! one test process apart, which the "one controller among replicas" test relies on.
//! Hot-path counters are resolved once, so recording is an atomic add. The archiver,
//! when it runs in the origin, registers its metrics in the same registry, so `/metrics`
//! is one exposition.

use std::sync::Arc;

use allot_archive::ArchiverMetrics;
use allot_core::Publish;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::MetricsConfig;
use crate::gauges::DeliveryGauges;

/// The origin's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// One exposition at a time ([`Self::render_in_turn`]).
    rendering: Arc<tokio::sync::Semaphore>,
    pub ingest_accepted: IntCounter,
    pub ingest_events: IntCounter,
    pub ingest_rejected: IntCounterVec,
    pub ingest_latency: Histogram,
    pub signature_failures: IntCounterVec,
    pub ingest_dropped: IntCounterVec,
    pub ingest_duplicates: IntCounter,
    /// Bodies answered `503 overloaded` before being read ([`crate::shed`]).
    pub ingest_shed: IntCounter,
    pub edge_dropped: IntCounter,
    pub aggregate_entries: IntCounterVec,
    pub aggregate_claimed: IntCounter,
    pub aggregate_late_events: IntCounter,
    pub aggregate_late_impressions: IntCounter,
    pub control_rounds: IntCounter,
    pub control_state_discarded: IntCounter,
    pub control_leader: IntGauge,
    pub control_epoch: IntGauge,
    pub control_fenced: IntCounterVec,
    /// Plans published, by why: each is a write to the edges' plan store, and the
    /// reason (`core::Publish`, or `withdrawn`) tells what drives those writes.
    pub plans_published: IntCounterVec,
    pub publish_failures: IntCounter,
    /// Pushes the edge refused for holding a version at or above the one pushed, each
    /// pushed again above it.
    pub publish_superseded: IntCounter,
    pub plan_log_failures: IntCounter,
    pub audit_feed_failures: IntCounter,
    /// Delivery gauges: per placement for every placement, per campaign for as many
    /// pairs as `metrics.campaign_series` allows.
    pub delivery: DeliveryGauges,
    /// The control shards: held, members, rebalances, refused entries, passes.
    pub shards: crate::shards::ShardMetrics,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Stream entries every consumer group was done with, trimmed, by stream (`events`,
    /// `plans`).
    pub stream_trimmed: IntCounterVec,
    /// Stream entries cut by the memory guard before some group had read or
    /// acknowledged them: lost to that group. By stream.
    pub stream_trimmed_unread: IntCounterVec,
    /// Entries a consumer found pending (its own, or claimed) but gone from the stream, by
    /// group: delivered, never processed, acknowledged uncounted.
    pub stream_lost: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

/// `allot_build_info{version}` = 1: which build is running, for dashboards and for
/// telling replicas apart during a rollout.
fn build_info(r: &Registry) {
    let g = IntGaugeVec::new(Opts::new("allot_build_info", "The running build (value 1)."), &["version"])
        .expect("valid metric name");
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    r.register(Box::new(g)).expect("registered once");
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics with the default settings.
    pub fn new() -> Self {
        Self::with_config(&MetricsConfig::default())
    }

    /// The metrics as `config` bounds them.
    pub fn with_config(config: &MetricsConfig) -> Self {
        let r = Registry::new();
        let ingest_latency = Histogram::with_opts(
            HistogramOpts::new("allot_ingest_duration_seconds", "Time to verify and store an event body.")
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5]),
        )
        .expect("valid histogram");
        r.register(Box::new(ingest_latency.clone())).expect("registered once");
        let control_leader = gauge(&r, "allot_control_leader", "1 while this instance holds a control shard's lease.");
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
            ingest_dropped: {
                let c = counter_vec(
                    &r,
                    "allot_ingest_dropped_events_total",
                    "Signed events dropped one by one, by reason; the rest of their body is stored.",
                    &["reason"],
                );
                // Every reason is a series from the start, so a rate of 0 is visible.
                for reason in allot_core::DropReason::ALL {
                    c.with_label_values(&[reason.as_str()]);
                }
                c
            },
            ingest_duplicates: counter(
                &r,
                "allot_ingest_duplicate_bodies_total",
                "Bodies received again (an edge's retry, or a replay): answered 202, stored once.",
            ),
            ingest_shed: counter(
                &r,
                "allot_ingest_shed_bodies_total",
                "Bodies answered 503 overloaded, unread, because the ingest held its budget of body bytes.",
            ),
            edge_dropped: counter(
                &r,
                "allot_edge_dropped_events_total",
                "Sampled events the edges report they could not deliver (outbox full, too old, refused).",
            ),
            aggregate_entries: counter_vec(
                &r,
                "allot_aggregate_entries_total",
                "Stream entries processed by the aggregator, by result.",
                &["result"],
            ),
            aggregate_claimed: counter(&r, "allot_aggregate_claimed_total", "Entries claimed from idle consumers."),
            aggregate_late_events: counter(
                &r,
                "allot_aggregate_late_events_total",
                "Sampled allocations applied after their window's round could read it (stragglers).",
            ),
            aggregate_late_impressions: counter(
                &r,
                "allot_aggregate_late_impressions_total",
                "Sampled impressions counted after their window was read for them (received late; allowed for in the next windows).",
            ),
            control_rounds: counter(&r, "allot_control_rounds_total", "Control rounds run by this instance."),
            control_state_discarded: counter(
                &r,
                "allot_control_state_discarded_total",
                "Stored control states refused as corrupt or forged and replaced by a fresh one.",
            ),
            control_leader,
            control_epoch: gauge(
                &r,
                "allot_control_epoch",
                "The newest epoch among the control shards this instance holds.",
            ),
            control_fenced: {
                let c = counter_vec(
                    &r,
                    "allot_control_fenced_total",
                    "Plans abandoned because the lease ran out or a newer epoch had written, by step.",
                    &["step"],
                );
                for step in ["allocate", "state", "publish", "save"] {
                    c.with_label_values(&[step]);
                }
                c
            },
            plans_published: {
                let c = counter_vec(
                    &r,
                    "allot_plans_published_total",
                    "Plans published, by why: first, targets, weights, rate, age, withdrawn.",
                    &["why"],
                );
                // Every reason is a series from the start, so a rate of 0 is visible.
                for why in Publish::ALL.map(Publish::as_str).into_iter().chain(["withdrawn"]) {
                    c.with_label_values(&[why]);
                }
                c
            },
            publish_failures: counter(&r, "allot_publish_failures_total", "Plans that failed to publish."),
            publish_superseded: counter(
                &r,
                "allot_publish_superseded_total",
                "Pushes refused because the edge held a version at or above the one pushed; each pushed again above it.",
            ),
            plan_log_failures: counter(
                &r,
                "allot_plan_log_failures_total",
                "Published plans whose snapshot could not be appended to the plan log.",
            ),
            audit_feed_failures: counter(
                &r,
                "allot_audit_feed_failures_total",
                "Admin changes stored (with the placement's own audit entry) but missing from the global audit feed.",
            ),
            delivery: DeliveryGauges::register(&r, config.campaign_series),
            shards: crate::shards::ShardMetrics::register(&r),
            http_requests: counter_vec(
                &r,
                "allot_http_requests_total",
                "HTTP requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: {
                let h = HistogramVec::new(
                    HistogramOpts::new("allot_http_request_duration_seconds", "Time to answer, by route.")
                        .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
                    &["route"],
                )
                .expect("valid histogram");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            stream_trimmed: counter_vec(
                &r,
                "allot_stream_trimmed_entries_total",
                "Stream entries trimmed once every consumer group had acknowledged them, by stream.",
                &["stream"],
            ),
            stream_trimmed_unread: counter_vec(
                &r,
                "allot_stream_trimmed_unread_entries_total",
                "Stream entries cut by the length cap before every consumer group had acknowledged them (lost), by stream.",
                &["stream"],
            ),
            stream_lost: counter_vec(
                &r,
                "allot_stream_lost_entries_total",
                "Pending entries found trimmed from the stream, never processed, by consumer group.",
                &["group"],
            ),
            ingest_latency,
            rendering: Arc::new(tokio::sync::Semaphore::new(1)),
            registry: {
                build_info(&r);
                #[cfg(target_os = "linux")]
                r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
                    .expect("registered once");
                r
            },
        }
    }

    /// Adds the archiver's metrics to this origin's registry.
    pub fn register_archive(&self, archive: &ArchiverMetrics) {
        archive.register(&self.registry).expect("the archive's metric names are its own");
    }

    /// [`Self::render`] for `GET /metrics`: one at a time, off the async workers. At the
    /// scale `metrics.campaign_series` allows, one exposition is megabytes and a good
    /// part of a second of CPU for a request of a few bytes; however many ask at once,
    /// they wait their turn (asynchronously) rather than take every core from ingest.
    pub async fn render_in_turn(&self) -> String {
        // The semaphore is never closed, so acquiring it cannot fail.
        let _turn = self.rendering.acquire().await;
        crate::control::off_the_async_workers(|| self.render())
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        // Encoding well-formed metrics into a string cannot fail.
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_registry_renders_the_origin_and_the_archive() {
        let metrics = Metrics::new();
        let archive = ArchiverMetrics::new();
        metrics.register_archive(&archive);
        metrics.plans_published.with_label_values(&["weights"]).inc();
        archive.events.rows_written.inc_by(12);
        let text = metrics.render();
        assert!(text.contains("allot_plans_published_total{why=\"weights\"} 1\n"), "{text}");
        assert!(text.contains("allot_plans_published_total{why=\"withdrawn\"} 0\n"), "{text}");
        assert!(text.contains("allot_archive_rows_total{dataset=\"events\"} 12\n"), "{text}");
        assert!(text.contains("allot_archive_rows_total{dataset=\"plans\"} 0\n"), "{text}");
        assert_eq!(text.matches("# TYPE allot_archive_rows_total counter\n").count(), 1, "{text}");
        assert_eq!(text.matches("# TYPE allot_plans_published_total counter\n").count(), 1, "{text}");
    }

    /// However many ask at once, each gets the whole exposition, in turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expositions_asked_at_once_are_rendered_in_turn_and_whole() {
        let metrics = Arc::new(Metrics::new());
        metrics.plans_published.with_label_values(&["weights"]).inc();
        let asks = (0..8).map(|_| {
            let m = metrics.clone();
            tokio::spawn(async move { m.render_in_turn().await })
        });
        for text in futures_util::future::join_all(asks).await {
            let text = text.unwrap();
            assert!(text.contains("allot_plans_published_total{why=\"weights\"} 1\n"), "{text}");
            assert!(text.contains("# TYPE allot_plans_published_total counter\n"), "{text}");
        }
        assert_eq!(metrics.rendering.available_permits(), 1, "every turn was given back");
    }

    #[test]
    fn without_an_archiver_there_are_no_archive_series() {
        let text = Metrics::new().render();
        assert!(text.contains("allot_control_leader 0\n"), "{text}");
        assert!(text.contains("allot_campaign_series_omitted_placements 0\n"), "{text}");
        assert!(!text.contains("allot_archive_"), "{text}");
    }
}
