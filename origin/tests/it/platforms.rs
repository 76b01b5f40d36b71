//! Platforms: apps name their own, so every plan carries a vocabulary (the configured
//! platforms and those its rules name) and the edge decides and counts any other as
//! `other`. A key holder naming made-up platforms anyway has those events dropped and
//! counted, and the window hashes gain no field for them.

use allot_core::contract::keys::PlacementKeys;
use allot_core::{Event, Plan};
use allot_testkit::events::{allocation, batch, plan, record_published, under};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts, window_keys};
use serde_json::{Value, json};

#[tokio::test]
async fn made_up_platforms_are_dropped_and_add_no_field_to_the_windows() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let mut v1 = plan("home_feed", 1, 0.5, &["A", "B"]);
    v1.platforms = Some(vec!["web".into()]);
    v1.campaigns[0].eligibility.platforms = vec!["ios".into()];
    // A plan from before vocabularies, still named by events in flight: any platform.
    let v2 = plan("home_feed", 2, 0.5, &["A", "B"]);
    for p in [&v1, &v2] {
        record_published(&mut redis.conn(), p);
    }
    let ev = |id: String, p: &Plan, platform: Option<&str>| -> Event {
        let mut e = under(p, allocation(&id, "home_feed", Some("B"), &["B"], 0.5));
        e.platform = platform.map(str::to_owned);
        e
    };
    let mut events: Vec<Event> = [Some("web"), Some("ios"), Some("other"), None]
        .into_iter()
        .enumerate()
        .map(|(i, platform)| ev(format!("known{i}"), &v1, platform))
        .collect();
    events.extend((0..200).map(|i| ev(format!("made-up{i}"), &v1, Some(&format!("x{i}")))));
    events.push(ev("legacy".into(), &v2, Some("legacy-tv")));
    let r = app.post_signed(&batch(events)).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 5, "dropped": 200}));
    let dropped = app.metric("allot_ingest_dropped_events_total{reason=\"unknown_platform\"}").await;
    assert_eq!(dropped, 200.0);

    let counts = eventually(10, "the five counted", || async {
        let s = total_counts(&redis, "home_feed");
        (s.requests.n == 5).then_some(s)
    })
    .await;
    let profiles: Vec<&str> = counts.profiles.keys().map(String::as_str).collect();
    assert_eq!(profiles, [":DE", "ios:DE", "legacy-tv:DE", "other:DE", "web:DE"]);
    for key in window_keys(&redis, "home_feed") {
        let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query(&mut redis.conn()).unwrap();
        assert!(!fields.iter().any(|f| f.contains("x1")), "{key}: {fields:?}");
    }
}

#[tokio::test]
async fn every_plan_lists_the_configured_platforms() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_PLATFORMS", "web,tv,web")])).await;
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.3, "eligibility": {"platforms": ["ios"]}}]});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    eventually(10, "the first plan", || async {
        let (code, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
        (code == 200 && v["plan_version"] == 1).then_some(())
    })
    .await;
    let history: Vec<String> = redis::cmd("LRANGE")
        .arg(PlacementKeys::of_raw("home_feed").plans())
        .arg(0)
        .arg(0)
        .query(&mut redis.conn())
        .unwrap();
    let published = Plan::parse(history[0].as_bytes()).unwrap();
    assert_eq!(published.platforms, Some(vec!["tv".into(), "web".into()]), "sorted, each once");
    let vocabulary: Vec<String> = published.vocabulary().unwrap().into_iter().collect();
    assert_eq!(vocabulary, ["ios", "other", "tv", "web"]);
}
