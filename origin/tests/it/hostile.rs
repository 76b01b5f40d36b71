//! What a holder of a valid ingest key can send, against a real Redis: events with
//! extreme rates and times, or naming placements, campaigns, versions and rates the
//! origin never published, next to genuine ones in the same bodies. The bad events are
//! dropped and counted by reason; the genuine counts in the windows are exact.

use std::time::Duration;

use allot_core::contract::keys;
use allot_core::{CampaignId, Event, PlacementId};
use allot_testkit::events::{allocation, batch, plan, record_published, under};
use allot_testkit::origin::{TestApp, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::{Value, json};

const DAY_MS: u64 = 86_400_000;

async fn dropped(app: &TestApp, reason: &str) -> f64 {
    app.metric(&format!("allot_ingest_dropped_events_total{{reason=\"{reason}\"}}")).await
}

/// `INFO commandstats`: how many times `command` ran.
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn extreme_rates_and_times_are_dropped_one_by_one_and_genuine_counts_stay_exact() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let v1 = plan("home_feed", 1, 0.5, &["A", "B"]);
    record_published(&mut redis.conn(), &v1);

    let now = allot_origin::now_ms();
    let mut genuine = 0;
    for body in 0..3 {
        let mut events: Vec<Event> = (0..10)
            .map(|i| {
                let ad = if i % 5 < 2 { Some("A") } else { None };
                under(&v1, allocation(&format!("g{body}-{i}"), "home_feed", ad, &["A", "B"], 0.5))
            })
            .collect();
        genuine += events.len();
        // Rates: the overflowing, zero, negative, above one, below the minimum (1e-4).
        for (i, rate) in [1e-160, 0.0, -0.5, 1.5, 5e-5].into_iter().enumerate() {
            let mut e = under(&v1, allocation(&format!("r{body}-{i}"), "home_feed", Some("A"), &["A"], 0.5));
            e.sample_rate = rate;
            events.insert(i * 2, e);
        }
        // Times: a day ahead, a day behind, the epoch, the end of time.
        for (i, time) in [now + DAY_MS, now - DAY_MS, 0, u64::MAX].into_iter().enumerate() {
            let mut e = under(&v1, allocation(&format!("t{body}-{i}"), "home_feed", Some("B"), &["B"], 0.5));
            e.event_time_ms = time;
            events.push(e);
        }
        let r = app.post_signed(&batch(events)).await;
        assert_eq!(r.status(), 202);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 10, "dropped": 9}));
    }

    let counts = eventually(10, "the genuine events counted", || async {
        let s = total_counts(&redis, "home_feed");
        (s.requests.n == genuine as u64).then_some(s)
    })
    .await;
    assert_eq!(counts.requests.ht, 60.0, "30 events of weight 2, nothing else");
    assert_eq!(counts.requests_sq, 120.0);
    assert!(counts.requests_sq.is_finite());
    let a = &counts.campaigns[&CampaignId::parse("A").unwrap()];
    assert_eq!((a.allocations.n, a.allocations.ht), (12, 24.0));
    assert!(!counts.campaigns.contains_key(&CampaignId::parse("B").unwrap()), "every B event was bad");
    for (reason, n) in [("rate_invalid", 9.0), ("rate_below_minimum", 6.0), ("too_old", 6.0), ("too_new", 6.0)] {
        assert_eq!(dropped(&app, reason).await, n, "{reason}");
    }
    assert_eq!(app.metric("allot_ingest_events_total").await, 30.0);
    // The aggregator applied every entry: none failed part-way.
    assert_eq!(app.metric("allot_aggregate_entries_total{result=\"applied\"}").await, 3.0);
}

