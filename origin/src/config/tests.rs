use std::collections::HashMap;

use secrecy::ExposeSecret;

use super::*;

const MIN: &str = r#"
[ingest]
keys = ["0123456789abcdef-key"]
"#;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Secrets of one's own, for the sample's published ones.
fn own_secrets() -> HashMap<String, String> {
    env(&[
        ("ALLOT_INGEST_KEYS", "my-own-ingest-key-0123456789"),
        ("ALLOT_PUBLISH_WORKER_KEYS", "my-own-push-key-0123456789"),
        ("ALLOT_ADMIN_TOKENS", &format!("ops:manager:{}", "b".repeat(64))),
    ])
}

#[test]
fn the_sample_file_parses_with_secrets_of_ones_own() {
    let c = Config::from_sources(env::SAMPLE, &own_secrets()).unwrap();
    assert_eq!(c.publish.kind, PublishKind::Worker);
    assert_eq!(c.admin.tokens[0].role, Role::Manager);
    assert_eq!(c.control.recent_windows, 5);
    assert!(c.archive.is_none(), "the archive is commented out");
}

#[test]
fn the_samples_published_secrets_are_refused_naming_where_they_came_from() {
    let err = Config::from_named_sources(env::SAMPLE, "allot.toml", &HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("ingest.keys") && err.contains("published sample") && err.contains("allot.toml"), "{err}");
    for (var, value, field) in [
        ("ALLOT_INGEST_KEYS", "dev-ingest-key-not-for-production", "ingest.keys"),
        ("ALLOT_PUBLISH_WORKER_KEYS", "dev-push-key-not-for-production", "publish.worker.keys"),
        (
            "ALLOT_ADMIN_TOKENS",
            "ops:manager:3983202afa4411cda7cafc94a18aa1f6f620cfda5e9b0ab52c0f0d53a6be4315",
            "admin.tokens",
        ),
    ] {
        let mut vars = own_secrets();
        vars.insert(var.into(), value.into());
        let err = Config::from_named_sources(env::SAMPLE, "allot.toml", &vars).unwrap_err().to_string();
        assert!(err.contains(field) && err.contains("published sample") && err.contains(var), "{err}");
    }
}

/// Every key the sample documents, commented out or not, is a key of the config: the
/// sample with all of them set parses.
#[test]
fn every_documented_key_is_a_setting() {
    let all = env::uncomment(env::SAMPLE);
    let c = Config::from_sources(&all, &own_secrets()).unwrap_or_else(|e| panic!("{e}\n{all}"));
    let archive = c.archive.expect("the sample documents [archive]");
    assert_eq!(archive.bucket, "my-allot-archive");
    assert_eq!(archive.athena.expect("and [archive.athena]").workgroup, "allot");
    assert!(c.publish.cloudflare.is_some());
    assert!(env::settings().len() > 70, "{:?}", env::settings().keys());
}

/// The fields serde expects in the table at `section` ("" for the top level): the
/// unknown-field error of a probe lists them.
fn fields_of(section: &str) -> Vec<String> {
    let probe = if section.is_empty() { "zz_probe = 1".to_string() } else { format!("[{section}]\nzz_probe = 1") };
    let err = Config::from_sources(&probe, &HashMap::new()).unwrap_err().to_string();
    let expected = err.split_once("expected").unwrap_or_else(|| panic!("{section}: {err}")).1;
    // The list ends with its line; the next one names the table ("in `admin`").
    let expected = expected.lines().next().unwrap_or_default();
    expected.split('`').skip(1).step_by(2).map(String::from).collect()
}

/// And every key of the config is documented: no setting is left out of the sample,
/// hence out of the environment.
#[test]
fn every_setting_is_documented() {
    let paths: Vec<&str> = env::settings().values().map(|s| s.path.as_str()).collect();
    let mut sections: Vec<String> = vec![String::new()];
    for path in &paths {
        if let Some((section, _)) = path.rsplit_once('.') {
            sections.push(section.to_string());
        }
    }
    sections.sort();
    sections.dedup();
    for section in &sections {
        let prefix = if section.is_empty() { String::new() } else { format!("{section}.") };
        for field in fields_of(section) {
            let path = format!("{prefix}{field}");
            let documented = paths.iter().any(|p| *p == path || p.starts_with(&format!("{path}.")));
            // Test hooks are tables, or exist only in builds that have them.
            let hook = field == "failpoint";
            assert!(documented || hook, "{path} is not in allot.example.toml, so no variable sets it");
        }
    }
}

