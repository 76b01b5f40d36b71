//! Sending sampled events to the origin, off the response path: the workerd shell
//! around the [`outbox`] state machine.
//!
//! A request that queues an event (or finds events waiting) starts a *driver* inside
//! its own `ctx.wait_until`, unless one runs already: the driver polls the outbox,
//! makes the sends it hands out, reports how they ended, and naps until the outbox has
//! something to do again, so neither a slow nor a dead origin touches any response or
//! its latency. A driver stops when nothing waits or after [`DRIVE_BUDGET_MS`]
//! (`wait_until` work has a time budget); the next request starts another, so during a
//! long outage the retries ride on later requests. The driver's lease outlives its
//! budget: a driver the runtime cancelled never blocks the next one for long.
//!
//! The policy (batching, signing once, backoff, bounds, what counts as lost) is the
//! outbox's; this file only moves bytes and reads the clock. The counters are on
//! `/healthz`, and every loss is also logged.

use std::cell::{Cell, RefCell};
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use allot_core::{Event, signature};
use futures_util::future::{Either, join_all, select};
use worker::{AbortController, Context, Delay, Fetch, Headers, Method, Request, RequestInit};

use crate::config::Config;
use crate::outbox::{self, Counters, Note, Outbox, Outcome, Send, Settings};

/// How long one driver runs at most.
const DRIVE_BUDGET_MS: u64 = 20_000;
/// The longest nap between two polls: a batch sealed by a request during the nap
/// waits at most this long for its send.
const MAX_NAP_MS: u64 = 50;

thread_local! {
    /// Created on the first event, once the origin and the key are known.
    static OUTBOX: RefCell<Option<Outbox>> = const { RefCell::new(None) };
    /// Events dropped because there is no origin or key to send them to.
    static UNCONFIGURED: Cell<u64> = const { Cell::new(0) };
    /// A driver runs until this time (unix ms); 0: none.
    static DRIVER_UNTIL: Cell<u64> = const { Cell::new(0) };
}

fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

/// This isolate's event counters.
pub fn counters() -> Counters {
    let mut c = OUTBOX.with(|o| o.borrow().as_ref().map(Outbox::counters).unwrap_or_default());
    c.dropped += UNCONFIGURED.get();
    c
}

fn settings(config: &Config) -> Option<Settings> {
    config.events_url.as_ref()?;
    Some(Settings {
        key: config.ingest_key.clone()?,
        batch_max: config.batch_max,
        batch_max_bytes: config.batch_max_bytes,
        batch_age_ms: config.batch_age_ms,
        max_bytes: config.outbox_max_bytes,
        max_age_ms: config.outbox_max_age_ms,
        max_in_flight: outbox::MAX_IN_FLIGHT,
        send_timeout_ms: config.send_timeout_ms,
    })
}

/// Queues a sampled event and makes sure a driver will send it.
pub fn enqueue(ctx: &Context, config: &Rc<Config>, event: Event) {
    let now = now_ms();
    let pushed = OUTBOX.with(|o| {
        let mut o = o.borrow_mut();
        if o.is_none() {
            *o = settings(config).map(Outbox::new);
        }
        o.as_mut().map(|o| (o.push(event, now), o.counters().dropped))
    });
    match pushed {
        None => {
            let n = UNCONFIGURED.get() + 1;
            UNCONFIGURED.set(n);
            if n.is_power_of_two() {
                worker::console_error!("no ORIGIN_URL/INGEST_KEY: {n} sampled events dropped so far");
            }
        }
        Some((false, dropped)) if dropped.is_power_of_two() => {
            worker::console_error!("event outbox full: {dropped} sampled events dropped so far");
        }
        Some(_) => {}
    }
    kick(ctx, config, now);
}

/// Starts a driver in this request's `wait_until` if events wait and none runs.
pub fn kick(ctx: &Context, config: &Rc<Config>, now: u64) {
    if DRIVER_UNTIL.get() > now {
        return;
    }
    let waiting = OUTBOX.with(|o| o.borrow().as_ref().is_some_and(|o| o.next_wake(now).is_some()));
    if !waiting {
        return;
    }
    DRIVER_UNTIL.set(now + DRIVE_BUDGET_MS + 2 * config.send_timeout_ms);
    let config = config.clone();
    ctx.wait_until(async move { drive(&config, now + DRIVE_BUDGET_MS).await });
}

fn log(note: &Note) {
    match note {
        Note::Nothing => {}
        Note::Lost { events, why } => {
            let c = counters();
            worker::console_error!(
                "lost {events} sampled events: {why} ({} failed, {} expired so far)",
                c.failed,
                c.expired
            );
        }
        Note::Retrying { why, retry_at_ms } => {
            worker::console_warn!(
                "sending events failed ({why}); {} events wait, next try in {} ms",
                counters().waiting,
                retry_at_ms.saturating_sub(now_ms())
            );
        }
    }
}

async fn drive(config: &Config, until: u64) {
    loop {
        let now = now_ms();
        let Some((sends, notes, wake)) = OUTBOX.with(|o| {
            let mut o = o.borrow_mut();
            let o = o.as_mut()?;
            let (sends, notes) = o.poll(now);
            Some((sends, notes, o.next_wake(now)))
        }) else {
            break;
        };
        notes.iter().for_each(log);
        if !sends.is_empty() {
            join_all(sends.into_iter().map(|s| async move {
                let outcome = send(config, &s).await;
                let note = OUTBOX
                    .with(|o| o.borrow_mut().as_mut().map(|o| o.settle(s.id, outcome, now_ms(), crate::rng::unit())));
                if let Some(note) = note {
                    log(&note);
                }
            }))
            .await;
            continue;
        }
        let Some(wake) = wake else { break };
        if now >= until {
            break;
        }
        let nap = wake.saturating_sub(now).clamp(1, MAX_NAP_MS);
        Delay::from(Duration::from_millis(nap)).await;
    }
    DRIVER_UNTIL.set(0);
}

async fn send(config: &Config, batch: &Send) -> Outcome {
    let Some(url) = &config.events_url else {
        return Outcome::Refused("no ORIGIN_URL".into());
    };
    let refused = |e: worker::Error| Outcome::Refused(e.to_string());
    let headers = Headers::new();
    let request = headers
        .set("content-type", "application/json")
        .and_then(|()| headers.set(signature::HEADER, &batch.signature))
        .and_then(|()| match batch.dropped {
            0 => Ok(()),
            n => headers.set(allot_core::event::DROPPED_HEADER, &n.to_string()),
        })
        .and_then(|()| {
            let mut init = RequestInit::new();
            init.with_method(Method::Post).with_headers(headers).with_body(Some((*batch.body).into()));
            Request::new_with_init(url, &init)
        });
    let request = match request {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let response = pin!(fetch.send_with_signal(&signal));
    let timeout = pin!(Delay::from(Duration::from_millis(config.send_timeout_ms)));
    match select(response, timeout).await {
        Either::Left((Ok(response), _)) => match response.status_code() {
            200..=299 => Outcome::Acked,
            s @ (429 | 500..=599) => Outcome::Transient(format!("origin answered {s}")),
            s => Outcome::Refused(format!("origin answered {s}")),
        },
        Either::Left((Err(e), _)) => Outcome::Transient(e.to_string()),
        Either::Right(_) => {
            controller.abort();
            Outcome::Transient(format!("no answer within {} ms", config.send_timeout_ms))
        }
    }
}
