//! Events as Parquet rows: the archive's column layout and its encoder.
//!
//! One row per event, columns exactly as docs/design.md and the Glue table declare them:
//! `event_time, received_time, kind, request_id, placement, ad_id, plan_version,
//! sample_rate, weight, eligible, platform, country, colo, unreported`. Times are UTC timestamps in
//! milliseconds; `weight` is core's Horvitz–Thompson weight `1/sample_rate`, stored so
//! analysts sum it instead of re-deriving it. The partition columns (`dt`, `hour`) are
//! in the object key, not in the file, as Hive-style readers expect. Encoding the same
//! rows twice gives the same bytes, so a retried flush overwrites with identical objects.

use std::sync::{Arc, LazyLock};

use allot_core::Event;
use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::ArchiveError;

/// An event as it is archived: with the time the origin received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedEvent {
    pub event: Event,
    pub received_ms: u64,
}

/// The archive's column names, in order.
pub const COLUMNS: [&str; 14] = [
    "event_time",
    "received_time",
    "kind",
    "request_id",
    "placement",
    "ad_id",
    "plan_version",
    "sample_rate",
    "weight",
    "eligible",
    "platform",
    "country",
    "colo",
    "unreported",
];

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("event_time", ts(), false),
        Field::new("received_time", ts(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("request_id", DataType::Utf8, false),
        Field::new("placement", DataType::Utf8, false),
        Field::new("ad_id", DataType::Utf8, true),
        Field::new("plan_version", DataType::Int64, false),
        Field::new("sample_rate", DataType::Float64, false),
        Field::new("weight", DataType::Float64, false),
        Field::new_list("eligible", Field::new_list_field(DataType::Utf8, true), false),
        Field::new("platform", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("colo", DataType::Utf8, true),
        // Nullable: objects written before it existed read it as NULL (a reporting app).
        Field::new("unreported", DataType::Boolean, true),
    ]))
});

/// The Arrow schema of one archive object (without partition columns).
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// The rows as one Arrow record batch.
pub fn to_record_batch(rows: &[&ArchivedEvent]) -> Result<RecordBatch, ArchiveError> {
    let strs = |f: &dyn Fn(&Event) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(|r| f(&r.event)).collect::<StringArray>())
    };
    let mut eligible = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for c in &r.event.eligible {
            eligible.values().append_value(c.as_str());
        }
        eligible.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        millis(rows.iter().map(|r| r.event.event_time_ms)),
        millis(rows.iter().map(|r| r.received_ms)),
        strs(&|e| Some(e.kind.as_str())),
        strs(&|e| Some(e.request_id.as_str())),
        strs(&|e| Some(e.placement.as_str())),
        strs(&|e| e.ad_id.as_ref().map(|a| a.as_str())),
        Arc::new(rows.iter().map(|r| to_i64(r.event.plan_version)).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| r.event.sample_rate).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.event.weight()).collect::<Float64Array>()),
        Arc::new(eligible.finish()),
        strs(&|e| e.platform.as_deref()),
        strs(&|e| e.country.as_deref()),
        strs(&|e| e.colo.as_deref()),
        Arc::new(rows.iter().map(|r| Some(r.event.unreported)).collect::<BooleanArray>()),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| ArchiveError::Parquet(e.to_string()))
}

/// The rows as a zstd-compressed Parquet file.
pub fn encode(rows: &[&ArchivedEvent]) -> Result<Bytes, ArchiveError> {
    write_parquet(&to_record_batch(rows)?)
}

/// A table's `columns` (in `schema` order) as one zstd-compressed Parquet file.
pub(crate) fn write_columns(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<Bytes, ArchiveError> {
    let batch = RecordBatch::try_new(schema, columns).map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    write_parquet(&batch)
}

/// One record batch as a zstd-compressed Parquet file, the same bytes for the same batch.
pub(crate) fn write_parquet(batch: &RecordBatch) -> Result<Bytes, ArchiveError> {
    let err = |e: parquet::errors::ParquetError| ArchiveError::Parquet(e.to_string());
    let props =
        WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(err)?)).build();
    let mut writer = ArrowWriter::try_new(Vec::with_capacity(64 * 1024), batch.schema(), Some(props)).map_err(err)?;
    writer.write(batch).map_err(err)?;
    Ok(Bytes::from(writer.into_inner().map_err(err)?))
}

/// A timestamp column (UTC milliseconds), as the Glue tables declare `timestamp`.
pub(crate) fn millis(values: impl Iterator<Item = u64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values.map(to_i64).collect::<Vec<_>>()).with_timezone("UTC"))
}

/// Times and versions are far below `i64::MAX`; saturate rather than wrap if not.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use allot_core::{CampaignId, EventKind, PlacementId, RequestId};
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn event(i: u64, ad: Option<&str>) -> ArchivedEvent {
        ArchivedEvent {
            event: Event {
                kind: EventKind::Allocation,
                event_time_ms: 1_700_000_000_000 + i,
                request_id: RequestId::parse(format!("r{i}")).unwrap(),
                placement: PlacementId::parse("home_feed").unwrap(),
                ad_id: ad.map(|a| CampaignId::parse(a).unwrap()),
                plan_version: 7,
                sample_rate: 0.25,
                eligible: ["A", "B"].iter().map(|c| CampaignId::parse(*c).unwrap()).collect(),
                platform: Some("ios".into()),
                country: None,
                colo: Some("FRA".into()),
                unreported: false,
            },
            received_ms: 1_700_000_000_500 + i,
        }
    }

    #[test]
    fn encodes_readable_deterministic_parquet() {
        let rows = [event(0, Some("A")), event(1, None)];
        let refs: Vec<&ArchivedEvent> = rows.iter().collect();
        let bytes = encode(&refs).unwrap();
        assert_eq!(bytes, encode(&refs).unwrap(), "same rows, same bytes");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, COLUMNS);
        assert_eq!(b.num_rows(), 2);
        let weight = b.column(8).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(weight.value(0), 4.0);
        let ad = b.column(5).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((ad.value(0), ad.is_null(1)), ("A", true));
    }
}
