//! Ingest against a real Redis: accepted events are counted; forged, tampered, stale,
//! malformed and oversized bodies are refused with the right status, and a body received
//! twice is stored once.

use std::collections::HashMap;

use allot_core::contract::stream;
use allot_core::{CampaignId, EventBatch, signature};
use allot_testkit::events::{allocation, batch, plan, record_published, under};
use allot_testkit::origin::{INGEST_KEY, TestApp, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::json;

#[tokio::test]
async fn accepted_events_reach_the_stream_and_the_counts() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let (home_v2, sidebar) = (plan("home_feed", 2, 0.25, &["A", "B"]), plan("sidebar", 1, 1.0, &["X"]));
    for p in [&plan("home_feed", 1, 0.5, &["A", "B"]), &home_v2, &sidebar] {
        record_published(&mut redis.conn(), p);
    }

    // Ten single-event bodies at rate 0.5 (version 1) and one batch spanning two
    // placements.
    for i in 0..10 {
        let ad = if i < 4 { Some("A") } else { None };
        let r = app.post_signed(&batch(vec![allocation(&format!("s{i}"), "home_feed", ad, &["A", "B"], 0.5)])).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    let mixed = batch(vec![
        under(&home_v2, allocation("m1", "home_feed", Some("B"), &["A", "B"], 0.25)),
        under(&sidebar, allocation("m2", "sidebar", Some("X"), &["X"], 1.0)),
        under(&sidebar, allocation("m3", "sidebar", None, &["X"], 1.0)),
    ]);
    let r = app.post_signed(&mixed).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"accepted": 3, "dropped": 0}));

    // One stream entry per placement and body, with the placement, the batch and the
    // receive time.
    let mut c = redis.conn();
    let len: usize = redis::cmd("XLEN").arg(stream::EVENTS).query(&mut c).unwrap();
    assert_eq!(len, 12);
    let last: Vec<(String, HashMap<String, String>)> =
        redis::cmd("XREVRANGE").arg(stream::EVENTS).arg("+").arg("-").arg("COUNT").arg(1).query(&mut c).unwrap();
    let fields = &last[0].1;
    assert_eq!(fields[stream::PLACEMENT], "sidebar");
    let events = EventBatch::parse(fields[stream::BATCH].as_bytes()).unwrap();
    assert_eq!(events.events.len(), 2);
    assert!(events.events.iter().all(|e| e.placement.as_str() == "sidebar"));
    let received: u64 = fields[stream::RECEIVED_MS].parse().unwrap();
    assert!(received.abs_diff(allot_origin::now_ms()) < 60_000);

    let home = eventually(10, "aggregation", || async {
        let s = total_counts(&redis, "home_feed");
        (s.requests.n == 11).then_some(s)
    })
    .await;
    assert_eq!(home.requests.ht, 10.0 * 2.0 + 4.0);
    let a = &home.campaigns[&CampaignId::parse("A").unwrap()];
    assert_eq!((a.allocations.n, a.allocations.ht), (4, 8.0));
    assert_eq!(home.campaigns[&CampaignId::parse("B").unwrap()].allocations.ht, 4.0);
    let side = total_counts(&redis, "sidebar");
    assert_eq!((side.requests.n, side.requests.ht), (2, 2.0));
    assert_eq!(app.metric("allot_ingest_events_total").await, 13.0);
    assert_eq!(app.metric("allot_aggregate_entries_total{result=\"applied\"}").await, 12.0);
}