#[test]
fn variables_follow_the_rule_and_typos_are_refused() {
    let s = env::settings();
    assert_eq!(s["ALLOT_ARCHIVE_FLUSH_MAX_AGE_SECS"].path, "archive.flush_max_age_secs");
    assert_eq!(s["ALLOT_PUBLISH_CLOUDFLARE_API_TOKEN"].path, "publish.cloudflare.api_token");
    assert_eq!(s["ALLOT_ARCHIVE_ATHENA_PAGE_SIZE"].kind, env::Kind::Int);
    assert_eq!(s["ALLOT_ADMIN_TOKENS"].kind, env::Kind::Tokens);
    let file = format!("{MIN}\n[archive]\nbucket = \"b\"");
    let c = Config::from_sources(&file, &env(&[("ALLOT_ARCHIVE_FLUSH_MAX_AGE_SECS", "7")])).unwrap();
    assert_eq!(c.archive.unwrap().flush_max_age_secs, 7);
    for typo in ["ALLOT_REDIS_URI", "ALLOT_ARCHIVE_BUKET", "ALLOT_LISTEN_ADDR", "ALLOT_CONTROL"] {
        let err = Config::from_sources(MIN, &env(&[(typo, "x")])).unwrap_err().to_string();
        assert!(err.contains(typo) && err.contains("not a setting"), "{err}");
    }
    // Not the origin's: the build scripts' and the tests' own variables.
    Config::from_sources(MIN, &env(&[("ALLOT_CACHE", "/tmp"), ("ALLOT_EDGE_STATE", "x")])).unwrap();
}

#[test]
fn defaults_fill_the_rest() {
    let c = Config::from_sources(MIN, &HashMap::new()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.control.period_ms, 60_000);
    assert_eq!(c.ingest.max_skew_secs, 60);
    assert_eq!(c.publish.kind, PublishKind::None);
    assert_eq!(c.metrics.campaign_series, 20_000);
}

