//! The isolate's plan cache.
//!
//! KV is the source of truth, but a KV read per request would cost more than the rest
//! of the request together. Each isolate therefore keeps the compiled plan of every
//! placement it has served and asks KV again only after `PLAN_TTL_SECS`; reads use
//! `cacheTtl`, so even that read is usually answered by the edge cache.
//!
//! The cache never makes things worse than the last good state:
//! - a KV error or a value that does not parse keeps the last good plan (logged);
//! - a plan older than the cached one is ignored (plan versions only go up), and so is
//!   a different plan under the cached version;
//! - a withdrawn plan (a deleted placement) is kept, and answered as unknown;
//! - while one request refreshes a placement, the others keep serving the old plan.
//!
//! A plan read from KV is only parsed until the cache knows it will serve it: nearly
//! every refresh finds the version it holds, and compiling that plan again (masks,
//! every creative written out) would be thrown away at once.
//!
//! Unknown placements are remembered too (for the same TTL), so a flood of requests
//! for a missing placement does not become a flood of KV reads; how many such
//! entries are kept is bounded. So are the plans, by their estimated bytes
//! (`PLAN_CACHE_MAX_BYTES`): past the bound the plans used longest ago are let go, and
//! their placements read from KV again when next asked for, as a fresh isolate would.
//! Unbounded, an isolate serving every placement of a large deployment (or a client
//! asking for each in turn) would pass the runtime's 128 MB and be ended, its unsent
//! events with it.
//!
//! Each entry also holds the placement's [`Spread`] (core's memory of the picks, used by
//! [`choose`]), so that a campaign's count follows its weight to a few requests rather
//! than with the binomial spread of independent random picks (`allot_core::spread`).
//! In the entry it is bounded exactly as the cache is: one per cached placement, each
//! of a size core bounds whatever clients send. The entry keeps its spread when its
//! plan changes, because the spread is made to carry over plan versions (a new version
//! needs no new start); it is lost only with the isolate, and the next one starts
//! afresh from random bits.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use allot_core::{Choice, CompiledPlan, PlacementId, Plan, RequestAttrs, Spread, Succession};
use worker::Env;

use crate::config::{Config, PLANS_BINDING};
use crate::error::ApiError;
use crate::rng;

/// How many placements without a usable plan are remembered.
const MAX_NEGATIVE: usize = 1024;
/// A refresh that has not finished after this long is presumed lost (its request went
/// away) and another request may start one.
const REFRESH_GIVE_UP_MS: f64 = 5_000.0;

#[derive(Debug, Clone)]
enum State {
    Ready(Rc<CompiledPlan>),
    /// KV has no plan for the placement.
    Absent,
    /// KV failed or held garbage, and there is no earlier plan to fall back to.
    Broken,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// The placement's picks, across the plans `state` has held.
    spread: Spread,
    checked_at_ms: f64,
    refresh_started_ms: Option<f64>,
    /// When a request last asked for it: the least recent plan goes first.
    used_ms: f64,
    /// The plan's estimated bytes ([`CompiledPlan::approx_bytes`]); 0 without a plan.
    bytes: usize,
}

thread_local! {
    static CACHE: RefCell<HashMap<String, Entry>> = RefCell::new(HashMap::new());
    /// The sum of the entries' `bytes`.
    static PLAN_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn state_bytes(state: &State) -> usize {
    match state {
        State::Ready(plan) => plan.approx_bytes(),
        State::Absent | State::Broken => 0,
    }
}

/// Lets go of the plans used longest ago, other than `keep`'s, while the plans hold
/// more than `budget` bytes.
fn evict(cache: &mut HashMap<String, Entry>, keep: &str, budget: usize) {
    while PLAN_BYTES.get() > budget {
        let oldest = cache
            .iter()
            .filter(|(name, e)| e.bytes > 0 && name.as_str() != keep)
            .min_by(|a, b| a.1.used_ms.total_cmp(&b.1.used_ms))
            .map(|(name, _)| name.clone());
        let Some(entry) = oldest.and_then(|name| cache.remove(&name)) else { return };
        PLAN_BYTES.set(PLAN_BYTES.get() - entry.bytes);
    }
}

/// What a lookup needs to do, decided without holding the cache across an await.
enum Step {
    Use(State),
    Load,
}

fn step(placement: &str, ttl_ms: f64, now_ms: f64) -> Step {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let Some(entry) = cache.get_mut(placement) else { return Step::Load };
        entry.used_ms = now_ms;
        if now_ms - entry.checked_at_ms < ttl_ms {
            return Step::Use(entry.state.clone());
        }
        match entry.refresh_started_ms {
            Some(started) if now_ms - started < REFRESH_GIVE_UP_MS => Step::Use(entry.state.clone()),
            _ => {
                entry.refresh_started_ms = Some(now_ms);
                Step::Load
            }
        }
    })
}

