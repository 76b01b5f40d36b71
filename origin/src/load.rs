//! A load generator for `POST /v1/events`, driven from a separate process.
//!
//! Each connection is a keep-alive HTTP/1.1 connection sending one request at a time
//! (closed loop), so the offered load adapts to the server and latency is measured per
//! request. Bodies are built per request with unique request ids and signed with the
//! current second, exactly as the edge does, so the server's skew and replay checks
//! stay on during the benchmark.
//!
//! Ingest counts an event only if the origin published the plan it names (placement,
//! version, rate, campaigns), so before a run the bench plans are recorded as published
//! ([`seed`]); the report counts the events the origin accepted, as it answered them,
//! so a run whose events were dropped cannot pass for a fast one.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use allot_core::{CampaignId, Eligibility, PLAN_FORMAT, PlacementId, Plan, PlanCampaign, signature};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::store::{PlanRecord, Store, StoreError};

/// The version and sample rate of every bench plan.
const BENCH_VERSION: u64 = 1;
const BENCH_RATE: f64 = 0.1;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub addr: SocketAddr,
    pub key: Vec<u8>,
    pub connections: usize,
    pub duration: Duration,
    /// Events per request.
    pub batch: usize,
    /// Events are spread over this many placements (`bench_0` …).
    pub placements: usize,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub connections: usize,
    pub batch: usize,
    pub seconds: f64,
    pub requests: u64,
    /// Requests answered 202.
    pub accepted: u64,
    pub failed: u64,
    /// Events the origin said it accepted, and dropped, in its 202 answers.
    pub events_accepted: u64,
    pub events_dropped: u64,
    pub requests_per_sec: f64,
    pub events_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

#[derive(Default)]
struct ConnResult {
    accepted: u64,
    failed: u64,
    events_accepted: u64,
    events_dropped: u64,
    latencies_us: Vec<u32>,
}

/// The plan the load's events for `bench_{placement}` are decided under.
pub fn bench_plan(placement: usize, now_ms: u64) -> Plan {
    let campaign = |id: &str| PlanCampaign {
        id: CampaignId::parse(id).expect("a valid campaign id"),
        weight: 0.4,
        creative: serde_json::json!({}),
        eligibility: Eligibility::default(),
    };
    Plan {
        format: PLAN_FORMAT,
        placement: PlacementId::parse(format!("bench_{placement}")).expect("a valid placement id"),
        version: BENCH_VERSION,
        issued_at_ms: now_ms,
        sample_rate: BENCH_RATE,
        no_ad_weight: 0.2,
        campaigns: vec![campaign("A"), campaign("B")],
        withdrawn: false,
        platforms: None,
    }
}

/// Records the bench plans of `placements` placements as published: registered, in
/// their plan history, as the control loop leaves them (run the origin with its control
/// loop off, or it withdraws placements that have no targets).
pub async fn seed(store: &Store, placements: usize) -> Result<(), StoreError> {
    let now_ms = crate::now_ms();
    for i in 0..placements.max(1) {
        let plan = bench_plan(i, now_ms);
        let placement = plan.placement.clone();
        let record = PlanRecord { plan, decision: None, targets_rev: 0, published_at_ms: now_ms };
        // Epoch 0: the bench runs with the control loop off, holding no lease.
        store.issue_plan(&placement, &record.plan, 10, 0).await?;
        store.save_plan(&placement, &record, 0).await?;
        store.register(&placement).await?;
    }
    Ok(())
}

/// One signed body of `batch` events.
pub fn body(conn: usize, seq: u64, batch: usize, placements: usize, now_ms: u64) -> String {
    let mut s = String::with_capacity(64 + batch * 260);
    s.push_str("{\"events\":[");
    for i in 0..batch {
        if i > 0 {
            s.push(',');
        }
        let n = seq * batch as u64 + i as u64;
        let placement = (conn + i) % placements.max(1);
        let ad = match n % 10 {
            0..5 => "\"A\"",
            5..8 => "\"B\"",
            _ => "null",
        };
        let _ = write!(
            s,
            "{{\"kind\":\"allocation\",\"event_time_ms\":{now_ms},\"request_id\":\"c{conn}-{n}\",\
             \"placement\":\"bench_{placement}\",\"ad_id\":{ad},\"plan_version\":{BENCH_VERSION},\"sample_rate\":{BENCH_RATE},\
             \"eligible\":[\"A\",\"B\"],\"platform\":\"ios\",\"country\":\"DE\",\"colo\":\"FRA\"}}"
        );
    }
    s.push_str("]}");
    s
}

async fn connection(id: usize, o: LoadOptions, deadline: Instant) -> Result<ConnResult, String> {
    let stream = tokio::net::TcpStream::connect(o.addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut out = ConnResult::default();
    let mut seq = 0u64;
    let host = o.addr.to_string();
    while Instant::now() < deadline {
        let now_ms = crate::now_ms();
        let body = body(id, seq, o.batch, o.placements, now_ms);
        seq += 1;
        let sig = signature::sign(&o.key, now_ms / 1000, body.as_bytes());
        let req = hyper::Request::post("/v1/events")
            .header(hyper::header::HOST, &host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(signature::HEADER, sig)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let answer = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        out.latencies_us.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if status.as_u16() == 202 {
            out.accepted += 1;
            let counts: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            out.events_accepted += counts["accepted"].as_u64().unwrap_or(0);
            out.events_dropped += counts["dropped"].as_u64().unwrap_or(0);
        } else {
            out.failed += 1;
        }
    }
    Ok(out)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Runs the load and reports.
pub async fn run(o: LoadOptions) -> Result<LoadReport, String> {
    let started = Instant::now();
    let deadline = started + o.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..o.connections {
        tasks.spawn(connection(id, o.clone(), deadline));
    }
    let mut all = ConnResult::default();
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| e.to_string())??;
        all.accepted += r.accepted;
        all.failed += r.failed;
        all.events_accepted += r.events_accepted;
        all.events_dropped += r.events_dropped;
        all.latencies_us.extend(r.latencies_us);
    }
    let seconds = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let requests = all.accepted + all.failed;
    Ok(LoadReport {
        connections: o.connections,
        batch: o.batch,
        seconds,
        requests,
        accepted: all.accepted,
        failed: all.failed,
        events_accepted: all.events_accepted,
        events_dropped: all.events_dropped,
        requests_per_sec: requests as f64 / seconds,
        events_per_sec: all.events_accepted as f64 / seconds,
        latency_ms_p50: percentile(&all.latencies_us, 0.50),
        latency_ms_p90: percentile(&all.latencies_us, 0.90),
        latency_ms_p99: percentile(&all.latencies_us, 0.99),
        latency_ms_max: percentile(&all.latencies_us, 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_batches() {
        let b = body(3, 7, 100, 4, 1_700_000_000_000);
        let batch = allot_core::EventBatch::parse(b.as_bytes()).unwrap();
        assert_eq!(batch.events.len(), 100);
        assert_eq!(batch.events[0].request_id.as_str(), "c3-700");
        assert_eq!(batch.events[0].placement.as_str(), "bench_3");
        // Every event is decided under its placement's bench plan, so ingest admits it.
        for e in &batch.events {
            let plan = bench_plan(e.placement.as_str()["bench_".len()..].parse().unwrap(), 0);
            assert_eq!((e.plan_version, e.sample_rate), (plan.version, plan.sample_rate));
            assert!(e.eligible.iter().chain(&e.ad_id).all(|c| plan.campaign(c).is_some()));
        }
    }
}
