//! The Athena path against moto_server: StartQueryExecution, polling through QUEUED and
//! RUNNING to SUCCEEDED, paged GetQueryResults, a failed and a cancelled query. moto runs no SQL;
//! each query's rows are seeded through its control API, as Athena would return them
//! (header row first, a NULL as a datum without a value).

use std::process::Command;
use std::time::Duration;

use allot_archive::{ArchiveConfig, AthenaConfig};
use allot_report::ReportError;
use allot_report::athena;
use allot_testkit::moto::Moto;
use serde_json::{Value, json};

fn config(moto: &Moto, page_size: i32) -> ArchiveConfig {
    let mut cfg = ArchiveConfig::new("archive");
    cfg.access_key_id = Some("AKIDMOTO".into());
    cfg.secret_access_key = Some("moto-secret".into());
    cfg.athena = Some(AthenaConfig {
        endpoint: Some(moto.endpoint()),
        region: None,
        workgroup: "allot".into(),
        output_location: Some("s3://allot-athena-results/reports/".into()),
        database: "allot".into(),
        poll_initial_ms: 10,
        poll_max_ms: 40,
        query_timeout_secs: 60,
        page_size,
    });
    cfg
}

fn datum(v: Option<&str>) -> Value {
    v.map_or(json!({}), |v| json!({ "VarCharValue": v }))
}

/// Queues one query's result in moto: a header row, then `rows`.
fn seed(moto: &Moto, columns: &[(&str, &str)], rows: &[Vec<Option<&str>>]) {
    let header = json!({ "Data": columns.iter().map(|(n, _)| datum(Some(n))).collect::<Vec<_>>() });
    let mut all = vec![header];
    all.extend(rows.iter().map(|r| json!({ "Data": r.iter().map(|v| datum(*v)).collect::<Vec<_>>() })));
    let info: Vec<Value> = columns
        .iter()
        .map(|(n, t)| json!({"Name": n, "Label": n, "Type": t, "Nullable": "UNKNOWN", "CaseSensitive": false}))
        .collect();
    let body = json!({
        "account_id": "123456789012", "region": "us-east-1",
        "results": [{ "rows": all, "column_info": info }],
    });
    assert_eq!(moto.post("/moto-api/static/athena/query-results", &body), 201);
}

/// The workgroup `infra/archive.yaml` creates.
async fn create_workgroup(moto: &Moto) {
    client(moto).create_work_group().name("allot").send().await.unwrap();
}

/// Every query stays QUEUED for two polls, then RUNNING for two, then SUCCEEDED.
fn slow_queries(moto: &Moto, times: u32) {
    let body = json!({
        "model_name": "athena::execution",
        "transition": { "progression": "manual", "times": times },
    });
    assert_eq!(moto.post("/moto-api/state-manager/set-transition", &body), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_is_polled_to_success_and_its_results_paged() {
    let moto = Moto::start();
    create_workgroup(&moto).await;
    slow_queries(&moto, 2);
    let rows: Vec<Vec<Option<String>>> = (0..20)
        .map(|i| {
            vec![Some(format!("p{i:02}")), Some(i.to_string()), if i == 3 { None } else { Some(format!("{}.5", i)) }]
        })
        .collect();
    let borrowed: Vec<Vec<Option<&str>>> = rows.iter().map(|r| r.iter().map(|v| v.as_deref()).collect()).collect();
    seed(&moto, &[("placement", "varchar"), ("events", "bigint"), ("share", "double")], &borrowed);

    let outcome = athena::execute(&config(&moto, 6), "SELECT placement, events, share FROM events").await.unwrap();
    assert_eq!(outcome.states.first().map(String::as_str), Some("QUEUED"));
    assert!(outcome.states.iter().any(|s| s == "RUNNING"), "{:?}", outcome.states);
    assert_eq!(outcome.states.last().map(String::as_str), Some("SUCCEEDED"));
    assert!(outcome.states.len() >= 3);
    // 21 rows (header + 20) in pages of 6.
    assert_eq!(outcome.pages, 4);
    let t = outcome.table;
    assert_eq!(t.columns.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["placement", "events", "share"]);
    assert_eq!(t.rows, rows, "header dropped, every page collected, NULL kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_command_runs_on_athena() {
    let moto = Moto::start();
    create_workgroup(&moto).await;
    slow_queries(&moto, 1);
    seed(
        &moto,
        &[
            ("placement", "varchar"),
            ("day", "varchar"),
            ("campaign", "varchar"),
            ("samples", "bigint"),
            ("share", "double"),
        ],
        &[
            vec![Some("home_feed"), Some("2026-11-25"), Some("A"), Some("812"), Some("0.4975")],
            vec![Some("home_feed"), Some("2026-11-25"), Some("B"), Some("497"), Some("0.3012")],
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("archive.json");
    let cfg = json!({
        "bucket": "archive", "access_key_id": "AKIDMOTO", "secret_access_key": "moto-secret",
        "athena": { "endpoint": moto.endpoint(), "workgroup": "allot", "poll_initial_ms": 10, "poll_max_ms": 50 },
    });
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_allot-report"))
        .args(["delivery", "--from", "2026-11-25", "--to", "2026-11-25", "--engine", "athena", "--format", "json"])
        .arg("--config")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows,
        json!([
            {"placement": "home_feed", "day": "2026-11-25", "campaign": "A", "samples": 812, "share": 0.4975},
            {"placement": "home_feed", "day": "2026-11-25", "campaign": "B", "samples": 497, "share": 0.3012},
        ])
    );
}

fn client(moto: &Moto) -> aws_sdk_athena::Client {
    let creds = aws_sdk_athena::config::Credentials::new("AKIDMOTO", "moto-secret", None, None, "test");
    let conf = aws_sdk_athena::Config::builder()
        .behavior_version(aws_sdk_athena::config::BehaviorVersion::latest())
        .region(aws_sdk_athena::config::Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
        .credentials_provider(creds)
        .build();
    aws_sdk_athena::Client::from_conf(conf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_query_is_reported() {
    let moto = Moto::start();
    slow_queries(&moto, 1_000_000);
    let cfg = config(&moto, 1000);
    create_workgroup(&moto).await;
    let client = client(&moto);
    let query = tokio::spawn({
        let cfg = cfg.clone();
        async move { athena::execute(&cfg, "SELECT 1").await }
    });
    // Find the running query and cancel it, as an operator would in the console.
    let id = loop {
        let list = client.list_query_executions().work_group("allot").send().await.unwrap();
        if let Some(id) = list.query_execution_ids().first() {
            break id.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client.stop_query_execution().query_execution_id(&id).send().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), query).await.unwrap().unwrap().unwrap_err();
    match &err {
        ReportError::QueryFailed { query_id, state, .. } => {
            assert_eq!((query_id.as_str(), state.as_str()), (id.as_str(), "CANCELLED"));
        }
        other => panic!("expected a failed query, got {other:?}"),
    }
    assert!(err.to_string().contains("CANCELLED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_query_is_reported_with_athenas_reason() {
    let moto = Moto::start();
    create_workgroup(&moto).await;
    let cfg = config(&moto, 1000);
    let err = athena::execute(&cfg, "SELECT * FROM missing_table").await.unwrap_err();
    match &err {
        ReportError::QueryFailed { state, reason, .. } => {
            assert_eq!(state, "FAILED");
            assert!(reason.starts_with("TABLE_NOT_FOUND"), "{reason}");
        }
        other => panic!("expected a failed query, got {other:?}"),
    }
    assert!(err.to_string().contains("FAILED: TABLE_NOT_FOUND"), "{err}");
}
