//! The load generator: synthetic app traffic through the edge, with the truth recorded.
//!
//! Each simulated app request asks the edge for an ad with a platform and country drawn
//! from a [`Mix`] and a fresh UUIDv4 request id (as apps send them), and the answer is
//! counted per placement and control window (by the client's clock, which is the edge's
//! clock here). Those counts are what the client *observed*: the ground truth the
//! origin's sampled estimates are judged against.
//!
//! The load is open-loop: requests are scheduled at a constant rate whether or not
//! earlier ones were answered, up to [`Traffic::concurrency`] in flight, and each one's
//! latency and deadline run from its scheduled time ([`crate::accounting`]), so a slow
//! edge cannot slow the load down and hide its own latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_testkit::events::now_ms;
use allot_testkit::process::http_client_pooled;
use allot_testkit::scenario;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::accounting::{Accounting, Outcome};

/// A traffic mix: `(platform, country, share)`.
#[derive(Debug, Clone)]
pub struct Mix(pub Vec<(String, String, f64)>);

impl Mix {
    /// The demo scenario's traffic ([`scenario::PLATFORMS`] × [`scenario::COUNTRIES`]).
    pub fn scenario() -> Self {
        Self::product(scenario::PLATFORMS, scenario::COUNTRIES)
    }

    /// Independent platform × country shares.
    pub fn product(platforms: &[(&str, f64)], countries: &[(&str, f64)]) -> Self {
        Self(
            platforms
                .iter()
                .flat_map(|&(p, a)| countries.iter().map(move |&(c, b)| (p.to_string(), c.to_string(), a * b)))
                .collect(),
        )
    }

    /// Parses `ios:0.3,android:0.7` into `(name, share)` pairs.
    pub fn parse_shares(s: &str) -> anyhow::Result<Vec<(String, f64)>> {
        s.split(',')
            .map(|part| {
                let (name, share) =
                    part.split_once(':').ok_or_else(|| anyhow::anyhow!("expected name:share, got {part:?}"))?;
                let share: f64 = share.parse()?;
                anyhow::ensure!(share.is_finite() && share >= 0.0, "share of {name} must be ≥ 0");
                Ok((name.trim().to_string(), share))
            })
            .collect()
    }

    fn draw(&self, rng: &mut SmallRng) -> (&str, &str) {
        let total: f64 = self.0.iter().map(|x| x.2).sum();
        let mut x = rng.random::<f64>() * total;
        for (p, c, s) in &self.0 {
            if x < *s {
                return (p, c);
            }
            x -= s;
        }
        self.0.last().map_or(("web", "US"), |(p, c, _)| (p, c))
    }
}

/// What the client saw in one window of one placement.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub requests: u64,
    /// Answers per ad id (`None` = no ad).
    pub ads: BTreeMap<Option<String>, u64>,
    pub errors: u64,
}

impl Counts {
    pub fn share(&self, ad: &str) -> f64 {
        let n = self.ads.get(&Some(ad.to_string())).copied().unwrap_or(0);
        if self.requests == 0 { 0.0 } else { n as f64 / self.requests as f64 }
    }

    pub fn merge(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        for (k, v) in &o.ads {
            *self.ads.entry(k.clone()).or_default() += v;
        }
    }
}

/// Observations keyed by `(placement, window index)`, and the run's accounting.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub windows: BTreeMap<(String, u64), Counts>,
    pub accounting: Accounting,
}

impl Observed {
    /// Merged counts of `placement` over windows `from..=to`.
    pub fn range(&self, placement: &str, from: u64, to: u64) -> Counts {
        let mut out = Counts::default();
        for ((_, _), c) in self.windows.range((placement.to_string(), from)..=(placement.to_string(), to)) {
            out.merge(c);
        }
        out
    }
}

/// Traffic settings.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub edge_url: String,
    pub placements: Vec<(String, Mix)>,
    /// Requests per second in total, scheduled at constant intervals.
    pub rps: f64,
    /// Requests in flight at most (connections); a request scheduled while all are busy
    /// waits for one, and the wait counts in its latency.
    pub concurrency: usize,
    pub period_ms: u64,
    /// A request not answered this long after its scheduled time is an error.
    pub timeout: Duration,
}

