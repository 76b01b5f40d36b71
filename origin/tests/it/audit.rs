//! The audit trail outlives Redis: every admin change reaches the archive's `audit`
//! table exactly as the API lists it, and an entry that is not a change (written by
//! anyone holding the Redis password) is neither listed nor archived.

use allot_core::contract::keys;
use allot_testkit::duckdb;
use allot_testkit::origin::{MANAGER_TOKEN, OriginConfig, TestApp, VIEWER_TOKEN};
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use allot_testkit::s3::S3Server;
use serde_json::{Value, json};

fn spec(rate: f64) -> Value {
    json!({"campaigns": [{"id": "A", "rate": rate}]})
}

#[tokio::test]
async fn every_change_is_archived_to_the_audit_table_as_the_api_lists_it() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let cfg = OriginConfig::new()
        .redis(&redis.url())
        .archive(&s3)
        .merge("[archive]\nflush_max_age_secs = 1\n[control]\nenabled = false\n")
        .load(&[]);
    let app = TestApp::start(cfg).await;

    assert_eq!(app.put_targets("home_feed", &spec(0.5), MANAGER_TOKEN).await.status(), 201);
    // A forged entry in the feed: not a change, so neither listed nor archived.
    let _: String = redis::cmd("XADD")
        .arg(keys::AUDIT)
        .arg("*")
        .arg("who")
        .arg("mallory")
        .arg("action")
        .arg("grant")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(app.put_targets("home_feed", &spec(0.4), MANAGER_TOKEN).await.status(), 200);
    let r = app.http.delete(app.url("/v1/placements/home_feed")).bearer_auth(MANAGER_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.put_targets("search", &spec(0.2), MANAGER_TOKEN).await.status(), 201);

    let (status, page) = app.get_json("/v1/audit", VIEWER_TOKEN).await;
    assert_eq!(status, 200);
    let listed: Vec<Value> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| json!([e["placement"], e["action"], e["who"], e["rev"], e["at_ms"], e["before"], e["after"]]))
        .collect();
    let expected_actions: Vec<&str> = listed.iter().map(|e| e[1].as_str().unwrap()).collect();
    assert_eq!(expected_actions, ["put", "put", "delete", "put"], "the forged entry is not listed: {listed:?}");
    assert_eq!(listed.iter().map(|e| e[3].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 1]);

    let glob = format!("read_parquet('{}/audit/*/*/*.parquet', hive_partitioning = true)", s3.bucket_dir().display());
    let sql = format!(
        "SELECT placement, action, who, rev, epoch_ms(change_time), targets_before, targets_after \
         FROM {glob} ORDER BY change_time, placement, rev"
    );
    let rows = eventually(30, "the audit feed archived", async || {
        duckdb::try_query(&sql).ok().filter(|rows| rows.len() >= listed.len())
    })
    .await;
    let archived: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            // The archive keeps the targets as the JSON text the API took.
            let doc = |v: &Value| v.as_str().map_or(Value::Null, |s| serde_json::from_str(s).unwrap());
            json!([r[0], r[1], r[2], r[3], r[4], doc(&r[5]), doc(&r[6])])
        })
        .collect();
    assert_eq!(archived, listed, "the archive holds each change once, as the API lists it");
    let text = app.metrics_text().await;
    assert!(text.contains("allot_archive_malformed_entries_total{dataset=\"audit\"} 1"), "{text}");
}

/// A viewer asking for a thousand entries of the largest documents gets a page of a
/// few megabytes and a cursor, not every document at once; paging still lists every
/// change once, newest first.
#[tokio::test]
async fn a_page_of_large_documents_is_bounded_by_bytes_and_paging_lists_each_change_once() {
    let redis = RedisServer::start();
    let app = TestApp::start(allot_testkit::origin::config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let large = |version: usize| {
        let creative = "x".repeat(8_000);
        let campaigns: Vec<Value> = (0..64)
            .map(|i| json!({"id": format!("c{i:02}"), "rate": 0.01, "creative": {"t": creative, "v": version}}))
            .collect();
        json!({ "campaigns": campaigns })
    };
    for version in 0..8 {
        let code = app.put_targets("home_feed", &large(version), MANAGER_TOKEN).await.status();
        assert!(code.is_success(), "{code}");
    }
    let (mut listed, mut before, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let query = before.as_ref().map_or(String::new(), |b| format!("&before={b}"));
        let r = app.http.get(app.url(&format!("/v1/audit?limit=1000{query}"))).bearer_auth(VIEWER_TOKEN).send().await;
        let body = r.unwrap().text().await.unwrap();
        assert!(body.len() < 7 << 20, "a page of {} bytes", body.len());
        let page: Value = serde_json::from_str(&body).unwrap();
        pages += 1;
        listed.extend(page["entries"].as_array().unwrap().iter().map(|e| e["rev"].as_u64().unwrap()));
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(listed, (1..=8).rev().collect::<Vec<u64>>(), "each change once, newest first");
    assert!(pages >= 2, "8 changes of about a megabyte each fit no 4 MiB page");
}
