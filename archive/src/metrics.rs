//! The archiver's health as Prometheus metrics.
//!
//! The metrics are built unregistered and join whichever registry renders them
//! ([`ArchiverMetrics::register`]): the origin's own, so its `/metrics` is one
//! exposition, or a fresh one when the archiver runs on its own
//! ([`ArchiverMetrics::render`]). Every series carries a `dataset` label.
//!
//! The one to alert on is the lag: stream entries the archiver has not yet acknowledged
//! (undelivered plus delivered-but-unstored). While S3 is down it grows; when S3 is back
//! it drains. The age of the oldest buffered entry says how stale the archive is.

use prometheus::core::Collector;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::dataset::{Audit, Dataset, Events, Plans};

/// The archiver's metrics, one set per dataset, shared with whoever renders `/metrics`.
#[derive(Debug, Clone)]
pub struct ArchiverMetrics {
    pub events: DatasetMetrics,
    pub plans: DatasetMetrics,
    pub audit: DatasetMetrics,
    families: Families,
}

/// The series of one dataset's lane: its children of the `dataset`-labelled families.
#[derive(Debug, Clone)]
pub struct DatasetMetrics {
    /// Entries in the stream not yet acknowledged by the archiver's group.
    pub lag_entries: IntGauge,
    /// Age of the oldest entry in the archiver's buffer (0 when empty).
    pub oldest_buffered_age_ms: AgeGauge,
    pub entries_archived: IntCounter,
    pub rows_written: IntCounter,
    pub objects_written: IntCounter,
    pub bytes_written: IntCounter,
    pub flushes: IntCounter,
    pub put_failures: IntCounter,
    pub redis_failures: IntCounter,
    /// Entries that could not be decoded (acknowledged and dropped, logged).
    pub malformed_entries: IntCounter,
    /// Entries taken over from a consumer that had gone silent.
    pub claimed_entries: IntCounter,
    /// Pending entries (own or claimed) found trimmed from the stream: never archived.
    pub lost_entries: IntCounter,
    /// 1 while the lane runs, 0 while it is down (between a failure and its restart).
    pub lane_up: IntGauge,
    /// Times the lane was restarted after a failure.
    pub lane_restarts: IntCounter,
}

/// A gauge of an age: set in milliseconds, the unit of stream ids and of the archiver's
/// clock, and exposed in seconds, Prometheus' base unit. The type carries the unit, so
/// no caller converts by hand.
#[derive(Debug, Clone)]
pub struct AgeGauge(Gauge);

impl AgeGauge {
    pub fn set_ms(&self, ms: u64) {
        self.0.set(ms as f64 / 1000.0);
    }

    pub fn get_ms(&self) -> u64 {
        (self.0.get() * 1000.0).round() as u64
    }
}

/// A metric whose current value reads as a whole number ([`ArchiverMetrics::get`]).
pub trait Reading {
    fn reading(&self) -> u64;
}

impl Reading for IntCounter {
    fn reading(&self) -> u64 {
        self.get()
    }
}

impl Reading for IntGauge {
    fn reading(&self) -> u64 {
        self.get().max(0) as u64
    }
}

impl Reading for AgeGauge {
    fn reading(&self) -> u64 {
        self.get_ms()
    }
}

/// A gauge set from a whole number ([`ArchiverMetrics::set`]).
pub trait Level: Reading {
    fn set_level(&self, n: u64);
}

impl Level for IntGauge {
    fn set_level(&self, n: u64) {
        self.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

impl Level for AgeGauge {
    fn set_level(&self, n: u64) {
        self.set_ms(n);
    }
}

/// The metric families, each with a `dataset` label; what a registry holds.
#[derive(Debug, Clone)]
struct Families {
    lag: IntGaugeVec,
    oldest_buffered_age: GaugeVec,
    entries: IntCounterVec,
    rows: IntCounterVec,
    objects: IntCounterVec,
    bytes: IntCounterVec,
    flushes: IntCounterVec,
    put_failures: IntCounterVec,
    redis_failures: IntCounterVec,
    malformed: IntCounterVec,
    claimed: IntCounterVec,
    lost: IntCounterVec,
    up: IntGaugeVec,
    restarts: IntCounterVec,
}

const DATASET: &[&str] = &["dataset"];

fn counter(name: &str, help: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), DATASET).expect("valid metric name")
}

