//! Both publishers against local HTTP servers that check what they receive: the
//! Cloudflare KV bulk API (429, then success; chunking; one write per key per second)
//! and the worker's signed `/internal/plans` push.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_core::contract::keys::{self, PlacementKeys};
use allot_core::{PlacementId, Plan, Verifier, signature};
use allot_testkit::origin::{
    INGEST_KEY, MANAGER_TOKEN, PUSH_KEY, TestApp, VIEWER_TOKEN, config, parse_metric, parse_metric_sum,
};

/// The push key a rotation brings in.
const NEXT_PUSH_KEY: &str = "allot-test-next-push-key-0123456";
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::put;
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    /// (arrival, keys in the body) per accepted request.
    writes: Vec<(Instant, Vec<String>)>,
    requests: usize,
    problems: Vec<String>,
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// A stand-in for the KV bulk endpoint that checks the request shape, refuses the
/// first request with 429 and accepts the rest.
async fn kv_bulk(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let mut s = seen.lock().unwrap();
    s.requests += 1;
    let mut problem = |p: String| s_problem(&mut s.problems, p);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer cf-api-token") {
        problem("missing bearer token".into());
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        problem("content-type".into());
    }
    let pairs: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    let mut keys = Vec::new();
    for p in &pairs {
        let key = p["key"].as_str().unwrap_or_default().to_string();
        match Plan::parse(p["value"].as_str().unwrap_or_default().as_bytes()) {
            Ok(plan) if key == Plan::kv_key(&plan.placement) => {}
            other => problem(format!("bad pair {key}: {other:?}")),
        }
        if p.as_object().is_none_or(|o| o.keys().any(|k| k != "key" && k != "value")) {
            problem(format!("unexpected fields in {p}"));
        }
        keys.push(key);
    }
    if pairs.is_empty() {
        problem("empty body".into());
    }
    if s.requests == 1 {
        return (StatusCode::TOO_MANY_REQUESTS, r#"{"success":false,"errors":[{"code":10429}]}"#.into());
    }
    s.writes.push((Instant::now(), keys));
    let n = pairs.len();
    (
        StatusCode::OK,
        json!({"success": true, "errors": [], "messages": [],
        "result": {"successful_key_count": n, "unsuccessful_keys": []}})
        .to_string(),
    )
}

fn s_problem(problems: &mut Vec<String>, p: String) {
    problems.push(p);
}

/// The KV key of a placement's plan.
fn kv_key(placement: &str) -> String {
    Plan::kv_key(&PlacementId::parse(placement).unwrap())
}

#[tokio::test]
async fn cloudflare_kv_bulk_writes_retry_chunk_and_pace() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let base = serve(
        Router::new()
            .route("/client/v4/accounts/acc-1/storage/kv/namespaces/ns-1/bulk", put(kv_bulk))
            .with_state(seen.clone()),
    )
    .await;
    let redis = RedisServer::start();
    let extra = format!(
        r#"
[publish]
kind = "cloudflare"
[publish.cloudflare]
base_url = "{base}/client/v4"
account_id = "acc-1"
namespace_id = "ns-1"
api_token = "cf-api-token"
max_keys_per_request = 2
initial_backoff_ms = 50
"#
    );
    let app = TestApp::start(config(&redis, &extra, &[("ALLOT_CONTROL_PERIOD_MS", "60000")])).await;

    // One placement: 429 first, then accepted.
    assert_eq!(
        app.put_targets("p1", &json!({"campaigns": [{"id": "A", "rate": 0.5}]}), MANAGER_TOKEN).await.status(),
        201
    );
    eventually(5, "first write", || async { (seen.lock().unwrap().writes.len() == 1).then_some(()) }).await;
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.requests, 2, "one 429, one retry");
        assert_eq!(s.writes[0].1, [kv_key("p1")]);
    }
    eventually(5, "plan stored", || async {
        let (_, v) = app.get_json("/v1/placements/p1/status", VIEWER_TOKEN).await;
        (v["plan_version"] == 1).then_some(())
    })
    .await;

    // Three more placements and a change to p1 in one round: chunks of at most two keys,
    // and p1 is not written again within a second of its last write.
    for p in ["p2", "p3", "p4"] {
        let mut conn = redis.conn();
        let spec = json!({"campaigns": [{"id": "A", "rate": 0.2}]}).to_string();
        redis::cmd("HSET")
            .arg(PlacementKeys::of_raw(p).targets())
            .arg("spec")
            .arg(spec)
            .arg("rev")
            .arg(1)
            .query::<()>(&mut conn)
            .unwrap();
        redis::cmd("SADD").arg(keys::DIRTY).arg(p).query::<()>(&mut conn).unwrap();
    }
    assert_eq!(
        app.put_targets("p1", &json!({"campaigns": [{"id": "A", "rate": 0.6}]}), MANAGER_TOKEN).await.status(),
        200
    );
    eventually(10, "all writes", || async {
        let s = seen.lock().unwrap();
        (s.writes.iter().map(|w| w.1.len()).sum::<usize>() == 5).then_some(())
    })
    .await;
    let s = seen.lock().unwrap();
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert!(s.writes.iter().all(|w| w.1.len() <= 2), "{:?}", s.writes);
    let p1: Vec<Instant> = s.writes.iter().filter(|w| w.1.contains(&kv_key("p1"))).map(|w| w.0).collect();
    assert_eq!(p1.len(), 2);
    assert!(p1[1] - p1[0] >= Duration::from_millis(950), "{:?}", p1[1] - p1[0]);
}

