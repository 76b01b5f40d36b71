//! What the manager is told about targets that cannot be met: jointly infeasible
//! targets (each feasible alone) in the status, the preview and the gauges; a
//! placement whose traffic cannot give the confidence even at census; and rounds that
//! wait for a window's late events before acting on it.

use allot_core::{Event, EventBatch};
use allot_testkit::events::{allocation, xadd};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::{Value, json};

use crate::learning::{early_in_a_minute, start_on_minutes};

/// `n` requests from `country` in window `index`, sampled at `rate`, no ad.
fn requests(country: &str, n: usize, index: u64, period: u64, rate: f64, tag: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut e = allocation(&format!("{tag}-{country}-{i}"), "home_feed", None, &[], rate);
            e.country = Some(country.into());
            e.event_time_ms = index * period + period / 2;
            e
        })
        .collect()
}

#[tokio::test]
async fn jointly_infeasible_targets_are_reported_with_the_campaigns_they_compete_with() {
    early_in_a_minute().await;
    let redis = RedisServer::start();
    let period = 60_000;
    let app = start_on_minutes(&redis).await;
    // DE 30 %, FR 20 %, elsewhere 50 %.
    let last = allot_origin::now_ms() / period - 1;
    let mut events = requests("DE", 300, last, period, 1.0, "t");
    events.extend(requests("FR", 200, last, period, 1.0, "t"));
    events.extend(requests("US", 500, last, period, 1.0, "t"));
    xadd(&mut redis.conn(), &EventBatch { events }, allot_origin::now_ms());
    eventually(10, "counted", || async { (total_counts(&redis, "home_feed").requests.n == 1000).then_some(()) }).await;
    // Each feasible alone; A + B + C ask 60 % of the 50 % that is DE or FR.
    let spec = json!({
        "campaigns": [
            {"id": "A", "rate": 0.2, "eligibility": {"countries": ["DE"]}},
            {"id": "B", "rate": 0.15, "eligibility": {"countries": ["FR"]}},
            {"id": "C", "rate": 0.25, "eligibility": {"countries": ["DE", "FR"]}},
            {"id": "D", "rate": 0.1}
        ],
        "confidence": {"margin": 0.1, "level": 0.9}
    });
    // The preview says so before anything is saved.
    let r = app
        .http
        .post(app.url("/v1/placements/home_feed/preview"))
        .bearer_auth(MANAGER_TOKEN)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let preview: Value = r.json().await.unwrap();
    assert_eq!(preview["feasible"], false, "{preview}");
    let joint: Vec<&Value> = preview["campaigns"].as_array().unwrap().iter().filter(|c| c["joint"] == true).collect();
    assert!(!joint.is_empty(), "{preview}");
    for c in &joint {
        assert_eq!(c["feasible"], false);
        assert!(c["max_share"].as_f64().unwrap() < c["target"].as_f64().unwrap(), "{c}");
        let mut set: Vec<&str> = c["shared_with"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        set.push(c["id"].as_str().unwrap());
        set.sort_unstable();
        assert_eq!(set, ["A", "B", "C"], "{c}");
    }
    let d = &preview["campaigns"][3];
    assert_eq!((d["feasible"].clone(), d["joint"].clone()), (json!(true), json!(false)), "{d}");
    // A burst of previews is solved one at a time: each waits its turn and gets the same.
    let burst = (0..16).map(|_| async {
        let r = app.http.post(app.url("/v1/placements/home_feed/preview")).bearer_auth(VIEWER_TOKEN).json(&spec);
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    for (status, again) in futures_util::future::join_all(burst).await {
        assert_eq!((status, &again["campaigns"]), (200, &preview["campaigns"]));
    }

    // Saved: the status and the gauges agree.
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    let status = eventually(5, "a plan", || async {
        let (_, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
        (v["plan_version"] == 1).then_some(v)
    })
    .await;
    assert_eq!(status["health"], "infeasible", "{status}");
    let mut jointly = Vec::new();
    for c in status["campaigns"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let gauge = app
            .metric(&format!("allot_campaign_jointly_infeasible{{campaign=\"{id}\",placement=\"home_feed\"}}"))
            .await;
        if c["feasibility"]["status"] == "infeasible" {
            assert_eq!(c["feasibility"]["joint"], true, "{c}");
            assert_eq!(gauge, 1.0, "{id}");
            jointly.push(id.to_string());
        } else {
            assert_eq!(gauge, 0.0, "{id}");
        }
    }
    assert!(!jointly.is_empty() && !jointly.contains(&"D".to_string()), "{jointly:?}");
}

#[tokio::test]
async fn a_handful_of_samples_at_a_low_rate_is_unattainable_only_when_even_its_bound_is() {
    early_in_a_minute().await;
    let redis = RedisServer::start();
    let period = 60_000;
    let app = start_on_minutes(&redis).await;
    let last = allot_origin::now_ms() / period - 1;
    // Three samples at 1 %: about 300 requests, at most ~950 (upper bound).
    xadd(&mut redis.conn(), &EventBatch { events: requests("DE", 3, last, period, 0.01, "t") }, allot_origin::now_ms());
    eventually(10, "counted", || async { (total_counts(&redis, "home_feed").requests.n == 3).then_some(()) }).await;
    let status_for = |margin: f64| {
        let app = &app;
        async move {
            let spec =
                json!({"campaigns": [{"id": "A", "rate": 0.5}], "confidence": {"margin": margin, "level": 0.95}});
            assert!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status().is_success());
            let (_, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
            v
        }
    };
    // ±1 pp needs 9,604 samples a window: not even the bound comes close.
    let tight = status_for(0.01).await;
    assert_eq!((tight["attainable"].clone(), tight["health"].clone()), (json!(false), json!("unattainable")));
    // ±4 pp needs 600: the estimate (300) is below it, the bound is not.
    let loose = status_for(0.04).await;
    assert_eq!(loose["attainable"], true, "{loose}");
    assert_ne!(loose["health"], "unattainable");
}

#[tokio::test]
async fn rounds_act_on_a_window_only_once_its_late_events_are_in() {
    let redis = RedisServer::start();
    // 8 s windows, complete 2 s after they end.
    let period = 8_000;
    let env = [("ALLOT_CONTROL_PERIOD_MS", "8000"), ("ALLOT_CONTROL_LATENESS_MS", "2000")];
    let app = TestApp::start(config(&redis, "", &env)).await;
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}], "confidence": {"margin": 0.1, "level": 0.9}});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    let mut conn = redis.conn();
    allot_testkit::poll::into_period(period, 50, period / 2).await;
    let index = allot_origin::now_ms() / period;
    xadd(&mut conn, &EventBatch { events: requests("DE", 200, index, period, 1.0, "on-time") }, allot_origin::now_ms());
    // The window ends; 0.5 s later its last batch arrives (a retried send).
    let end = (index + 1) * period;
    tokio::time::sleep(std::time::Duration::from_millis(end + 500 - allot_origin::now_ms())).await;
    let (_, status) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
    if allot_origin::now_ms() < end + 2000 {
        // Not complete yet: the status still shows the window before.
        assert_eq!(status["window"]["index"], index - 1, "{status}");
    }
    xadd(&mut conn, &EventBatch { events: requests("DE", 100, index, period, 1.0, "late") }, allot_origin::now_ms());
    // The round after the watermark records the whole window.
    let page = eventually(15, "the window recorded", || async {
        let (_, page) = app.get_json("/v1/placements/home_feed/history", VIEWER_TOKEN).await;
        page["windows"].as_array().and_then(|w| w.iter().find(|w| w["window"]["index"] == index).cloned())
    })
    .await;
    assert_eq!(page["window"]["samples"], 300, "{page}");
    let (_, status) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
    assert_eq!(status["window"]["samples"], 300, "{status}");
}
