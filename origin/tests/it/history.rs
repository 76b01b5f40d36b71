//! Where delivery has been and where new targets would take it: the window history
//! (recorded once per window by the control round, paged newest first) and the preview
//! (a dry run of proposed targets that writes nothing).

use allot_core::Event;
use allot_testkit::events::{allocation, xadd};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::{Value, json};

/// 200 iOS requests in the window `index` of `period_ms`: A 50 %, B 30 %, none 20 %.
fn window_traffic(index: u64, period_ms: u64, tag: &str) -> Vec<Event> {
    (0..200)
        .map(|i| {
            let ad = match i % 10 {
                0..5 => Some("A"),
                5..8 => Some("B"),
                _ => None,
            };
            let mut e = allocation(&format!("{tag}-{i}"), "home_feed", ad, &["A", "B"], 1.0);
            e.event_time_ms = index * period_ms + period_ms / 2;
            e.platform = Some("ios".into());
            e
        })
        .collect()
}

/// The history record of window `index`, if there is one yet.
async fn recorded(app: &TestApp, index: u64) -> Option<Value> {
    let (_, page) = history(app, "?limit=1000").await;
    page["windows"].as_array()?.iter().find(|w| w["window"]["index"] == index).cloned()
}

/// A Redis server and an origin on it with one-second windows, `home_feed` targeting A
/// 50 % and B 30 %.
async fn one_second_windows() -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_PERIOD_MS", "1000")])).await;
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}, {"id": "B", "rate": 0.3}]});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    (redis, app)
}

async fn history(app: &TestApp, query: &str) -> (u16, Value) {
    app.get_json(&format!("/v1/placements/home_feed/history{query}"), VIEWER_TOKEN).await
}

#[tokio::test]
async fn each_window_is_recorded_once_with_its_estimates_and_pages_newest_first() {
    let (redis, app) = one_second_windows().await;
    let period = 1000;

    // Traffic in three consecutive windows, each written before its window closes.
    let mut conn = redis.conn();
    for round in 0..3u64 {
        let index = allot_origin::now_ms() / period;
        xadd(
            &mut conn,
            &allot_core::EventBatch { events: window_traffic(index, period, &format!("w{round}")) },
            allot_origin::now_ms(),
        );
        let until_next = (index + 1) * period - allot_origin::now_ms();
        tokio::time::sleep(std::time::Duration::from_millis(until_next + 10)).await;
    }
    eventually(10, "counted", || async { (total_counts(&redis, "home_feed").requests.n == 600).then_some(()) }).await;
    let page = eventually(10, "three recorded windows", || async {
        let (_, page) = history(&app, "").await;
        (page["windows"].as_array().map_or(0, Vec::len) >= 3).then_some(page)
    })
    .await;
    let windows = page["windows"].as_array().unwrap();
    let starts: Vec<u64> = windows.iter().map(|w| w["window"]["start_ms"].as_u64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] > w[1]), "newest first, each window once: {starts:?}");
    for (i, w) in windows.iter().enumerate() {
        assert_eq!(w["window"]["samples"], 200, "{w}");
        let a = &w["campaigns"][0];
        assert_eq!((a["id"].as_str(), a["target"].as_f64()), (Some("A"), Some(0.5)));
        assert!((a["estimate"]["share"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{a}");
        // Census windows. The first of the placement has nothing before it to learn
        // stragglers from: its interval is the share itself. The others, after a window
        // or two none of whose requests came late, still allow for one late request
        // (too few windows yet to say late bodies are rare).
        let (low, high) = (a["estimate"]["low"].as_f64().unwrap(), a["estimate"]["high"].as_f64().unwrap());
        if i + 1 == windows.len() {
            assert!((low - 0.5).abs() < 1e-9 && (high - 0.5).abs() < 1e-9, "{a}");
        } else {
            assert!(low < 0.5 && high > 0.5 && high - low < 0.02, "{a}");
        }
        assert!(a["weight"].as_f64().unwrap() > 0.0, "the weight decided from the window: {a}");
    }

    // Pages: one window at a time, following `next`.
    let (_, first) = history(&app, "?limit=1").await;
    assert_eq!(first["windows"].as_array().unwrap().len(), 1);
    let next = first["next"].as_str().expect("a next page").to_string();
    let (_, second) = history(&app, &format!("?limit=1&before={next}")).await;
    assert_eq!(second["windows"][0]["window"]["start_ms"], windows[1]["window"]["start_ms"]);
    let (_, all) = history(&app, "?limit=1000").await;
    assert_eq!(all["next"], Value::Null, "the last page says so");
}

#[tokio::test]
async fn hostile_history_queries_get_json_errors() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[])).await;
    for (query, code) in
        [("?before=garbage", "invalid_query"), ("?limit=-1", "invalid_query"), ("?limit=ten", "invalid_query")]
    {
        let (status, body) = history(&app, query).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    let (status, body) = app.get_json("/v1/placements/home%20feed/history", VIEWER_TOKEN).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("id")), "{body}");
    let (status, _) = app.get_json("/v1/placements/home_feed/history", "wrong").await;
    assert_eq!(status, 401);
    for query in ["?limit=0", "?limit=1441"] {
        let (status, body) = history(&app, query).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{query}: {body}");
    }
    // A placement that does not exist (or no longer does) has no history.
    let (status, body) = history(&app, "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let put = app.put_targets("home_feed", &json!({"campaigns": [{"id": "A", "rate": 0.5}]}), MANAGER_TOKEN).await;
    assert_eq!(put.status(), 201);
    let (status, page) = history(&app, "?before=0-0").await;
    assert_eq!((status, page["windows"].as_array().map(Vec::len)), (200, Some(0)));
    let delete = app.http.delete(app.url("/v1/placements/home_feed")).bearer_auth(MANAGER_TOKEN).send().await.unwrap();
    assert_eq!(delete.status(), 204);
    assert_eq!(history(&app, "").await.0, 404);
}