impl Families {
    fn new() -> Self {
        let oldest_buffered_age = GaugeVec::new(
            Opts::new(
                "allot_archive_oldest_buffered_age_seconds",
                "Age in seconds of the oldest entry waiting in the archiver's buffer (0 when it is empty).",
            ),
            DATASET,
        )
        .expect("valid metric name");
        Self {
            lag: IntGaugeVec::new(
                Opts::new(
                    "allot_archive_lag_entries",
                    "Stream entries not yet archived: undelivered plus delivered but unacknowledged.",
                ),
                DATASET,
            )
            .expect("valid metric name"),
            oldest_buffered_age,
            entries: counter("allot_archive_entries_total", "Stream entries archived."),
            rows: counter("allot_archive_rows_total", "Rows written to Parquet."),
            objects: counter("allot_archive_objects_total", "Parquet objects stored in S3."),
            bytes: counter("allot_archive_bytes_total", "Bytes of Parquet stored in S3."),
            flushes: counter("allot_archive_flushes_total", "Completed flushes."),
            put_failures: counter("allot_archive_put_failures_total", "Failed S3 uploads (each retried)."),
            redis_failures: counter("allot_archive_redis_failures_total", "Failed Redis calls (each retried)."),
            malformed: counter(
                "allot_archive_malformed_entries_total",
                "Undecodable stream entries, acknowledged and dropped.",
            ),
            claimed: counter("allot_archive_claimed_entries_total", "Stream entries claimed from a silent consumer."),
            lost: counter(
                "allot_archive_lost_entries_total",
                "Pending stream entries found trimmed from the stream before they were archived.",
            ),
            up: IntGaugeVec::new(
                Opts::new("allot_archive_lane_up", "1 while the dataset's archiving lane runs, 0 while it is down."),
                DATASET,
            )
            .expect("valid metric name"),
            restarts: counter("allot_archive_lane_restarts_total", "Archiving lanes restarted after a failure."),
        }
    }

    fn collectors(&self) -> [Box<dyn Collector>; 14] {
        [
            Box::new(self.lag.clone()),
            Box::new(self.oldest_buffered_age.clone()),
            Box::new(self.entries.clone()),
            Box::new(self.rows.clone()),
            Box::new(self.objects.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.flushes.clone()),
            Box::new(self.put_failures.clone()),
            Box::new(self.redis_failures.clone()),
            Box::new(self.malformed.clone()),
            Box::new(self.claimed.clone()),
            Box::new(self.lost.clone()),
            Box::new(self.up.clone()),
            Box::new(self.restarts.clone()),
        ]
    }

    /// One dataset's children; created here, so both datasets are exposed from the start.
    fn dataset(&self, name: &str) -> DatasetMetrics {
        let v = &[name];
        DatasetMetrics {
            lag_entries: self.lag.with_label_values(v),
            oldest_buffered_age_ms: AgeGauge(self.oldest_buffered_age.with_label_values(v)),
            entries_archived: self.entries.with_label_values(v),
            rows_written: self.rows.with_label_values(v),
            objects_written: self.objects.with_label_values(v),
            bytes_written: self.bytes.with_label_values(v),
            flushes: self.flushes.with_label_values(v),
            put_failures: self.put_failures.with_label_values(v),
            redis_failures: self.redis_failures.with_label_values(v),
            malformed_entries: self.malformed.with_label_values(v),
            claimed_entries: self.claimed.with_label_values(v),
            lost_entries: self.lost.with_label_values(v),
            lane_up: self.up.with_label_values(v),
            lane_restarts: self.restarts.with_label_values(v),
        }
    }
}

impl Default for ArchiverMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiverMetrics {
    /// Fresh metrics, in no registry yet.
    pub fn new() -> Self {
        let families = Families::new();
        Self {
            events: families.dataset(Events::NAME),
            plans: families.dataset(Plans::NAME),
            audit: families.dataset(Audit::NAME),
            families,
        }
    }

