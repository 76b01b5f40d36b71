//! Operations: the delivery gauges agree with the status API, per-campaign series stop at
//! `metrics.campaign_series` while every placement keeps its own gauges, request metrics
//! cannot be grown by junk paths, `/metrics` can be kept to admin tokens, and the alert rules and the dashboard name only metrics the
//! origin exports (and pass `promtool`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use allot_testkit::events::{allocation, xadd};
use allot_testkit::origin::{MANAGER_TOKEN, OriginConfig, TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use allot_testkit::s3::S3Server;
use serde_json::{Value, json};

/// The value of the series `name` whose labels include all of `labels`.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (metric, rest) = head.split_once('{').unwrap_or((head, ""));
        let matches = metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// 200 iOS requests in the last complete window of a one-minute period, with at least
/// 15 s before the next window ends (so the test reads one window throughout).
async fn last_window_traffic(redis: &RedisServer) {
    let period = 60_000;
    allot_testkit::poll::into_period(period, 500, period - 15_000).await;
    let index = allot_origin::now_ms() / period - 1;
    let events = (0..200)
        .map(|i| {
            let ad = if i % 10 < 5 { Some("A") } else { None };
            let mut e = allocation(&format!("r{i}"), "home_feed", ad, &["A"], 1.0);
            e.event_time_ms = index * period + period / 2;
            e.platform = Some("ios".into());
            e
        })
        .collect();
    xadd(&mut redis.conn(), &allot_core::EventBatch { events }, allot_origin::now_ms());
    eventually(10, "counted", || async { (total_counts(redis, "home_feed").requests.n == 200).then_some(()) }).await;
}

#[tokio::test]
async fn delivery_gauges_agree_with_the_status_api() {
    let redis = RedisServer::start();
    let app =
        TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_PERIOD_MS", "60000"), ("ALLOT_CONTROL_LATENESS_MS", "0")]))
            .await;
    last_window_traffic(&redis).await;
    // C cannot be served (Android only, all traffic is iOS); the margin needs more
    // requests than a window has.
    let spec = json!({
        "campaigns": [{"id": "A", "rate": 0.5}, {"id": "C", "rate": 0.1, "eligibility": {"platforms": ["android"]}}],
        "confidence": {"margin": 0.01, "level": 0.95}
    });
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    // A round sets the placement's unattainable gauge last: a scrape begun once it is
    // there has the whole round's gauges, never a half-set campaign. The sample rate's
    // comes with the plan, which a first round records after publishing it.
    eventually(5, "gauges", || async {
        let text = app.metrics_text().await;
        let unattainable = series(&text, "allot_placement_unattainable", &[("placement", "home_feed")]);
        unattainable.and(series(&text, "allot_placement_sample_rate", &[("placement", "home_feed")]))
    })
    .await;
    let text = app.metrics_text().await;
    let (_, status) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
    let a = &status["campaigns"][0];
    let gauge = |name: &str, campaign: &str| series(&text, name, &[("placement", "home_feed"), ("campaign", campaign)]);
    // The exposition prints floats to 16 digits.
    let same = |gauge: Option<f64>, api: &Value| (gauge.unwrap() - api.as_f64().unwrap()).abs() < 1e-12;
    assert!(same(gauge("allot_campaign_target_share", "A"), &a["target"]), "{a}");
    assert!(same(gauge("allot_campaign_estimated_share", "A"), &a["estimate"]["share"]), "{a}");
    assert!(same(gauge("allot_campaign_estimated_share_low", "A"), &a["estimate"]["low"]), "{a}");
    assert!(same(gauge("allot_campaign_estimated_share_high", "A"), &a["estimate"]["high"]), "{a}");
    let rate = series(&text, "allot_placement_sample_rate", &[("placement", "home_feed")]);
    assert!(same(rate, &status["sample_rate"]), "{status}");
    assert_eq!(gauge("allot_campaign_feasible", "A"), Some(1.0));
    assert_eq!(status["campaigns"][1]["feasibility"]["status"], "infeasible", "{status}");
    assert_eq!(gauge("allot_campaign_feasible", "C"), Some(0.0));
    // 200 requests a window, far fewer than a ±1 pp interval needs.
    assert_eq!(series(&text, "allot_placement_unattainable", &[("placement", "home_feed")]), Some(1.0));
    assert_eq!(series(&text, "allot_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert!(series(&text, "process_cpu_seconds_total", &[]).is_some(), "process metrics");

    // Deleting the placement removes its series.
    let r = app.http.delete(app.url("/v1/placements/home_feed")).bearer_auth(MANAGER_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    eventually(5, "series removed", || async {
        series(&app.metrics_text().await, "allot_campaign_target_share", &[]).is_none().then_some(())
    })
    .await;
}

/// With room for two placement × campaign pairs, the first placement (two campaigns)
/// gets per-campaign series and the second only placement-level ones, until the first is
/// deleted and frees the room.
#[tokio::test]
async fn per_campaign_series_stop_at_the_limit_and_placement_gauges_cover_the_rest() {
    let redis = RedisServer::start();
    let env = [
        ("ALLOT_CONTROL_PERIOD_MS", "60000"),
        ("ALLOT_CONTROL_LATENESS_MS", "0"),
        ("ALLOT_METRICS_CAMPAIGN_SERIES", "2"),
    ];
    let app = TestApp::start(config(&redis, "", &env)).await;
    last_window_traffic(&redis).await;
    // C cannot be served: all traffic is iOS.
    let spec = json!({
        "campaigns": [{"id": "A", "rate": 0.5}, {"id": "C", "rate": 0.1, "eligibility": {"platforms": ["android"]}}],
    });
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    let home = [("placement", "home_feed")];
    eventually(5, "home_feed's gauges", || async {
        series(&app.metrics_text().await, "allot_campaign_target_share", &home).map(|_| ())
    })
    .await;
    let search = [("placement", "search")];
    let one = json!({"campaigns": [{"id": "S", "rate": 0.2}]});
    assert_eq!(app.put_targets("search", &one, MANAGER_TOKEN).await.status(), 201);
    let text = eventually(5, "search's gauges", || async {
        let text = app.metrics_text().await;
        series(&text, "allot_placement_campaigns_off_target", &search).map(|_| text)
    })
    .await;
    for name in ["allot_campaign_target_share", "allot_campaign_estimated_share", "allot_campaign_feasible"] {
        assert!(series(&text, name, &home).is_some(), "{name}\n{text}");
        assert_eq!(series(&text, name, &search), None, "{name}\n{text}");
    }
    for name in
        ["allot_placement_campaigns_off_target", "allot_placement_campaigns_infeasible", "allot_placement_worst_gap"]
    {
        assert!(series(&text, name, &home).is_some() && series(&text, name, &search).is_some(), "{name}\n{text}");
    }
    // The placement-level count agrees with the per-campaign gauges.
    assert_eq!(series(&text, "allot_campaign_feasible", &[("placement", "home_feed"), ("campaign", "C")]), Some(0.0));
    assert_eq!(series(&text, "allot_placement_campaigns_infeasible", &home), Some(1.0));
    assert_eq!(series(&text, "allot_campaign_series_omitted_placements", &[]), Some(1.0));

    // Deleted, home_feed frees its room; search takes it at its next round.
    let r = app.http.delete(app.url("/v1/placements/home_feed")).bearer_auth(MANAGER_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    eventually(5, "home_feed forgotten", || async {
        series(&app.metrics_text().await, "allot_placement_campaigns_off_target", &home).is_none().then_some(())
    })
    .await;
    let one = json!({"campaigns": [{"id": "S", "rate": 0.25}]});
    assert_eq!(app.put_targets("search", &one, MANAGER_TOKEN).await.status(), 200);
    let text = eventually(5, "search's per-campaign series", || async {
        let text = app.metrics_text().await;
        (series(&text, "allot_campaign_target_share", &search) == Some(0.25)).then_some(text)
    })
    .await;
    assert_eq!(series(&text, "allot_campaign_series_omitted_placements", &[]), Some(0.0));
    assert_eq!(series(&text, "allot_campaign_target_share", &home), None);
}

#[tokio::test]
async fn request_metrics_count_routes_not_paths() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[])).await;
    for path in ["/nope/1", "/nope/2", "/v1/placements/a", "/v1/placements/b"] {
        app.http.get(app.url(path)).bearer_auth(VIEWER_TOKEN).send().await.unwrap();
    }
    app.http.request(reqwest::Method::from_bytes(b"BREW").unwrap(), app.url("/healthz")).send().await.unwrap();
    let text = app.metrics_text().await;
    let routes: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("allot_http_requests_total{"))
        .filter_map(|l| l.split("route=\"").nth(1)?.split('"').next())
        .collect();
    assert!(routes.contains("/v1/placements/{id}") && routes.contains("unmatched"), "{routes:?}");
    assert!(!routes.iter().any(|r| r.contains("nope") || r.ends_with("/a")), "{routes:?}");
    let placements = [("route", "/v1/placements/{id}"), ("method", "GET"), ("status", "404")];
    assert_eq!(series(&text, "allot_http_requests_total", &placements), Some(2.0));
    assert_eq!(series(&text, "allot_http_requests_total", &[("method", "other"), ("status", "405")]), Some(1.0));
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn promtool() -> PathBuf {
    let cache = std::env::var("ALLOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/allot"));
    let cached = cache.join("tools/bin/promtool");
    if cached.exists() {
        return cached;
    }
    let on_path = Command::new("promtool").arg("--version").output().is_ok();
    assert!(on_path, "promtool is not installed: run `bash scripts/tools.sh promtool`");
    PathBuf::from("promtool")
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("ops/prometheus");
    for args in [&["check", "rules", "alerts.yml"][..], &["test", "rules", "alerts.test.yml"]] {
        let out = Command::new(promtool()).args(args).current_dir(&dir).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

/// Metric names in a PromQL text (or anything): `allot_…` and `process_…` words.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("allot_") || word.starts_with("process_") {
            out.insert(word.to_string());
        }
    }
    out
}

