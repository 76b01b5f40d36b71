//! The admin API: roles (401 vs 403), ETags (412), validation (422 naming the field),
//! the audit trail, listing and deleting; and that every refusal, including axum's own
//! (query string, path, method, route), is the JSON error format.

use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use serde_json::{Value, json};

/// A refusal's status and body, after checking it is the JSON error format.
async fn json_error(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(content_type.as_deref(), Some("application/json"), "status {status}");
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    (status, v)
}

/// A refusal's status, code and field (empty if none).
async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let (status, v) = json_error(r).await;
    let text = |x: &Value| x.as_str().unwrap_or_default().to_string();
    (status, text(&v["error"]["code"]), text(&v["error"]["field"]))
}

fn refusal(status: u16, code: &str) -> (u16, String, String) {
    (status, code.to_string(), String::new())
}

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
        // A rule naming more platforms than any real one: every edge compiles it and every
        // round indexes it, so it is refused before anything is saved or previewed.
        (
            json!({"campaigns": [{"id": "A", "rate": 0.1, "eligibility": {"platforms": (0..65).map(|i| format!("p{i}")).collect::<Vec<_>>()}}]}),
            "campaigns[0].eligibility.platforms",
        ),
        // A creative past 8 KiB: it would ride in every plan, audit entry and served
        // response, and the largest document's plan would no longer fit an edge.
        (
            json!({"campaigns": [{"id": "A", "rate": 0.1, "creative": {"img": "x".repeat(8 * 1024)}}]}),
            "campaigns[0].creative",
        ),
    ];
    for (doc, field) in cases {
        let preview = app.http.post(app.url("/v1/placements/home_feed/preview")).bearer_auth(VIEWER_TOKEN).json(&doc);
        for r in [app.put_targets("home_feed", &doc, MANAGER_TOKEN).await, preview.send().await.unwrap()] {
            assert_eq!(r.status(), 422, "{doc}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["field"], field, "{v}");
            assert_eq!(v["error"]["code"], "validation_failed");
            assert!(v["error"]["message"].as_str().unwrap().starts_with(field), "{v}");
        }
    }
    let r = app.put_targets("bad id!", &spec(), MANAGER_TOKEN).await;
    assert_eq!(error_of(r).await, (422, "validation_failed".into(), "id".into()));
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
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(audit["next"], Value::Null, "one page");
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
    assert_eq!(limited["entries"].as_array().unwrap().len(), 2);
    let next = limited["next"].as_str().expect("more pages").to_string();
    let (_, older) = app.get_json(&format!("/v1/audit?limit=2&before={next}"), VIEWER_TOKEN).await;
    let (_, feed) = app.get_json("/v1/audit", VIEWER_TOKEN).await;
    assert_eq!(older["entries"][0]["id"], feed["entries"][2]["id"], "the next page starts after the last entry");
    assert_eq!(app.get_json("/v1/audit", "nope").await.0, 401);
}

