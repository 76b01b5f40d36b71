//! `PUT /internal/plans/{placement}`: the origin's way to publish a plan when it runs
//! without the Cloudflare API (locally, self-hosted).
//!
//! A push is signed like events (`X-Allot-Signature` over the body) but with its own
//! keys, `PUSH_KEYS`: a leaked ingest key can send events, never change what the edge
//! serves. During a rotation the origin signs with every active key and the edge
//! accepts any of its keys, so the keys can change on either side first. The header
//! is parsed and its timestamp checked before the body is read, and the body is read
//! only up to [`MAX_PLAN_BYTES`] (`body`): a request that cannot be a fresh push costs no
//! body, and one that can costs at most a plan's worth.
//!
//! The plan is checked by core before anything is written, and the edge holds three
//! rules whatever the network does to pushes:
//! - versions only go up: an older plan is refused with `409 stale_version`, so a
//!   delayed or replayed push never rolls a placement back;
//! - one version names one plan: the held version again is a retry (`204`, nothing
//!   written) only with identical bytes, otherwise `409 version_conflict`;
//! - a signed request is used once: this isolate remembers the pushes it accepted
//!   while their signatures are fresh and refuses a replay (`409 replayed`). Other
//!   isolates do not share that memory; the version rules above are what make a
//!   replay harmless everywhere.
//!
//! The pushing isolate installs the plan at once; the others pick it up within their
//! TTL.

use std::cell::RefCell;
use std::collections::VecDeque;

use allot_core::plan::MAX_PLAN_BYTES;
use allot_core::signature::{self, SignatureHeader};
use allot_core::{PlacementId, Plan, Succession};
use sha2::{Digest, Sha256};
use worker::Env;

use crate::config::{Config, PLANS_BINDING, PUSH_MAX_SKEW_SECS};
use crate::error::ApiError;
use crate::{body, plans, query, respond};

/// Accepted pushes remembered per isolate; the oldest go first.
const MAX_REMEMBERED: usize = 256;

/// A signed request already accepted: its signed timestamp and body digest. The MAC
/// binds exactly these two, so reshuffling the header's tags makes no new push.
type Seen = (u64, [u8; 32]);

thread_local! {
    static SEEN: RefCell<VecDeque<Seen>> = const { RefCell::new(VecDeque::new()) };
}

fn fingerprint(t: u64, body: &[u8]) -> Seen {
    (t, Sha256::digest(body).into())
}

/// Whether this isolate accepted `seen` before; forgets what is too old to verify.
fn replayed(seen: &Seen, now_secs: u64) -> bool {
    SEEN.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|(t, _)| t.abs_diff(now_secs) <= PUSH_MAX_SKEW_SECS);
        s.contains(seen)
    })
}

fn remember(seen: Seen) {
    SEEN.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() >= MAX_REMEMBERED {
            s.pop_front();
        }
        s.push_back(seen);
    })
}

pub async fn serve(req: &web_sys::Request, raw_placement: &str, env: &Env) -> Result<web_sys::Response, ApiError> {
    let placement = query::decode(raw_placement)
        .ok_or_else(|| ApiError::bad_request("bad_placement", "the placement in the path is not valid UTF-8"))
        .and_then(|p| PlacementId::parse(p).map_err(|e| ApiError::bad_request("bad_placement", e.to_string())))?;
    let config = Config::get(env);
    let Some(verifier) = config.push_keys.as_ref() else {
        return Err(ApiError::unavailable(
            "not_configured",
            "PUSH_KEYS is not set on this worker (one or two keys of at least 16 bytes)",
        ));
    };
    let header = req
        .headers()
        .get(signature::HEADER)
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::unauthorized(format!("the {} header is required", signature::HEADER)))?;
    let refused = |e: signature::SignatureError| ApiError::unauthorized(e.to_string());
    // The header alone first: a malformed or stale one is refused before any of the
    // body is read, and the body is bounded however it is sent.
    let header = SignatureHeader::parse(&header)
        .and_then(|h| verifier.check_time(&h, (js_sys::Date::now() / 1000.0) as u64).map(|()| h))
        .map_err(refused)?;
    let bytes = body::read(req, MAX_PLAN_BYTES).await?;
    let now_ms = js_sys::Date::now();
    let now_secs = (now_ms / 1000.0) as u64;
    // The time again: a body sent slowly does not stretch the signature's freshness.
    let t = verifier
        .check_time(&header, now_secs)
        .and_then(|()| verifier.verify_parsed(&header, &bytes))
        .map_err(refused)?;
    let seen = fingerprint(t, &bytes);
    if replayed(&seen, now_secs) {
        return Err(ApiError::conflict("replayed", "this signed push was already received"));
    }

    let plan = Plan::parse(&bytes).map_err(|e| ApiError::bad_request("invalid_plan", e.to_string()))?;
    if plan.placement != placement {
        return Err(ApiError::bad_request(
            "placement_mismatch",
            format!("the body is the plan of {:?}, the path names {:?}", plan.placement.as_str(), placement.as_str()),
        ));
    }
    let compiled = plans::compile(&bytes, &placement).map_err(|e| ApiError::bad_request("invalid_plan", e))?;

    let kv = env.kv(PLANS_BINDING).map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    let key = Plan::kv_key(&placement);
    // No cacheTtl: the version check wants the freshest value this location can see.
    let stored = kv.get(&key).bytes().await.map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    match stored.as_deref().map(|held| (held, Plan::parse(held))) {
        Some((held_bytes, Ok(held))) => match held.succession(&plan) {
            Succession::Newer => {}
            Succession::Same if held_bytes == bytes.as_slice() => {
                remember(seen);
                plans::install(compiled, now_ms);
                return Ok(respond::no_content()?);
            }
            Succession::Same | Succession::Conflict => {
                return Err(ApiError::conflict(
                    "version_conflict",
                    format!("version {} is already held with different content", plan.version),
                ));
            }
            Succession::Older => {
                return Err(ApiError::conflict(
                    "stale_version",
                    format!("version {} is older than the stored version {}", plan.version, held.version),
                ));
            }
        },
        Some((_, Err(e))) => worker::console_warn!("replacing an unreadable {key}: {e}"),
        None => {}
    }
    kv.put_bytes(&key, &bytes)
        .map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?
        .execute()
        .await
        .map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    remember(seen);
    plans::install(compiled, now_ms);
    Ok(respond::no_content()?)
}
