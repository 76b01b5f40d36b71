//! A body is stored once, however often it arrives and whatever happened to the first
//! try (a retry after a timeout, after Redis was gone, or a replay); and a flood of
//! signature tags is refused without the work it asks for, while `/healthz` stays fast.

use std::time::{Duration, Instant};

use allot_core::contract::stream;
use allot_core::signature;
use allot_testkit::events::{allocation, batch, now_ms, plan, record_published, under};
use allot_testkit::origin::{INGEST_KEY, OriginProcess, TestApp, config};
use allot_testkit::redis::RedisServer;
use serde_json::{Value, json};

fn stream_len(redis: &RedisServer) -> usize {
    redis::cmd("XLEN").arg(stream::EVENTS).query(&mut redis.conn()).unwrap()
}

/// Sends `body` under the signature header `sig`: the status and the JSON answer.
async fn send(http: &reqwest::Client, url: &str, sig: &str, body: &str) -> (u16, Value) {
    let r = http.post(url).header(signature::HEADER, sig).body(body.to_string()).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_same_signed_body_twice_is_stored_once() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let (home, side) = (plan("home_feed", 1, 0.5, &["A"]), plan("sidebar", 1, 1.0, &["X"]));
    record_published(&mut redis.conn(), &home);
    record_published(&mut redis.conn(), &side);
    // Two placements and a dropped event: the stored entries are rebuilt, not the bytes.
    let mut bad = under(&home, allocation("bad", "home_feed", None, &[], 0.5));
    bad.sample_rate = 1e-160;
    let body = batch(vec![
        under(&home, allocation("a", "home_feed", Some("A"), &["A"], 0.5)),
        under(&side, allocation("b", "sidebar", None, &["X"], 1.0)),
        bad,
    ]);
    let sig = signature::sign(INGEST_KEY.as_bytes(), now_ms() / 1000, body.as_bytes());
    let url = app.url("/v1/events");
    let first = send(&app.http, &url, &sig, &body).await;
    assert_eq!(first, (202, json!({"accepted": 2, "dropped": 1})));
    let second = send(&app.http, &url, &sig, &body).await;
    assert_eq!(second, (202, json!({"accepted": 2, "dropped": 1, "duplicate": true})));
    assert_eq!(stream_len(&redis), 2, "one entry per placement, once");
    assert_eq!(app.metric("allot_ingest_duplicate_bodies_total").await, 1.0);
    assert_eq!(app.metric("allot_ingest_events_total").await, 2.0);
    let below = app.metric("allot_ingest_dropped_events_total{reason=\"rate_below_minimum\"}").await;
    assert_eq!(below, 1.0, "a body's drops are counted once, not again for its duplicate");

    // So are those of a body with nothing accepted, resent by an edge that lost the answer.
    let mut worse = under(&home, allocation("worse", "home_feed", None, &[], 0.5));
    worse.sample_rate = 1e-160;
    let body = batch(vec![worse]);
    let sig = signature::sign(INGEST_KEY.as_bytes(), now_ms() / 1000, body.as_bytes());
    assert_eq!(send(&app.http, &url, &sig, &body).await, (202, json!({"accepted": 0, "dropped": 1})));
    let again = send(&app.http, &url, &sig, &body).await;
    assert_eq!(again, (202, json!({"accepted": 0, "dropped": 1, "duplicate": true})));
    let below = app.metric("allot_ingest_dropped_events_total{reason=\"rate_below_minimum\"}").await;
    assert_eq!(below, 2.0);
    assert_eq!(stream_len(&redis), 2, "nothing streamed");
}

