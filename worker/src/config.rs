//! The worker's settings, read from its environment once per isolate.
//!
//! Bindings do not change during an isolate's life, and every read is a call into JS,
//! so they are parsed on the first request and kept. A malformed value is logged and
//! replaced by its default rather than failing requests: the ad path must keep serving.

use std::cell::OnceCell;
use std::rc::Rc;

use allot_core::{EdgeKey, Verifier};
use worker::Env;

use crate::cors::Cors;

/// The KV namespace holding `plan:{placement}` values.
pub const PLANS_BINDING: &str = "PLANS";

/// How far a plan push's signature timestamp may be from the edge's clock.
pub const PUSH_MAX_SKEW_SECS: u64 = 300;

/// Cloudflare refuses a KV `cacheTtl` below this.
const MIN_KV_CACHE_TTL_SECS: u64 = 60;

#[derive(Debug)]
pub struct Config {
    /// How long a parsed plan is used before KV is asked again (`PLAN_TTL_SECS`, 10 s).
    pub plan_ttl_ms: f64,
    /// The edge cache lifetime of KV reads.
    pub kv_cache_ttl_secs: u64,
    /// `{ORIGIN_URL}/v1/events`, if an origin is configured.
    pub events_url: Option<String>,
    /// The `INGEST_KEY` secret: signs events.
    pub ingest_key: Option<Vec<u8>>,
    /// The `PUSH_KEYS` secret: one or two keys (comma-separated, two while rotating),
    /// any of which authenticates a plan push. Separate from the ingest key, so a key
    /// that can send events cannot change what the edge serves.
    pub push_keys: Option<Verifier>,
    /// Browser origins allowed to call the public routes (`CORS_ORIGINS`,
    /// comma-separated, or `*`); empty: no CORS headers at all.
    pub cors: Cors,
    /// The edge secrets (`EDGE_KEY`, then `EDGE_KEY_PREVIOUS` during a rotation): the
    /// first samples requests and issues impression tokens; all verify tokens. Only
    /// edges hold them. Empty when `EDGE_KEY` is missing or too short: then nothing is
    /// sampled, ads carry no token and impressions are refused.
    pub edge_keys: Vec<EdgeKey>,
    /// Flush the event batch at this many events (`EVENT_BATCH_MAX`, 100).
    pub batch_max: usize,
    /// … or before its body passes this many bytes (`EVENT_BATCH_MAX_BYTES`,
    /// [`crate::outbox::BATCH_MAX_BYTES`]): keep it under the origin's
    /// `ingest.max_body_bytes`, which refuses a larger body whole.
    pub batch_max_bytes: usize,
    /// … or when its oldest event is this old (`EVENT_BATCH_AGE_MS`, 1000).
    pub batch_age_ms: u64,
    /// Give up on one send after this long (`EVENT_TIMEOUT_MS`, 5000).
    pub send_timeout_ms: u64,
    /// The outbox's bound in bytes of waiting batches (`EVENT_OUTBOX_MAX_BYTES`,
    /// [`crate::outbox::MAX_BYTES`]); beyond it new events are dropped and counted.
    pub outbox_max_bytes: usize,
    /// A batch is sent only this long after it was signed (`EVENT_MAX_AGE_SECS`, 270):
    /// keep it under the origin's `ingest.max_skew_secs`, beyond which the origin
    /// refuses the signature as stale.
    pub outbox_max_age_ms: u64,
    /// The isolate's plan cache holds at most about this many bytes of plans
    /// (`PLAN_CACHE_MAX_BYTES`, 32 MiB; [`crate::plans`]).
    pub plan_cache_max_bytes: usize,
    /// The `HEALTH_KEY` secret (at least 16 bytes): `/healthz` shows the outbox's
    /// counters only to a request bearing it ([`crate::health`]).
    pub health_key: Option<Vec<u8>>,
    /// `TEST_TRAPS` set: the deliberate trap route of the recovery tests exists
    /// ([`crate::trap`]). Only test configurations set it.
    pub test_traps: bool,
}

thread_local! {
    static CONFIG: OnceCell<Rc<Config>> = const { OnceCell::new() };
}

fn text(env: &Env, name: &str) -> Option<String> {
    // Secrets and vars are both plain strings to the worker.
    env.var(name).ok().map(|v| v.to_string()).filter(|s| !s.is_empty())
}