/// Traffic sending in the background ([`Traffic::start`]).
#[derive(Debug)]
pub struct Running {
    /// What the apps have observed so far.
    pub observed: Arc<Mutex<Observed>>,
    /// Set to stop the traffic early (another task may share it).
    pub stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the schedule to end and its last requests to be answered or time out,
    /// and returns what the apps observed.
    pub async fn join(self) -> anyhow::Result<Observed> {
        self.task.await??;
        Ok(std::mem::take(&mut *self.observed.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// Stops the schedule now, waits for its last requests and returns what the apps
    /// observed.
    pub async fn finish(self) -> anyhow::Result<Observed> {
        self.stop.store(true, Ordering::Relaxed);
        self.join().await
    }
}

/// One scheduled request: when, since the start of the schedule, and what.
struct Scheduled {
    at: Duration,
    due: Instant,
    window: u64,
    placement: String,
    url: String,
}

impl Traffic {
    /// Starts sending in the background for at most `duration`.
    pub fn start(self, duration: Duration) -> Running {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (observed, stop) = (observed.clone(), stop.clone());
            tokio::spawn(async move { self.run(duration, observed, stop).await })
        };
        Running { observed, stop, task }
    }

    /// Sends requests on schedule until `stop` is set or `duration` has passed, then
    /// waits for the last ones. Requests whose time came before the stop but that were
    /// never sent are errors (`not sent`).
    pub async fn run(
        &self,
        duration: Duration,
        observed: Arc<Mutex<Observed>>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(self.rps > 0.0 && self.rps.is_finite(), "the rate must be positive, not {}", self.rps);
        anyhow::ensure!(!self.placements.is_empty(), "no placements to request");
        let lanes = self.concurrency.max(1);
        let client = http_client_pooled(self.timeout, lanes);
        let slots = Arc::new(Semaphore::new(lanes));
        let interval = Duration::from_secs_f64(1.0 / self.rps);
        let (start, start_ms) = (Instant::now(), now_ms());
        let mut rng = SmallRng::seed_from_u64(start_ms ^ u64::from(std::process::id()));
        let mut i = 0u64;
        loop {
            let at = interval.mul_f64(i as f64);
            if at >= duration {
                break;
            }
            let due = start + at;
            if stop.load(Ordering::Relaxed) {
                // Every request due before the stop is owed: those not sent are errors.
                let stopped_at = Instant::now().min(start + duration);
                while start + interval.mul_f64(i as f64) < stopped_at {
                    let at = interval.mul_f64(i as f64);
                    let mut obs = observed.lock().unwrap_or_else(|e| e.into_inner());
                    obs.accounting.record(at, None, Outcome::Failed { reason: "not sent".into() });
                    i += 1;
                }
                break;
            }
            i += 1;
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            let request = self.draw(&mut rng, at, due, start_ms);
            // A free connection, at the latest by the request's deadline.
            let slot = tokio::time::timeout_at(due + self.timeout, slots.clone().acquire_owned()).await;
            let Ok(slot) = slot else {
                let mut obs = observed.lock().unwrap_or_else(|e| e.into_inner());
                obs.windows.entry((request.placement, request.window)).or_default().errors += 1;
                obs.accounting.record(at, None, Outcome::Failed { reason: "timeout (no free connection)".into() });
                continue;
            };
            let slot = slot?;
            let (client, observed, timeout) = (client.clone(), observed.clone(), self.timeout);
            tokio::spawn(async move {
                let sent = Instant::now();
                let answer = tokio::time::timeout_at(request.due + timeout, ask(&client, &request.url))
                    .await
                    .unwrap_or_else(|_| Err("timeout".into()));
                let latency = request.due.elapsed();
                let mut obs = observed.lock().unwrap_or_else(|e| e.into_inner());
                let counts = obs.windows.entry((request.placement, request.window)).or_default();
                let outcome = match answer {
                    Ok(ad) => {
                        counts.requests += 1;
                        *counts.ads.entry(ad).or_default() += 1;
                        Outcome::Answered { latency }
                    }
                    Err(reason) => {
                        counts.errors += 1;
                        Outcome::Failed { reason }
                    }
                };
                obs.accounting.record(request.at, Some(sent - request.due), outcome);
                drop(obs);
                drop(slot);
            });
        }
        // Every request holds a connection slot until it is recorded.
        let _all = slots.acquire_many(u32::try_from(lanes).unwrap_or(u32::MAX)).await?;
        Ok(())
    }

    /// The request scheduled `at`: a placement, a platform and country from its mix, and
    /// a UUIDv4 request id.
    fn draw(&self, rng: &mut SmallRng, at: Duration, due: Instant, start_ms: u64) -> Scheduled {
        let (placement, mix) = &self.placements[rng.random_range(0..self.placements.len())];
        let (platform, country) = mix.draw(rng);
        let request_id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        let at_ms = start_ms + u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        Scheduled {
            at,
            due,
            window: at_ms / self.period_ms.max(1),
            placement: placement.clone(),
            url: format!(
                "{}/v1/ad?placement={placement}&platform={platform}&country={country}&request_id={request_id}",
                self.edge_url
            ),
        }
    }
}

/// One ad request: the ad id answered (`None`: no ad), or why there is no usable answer.
async fn ask(client: &reqwest::Client, url: &str) -> Result<Option<String>, String> {
    let r = client.get(url).send().await.map_err(|e| reason(&e))?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status().as_u16()));
    }
    let body: Value = r.json().await.map_err(|e| if e.is_decode() { "unreadable body".into() } else { reason(&e) })?;
    match body.get("ad") {
        Some(Value::Null) => Ok(None),
        Some(ad) => ad["id"].as_str().map(|id| Some(id.to_string())).ok_or_else(|| "unreadable body".into()),
        None => Err("unreadable body".into()),
    }
}

fn reason(e: &reqwest::Error) -> String {
    match () {
        _ if e.is_timeout() => "timeout",
        _ if e.is_connect() => "connect",
        _ if e.is_decode() => "unreadable body",
        _ => "connection lost",
    }
    .into()
}
