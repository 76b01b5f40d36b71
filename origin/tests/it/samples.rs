//! What one placement's events may cost: a manager's confidence that needs more sampled
//! requests a window than the deployment plans for (`control.max_samples_per_window`)
//! is refused, from `PUT` and preview alike, before anything is stored or solved.

use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN, config};
use allot_testkit::redis::RedisServer;
use serde_json::{Value, json};

fn spec(margin: f64, level: f64) -> Value {
    json!({"campaigns": [{"id": "A", "rate": 0.5}], "confidence": {"margin": margin, "level": level}})
}

#[tokio::test]
async fn a_confidence_needing_more_samples_than_the_deployment_allows_is_refused() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    // ±0.1 pp at 99.99 %: 3.8 million sampled requests a window, every request of a busy
    // placement sent to the origin.
    let r = app.put_targets("home_feed", &spec(0.001, 0.9999), MANAGER_TOKEN).await;
    assert_eq!(r.status(), 422);
    let error = r.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(error["code"], "validation_failed", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("confidence") && message.contains("100000"), "{message}");
    let preview = app.http.post(app.url("/v1/placements/home_feed/preview")).bearer_auth(VIEWER_TOKEN);
    assert_eq!(preview.json(&spec(0.001, 0.9999)).send().await.unwrap().status(), 422);
    let (code, _) = app.get_json("/v1/placements/home_feed", VIEWER_TOKEN).await;
    assert_eq!(code, 404, "nothing stored");
    // ±0.5 pp at 99 % needs 66,349: within the default bound.
    assert_eq!(app.put_targets("home_feed", &spec(0.005, 0.99), MANAGER_TOKEN).await.status(), 201);
}

#[tokio::test]
async fn the_bound_is_the_deployments_to_set() {
    let redis = RedisServer::start();
    let env = [("ALLOT_CONTROL_ENABLED", "false"), ("ALLOT_CONTROL_MAX_SAMPLES_PER_WINDOW", "5000")];
    let app = TestApp::start(config(&redis, "", &env)).await;
    // The default confidence (±1 pp at 95 %) around 50 % needs 9,604.
    assert_eq!(app.put_targets("home_feed", &spec(0.01, 0.95), MANAGER_TOKEN).await.status(), 422);
    assert_eq!(app.put_targets("home_feed", &spec(0.02, 0.95), MANAGER_TOKEN).await.status(), 201);
}