fn number(env: &Env, name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
    match text(env, name).map(|s| s.trim().parse::<u64>()) {
        None => default,
        Some(Ok(n)) if range.contains(&n) => n,
        Some(_) => {
            worker::console_error!("{name} must be a whole number in {range:?}; using {default}");
            default
        }
    }
}

impl Config {
    fn read(env: &Env) -> Self {
        let ttl_secs = number(env, "PLAN_TTL_SECS", 10, 1..=86_400);
        let events_url = text(env, "ORIGIN_URL").map(|o| format!("{}/v1/events", o.trim_end_matches('/')));
        let ingest_key = text(env, "INGEST_KEY").map(String::into_bytes);
        if ingest_key.as_ref().is_some_and(|k| k.len() < 16) {
            worker::console_error!("INGEST_KEY is shorter than 16 bytes; events and plan pushes are refused");
        }
        if events_url.is_none() || ingest_key.is_none() {
            worker::console_warn!("ORIGIN_URL or INGEST_KEY is not set: sampled events cannot be sent");
        }
        let push_keys = text(env, "PUSH_KEYS").and_then(|keys| {
            let keys: Vec<Vec<u8>> = keys.split(',').map(|k| k.trim().as_bytes().to_vec()).collect();
            Verifier::new(keys, PUSH_MAX_SKEW_SECS)
                .inspect_err(|e| worker::console_error!("PUSH_KEYS: {e}; plan pushes are refused"))
                .ok()
        });
        let edge_key = |name: &str| {
            let secret = text(env, name)?;
            EdgeKey::new(secret.as_bytes()).inspect_err(|e| worker::console_error!("{name}: {e}; it is not used")).ok()
        };
        let mut edge_keys: Vec<EdgeKey> = Vec::new();
        if let Some(current) = edge_key("EDGE_KEY") {
            edge_keys.push(current);
            edge_keys.extend(edge_key("EDGE_KEY_PREVIOUS"));
        } else {
            worker::console_error!("EDGE_KEY is not set: nothing is sampled and impressions are refused");
        }
        Self {
            edge_keys,
            plan_ttl_ms: ttl_secs as f64 * 1000.0,
            kv_cache_ttl_secs: ttl_secs.max(MIN_KV_CACHE_TTL_SECS),
            events_url,
            ingest_key: ingest_key.filter(|k| k.len() >= 16),
            push_keys,
            cors: Cors::parse(text(env, "CORS_ORIGINS").as_deref().unwrap_or("")),
            batch_max: number(env, "EVENT_BATCH_MAX", 100, 1..=allot_core::event::MAX_BATCH as u64) as usize,
            batch_max_bytes: number(
                env,
                "EVENT_BATCH_MAX_BYTES",
                crate::outbox::BATCH_MAX_BYTES as u64,
                16 * 1024..=1024 * 1024,
            ) as usize,
            batch_age_ms: number(env, "EVENT_BATCH_AGE_MS", 1000, 1..=20_000),
            send_timeout_ms: number(env, "EVENT_TIMEOUT_MS", 5000, 100..=10_000),
            outbox_max_bytes: number(
                env,
                "EVENT_OUTBOX_MAX_BYTES",
                crate::outbox::MAX_BYTES as u64,
                1_024..=64 * 1024 * 1024,
            ) as usize,
            outbox_max_age_ms: number(env, "EVENT_MAX_AGE_SECS", crate::outbox::MAX_AGE_MS / 1000, 10..=3_600) * 1000,
            plan_cache_max_bytes: number(env, "PLAN_CACHE_MAX_BYTES", 32 << 20, 1 << 20..=96 << 20) as usize,
            health_key: text(env, "HEALTH_KEY").map(String::into_bytes).filter(|k| {
                let long = k.len() >= 16;
                if !long {
                    worker::console_error!("HEALTH_KEY is shorter than 16 bytes; /healthz shows no counters");
                }
                long
            }),
            test_traps: text(env, "TEST_TRAPS").is_some(),
        }
    }

    /// The key that samples and issues tokens now.
    pub fn edge_key(&self) -> Option<&EdgeKey> {
        self.edge_keys.first()
    }

    /// This isolate's settings.
    pub fn get(env: &Env) -> Rc<Config> {
        CONFIG.with(|cell| cell.get_or_init(|| Rc::new(Self::read(env))).clone())
    }
}