    /// Adds these metrics to `registry`, to be rendered with whatever else it holds. Fails
    /// only if the registry already has metrics of these names.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        self.families.collectors().into_iter().try_for_each(|c| registry.register(c))
    }

    /// The Prometheus text exposition of these metrics alone, for an archiver that runs
    /// without an origin.
    pub fn render(&self) -> String {
        let registry = Registry::new();
        // A fresh registry holds no other metrics, and encoding well-formed ones into a
        // string cannot fail.
        let _ = self.register(&registry);
        TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default()
    }

    /// A metric's current value.
    pub fn get(m: &impl Reading) -> u64 {
        m.reading()
    }

    pub(crate) fn add(c: &IntCounter, n: u64) {
        c.inc_by(n);
    }

    pub(crate) fn set(g: &impl Level, n: u64) {
        g.set_level(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = ArchiverMetrics::default();
        ArchiverMetrics::set(&m.events.lag_entries, 42);
        ArchiverMetrics::set(&m.plans.oldest_buffered_age_ms, 1500);
        ArchiverMetrics::add(&m.plans.claimed_entries, 3);
        let text = m.render();
        assert!(text.contains("allot_archive_lag_entries{dataset=\"events\"} 42\n"), "{text}");
        assert!(text.contains("allot_archive_lag_entries{dataset=\"plans\"} 0\n"), "{text}");
        assert!(text.contains("allot_archive_oldest_buffered_age_seconds{dataset=\"plans\"} 1.5\n"), "{text}");
        assert!(text.contains("allot_archive_claimed_entries_total{dataset=\"plans\"} 3\n"), "{text}");
        assert_eq!(text.matches("# TYPE allot_archive_rows_total counter").count(), 1);
        assert_eq!(text.matches("# TYPE allot_archive_lag_entries gauge").count(), 1);
        assert_eq!(text.matches("# TYPE allot_archive_oldest_buffered_age_seconds gauge").count(), 1);
    }

    #[test]
    fn the_same_names_as_before() {
        let text = ArchiverMetrics::default().render();
        let mut names: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "allot_archive_bytes_total",
                "allot_archive_claimed_entries_total",
                "allot_archive_entries_total",
                "allot_archive_flushes_total",
                "allot_archive_lag_entries",
                "allot_archive_lane_restarts_total",
                "allot_archive_lane_up",
                "allot_archive_lost_entries_total",
                "allot_archive_malformed_entries_total",
                "allot_archive_objects_total",
                "allot_archive_oldest_buffered_age_seconds",
                "allot_archive_put_failures_total",
                "allot_archive_redis_failures_total",
                "allot_archive_rows_total",
            ]
        );
        assert_eq!(text.matches("{dataset=\"events\"} 0\n").count(), 14, "{text}");
        assert_eq!(text.matches("{dataset=\"plans\"} 0\n").count(), 14, "{text}");
    }

    #[test]
    fn values_read_back_in_the_units_they_were_set_in() {
        let m = ArchiverMetrics::new();
        ArchiverMetrics::set(&m.events.oldest_buffered_age_ms, 2_345);
        ArchiverMetrics::set(&m.events.lag_entries, 7);
        ArchiverMetrics::add(&m.events.rows_written, 5);
        ArchiverMetrics::add(&m.events.rows_written, 6);
        assert_eq!(ArchiverMetrics::get(&m.events.oldest_buffered_age_ms), 2_345);
        assert_eq!(ArchiverMetrics::get(&m.events.lag_entries), 7);
        assert_eq!(ArchiverMetrics::get(&m.events.rows_written), 11);
        assert_eq!(ArchiverMetrics::get(&m.plans.rows_written), 0, "datasets are apart");
    }

    #[test]
    fn joins_a_shared_registry_once() {
        let registry = Registry::new();
        let other = IntCounter::new("allot_other_total", "Another component's counter.").expect("valid");
        registry.register(Box::new(other.clone())).expect("registered");
        let m = ArchiverMetrics::new();
        m.register(&registry).expect("registered");
        ArchiverMetrics::add(&m.events.flushes, 2);
        let text = TextEncoder::new().encode_to_string(&registry.gather()).expect("encodes");
        assert!(text.contains("allot_other_total 0\n"), "{text}");
        assert!(text.contains("allot_archive_flushes_total{dataset=\"events\"} 2\n"), "{text}");
        assert!(m.register(&registry).is_err(), "the same names twice is a wiring error");
    }
}
