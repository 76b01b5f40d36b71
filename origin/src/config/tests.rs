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

#[test]
fn the_sample_file_parses() {
    let file = include_str!("../../allot.example.toml");
    let c = Config::from_sources(file, &HashMap::new()).unwrap();
    assert_eq!(c.publish.kind, PublishKind::Worker);
    assert_eq!(c.admin.tokens[0].role, Role::Manager);
    assert_eq!(c.control.recent_windows, 5);
}

#[test]
fn defaults_fill_the_rest() {
    let c = Config::from_sources(MIN, &HashMap::new()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.control.period_ms, 60_000);
    assert_eq!(c.ingest.max_skew_secs, 60);
    assert_eq!(c.publish.kind, PublishKind::None);
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
    assert!(!ENV_OVERRIDES.iter().any(|(var, _)| var.contains("FAILPOINT")));
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
        (format!("{MIN}\n[control]\nmin_sample_rate = 1e-200"), HashMap::new(), "squared weight"),
        (format!("{MIN}\nbogus = 1"), HashMap::new(), "bogus"),
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
