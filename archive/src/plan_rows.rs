//! Published plans as Parquet rows: what each plan version aimed for.
//!
//! Events carry the plan version they were decided under, not the targets. So that the
//! archive alone answers "delivery against target", the origin appends a
//! [`PlanSnapshot`] (core's contract) to the plan log for every plan it publishes, and the
//! archiver writes them to `plans/dt=…/hour=…/` like events. One row per campaign of
//! the plan (one row with a NULL campaign for a plan without campaigns):
//!
//! `issued_time, placement, plan_version, targets_rev, sample_rate, campaign,
//! target_rate, weight, feasible, max_share`
//!
//! Joining events to this table on `(placement, plan_version)` gives every sampled
//! request the targets in force when it was served, so a day's target is the
//! traffic-weighted mean even when a manager changed it at noon (`reports/delivery.sql`).

use std::sync::{Arc, LazyLock};

use allot_core::PlacementId;
use allot_core::contract::{PlanSnapshot, SnapshotCampaign};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;

use crate::ArchiveError;
use crate::parquet_rows::{millis, to_i64, write_columns};

/// The table's column names, in order.
pub const COLUMNS: [&str; 10] = [
    "issued_time",
    "placement",
    "plan_version",
    "targets_rev",
    "sample_rate",
    "campaign",
    "target_rate",
    "weight",
    "feasible",
    "max_share",
];

/// A snapshot as table rows, one per campaign. A plan without campaigns (no ads) is one
/// row with no campaign: its version is known, and aims for nothing.
pub fn rows(snapshot: PlanSnapshot) -> Vec<PlanRow> {
    let PlanSnapshot { placement, version, issued_at_ms, sample_rate, targets_rev, campaigns } = snapshot;
    let row = |campaign| PlanRow {
        issued_ms: issued_at_ms,
        placement: placement.clone(),
        plan_version: version,
        targets_rev,
        sample_rate,
        campaign,
    };
    if campaigns.is_empty() {
        return vec![row(None)];
    }
    campaigns.into_iter().map(|c| row(Some(c))).collect()
}
/// One row of the `plans` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRow {
    pub issued_ms: u64,
    pub placement: PlacementId,
    pub plan_version: u64,
    pub targets_rev: u64,
    pub sample_rate: f64,
    /// `None` for a plan without campaigns.
    pub campaign: Option<SnapshotCampaign>,
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("issued_time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new("placement", DataType::Utf8, false),
        Field::new("plan_version", DataType::Int64, false),
        Field::new("targets_rev", DataType::Int64, false),
        Field::new("sample_rate", DataType::Float64, false),
        Field::new("campaign", DataType::Utf8, true),
        Field::new("target_rate", DataType::Float64, true),
        Field::new("weight", DataType::Float64, true),
        Field::new("feasible", DataType::Boolean, true),
        Field::new("max_share", DataType::Float64, true),
    ]))
});

/// The Arrow schema of one `plans` object (without partition columns).
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// The rows as a zstd-compressed Parquet file.
pub fn encode(rows: &[&PlanRow]) -> Result<Bytes, ArchiveError> {
    let f64s = |f: &dyn Fn(&PlanRow) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(|r| f(r)).collect::<Float64Array>())
    };
    let i64s = |f: &dyn Fn(&PlanRow) -> u64| -> ArrayRef {
        Arc::new(rows.iter().map(|r| to_i64(f(r))).collect::<Int64Array>())
    };
    let columns: Vec<ArrayRef> = vec![
        millis(rows.iter().map(|r| r.issued_ms)),
        Arc::new(rows.iter().map(|r| Some(r.placement.as_str())).collect::<StringArray>()),
        i64s(&|r| r.plan_version),
        i64s(&|r| r.targets_rev),
        f64s(&|r| Some(r.sample_rate)),
        Arc::new(rows.iter().map(|r| r.campaign.as_ref().map(|c| c.id.as_str())).collect::<StringArray>()),
        f64s(&|r| r.campaign.as_ref().map(|c| c.target_rate)),
        f64s(&|r| r.campaign.as_ref().map(|c| c.weight)),
        Arc::new(rows.iter().map(|r| r.campaign.as_ref().map(|c| c.feasible)).collect::<BooleanArray>()),
        f64s(&|r| r.campaign.as_ref().and_then(|c| c.max_share)),
    ];
    write_columns(schema(), columns)
}

#[cfg(test)]
mod tests {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use allot_core::CampaignId;

    use super::*;

    fn snapshot() -> PlanSnapshot {
        let campaign = |id: &str, target_rate, feasible| SnapshotCampaign {
            id: CampaignId::parse(id).unwrap(),
            target_rate,
            weight: target_rate * 1.5,
            feasible,
            max_share: (!feasible).then_some(0.3),
        };
        PlanSnapshot {
            placement: PlacementId::parse("home_feed").unwrap(),
            version: 7,
            issued_at_ms: 1_795_600_790_000,
            sample_rate: 0.25,
            targets_rev: 3,
            campaigns: vec![campaign("A", 0.5, true), campaign("B", 0.4, false)],
        }
    }

    #[test]
    fn a_snapshot_becomes_one_row_per_campaign() {
        let all = rows(snapshot());
        assert_eq!(all.len(), 2);
        assert_eq!((all[1].plan_version, all[1].campaign.as_ref().unwrap().id.as_str()), (7, "B"));
        let empty = rows(PlanSnapshot { campaigns: vec![], ..snapshot() });
        assert_eq!(empty.len(), 1, "a plan without ads is still a known version");
        assert_eq!((empty[0].plan_version, &empty[0].campaign), (7, &None));
    }

    #[test]
    fn encodes_readable_deterministic_parquet() {
        let mut all = rows(snapshot());
        all.extend(rows(PlanSnapshot { version: 8, campaigns: vec![], ..snapshot() }));
        let refs: Vec<&PlanRow> = all.iter().collect();
        let bytes = encode(&refs).unwrap();
        assert_eq!(bytes, encode(&refs).unwrap(), "same rows, same bytes");
        let batch = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap().next().unwrap().unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, COLUMNS);
        let max_share = batch.column(9).as_any().downcast_ref::<Float64Array>().unwrap();
        assert!(arrow_array::Array::is_null(max_share, 0));
        assert_eq!(max_share.value(1), 0.3);
        let target = batch.column(6).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((target.value(0), target.value(1)), (0.5, 0.4));
        assert!(arrow_array::Array::is_null(target, 2) && arrow_array::Array::is_null(batch.column(5), 2));
    }
}
