//! The OpenAPI document is the contract: schemathesis generates requests from it (valid
//! ones, and ones the schema rules out) against the real binary, and every answer must
//! be in the document: no server error, every body matching its schema, every status
//! declared, nothing the schema forbids accepted, a deleted placement gone. The checks
//! and the statuses a valid request may rightly get are in `origin/tests/schemathesis.toml`.

use std::process::Command;

use allot_testkit::origin::{MANAGER_TOKEN, OriginProcess};
use allot_testkit::process::{repo_root, schemathesis};
use allot_testkit::redis::RedisServer;
use allot_testkit::scenario;

/// Fixed, so a failure in CI replays here; `ALLOT_SCHEMATHESIS_SEED` explores others.
const SEED: &str = "20261204";

#[tokio::test]
async fn the_origin_answers_as_its_openapi_document_says() {
    let redis = RedisServer::start();
    let origin = OriginProcess::start(&redis, "", &[]);
    origin.wait_ready(30).await;
    // Something to find: a placement with targets, so reads reach past the 404.
    let put = origin.put_targets("home_feed", &scenario::home_feed(), MANAGER_TOKEN).await;
    assert_eq!(put.status(), 201);

    let base = origin.url("");
    let seed = std::env::var("ALLOT_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    // Its cache (`.schemathesis/`) goes to a directory of its own, not the checkout.
    let workdir = tempfile::tempdir().unwrap();
    let cwd = workdir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis())
            .current_dir(cwd)
            .arg("--config-file")
            .arg(repo_root().join("origin/tests/schemathesis.toml"))
            .args(["run", &format!("{base}/openapi.json"), "--url", &base, "--seed", &seed])
            .args(["--max-examples", "40", "--no-color"])
            .args(["-H", &format!("Authorization: Bearer {MANAGER_TOKEN}")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found the origin off its contract:\n{report}");
    // It ran: every operation of the document was tested, with generated cases.
    let summary = report.lines().find(|l| l.contains(" generated, ")).unwrap_or_else(|| panic!("{report}"));
    let generated: u64 = summary.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(generated >= 200, "{summary}");
    let operations = report.lines().find(|l| l.trim_start().starts_with("Operations:")).unwrap_or_default();
    let counts: Vec<u64> = operations.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(counts.len() == 2 && counts[0] == counts[1] && counts[0] >= 12, "not every operation was tested: {report}");
}
