//! Sending sampled events to the origin, off the response path.
//!
//! Events wait in a per-isolate outbox and go out as one signed `POST /v1/events` per
//! batch, inside `ctx.wait_until`, so neither a slow nor a failing origin touches the
//! response or its latency. A batch leaves when it reaches `EVENT_BATCH_MAX` events or
//! when its oldest event is `EVENT_BATCH_AGE_MS` old: the request that puts the first
//! event into an empty outbox arms a timer (inside its own `wait_until`) that flushes
//! whatever is there when it fires, so no event waits for traffic that may never come.
//!
//! A send that times out, fails to connect or gets a 429 or 5xx is retried under
//! [`RETRY`], the core's retry policy; the jitter keeps isolates that failed together
//! from retrying together. A batch is signed once: every retry sends the same bytes
//! under the same header, so the origin recognises a body it already stored (its
//! answer lost to a timeout) and stores it once. Re-signing with a new timestamp would
//! make the retry a different body, stored twice. A batch that
//! still fails, or that the origin refuses outright, is logged and counted, never
//! dropped silently. The counters are on `/healthz`.

use std::cell::RefCell;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use allot_core::{Event, EventBatch, RetryPolicy, signature};
use futures_util::future::{Either, select};
use worker::{AbortController, Context, Delay, Fetch, Headers, Method, Request, RequestInit};

use crate::config::Config;

/// Beyond this many waiting events new ones are refused (counted as dropped): a dead
/// origin must not grow the isolate's memory without bound.
const MAX_WAITING: usize = 10_000;
/// One retry, a quarter to half a second after the failure: `wait_until` work has a
/// time budget, and a batch that fails twice is more likely an origin outage than a
/// blip.
const RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(500), Duration::from_millis(500)).with_max_retries(1);

/// What happened to events in this isolate; served on `/healthz`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Counters {
    /// Events accepted into the outbox.
    pub queued: u64,
    /// Events the origin acknowledged.
    pub sent: u64,
    /// Events in batches that failed for good.
    pub failed: u64,
    /// Events refused before sending (no origin configured, outbox full).
    pub dropped: u64,
    /// Batches sent more than once.
    pub retried_batches: u64,
    /// Batches that failed for good.
    pub failed_batches: u64,
}

#[derive(Debug, Default)]
struct Outbox {
    waiting: Vec<Event>,
    timer_armed: bool,
    counters: Counters,
}

thread_local! {
    static OUTBOX: RefCell<Outbox> = RefCell::new(Outbox::default());
}

/// This isolate's event counters.
pub fn counters() -> Counters {
    OUTBOX.with(|o| o.borrow().counters)
}

/// What `enqueue` decided, acted on after the outbox is released.
enum Then {
    Nothing,
    Send(Vec<Event>),
    ArmTimer,
}

/// Queues a sampled event; may schedule a flush on `ctx`.
pub fn enqueue(ctx: &Context, config: &Rc<Config>, event: Event) {
    let then = OUTBOX.with(|o| {
        let mut o = o.borrow_mut();
        if config.events_url.is_none() || config.ingest_key.is_none() {
            o.counters.dropped += 1;
            if o.counters.dropped.is_power_of_two() {
                worker::console_error!(
                    "no ORIGIN_URL/INGEST_KEY: {} sampled events dropped so far",
                    o.counters.dropped
                );
            }
            return Then::Nothing;
        }
        if o.waiting.len() >= MAX_WAITING {
            o.counters.dropped += 1;
            if o.counters.dropped.is_power_of_two() {
                worker::console_error!("event outbox full: {} sampled events dropped so far", o.counters.dropped);
            }
            return Then::Nothing;
        }
        o.waiting.push(event);
        o.counters.queued += 1;
        if o.waiting.len() >= config.batch_max {
            Then::Send(std::mem::take(&mut o.waiting))
        } else if !o.timer_armed {
            o.timer_armed = true;
            Then::ArmTimer
        } else {
            Then::Nothing
        }
    });
    match then {
        Then::Nothing => {}
        Then::Send(batch) => {
            let config = config.clone();
            ctx.wait_until(async move { deliver(&config, batch).await });
        }
        Then::ArmTimer => {
            let config = config.clone();
            ctx.wait_until(async move {
                Delay::from(Duration::from_millis(config.batch_age_ms)).await;
                let batch = OUTBOX.with(|o| {
                    let mut o = o.borrow_mut();
                    o.timer_armed = false;
                    std::mem::take(&mut o.waiting)
                });
                if !batch.is_empty() {
                    deliver(&config, batch).await;
                }
            });
        }
    }
}

