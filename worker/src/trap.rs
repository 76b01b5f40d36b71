//! `GET /internal/trap`: a deliberate Wasm trap, for the tests of panic recovery only.
//!
//! Nothing a client sends can make the worker panic, so the tests of what happens
//! after a trap (the entry module answers that request with a JSON 500 and serves the
//! next ones from a fresh instance, see `worker/entry.mjs`) need a door of their own.
//! It exists only when the `TEST_TRAPS` binding is set, which only the test
//! configurations do; without it the path is an unknown route like any other (`404`).
//!
//! `?when=` picks where the panic happens, since each is recovered differently:
//! - (none) `now`: inside the synchronous fetch call;
//! - `later`: after an await (a KV read), in a future the entry module is waiting on;
//! - `background`: in this request's `wait_until` after the answer left, where no
//!   request waits at all; the next request must still find a working instance.

use std::time::Duration;

use worker::{Context, Delay, Env};

use crate::config::{Config, PLANS_BINDING};
use crate::error::ApiError;
use crate::respond;

pub const PATH: &str = "/internal/trap";

/// Where the trap goes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Now,
    Later,
    Background,
}

/// The trap a request asks for, if traps are on; `None`: the route does not exist.
pub fn requested(env: &Env, query: &str) -> Option<Result<When, ApiError>> {
    if !Config::get(env).test_traps {
        return None;
    }
    let [when] = match crate::query::params(query, ["when"]) {
        Ok(p) => p,
        Err(e) => return Some(Err(ApiError::bad_request("bad_query", e.to_string()))),
    };
    Some(match when.as_deref() {
        None | Some("now") => Ok(When::Now),
        Some("later") => Ok(When::Later),
        Some("background") => Ok(When::Background),
        Some(other) => Err(ApiError::bad_request("bad_query", format!("unknown trap {other:?}"))),
    })
}

/// Goes off now, or arms the background trap and answers `202`; `Ok(None)` for
/// [`When::Later`], which needs the async path ([`later`]).
pub fn now(when: When, ctx: &Context) -> Result<Option<web_sys::Response>, ApiError> {
    match when {
        When::Now => go_off("now"),
        When::Later => Ok(None),
        When::Background => {
            ctx.wait_until(async {
                Delay::from(Duration::from_millis(20)).await;
                go_off("background")
            });
            Ok(Some(respond::json_with(202, r#"{"trap":"armed"}"#, None)?))
        }
    }
}

/// Awaits a KV read, then goes off.
pub async fn later(env: &Env) -> Result<web_sys::Response, ApiError> {
    let kv = env.kv(PLANS_BINDING)?;
    // The value does not matter; the await does.
    let _ = kv.get("plan:trap").text().await;
    go_off("later")
}

fn go_off(when: &str) -> ! {
    panic!("test trap ({when}), TEST_TRAPS is set")
}
