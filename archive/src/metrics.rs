//! The archiver's health as counters and gauges, rendered in Prometheus text format so
//! the origin can append them to its `/metrics`.
//!
//! The one to alert on is the lag: stream entries the archiver has not yet acknowledged
//! (undelivered plus delivered-but-unstored). While S3 is down it grows; when S3 is back
//! it drains. The age of the oldest buffered entry says how stale the archive is.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dataset::{Dataset, Events, Plans};

/// The archiver's metrics, one set per dataset, shared with whoever renders `/metrics`.
#[derive(Debug, Default)]
pub struct ArchiverMetrics {
    pub events: DatasetMetrics,
    pub plans: DatasetMetrics,
}

/// Counters and gauges of one dataset's lane.
#[derive(Debug, Default)]
pub struct DatasetMetrics {
    /// Entries in the stream not yet acknowledged by the archiver's group.
    pub lag_entries: AtomicU64,
    /// Age of the oldest entry in the archiver's buffer (0 when empty).
    pub oldest_buffered_age_ms: AtomicU64,
    pub entries_archived: AtomicU64,
    pub rows_written: AtomicU64,
    pub objects_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub flushes: AtomicU64,
    pub put_failures: AtomicU64,
    pub redis_failures: AtomicU64,
    /// Entries that could not be decoded (acknowledged and dropped, logged).
    pub malformed_entries: AtomicU64,
    /// Entries taken over from a consumer that had gone silent.
    pub claimed_entries: AtomicU64,
}

impl ArchiverMetrics {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(c: &AtomicU64, n: u64) {
        c.store(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition, each series labelled with its `dataset`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let datasets = [(Events::NAME, &self.events), (Plans::NAME, &self.plans)];
        for (i, (name, kind, help)) in DatasetMetrics::SERIES.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (dataset, m) in datasets {
                let v = Self::get(m.series()[i]);
                if name.ends_with("_seconds") {
                    let _ = writeln!(out, "{name}{{dataset=\"{dataset}\"}} {}", v as f64 / 1000.0);
                } else {
                    let _ = writeln!(out, "{name}{{dataset=\"{dataset}\"}} {v}");
                }
            }
        }
        out
    }
}

impl DatasetMetrics {
    /// Name, type and help of each series, in the order of [`Self::series`].
    const SERIES: [(&str, &str, &str); 11] = [
        ("allot_archive_lag_entries", "gauge", "Stream entries not yet archived"),
        (
            "allot_archive_oldest_buffered_age_seconds",
            "gauge",
            "Age of the oldest entry waiting in the archiver's buffer",
        ),
        ("allot_archive_entries_total", "counter", "Stream entries archived"),
        ("allot_archive_rows_total", "counter", "Rows written to Parquet"),
        ("allot_archive_objects_total", "counter", "Parquet objects stored"),
        ("allot_archive_bytes_total", "counter", "Parquet bytes stored"),
        ("allot_archive_flushes_total", "counter", "Completed flushes"),
        ("allot_archive_put_failures_total", "counter", "Failed S3 uploads (retried)"),
        ("allot_archive_redis_failures_total", "counter", "Failed Redis calls (retried)"),
        ("allot_archive_malformed_entries_total", "counter", "Undecodable stream entries dropped"),
        ("allot_archive_claimed_entries_total", "counter", "Entries claimed from a silent consumer"),
    ];

    fn series(&self) -> [&AtomicU64; 11] {
        [
            &self.lag_entries,
            &self.oldest_buffered_age_ms,
            &self.entries_archived,
            &self.rows_written,
            &self.objects_written,
            &self.bytes_written,
            &self.flushes,
            &self.put_failures,
            &self.redis_failures,
            &self.malformed_entries,
            &self.claimed_entries,
        ]
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
    }
}
