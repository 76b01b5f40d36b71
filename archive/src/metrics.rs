//! The archiver's health as counters and gauges, rendered in Prometheus text format so
//! the origin can append them to its `/metrics`.
//!
//! The one to alert on is the lag: stream entries the archiver has not yet acknowledged
//! (undelivered plus delivered-but-unstored). While S3 is down it grows; when S3 is back
//! it drains. The age of the oldest buffered entry says how stale the archive is.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared between the archiver task and whoever renders `/metrics`.
#[derive(Debug, Default)]
pub struct ArchiverMetrics {
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

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &str, &AtomicU64); 10] = [
            ("allot_archive_lag_entries", "gauge", "Stream entries not yet archived", &self.lag_entries),
            (
                "allot_archive_oldest_buffered_age_seconds",
                "gauge",
                "Age of the oldest entry waiting in the archiver's buffer",
                &self.oldest_buffered_age_ms,
            ),
            ("allot_archive_entries_total", "counter", "Stream entries archived", &self.entries_archived),
            ("allot_archive_rows_total", "counter", "Events written to Parquet", &self.rows_written),
            ("allot_archive_objects_total", "counter", "Parquet objects stored", &self.objects_written),
            ("allot_archive_bytes_total", "counter", "Parquet bytes stored", &self.bytes_written),
            ("allot_archive_flushes_total", "counter", "Completed flushes", &self.flushes),
            ("allot_archive_put_failures_total", "counter", "Failed S3 uploads (retried)", &self.put_failures),
            ("allot_archive_redis_failures_total", "counter", "Failed Redis calls (retried)", &self.redis_failures),
            (
                "allot_archive_malformed_entries_total",
                "counter",
                "Undecodable stream entries dropped",
                &self.malformed_entries,
            ),
        ];
        for (name, kind, help, v) in rows {
            let v = Self::get(v);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            if name.ends_with("_seconds") {
                let _ = writeln!(out, "{name} {}", v as f64 / 1000.0);
            } else {
                let _ = writeln!(out, "{name} {v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = ArchiverMetrics::default();
        ArchiverMetrics::set(&m.lag_entries, 42);
        ArchiverMetrics::set(&m.oldest_buffered_age_ms, 1500);
        let text = m.render();
        assert!(text.contains("allot_archive_lag_entries 42\n"), "{text}");
        assert!(text.contains("allot_archive_oldest_buffered_age_seconds 1.5\n"), "{text}");
        assert!(text.contains("# TYPE allot_archive_rows_total counter"));
    }
}
