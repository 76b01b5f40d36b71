//! Every report's SQL on the local engine over a generated archive with known answers,
//! computed independently: the delivery report against allot-core's own estimator (what
//! the status API shows), the others by counting in Rust. The `allot-report` binary is
//! run end to end over the same archive in a real S3 server.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use allot_archive::ArchiveConfig;
use allot_archive::parquet_rows::{self, ArchivedEvent};
use allot_archive::partition::{Day, Partition};
use allot_archive::report::{self, Engine, Format, ReportRequest};
use allot_archive::store::ArchiveStore;
use allot_archive::table::ResultTable;
use allot_core::estimate::{self, DeliveryBasis};
use allot_core::{EventKind, WindowStats};

use crate::support::{S3, S3Config, event};

const Z: f64 = 1.959964;
/// 2026-11-24T00:00:00Z.
const DAY0_MS: u64 = 1_795_478_400_000;

/// Two placements (home_feed reports impressions, search does not) over three days and
/// two hours a day, with the sample rate and plan version changing within hours.
fn dataset() -> Vec<ArchivedEvent> {
    let mut out = Vec::new();
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as f64 / (1u64 << 31) as f64
    };
    for day in 0..3u64 {
        for (placement, impressions) in [("home_feed", true), ("search", false)] {
            for hour in [10u64, 11] {
                for i in 0..120u64 {
                    let t = DAY0_MS + day * 86_400_000 + hour * 3_600_000 + i * 20_000;
                    let rate = if hour == 10 && i < 60 { 0.5 } else { 0.25 };
                    let version = if hour == 10 && i < 90 { 3 + day * 2 } else { 4 + day * 2 };
                    let u = next();
                    let (ad, eligible): (Option<&str>, &[&str]) = match u {
                        u if u < 0.45 => (Some("A"), &["A", "B"]),
                        u if u < 0.75 => (Some("B"), &["A", "B"]),
                        u if u < 0.85 => (Some("B"), &["B"]),
                        _ => (None, &["A", "B"]),
                    };
                    let id = format!("{placement}-{day}-{hour}-{i}");
                    let alloc = event(EventKind::Allocation, &id, placement, t, ad, eligible, version, rate);
                    out.push(ArchivedEvent { event: alloc.clone(), received_ms: t + 40 });
                    if impressions && ad.is_some() && next() < 0.8 {
                        let imp = event(EventKind::Impression, &id, placement, t + 900, ad, &[], version, rate);
                        out.push(ArchivedEvent { event: imp, received_ms: t + 950 });
                    }
                }
            }
        }
    }
    out
}

/// Writes the events as the archiver would: one object per hour partition.
fn write_dir(root: &Path, events: &[ArchivedEvent]) -> BTreeMap<String, bytes::Bytes> {
    let mut parts: BTreeMap<Partition, Vec<&ArchivedEvent>> = BTreeMap::new();
    for e in events {
        parts.entry(Partition::of_unix_ms(e.event.event_time_ms)).or_default().push(e);
    }
    let mut objects = BTreeMap::new();
    for (p, rows) in parts {
        let key = p.object_key("", "1-0".parse().unwrap(), "2-0".parse().unwrap());
        let body = parquet_rows::encode(&rows).unwrap();
        let path = root.join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &body).unwrap();
        objects.insert(key, body);
    }
    objects
}

fn day(s: &str) -> Day {
    s.parse().unwrap()
}

async fn run_local(name: &str, dir: &Path) -> ResultTable {
    let req = ReportRequest {
        name: name.into(),
        from: day("2026-11-24"),
        to: day("2026-11-25"),
        engine: Engine::Local,
        format: Format::Csv,
        archive_dir: Some(dir.to_path_buf()),
    };
    report::query(&req, &ArchiveConfig::new("unused")).await.unwrap()
}

fn num(t: &ResultTable, row: usize, col: &str) -> f64 {
    t.get(row, col).unwrap_or_else(|| panic!("{col} missing")).parse().unwrap()
}