fn to_result(placement: &str, state: State) -> Result<Rc<CompiledPlan>, ApiError> {
    match state {
        // A deleted placement is answered exactly like one that never existed, so no
        // request to it is served or sampled; the tombstone stays cached to keep its
        // version, which no older plan can undercut.
        State::Ready(plan) if !plan.plan().withdrawn => Ok(plan),
        State::Ready(_) | State::Absent => {
            Err(ApiError::not_found("unknown_placement", format!("no plan for placement {placement:?}")))
        }
        State::Broken => Err(ApiError::unavailable(
            "plan_unavailable",
            format!("the plan for placement {placement:?} cannot be read right now"),
        )),
    }
}

/// A plan of the placement, offered to the cache.
enum Offered {
    /// Pushed: compiled already, because the push checked it whole before storing it.
    Compiled(CompiledPlan),
    /// Read from KV: parsed, and compiled only if it is to be served ([`settle`]).
    Parsed(Plan),
}

impl Offered {
    fn plan(&self) -> &Plan {
        match self {
            Offered::Compiled(plan) => plan.plan(),
            Offered::Parsed(plan) => plan,
        }
    }

    fn compile(self) -> Result<CompiledPlan, String> {
        match self {
            Offered::Compiled(plan) => Ok(plan),
            Offered::Parsed(plan) => {
                #[cfg(test)]
                tests::COMPILED.with(|n| n.set(n.get() + 1));
                CompiledPlan::new(plan).map_err(|e| e.to_string())
            }
        }
    }
}

/// What reading KV produced.
enum Loaded {
    Plan(Box<Offered>),
    Absent,
    Failed(String),
}

async fn read(env: &Env, config: &Config, placement: &PlacementId) -> Loaded {
    let kv = match env.kv(PLANS_BINDING) {
        Ok(kv) => kv,
        Err(e) => return Loaded::Failed(format!("KV binding {PLANS_BINDING}: {e}")),
    };
    let key = Plan::kv_key(placement);
    let bytes = match kv.get(&key).cache_ttl(config.kv_cache_ttl_secs).bytes().await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Loaded::Absent,
        Err(e) => return Loaded::Failed(format!("KV get {key}: {e}")),
    };
    match parse(&bytes, placement) {
        Ok(plan) => Loaded::Plan(Box::new(Offered::Parsed(plan))),
        Err(e) => Loaded::Failed(format!("KV value {key} is not a usable plan: {e}")),
    }
}

/// Parses a plan, which must belong to `placement`.
fn parse(bytes: &[u8], placement: &PlacementId) -> Result<Plan, String> {
    let plan = Plan::parse(bytes).map_err(|e| e.to_string())?;
    if &plan.placement != placement {
        return Err(format!("it is the plan of placement {:?}", plan.placement.as_str()));
    }
    Ok(plan)
}

/// Parses and compiles a plan, which must belong to `placement`.
pub fn compile(bytes: &[u8], placement: &PlacementId) -> Result<CompiledPlan, String> {
    CompiledPlan::new(parse(bytes, placement)?).map_err(|e| e.to_string())
}

/// The state serving `offered`, compiled now; `None` (logged) if it cannot be.
fn served(placement: &str, offered: Offered) -> Option<State> {
    let version = offered.plan().version;
    offered
        .compile()
        .inspect_err(|e| worker::console_error!("plan {placement} v{version} cannot be served: {e}"))
        .ok()
        .map(|plan| State::Ready(Rc::new(plan)))
}

