//! A Workers KV bulk endpoint on loopback that records every write the origin's
//! publisher (`origin/src/cloudflare.rs`) sends: when, which keys, how many bytes.
//!
//! It is the KV side of the measurement (writes per placement, bulk request sizes) and
//! the edge's source of plans: the simulated edge serves exactly what was written here,
//! as a real edge serves what is in KV.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use allot_core::Plan;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::put;

/// The account and namespace the origin is configured with.
pub const ACCOUNT: &str = "capacity-account";
pub const NAMESPACE: &str = "capacity-ns";
pub const TOKEN: &str = "capacity-kv-token";

/// One accepted bulk request.
#[derive(Debug, Clone)]
pub struct BulkWrite {
    pub at: Instant,
    /// The keys written, in the request's order.
    pub keys: Vec<String>,
    /// The values (plans as JSON), in the same order.
    pub values: Vec<String>,
    /// The request body's length.
    pub bytes: usize,
}

#[derive(Debug, Default)]
struct Seen {
    writes: Vec<BulkWrite>,
    /// The newest value per key.
    values: HashMap<String, String>,
    /// Requests refused because their shape was wrong (a measurement of a broken
    /// publisher measures nothing).
    malformed: Vec<String>,
}

/// The running endpoint; cheap to clone.
#[derive(Debug, Clone)]
pub struct FakeKv {
    /// The `base_url` for the origin's `[publish.cloudflare]`.
    pub base_url: String,
    seen: Arc<Mutex<Seen>>,
}

impl FakeKv {
    pub async fn start() -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let path = format!("/client/v4/accounts/{ACCOUNT}/storage/kv/namespaces/{NAMESPACE}/bulk");
        let router = Router::new().route(&path, put(bulk)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { base_url: format!("http://{addr}/client/v4"), seen })
    }

    /// The origin's `[publish]` section for this endpoint.
    pub fn publish_toml(&self) -> String {
        format!(
            "[publish]\nkind = \"cloudflare\"\n[publish.cloudflare]\nbase_url = \"{}\"\naccount_id = \"{ACCOUNT}\"\n\
             namespace_id = \"{NAMESPACE}\"\napi_token = \"{TOKEN}\"\ninitial_backoff_ms = 50\n",
            self.base_url
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The plan under `key` as the edge would read it.
    pub fn plan(&self, key: &str) -> Option<Plan> {
        let value = self.lock().values.get(key).cloned()?;
        Plan::parse(value.as_bytes()).ok()
    }

    /// Every accepted bulk request so far.
    pub fn writes(&self) -> Vec<BulkWrite> {
        self.lock().writes.clone()
    }

    /// Requests whose shape was wrong.
    pub fn malformed(&self) -> Vec<String> {
        self.lock().malformed.clone()
    }
}

async fn bulk(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let mut s = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
    let pairs: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    let mut keys = Vec::with_capacity(pairs.len());
    let mut values = Vec::with_capacity(pairs.len());
    for p in &pairs {
        match (p["key"].as_str(), p["value"].as_str()) {
            (Some(k), Some(v)) if Plan::parse(v.as_bytes()).is_ok() => {
                keys.push(k.to_string());
                values.push(v.to_string());
            }
            _ => s.malformed.push(format!("a pair that is not a key and a plan: {p}")),
        }
    }
    if bearer != Some(&format!("Bearer {TOKEN}")) || pairs.is_empty() || keys.len() != pairs.len() {
        s.malformed.push(format!("bulk request refused ({} pairs)", pairs.len()));
        return (StatusCode::BAD_REQUEST, r#"{"success":false,"errors":[{"code":10001}]}"#.into());
    }
    for (k, v) in keys.iter().zip(&values) {
        s.values.insert(k.clone(), v.clone());
    }
    let n = keys.len();
    s.writes.push(BulkWrite { at: Instant::now(), keys, values, bytes: body.len() });
    let answer = serde_json::json!({"success": true, "errors": [], "messages": [],
        "result": {"successful_key_count": n, "unsuccessful_keys": []}});
    (StatusCode::OK, answer.to_string())
}
