//! Every report's SQL on the local engine over a generated archive with known answers,
//! computed independently: the delivery report against allot-core's own estimator (what
//! the status API shows) and a traffic-weighted mean of the archived plans' targets, the
//! others by counting in Rust. The `allot-report` binary is
//! run end to end over the same archive in a real S3 server.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use allot_archive::ArchiveConfig;
use allot_archive::parquet_rows::{self, ArchivedEvent};
use allot_archive::partition::{Day, Partition};
use allot_archive::plan_rows::{self, PlanRow};
use allot_archive::store::ArchiveStore;
use allot_core::contract::{PlanSnapshot, SnapshotCampaign};
use allot_core::estimate::{self, DeliveryBasis};
use allot_core::{CampaignId, EventKind, PlacementId, WindowStats};
use allot_report::report::{self, Engine, Format, ReportRequest};
use allot_report::table::ResultTable;
use allot_testkit::events::event;
use allot_testkit::s3::{self, S3Server};

const Z: f64 = 1.959964;
/// 2026-11-24T00:00:00Z.
const DAY0_MS: u64 = 1_795_478_400_000;

/// Two placements (home_feed reports impressions, search does not) over three days and
/// two hours a day, with the sample rate and plan version changing within hours. Requests
/// come from four platforms whose ads render differently (web 60 %, iOS 95 %, Android
/// 85 %, TV 70 %) and whose apps report impressions differently (on home_feed, none from
/// apps with 40 % of the web's requests and, but on the second day, 80 % of TV's): web
/// and iOS are read by their own render ratios; Android and TV, with few reporting
/// allocations (and TV few reporting apps but on the second day), lean on the
/// campaign's ratio as far as they are thin.
/// B's impressions of the first day's first hour carry no platform (tokens issued
/// before tokens carried it), so B is read by one ratio that day.
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
                    let (platform, silent, renders) = match i % 8 {
                        0 | 1 | 4 | 5 => ("web", (i / 4) % 5 < 2, 0.6),
                        2 | 6 => ("ios", false, 0.95),
                        3 => ("android", false, 0.85),
                        _ => ("tv", day != 1 && (i / 8) % 5 < 4, 0.7),
                    };
                    let mut alloc = event(EventKind::Allocation, &id, placement, t, ad, eligible, version, rate);
                    alloc.platform = Some(platform.to_string());
                    alloc.unreported = impressions && silent;
                    out.push(ArchivedEvent { event: alloc.clone(), received_ms: t + 40 });
                    if impressions && !alloc.unreported && ad.is_some() && next() < renders {
                        let mut imp = event(EventKind::Impression, &id, placement, t + 900, ad, &[], version, rate);
                        // B's first-hour impressions of the first day come with tokens
                        // that did not carry the platform.
                        let old_token = day == 0 && hour == 10 && ad == Some("B");
                        imp.platform = (!old_token).then(|| platform.to_string());
                        out.push(ArchivedEvent { event: imp, received_ms: t + 950 });
                    }
                }
            }
        }
    }
    out
}

/// Whether plan `version` of `placement` is in the archive: all but search's version 6.
fn archived(placement: &str, version: u64) -> bool {
    (placement, version) != ("search", 6)
}

/// Campaign `c`'s target in plan `version` of `placement`, if that plan was archived and
/// has it. A's target moves with every version, so a day that saw two versions has a
/// traffic-weighted target; C has a target from version 5 on but is never served;
/// home_feed's version 6 has no campaigns at all (its targets were withdrawn).
fn target(placement: &str, version: u64, c: &str) -> Option<f64> {
    match (placement, version, c) {
        _ if !archived(placement, version) => None,
        ("home_feed", 6, _) => None,
        (_, v, "A") => Some(0.3 + 0.02 * v as f64),
        (_, _, "B") => Some(0.3),
        ("home_feed", v, "C") if v >= 5 => Some(0.2),
        _ => None,
    }
}