/// Folds a KV read into the cache and returns the state to serve. A plan is compiled
/// only when it will be served: a newer version, or the first usable plan. Anything
/// else leaves the cached plan in place (the cached version again, the same plan or a
/// rival, or an older one) and is only compared, parsed; for an unchanged placement
/// that is every refresh.
fn settle(placement: &str, loaded: Loaded, now_ms: f64, budget: usize) -> State {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let previous = cache.get(placement).map(|e| e.state.clone());
        let state = match (loaded, previous) {
            (Loaded::Plan(new), Some(State::Ready(old))) => match old.plan().succession(new.plan()) {
                Succession::Newer => served(placement, *new).unwrap_or(State::Ready(old)),
                Succession::Same => State::Ready(old),
                Succession::Older => {
                    worker::console_warn!(
                        "KV holds plan {placement} v{} but v{} is cached; keeping the newer",
                        new.plan().version,
                        old.plan().version
                    );
                    State::Ready(old)
                }
                Succession::Conflict => {
                    // Switching between two plans of one version would make the edge's
                    // behaviour depend on which read came last.
                    worker::console_error!(
                        "KV holds a different plan {placement} v{} than the cached one; keeping the cached",
                        new.plan().version
                    );
                    State::Ready(old)
                }
            },
            (Loaded::Plan(new), _) => served(placement, *new).unwrap_or(State::Broken),
            (Loaded::Absent, _) => State::Absent,
            (Loaded::Failed(why), Some(State::Ready(old))) => {
                worker::console_error!("{why}; serving the last good plan (v{})", old.plan().version);
                State::Ready(old)
            }
            (Loaded::Failed(why), _) => {
                worker::console_error!("{why}; no earlier plan to serve");
                State::Broken
            }
        };
        if !matches!(state, State::Ready(_)) && !cache.contains_key(placement) {
            let negative = cache.values().filter(|e| !matches!(e.state, State::Ready(_))).count();
            if negative >= MAX_NEGATIVE {
                cache.retain(|_, e| matches!(e.state, State::Ready(_)));
            }
        }
        let bytes = state_bytes(&state);
        match cache.get_mut(placement) {
            // Updated in place, so the spread carries over to the new state.
            Some(entry) => {
                PLAN_BYTES.set(PLAN_BYTES.get() - entry.bytes + bytes);
                entry.state = state.clone();
                entry.checked_at_ms = now_ms;
                entry.refresh_started_ms = None;
                entry.used_ms = now_ms;
                entry.bytes = bytes;
            }
            None => {
                PLAN_BYTES.set(PLAN_BYTES.get() + bytes);
                let entry = Entry {
                    state: state.clone(),
                    spread: Spread::new(),
                    checked_at_ms: now_ms,
                    refresh_started_ms: None,
                    used_ms: now_ms,
                    bytes,
                };
                cache.insert(placement.to_owned(), entry);
            }
        }
        evict(&mut cache, placement, budget);
        state
    })
}

/// The plan to serve for `placement` if the cache can answer now; `None` means the
/// caller must [`load`] it (and is now the one refreshing it).
pub fn lookup(config: &Config, placement: &PlacementId, now_ms: f64) -> Option<Result<Rc<CompiledPlan>, ApiError>> {
    let name = placement.as_str();
    match step(name, config.plan_ttl_ms, now_ms) {
        Step::Use(state) => Some(to_result(name, state)),
        Step::Load => None,
    }
}

/// The plan this isolate holds for `placement`, a withdrawn one included, without
/// touching the cache's freshness: what a push is ordered against.
pub fn held(placement: &PlacementId) -> Option<Rc<CompiledPlan>> {
    CACHE.with(|cache| match cache.borrow().get(placement.as_str()).map(|e| &e.state) {
        Some(State::Ready(plan)) => Some(plan.clone()),
        _ => None,
    })
}

/// Reads the placement's plan from KV, folds it into the cache and returns what to serve.
pub async fn load(
    env: &Env,
    config: &Config,
    placement: &PlacementId,
    now_ms: f64,
) -> Result<Rc<CompiledPlan>, ApiError> {
    let loaded = read(env, config, placement).await;
    let name = placement.as_str();
    to_result(name, settle(name, loaded, now_ms, config.plan_cache_max_bytes))
}