/// Why one send did not succeed.
#[derive(Debug)]
enum SendError {
    /// Worth another try: timeout, connection failure, 5xx, 429.
    Transient(String),
    /// The origin refused the batch; sending it again would not help.
    Refused(String),
}

async fn deliver(config: &Config, events: Vec<Event>) {
    let n = events.len() as u64;
    let batch = EventBatch { events };
    let body = batch.to_json();
    let Some(signed) = sign(config, &body) else {
        OUTBOX.with(|o| {
            let mut o = o.borrow_mut();
            o.counters.failed += n;
            o.counters.failed_batches += 1;
        });
        worker::console_error!("lost {n} sampled events: no ORIGIN_URL/INGEST_KEY");
        return;
    };
    let mut outcome = send(config, &body, &signed).await;
    let mut backoff = RETRY.start();
    while let Err(SendError::Transient(why)) = &outcome
        && let Some(wait) = backoff.next(crate::rng::unit())
    {
        worker::console_warn!("sending {n} events failed ({why}); retrying in {} ms", wait.as_millis());
        if backoff.attempts() == 1 {
            OUTBOX.with(|o| o.borrow_mut().counters.retried_batches += 1);
        }
        Delay::from(wait).await;
        outcome = send(config, &body, &signed).await;
    }
    OUTBOX.with(|o| {
        let mut o = o.borrow_mut();
        match &outcome {
            Ok(()) => o.counters.sent += n,
            Err(SendError::Transient(why) | SendError::Refused(why)) => {
                o.counters.failed += n;
                o.counters.failed_batches += 1;
                worker::console_error!(
                    "lost {n} sampled events: {why} ({} events in {} batches failed so far)",
                    o.counters.failed,
                    o.counters.failed_batches
                );
            }
        }
    });
}

/// The signature header of `body`, made once per batch (now, with the ingest key);
/// `None` without an origin or a key.
fn sign(config: &Config, body: &str) -> Option<String> {
    let key = config.ingest_key.as_ref()?;
    config.events_url.as_ref()?;
    let now_secs = (js_sys::Date::now() / 1000.0) as u64;
    Some(signature::sign(key, now_secs, body.as_bytes()))
}

async fn send(config: &Config, body: &str, signed: &str) -> Result<(), SendError> {
    let Some(url) = &config.events_url else {
        return Err(SendError::Refused("no ORIGIN_URL".into()));
    };
    let refused = |e: worker::Error| SendError::Refused(e.to_string());
    let headers = Headers::new();
    headers.set("content-type", "application/json").map_err(refused)?;
    headers.set(signature::HEADER, signed).map_err(refused)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(body.into()));
    let request = Request::new_with_init(url, &init).map_err(refused)?;

    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let response = pin!(fetch.send_with_signal(&signal));
    let timeout = pin!(Delay::from(Duration::from_millis(config.send_timeout_ms)));
    match select(response, timeout).await {
        Either::Left((Ok(response), _)) => match response.status_code() {
            200..=299 => Ok(()),
            s @ (429 | 500..=599) => Err(SendError::Transient(format!("origin answered {s}"))),
            s => Err(SendError::Refused(format!("origin answered {s}"))),
        },
        Either::Left((Err(e), _)) => Err(SendError::Transient(e.to_string())),
        Either::Right(_) => {
            controller.abort();
            Err(SendError::Transient(format!("no answer within {} ms", config.send_timeout_ms)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    fn a_failed_batch_is_retried_once_within_half_a_second() {
        let mut backoff = RETRY.start();
        let wait = backoff.next(crate::rng::unit()).expect("one retry");
        assert!(wait >= Duration::from_millis(250) && wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(backoff.next(crate::rng::unit()), None, "then the batch counts as failed");
    }

    #[wasm_bindgen_test]
    fn the_jitter_spreads_the_retries_of_many_isolates() {
        let waits: Vec<Duration> = (0..64).map(|_| RETRY.start().next(crate::rng::unit()).expect("a retry")).collect();
        let (min, max) = (waits.iter().min().expect("waits"), waits.iter().max().expect("waits"));
        assert!(*max - *min > Duration::from_millis(100), "{min:?}..{max:?}");
    }
}
