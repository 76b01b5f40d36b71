//! What a holder of a valid ingest key can send, against a real Redis: events with
//! extreme rates and times, or naming placements, campaigns, versions and rates the
//! origin never published, next to genuine ones in the same bodies. The bad events are
//! dropped and counted by reason; the genuine counts in the windows are exact; what
//! they make the origin read of Redis stays small.

use std::time::Duration;

use allot_core::admit::REFRESHES_PER_BODY;
use allot_core::contract::keys::{self, PlacementKeys};
use allot_core::contract::stream;
use allot_core::{CampaignId, Event, PlacementId, Plan, signature};
use allot_testkit::events::{allocation, batch, plan, record_published, under};
use allot_testkit::origin::{INGEST_KEY, TestApp, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, stream_batches, total_counts};
use serde_json::{Value, json};

const DAY_MS: u64 = 86_400_000;

async fn dropped(app: &TestApp, reason: &str) -> f64 {
    app.metric(&format!("allot_ingest_dropped_events_total{{reason=\"{reason}\"}}")).await
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

/// An impression is reported while its token is valid, and its body resent while its
/// signature is: it may arrive longer after its ad than short windows are kept (here
/// 80 s, 10 s windows). Such an event is streamed (so archived) and counts in no window;
/// only one older than any genuine event can be is dropped.
#[tokio::test]
async fn events_older_than_the_windows_but_not_than_their_travel_are_streamed() {
    let redis = RedisServer::start();
    let env = [("ALLOT_CONTROL_ENABLED", "false"), ("ALLOT_CONTROL_PERIOD_MS", "10000")];
    let app = TestApp::start(config(&redis, "", &env)).await;
    let v1 = plan("home_feed", 1, 0.5, &["A"]);
    record_published(&mut redis.conn(), &v1);
    let now = allot_origin::now_ms();
    // Token lifetime and skew (360 s) plus the signature's (300 s by default): 660 s.
    let aged = |id: &str, age_s: u64| {
        let mut e = under(&v1, allocation(id, "home_feed", Some("A"), &["A"], 0.5));
        e.event_time_ms = now - age_s * 1000;
        e
    };
    let events = vec![aged("fresh", 0), aged("past-windows", 100), aged("late-body", 650), aged("beyond", 700)];
    let r = app.post_signed(&batch(events)).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 3, "dropped": 1}));
    assert_eq!(dropped(&app, "too_old").await, 1.0);
    let streamed: Vec<String> =
        stream_batches(&redis, "home_feed").iter().flat_map(|b| &b.events).map(|e| e.request_id.to_string()).collect();
    assert_eq!(streamed, ["fresh", "past-windows", "late-body"]);
    // Only the fresh one is in a window still kept.
    let counts = eventually(10, "the fresh event counted", || async {
        let s = total_counts(&redis, "home_feed");
        (s.requests.n >= 1).then_some(s)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(total_counts(&redis, "home_feed").requests.n, 1, "{counts:?}");
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

    let (lrange, smembers) = (redis.calls("lrange"), redis.calls("smembers"));
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
    let (lrange, smembers) = (redis.calls("lrange") - lrange, redis.calls("smembers") - smembers);
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

/// Registers `placement` with the plans of `versions` as its history (the last one
/// newest), in one round trip; the plans, oldest first.
fn publish_history(redis: &RedisServer, placement: &str, versions: impl IntoIterator<Item = u64>) -> Vec<Plan> {
    let plans: Vec<Plan> = versions.into_iter().map(|v| plan(placement, v, 0.5, &["A", "B", "C"])).collect();
    let key = PlacementKeys::of_raw(placement).plans();
    let mut pipe = redis::pipe();
    pipe.cmd("HINCRBY").arg(keys::REGISTRY).arg(placement).arg(1).ignore();
    for p in &plans {
        pipe.cmd("LPUSH").arg(&key).arg(p.to_json()).ignore();
    }
    pipe.query::<()>(&mut redis.conn()).unwrap();
    plans
}

/// An allocation decided under `plan`, as an edge serving it sends it.
fn genuine(id: &str, plan: &Plan) -> Event {
    under(plan, allocation(id, plan.placement.as_str(), Some("A"), &["A", "B"], 0.5))
}

/// One body naming every one of 300 placements, each with 100 plans in its history,
/// under a version newer than any issued: the history reads it causes are a few, each
/// of the newest entry alone, however many placements it names and however long their
/// histories; the genuine events of that body and the next are counted, the made-up
/// ones not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_versions_of_many_placements_with_long_histories_cost_a_few_short_reads() {
    const PLACEMENTS: usize = 300;
    const HISTORY: u64 = 100;
    let redis = RedisServer::start();
    let env = [("ALLOT_CONTROL_ENABLED", "false"), ("ALLOT_INGEST_MAX_BODY_BYTES", "1048576")];
    let app = TestApp::start(config(&redis, "", &env)).await;
    let names: Vec<String> = (0..PLACEMENTS).map(|i| format!("shelf{i:03}")).collect();
    let histories: Vec<Vec<Plan>> = names.iter().map(|n| publish_history(&redis, n, 1..=HISTORY)).collect();
    let newest = |i: usize| &histories[i][HISTORY as usize - 1];
    let history_bytes: usize = histories[0].iter().map(|p| p.to_json().len()).sum();
    let post = async |events: Vec<Event>| app.post_signed(&batch(events)).await.json::<Value>().await.unwrap();

    // Each history is read whole once, when an event first names its placement.
    let warm: Vec<Event> = (0..PLACEMENTS).map(|i| genuine(&format!("w{i}"), newest(i))).collect();
    assert_eq!(post(warm).await, json!({"accepted": PLACEMENTS, "dropped": 0}));

    // Genuine events under the newest and an older version around one made-up
    // version of every placement.
    let mut body: Vec<Event> = (0..10).map(|i| genuine(&format!("g{i}"), newest(i))).collect();
    body.extend((0..PLACEMENTS).map(|i| {
        let mut e = genuine(&format!("m{i}"), newest(i));
        e.plan_version = u64::MAX;
        e
    }));
    body.extend((0..10).map(|i| genuine(&format!("o{i}"), &histories[i][49])));
    // The bytes counted between the two `INFO stats` are the reads, not `INFO`'s own.
    let (lrange, bytes) = (redis.calls("lrange"), redis.output_bytes());
    let started = std::time::Instant::now();
    assert_eq!(post(body).await, json!({"accepted": 20, "dropped": PLACEMENTS}));
    let elapsed = started.elapsed();
    let bytes = redis.output_bytes() - bytes;
    let lrange = redis.calls("lrange") - lrange;
    println!(
        "{PLACEMENTS} made-up versions over {HISTORY}-plan histories ({history_bytes} bytes each) in {elapsed:?}: \
         {lrange} LRANGE, {bytes} bytes from Redis"
    );
    assert!(lrange <= REFRESHES_PER_BODY as u64, "{lrange} history reads for one body");
    assert!(bytes < history_bytes as u64, "{bytes} bytes read for one body, more than one history");
    assert_eq!(dropped(&app, "unknown_version").await, PLACEMENTS as f64);

    // Versions issued since for 20 placements, more than a body may refresh for
    // nothing: the next body naming them is counted whole.
    let issued: Vec<Plan> = names[..20]
        .iter()
        .map(|n| {
            let p = plan(n, HISTORY + 1, 0.5, &["A", "B", "C"]);
            record_published(&mut redis.conn(), &p);
            p
        })
        .collect();
    let mut next: Vec<Event> = issued.iter().enumerate().map(|(i, p)| genuine(&format!("n{i}"), p)).collect();
    next.extend((20..40).map(|i| genuine(&format!("k{i}"), newest(i))));
    assert_eq!(post(next).await, json!({"accepted": 40, "dropped": 0}));
    assert_eq!(dropped(&app, "unknown_version").await, PLACEMENTS as f64);
    assert_eq!(app.metric("allot_ingest_events_total").await, (PLACEMENTS + 20 + 40) as f64);

    // Counted: the genuine events, nothing under the made-up version.
    for (i, n) in [(0, 4), (9, 4), (10, 2), (19, 2), (25, 2), (299, 1)] {
        eventually(10, "the genuine events counted", || async { total_counts(&redis, &names[i]).requests.n == n })
            .await;
        let stored = stream_batches(&redis, &names[i]);
        assert!(stored.iter().flat_map(|b| &b.events).all(|e| e.plan_version <= HISTORY + 1), "{}", names[i]);
    }
}

/// Signs `body` once, as the edge does, and sends it as often as asked: the status
/// and the answer of each send.
struct SignedBody {
    sig: String,
    body: String,
}

impl SignedBody {
    fn new(events: Vec<Event>) -> Self {
        let body = batch(events);
        let sig = signature::sign(INGEST_KEY.as_bytes(), allot_origin::now_ms() / 1000, body.as_bytes());
        Self { sig, body }
    }

    async fn send(&self, app: &TestApp) -> (u16, Value) {
        let r = app.http.post(app.url("/v1/events")).header(signature::HEADER, &self.sig).body(self.body.clone());
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

fn stream_len(redis: &RedisServer) -> u64 {
    redis::cmd("XLEN").arg(stream::EVENTS).query(&mut redis.conn()).unwrap()
}

/// A history read that fails in the middle of a body, at its first entry (a Redis
/// error) or on a later page (an entry that does not parse), fails the body; the edge
/// sends it again and it is stored once, every genuine event counted, none lost to
/// what the failed read left half-learnt.
#[tokio::test]
async fn a_history_read_failing_part_way_through_a_body_loses_nothing_and_counts_nothing_twice() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let names = ["left", "middle", "right"];
    let old: Vec<Vec<Plan>> = names.iter().map(|n| publish_history(&redis, n, 1..=3)).collect();
    let warm = SignedBody::new(old.iter().zip(names).map(|(h, n)| genuine(&format!("w-{n}"), &h[2])).collect());
    assert_eq!(warm.send(&app).await, (202, json!({"accepted": 3, "dropped": 0})));

    // New versions: `left` 4, `middle` 4 to 6, `right` 4. `right`'s history cannot be
    // read (a Redis error), and the entry under `middle`'s head does not parse.
    let left = publish_history(&redis, "left", [4]);
    let middle = publish_history(&redis, "middle", 4..=6);
    let right = publish_history(&redis, "right", [4]);
    let (middle_key, right_key) = (PlacementKeys::of_raw("middle").plans(), PlacementKeys::of_raw("right").plans());
    let right_history: Vec<String> =
        redis::cmd("LRANGE").arg(&right_key).arg(0).arg(-1).query(&mut redis.conn()).unwrap();
    redis::cmd("SET").arg(&right_key).arg("not a list").exec(&mut redis.conn()).unwrap();
    redis::cmd("LSET").arg(&middle_key).arg(1).arg("{not a plan").exec(&mut redis.conn()).unwrap();

    // `middle`'s event names the version two pages under its head.
    let body = SignedBody::new(vec![
        genuine("a", &left[0]),
        genuine("b", &right[0]),
        genuine("c", &middle[0]),
        genuine("d", &old[0][2]),
    ]);
    let stored = stream_len(&redis);
    let (status, _) = body.send(&app).await;
    assert_eq!(status, 503, "Redis failed: the edge sends the body again");
    assert_eq!(stream_len(&redis), stored, "nothing stored");

    redis::cmd("DEL").arg(&right_key).exec(&mut redis.conn()).unwrap();
    redis::cmd("RPUSH").arg(&right_key).arg(&right_history).exec(&mut redis.conn()).unwrap();
    let (status, _) = body.send(&app).await;
    assert_eq!(status, 500, "a stored plan does not parse");
    assert_eq!(stream_len(&redis), stored, "nothing stored");

    redis::cmd("LSET").arg(&middle_key).arg(1).arg(middle[1].to_json()).exec(&mut redis.conn()).unwrap();
    assert_eq!(body.send(&app).await, (202, json!({"accepted": 4, "dropped": 0})));
    assert_eq!(body.send(&app).await, (202, json!({"accepted": 4, "dropped": 0, "duplicate": true})));
    for (n, count) in [("left", 3), ("middle", 2), ("right", 2)] {
        eventually(10, "the genuine events counted once", || async { total_counts(&redis, n).requests.n == count })
            .await;
    }
    assert_eq!(dropped(&app, "unknown_version").await, 0.0);
    assert_eq!(app.metric("allot_ingest_events_total").await, 7.0);
}
