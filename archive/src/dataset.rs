//! What the archiver archives: a Redis stream whose entries become rows of one Parquet
//! table.
//!
//! There are three: [`Events`] (the sampled events the edge sends, stream
//! `allot:events`), [`Plans`] (a snapshot of every plan the origin publishes, with the
//! targets it was made for, stream `allot:plans`) and [`Audit`] (every admin change,
//! stream `allot:audit`). The archiver's loop, its batching, its keys and its
//! at-least-once-but-overwriting guarantees are the same for all three; only decoding and the
//! column layout differ, and that is all a dataset says.

use std::collections::HashMap;

use allot_core::EventBatch;
use allot_core::contract::{AuditRecord, PlanSnapshot, stream};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use redis::Value;

use crate::audit_rows;
use crate::parquet_rows::{self, ArchivedEvent};
use crate::plan_rows::{self, PlanRow};
use crate::{ArchiveConfig, ArchiveError};

/// A stream entry's fields, as Redis returned them.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a>(pub &'a HashMap<String, Value>);

impl<'a> Fields<'a> {
    /// The field's bytes, if present and a string.
    pub fn bytes(&self, field: &str) -> Option<&'a [u8]> {
        match self.0.get(field) {
            Some(Value::BulkString(b)) => Some(b.as_slice()),
            Some(Value::SimpleString(s)) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The field parsed as a number.
    pub fn u64(&self, field: &str) -> Option<u64> {
        std::str::from_utf8(self.bytes(field)?).ok()?.parse().ok()
    }
}

/// A stream archived as one table.
pub trait Dataset: Send + Sync + 'static {
    type Row: Send + Sync + std::fmt::Debug;

    /// The folder under the archive's prefix, which is also the table's name.
    const NAME: &'static str;

    /// The stream this dataset's entries are read from.
    fn stream(cfg: &ArchiveConfig) -> &str;

    /// The rows of one entry, whose stream id is `entry_ms` milliseconds; an error is a
    /// malformed entry, acknowledged and dropped with its flush.
    fn decode(fields: Fields<'_>, entry_ms: u64) -> Result<Vec<Self::Row>, String>;

    /// The table's Arrow schema (without the partition columns).
    fn schema() -> SchemaRef;

    /// The time that decides a row's hour partition (UTC milliseconds).
    fn time_ms(row: &Self::Row) -> u64;

    /// The rows as one zstd Parquet object; the same rows always give the same bytes.
    fn encode(rows: &[&Self::Row]) -> Result<Bytes, ArchiveError>;
}

/// Sampled events: an event batch (the JSON the edge signed) and the time the origin
/// received it ([`stream::event_entry`]).
#[derive(Debug, Clone, Copy)]
pub struct Events;

impl Dataset for Events {
    type Row = ArchivedEvent;
    const NAME: &'static str = "events";

    fn stream(cfg: &ArchiveConfig) -> &str {
        &cfg.stream
    }

    fn decode(fields: Fields<'_>, entry_ms: u64) -> Result<Vec<ArchivedEvent>, String> {
        let received_ms = fields.u64(stream::RECEIVED_MS).unwrap_or(entry_ms);
        let bytes = fields.bytes(stream::BATCH).ok_or("an entry without events")?;
        let batch = EventBatch::parse(bytes).map_err(|e| e.to_string())?;
        Ok(batch.events.into_iter().map(|event| ArchivedEvent { event, received_ms }).collect())
    }

    fn schema() -> SchemaRef {
        parquet_rows::schema()
    }

    fn time_ms(row: &ArchivedEvent) -> u64 {
        row.event.event_time_ms
    }

    fn encode(rows: &[&ArchivedEvent]) -> Result<Bytes, ArchiveError> {
        parquet_rows::encode(rows)
    }
}

/// Published plans: a [`PlanSnapshot`] as JSON ([`stream::plan_entry`]).
#[derive(Debug, Clone, Copy)]
pub struct Plans;

impl Dataset for Plans {
    type Row = PlanRow;
    const NAME: &'static str = "plans";

    fn stream(cfg: &ArchiveConfig) -> &str {
        &cfg.plans_stream
    }

    fn decode(fields: Fields<'_>, _entry_ms: u64) -> Result<Vec<PlanRow>, String> {
        let bytes = fields.bytes(stream::SNAPSHOT).ok_or("an entry without a plan snapshot")?;
        let snapshot = PlanSnapshot::parse(bytes).map_err(|e| e.to_string())?;
        Ok(plan_rows::rows(snapshot))
    }

    fn schema() -> SchemaRef {
        plan_rows::schema()
    }

    fn time_ms(row: &PlanRow) -> u64 {
        row.issued_ms
    }

    fn encode(rows: &[&PlanRow]) -> Result<Bytes, ArchiveError> {
        plan_rows::encode(rows)
    }
}

/// Admin changes: an audit entry's fields ([`allot_core::contract::audit`]).
#[derive(Debug, Clone, Copy)]
pub struct Audit;

impl Dataset for Audit {
    type Row = AuditRecord;
    const NAME: &'static str = "audit";

    fn stream(cfg: &ArchiveConfig) -> &str {
        &cfg.audit_stream
    }

    fn decode(fields: Fields<'_>, _entry_ms: u64) -> Result<Vec<AuditRecord>, String> {
        let record = AuditRecord::parse(|name| std::str::from_utf8(fields.bytes(name)?).ok());
        Ok(vec![record.map_err(|e| e.to_string())?])
    }

    fn schema() -> SchemaRef {
        audit_rows::schema()
    }

    fn time_ms(row: &AuditRecord) -> u64 {
        row.at_ms
    }

    fn encode(rows: &[&AuditRecord]) -> Result<Bytes, ArchiveError> {
        audit_rows::encode(rows)
    }
}
