//! The client's ledger of events, and what the system did with them.
//!
//! With the sample rate pinned at 1, every ad request the edge answers (2xx) is one
//! allocation event the edge owes the origin, so the client knows exactly which events
//! must exist: their request ids, and the control window each fell in. [`Load`] sends
//! those requests at a steady rate and writes the ledger; it sends nothing within
//! [`Load::guard_ms`] of a window boundary, so the edge (same clock) decides every
//! request in the window the client filed it under.
//!
//! At the end the ledger is held against the window counts in Redis (what the
//! aggregator applied) and the archive read back with DuckDB (what the archiver wrote),
//! window by window ([`window_counts`], [`archived`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_core::WindowStats;
use allot_core::contract::keys::PlacementKeys;
use allot_testkit::events::now_ms;
use allot_testkit::process::http_client;
use anyhow::Context;
use serde_json::Value;

/// What the client was answered, per window.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Request ids answered 2xx, per window.
    pub answered: BTreeMap<u64, Vec<String>>,
    /// Requests not answered 2xx (no event is owed for them), per window.
    pub errors: BTreeMap<u64, u64>,
    /// Why they were not: an HTTP status, or what the client saw instead of an answer.
    pub error_reasons: BTreeMap<String, u64>,
    /// Requests answered in another window than the one they were sent in (the guard
    /// was too short), by the window they were sent in: the edge may have stamped their
    /// event in either, and only the archive tells which ([`Ledger::acknowledged_as_stamped`]).
    pub straddled: Vec<(u64, String)>,
    /// Plan versions seen by each lane, in order (a lane sends one request at a time).
    pub versions: Vec<Vec<u64>>,
}

impl Ledger {
    /// The ids answered in windows `windows`.
    pub fn ids(&self, windows: std::ops::RangeInclusive<u64>) -> impl Iterator<Item = &str> {
        self.answered.range(windows).flat_map(|(_, ids)| ids.iter().map(String::as_str))
    }

    pub fn acknowledged(&self, windows: std::ops::RangeInclusive<u64>) -> u64 {
        self.answered.range(windows).map(|(_, ids)| ids.len() as u64).sum()
    }

    /// Like [`Ledger::acknowledged`], but each request answered in another window than it
    /// was sent in counts in the window its archived event names (`stamped`, by request
    /// id), which is the window the origin counted it in. Without that, a slow answer at
    /// the end of a phase shows as an event lost there and counted twice in the next.
    pub fn acknowledged_as_stamped(
        &self,
        windows: std::ops::RangeInclusive<u64>,
        stamped: impl Fn(&str) -> Option<u64>,
    ) -> u64 {
        let moved_out = self
            .straddled
            .iter()
            .filter(|(w, id)| windows.contains(w) && stamped(id).is_some_and(|s| !windows.contains(&s)));
        let moved_in = self
            .straddled
            .iter()
            .filter(|(w, id)| !windows.contains(w) && stamped(id).is_some_and(|s| windows.contains(&s)));
        (self.acknowledged(windows.clone()) + moved_in.count() as u64).saturating_sub(moved_out.count() as u64)
    }

    /// Requests the edge answered with an error status (or an unreadable body).
    pub fn refused(&self) -> u64 {
        self.error_reasons.iter().filter(|(r, _)| r.starts_with(REFUSED)).map(|(_, n)| n).sum()
    }

    /// Requests that got no answer at all (connect, timeout, connection lost): no event is
    /// owed for them, and one the edge did serve shows as counted beyond the acknowledged.
    pub fn unanswered(&self) -> u64 {
        self.error_reasons.values().sum::<u64>() - self.refused()
    }

    /// Every request sent.
    pub fn sent(&self) -> u64 {
        self.answered.values().map(|ids| ids.len() as u64).sum::<u64>() + self.errors.values().sum::<u64>()
    }