#[test]
fn environment_overrides_the_file() {
    let c = Config::from_sources(
        MIN,
        &env(&[
            ("ALLOT_LISTEN", "127.0.0.1:0"),
            ("ALLOT_REDIS_URL", "redis://10.0.0.1:7000"),
            ("ALLOT_INGEST_KEYS", "aaaaaaaaaaaaaaaa1, bbbbbbbbbbbbbbbb2"),
            ("ALLOT_CONTROL_PERIOD_MS", "1500"),
            ("ALLOT_CONTROL_ENABLED", "false"),
            ("ALLOT_PUBLISH_KIND", "cloudflare"),
            ("ALLOT_PUBLISH_CLOUDFLARE_ACCOUNT_ID", "123"),
            ("ALLOT_PUBLISH_CLOUDFLARE_NAMESPACE_ID", "ns"),
            ("ALLOT_PUBLISH_CLOUDFLARE_API_TOKEN", "tok"),
            ("ALLOT_ADMIN_TOKENS", &format!("alice:viewer:{}", "a".repeat(64))),
            ("ALLOT_METRICS_CAMPAIGN_SERIES", "0"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.listen.port(), 0);
    assert_eq!(c.redis.url.expose_secret(), "redis://10.0.0.1:7000");
    assert_eq!(c.ingest_keys().len(), 2);
    assert_eq!(c.control.period_ms, 1500);
    assert!(!c.control.enabled);
    let cf = c.publish.cloudflare.as_ref().unwrap();
    assert_eq!(cf.account_id, "123", "a numeric-looking id stays a string");
    assert_eq!(cf.base_url, "https://api.cloudflare.com/client/v4");
    assert_eq!(c.admin.tokens[0].name, "alice");
    assert_eq!(c.metrics.campaign_series, 0);
}

/// The test hook is configurable only in builds that have it (the tests' build does).
#[cfg(feature = "failpoints")]
#[test]
fn the_failpoint_comes_from_the_file_or_the_environment() {
    assert_eq!(Config::from_sources(MIN, &HashMap::new()).unwrap().aggregate.failpoint, None);
    let c = Config::from_sources(MIN, &env(&[("ALLOT_AGGREGATE_FAILPOINT", "exit_after_apply")])).unwrap();
    assert_eq!(c.aggregate.failpoint, Some(Failpoint::ExitAfterApply));
    let file = format!("{MIN}\n[aggregate]\nfailpoint = \"exit_after_apply\"");
    assert_eq!(
        Config::from_sources(&file, &HashMap::new()).unwrap().aggregate.failpoint,
        Some(Failpoint::ExitAfterApply)
    );
    let err = Config::from_sources(MIN, &env(&[("ALLOT_AGGREGATE_FAILPOINT", "explode")])).unwrap_err();
    assert!(err.to_string().contains("explode"), "{err}");
}

/// Without the feature the key is unknown, so a production config naming it is refused
/// rather than silently ignored.
#[cfg(not(feature = "failpoints"))]
#[test]
fn production_builds_have_no_failpoint() {
    let file = format!("{MIN}\n[aggregate]\nfailpoint = \"exit_after_apply\"");
    let err = Config::from_sources(&file, &HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("failpoint"), "{err}");
    assert!(!env::settings().keys().any(|var| var.contains("FAILPOINT")));
}

/// `kind = "worker"` with a URL, plus `extra`.
fn worker_push(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut vars = vec![("ALLOT_PUBLISH_KIND", "worker"), ("ALLOT_PUBLISH_WORKER_URL", "http://127.0.0.1:1")];
    vars.extend_from_slice(extra);
    env(&vars)
}

#[test]
fn push_keys_are_their_own_and_rotate_in_pairs() {
    let keys = "push-key-new-0123456789, push-key-old-0123456789";
    let c = Config::from_sources(MIN, &worker_push(&[("ALLOT_PUBLISH_WORKER_KEYS", keys)])).unwrap();
    assert_eq!(c.publish.worker.as_ref().unwrap().keys.len(), 2);
    let ingest = c.ingest.keys[0].expose_secret().to_owned();
    let err = Config::from_sources(MIN, &worker_push(&[("ALLOT_PUBLISH_WORKER_KEYS", &ingest)])).unwrap_err();
    assert!(err.to_string().contains("must differ from every ingest key"), "{err}");
}

#[test]
fn rejects_bad_values_naming_them() {
    let cases: Vec<(String, HashMap<String, String>, &str)> = vec![
        ("[ingest]\nkeys = [\"short\"]".into(), HashMap::new(), "ingest.keys"),
        ("[ingest]\nkeys = []".into(), HashMap::new(), "ingest.keys"),
        (MIN.into(), env(&[("ALLOT_CONTROL_PERIOD_MS", "soon")]), "ALLOT_CONTROL_PERIOD_MS"),
        (MIN.into(), env(&[("ALLOT_PUBLISH_KIND", "worker")]), "publish.worker"),
        (MIN.into(), env(&[("ALLOT_ADMIN_TOKENS", "alice:viewer")]), "ALLOT_ADMIN_TOKENS"),
        (MIN.into(), env(&[("ALLOT_ADMIN_TOKENS", "alice:viewer:abc")]), "admin.tokens"),
        (MIN.into(), env(&[("ALLOT_ADMIN_TOKENS", &format!("a:root:{}", "a".repeat(64)))]), "root"),
        (format!("{MIN}\n[control]\nperiod_ms = 10"), HashMap::new(), "control.period_ms"),
        (MIN.into(), worker_push(&[]), "publish.worker.keys"),
        (MIN.into(), worker_push(&[("ALLOT_PUBLISH_WORKER_KEYS", "short")]), "publish.worker.keys"),
        (
            MIN.into(),
            worker_push(&[("ALLOT_PUBLISH_WORKER_KEYS", "p1p1p1p1p1p1p1p1p1,p2p2p2p2p2p2p2p2,p3p3p3p3p3p3p3p3p3")]),
            "one or two",
        ),
        (MIN.into(), env(&[("ALLOT_INGEST_CATALOGUE_REFRESH_MS", "0")]), "ingest.catalogue_refresh_ms"),
        (format!("{MIN}\n[control]\nmin_sample_rate = 1e-200"), HashMap::new(), "squared weights"),
        (format!("{MIN}\n[control]\nmin_sample_rate = 1e-10"), HashMap::new(), "squared weights"),
        (format!("{MIN}\nbogus = 1"), HashMap::new(), "bogus"),
        (format!("{MIN}\n[control]\nplatforms = [\"iOS\"]"), HashMap::new(), "control.platforms"),
        (MIN.into(), env(&[("ALLOT_CONTROL_PLATFORMS", "ios,a b")]), "control.platforms"),
        (MIN.into(), env(&[("ALLOT_CONTROL_MAX_SAMPLES_PER_WINDOW", "0")]), "control.max_samples_per_window"),
        (format!("{MIN}\n[archive]\nbucket = \"b\"\nplans_stream = \"other\""), HashMap::new(), "archive.plans_stream"),
        (format!("{MIN}\n[archive]\nbucket = \"b\"\nstream = \"other\""), HashMap::new(), "archive.stream"),
    ];
    for (file, env, expect) in cases {
        let err = Config::from_sources(&file, &env).unwrap_err().to_string();
        assert!(err.contains(expect), "{err} should mention {expect}");
    }
}

#[test]
fn secrets_are_not_printed() {
    let c = Config::from_sources(
        MIN,
        &env(&[("ALLOT_REDIS_URL", "redis://:hunter2-password@host"), ("ALLOT_PUBLISH_KIND", "none")]),
    )
    .unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("0123456789abcdef-key"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}
