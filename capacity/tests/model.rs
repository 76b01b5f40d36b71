//! `scripts/capacity.py`, the capacity model: the doc's tables are its output, and it
//! refuses unit costs it cannot trust with a message saying why.

use std::process::{Command, Output};

use allot_testkit::process::repo_root;

fn script(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(repo_root().join("scripts/capacity.py"))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn costs() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("docs/capacity/unit-costs.json")).expect("the unit costs");
    serde_json::from_str(&text).expect("JSON")
}

/// Runs the script on `costs` written to a temporary file, with `args`.
fn with_costs(costs: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("unit-costs.json");
    std::fs::write(&path, costs).expect("write");
    let mut all = vec!["--costs", path.to_str().expect("a UTF-8 path")];
    all.extend_from_slice(args);
    script(&all)
}

#[test]
fn the_docs_tables_are_the_scripts_output() {
    let o = script(&["--check", repo_root().join("docs/capacity.md").to_str().expect("path")]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_hand_edited_table_is_caught() {
    let doc = std::fs::read_to_string(repo_root().join("docs/capacity.md")).expect("the doc");
    let marker = "| sampled allocations/s | ";
    let at = doc.find(marker).expect("the doc has the sampled allocations row") + marker.len();
    let edited = format!("{}9{}", &doc[..at], &doc[at..]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("capacity.md");
    std::fs::write(&path, edited).expect("write");
    let o = script(&["--check", path.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("differs"), "{}", stderr(&o));
}

#[test]
fn malformed_or_stale_unit_costs_are_refused_with_the_reason() {
    let good = costs();
    let mut cases: Vec<(String, &str)> = vec![("{not json".into(), "not JSON"), ("[1, 2]".into(), "not a JSON object")];
    let mut schema = good.clone();
    schema["schema"] = 99.into();
    cases.push((schema.to_string(), "schema 99"));
    let mut missing = good.clone();
    let run = missing["runs"].as_object_mut().and_then(|r| r.values_mut().next()).expect("a run");
    run.as_object_mut().expect("a run object").remove("control");
    cases.push((missing.to_string(), "missing field 'control.cpu_us_per_placement_round'"));
    let mut negative = good.clone();
    let run = negative["runs"].as_object_mut().and_then(|r| r.values_mut().next()).expect("a run");
    run["archive"]["bytes_per_row"] = (-1.0).into();
    cases.push((negative.to_string(), "'archive.bytes_per_row' is -1"));
    let mut empty_phase = good.clone();
    let run = empty_phase["runs"].as_object_mut().and_then(|r| r.values_mut().next()).expect("a run");
    run["commands"]["mixed"]["events"] = 0.into();
    cases.push((empty_phase.to_string(), "the mixed phase counted no event"));
    let mut future = good.clone();
    future["measured_at"] = "2999-01-01T00:00:00Z".into();
    cases.push((future.to_string(), "in the future"));
    let mut undated = good.clone();
    undated["measured_at"] = "yesterday".into();
    cases.push((undated.to_string(), "not a UTC time"));
    for (text, reason) in &cases {
        let o = with_costs(text, &[]);
        assert_eq!(o.status.code(), Some(2), "{reason}: {}", stderr(&o));
        assert!(stderr(&o).contains(reason), "expected {reason:?} in {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{reason}: printed tables anyway");
    }
    let mut old = good;
    old["measured_at"] = "2020-01-01T00:00:00Z".into();
    let o = with_costs(&old.to_string(), &["--max-age-days", "30"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("older than --max-age-days 30"), "{}", stderr(&o));
    assert!(with_costs(&old.to_string(), &[]).status.success(), "age is only checked when asked");
}

#[test]
fn the_flags_move_the_model() {
    let value = |args: &[&str], row: &str| -> f64 {
        let o = script(args);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = out.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no {row} in\n{out}"));
        let cell = line.rsplit('|').nth(1).expect("a value cell").trim();
        cell.split_whitespace().next().expect("a number").replace(',', "").parse().expect("a number")
    };
    let events = "| events/s to the origin";
    let base = value(&[], events);
    // A looser margin needs fewer samples; more placements in the long tail need more.
    assert!(value(&["--margin", "0.02"], events) < base * 0.8);
    assert!(value(&["--placements", "20000"], events) > base);
    // More requests at the same placements: more of them leave the census.
    let census = "| placements sampled at rate 1 (census)";
    assert!(value(&["--rps", "1e7"], census) < value(&[], census));
    let o = script(&["--campaigns", "7"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no run with 7 campaigns"), "{}", stderr(&o));
}
