//! What the origin demands of its surroundings: clients that finish their requests in
//! time (slow headers, slow bodies and too many connections are cut off, not served
//! forever), and a Redis that does not evict keys.

use std::time::{Duration, Instant};

use allot_testkit::origin::{TestApp, config};
use allot_testkit::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection or `limit` passes; what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    read.ok().map(|_| String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let redis = RedisServer::start();
    let env = [("ALLOT_HTTP_HEADER_READ_TIMEOUT_MS", "400"), ("ALLOT_HTTP_REQUEST_TIMEOUT_MS", "600")];
    let app = TestApp::start(config(&redis, "", &env)).await;

    // Headers a byte at a time, never finished: the connection is closed.
    let started = Instant::now();
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.is_some(), "the server closed a connection whose headers never ended");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // A body announced and never sent: a JSON 503 after the request timeout.
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    let head = "PUT /v1/placements/home_feed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer allot-test-manager-token\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"campa";
    stalled.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stalled, Duration::from_secs(5)).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"timeout""#), "{answer}");

    // An ordinary request is unaffected.
    assert_eq!(reqwest::get(app.url("/healthz")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_HTTP_MAX_CONNECTIONS", "2")])).await;
    let held_a = TcpStream::connect(app.addr).await.unwrap();
    let _held_b = TcpStream::connect(app.addr).await.unwrap();
    // Both slots are taken by connections that send nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    assert_eq!(read_until_closed(&mut third, Duration::from_millis(500)).await, None, "not served yet");
    drop(held_a);
    let answer = read_until_closed(&mut third, Duration::from_secs(5)).await.expect("served once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn an_evicting_redis_is_refused_and_weak_persistence_is_allowed() {
    let redis = RedisServer::start();
    let mut c = redis.conn();
    redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("allkeys-lru").query::<()>(&mut c).unwrap();
    allot_origin::telemetry::install_crypto();
    let err = allot_origin::start(config(&redis, "", &[])).await.unwrap_err().to_string();
    assert!(err.contains("maxmemory-policy is allkeys-lru") && err.contains("noeviction"), "{err}");
    assert!(err.contains("redis.allow_unsafe"), "the refusal says how to override it: {err}");
    let mut allowed = TestApp::start(config(&redis, "", &[("ALLOT_REDIS_ALLOW_UNSAFE", "true")])).await;
    allowed.shutdown().await;

    redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction").query::<()>(&mut c).unwrap();
    redis::cmd("CONFIG").arg("SET").arg("appendonly").arg("no").query::<()>(&mut c).unwrap();
    let mut warned = TestApp::start(config(&redis, "", &[])).await;
    assert_eq!(reqwest::get(warned.url("/readyz")).await.unwrap().status(), 200);
    warned.shutdown().await;
}

#[tokio::test]
async fn bodies_are_charged_what_they_send_shed_past_the_budget_and_stored_once_sent_again() {
    use allot_testkit::events::{allocation, batch, now_ms, plan, record_published};
    let redis = RedisServer::start();
    let env = [
        ("ALLOT_CONTROL_ENABLED", "false"),
        ("ALLOT_INGEST_MAX_BODY_BYTES", "65536"),
        ("ALLOT_INGEST_MAX_BUFFERED_BYTES", "131072"),
        ("ALLOT_INGEST_BODY_READ_TIMEOUT_MS", "1500"),
    ];
    let app = TestApp::start(config(&redis, "", &env)).await;
    record_published(&mut redis.conn(), &plan("home_feed", 1, 1.0, &["A"]));

    // Clients without the key announce the largest bodies with a well-formed, fresh
    // signature header. Announcing costs them nothing: room is held for what arrives.
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\
         X-Allot-Signature: t={},v1={}\r\n\r\n{{\"events\":[",
        now_ms() / 1000,
        "0".repeat(64)
    );
    let body_sent = "{\"events\":[".len();
    let sign = |body: &str| {
        allot_core::signature::sign(allot_testkit::origin::INGEST_KEY.as_bytes(), now_ms() / 1000, body.as_bytes())
    };
    let post = |body: String| {
        let sig = sign(&body);
        reqwest::Client::new().post(app.url("/v1/events")).header(allot_core::signature::HEADER, sig).body(body).send()
    };
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = batch(vec![allocation("held-1", "home_feed", Some("A"), &["A"], 1.0)]);
    let r = post(first).await.unwrap();
    assert_eq!(r.status(), 202, "eight announced megabytes sending nothing shed nothing");
    assert_eq!(app.metric("allot_ingest_shed_bodies_total").await, 0.0);
    drop(idle);

    // Two clients send all but the last byte of the largest bodies, and stall: their
    // bytes hold the whole budget.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(" ".repeat(65536 - body_sent - 1).as_bytes()).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // An edge's batch is shed unread, in the one error format, told when to come back.
    let body = batch(vec![allocation("shed-1", "home_feed", Some("A"), &["A"], 1.0)]);
    let sig =
        allot_core::signature::sign(allot_testkit::origin::INGEST_KEY.as_bytes(), now_ms() / 1000, body.as_bytes());
    let send = || {
        reqwest::Client::new()
            .post(app.url("/v1/events"))
            .header(allot_core::signature::HEADER, sig.clone())
            .body(body.clone())
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "overloaded", "{answer}");
    assert_eq!(app.metric("allot_ingest_shed_bodies_total").await, 1.0);
    let len = |c: &mut redis::Connection| -> usize {
        redis::cmd("XLEN").arg(allot_core::contract::stream::EVENTS).query(c).unwrap()
    };
    assert_eq!(len(&mut redis.conn()), 1, "nothing of a shed body is stored (one body was before)");

    // The stalled bodies are cut off at the body deadline, freeing the budget (the
    // request timeout, 30 s, would have held it far longer).
    for s in &mut stalled {
        let answer = read_until_closed(s, Duration::from_secs(5)).await.expect("cut off at the body deadline");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains(r#""code":"timeout""#), "{answer}");
    }
    // The edge sends the same signed bytes again: stored, once.
    let mut stored = None;
    for _ in 0..50 {
        let r = send().await.unwrap();
        if r.status() == 202 {
            stored = Some(r.json::<serde_json::Value>().await.unwrap());
            break;
        }
        assert_eq!(r.status(), 503, "only shed while the budget is held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, Some(serde_json::json!({"accepted": 1, "dropped": 0})));
    let again: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(len(&mut redis.conn()), 2);
}