#[tokio::test]
async fn events_the_origin_never_published_are_dropped_and_counted() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let (v1, v2) = (plan("home_feed", 1, 0.5, &["A", "B"]), plan("home_feed", 2, 0.25, &["A"]));
    let gone = plan("gone", 4, 1.0, &["A"]);
    for p in [&v1, &v2, &gone] {
        record_published(&mut redis.conn(), p);
    }
    let ev =
        |id: &str, placement: &str, ad: Option<&str>, eligible: &[&str]| allocation(id, placement, ad, eligible, 1.0);
    let mut made_up_placement = under(&v1, ev("u1", "home_feed", None, &[]));
    made_up_placement.placement = PlacementId::parse("nowhere").unwrap();
    let mut made_up_version = under(&v2, ev("u4", "home_feed", Some("A"), &["A"]));
    made_up_version.plan_version = 9;
    let mut other_rate = under(&v1, ev("u5", "home_feed", Some("A"), &["A"]));
    other_rate.sample_rate = 0.25; // v2's rate, v1's version
    let body = batch(vec![
        under(&v1, ev("ok1", "home_feed", Some("B"), &["A", "B"])),
        made_up_placement,
        under(&v1, ev("u2", "home_feed", Some("Z"), &["A", "Z"])),
        under(&v2, ev("u3", "home_feed", Some("B"), &["A", "B"])), // B left in v2
        made_up_version,
        other_rate,
        under(&v2, ev("ok2", "home_feed", None, &["A"])),
        under(&gone, ev("ok3", "gone", Some("A"), &["A"])),
    ]);
    let r = app.post_signed(&body).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 3, "dropped": 5}));
    for (reason, n) in
        [("unknown_placement", 1.0), ("unknown_campaign", 2.0), ("unknown_version", 1.0), ("rate_mismatch", 1.0)]
    {
        assert_eq!(dropped(&app, reason).await, n, "{reason}");
    }
    let home = eventually(10, "the genuine events counted", || async {
        let s = total_counts(&redis, "home_feed");
        (s.requests.n == 2).then_some(s)
    })
    .await;
    assert_eq!(home.requests.ht, 2.0 + 4.0);
    assert!(!home.campaigns.contains_key(&CampaignId::parse("Z").unwrap()));
    assert!(total_counts(&redis, "nowhere").requests.n == 0);

    // A deleted placement leaves the registry once its empty plan is out: within the
    // refresh interval (250 ms) its events are dropped like those of one never created.
    redis::cmd("HDEL").arg(keys::REGISTRY).arg("gone").exec(&mut redis.conn()).unwrap();
    let removed = std::time::Instant::now();
    let mut counted_since = 0;
    eventually(5, "the deletion learnt", async || {
        let late = batch(vec![under(&gone, ev(&format!("late{counted_since}"), "gone", Some("A"), &["A"]))]);
        let answer = app.post_signed(&late).await.json::<Value>().await.unwrap();
        counted_since += answer["accepted"].as_u64().unwrap();
        answer == json!({"accepted": 0, "dropped": 1})
    })
    .await;
    assert!(removed.elapsed() < Duration::from_secs(1), "learnt in {:?}", removed.elapsed());
    eventually(5, "the counts before the deletion", || async {
        total_counts(&redis, "gone").requests.n == 1 + counted_since
    })
    .await;
    assert_eq!(dropped(&app, "unknown_placement").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_versions_and_placements_costs_few_redis_reads() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let v1 = plan("home_feed", 1, 0.5, &["A"]);
    record_published(&mut redis.conn(), &v1);
    let warm = app.post_signed(&batch(vec![under(&v1, allocation("w", "home_feed", None, &[], 0.5))])).await;
    assert_eq!(warm.json::<Value>().await.unwrap(), json!({"accepted": 1, "dropped": 0}));

    let (lrange, smembers) = (calls(&redis, "lrange"), calls(&redis, "smembers"));
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..8u64 {
        let (http, url, v1) = (app.http.clone(), app.url("/v1/events"), v1.clone());
        tasks.spawn(async move {
            for i in 0..5u64 {
                // Each body: a made-up version of a real placement and 50 made-up placements.
                let n = lane * 100 + i;
                let mut events = vec![under(&v1, allocation(&format!("v{n}"), "home_feed", None, &[], 0.5))];
                events[0].plan_version = 1_000 + n;
                events
                    .extend((0..50).map(|k| allocation(&format!("p{n}-{k}"), &format!("fake{n}x{k}"), None, &[], 0.5)));
                let r = allot_testkit::origin::post_signed(&http, &url, &batch(events)).await;
                assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 0, "dropped": 51}));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let elapsed = started.elapsed();
    let intervals = elapsed.as_millis() as u64 / 250 + 2;
    let (lrange, smembers) = (calls(&redis, "lrange") - lrange, calls(&redis, "smembers") - smembers);
    println!("40 bodies, 2040 made-up events in {elapsed:?}: {lrange} LRANGE, {smembers} SMEMBERS");
    assert!(lrange <= intervals, "{lrange} history reads in {elapsed:?}");
    assert!(smembers <= intervals, "{smembers} registry reads in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "a made-up version waits four intervals at most");
    assert_eq!(dropped(&app, "unknown_version").await, 40.0);
    assert_eq!(dropped(&app, "unknown_placement").await, 2000.0);
}

/// The origin keeps `history_len` versions per placement. Events refused for their rate
/// (anyone with the ingest key can send them) must not keep old versions in and push out
/// the one edges serve when a new version is learnt.
#[tokio::test]
async fn refused_events_cannot_push_out_the_version_edges_serve() {
    let redis = RedisServer::start();
    let env = [("ALLOT_CONTROL_ENABLED", "false"), ("ALLOT_CONTROL_HISTORY_LEN", "3")];
    let app = TestApp::start(config(&redis, "", &env)).await;
    let v = |n: u64| plan("home_feed", n, 0.5, &["A"]);
    for n in 1..=3 {
        record_published(&mut redis.conn(), &v(n));
    }
    let ev = |id: &str, n: u64, rate: f64| {
        let mut e = under(&v(n), allocation(id, "home_feed", Some("A"), &["A"], rate));
        e.sample_rate = rate;
        e
    };
    let post = async |events: Vec<Event>| app.post_signed(&batch(events)).await.json::<Value>().await.unwrap();

    // Edges serve version 3; a key holder names 1 and 2 with a rate they never had.
    assert_eq!(post(vec![ev("honest-1", 3, 0.5)]).await, json!({"accepted": 1, "dropped": 0}));
    assert_eq!(post(vec![ev("k1", 1, 0.25), ev("k2", 2, 0.25)]).await, json!({"accepted": 0, "dropped": 2}));
    // Version 4 is published; its first event has the origin learn it.
    record_published(&mut redis.conn(), &v(4));
    assert_eq!(post(vec![ev("honest-2", 4, 0.5)]).await, json!({"accepted": 1, "dropped": 0}));
    // Colos that have not got version 4 yet still serve 3: still counted.
    assert_eq!(post(vec![ev("honest-3", 3, 0.5)]).await, json!({"accepted": 1, "dropped": 0}));
    assert_eq!(dropped(&app, "unknown_version").await, 0.0);
}
