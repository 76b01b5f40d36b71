//! Reports on the embedded engine (DataFusion), over the archive in S3 or a directory.
//!
//! Each dataset is registered as a Hive-partitioned listing table (`events`, `plans`,
//! `audit`) with its schema and partition columns `dt` and `hour` as strings, which is
//! how the Glue tables present them to Athena, so the report SQL runs unchanged. Day
//! filters on `dt` prune whole partitions here as they do there.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::SessionContext;
use object_store::aws::AmazonS3Builder;

use allot_archive::ArchiveConfig;
use allot_archive::dataset::{Audit, Dataset, Events, Plans};

use crate::ReportError;
use crate::table::{ColumnKind, ResultTable};

fn err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Local(e.to_string())
}

/// Runs `sql` over the archive: in `dir` when given, else in the configured bucket.
pub async fn query(cfg: &ArchiveConfig, dir: Option<&Path>, sql: &str) -> Result<ResultTable, ReportError> {
    let ctx = SessionContext::new();
    let root = match dir {
        Some(dir) => {
            let dir = std::path::absolute(dir).map_err(err)?;
            format!("{}/", dir.display().to_string().trim_end_matches('/'))
        }
        None => {
            register_s3(&ctx, cfg)?;
            format!("s3://{}/{}", cfg.bucket, cfg.key_prefix())
        }
    };
    register::<Events>(&ctx, &root)?;
    register::<Plans>(&ctx, &root)?;
    register::<Audit>(&ctx, &root)?;
    let df = ctx.sql(sql).await.map_err(err)?;
    let schema = df.schema().as_arrow().clone();
    let batches = df.collect().await.map_err(err)?;
    let mut out = ResultTable {
        columns: schema.fields().iter().map(|f| (f.name().clone(), kind_of(f.data_type()))).collect(),
        rows: Vec::new(),
    };
    let options = FormatOptions::default();
    for batch in &batches {
        let columns: Vec<_> =
            batch.columns().iter().map(|c| (c, ArrayFormatter::try_new(c.as_ref(), &options))).collect();
        for row in 0..batch.num_rows() {
            let mut values = Vec::with_capacity(columns.len());
            for (array, fmt) in &columns {
                let fmt = fmt.as_ref().map_err(err)?;
                values.push((!array.is_null(row)).then(|| fmt.value(row).to_string()));
            }
            out.rows.push(values);
        }
    }
    Ok(out)
}

/// Registers dataset `D` as a Hive-partitioned table under `root`.
fn register<D: Dataset>(ctx: &SessionContext, root: &str) -> Result<(), ReportError> {
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("dt".into(), DataType::Utf8), ("hour".into(), DataType::Utf8)]);
    let url = ListingTableUrl::parse(format!("{root}{}/", D::NAME)).map_err(err)?;
    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(D::schema());
    let table = ListingTable::try_new(config).map_err(err)?;
    ctx.register_table(D::NAME, Arc::new(table)).map_err(err)?;
    Ok(())
}

fn kind_of(t: &DataType) -> ColumnKind {
    if t.is_integer() {
        ColumnKind::Integer
    } else if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        ColumnKind::Float
    } else {
        ColumnKind::Text
    }
}

/// Lets the context read `s3://{bucket}` with the archive's endpoint and credentials.
fn register_s3(ctx: &SessionContext, cfg: &ArchiveConfig) -> Result<(), ReportError> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket).with_region(&cfg.region);
    if let Some(ep) = &cfg.endpoint {
        builder = builder.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
    }
    builder = builder.with_virtual_hosted_style_request(!cfg.path_style);
    if let (Some(ak), Some(sk)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        builder = builder.with_access_key_id(ak).with_secret_access_key(secrecy::ExposeSecret::expose_secret(sk));
    }
    let store = builder.build().map_err(err)?;
    let url = url::Url::parse(&format!("s3://{}", cfg.bucket)).map_err(err)?;
    ctx.register_object_store(&url, Arc::new(store));
    Ok(())
}
