//! `infra/` passes the real CloudFormation linters (cfn-lint's schema validation and
//! checkov's security policies), and its Glue table declares exactly the archive's columns.

use std::process::Command;

use allot_archive::{audit_rows, parquet_rows, plan_rows};

use allot_testkit::process::{repo_root, venv_bin};

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(venv_bin(bin)).args(args).current_dir(repo_root()).output().expect("run linter");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn cfn_lint_passes() {
    let (ok, out) = run("cfn-lint", &["infra/*.yaml"]);
    assert!(ok, "cfn-lint:\n{out}");
}

#[test]
fn checkov_passes() {
    let (ok, out) =
        run("checkov", &["-d", "infra", "--framework", "cloudformation", "--quiet", "--compact", "--skip-download"]);
    assert!(ok, "checkov:\n{out}");
    assert!(out.contains("Failed checks: 0"), "{out}");
    assert!(out.contains("Passed checks:"), "checkov scanned nothing: {out}");
}

#[test]
fn the_glue_tables_declare_the_archive_columns_in_order() {
    let template = std::fs::read_to_string(repo_root().join("infra/archive.yaml")).unwrap();
    let columns_of = |table: &str| -> Vec<String> {
        let start = template.find(&format!("        Name: {table}\n")).unwrap_or_else(|| panic!("table {table}"));
        let rest = &template[start..];
        let end = rest.find("\n\n").unwrap_or(rest.len());
        rest[..end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- { Name: "))
            .filter_map(|l| l.split(',').next())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(columns_of("events"), parquet_rows::COLUMNS);
    assert_eq!(columns_of("plans"), plan_rows::COLUMNS);
    assert_eq!(columns_of("audit"), audit_rows::COLUMNS);
    for table in ["plans", "audit"] {
        assert!(template.contains(&format!("${{ArchivePrefix}}{table}/dt=${{!dt}}/hour=${{!hour}}/")), "{table}");
    }
    for needle in ["projection.enabled: \"true\"", "storage.location.template", "BytesScannedCutoffPerQuery"] {
        assert!(template.contains(needle), "{needle}");
    }
}