/// Equal up to the SQL's rounding: counts (`est_*`) to 3 decimals, the rest to 6.
fn close(a: f64, b: f64, what: &str) {
    let tolerance = if what.starts_with("est_") { 6e-4 } else { 6e-7 };
    assert!((a - b).abs() <= tolerance, "{what}: {a} vs {b}");
}

fn in_range(e: &ArchivedEvent) -> bool {
    let d = Day::of_unix_ms(e.event.event_time_ms);
    d >= day("2026-11-24") && d <= day("2026-11-25")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_matches_the_core_estimator() {
    let events = dataset();
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &events);
    let t = run_local("delivery", dir.path()).await;

    let mut windows: BTreeMap<(String, String), WindowStats> = BTreeMap::new();
    for e in events.iter().filter(|e| in_range(e)) {
        let key = (e.event.placement.to_string(), Day::of_unix_ms(e.event.event_time_ms).to_string());
        windows.entry(key).or_default().fold(&e.event);
    }
    let mut expected = Vec::new();
    for ((placement, d), stats) in &windows {
        let basis = DeliveryBasis::of(stats);
        for (id, counts) in &stats.campaigns {
            expected.push((placement.clone(), d.clone(), id.clone(), basis, *counts, stats.clone()));
        }
    }
    assert_eq!(t.rows.len(), expected.len(), "{t:?}");
    assert_eq!(expected.len(), 8, "2 placements x 2 days x 2 campaigns");
    for (row, (placement, d, id, basis, counts, stats)) in expected.iter().enumerate() {
        assert_eq!(t.get(row, "placement"), Some(placement.as_str()));
        assert_eq!(t.get(row, "day"), Some(d.as_str()));
        assert_eq!(t.get(row, "campaign"), Some(id.as_str()));
        let e = estimate::share(stats, id, *basis, Z);
        let (basis_name, delivered) = match basis {
            DeliveryBasis::Impressions => ("impressions", counts.impressions.ht),
            DeliveryBasis::Allocations => ("allocations", counts.allocations.ht),
        };
        assert_eq!(t.get(row, "basis"), Some(basis_name));
        close(num(&t, row, "est_requests"), stats.requests.ht, "est_requests");
        close(num(&t, row, "est_delivered"), delivered, "est_delivered");
        close(num(&t, row, "est_impressions"), counts.impressions.ht, "est_impressions");
        assert_eq!(num(&t, row, "samples") as u64, e.samples);
        close(num(&t, row, "share"), e.share, "share");
        close(num(&t, row, "share_low"), e.low, "share_low");
        close(num(&t, row, "share_high"), e.high, "share_high");
        assert!(e.low < e.share && e.share < e.high);
        close(num(&t, row, "est_delivered_low"), e.low * stats.requests.ht, "est_delivered_low");
    }
    assert!(t.rows.iter().all(|r| r[1] != Some("2026-11-26".into())), "--to excludes later days");
    let basis: Vec<_> = (0..t.rows.len()).map(|r| t.get(r, "basis").unwrap().to_string()).collect();
    assert!(basis.contains(&"impressions".to_string()) && basis.contains(&"allocations".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_and_plan_versions_match_counts() {
    let events = dataset();
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &events);

    // sampling: per placement, day, hour.
    #[derive(Default)]
    struct Hour {
        events: u64,
        allocs: u64,
        imps: u64,
        est: f64,
        min: f64,
        max: f64,
    }
    let mut hours: BTreeMap<(String, String, String), Hour> = BTreeMap::new();
    let mut versions: BTreeMap<(String, String, String, u64), (u64, f64)> = BTreeMap::new();
    for e in events.iter().filter(|e| in_range(e)) {
        let p = Partition::of_unix_ms(e.event.event_time_ms);
        let key = (e.event.placement.to_string(), p.day.to_string(), format!("{:02}", p.hour));
        let h = hours.entry(key.clone()).or_insert(Hour { min: 1.0, ..Hour::default() });
        h.events += 1;
        h.min = h.min.min(e.event.sample_rate);
        h.max = h.max.max(e.event.sample_rate);
        match e.event.kind {
            EventKind::Allocation => {
                h.allocs += 1;
                h.est += e.event.weight();
                let v = versions.entry((key.0, key.1, key.2, e.event.plan_version)).or_default();
                v.0 += 1;
                v.1 += e.event.weight();
            }
            EventKind::Impression => h.imps += 1,
        }
    }
    let t = run_local("sampling", dir.path()).await;
    assert_eq!(t.rows.len(), hours.len());
    assert_eq!(hours.len(), 8);
    for (row, ((placement, d, hour), h)) in hours.iter().enumerate() {
        assert_eq!(
            (t.get(row, "placement"), t.get(row, "day"), t.get(row, "hour")),
            (Some(placement.as_str()), Some(d.as_str()), Some(hour.as_str()))
        );
        assert_eq!(num(&t, row, "events") as u64, h.events);
        assert_eq!(num(&t, row, "sampled_requests") as u64, h.allocs);
        assert_eq!(num(&t, row, "sampled_impressions") as u64, h.imps);
        close(num(&t, row, "est_requests"), h.est, "est_requests");
        close(num(&t, row, "min_rate"), h.min, "min_rate");
        close(num(&t, row, "max_rate"), h.max, "max_rate");
        close(num(&t, row, "effective_rate"), h.allocs as f64 / h.est, "effective_rate");
    }

    let t = run_local("plan_versions", dir.path()).await;
    assert_eq!(t.rows.len(), versions.len());
    for (row, ((placement, d, hour, v), (n, est))) in versions.iter().enumerate() {
        assert_eq!(t.get(row, "placement"), Some(placement.as_str()));
        assert_eq!((t.get(row, "day"), t.get(row, "hour")), (Some(d.as_str()), Some(hour.as_str())));
        assert_eq!(num(&t, row, "plan_version") as u64, *v);
        assert_eq!(num(&t, row, "sampled_requests") as u64, *n);
        close(num(&t, row, "est_requests"), *est, "est_requests");
        let total: f64 =
            versions.iter().filter(|(k, _)| (&k.0, &k.1, &k.2) == (placement, d, hour)).map(|(_, (_, e))| e).sum();
        close(num(&t, row, "request_share"), est / total, "request_share");
    }
    assert!(versions.len() > hours.len(), "some hours saw two plan versions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_command_runs_over_the_archive_in_s3() {
    let events = dataset();
    let dir = tempfile::tempdir().unwrap();
    let objects = write_dir(dir.path(), &events);
    let s3 = S3::start();
    let cfg = s3.config();
    let store = ArchiveStore::connect(&cfg).await;
    for (key, body) in &objects {
        store.put(&format!("{}{key}", store.prefix()), body.clone()).await.unwrap();
    }
    let cfg_path = dir.path().join("archive.json");
    let cfg_json = serde_json::json!({
        "endpoint": cfg.endpoint, "bucket": cfg.bucket, "prefix": cfg.prefix, "path_style": true,
        "access_key_id": cfg.access_key_id, "secret_access_key": crate::support::SECRET_KEY,
    });
    std::fs::write(&cfg_path, cfg_json.to_string()).unwrap();

    for name in report::names() {
        let out = Command::new(env!("CARGO_BIN_EXE_allot-report"))
            .args([name, "--from", "2026-11-24", "--to", "2026-11-25", "--engine", "local", "--format", "csv"])
            .arg("--config")
            .arg(&cfg_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let from_dir = run_local(name, dir.path()).await.render(Format::Csv);
        assert_eq!(String::from_utf8(out.stdout).unwrap(), from_dir, "{name}: S3 and directory agree");
        assert!(from_dir.lines().count() > 8, "{name}: {from_dir}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_allot-report"))
        .args(["delivery", "--from", "2026-11-25", "--to", "2026-11-25", "--engine", "local", "--format", "json"])
        .arg("--archive-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["day"] == "2026-11-25" && r["share"].is_f64() && r["samples"].is_u64()));

    let bad = Command::new(env!("CARGO_BIN_EXE_allot-report"))
        .args(["delivery", "--from", "2026-11-25", "--to", "2026-02-30", "--engine", "local"])
        .arg("--archive-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a date"), "{}", String::from_utf8_lossy(&bad.stderr));
}