/// The plan to serve for `placement`: from the cache while fresh, else from KV.
pub async fn get(
    env: &Env,
    config: &Config,
    placement: &PlacementId,
    now_ms: f64,
) -> Result<Rc<CompiledPlan>, ApiError> {
    match lookup(config, placement, now_ms) {
        Some(result) => result,
        None => load(env, config, placement, now_ms).await,
    }
}

/// Chooses the ad for a request served by `plan` (just taken from the cache by
/// [`lookup`] or [`load`]) with its placement's spread
/// ([`CompiledPlan::choose_spread`]). The entry is looked up again rather than handed
/// out with the plan: a hash of the placement costs less than a shared cell per
/// entry, and the spread never leaves the cache.
pub fn choose(plan: &CompiledPlan, attrs: RequestAttrs<'_>) -> Choice {
    CACHE.with(|cache| match cache.borrow_mut().get_mut(plan.plan().placement.as_str()) {
        Some(entry) => plan.choose_spread(attrs, &mut entry.spread, rng::bits64),
        // Rare: a plan is served from its entry, and only a bound on the cache lets an
        // entry with a plan go. The plain random pick is still a correct one.
        None => plan.choose(attrs, rng::unit()),
    })
}

/// Puts a freshly pushed plan into this isolate's cache, so it is served at once.
pub fn install(config: &Config, plan: CompiledPlan, now_ms: f64) {
    let name = plan.plan().placement.as_str().to_owned();
    settle(&name, Loaded::Plan(Box::new(Offered::Compiled(plan))), now_ms, config.plan_cache_max_bytes);
}

/// The estimated bytes of the plans cached.
pub fn cached_bytes() -> usize {
    PLAN_BYTES.get()
}