#[tokio::test]
async fn refuses_bad_signatures_and_bodies() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    record_published(&mut redis.conn(), &plan("home_feed", 1, 1.0, &["A"]));
    let url = app.url("/v1/events");
    let body = batch(vec![allocation("r1", "home_feed", Some("A"), &["A"], 1.0)]);
    let now = allot_origin::now_ms() / 1000;
    let post = |sig: Option<String>, body: String| {
        let mut req = app.http.post(&url).body(body);
        if let Some(s) = sig {
            req = req.header(signature::HEADER, s);
        }
        req.send()
    };
    let code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        (status, v["error"]["code"].as_str().unwrap_or_default().to_string())
    };

    // Missing, malformed, forged (other key), tampered, stale.
    assert_eq!(code(post(None, body.clone()).await.unwrap()).await, (401, "unauthorized".into()));
    assert_eq!(code(post(Some("t=1,v1=zz".into()), body.clone()).await.unwrap()).await.0, 401);
    let forged = signature::sign(b"some-other-key-0123456789", now, body.as_bytes());
    assert_eq!(code(post(Some(forged), body.clone()).await.unwrap()).await.0, 401);
    let sig = signature::sign(INGEST_KEY.as_bytes(), now, body.as_bytes());
    let tampered = body.replace("\"A\"]", "\"A\"] ");
    assert_eq!(code(post(Some(sig.clone()), tampered).await.unwrap()).await.0, 401);
    let stale = signature::sign(INGEST_KEY.as_bytes(), now - 3600, body.as_bytes());
    assert_eq!(code(post(Some(stale), body.clone()).await.unwrap()).await.0, 401);
    // Too far ahead: the skew (60 s) bounds the future.
    let ahead = signature::sign(INGEST_KEY.as_bytes(), now + 120, body.as_bytes());
    assert_eq!(code(post(Some(ahead), body.clone()).await.unwrap()).await.0, 401);

    // The genuine body once, then again (a retry, or a replay): stored once.
    assert_eq!(post(Some(sig.clone()), body.clone()).await.unwrap().status(), 202);
    let again = post(Some(sig), body.clone()).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap(),
        json!({"accepted": 1, "dropped": 0, "duplicate": true})
    );

    // A made-up drop report (outside the signature) moves the metric by a capped count.
    let reported = batch(vec![allocation("r2", "home_feed", Some("A"), &["A"], 1.0)]);
    let r = app
        .http
        .post(&url)
        .header(signature::HEADER, signature::sign(INGEST_KEY.as_bytes(), now, reported.as_bytes()))
        .header(allot_core::event::DROPPED_HEADER, u64::MAX.to_string())
        .body(reported)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(app.metric("allot_edge_dropped_events_total").await, (1u64 << 32) as f64);

    // Schema errors (validly signed) are 400; oversized bodies 413.
    for bad in ["not json", r#"{"events":[]}"#, &body.replace("allocation", "click")] {
        let r = app.post_signed(bad).await;
        assert_eq!(code(r).await, (400, "invalid_events".into()), "{bad}");
    }
    let huge = "x".repeat(70_000);
    assert_eq!(code(app.post_signed(&huge).await).await, (413, "payload_too_large".into()));

    // Without a Content-Length (chunked), the limit applies while reading (a header that
    // passes the checks without the body, so the body is read).
    let status = chunked_post(app.addr, &"y".repeat(70_000)).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");

    assert_eq!(app.metric("allot_ingest_duplicate_bodies_total").await, 1.0);
    for (reason, n) in [("malformed", 2.0), ("mismatch", 2.0), ("stale", 2.0)] {
        let m = app.metric(&format!("allot_ingest_signature_failures_total{{reason=\"{reason}\"}}")).await;
        assert_eq!(m, n, "{reason}");
    }
    let mut c = redis.conn();
    let len: usize = redis::cmd("XLEN").arg(stream::EVENTS).query(&mut c).unwrap();
    assert_eq!(len, 2, "only the genuine bodies were stored");
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let redis = RedisServer::start();
    let mut app = TestApp::start(config(&redis, "", &[])).await;
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("allot_ingest_accepted_total"), "{metrics}");
    let doc: serde_json::Value = app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for path in ["/v1/events", "/v1/placements/{id}", "/v1/placements/{id}/status", "/v1/audit", "/v1/placements"] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], json!("bearer"));
    let r = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Redis gone: not ready, still alive.
    drop(redis);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    let r = app.post_signed(&batch(vec![allocation("r9", "p", None, &[], 1.0)])).await;
    assert_eq!(r.status(), 503);
    app.shutdown().await;
}

/// A chunked POST over a raw socket, with a current signature header (of nothing); the
/// response's status line.
async fn chunked_post(addr: std::net::SocketAddr, body: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let sig = signature::sign(INGEST_KEY.as_bytes(), allot_origin::now_ms() / 1000, b"");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: origin\r\n{}: {sig}\r\nTransfer-Encoding: chunked\r\n\r\n",
        signature::HEADER
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(8192) {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
        if s.write_all(chunk).await.is_err() || s.write_all(b"\r\n").await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.unwrap();
    line
}