#[tokio::test]
async fn the_alerts_and_the_dashboard_name_only_exported_metrics() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let cfg = OriginConfig::new().redis(&redis.url()).archive(&s3).load(&[("ALLOT_CONTROL_PERIOD_MS", "60000")]);
    let app = TestApp::start(cfg).await;
    last_window_traffic(&redis).await;
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    // A forged body, for the rejection counter.
    let forged = app.http.post(app.url("/v1/events")).body("{}").send().await.unwrap();
    assert_eq!(forged.status(), 401);
    // The campaign gauges are set by the round, the plan-in-force ones once its plan is
    // published and stored, a moment later: wait for both.
    let exported = eventually(10, "the delivery gauges", || async {
        let text = app.metrics_text().await;
        (text.contains("allot_campaign_target_share{") && text.contains("allot_placement_sample_rate{")).then_some(text)
    })
    .await;
    let exported: BTreeSet<String> = exported
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next().map(String::from))
        .collect();

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("ops/grafana/allot.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    let mut named = BTreeSet::new();
    for p in panels {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()) && p["type"].is_string(), "{p}");
        for t in p["targets"].as_array().unwrap() {
            named.extend(names_in(t["expr"].as_str().unwrap()));
        }
    }
    named.extend(names_in(&std::fs::read_to_string(repo().join("ops/prometheus/alerts.yml")).unwrap()));
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "named in the rules or the dashboard but not exported: {missing:?}");
}

/// With `metrics.require_token`, `/metrics` (every placement's and campaign's shares by
/// name) answers only a request with an admin token; without one, or with one it does
/// not know, the JSON `401` every admin route gives, before anything is rendered.
#[tokio::test]
async fn metrics_can_be_kept_to_admin_tokens() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_METRICS_REQUIRE_TOKEN", "true")])).await;
    let get = |token: Option<&str>| {
        let r = app.http.get(app.url("/metrics"));
        let r = if let Some(t) = token { r.bearer_auth(t) } else { r };
        r.send()
    };
    for token in [None, Some("not-a-token")] {
        let r = get(token).await.unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    }
    let r = get(Some(VIEWER_TOKEN)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("allot_http_requests_total"));
}