/// How many placements have a plan cached.
pub fn cached() -> usize {
    CACHE.with(|cache| cache.borrow().values().filter(|e| matches!(e.state, State::Ready(_))).count())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use allot_core::PlacementId;
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    thread_local! {
        /// How many plans read from KV were compiled.
        pub(super) static COMPILED: Cell<usize> = const { Cell::new(0) };
    }

    /// "A" for iOS only (weight 2), "B" anywhere (weight 1), no ad (weight 1).
    fn plan(placement: &str) -> CompiledPlan {
        let campaign = |id: &str, weight: u32, platforms: &[&str]| {
            let eligibility = json!({"platforms": platforms, "countries": []});
            json!({"id": id, "weight": weight, "creative": {}, "eligibility": eligibility})
        };
        let plan = json!({
            "format": 1, "placement": placement, "version": 1, "issued_at_ms": 0, "sample_rate": 1, "no_ad_weight": 1,
            "campaigns": [campaign("A", 2, &["ios"]), campaign("B", 1, &[])],
        });
        compile(plan.to_string().as_bytes(), &PlacementId::parse(placement).expect("placement")).expect("plan")
    }

    /// Past the byte bound, the plans asked for longest ago go (their placements are
    /// read from KV again when next asked for); the one just settled always stays.
    #[test]
    fn past_the_byte_bound_the_plans_used_longest_ago_go() {
        CACHE.with(|cache| cache.borrow_mut().clear());
        PLAN_BYTES.set(0);
        let each = plan("bounded-0").approx_bytes();
        let budget = 3 * each + each / 2;
        let offer = |name: &str, now_ms: f64| {
            let loaded = Loaded::Plan(Box::new(Offered::Compiled(plan(name))));
            assert!(matches!(settle(name, loaded, now_ms, budget), State::Ready(_)), "{name} is served");
            assert!(PLAN_BYTES.get() <= budget, "{} bytes held", PLAN_BYTES.get());
        };
        for i in 0..10 {
            offer(&format!("bounded-{i}"), 1_000.0 + f64::from(i));
        }
        let held = || {
            let mut names: Vec<String> = CACHE.with(|cache| cache.borrow().keys().cloned().collect());
            names.sort();
            names
        };
        assert_eq!(held(), ["bounded-7", "bounded-8", "bounded-9"]);
        assert_eq!(PLAN_BYTES.get(), 3 * each);
        // Asked for since: bounded-7 stays, and bounded-8, now the least recent, goes.
        assert!(matches!(step("bounded-7", f64::MAX, 2_000.0), Step::Use(State::Ready(_))));
        offer("bounded-0", 2_001.0);
        assert_eq!(held(), ["bounded-0", "bounded-7", "bounded-9"]);
    }

    /// A plan whose placement has no cache entry cannot use a spread, and gets the plain
    /// random pick instead: still a request's eligibility, still the plan's odds, and no
    /// entry made on the side (only a KV read or a push makes one, within the bounds).
    #[test]
    fn a_plan_without_its_entry_gets_the_plain_pick_at_the_plans_odds() {
        let plan = plan("fallback");
        let web = RequestAttrs { platform: Some("web"), country: None };
        let ios = RequestAttrs { platform: Some("ios"), country: None };
        let n = 4_000;
        // Per outcome: A, B, no ad.
        let (mut on_ios, mut on_web) = ([0usize; 3], [0usize; 3]);
        for _ in 0..n {
            let c = choose(&plan, ios);
            assert_eq!(c.eligible, 0b11);
            on_ios[c.ad.unwrap_or(2)] += 1;
            let c = choose(&plan, web);
            assert_eq!(c.eligible, 0b10);
            on_web[c.ad.unwrap_or(2)] += 1;
        }
        assert_eq!(on_web[0], 0, "an iOS-only campaign was picked for the web");
        // Odds ½ ¼ ¼ on iOS, 0 ½ ½ on the web; 200 is over six standard deviations.
        for (counts, odds) in [(on_ios, [0.5, 0.25, 0.25]), (on_web, [0.0, 0.5, 0.5])] {
            for (count, p) in counts.iter().zip(odds) {
                let want = p * n as f64;
                assert!((*count as f64 - want).abs() <= 200.0, "{counts:?} over {n} requests, odds {odds:?}");
            }
        }
        assert!(CACHE.with(|cache| !cache.borrow().contains_key("fallback")), "the fallback made a cache entry");
    }

    /// A KV read's plan is compiled only to be served: a refresh that finds the cached
    /// version (the same plan, or a rival under it) and one that finds an older version
    /// compile nothing and keep the cached plan itself; a newer version is compiled once.
    #[test]
    fn a_refresh_compiles_only_a_plan_it_will_serve() {
        let placement = PlacementId::parse("refreshed").expect("placement");
        let read = |version: u64, no_ad_weight: f64| {
            let plan = json!({
                "format": 1, "placement": "refreshed", "version": version, "issued_at_ms": 0, "sample_rate": 1,
                "no_ad_weight": no_ad_weight, "campaigns": [],
            });
            Loaded::Plan(Box::new(Offered::Parsed(parse(plan.to_string().as_bytes(), &placement).expect("plan"))))
        };
        let compiled = || COMPILED.with(Cell::get);
        let ready = |state: State| match state {
            State::Ready(plan) => plan,
            other => panic!("not a plan: {other:?}"),
        };
        let before = compiled();
        let held = ready(settle("refreshed", read(3, 1.0), 0.0, usize::MAX));
        assert_eq!(compiled(), before + 1, "the first plan is compiled");
        for (i, (version, no_ad_weight)) in [(3, 1.0), (3, 1.0), (3, 2.0), (2, 1.0)].into_iter().enumerate() {
            let kept = ready(settle("refreshed", read(version, no_ad_weight), 1.0 + i as f64, usize::MAX));
            assert!(Rc::ptr_eq(&kept, &held), "v{version} ({no_ad_weight}) replaced the cached plan");
            assert_eq!(compiled(), before + 1, "v{version} ({no_ad_weight}) was compiled");
        }
        let newer = ready(settle("refreshed", read(4, 1.0), 10.0, usize::MAX));
        assert_eq!(newer.plan().version, 4);
        assert_eq!(compiled(), before + 2, "a newer plan is compiled once");
        assert!(Rc::ptr_eq(&ready(settle("refreshed", read(4, 1.0), 11.0, usize::MAX)), &newer));
        assert_eq!(compiled(), before + 2);
    }
}
