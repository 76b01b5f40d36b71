//! The load generator: synthetic app traffic through the edge, with the truth recorded.
//!
//! Each simulated app request asks the edge for an ad with a platform and country drawn
//! from a [`Mix`], and the answer is counted per placement and control window (by the
//! client's clock, which is the edge's clock here). Those counts are what the client
//! *observed*: the ground truth the origin's sampled estimates are judged against.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_testkit::events::now_ms;
use allot_testkit::process::http_client;
use allot_testkit::scenario;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

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

/// Observations keyed by `(placement, window index)`.
#[derive(Debug, Default)]
pub struct Observed {
    pub windows: BTreeMap<(String, u64), Counts>,
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
    /// Requests per second in total.
    pub rps: f64,
    /// Requests in flight at most.
    pub concurrency: usize,
    pub period_ms: u64,
}

/// Traffic sending in the background ([`Traffic::start`]).
#[derive(Debug)]
pub struct Running {
    /// What the apps have observed so far.
    pub observed: Arc<Mutex<Observed>>,
    /// Set to stop the traffic early (another task may share it).
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the traffic, waits for its last requests and returns what the apps observed.
    pub async fn finish(self) -> anyhow::Result<Observed> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await??;
        Ok(std::mem::take(&mut *self.observed.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

impl Traffic {
    /// Starts sending in the background for at most `duration`.
    pub fn start(self, duration: Duration) -> Running {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (observed, stop) = (observed.clone(), stop.clone());
            tokio::spawn(async move { self.run(duration, observed, stop).await })
        };
        Running { observed, stop, task }
    }

    /// Sends requests until `stop` is set or `duration` has passed.
    pub async fn run(
        &self,
        duration: Duration,
        observed: Arc<Mutex<Observed>>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<()> {
        let client = http_client(Duration::from_secs(10));
        let end = Instant::now() + duration;
        let lanes = self.concurrency.max(1);
        let interval = Duration::from_secs_f64(lanes as f64 / self.rps.max(0.1));
        let mut tasks = Vec::new();
        for lane in 0..lanes {
            let me = self.clone();
            let client = client.clone();
            let observed = observed.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(lane as u64 ^ now_ms());
                let mut next = Instant::now() + interval.mul_f64(lane as f64 / lanes as f64);
                while Instant::now() < end && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                    let (placement, mix) = &me.placements[rng.random_range(0..me.placements.len())];
                    let (platform, country) = mix.draw(&mut rng);
                    let request_id = format!("{:032x}", rng.random::<u128>());
                    let window = now_ms() / me.period_ms.max(1);
                    let url = format!(
                        "{}/v1/ad?placement={placement}&platform={platform}&country={country}&request_id={request_id}",
                        me.edge_url
                    );
                    let answer = match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                        _ => None,
                    };
                    let mut obs = observed.lock().unwrap_or_else(|e| e.into_inner());
                    let counts = obs.windows.entry((placement.clone(), window)).or_default();
                    match answer {
                        Some(v) => {
                            counts.requests += 1;
                            let ad = v["ad"]["id"].as_str().map(str::to_string);
                            *counts.ads.entry(ad).or_default() += 1;
                        }
                        None => counts.errors += 1,
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    }
}