#[derive(Default)]
struct Worker {
    received: Vec<Plan>,
    /// The signature header of every push.
    signatures: Vec<String>,
    problems: Vec<String>,
    /// The version the "edge" holds; older or equal pushes get 409.
    held: u64,
}

async fn worker_push(
    State(w): State<Arc<Mutex<Worker>>>,
    Path(placement): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let verifier = Verifier::new(vec![PUSH_KEY.as_bytes().to_vec()], 60).unwrap();
    let mut w = w.lock().unwrap();
    let sig = headers.get(signature::HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    w.signatures.push(sig.to_owned());
    if let Err(e) = verifier.verify(sig, &body, allot_origin::now_ms() / 1000) {
        w.problems.push(format!("signature: {e}"));
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    let plan = match Plan::parse(&body) {
        Ok(p) if p.placement.as_str() == placement => p,
        other => {
            w.problems.push(format!("plan: {other:?}"));
            return (StatusCode::BAD_REQUEST, String::new());
        }
    };
    if plan.version <= w.held {
        // As the worker answers (`docs/plan-format.md`).
        let error = json!({"error": {"code": "stale_version", "message": "older", "held_version": w.held}});
        return (StatusCode::CONFLICT, error.to_string());
    }
    w.held = plan.version;
    w.received.push(plan);
    (StatusCode::NO_CONTENT, String::new())
}

/// A worker's push route ([`worker_push`]) on a free port: what it received, and its
/// base URL.
async fn serve_worker() -> (Arc<Mutex<Worker>>, String) {
    let worker = Arc::new(Mutex::new(Worker::default()));
    let base =
        serve(Router::new().route("/internal/plans/{placement}", put(worker_push)).with_state(worker.clone())).await;
    (worker, base)
}

#[tokio::test]
async fn worker_push_is_signed_with_every_push_key_and_never_the_ingest_key() {
    let (worker, base) = serve_worker().await;
    let redis = RedisServer::start();
    // Mid-rotation: the origin holds the new key and the current one.
    let extra = format!(
        "[publish]\nkind = \"worker\"\n[publish.worker]\nurl = \"{base}/\"\nkeys = [\"{NEXT_PUSH_KEY}\", \"{PUSH_KEY}\"]\n"
    );
    let app = TestApp::start(config(&redis, &extra, &[("ALLOT_CONTROL_PERIOD_MS", "60000")])).await;

    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5, "creative": {"img": "a.png"}}]});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    eventually(5, "push", || async { (!worker.lock().unwrap().received.is_empty()).then_some(()) }).await;
    {
        let w = worker.lock().unwrap();
        assert!(w.problems.is_empty(), "{:?}", w.problems);
        let plan = &w.received[0];
        assert_eq!((plan.placement.as_str(), plan.version), ("home_feed", 1));
        assert_eq!(plan.campaigns[0].creative, json!({"img": "a.png"}));
        // Each key alone verifies the push, so an edge holding either accepts it; the
        // ingest key verifies nothing.
        let body = plan.to_json();
        let now = allot_origin::now_ms() / 1000;
        for key in [NEXT_PUSH_KEY, PUSH_KEY] {
            let alone = Verifier::new(vec![key.as_bytes().to_vec()], 60).unwrap();
            assert!(alone.verify(&w.signatures[0], body.as_bytes(), now).is_ok(), "{key}");
        }
        let ingest = Verifier::new(vec![INGEST_KEY.as_bytes().to_vec()], 60).unwrap();
        assert!(ingest.verify(&w.signatures[0], body.as_bytes(), now).is_err());
    }
    // Counted once the worker's answer is back, a moment after the worker has the plan.
    eventually(5, "the publish counted", || async {
        (app.metric("allot_plans_published_total{why=\"first\"}").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(app.metric_sum("allot_plans_published_total").await, 1.0);

    // The edge already holds version 50 (Redis restored from an older copy, or a push
    // with the push key): the origin publishes above it, at once, and from then on.
    worker.lock().unwrap().held = 50;
    let spec2 = json!({"campaigns": [{"id": "A", "rate": 0.7}]});
    assert_eq!(app.put_targets("home_feed", &spec2, MANAGER_TOKEN).await.status(), 200);
    eventually(5, "second round", || async {
        let (_, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
        (v["plan_version"] == 51).then_some(())
    })
    .await;
    {
        let w = worker.lock().unwrap();
        let versions: Vec<u64> = w.received.iter().map(|p| p.version).collect();
        assert_eq!(versions, [1, 51], "the edge took the plan above its own");
        assert_eq!(w.received[1].campaigns[0].id.as_str(), "A");
        assert!(w.problems.is_empty(), "{:?}", w.problems);
    }
    assert_eq!(app.metric("allot_publish_superseded_total").await, 1.0);
    assert_eq!(app.metric("allot_publish_failures_total").await, 0.0);
    // The new targets are why the second plan went out; ingest knows its version.
    assert_eq!(app.metric("allot_plans_published_total{why=\"targets\"}").await, 1.0);
    assert_eq!(app.metric_sum("allot_plans_published_total").await, 2.0);
    let newest = allot_testkit::events::newest_published(&mut redis.conn(), "home_feed").unwrap();
    assert_eq!(newest.version, 51);
    // A third round allocates above it.
    let spec3 = json!({"campaigns": [{"id": "A", "rate": 0.4}]});
    assert_eq!(app.put_targets("home_feed", &spec3, MANAGER_TOKEN).await.status(), 200);
    eventually(5, "third round", || async {
        let (_, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
        (v["plan_version"] == 52).then_some(())
    })
    .await;
    assert_eq!(app.metric("allot_publish_superseded_total").await, 1.0);
}

/// The edge refuses every push (503): each failure is counted as one, and nothing is
/// counted as published, under any reason, since no KV write took place.
#[tokio::test]
async fn a_refused_push_is_a_failure_and_never_a_publish() {
    let pushes = Arc::new(Mutex::new(0usize));
    let refuse = |State(n): State<Arc<Mutex<usize>>>| async move {
        *n.lock().unwrap() += 1;
        StatusCode::SERVICE_UNAVAILABLE
    };
    let base = serve(Router::new().route("/internal/plans/{placement}", put(refuse)).with_state(pushes.clone())).await;
    let redis = RedisServer::start();
    let extra = format!("[publish]\nkind = \"worker\"\n[publish.worker]\nurl = \"{base}/\"\nkeys = [\"{PUSH_KEY}\"]\n");
    let app = TestApp::start(config(&redis, &extra, &[("ALLOT_CONTROL_PERIOD_MS", "60000")])).await;

    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    eventually(10, "a failed publish", || async {
        (app.metric("allot_publish_failures_total").await >= 1.0).then_some(())
    })
    .await;
    assert!(*pushes.lock().unwrap() >= 1);
    // Every reason is a series, at 0: a missing metric would not pass for a zero.
    let text = app.metrics_text().await;
    assert_eq!(parse_metric(&text, "allot_plans_published_total{why=\"first\"}"), Some(0.0));
    assert_eq!(parse_metric_sum(&text, "allot_plans_published_total"), Some(0.0));
}

/// The publisher fails after the first plan, for long enough that the rounds issue more
/// plans than the history keeps: the version edges serve leaves the history. An origin
/// started then (a deploy, a replica added) still counts the events edges send under
/// it: it learns the plan stored as in force with its first read of the history.
#[tokio::test]
async fn events_of_the_plan_in_force_count_on_an_origin_started_after_it_left_the_history() {
    let pushes = Arc::new(Mutex::new(0usize));
    let first_only = |State(n): State<Arc<Mutex<usize>>>| async move {
        let mut n = n.lock().unwrap();
        *n += 1;
        if *n == 1 { StatusCode::NO_CONTENT } else { StatusCode::SERVICE_UNAVAILABLE }
    };
    let base =
        serve(Router::new().route("/internal/plans/{placement}", put(first_only)).with_state(pushes.clone())).await;
    let redis = RedisServer::start();
    let extra = format!("[publish]\nkind = \"worker\"\n[publish.worker]\nurl = \"{base}/\"\nkeys = [\"{PUSH_KEY}\"]\n");
    let history = [("ALLOT_CONTROL_PERIOD_MS", "60000"), ("ALLOT_CONTROL_HISTORY_LEN", "3")];
    let app = TestApp::start(config(&redis, &extra, &history)).await;

    // Version 1 is published; every plan after it fails, and each target change issues one.
    for (i, rate) in [0.5, 0.4, 0.3, 0.2, 0.1].into_iter().enumerate() {
        let spec = json!({"campaigns": [{"id": "A", "rate": rate}]});
        assert!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status().is_success());
        eventually(5, "the round's push", || async { (*pushes.lock().unwrap() > i).then_some(()) }).await;
    }
    let listed = |v: u64| {
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg(PlacementKeys::of_raw("home_feed").plans())
            .arg(0)
            .arg(-1)
            .query(&mut redis.conn())
            .unwrap();
        list.iter().any(|j| Plan::parse(j.as_bytes()).unwrap().version == v)
    };
    assert!(!listed(1) && listed(5), "version 1 has left the history");
    let (_, status) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
    assert_eq!(status["plan_version"], 1, "the plan in force is the one published");

    // Edges serve version 1: a fresh origin counts its events, and so does the first.
    let v1 = allot_testkit::events::plan("home_feed", 1, 1.0, &["A"]);
    let event = |id: &str| {
        allot_testkit::events::under(&v1, allot_testkit::events::allocation(id, "home_feed", Some("A"), &["A"], 1.0))
    };
    let fresh = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    for (origin, id) in [(&fresh, "r-fresh"), (&app, "r-first")] {
        let answer: Value =
            origin.post_signed(&allot_testkit::events::batch(vec![event(id)])).await.json().await.unwrap();
        assert_eq!(answer, json!({"accepted": 1, "dropped": 0}), "{id}");
    }
    assert_eq!(fresh.metric("allot_ingest_dropped_events_total{reason=\"unknown_version\"}").await, 0.0);
}

/// An edge holding a version far above the placement's (only a push with the push key
/// gets there) is not followed: following one near the top of the versions would leave
/// the placement none to publish. And no version is allocated past 2^53 − 1.
#[tokio::test]
async fn a_version_far_above_is_not_followed_and_none_is_allocated_past_the_last() {
    let (worker, base) = serve_worker().await;
    let redis = RedisServer::start();
    let extra = format!("[publish]\nkind = \"worker\"\n[publish.worker]\nurl = \"{base}/\"\nkeys = [\"{PUSH_KEY}\"]\n");
    let app = TestApp::start(config(&redis, &extra, &[("ALLOT_CONTROL_PERIOD_MS", "60000")])).await;
    let status_version =
        async || app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await.1["plan_version"].clone();
    let spec = |rate: f64| json!({"campaigns": [{"id": "A", "rate": rate}]});

    assert_eq!(app.put_targets("home_feed", &spec(0.5), MANAGER_TOKEN).await.status(), 201);
    eventually(5, "v1", || async { (status_version().await == 1).then_some(()) }).await;
    worker.lock().unwrap().held = allot_core::plan::MAX_VERSION - 1;
    assert_eq!(app.put_targets("home_feed", &spec(0.4), MANAGER_TOKEN).await.status(), 200);
    eventually(5, "a refused push", || async {
        (app.metric("allot_publish_failures_total").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(app.metric("allot_publish_superseded_total").await, 0.0, "not followed");
    assert_eq!(status_version().await, 1);
    assert_eq!(worker.lock().unwrap().received.len(), 1);

    // The placement's own versions at the last one: it is published, and then none after.
    let fence = PlacementKeys::of_raw("home_feed").fence();
    let last = allot_core::plan::MAX_VERSION;
    redis::cmd("HSET").arg(&fence).arg("version").arg(last - 1).query::<()>(&mut redis.conn()).unwrap();
    worker.lock().unwrap().held = 0;
    assert_eq!(app.put_targets("home_feed", &spec(0.3), MANAGER_TOKEN).await.status(), 200);
    eventually(5, "the last version", || async { (status_version().await == last).then_some(()) }).await;
    assert_eq!(app.put_targets("home_feed", &spec(0.2), MANAGER_TOKEN).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let version: u64 = redis::cmd("HGET").arg(&fence).arg("version").query(&mut redis.conn()).unwrap();
    assert_eq!((version, status_version().await), (last, json!(last)));
    assert!(worker.lock().unwrap().received.iter().all(|p| p.version <= last));
}
