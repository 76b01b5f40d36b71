//! The unit-cost measurement on real processes: a short run in CI whose figures must be
//! sane, and the full run (ignored; `scripts/measure-unit-costs.sh`) that writes
//! `docs/capacity/unit-costs.json`.

use std::collections::BTreeMap;

use allot_capacity::costs::{Machine, SCHEMA, UnitCosts};
use allot_capacity::run::{Options, measure};
use allot_testkit::process::repo_root;

fn short() -> Options {
    Options {
        placements: 3,
        campaigns: 8,
        period_ms: 1000,
        samples: 150.0,
        requests_per_window: 15_000.0,
        warmup_windows: 5,
        phase_windows: 2,
        control_windows: 6,
        flush_max_age_secs: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_measures_sane_unit_costs() {
    let costs = measure(short()).await.expect("the measurement runs");
    costs.check_sane().unwrap_or_else(|e| panic!("{e:#}\n{costs:#?}"));
    // Single-event bodies cost a stream entry, a replay memory and a dedupe marker
    // each; a one-placement batch of 100 shares them.
    let per_event = |shape: &str| costs.commands[shape].per_event();
    assert!(per_event("batch") < per_event("single") / 3.0, "{:#?}", costs.commands);
    // Mixed bodies append an entry per placement they carry. (Their commands in all
    // are not compared with the batch phase's: a phase whose posting straddles more
    // one-second windows writes more window hashes, which outweighs the entries.) Late
    // deltas would add commands of their own, so the two phases must have had none (a
    // few dozen bodies each, posted at a window's start). The single phase posts
    // thousands of bodies a window, and a loaded machine applies some late: they only
    // add to its cost, which the first check bounds from below.
    let entries_per_event = |shape: &str| {
        let c = &costs.commands[shape];
        c.entries as f64 / c.events.max(1) as f64
    };
    assert!(entries_per_event("mixed") > 2.0 * entries_per_event("batch"), "{:#?}", costs.commands);
    for shape in ["batch", "mixed"] {
        assert_eq!(costs.commands[shape].late_events, 0, "{shape}: {:#?}", costs.commands);
    }
    assert_eq!(costs.commands["single"].entries, costs.commands["single"].events);
    // A window hash per placement and window, a few live at once.
    let w = &costs.memory.classes["w"];
    assert!(w.keys >= 3 && w.bytes / w.keys > 200, "{w:?}");
    assert!(costs.kv.target_change_ms < 5_000, "{:?}", costs.kv);
}

/// The full measurement: 8 and 64 campaigns. Takes several minutes; writes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "several minutes: scripts/measure-unit-costs.sh"]
async fn measure_unit_costs() {
    let start_load = Machine::load_average();
    let mut runs = BTreeMap::new();
    for campaigns in [8, 64] {
        let opts = Options {
            placements: 6,
            campaigns,
            period_ms: 1000,
            samples: 300.0,
            requests_per_window: 30_000.0,
            warmup_windows: 6,
            phase_windows: 2,
            control_windows: 20,
            flush_max_age_secs: 3,
        };
        let costs = measure(opts).await.expect("the measurement runs");
        costs.check_sane().unwrap_or_else(|e| panic!("{campaigns} campaigns: {e:#}\n{costs:#?}"));
        runs.insert(campaigns.to_string(), costs);
        // Written after every run, so a long measurement keeps what it has.
        write(&start_load, &runs);
    }
}

fn write(start_load: &str, runs: &BTreeMap<String, allot_capacity::costs::RunCosts>) {
    let date = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().expect("date");
    let file = UnitCosts {
        schema: SCHEMA,
        measured_at: String::from_utf8_lossy(&date.stdout).trim().to_string(),
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average_start: start_load.to_string(),
            load_average_end: Machine::load_average(),
        },
        command: "scripts/measure-unit-costs.sh".into(),
        build: if cfg!(debug_assertions) { "debug" } else { "release" }.into(),
        runs: runs.clone(),
    };
    let path = repo_root().join("docs/capacity/unit-costs.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file).expect("JSON") + "\n").expect("write the file");
    println!("wrote {}", path.display());
}
