//! The Cloudflare KV REST API publisher.
//!
//! Plans are written with the bulk endpoint
//! (`PUT {base}/accounts/{account}/storage/kv/namespaces/{namespace}/bulk`, a JSON array
//! of `{key, value[, expiration_ttl]}`), chunked to the API's limits (10,000 pairs and
//! 100 MB per request). `429` and `5xx` answers (and connection errors) are retried under
//! the core's [`RetryPolicy`] (from `initial_backoff_ms`, doubling, jittered, at most
//! `max_retries` times), waiting longer when `Retry-After` asks for it. KV allows one
//! write per key per second, so a key written less than a second ago is held back until
//! the second has passed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use allot_core::{Plan, RetryPolicy};
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::CloudflareConfig;
use crate::publish::PublishError;

/// Per-pair overhead in the JSON body (quotes, field names, commas).
const PAIR_OVERHEAD: usize = 64;
/// KV's per-key write rate.
const KEY_INTERVAL: Duration = Duration::from_secs(1);
/// No wait between retries is longer, `Retry-After` included: the control loop has
/// its next round to run.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The retries of one bulk write.
fn retry_policy(config: &CloudflareConfig) -> RetryPolicy {
    RetryPolicy::new(Duration::from_millis(config.initial_backoff_ms), MAX_BACKOFF).with_max_retries(config.max_retries)
}

/// The wait before a retry: the policy's `jittered` delay, or what the API asked for in
/// `Retry-After` when that is longer (within the policy's cap).
fn retry_wait(policy: &RetryPolicy, jittered: Duration, retry_after: Option<Duration>) -> Duration {
    retry_after.map_or(jittered, |after| after.min(policy.max).max(jittered))
}

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
        let policy = retry_policy(&self.config);
        let mut backoff = policy.start();
        loop {
            let sent = self
                .client
                .put(self.url())
                .bearer_auth(self.config.api_token.expose_secret())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let (failure, retry_after) = match sent {
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
                    let failure = PublishError::Status {
                        status: status.as_u16(),
                        body: response.text().await.unwrap_or_default(),
                    };
                    if !retryable {
                        return Err(failure);
                    }
                    (failure, after)
                }
                Err(e) => (PublishError::from(e), None),
            };
            let Some(jittered) = backoff.next(rand::random()) else {
                return Err(failure);
            };
            let wait = retry_wait(&policy, jittered, retry_after);
            tracing::warn!(error = %failure, retry = backoff.attempts(), ?wait, "KV bulk write failed; retrying");
            tokio::time::sleep(wait).await;
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

    fn config(max_retries: u32, initial_backoff_ms: u64) -> CloudflareConfig {
        let mut c: CloudflareConfig =
            toml::from_str("account_id = \"a\"\nnamespace_id = \"n\"\napi_token = \"t\"").expect("minimal config");
        c.max_retries = max_retries;
        c.initial_backoff_ms = initial_backoff_ms;
        c
    }

    #[test]
    fn retries_follow_the_configured_policy() {
        let policy = retry_policy(&config(3, 200));
        let mut backoff = policy.start();
        let waits: Vec<Option<u128>> = (0..4).map(|_| backoff.next(0.5).map(|d| d.as_millis())).collect();
        assert_eq!(waits, [Some(150), Some(300), Some(600), None], "doubling, jittered, three retries");
        assert_eq!(policy.start().next(0.0), Some(Duration::from_millis(100)), "never less than half the ceiling");
        assert_eq!(retry_policy(&config(20, 200)).ceiling(19), MAX_BACKOFF);
        assert_eq!(retry_policy(&config(0, 200)).start().next(0.5), None, "no retries at all");
    }

    #[test]
    fn retry_after_lengthens_the_wait_within_the_cap() {
        let policy = retry_policy(&config(5, 200));
        let jittered = Duration::from_millis(150);
        assert_eq!(retry_wait(&policy, jittered, None), jittered);
        assert_eq!(retry_wait(&policy, jittered, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(retry_wait(&policy, jittered, Some(Duration::ZERO)), jittered, "never shorter than the policy");
        assert_eq!(retry_wait(&policy, jittered, Some(Duration::from_secs(3600))), MAX_BACKOFF);
    }

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
