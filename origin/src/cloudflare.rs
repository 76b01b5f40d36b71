//! The Cloudflare KV REST API publisher.
//!
//! Plans are written with the bulk endpoint
//! (`PUT {base}/accounts/{account}/storage/kv/namespaces/{namespace}/bulk`, a JSON array
//! of `{key, value[, expiration_ttl]}`), chunked to the API's limits (10,000 pairs and
//! 100 MB per request). `429` and `5xx` answers (and connection errors) are retried with
//! exponential backoff, honouring `Retry-After`. KV allows one write per key per second,
//! so a key written less than a second ago is held back until the second has passed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use allot_core::Plan;
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::CloudflareConfig;
use crate::publish::PublishError;

/// Per-pair overhead in the JSON body (quotes, field names, commas).
const PAIR_OVERHEAD: usize = 64;
/// KV's per-key write rate.
const KEY_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
struct Pair<'a> {
    key: &'a str,
    value: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration_ttl: Option<u64>,
}

/// Writes plans to Workers KV through the REST API.
#[derive(Debug)]
pub struct CloudflarePublisher {
    client: reqwest::Client,
    config: CloudflareConfig,
    last_write: Mutex<HashMap<String, Instant>>,
}

/// Splits `sizes` into consecutive chunks of at most `max_items` items and `max_bytes`
/// bytes (an item larger than `max_bytes` travels alone). Returns chunk lengths.
pub fn chunk_lengths(sizes: &[usize], max_items: usize, max_bytes: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut n, mut bytes) = (0, 0);
    for &s in sizes {
        if n > 0 && (n == max_items || bytes + s > max_bytes) {
            out.push(n);
            (n, bytes) = (0, 0);
        }
        n += 1;
        bytes += s;
    }
    if n > 0 {
        out.push(n);
    }
    out
}

impl CloudflarePublisher {
    pub fn new(client: reqwest::Client, config: CloudflareConfig) -> Self {
        Self { client, config, last_write: Mutex::new(HashMap::new()) }
    }

    fn url(&self) -> String {
        format!(
            "{}/accounts/{}/storage/kv/namespaces/{}/bulk",
            self.config.base_url.trim_end_matches('/'),
            self.config.account_id,
            self.config.namespace_id
        )
    }

    pub async fn publish(&self, plans: &[Plan]) -> Vec<Result<(), PublishError>> {
        let pairs: Vec<(String, String)> = plans.iter().map(|p| (Plan::kv_key(&p.placement), p.to_json())).collect();
        let sizes: Vec<usize> = pairs.iter().map(|(k, v)| k.len() + v.len() + PAIR_OVERHEAD).collect();
        let lengths =
            chunk_lengths(&sizes, self.config.max_keys_per_request.max(1), self.config.max_bytes_per_request.max(1));
        let mut out = Vec::with_capacity(plans.len());
        let mut start = 0;
        for len in lengths {
            let chunk = &pairs[start..start + len];
            start += len;
            let result = self.write_chunk(chunk).await;
            let err = result.err().map(|e| e.to_string());
            for _ in chunk {
                out.push(match &err {
                    None => Ok(()),
                    Some(e) => Err(PublishError::Api(e.clone())),
                });
            }
        }
        out
    }

    async fn write_chunk(&self, chunk: &[(String, String)]) -> Result<(), PublishError> {
        // One write per key per second.
        let wait = {
            let last = self.last_write.lock().await;
            chunk
                .iter()
                .filter_map(|(k, _)| last.get(k))
                .map(|t| KEY_INTERVAL.saturating_sub(t.elapsed()))
                .max()
                .unwrap_or_default()
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let ttl = (self.config.expiration_ttl_secs > 0).then_some(self.config.expiration_ttl_secs);
        let body: Vec<Pair<'_>> = chunk.iter().map(|(k, v)| Pair { key: k, value: v, expiration_ttl: ttl }).collect();
        let body = serde_json::to_vec(&body).map_err(|e| PublishError::Api(e.to_string()))?;
        let mut attempt = 0;
        loop {
            let sent = self
                .client
                .put(self.url())
                .bearer_auth(self.config.api_token.expose_secret())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let retry_after = match sent {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let now = Instant::now();
                        let mut last = self.last_write.lock().await;
                        for (k, _) in chunk {
                            last.insert(k.clone(), now);
                        }
                        return check_body(&response.text().await.unwrap_or_default());
                    }
                    let retryable = status.as_u16() == 429 || status.is_server_error();
                    let after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = response.text().await.unwrap_or_default();
                    if !retryable || attempt >= self.config.max_retries {
                        return Err(PublishError::Status { status: status.as_u16(), body: text });
                    }
                    tracing::warn!(status = status.as_u16(), attempt, "KV bulk write refused; retrying");
                    after
                }
                Err(e) => {
                    if attempt >= self.config.max_retries {
                        return Err(e.into());
                    }
                    tracing::warn!(error = %e, attempt, "KV bulk write failed; retrying");
                    None
                }
            };
            let backoff = Duration::from_millis(self.config.initial_backoff_ms.saturating_mul(1 << attempt.min(10)));
            tokio::time::sleep(retry_after.unwrap_or(backoff).min(Duration::from_secs(30))).await;
            attempt += 1;
        }
    }
}

/// The API answers `{"success": true, "result": {"unsuccessful_keys": [...]}}`.
fn check_body(text: &str) -> Result<(), PublishError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|_| PublishError::Api(format!("unexpected response {text:?}")))?;
    if v["success"] != serde_json::Value::Bool(true) {
        return Err(PublishError::Api(format!("success is not true: {}", v["errors"])));
    }
    match v["result"]["unsuccessful_keys"].as_array() {
        Some(keys) if !keys.is_empty() => Err(PublishError::Api(format!("keys not written: {keys:?}"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_both_limits() {
        assert_eq!(chunk_lengths(&[10; 5], 2, 1000), vec![2, 2, 1]);
        assert_eq!(chunk_lengths(&[400, 400, 400], 10, 1000), vec![2, 1]);
        assert_eq!(chunk_lengths(&[2000, 10], 10, 1000), vec![1, 1]);
        assert!(chunk_lengths(&[], 10, 10).is_empty());
    }

    #[test]
    fn response_bodies() {
        assert!(
            check_body(r#"{"success":true,"errors":[],"result":{"successful_key_count":1,"unsuccessful_keys":[]}}"#)
                .is_ok()
        );
        assert!(check_body(r#"{"success":true,"result":{"unsuccessful_keys":["plan:a"]}}"#).is_err());
        assert!(check_body(r#"{"success":false,"errors":[{"code":10000}]}"#).is_err());
        assert!(check_body("oops").is_err());
    }
}
