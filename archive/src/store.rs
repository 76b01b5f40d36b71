//! The archive bucket, through `aws-sdk-s3`.
//!
//! Only what the archiver needs: put an object at a key, see whether one exists (a
//! recovery flush keeps what an interrupted flush stored), and list keys (for operators
//! and tests). Uploads are single `PutObject`s: a flush is at most `flush_max_rows` events,
//! a few megabytes of zstd Parquet, far below the 5 GB single-upload limit.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use crate::{ArchiveConfig, ArchiveError};

/// A handle on the archive bucket.
#[derive(Debug, Clone)]
pub struct ArchiveStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl ArchiveStore {
    pub async fn connect(cfg: &ArchiveConfig) -> Self {
        let sdk = cfg.sdk_config(cfg.endpoint.as_deref(), &cfg.region).await;
        let s3 = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(cfg.path_style).build();
        Self { client: aws_sdk_s3::Client::from_conf(s3), bucket: cfg.bucket.clone(), prefix: cfg.key_prefix() }
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix objects go under (empty or ending in `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stores `body` at `key` (overwriting).
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), ArchiveError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/vnd.apache.parquet")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| ArchiveError::S3(format!("put {key}: {}", DisplayErrorContext(&e))))?;
        Ok(())
    }

    /// Whether an object is stored at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, ArchiveError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(ArchiveError::S3(format!("head {key}: {}", DisplayErrorContext(&e)))),
        }
    }

    /// Every key under `prefix` (relative to the bucket), in S3's order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        let mut keys = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| ArchiveError::S3(format!("list {prefix}: {}", DisplayErrorContext(&e))))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        Ok(keys)
    }
}
