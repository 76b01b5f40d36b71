//! The console in a real headless Chromium (Playwright driving Debian's `chromium`):
//! sign-in as a viewer and as a manager, a chart that fills while traffic runs, a field
//! error, a preview of an infeasible edit, a saved edit, a 412 after a concurrent edit,
//! an infeasible placement flagged; markup typed into a field shown as text, never run;
//! Redis shut down under the page, and the console saying so. The browser steps are in `tests/console/console_test.py`;
//! this starts the origin binary and the traffic, and runs them.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use allot_core::EventBatch;
use allot_testkit::events::{allocation, xadd_cmd};
use allot_testkit::origin::{MANAGER_TOKEN, OriginProcess, VIEWER_TOKEN};
use allot_testkit::process::{browser_python, repo_root};
use allot_testkit::redis::RedisServer;
use serde_json::json;

const PERIOD_MS: u64 = 1_000;

/// Every window until `stop`: 200 iOS requests on `home_feed` (A 50 %, B 30 %) and 200 on
/// `web_only`, whose one campaign may only be shown on the web.
fn traffic(redis_url: &str, stop: Arc<AtomicBool>) {
    let mut conn = redis::Client::open(redis_url).unwrap().get_connection().unwrap();
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        let (mut events, mut web) = (Vec::new(), Vec::new());
        for i in 0..200 {
            let ad = match i % 10 {
                0..5 => Some("A"),
                5..8 => Some("B"),
                _ => None,
            };
            let mut e = allocation(&format!("h{round}-{i}"), "home_feed", ad, &["A", "B"], 1.0);
            e.platform = Some("ios".into());
            events.push(e);
            let mut w = allocation(&format!("w{round}-{i}"), "web_only", None, &[], 1.0);
            w.platform = Some("ios".into());
            web.push(w);
        }
        // One placement per stream entry, as the ingest writes them.
        // Until the browser steps shut Redis down.
        let sent = [events, web]
            .into_iter()
            .all(|events| xadd_cmd(&EventBatch { events }, allot_origin::now_ms()).query::<String>(&mut conn).is_ok());
        if !sent {
            break;
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(PERIOD_MS / 2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_and_viewers_work_the_console_in_a_real_browser() {
    let redis = RedisServer::start();
    let origin = OriginProcess::start(&redis, "", &[("ALLOT_CONTROL_PERIOD_MS", "1000")]);
    origin.wait_ready(30).await;
    // ±10 pp: what 200 requests a window can give (±1 pp would be unattainable).
    let confidence = json!({"margin": 0.1, "level": 0.95});
    let home = json!({"campaigns": [{"id": "A", "rate": 0.5}, {"id": "B", "rate": 0.3}], "confidence": confidence});
    assert_eq!(origin.put_targets("home_feed", &home, MANAGER_TOKEN).await.status(), 201);
    let web = json!({"campaigns": [{"id": "W", "rate": 0.6, "eligibility": {"platforms": ["web"]}}], "confidence": confidence});
    assert_eq!(origin.put_targets("web_only", &web, MANAGER_TOKEN).await.status(), 201);

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (redis_url, stop) = (redis.url(), stop.clone());
        std::thread::spawn(move || traffic(&redis_url, stop))
    };
    let base = origin.url("");
    let redis_port = redis.port.to_string();
    let screenshot = std::env::var("ALLOT_CONSOLE_SCREENSHOT").unwrap_or_default();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(browser_python())
            .arg(repo_root().join("origin/tests/console/console_test.py"))
            // No bytecode cache beside the script in the checkout.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("ALLOT_URL", base)
            .env("VIEWER_TOKEN", VIEWER_TOKEN)
            .env("REDIS_PORT", redis_port)
            .env("MANAGER_TOKEN", MANAGER_TOKEN)
            .env("ALLOT_SCREENSHOT", screenshot)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.contains("every step passed"), "the console test failed:\n{report}");
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_content_security_policy() {
    let redis = RedisServer::start();
    let origin = OriginProcess::start(&redis, "", &[]);
    origin.wait_ready(30).await;
    for (path, kind) in
        [("/console", "text/html"), ("/console/app.js", "text/javascript"), ("/console/app.css", "text/css")]
    {
        let r = origin.http.get(origin.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert!(header("content-type").starts_with(kind), "{path}: {}", header("content-type"));
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
    }
    // Nothing in the page runs inline: the policy would block it.
    let page = origin.http.get(origin.url("/console")).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("<script>") && !page.contains("onclick="), "{page}");
    // The console's only privileged call answers who a token is, and nothing without one.
    let (status, me) = origin.get_json("/v1/me", VIEWER_TOKEN).await;
    assert_eq!((status, me["role"].as_str()), (200, Some("viewer")), "{me}");
    assert_eq!(origin.get_json("/v1/me", "nope").await.0, 401);
}
