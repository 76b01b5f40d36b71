//! Admin changes as Parquet rows: the audit trail, kept beyond the feed's cap.
//!
//! Redis keeps the global audit feed ([`keys::AUDIT`](allot_core::contract::keys::AUDIT))
//! only up to a cap, and each placement's trail up to its own; the archive keeps every
//! change, in `audit/dt=…/hour=…/`, one row per change:
//!
//! `change_time, placement, action, who, rev, targets_before, targets_after`
//!
//! The targets are the JSON documents the admin API took, NULL where there were none
//! (before a placement's first write, after a delete). `rev` joins a change to the
//! `plans` table's `targets_rev`: which plans were made from it.

use std::sync::{Arc, LazyLock};

use allot_core::contract::AuditRecord;
use arrow_array::{ArrayRef, Int64Array, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;

use crate::ArchiveError;
use crate::parquet_rows::{millis, to_i64, write_columns};

/// The table's column names, in order.
pub const COLUMNS: [&str; 7] = ["change_time", "placement", "action", "who", "rev", "targets_before", "targets_after"];

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("change_time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new("placement", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("who", DataType::Utf8, false),
        Field::new("rev", DataType::Int64, false),
        Field::new("targets_before", DataType::Utf8, true),
        Field::new("targets_after", DataType::Utf8, true),
    ]))
});

/// The Arrow schema of one `audit` object (without partition columns).
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// The rows as a zstd-compressed Parquet file.
pub fn encode(rows: &[&AuditRecord]) -> Result<Bytes, ArchiveError> {
    let text = |f: &dyn Fn(&AuditRecord) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let json = |f: &dyn Fn(&AuditRecord) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r)).filter(|s| !s.is_empty())).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        millis(rows.iter().map(|r| r.at_ms)),
        text(&|r| r.placement.as_str()),
        text(&|r| r.action.as_str()),
        text(&|r| &r.who),
        Arc::new(rows.iter().map(|r| to_i64(r.rev)).collect::<Int64Array>()),
        json(&|r| &r.before),
        json(&|r| &r.after),
    ];
    write_columns(schema(), columns)
}

#[cfg(test)]
mod tests {
    use allot_core::PlacementId;
    use allot_core::contract::Action;
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn change(rev: u64, action: Action, before: &str, after: &str) -> AuditRecord {
        AuditRecord {
            who: "ops".into(),
            at_ms: 1_795_600_790_000 + rev,
            action,
            placement: PlacementId::parse("home_feed").unwrap(),
            before: before.into(),
            after: after.into(),
            rev,
        }
    }

    #[test]
    fn encodes_readable_deterministic_parquet_with_nulls_for_no_targets() {
        let rows = [change(1, Action::Put, "", r#"{"a":1}"#), change(2, Action::Delete, r#"{"a":1}"#, "")];
        let refs: Vec<&AuditRecord> = rows.iter().collect();
        let bytes = encode(&refs).unwrap();
        assert_eq!(bytes, encode(&refs).unwrap(), "same rows, same bytes");
        let batch = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap().next().unwrap().unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, COLUMNS);
        let string = |i: usize| batch.column(i).as_any().downcast_ref::<StringArray>().unwrap().clone();
        assert_eq!((string(2).value(0), string(2).value(1)), ("put", "delete"));
        assert!(string(5).is_null(0) && string(5).value(1) == r#"{"a":1}"#);
        assert!(string(6).value(0) == r#"{"a":1}"# && string(6).is_null(1));
        let rev = batch.column(4).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((rev.value(0), rev.value(1)), (1, 2));
    }
}
