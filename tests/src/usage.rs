//! What the stack's processes used over a stretch of a run: CPU seconds per process from
//! `/proc`, Redis's commands and memory from `INFO`, the origin's and the edge's event
//! counters, and the machine's load average. A [`Snapshot`] is taken at each end and
//! [`Usage::between`] takes the differences.

use std::collections::BTreeMap;
use std::time::Duration;

use allot_testkit::origin::{parse_metric, parse_metric_sum};
use allot_testkit::process::{cpu_seconds, load_average};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::stack::Stack;

/// The name this process is reported under: it runs the load generator (and polls the
/// origin's status a few times per window, which costs next to nothing).
pub const LOAD_GENERATOR: &str = "load generator";

/// The counters at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// CPU seconds by process id, with the process's name.
    cpu: BTreeMap<u32, (String, f64)>,
    redis: Option<RedisInfo>,
    /// `allot_ingest_events_total`, `allot_plans_published_total` summed over `why`
    /// (`None`: the origin did not answer).
    origin_events: Option<f64>,
    origin_plans: Option<f64>,
    /// The edge's `/healthz` event counters.
    edge: Option<Value>,
    pub load_average: (f32, f32, f32),
}

#[derive(Debug, Clone, Copy)]
struct RedisInfo {
    commands: u64,
    used_memory: u64,
    used_memory_peak: u64,
    aof_enabled: bool,
}

impl Snapshot {
    pub async fn take(stack: &Stack) -> Self {
        let mut cpu = BTreeMap::new();
        for (name, pid) in stack.processes().into_iter().chain([(LOAD_GENERATOR.to_string(), std::process::id())]) {
            if let Some(s) = cpu_seconds(pid) {
                cpu.insert(pid, (name, s));
            }
        }
        let metrics = origin_metrics(stack).await;
        let metric = |name: &str| metrics.as_ref().and_then(|t| parse_metric(t, name));
        let url = stack.redis_url.clone();
        let redis = tokio::task::spawn_blocking(move || redis_info(&url)).await.ok().flatten();
        Self {
            at: Instant::now(),
            cpu,
            redis,
            origin_events: metric("allot_ingest_events_total"),
            origin_plans: metrics.as_ref().and_then(|t| parse_metric_sum(t, "allot_plans_published_total")),
            edge: stack.edge_events().await.ok(),
            load_average: load_average(),
        }
    }
}

/// The differences between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub seconds: f64,
    /// CPU seconds per process name over the stretch (a process started during it counts
    /// from its start; one that ended during it is missing).
    pub cpu_seconds: BTreeMap<String, f64>,
    pub redis_ops_per_sec: Option<f64>,
    pub redis_used_memory_mb: Option<f64>,
    pub redis_used_memory_peak_mb: Option<f64>,
    pub redis_aof: Option<bool>,
    /// Events the origin stored (its counter; `None` if it restarted in between).
    pub origin_events: Option<f64>,
    pub origin_plans_published: Option<f64>,
    /// Events the edge sampled (queued), and that the origin acknowledged (sent).
    pub edge_sampled: Option<u64>,
    pub edge_acknowledged: Option<u64>,
    pub load_average_start: (f32, f32, f32),
    pub load_average_end: (f32, f32, f32),
}

impl Usage {
    pub fn between(a: &Snapshot, b: &Snapshot) -> Self {
        let mut cpu_seconds = BTreeMap::new();
        for (pid, (name, end)) in &b.cpu {
            let start = a.cpu.get(pid).map_or(0.0, |(_, s)| *s);
            *cpu_seconds.entry(name.clone()).or_default() += end - start;
        }
        let seconds = (b.at - a.at).as_secs_f64();
        let grew = |x: Option<f64>, y: Option<f64>| Some(y? - x?).filter(|d| *d >= 0.0);
        let edge = |field: &str| {
            let count = |s: &Snapshot| s.edge.as_ref().and_then(|e| e[field].as_u64());
            count(b)?.checked_sub(count(a)?)
        };
        let mb = |bytes: u64| bytes as f64 / 1024.0 / 1024.0;
        Self {
            seconds,
            cpu_seconds,
            redis_ops_per_sec: match (a.redis, b.redis) {
                (Some(x), Some(y)) if y.commands >= x.commands => Some((y.commands - x.commands) as f64 / seconds),
                _ => None,
            },
            redis_used_memory_mb: b.redis.map(|r| mb(r.used_memory)),
            redis_used_memory_peak_mb: b.redis.map(|r| mb(r.used_memory_peak)),
            redis_aof: b.redis.map(|r| r.aof_enabled),
            origin_events: grew(a.origin_events, b.origin_events),
            origin_plans_published: grew(a.origin_plans, b.origin_plans),
            edge_sampled: edge("queued"),
            edge_acknowledged: edge("sent"),
            load_average_start: a.load_average,
            load_average_end: b.load_average,
        }
    }

    /// CPU seconds of all the processes together.
    pub fn cpu_total(&self) -> f64 {
        self.cpu_seconds.values().sum()
    }
}

async fn origin_metrics(stack: &Stack) -> Option<String> {
    let r = stack.client.get(stack.api.url("/metrics")).timeout(Duration::from_secs(5)).send().await.ok()?;
    r.text().await.ok()
}

/// `INFO stats`, `memory` and `persistence`; `None` while Redis does not answer.
fn redis_info(url: &str) -> Option<RedisInfo> {
    let mut conn = redis::Client::open(url).ok()?.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
    let info: redis::InfoDict = redis::cmd("INFO").arg("everything").query(&mut conn).ok()?;
    Some(RedisInfo {
        commands: info.get("total_commands_processed")?,
        used_memory: info.get("used_memory")?,
        used_memory_peak: info.get("used_memory_peak")?,
        aof_enabled: info.get::<u8>("aof_enabled")? == 1,
    })
}