/// An edge that held a batch through a four-minute outage resends its original bytes
/// and signature: accepted once (older than the skew, within the signature's age), and
/// remembered, so a fifth minute's resend is still a duplicate.
#[tokio::test]
async fn a_batch_held_through_a_long_outage_is_accepted_once() {
    let redis = RedisServer::start();
    // One-minute windows, kept eight minutes: the held events are still counted.
    let env = [("ALLOT_CONTROL_ENABLED", "false"), ("ALLOT_CONTROL_PERIOD_MS", "60000")];
    let app = TestApp::start(config(&redis, "", &env)).await;
    let home = plan("home_feed", 1, 1.0, &["A"]);
    record_published(&mut redis.conn(), &home);
    let mut event = under(&home, allocation("held", "home_feed", Some("A"), &["A"], 1.0));
    event.event_time_ms = now_ms() - 240_000;
    let body = batch(vec![event]);
    let sig = signature::sign(INGEST_KEY.as_bytes(), now_ms() / 1000 - 240, body.as_bytes());
    let url = app.url("/v1/events");
    assert_eq!(send(&app.http, &url, &sig, &body).await, (202, json!({"accepted": 1, "dropped": 0})));
    let again = send(&app.http, &url, &sig, &body).await;
    assert_eq!(again, (202, json!({"accepted": 1, "dropped": 0, "duplicate": true})));
    assert_eq!(stream_len(&redis), 1);
    let mut c = redis.conn();
    let memory: Vec<String> = redis::cmd("KEYS").arg("allot:replay:*").query(&mut c).unwrap();
    assert_eq!(memory.len(), 1);
    let ttl: i64 = redis::cmd("TTL").arg(&memory[0]).query(&mut c).unwrap();
    assert!(ttl > 300, "the memory lasts past the signature's age: {ttl}");
}

/// The fault the edge's retry exists for: the origin gives up on Redis (its response
/// timeout) while the store script is queued, the script runs after all, and the edge
/// resends the same signed body.
#[tokio::test]
async fn a_retry_after_a_timeout_that_stored_the_body_adds_nothing() {
    let redis = RedisServer::start();
    let extra = "[redis]\nresponse_timeout_ms = 300";
    let app = TestApp::start(config(&redis, extra, &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let v1 = plan("home_feed", 1, 1.0, &["A"]);
    record_published(&mut redis.conn(), &v1);
    let url = app.url("/v1/events");
    let warm = batch(vec![under(&v1, allocation("warm", "home_feed", None, &[], 1.0))]);
    assert_eq!(app.post_signed(&warm).await.status(), 202);

    let body = batch(vec![under(&v1, allocation("r1", "home_feed", Some("A"), &["A"], 1.0))]);
    let sig = signature::sign(INGEST_KEY.as_bytes(), now_ms() / 1000, body.as_bytes());
    // Writes wait 1.5 s; reads (the catalogue's) go on.
    redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("WRITE").exec(&mut redis.conn()).unwrap();
    let (status, answer) = send(&app.http, &url, &sig, &body).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable");
    allot_testkit::poll::eventually(5, "the paused script to run", || async { stream_len(&redis) == 2 }).await;

    let retry = send(&app.http, &url, &sig, &body).await;
    assert_eq!(retry, (202, json!({"accepted": 1, "dropped": 0, "duplicate": true})));
    assert_eq!(stream_len(&redis), 2, "the warm-up and the body, once");
}

/// Redis gone while a body is sent, then back (with its data): the edge's retry of the
/// same signed body is stored once, and a further retry is a duplicate.
#[tokio::test]
async fn a_retry_after_redis_was_gone_is_stored_once() {
    let mut redis = RedisServer::start_with_aof();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let v1 = plan("home_feed", 1, 1.0, &["A"]);
    record_published(&mut redis.conn(), &v1);
    let url = app.url("/v1/events");
    let body = batch(vec![under(&v1, allocation("r1", "home_feed", Some("A"), &["A"], 1.0))]);
    let sig = signature::sign(INGEST_KEY.as_bytes(), now_ms() / 1000, body.as_bytes());

    redis.stop();
    let (status, _) = send(&app.http, &url, &sig, &body).await;
    assert_eq!(status, 503);
    redis.restart();
    let stored = allot_testkit::poll::eventually(10, "Redis back", || async {
        let (status, answer) = send(&app.http, &url, &sig, &body).await;
        (status == 202).then_some(answer)
    })
    .await;
    assert_eq!(stored, json!({"accepted": 1, "dropped": 0}));
    let again = send(&app.http, &url, &sig, &body).await;
    assert_eq!(again.1["duplicate"], true);
    assert_eq!(stream_len(&redis), 1);
}

/// `/healthz` latencies, one request every 20 ms for `span`, from a thread and runtime of
/// their own, so the test's other tasks do not delay the measuring client.
async fn sample_healthz(origin: &OriginProcess, span: Duration) -> Vec<Duration> {
    let url = origin.url("/healthz");
    let sampler = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let health = allot_testkit::process::http_client(Duration::from_secs(5));
            let mut samples = Vec::new();
            let started = Instant::now();
            while started.elapsed() < span {
                let t = Instant::now();
                assert_eq!(health.get(&url).send().await.unwrap().status(), 200);
                samples.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    });
    tokio::task::spawn_blocking(move || sampler.join().unwrap()).await.unwrap()
}

/// Latency percentiles of `samples`, in ms: p50, p99, max.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99), at(1.0))
}

