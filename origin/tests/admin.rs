//! The admin API: roles (401 vs 403), ETags (412), validation (422 naming the field),
//! the audit trail, listing and deleting.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn spec() -> Value {
    json!({
        "campaigns": [
            {"id": "A", "rate": 0.5, "creative": {"img": "a.png"}, "eligibility": {"platforms": ["IOS"]}},
            {"id": "B", "rate": 0.3}
        ],
        "confidence": {"margin": 0.02, "level": 0.95}
    })
}

#[tokio::test]
async fn tokens_roles_etags_validation_and_audit() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let url = app.url("/v1/placements/home_feed");

    // 401 without or with an unknown token, 403 for a viewer writing.
    let r = app.http.put(&url).json(&spec()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(app.put_targets("home_feed", &spec(), "wrong").await.status(), 401);
    let r = app.put_targets("home_feed", &spec(), VIEWER_TOKEN).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "forbidden");
    assert_eq!(app.get_json("/v1/placements/home_feed", VIEWER_TOKEN).await.0, 404);

    // Create, then read back normalised with an ETag.
    let r = app.put_targets("home_feed", &spec(), MANAGER_TOKEN).await;
    assert_eq!(r.status(), 201);
    let etag1 = r.headers()["etag"].to_str().unwrap().to_string();
    let r = app.http.get(&url).bearer_auth(VIEWER_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag1);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["campaigns"][0]["eligibility"]["platforms"], json!(["ios"]));
    assert_eq!(got["campaigns"][1]["creative"], json!({}));

    // Update with the right If-Match, then a stale one is 412.
    let mut changed = spec();
    changed["campaigns"][1]["rate"] = json!(0.4);
    let r =
        app.http.put(&url).bearer_auth(MANAGER_TOKEN).header("If-Match", &etag1).json(&changed).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag2 = r.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(etag1, etag2);
    let r =
        app.http.put(&url).bearer_auth(MANAGER_TOKEN).header("If-Match", &etag1).json(&spec()).send().await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "precondition_failed");
    let r = app.http.put(&url).bearer_auth(MANAGER_TOKEN).header("If-Match", "*").json(&changed).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag3 = r.headers()["etag"].to_str().unwrap().to_string();
    let r = app
        .http
        .put(app.url("/v1/placements/fresh"))
        .bearer_auth(MANAGER_TOKEN)
        .header("If-Match", "*")
        .json(&spec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412, "If-Match: * needs an existing placement");

    // Validation: 422 naming the field; bad JSON 400.
    let cases = [
        (json!({"campaigns": [{"id": "A", "rate": 1.5}]}), "campaigns[0].rate"),
        (json!({"campaigns": [{"id": "A", "rate": 0.6}, {"id": "B", "rate": 0.6}]}), "campaigns"),
        (json!({"campaigns": [{"id": "A", "rate": 0.1}, {"id": "A", "rate": 0.1}]}), "campaigns[1].id"),
        (json!({"campaigns": [], "confidence": {"margin": 0, "level": 0.95}}), "confidence.margin"),
        (json!({"campaigns": [{"id": "A", "rate": "high"}]}), "body"),
    ];
    for (doc, field) in cases {
        let r = app.put_targets("home_feed", &doc, MANAGER_TOKEN).await;
        assert_eq!(r.status(), 422, "{doc}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["field"], field, "{v}");
        assert_eq!(v["error"]["code"], "validation_failed");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(field), "{v}");
    }
    let r = app.put_targets("bad id!", &spec(), MANAGER_TOKEN).await;
    assert!(r.status() == 422 || r.status() == 404, "{}", r.status());
    let r = app.http.put(&url).bearer_auth(MANAGER_TOKEN).body("{oops").send().await.unwrap();
    assert_eq!(r.status(), 400);

    // List.
    let (status, list) = app.get_json("/v1/placements", VIEWER_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(list["placements"].as_array().unwrap().len(), 1);
    assert_eq!(list["placements"][0]["id"], "home_feed");
    assert_eq!(list["placements"][0]["etag"], etag3.as_str());

    // Delete: stale If-Match 412, viewer 403, then 204 and gone.
    let r = app.http.delete(&url).bearer_auth(MANAGER_TOKEN).header("If-Match", &etag1).send().await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(app.http.delete(&url).bearer_auth(VIEWER_TOKEN).send().await.unwrap().status(), 403);
    let r = app.http.delete(&url).bearer_auth(MANAGER_TOKEN).header("If-Match", &etag3).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.get_json("/v1/placements/home_feed", VIEWER_TOKEN).await.0, 404);
    assert_eq!(app.http.delete(&url).bearer_auth(MANAGER_TOKEN).send().await.unwrap().status(), 404);
    // Re-creating after a delete does not resurrect old ETags.
    let r = app.put_targets("home_feed", &spec(), MANAGER_TOKEN).await;
    assert_eq!(r.status(), 201);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag1);

    // The audit trail, newest first: who, when, before, after.
    let (status, audit) = app.get_json("/v1/audit?placement=home_feed", VIEWER_TOKEN).await;
    assert_eq!(status, 200);
    let entries = audit.as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["put", "delete", "put", "put", "put"]);
    assert!(entries.iter().all(|e| e["who"] == "mia"));
    assert!(entries.iter().all(|e| e["at_ms"].as_u64().unwrap() > 1_600_000_000_000));
    let first = &entries[4];
    assert_eq!(first["before"], Value::Null);
    assert_eq!(first["after"]["campaigns"][1]["rate"], 0.3);
    assert_eq!(entries[3]["before"]["campaigns"][1]["rate"], 0.3);
    assert_eq!(entries[3]["after"]["campaigns"][1]["rate"], 0.4);
    assert_eq!(entries[1]["after"], Value::Null);
    let (_, limited) = app.get_json("/v1/audit?limit=2", VIEWER_TOKEN).await;
    assert_eq!(limited.as_array().unwrap().len(), 2);
    assert_eq!(app.get_json("/v1/audit", "nope").await.0, 401);
}
