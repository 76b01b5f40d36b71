//! `allot-origin check-config`, the real binary: a configuration the origin would refuse
//! is refused here, with the variable or file to blame, and nothing is started.

use std::process::Command;

use allot_testkit::origin::OriginConfig;
use allot_testkit::process::{repo_root, workspace_bin};

fn check(file: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(workspace_bin("allot-origin").unwrap())
        .args(["check-config", "--config"])
        .arg(file)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn check_config_names_what_it_refuses() {
    let file = std::env::temp_dir().join(format!("allot-check-config-{}.toml", std::process::id()));
    OriginConfig::new().write(&file).unwrap();
    let _cleanup = Remove(file.clone());

    let (ok, out) = check(&file, &[("ALLOT_CONTROL_PERIOD_MS", "5000")]);
    assert!(ok, "{out}");
    assert!(out.contains("control.period_ms from ALLOT_CONTROL_PERIOD_MS"), "{out}");

    let (ok, out) = check(&file, &[("ALLOT_CONTROL_PERIOD_MSS", "5000")]);
    assert!(!ok && out.contains("ALLOT_CONTROL_PERIOD_MSS") && out.contains("not a setting"), "{out}");

    let (ok, out) = check(&file, &[("ALLOT_INGEST_KEYS", "dev-ingest-key-not-for-production")]);
    assert!(!ok && out.contains("published sample") && out.contains("ALLOT_INGEST_KEYS"), "{out}");

    // The sample as shipped: its secrets are the world's.
    let (ok, out) = check(&repo_root().join("origin/allot.example.toml"), &[]);
    assert!(!ok && out.contains("published sample") && out.contains("allot.example.toml"), "{out}");

    let listed = Command::new(workspace_bin("allot-origin").unwrap()).args(["check-config", "--list-env"]).output();
    let listed = String::from_utf8(listed.unwrap().stdout).unwrap();
    for line in ["ALLOT_ARCHIVE_BUCKET", "archive.bucket", "ALLOT_HTTP_MAX_CONNECTIONS"] {
        assert!(listed.contains(line), "{listed}");
    }
}