/// Thousands of `v1=` tags on bodies near the size limit, from 6 connections at once,
/// against the real binary: refused as malformed before the body is read or MACed, and
/// `/healthz`, sampled meanwhile, stays close to its latency without the flood (measured
/// first, on the same machine, so a busy machine does not fail the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_signature_tags_is_refused_cheaply_while_healthz_stays_fast() {
    let redis = RedisServer::start();
    let origin = OriginProcess::start(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")]);
    origin.wait_ready(10).await;
    let url = origin.url("/v1/events");
    let body = "x".repeat(60_000); // the tests' limit is 64 KiB
    let tag = format!(",v1={}", "ab".repeat(32));
    let flood = format!("t={}{}", now_ms() / 1000, tag.repeat(3000)); // ~200 KB
    // The most tags allowed, none matching: two MACs of the body.
    let wrong = format!("t={}{}", now_ms() / 1000, tag.repeat(signature::MAX_TAGS));

    let (status, answer) = send(&origin.http, &url, &flood, "{}").await;
    assert_eq!((status, &answer["error"]["code"]), (401, &json!("unauthorized")), "{answer}");

    let (base50, base99, base_max) = percentiles(sample_healthz(&origin, Duration::from_secs(2)).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = tokio::task::JoinSet::new();
    for lane in 0..6 {
        let (http, url, body, stop) = (origin.http.clone(), url.clone(), body.clone(), stop.clone());
        let sig = if lane % 3 == 0 { wrong.clone() } else { flood.clone() };
        flooders.spawn(async move {
            let mut refused = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http.post(&url).header(signature::HEADER, &sig).body(body.clone()).send().await;
                // The origin may answer before reading the body and close: still refused.
                if r.is_ok_and(|r| r.status() == 401) {
                    refused += 1;
                }
            }
            refused
        });
    }
    let samples = sample_healthz(&origin, Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    while let Some(n) = flooders.join_next().await {
        refused += n.unwrap();
    }
    let (p50, p99, max) = percentiles(samples.clone());
    let malformed = origin.metric("allot_ingest_signature_failures_total{reason=\"malformed\"}").await;
    let mismatch = origin.metric("allot_ingest_signature_failures_total{reason=\"mismatch\"}").await;
    println!(
        "tag flood: {refused} bodies refused in 4 s ({malformed} malformed, {mismatch} mismatched); \
         /healthz over {} samples: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms \
         (without the flood: p50 {base50:.2} ms, p99 {base99:.2} ms, max {base_max:.2} ms)",
        samples.len()
    );
    assert!(refused >= 100, "the flood ran: {refused}");
    assert!(malformed >= 100.0 && mismatch >= 10.0, "{malformed} {mismatch}");
    // Generous: the machine running the tests also runs the flood's clients.
    assert!(p50 < base50 + 150.0 && max < 2000.0, "p50 {p50:.2} ms, max {max:.2} ms");
    assert_eq!(stream_len(&redis), 0);
}