/// The plan snapshots the origin would have logged for `dataset()`'s versions, each
/// issued at the start of its day; home_feed's version 4 is logged twice (a retried
/// publish).
fn plans() -> Vec<PlanRow> {
    let mut out = Vec::new();
    for placement in ["home_feed", "search"] {
        for version in 3..=8u64 {
            let campaigns: Vec<SnapshotCampaign> = ["A", "B", "C"]
                .into_iter()
                .filter_map(|c| {
                    Some(SnapshotCampaign {
                        id: CampaignId::parse(c).unwrap(),
                        target_rate: target(placement, version, c)?,
                        weight: 1.0,
                        feasible: true,
                        max_share: None,
                    })
                })
                .collect();
            if !archived(placement, version) {
                continue;
            }
            let snapshot = PlanSnapshot {
                placement: PlacementId::parse(placement).unwrap(),
                version,
                issued_at_ms: DAY0_MS + (version - 3) / 2 * 86_400_000 + 3_600_000,
                sample_rate: 0.25,
                targets_rev: version,
                campaigns,
            };
            let times = if (placement, version) == ("home_feed", 4) { 2 } else { 1 };
            for _ in 0..times {
                out.extend(plan_rows::rows(snapshot.clone()));
            }
        }
    }
    out
}

/// Writes the events and `plans()` as the archiver would: one object per hour partition.
fn write_dir(root: &Path, events: &[ArchivedEvent]) -> BTreeMap<String, bytes::Bytes> {
    let (first, last) = ("1-0".parse().unwrap(), "2-0".parse().unwrap());
    let mut objects = BTreeMap::new();
    let mut parts: BTreeMap<Partition, Vec<&ArchivedEvent>> = BTreeMap::new();
    for e in events {
        parts.entry(Partition::of_unix_ms(e.event.event_time_ms)).or_default().push(e);
    }
    for (p, rows) in parts {
        objects.insert(p.object_key("", "events", first, last), parquet_rows::encode(&rows).unwrap());
    }
    let plans = plans();
    let mut parts: BTreeMap<Partition, Vec<&PlanRow>> = BTreeMap::new();
    for r in &plans {
        parts.entry(Partition::of_unix_ms(r.issued_ms)).or_default().push(r);
    }
    for (p, rows) in parts {
        objects.insert(p.object_key("", "plans", first, last), plan_rows::encode(&rows).unwrap());
    }
    for (key, body) in &objects {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
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
async fn delivery_matches_the_core_estimator_and_the_targets_in_force() {
    let events = dataset();
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &events);
    let t = run_local("delivery", dir.path()).await;

    let mut windows: BTreeMap<(String, String), WindowStats> = BTreeMap::new();
    // Per placement and day: Σ w·target per campaign, and Σ w over archived versions.
    let mut weighted: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let mut covered: BTreeMap<(String, String), f64> = BTreeMap::new();
    for e in events.iter().filter(|e| in_range(e)) {
        let (placement, version) = (e.event.placement.as_str(), e.event.plan_version);
        let key = (placement.to_string(), Day::of_unix_ms(e.event.event_time_ms).to_string());
        windows.entry(key.clone()).or_default().fold(&e.event);
        if e.event.kind != EventKind::Allocation || !archived(placement, version) {
            continue;
        }
        *covered.entry(key.clone()).or_default() += e.event.weight();
        for c in ["A", "B", "C"] {
            if let Some(rate) = target(placement, version, c) {
                *weighted.entry((key.0.clone(), key.1.clone(), c.to_string())).or_default() += e.event.weight() * rate;
            }
        }
    }
    let mut expected = Vec::new();
    for ((placement, d), stats) in &windows {
        let mut ids: Vec<CampaignId> = stats.campaigns.keys().cloned().collect();
        ids.extend(
            weighted.keys().filter(|k| (&k.0, &k.1) == (placement, d)).map(|k| CampaignId::parse(&k.2).unwrap()),
        );
        ids.sort();
        ids.dedup();
        for id in ids {
            let target = weighted
                .get(&(placement.clone(), d.clone(), id.to_string()))
                .map(|w| w / covered[&(placement.clone(), d.clone())]);
            // The origin's rule, per campaign, applied to the day.
            let basis = DeliveryBasis::of(stats, &id);
            expected.push((placement.clone(), d.clone(), id, basis, stats.clone(), target));
        }
    }
    assert_eq!(t.rows.len(), expected.len(), "{t:?}");
    assert_eq!(expected.len(), 9, "2 placements x 2 days x 2 campaigns, and home_feed's unserved C on day 2");
    for (row, (placement, d, id, basis, stats, target)) in expected.iter().enumerate() {
        assert_eq!(t.get(row, "placement"), Some(placement.as_str()));
        assert_eq!(t.get(row, "day"), Some(d.as_str()));
        assert_eq!(t.get(row, "campaign"), Some(id.as_str()));
        let counts = stats.campaigns.get(id).copied().unwrap_or_default();
        let e = estimate::share(stats, id, *basis, Z);
        let basis_name = match basis {
            DeliveryBasis::Impressions => "impressions",
            DeliveryBasis::Allocations => "allocations",
        };
        // Every share is of all the placement's requests; on impressions, each
        // platform's allocations of the campaign times that platform's render ratio.
        let base = stats.requests.ht;
        let delivered = e.share * base;
        assert_eq!(t.get(row, "basis"), Some(basis_name));
        close(num(&t, row, "est_requests"), stats.requests.ht, "est_requests");
        close(num(&t, row, "est_delivered"), delivered, "est_delivered");
        close(num(&t, row, "est_impressions"), counts.impressions.ht, "est_impressions");
        assert_eq!(num(&t, row, "samples") as u64, e.samples);
        close(num(&t, row, "share"), e.share, "share");
        close(num(&t, row, "share_low"), e.low, "share_low");
        close(num(&t, row, "share_high"), e.high, "share_high");
        assert!(e.low <= e.share && e.share < e.high, "{e:?} {id}");
        close(num(&t, row, "est_base"), base, "est_base");
        close(num(&t, row, "est_delivered_low"), e.low * base, "est_delivered_low");
        let target = target.expect("every campaign here has a target");
        close(num(&t, row, "target"), target, "target");
        close(num(&t, row, "est_target"), target * base, "est_target");
        let verdict = if target > e.high {
            "under"
        } else if target < e.low {
            "over"
        } else {
            "within"
        };
        assert_eq!(t.get(row, "vs_target"), Some(verdict), "row {row}");
    }
    assert!(t.rows.iter().all(|r| r[1] != Some("2026-11-26".into())), "--to excludes later days");
    let basis: Vec<_> = (0..t.rows.len()).map(|r| t.get(r, "basis").unwrap().to_string()).collect();
    assert!(basis.contains(&"impressions".to_string()) && basis.contains(&"allocations".to_string()));
    let unserved: Vec<usize> = (0..t.rows.len()).filter(|r| t.get(*r, "campaign") == Some("C")).collect();
    assert_eq!(unserved.len(), 1);
    for r in unserved {
        assert_eq!((num(&t, r, "est_delivered"), num(&t, r, "samples")), (0.0, 0.0));
        assert_eq!(t.get(r, "vs_target"), Some("under"));
    }
    // A's target moved between the day's two versions: the mean lies strictly between.
    let a = (0..t.rows.len()).find(|r| t.get(*r, "campaign") == Some("A")).unwrap();
    let (v1, v2) = (target("home_feed", 3, "A").unwrap(), target("home_feed", 4, "A").unwrap());
    assert!(v1 < num(&t, a, "target") && num(&t, a, "target") < v2, "{t:?}");
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
    let s3 = S3Server::start();
    let cfg = s3.archive_config();
    let store = ArchiveStore::connect(&cfg).await;
    for (key, body) in &objects {
        store.put(&format!("{}{key}", store.prefix()), body.clone()).await.unwrap();
    }
    let cfg_path = dir.path().join("archive.json");
    let cfg_json = serde_json::json!({
        "endpoint": cfg.endpoint, "bucket": cfg.bucket, "prefix": cfg.prefix, "path_style": true,
        "access_key_id": cfg.access_key_id, "secret_access_key": s3::SECRET_KEY,
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
    assert_eq!(rows.len(), 5, "A and B of both placements, and home_feed's C");
    assert!(rows.iter().all(|r| r["day"] == "2026-11-25" && r["share"].is_f64() && r["samples"].is_u64()));
    assert!(rows.iter().all(|r| r["target"].is_f64()), "{rows:?}");

    let bad = Command::new(env!("CARGO_BIN_EXE_allot-report"))
        .args(["delivery", "--from", "2026-11-25", "--to", "2026-02-30", "--engine", "local"])
        .arg("--archive-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a date"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_without_plan_snapshots_reports_delivery_without_targets() {
    let events = dataset();
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &events);
    std::fs::remove_dir_all(dir.path().join("plans")).unwrap();
    let t = run_local("delivery", dir.path()).await;
    assert_eq!(t.rows.len(), 8, "2 placements x 2 days x 2 served campaigns");
    for row in 0..t.rows.len() {
        assert!(t.get(row, "share").is_some());
        assert_eq!((t.get(row, "target"), t.get(row, "vs_target")), (None, None), "row {row}");
    }
}