#[tokio::test]
async fn a_preview_shows_infeasible_and_unattainable_targets_and_writes_nothing() {
    // The last complete window must stay the one the test fills until the preview.
    crate::learning::early_in_a_minute().await;
    let redis = RedisServer::start();
    let period = 60_000;
    let app =
        TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_PERIOD_MS", "60000"), ("ALLOT_CONTROL_LATENESS_MS", "0")]))
            .await;
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}, {"id": "B", "rate": 0.3}]});
    let put = app.put_targets("home_feed", &spec, MANAGER_TOKEN).await;
    let etag = put.headers()["etag"].to_str().unwrap().to_string();
    let last = allot_origin::now_ms() / period - 1;
    xadd(
        &mut redis.conn(),
        &allot_core::EventBatch { events: window_traffic(last, period, "p") },
        allot_origin::now_ms(),
    );
    eventually(10, "counted", || async { (total_counts(&redis, "home_feed").requests.n == 200).then_some(()) }).await;
    // The round the PUT asked for has published its plan.
    let plan_before = eventually(10, "the first plan", || async {
        let v = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await.1["plan_version"].clone();
        (!v.is_null()).then_some(v)
    })
    .await;

    // C is only for Android; all the traffic is iOS. The margin is far finer than 200
    // requests a window can measure.
    let proposed = json!({
        "campaigns": [
            {"id": "A", "rate": 0.4},
            {"id": "C", "rate": 0.2, "eligibility": {"platforms": ["android"]}}
        ],
        "confidence": {"margin": 0.005, "level": 0.99}
    });
    let r = app.http.post(app.url("/v1/placements/home_feed/preview")).bearer_auth(VIEWER_TOKEN).json(&proposed);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let preview: Value = r.json().await.unwrap();
    assert_eq!(preview["feasible"], false, "{preview}");
    let c = preview["campaigns"].as_array().unwrap().iter().find(|c| c["id"] == "C").unwrap();
    assert_eq!((c["feasible"].as_bool(), c["max_share"].as_f64()), (Some(false), Some(0.0)), "{c}");
    let a = preview["campaigns"].as_array().unwrap().iter().find(|c| c["id"] == "A").unwrap();
    assert!(a["feasible"].as_bool().unwrap() && (a["predicted_share"].as_f64().unwrap() - 0.4).abs() < 0.01, "{a}");
    assert_eq!(preview["window"]["samples"], 200);
    assert!(preview["required_samples"].as_f64().unwrap() > 200.0, "{preview}");
    assert_eq!((preview["attainable"].as_bool(), preview["sample_rate"].as_f64()), (Some(false), Some(1.0)));

    // Nothing was written: same targets, same plan.
    let (_, stored) = app.get_json("/v1/placements/home_feed", VIEWER_TOKEN).await;
    assert_eq!(stored["campaigns"].as_array().unwrap().len(), 2);
    let r = app.http.get(app.url("/v1/placements/home_feed")).bearer_auth(VIEWER_TOKEN).send().await.unwrap();
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    let plan_after = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await.1["plan_version"].clone();
    assert_eq!(plan_before, plan_after);

    // A bad proposal is refused like a bad PUT.
    let bad = json!({"campaigns": [{"id": "A", "rate": 1.5}]});
    let r = app.http.post(app.url("/v1/placements/home_feed/preview")).bearer_auth(VIEWER_TOKEN).json(&bad);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["field"].as_str().unwrap().contains("rate"), "{body}");
}