#[tokio::test]
async fn refusals_are_json() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let get = |path: &str, token: &str| app.http.get(app.url(path)).bearer_auth(token).send();
    assert_eq!(app.put_targets("home_feed", &spec(), MANAGER_TOKEN).await.status(), 201);

    // The query string: a bad limit, cursor or placement filter is the client's 400.
    for query in ["limit=ten", "limit=-1", "before=garbage", "before=17", "placement=bad%20id!"] {
        let r = get(&format!("/v1/audit?{query}"), VIEWER_TOKEN).await.unwrap();
        assert_eq!(error_of(r).await, refusal(400, "invalid_query"), "{query}");
    }
    let (status, page) = app.get_json("/v1/audit?before=0-0", VIEWER_TOKEN).await;
    assert_eq!((status, page), (200, json!({"entries": [], "next": null})), "nothing precedes the first id");
    // A valid cursor pages: the entry itself is excluded.
    let (_, all) = app.get_json("/v1/audit", VIEWER_TOKEN).await;
    let newest = all["entries"][0]["id"].as_str().unwrap().to_string();
    let (status, page) = app.get_json(&format!("/v1/audit?before={newest}"), VIEWER_TOKEN).await;
    assert_eq!((status, page), (200, json!({"entries": [], "next": null})));
    // The placements list pages too; a bad cursor is the client's.
    for id in ["a_first", "z_last"] {
        assert_eq!(app.put_targets(id, &spec(), MANAGER_TOKEN).await.status(), 201);
    }
    let (_, page) = app.get_json("/v1/placements?limit=2", VIEWER_TOKEN).await;
    let ids: Vec<&str> = page["placements"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!((ids, page["next"].as_str()), (vec!["a_first", "home_feed"], Some("home_feed")));
    let (_, page) = app.get_json("/v1/placements?limit=2&after=home_feed", VIEWER_TOKEN).await;
    assert_eq!((page["placements"][0]["id"].as_str(), &page["next"]), (Some("z_last"), &Value::Null));
    for query in ["limit=x", "after=bad%20id!"] {
        let r = get(&format!("/v1/placements?{query}"), VIEWER_TOKEN).await.unwrap();
        assert_eq!(error_of(r).await, refusal(400, "invalid_query"), "{query}");
    }
    // Authentication comes before the query.
    let r = get("/v1/audit?limit=ten", "nope").await.unwrap();
    assert_eq!(error_of(r).await, refusal(401, "unauthorized"));

    // The path: a malformed placement id is 422 on `id`, everywhere it appears.
    let bad = "/v1/placements/bad%20id!";
    let field_id = (422, "validation_failed".to_string(), "id".to_string());
    assert_eq!(error_of(get(bad, VIEWER_TOKEN).await.unwrap()).await, field_id);
    assert_eq!(error_of(get(&format!("{bad}/status"), VIEWER_TOKEN).await.unwrap()).await, field_id);
    let r = app.http.delete(app.url(bad)).bearer_auth(MANAGER_TOKEN).send().await.unwrap();
    assert_eq!(error_of(r).await, field_id);
    let r = app.http.put(app.url(bad)).bearer_auth(MANAGER_TOKEN).json(&spec()).send().await.unwrap();
    assert_eq!(error_of(r).await, field_id);
    // Bytes that do not decode to UTF-8 never reach the id parser.
    let r = get("/v1/placements/%FF", VIEWER_TOKEN).await.unwrap();
    assert_eq!(error_of(r).await, refusal(400, "invalid_path"));

    // Methods and routes.
    let r = app.http.post(app.url("/v1/placements/home_feed")).bearer_auth(MANAGER_TOKEN).send().await.unwrap();
    let allow = r.headers().get("allow").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("PUT") && allow.contains("DELETE"), "Allow: {allow}");
    assert_eq!(error_of(r).await, refusal(405, "method_not_allowed"));
    let r = app.http.delete(app.url("/v1/audit")).bearer_auth(MANAGER_TOKEN).send().await.unwrap();
    assert_eq!(error_of(r).await, refusal(405, "method_not_allowed"));
    let r = app.http.get(app.url("/v1/events")).send().await.unwrap();
    assert_eq!(error_of(r).await, refusal(405, "method_not_allowed"));
    assert_eq!(error_of(get("/v1/nothing-here", VIEWER_TOKEN).await.unwrap()).await, refusal(404, "not_found"));

    // Roles on a write: no token 401 (with the challenge), a viewer 403.
    let url = app.url("/v1/placements/home_feed");
    let r = app.http.put(&url).json(&spec()).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_of(r).await, refusal(401, "unauthorized"));
    let r = app.put_targets("home_feed", &spec(), VIEWER_TOKEN).await;
    assert_eq!(error_of(r).await, refusal(403, "forbidden"));
    let r = app.http.delete(&url).bearer_auth(VIEWER_TOKEN).send().await.unwrap();
    assert_eq!(error_of(r).await, refusal(403, "forbidden"));

    // If-Match: `*` needs an existing placement, a stale or foreign tag matches nothing,
    // a header that is not text is malformed; none of them writes.
    let put_if = |path: &str, tag: &'static [u8]| {
        let tag = reqwest::header::HeaderValue::from_bytes(tag).unwrap();
        app.http.put(app.url(path)).bearer_auth(MANAGER_TOKEN).header("If-Match", tag).json(&spec()).send()
    };
    let r = put_if("/v1/placements/missing", b"*").await.unwrap();
    assert_eq!(error_of(r).await, refusal(412, "precondition_failed"));
    assert_eq!(get("/v1/placements/missing", VIEWER_TOKEN).await.unwrap().status(), 404);
    let (_, before) = app.get_json("/v1/placements", VIEWER_TOKEN).await;
    let current = before["placements"][0]["etag"].as_str().unwrap().to_string();
    assert_eq!(current, "\"1\"");
    for stale in [&b"\"0\""[..], b"\"2\"", b"W/\"7\"", b"\"not-ours\""] {
        let (status, v) = json_error(put_if("/v1/placements/home_feed", stale).await.unwrap()).await;
        assert_eq!((status, &v["error"]["code"]), (412, &json!("precondition_failed")), "{stale:?}");
        assert!(v["error"]["message"].as_str().unwrap().contains(&current), "{v}");
    }
    let r = put_if("/v1/placements/home_feed", b"\"caf\xe9\"").await.unwrap();
    assert_eq!(error_of(r).await, refusal(400, "bad_if_match"));
    let r = put_if("/v1/placements/home_feed", b"\"1\"").await.unwrap();
    assert_eq!(r.status(), 200, "the current tag still matches after the refusals");

    // A body over the limit is refused before it is parsed.
    let big = vec![b' '; allot_origin::admin::MAX_SPEC_BYTES + 1];
    let r = app.http.put(&url).bearer_auth(MANAGER_TOKEN).body(big).send().await.unwrap();
    assert_eq!(error_of(r).await, refusal(413, "payload_too_large"));
}

