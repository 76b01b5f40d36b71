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
//! A push refused for its version names the version held (`held_version` in the
//! error), so the origin can publish above it. The held version is the newer of KV's
//! and the plan this isolate serves: KV is read without a compare-and-swap, so the
//! edge's own cache is what stops a push older than a plan it has already taken while
//! KV lags behind. Within an isolate only one push of a placement is between its KV
//! read and its install at a time; another one meanwhile is `503 busy`. Without that,
//! a delayed v5 and a v6 could both read v4 and both write, v5 last: KV would hold v5
//! while this isolate served v6, and every other isolate would go back to v5.
//!
//! An isolate's memory is shared by everything it serves, and a push body lives in it
//! from its first byte to the answer, across awaits. Anyone can send a header that
//! passes the time check, so at most [`MAX_READING`] pushes are read at once per
//! isolate (the origin sends one at a time); more are `503 busy` with `Retry-After`,
//! unread. Without that bound, ~120 pushes stalled just under the limit would take the
//! isolate down, and its outbox of unsent events with it.
//!
//! The pushing isolate installs the plan at once (unless it meanwhile took a newer
//! one: [`plans::install`] never goes back a version); the others pick it up within
//! their TTL.

use std::cell::{Cell, RefCell};
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

/// Pushes read at once per isolate: each may hold a plan's worth of body, its stored
/// predecessor and its compiled plan until it is answered. The origin pushes one plan
/// at a time; two leave room for a retry of a push the origin gave up on.
const MAX_READING: usize = 2;

/// A signed request already accepted: its signed timestamp and body digest. The MAC
/// binds exactly these two, so reshuffling the header's tags makes no new push.
type Seen = (u64, [u8; 32]);

thread_local! {
    static SEEN: RefCell<VecDeque<Seen>> = const { RefCell::new(VecDeque::new()) };
    /// Pushes holding a [`Reading`].
    static READING: Cell<usize> = const { Cell::new(0) };
    /// Placements with a push holding a [`Writing`]: at most [`MAX_READING`].
    static WRITING: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// One of the [`MAX_READING`] places for a push in this isolate's memory, held from
/// before its body is read to its answer. It is given back when dropped, so on every
/// way out: an answer, an error returned early, and the push's future dropped unfinished.
struct Reading(());

impl Reading {
    fn enter() -> Result<Self, ApiError> {
        READING.with(|n| {
            if n.get() >= MAX_READING {
                return Err(ApiError::busy(format!("{MAX_READING} plan pushes are being read already; push again")));
            }
            n.set(n.get() + 1);
            Ok(Reading(()))
        })
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READING.with(|n| n.set(n.get() - 1));
    }
}

/// The one push of a placement between its KV read and its install in this isolate,
/// so that two pushes cannot both judge the same stored plan and then both write.
/// Given back when dropped, as [`Reading`] is.
struct Writing(String);

impl Writing {
    fn enter(placement: &PlacementId) -> Result<Self, ApiError> {
        let name = placement.as_str();
        WRITING.with(|w| {
            let mut w = w.borrow_mut();
            if w.iter().any(|p| p == name) {
                return Err(ApiError::busy(format!("another plan of {name:?} is being stored; push again")));
            }
            w.push(name.to_owned());
            Ok(Writing(name.to_owned()))
        })
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.with(|w| w.borrow_mut().retain(|p| p != &self.0));
    }
}

fn stale(offered: u64, held: u64, whose: &str) -> ApiError {
    let message = format!("version {offered} is older than the {whose} version {held}");
    ApiError::version_refused("stale_version", message, held)
}

fn conflicting(version: u64, whose: &str) -> ApiError {
    let message = format!("version {version} is already {whose} with different content");
    ApiError::version_refused("version_conflict", message, version)
}

/// How `offered` follows `held` (KV's plan, or the one this isolate holds, as `whose`
/// says): an older version, or a rival under the held version, is refused naming the
/// version held.
fn follows(held: &Plan, offered: &Plan, whose: &str) -> Result<Succession, ApiError> {
    match held.succession(offered) {
        Succession::Older => Err(stale(offered.version, held.version, whose)),
        Succession::Conflict => Err(conflicting(offered.version, whose)),
        next => Ok(next),
    }
}

/// Refuses `plan` if this isolate holds a newer plan of the placement (a withdrawn one
/// included), or another plan of its version: whatever KV says, this edge does not go
/// back.
fn check_served(plan: &Plan) -> Result<(), ApiError> {
    plans::held(&plan.placement).map_or(Ok(()), |held| follows(held.plan(), plan, "served").map(drop))
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
    // A declared length over the limit is refused before it takes a place.
    let declared = body::declared(req, MAX_PLAN_BYTES)?;
    // Held to the answer: the body, the stored plan and the compiled one live until then.
    let _reading = Reading::enter()?;
    let bytes = body::read_declared(req, declared, MAX_PLAN_BYTES).await?;
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
    check_served(&plan)?;

    let _writing = Writing::enter(&placement)?;
    let kv = env.kv(PLANS_BINDING).map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    let key = Plan::kv_key(&placement);
    // No cacheTtl: the version check wants the freshest value this location can see.
    let stored = kv.get(&key).bytes().await.map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    // Again after the wait: a request may have taken a newer plan from KV meanwhile.
    check_served(&plan)?;
    match stored.as_deref().map(|held| (held, Plan::parse(held))) {
        Some((held_bytes, Ok(held))) => match follows(&held, &plan, "stored")? {
            Succession::Newer => {}
            // The same plan again, byte for byte: a retry, changing nothing.
            _ if held_bytes == bytes.as_slice() => {
                remember(seen);
                plans::install(&config, compiled, now_ms);
                return Ok(respond::no_content()?);
            }
            _ => return Err(conflicting(plan.version, "stored")),
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
    // Keeps a newer plan if this isolate took one meanwhile: the cache never goes back.
    plans::install(&config, compiled, now_ms);
    Ok(respond::no_content()?)
}
