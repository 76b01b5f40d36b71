//! Randomness for choosing and for request ids, without a call into JS per request.
//!
//! Each isolate seeds a small PRNG once from the platform's CSPRNG
//! (`crypto.getRandomValues`, through getrandom) and draws from it in Wasm. No use
//! needs cryptographic strength: the spread's random starts and the sampling draws
//! ([`bits64`]; a draw is hashed under the edge key before it is compared with the
//! rate) and the outbox's jitter need uniformity, and request ids need uniqueness
//! (apps may supply their own anyway).

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

thread_local! {
    static RNG: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

fn seeded() -> SmallRng {
    let mut seed = <SmallRng as SeedableRng>::Seed::default();
    if let Err(e) = getrandom::fill(seed.as_mut()) {
        // Never expected in workerd; still better than failing the request.
        worker::console_error!("getrandom failed ({e}); seeding from the clock and Math.random");
        let fallback = (js_sys::Math::random() * 2f64.powi(53)) as u64 ^ js_sys::Date::now() as u64;
        return SmallRng::seed_from_u64(fallback);
    }
    SmallRng::from_seed(seed)
}

fn with<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|cell| {
        let mut slot = cell.borrow_mut();
        f(slot.get_or_insert_with(seeded))
    })
}

/// A uniform number in `[0, 1)`.
pub fn unit() -> f64 {
    with(|r| r.random::<f64>())
}

/// 64 random bits, for [`allot_core::Spread`]'s random starts (the `fresh` of
/// [`allot_core::CompiledPlan::choose_spread`]): where one isolate's picks start must
/// not be predictable, nor the same in every isolate.
pub fn bits64() -> u64 {
    with(|r| r.random::<u64>())
}

/// 128 random bits, for a fresh request id.
pub fn bits128() -> u128 {
    with(|r| r.random::<u128>())
}