/// A batch held up past its window's round (a retry, an outage) is counted late, and
/// the windows after say so: their records allow for stragglers, so a census window's
/// interval is no longer the share itself. Nothing is lost: the late events count in
/// their own window.
#[tokio::test]
async fn events_after_their_round_are_counted_late_and_widen_the_next_intervals() {
    let (redis, a, ra, rb) = late_then_next(20).await;
    // Recorded before its stragglers came: read as complete.
    assert_eq!(ra["window"]["samples"], 200, "{ra}");
    assert_eq!(ra["window"]["stragglers"], 0.0, "{ra}");
    let (low, share, high) = interval(&ra);
    assert!(low == share && share == high, "{ra}");
    // Window b: 20 of a's 220 requests came late. One window learnt, and late: the
    // chance of a late body is taken as (1 + ½)/(1 + 1), leaning high by (1 − p)/2, and
    // b's interval allows for nearly as many as a lacked (`Stragglers::allowance`).
    let stragglers = rb["window"]["stragglers"].as_f64().unwrap();
    let p = 0.75 + 0.25 / 2.0;
    let z = allot_core::quantile::two_sided_z;
    let expected = 20.0 / 220.0 * (z(1.0 - 0.05 / p) / z(0.95)).powi(2);
    assert!((stragglers - expected).abs() < 1e-9 && expected > 0.08, "{rb}");
    let (low, share, high) = interval(&rb);
    assert!((share - 0.5).abs() < 1e-9 && low < 0.48 && high > 0.52 && high - low < 0.2, "{rb}");
    // The late requests are in their own window's counts, not lost and not moved.
    let key = allot_core::contract::keys::PlacementKeys::of_raw("home_feed").window(a);
    let fields: std::collections::HashMap<String, f64> =
        redis::cmd("HGETALL").arg(key).query(&mut redis.conn()).unwrap();
    let counts = allot_core::WindowStats::from_fields(fields).unwrap();
    assert_eq!((counts.requests.n, counts.late.n), (220, 20));
    assert_eq!(total_counts(&redis, "home_feed").late.n, 20, "only a's");
}

/// Hostile: a key holder sending a window's events late on purpose, ten times as many
/// as came on time, widens the next intervals at most as far as a share of half the
/// requests still to come would, and moves no share.
#[tokio::test]
async fn a_flood_of_late_events_widens_intervals_only_up_to_the_cap() {
    let (_redis, _, _, rb) = late_then_next(2_000).await;
    assert_eq!(rb["window"]["stragglers"], allot_core::stats::MAX_STRAGGLERS, "{rb}");
    let (low, share, high) = interval(&rb);
    assert!((share - 0.5).abs() < 1e-9 && low > 0.43 && high < 0.57, "{rb}");
}

/// The record's first campaign's (A's) interval.
fn interval(r: &Value) -> (f64, f64, f64) {
    let e = &r["campaigns"][0]["estimate"];
    (e["low"].as_f64().unwrap(), e["share"].as_f64().unwrap(), e["high"].as_f64().unwrap())
}

/// Window `a` on time (200 requests); once its round has read it, `late` more of its
/// requests; then window `b` on time. The Redis server, `a`, and both windows' records.
async fn late_then_next(late: usize) -> (RedisServer, u64, Value, Value) {
    let (redis, app) = one_second_windows().await;
    let period = 1000;
    let mut conn = redis.conn();
    let a = allot_origin::now_ms() / period;
    xadd(&mut conn, &allot_core::EventBatch { events: window_traffic(a, period, "on-time") }, allot_origin::now_ms());
    let ra = eventually(10, "window a recorded", || recorded(&app, a)).await;
    for (i, chunk) in (0..late).collect::<Vec<_>>().chunks(200).enumerate() {
        let events = window_traffic(a, period, &format!("late{i}")).into_iter().take(chunk.len()).collect();
        xadd(&mut conn, &allot_core::EventBatch { events }, allot_origin::now_ms());
    }
    eventually(10, "the late ones counted", || async {
        (app.metric("allot_aggregate_late_events_total").await == late as f64).then_some(())
    })
    .await;
    let b = allot_origin::now_ms() / period + 1;
    let wait = (b * period + 10).saturating_sub(allot_origin::now_ms());
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    xadd(&mut conn, &allot_core::EventBatch { events: window_traffic(b, period, "next") }, allot_origin::now_ms());
    let all = 400 + late as u64;
    eventually(10, "counted", || async { (total_counts(&redis, "home_feed").requests.n == all).then_some(()) }).await;
    let rb = eventually(10, "window b recorded", || recorded(&app, b)).await;
    drop(app);
    (redis, a, ra, rb)
}
