//! Getting plans to the edge: one interface, two transports, chosen in config.
//!
//! - [`crate::cloudflare`]: the Cloudflare KV REST API (production).
//! - The worker's own `PUT /internal/plans/{placement}` (local and self-hosted), signed
//!   like events but with the push keys (every active one, so a rotation can switch
//!   either side first), verified at the edge by the same core `Verifier`. `204` is
//!   success. `409` with the version the edge holds (`held_version`: this version, a
//!   newer one, or a different plan under this version) means this placement's versions
//!   fell behind the edge's (Redis restored from an older copy, a plan pushed with the
//!   push key) and is [`PublishError::Behind`]: the control loop publishes above it.
//!   Left alone, every later push would be refused while the edge served a version
//!   ingest no longer knows. A `409` without it (a signed push received twice) is logged.
//!
//! A plan that fails to publish is not stored as current, so the next round retries it.

use std::time::Duration;

use allot_core::{Plan, signature};
use secrecy::ExposeSecret;

use crate::cloudflare::CloudflarePublisher;
use crate::config::{Config, PublishKind};

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("unexpected status {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the KV API refused the write: {0}")]
    Api(String),
    #[error("the edge holds version {held}, at or above the one pushed")]
    Behind { held: u64 },
}

/// Pushes plans to the worker.
#[derive(Debug, Clone)]
pub struct WorkerPublisher {
    client: reqwest::Client,
    base: String,
    keys: Vec<Vec<u8>>,
}

impl WorkerPublisher {
    pub fn new(client: reqwest::Client, base: &str, keys: Vec<Vec<u8>>) -> Self {
        Self { client, base: base.trim_end_matches('/').to_string(), keys }
    }

    pub async fn publish_one(&self, plan: &Plan) -> Result<(), PublishError> {
        let body = plan.to_json();
        let sig = signature::sign_all(&self.keys, crate::now_ms() / 1000, body.as_bytes());
        let url = format!("{}/internal/plans/{}", self.base, plan.placement);
        let response = self
            .client
            .put(url)
            .header(signature::HEADER, sig)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        match response.status().as_u16() {
            200 | 204 => Ok(()),
            409 => {
                let body = response.text().await.unwrap_or_default();
                match held_version(&body) {
                    Some(held) if held >= plan.version => Err(PublishError::Behind { held }),
                    _ => {
                        tracing::warn!(placement = %plan.placement, version = plan.version, answer = %body, "the worker kept the plan it holds");
                        Ok(())
                    }
                }
            }
            status => Err(PublishError::Status { status, body: response.text().await.unwrap_or_default() }),
        }
    }
}

/// The version a worker's `409` says it holds: `{"error": {"held_version": …}}`.
fn held_version(body: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(body).ok()?.pointer("/error/held_version")?.as_u64()
}

/// The configured transport.
#[derive(Debug)]
pub enum Publisher {
    /// Plans are stored but not pushed (a deployment where something else syncs KV).
    None,
    Worker(WorkerPublisher),
    Cloudflare(CloudflarePublisher),
}

impl Publisher {
    pub fn from_config(config: &Config) -> Result<Self, reqwest::Error> {
        crate::telemetry::install_crypto();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(match (config.publish.kind, &config.publish.worker, &config.publish.cloudflare) {
            (PublishKind::Worker, Some(w), _) => {
                let keys = w.keys.iter().map(|k| k.expose_secret().as_bytes().to_vec()).collect();
                Self::Worker(WorkerPublisher::new(client, &w.url, keys))
            }
            (PublishKind::Cloudflare, _, Some(cf)) => Self::Cloudflare(CloudflarePublisher::new(client, cf.clone())),
            _ => Self::None,
        })
    }

    /// Publishes `plans`; one result per plan, in order.
    pub async fn publish(&self, plans: &[Plan]) -> Vec<Result<(), PublishError>> {
        match self {
            Self::None => plans.iter().map(|_| Ok(())).collect(),
            Self::Worker(w) => {
                let mut out = Vec::with_capacity(plans.len());
                for p in plans {
                    out.push(w.publish_one(p).await);
                }
                out
            }
            Self::Cloudflare(cf) => cf.publish(plans).await,
        }
    }
}