#[tokio::test]
async fn readyz_follows_redis() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let (status, body) = app.get_json("/readyz", "").await;
    assert_eq!((status, body), (200, json!({"status": "ready"})));
    drop(redis);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(error_of(r).await, refusal(503, "not_ready"));
}

/// A list shows each placement's campaign count without reading its document: a page of
/// placements whose documents weigh a megabyte costs Redis a few kilobytes. Deleted
/// placements are skipped across reads, and a record stored before the count was kept
/// beside the document is still listed with its count.
#[tokio::test]
async fn a_list_reads_no_documents_and_pages_past_deleted_and_older_records() {
    let redis = RedisServer::start_with_aof();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let creative = json!({"img": "x".repeat(8 * 1024 - r#"{"img":""}"#.len())});
    let campaigns: Vec<Value> =
        (0..16).map(|i| json!({"id": format!("c{i}"), "rate": 0.01, "creative": creative.clone()})).collect();
    let doc = json!({ "campaigns": campaigns });
    for i in 0..20 {
        let r = app.put_targets(&format!("p{i:02}"), &doc, MANAGER_TOKEN).await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    for gone in ["p03", "p04"] {
        let r = app.http.delete(app.url(&format!("/v1/placements/{gone}"))).bearer_auth(MANAGER_TOKEN).send().await;
        assert_eq!(r.unwrap().status(), 204);
    }
    // A record as an origin wrote it before campaign counts were kept.
    let old = json!({"campaigns": [{"id": "A", "rate": 0.1}, {"id": "B", "rate": 0.2}]});
    redis::pipe()
        .hset_multiple(
            allot_core::contract::keys::PlacementKeys::of_raw("p20").targets(),
            &[("rev", "3"), ("spec", &old.to_string()), ("updated_at_ms", "1"), ("updated_by", "earlier")],
        )
        .hincr(allot_core::contract::keys::REGISTRY, "p20", 1)
        .query::<()>(&mut redis.conn())
        .unwrap();

    let bytes = redis.output_bytes();
    let (status, page) = app.get_json("/v1/placements?limit=10", VIEWER_TOKEN).await;
    let read = redis.output_bytes() - bytes;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["placements"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["p00", "p01", "p02", "p05", "p06", "p07", "p08", "p09", "p10", "p11"]);
    assert!(page["placements"].as_array().unwrap().iter().all(|p| p["campaigns"] == 16), "{page}");
    assert_eq!(page["next"], "p11");
    // Ten documents of 130 KB each: 1.3 MB if they were read.
    assert!(read < 16 * 1024, "a page of ten made Redis send {read} bytes");

    let (_, page) = app.get_json("/v1/placements?limit=10&after=p11", VIEWER_TOKEN).await;
    let list = page["placements"].as_array().unwrap();
    assert_eq!(list.len(), 9, "{page}");
    assert_eq!((list[8]["id"].as_str(), list[8]["campaigns"].as_u64()), (Some("p20"), Some(2)));
    assert_eq!((list[8]["etag"].as_str(), list[8]["updated_by"].as_str()), (Some("\"3\""), Some("earlier")));
    assert!(page["next"].is_null(), "{page}");

    // Redis gone: the list is refused as unavailable, in the one error format; back (its
    // data kept on disk), the list is whole again.
    let mut redis = redis;
    redis.stop();
    let r = app.http.get(app.url("/v1/placements")).bearer_auth(VIEWER_TOKEN).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 503);
    redis.restart();
    let listed = eventually(10, "the list after Redis restarted", async || {
        let (status, page) = app.get_json("/v1/placements?limit=100", VIEWER_TOKEN).await;
        (status == 200).then(|| page["placements"].as_array().unwrap().len())
    })
    .await;
    assert_eq!(listed, 19);
}
