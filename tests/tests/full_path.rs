//! The whole path under open-loop load (`allot_e2e::fullpath`), short: the harness that
//! `scripts/bench-full.sh` runs at 10,000 requests/s for minutes, here at a few hundred
//! for seconds, with a workerd pause, an origin restart and a Redis restart; and the
//! load generator's accounting held against servers that answer badly or not at all.
//! The long run is `scripts/bench-full.sh`, described in `docs/performance.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use allot_e2e::edge_host::EdgeHost;
use allot_e2e::fullpath::{Fault, FaultKind, FullPath, Options, StepReport};
use allot_e2e::render;
use allot_e2e::traffic::{Mix, Traffic};
use allot_testkit::scenario::MARGIN;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The stacks are heavy for two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RATE: f64 = 300.0;

fn short() -> Options {
    Options {
        period_ms: 2_000,
        concurrency: 64,
        timeout: Duration::from_secs(5),
        warmup: Duration::from_secs(2),
        judge: Duration::from_secs(8),
        copies: 1,
        redis_fsync_always: true,
        ..Options::default()
    }
}

/// Every request scheduled was answered, at the rate scheduled.
fn assert_on_schedule(step: &StepReport, seconds: f64) {
    let t = &step.traffic;
    let expected = step.rate * seconds;
    assert!((t.scheduled as f64 - expected).abs() <= 2.0, "scheduled {} of {expected}", t.scheduled);
    assert_eq!((t.answered, t.errors), (t.scheduled, 0), "{t:?}");
    assert!(t.answered_per_sec >= 0.99 * step.rate, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_path_holds_its_rate_and_its_targets() {
    let _serial = SERIAL.lock().await;
    let mut run = FullPath::start(short()).await.unwrap();
    let step = run.step(RATE, Duration::from_secs(20), None).await.unwrap();
    println!(
        "{}\n{}\n{}",
        render::steps(std::slice::from_ref(&step)),
        render::cpu(std::slice::from_ref(&step)),
        render::shares(std::slice::from_ref(&step), MARGIN)
    );
    assert_on_schedule(&step, 20.0);

    // Every process of the path worked, and each is accounted for.
    let cpu = &step.usage.cpu_seconds;
    for name in ["edge (workerd)", "origin", "redis-server", "s3s-fs", "load generator"] {
        assert!(cpu.contains_key(name), "{name} missing from {cpu:?}");
    }
    assert!(cpu["edge (workerd)"] > 0.0 && cpu["origin"] > 0.0, "{cpu:?}");
    assert!(step.usage.redis_ops_per_sec.unwrap() > 0.0 && step.usage.redis_aof == Some(true), "{:?}", step.usage);

    // The origin accepted what the edge sampled in the step (up to the batches in
    // flight at its two ends).
    let sampled = step.usage.edge_sampled.unwrap() as f64;
    let accepted = step.usage.origin_events.unwrap();
    assert!(sampled > 100.0, "too few samples to judge: {sampled}");
    assert!((accepted - sampled).abs() <= (0.1 * sampled).max(30.0), "sampled {sampled}, accepted {accepted}");

    // The apps' shares in the last windows, against what each campaign can reach. At
    // a few hundred requests per window, twice the margin.
    assert!(step.shares.iter().all(|s| s.requests > 300), "{:?}", step.shares);
    for s in &step.shares {
        assert!(s.within(2.0 * MARGIN), "{s:?}");
    }

    // Every event the edge sampled was acknowledged and archived once.
    let drained = run.drain(Duration::from_secs(60)).await.unwrap();
    println!("{}", render::drained(&drained));
    let e = &drained.edge;
    assert_eq!(e["queued"], e["sent"], "{e}");
    assert!(drained.archived_events > 0);
    assert_eq!(drained.archived_events, e["sent"].as_u64().unwrap(), "archived vs acknowledged: {e}");
    assert!(drained.archived_plans >= 2 && drained.plans_published >= 2.0, "{drained:?}");
    run.stack.stop();
}

/// The same path with the worker in plain `workerd serve` (a memory KV), the way load
/// runs host it: plans pushed, events acknowledged and archived as through Miniflare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_path_on_plain_workerd() {
    let _serial = SERIAL.lock().await;
    let mut run = FullPath::start(Options { edge_host: EdgeHost::Workerd, ..short() }).await.unwrap();
    let step = run.step(RATE, Duration::from_secs(10), None).await.unwrap();
    println!("{}\n{}", render::steps(std::slice::from_ref(&step)), render::cpu(std::slice::from_ref(&step)));
    assert_on_schedule(&step, 10.0);
    let cpu = &step.usage.cpu_seconds;
    assert!(cpu.get("edge (workerd)").is_some_and(|s| *s > 0.0) && !cpu.contains_key("edge (node)"), "{cpu:?}");
    let drained = run.drain(Duration::from_secs(60)).await.unwrap();
    let e = &drained.edge;
    assert!(e["sent"].as_u64().unwrap() > 100, "{e}");
    assert_eq!(e["queued"], e["sent"], "{e}");
    assert_eq!(drained.archived_events, e["sent"].as_u64().unwrap(), "archived vs acknowledged: {e}");
    run.stack.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_edge_shows_in_latency_and_restarts_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let mut run = FullPath::start(Options { warmup: Duration::ZERO, ..short() }).await.unwrap();

    // workerd stopped for 2 s: every request scheduled in those 2 s waits, and its
    // latency, counted from its scheduled time, says so. (A closed-loop client would
    // have stopped sending, and seen one slow request per connection: 64 of 3,600.)
    let pause = Fault { after: Duration::from_secs(5), kind: FaultKind::PauseEdge(Duration::from_secs(2)) };
    let step = run.step(RATE, Duration::from_secs(12), Some(pause)).await.unwrap();
    println!("{}", render::steps(std::slice::from_ref(&step)));
    assert_on_schedule(&step, 12.0);
    let stalled = step.observed.accounting.latency_us.count_between(500_000, u64::MAX);
    assert!(stalled as f64 >= 0.7 * 1.5 * RATE, "only {stalled} requests waited ≥ 0.5 s: {:?}", step.traffic);
    assert!(step.traffic.latency_ms_p99 >= 1_000.0 && step.traffic.latency_ms_max >= 1_900.0, "{:?}", step.traffic);
    assert!(step.timeline.iter().any(|s| s.max_us >= 1_500_000), "the stall is in the timeline");

    // The origin, then Redis, killed and restarted: the apps see nothing (the edge
    // decides alone), and the edge's outbox gets every event through afterwards.
    for kind in [FaultKind::RestartOrigin, FaultKind::RestartRedis] {
        let step =
            run.step(RATE, Duration::from_secs(10), Some(Fault { after: Duration::from_secs(3), kind })).await.unwrap();
        println!("{:?}\n{}", step.fault, render::steps(std::slice::from_ref(&step)));
        assert_on_schedule(&step, 10.0);
    }
    let drained = run.drain(Duration::from_secs(60)).await.unwrap();
    println!("{}", render::drained(&drained));
    let e = &drained.edge;
    assert_eq!(e["queued"], e["sent"], "every sampled event acknowledged: {e}");
    assert_eq!(
        (e["dropped"].as_u64(), e["failed"].as_u64(), e["expired"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{e}"
    );
    assert_eq!(drained.archived_events, e["sent"].as_u64().unwrap(), "archived once each: {e}");
    run.stack.stop();
}

/// A server on loopback that answers every request with `answer` after `delay`
/// (`None`: reads and never answers; empty: closes the connection).
async fn server(answer: Option<&'static str>, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    tokio::time::sleep(delay).await;
                    match answer {
                        None => continue,
                        Some("") => return,
                        Some(body) => {
                            let _ = conn.write_all(body.as_bytes()).await;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn http(status: &str, body: &str) -> &'static str {
    let text =
        format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    Box::leak(text.into_boxed_str())
}

async fn load(url: String, concurrency: usize) -> allot_e2e::accounting::Summary {
    let traffic = Traffic {
        edge_url: url,
        placements: vec![("home_feed".into(), Mix::scenario())],
        rps: 50.0,
        concurrency,
        period_ms: 1_000,
        timeout: Duration::from_millis(800),
    };
    let observed = traffic.start(Duration::from_secs(2)).join().await.unwrap();
    let s = observed.accounting.summary(2.0);
    assert_eq!(s.scheduled, 100, "{s:?}");
    assert_eq!(s.scheduled, s.answered + s.errors, "{s:?}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_counts_what_was_not_answered_as_errors() {
    let ad = r#"{"request_id":"r","placement":"home_feed","plan_version":1,"ad":{"id":"A","creative":{}}}"#;
    let (silent, refusing, garbage, closing, slow, good) = tokio::join!(
        server(None, Duration::ZERO),
        server(Some(http("503 Service Unavailable", r#"{"error":{"code":"x","message":"y"}}"#)), Duration::ZERO),
        server(Some(http("200 OK", r#"{"ok":true}"#)), Duration::ZERO),
        server(Some(""), Duration::ZERO),
        server(Some(http("200 OK", ad)), Duration::from_millis(300)),
        server(Some(http("200 OK", ad)), Duration::ZERO),
    );
    let (silent, few_slots, refusing, garbage, closing, slow, good) = tokio::join!(
        load(silent.clone(), 64),
        load(silent, 4),
        load(refusing, 64),
        load(garbage, 64),
        load(closing, 64),
        load(slow, 64),
        load(good, 64),
    );
    // No answer: errors, none in the latency histogram.
    assert_eq!((silent.answered, silent.error_reasons.get("timeout")), (0, Some(&100)), "{silent:?}");
    assert_eq!(silent.latency_ms_max, 0.0);
    // With 4 connections all hung, the rest wait for one (the wait shows as send lag)
    // and time out: still errors, and still counted.
    assert_eq!((few_slots.answered, few_slots.errors), (0, 100), "{few_slots:?}");
    assert!(few_slots.error_reasons.keys().all(|r| r.starts_with("timeout")), "{few_slots:?}");
    assert!(few_slots.send_lag_ms_p99 >= 500.0, "{few_slots:?}");
    // Quick refusals and answers that are not the API's are not fast answers.
    assert_eq!((refusing.answered, refusing.error_reasons.get("status 503")), (0, Some(&100)), "{refusing:?}");
    assert_eq!((garbage.answered, garbage.error_reasons.get("unreadable body")), (0, Some(&100)), "{garbage:?}");
    assert_eq!(closing.answered, 0, "{closing:?}");
    // A slow answer is as slow as it was, from its scheduled time.
    assert_eq!(slow.answered, 100, "{slow:?}");
    assert!(slow.latency_ms_p50 >= 300.0, "{slow:?}");
    assert_eq!((good.answered, good.errors), (100, 0), "{good:?}");
    assert!(good.latency_ms_p50 < 300.0, "{good:?}");
}