    pub fn errors_in(&self, windows: std::ops::RangeInclusive<u64>) -> u64 {
        self.errors.range(windows).map(|(_, n)| n).sum()
    }

    /// Lanes whose plan versions went back (a lane's requests are sequential, so the
    /// edge decided them in order): `(lane, from, to)`.
    pub fn versions_going_back(&self) -> Vec<(usize, u64, u64)> {
        let mut back = Vec::new();
        for (lane, seen) in self.versions.iter().enumerate() {
            for w in seen.windows(2) {
                if w[1] < w[0] {
                    back.push((lane, w[0], w[1]));
                }
            }
        }
        back
    }
}

/// Steady ad traffic through the edge for one placement, at sample rate 1.
#[derive(Debug, Clone)]
pub struct Load {
    pub edge_url: String,
    pub placement: String,
    /// Requests per second in total.
    pub rps: f64,
    /// Requests in flight at most (one lane each).
    pub concurrency: usize,
    pub period_ms: u64,
    /// Nothing is sent this close to a window boundary.
    pub guard_ms: u64,
}

/// Load running in the background.
#[derive(Debug)]
pub struct Running {
    pub ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops sending, waits for the last answers, and returns the ledger.
    pub async fn finish(self) -> anyhow::Result<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        Ok(std::mem::take(&mut *self.ledger.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

impl Load {
    pub fn start(self) -> Running {
        let ledger =
            Arc::new(Mutex::new(Ledger { versions: vec![Vec::new(); self.concurrency.max(1)], ..Ledger::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            tokio::spawn(async move { self.run(ledger, stop).await })
        };
        Running { ledger, stop, task }
    }

    async fn run(self, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
        let client = http_client(Duration::from_secs(10));
        let lanes = self.concurrency.max(1);
        let interval = Duration::from_secs_f64(lanes as f64 / self.rps.max(0.1));
        let mut tasks = Vec::new();
        for lane in 0..lanes {
            let (me, client, ledger, stop) = (self.clone(), client.clone(), ledger.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut next = tokio::time::Instant::now() + interval.mul_f64(lane as f64 / lanes as f64);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(next).await;
                    next += interval;
                    let now = now_ms();
                    let into = now % me.period_ms;
                    if into < me.guard_ms || into + me.guard_ms >= me.period_ms {
                        continue;
                    }
                    let window = now / me.period_ms;
                    n += 1;
                    let id = format!("f{lane:03}x{n:08}x{now}");
                    let url = format!(
                        "{}/v1/ad?placement={}&platform=ios&country=US&request_id={id}",
                        me.edge_url, me.placement
                    );
                    let answer = match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            r.json::<Value>().await.map_err(|e| format!("{REFUSED} unreadable answer: {e}"))
                        }
                        Ok(r) => Err(format!("{REFUSED} HTTP {}", r.status().as_u16())),
                        Err(e) => Err(no_answer(&e)),
                    };
                    let answered_in = now_ms() / me.period_ms;
                    let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
                    match answer {
                        Ok(v) => {
                            if answered_in != window {
                                l.straddled.push((window, id.clone()));
                            }
                            l.answered.entry(window).or_default().push(id);
                            if let Some(version) = v["plan_version"].as_u64() {
                                l.versions[lane].push(version);
                            }
                        }
                        Err(reason) => {
                            *l.errors.entry(window).or_default() += 1;
                            *l.error_reasons.entry(reason).or_default() += 1;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The prefix of the reasons for which the edge did answer, with an error.
const REFUSED: &str = "answered";

/// What the client saw instead of an answer, short enough to count by.
fn no_answer(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "no answer"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    format!("{kind}: {cause}")
}

/// Requests counted in each window of `placement` (`n` of the window's requests tally:
/// at rate 1, one per event applied). `None` while Redis does not answer.
pub fn window_counts(
    redis_url: &str,
    placement: &str,
    windows: std::ops::RangeInclusive<u64>,
) -> Option<BTreeMap<u64, u64>> {
    let client = redis::Client::open(redis_url).ok()?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let keys = PlacementKeys::of_raw(placement);
    let mut out = BTreeMap::new();
    for w in windows {
        let fields: HashMap<String, f64> = redis::cmd("HGETALL").arg(keys.window(w)).query(&mut c).ok()?;
        let stats = WindowStats::from_fields(fields).ok()?;
        out.insert(w, stats.requests.n);
    }
    Some(out)
}

/// The plan versions the origin keeps in its history of `placement`, newest first.
pub fn history_versions(redis_url: &str, placement: &str) -> anyhow::Result<Vec<u64>> {
    let mut c = redis::Client::open(redis_url)?.get_connection()?;
    let plans: Vec<String> =
        redis::cmd("LRANGE").arg(PlacementKeys::of_raw(placement).plans()).arg(0).arg(-1).query(&mut c)?;
    plans
        .iter()
        .map(|p| serde_json::from_str::<Value>(p)?["version"].as_u64().context("a plan has a version"))
        .collect()
}

/// One archived allocation: its request id, the window of its event time, and how many
/// rows it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub request_id: String,
    pub window: u64,
    pub rows: u64,
}

/// The archive's allocation rows of `placement`, read back by DuckDB from the bucket's
/// Parquet files, grouped by request id.
pub fn archived(bucket_dir: &Path, placement: &str, period_ms: u64) -> anyhow::Result<Vec<Archived>> {
    let glob = format!("{}/events/*/*/*.parquet", bucket_dir.display());
    if !has_parquet(&bucket_dir.join("events")) {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT request_id, min(epoch_ms(event_time)) // {period_ms}, count(*) \
         FROM read_parquet('{glob}', hive_partitioning = true) \
         WHERE kind = 'allocation' AND placement = '{placement}' GROUP BY request_id"
    );
    let rows = allot_testkit::duckdb::try_query(&sql)?.into_iter().map(|row| {
        let (request_id, window, rows) = serde_json::from_value(Value::Array(row))?;
        Ok(Archived { request_id, window, rows })
    });
    rows.collect()
}

/// The rows of archive table `table` (`events`, `plans`), read back by DuckDB from the
/// bucket's Parquet files (0 before the first object).
pub fn archived_rows(bucket_dir: &Path, table: &str) -> anyhow::Result<u64> {
    if !has_parquet(&bucket_dir.join(table)) {
        return Ok(0);
    }
    let glob = format!("{}/{table}/*/*/*.parquet", bucket_dir.display());
    let rows = allot_testkit::duckdb::try_query(&format!("SELECT count(*) FROM read_parquet('{glob}')"))?;
    rows.first().and_then(|r| r.first()).and_then(Value::as_u64).context("a count from DuckDB")
}

fn has_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let path = e.path();
        if path.is_dir() { has_parquet(&path) } else { path.extension().is_some_and(|x| x == "parquet") }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_answered_across_a_windows_end_counts_where_its_event_was_stamped() {
        let mut l = Ledger::default();
        l.answered.insert(1, vec!["a".into(), "b".into(), "late".into(), "early".into()]);
        l.answered.insert(2, vec!["c".into()]);
        // Both sent in window 1 and answered in 2: the edge stamped "late" in 2 and
        // "early" still in 1.
        l.straddled = vec![(1, "late".into()), (1, "early".into())];
        let stamped = |id: &str| Some(if id == "late" { 2 } else { 1 });
        assert_eq!(l.acknowledged_as_stamped(1..=1, stamped), 3);
        assert_eq!(l.acknowledged_as_stamped(2..=2, stamped), 2);
        assert_eq!(l.acknowledged_as_stamped(1..=2, stamped), 5, "nothing moves within the range");
        // Not archived: the window it was sent in stands (the archive check fails anyway).
        assert_eq!(l.acknowledged_as_stamped(1..=1, |_| None), 4);
    }
}
