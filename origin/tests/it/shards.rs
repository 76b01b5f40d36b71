//! The control loop spread over origins (real binaries, real Redis): each holds a share
//! of the control shards, one origin at a time per shard; they rebalance when an origin
//! joins or leaves, take a killed origin's shards within a lease, fence a stalled one,
//! refuse what a key holder forges in the control keys, and recover from a Redis
//! restart without a shard held twice.
//!
//! A [`Watch`] polls every origin's `/readyz` (the shards it acts on, each with its
//! epoch and when it was granted) throughout, and [`Watch::check`] fails if one origin
//! acted on a shard after another had been granted it under a newer epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_core::Plan;
use allot_core::contract::{PlanSnapshot, keys, stream};
use allot_core::shard::shard_of;
use allot_testkit::origin::{MANAGER_TOKEN, OriginApi, OriginProcess};
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use serde_json::{Value, json};

const SHARDS: u32 = 64;
const LEASE_MS: u64 = 1_500;

/// Reports of who acts on what, gathered in the background.
struct Watch {
    origins: Arc<Mutex<Vec<(String, OriginApi)>>>,
    /// (origin, report)
    reports: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start() -> Self {
        let origins: Arc<Mutex<Vec<(String, OriginApi)>>> = Arc::default();
        let reports: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let (o, r) = (origins.clone(), reports.clone());
        let task = tokio::spawn(async move {
            loop {
                let list = o.lock().unwrap().clone();
                for (name, api) in list {
                    if let Some(control) = api.control().await {
                        r.lock().unwrap().push((name, control));
                    }
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        Self { origins, reports, task }
    }

    fn add(&self, name: &str, origin: &OriginProcess) {
        self.origins.lock().unwrap().push((name.to_string(), OriginApi::new(origin.addr)));
    }

    fn remove(&self, name: &str) {
        self.origins.lock().unwrap().retain(|(n, _)| n != name);
    }

    /// The shards each origin acts on, now.
    async fn held(&self) -> BTreeMap<String, BTreeSet<u32>> {
        let list = self.origins.lock().unwrap().clone();
        let mut out = BTreeMap::new();
        for (name, api) in list {
            let shards = api.control().await.map(|c| held_shards(&c)).unwrap_or_default();
            out.insert(name, shards);
        }
        out
    }

    /// Waits until the running origins hold every shard between them, each at most
    /// `max`, none twice; returns who holds what.
    async fn settled(&self, secs: u64, max: usize) -> BTreeMap<String, BTreeSet<u32>> {
        eventually(secs, "every shard held once, within the fair share", || async {
            let held = self.held().await;
            let all: BTreeSet<u32> = held.values().flatten().copied().collect();
            let total: usize = held.values().map(BTreeSet::len).sum();
            (all.len() == SHARDS as usize && total == all.len() && held.values().all(|h| h.len() <= max))
                .then_some(held)
        })
        .await
    }

    /// Stops watching and checks every pair of reports: an origin that reported acting
    /// on a shard under an epoch at some moment must not have been preceded by another
    /// origin's grant of a newer epoch of that shard.
    fn check(self) -> usize {
        self.task.abort();
        let reports = self.reports.lock().unwrap().clone();
        // (shard, epoch) → (origin, acquired at, last reported at)
        let mut grants: BTreeMap<(u32, u64), (String, u64, u64)> = BTreeMap::new();
        for (origin, r) in &reports {
            let at = r["at_ms"].as_u64().unwrap();
            for h in r["held"].as_array().unwrap() {
                let key = (h["shard"].as_u64().unwrap() as u32, h["epoch"].as_u64().unwrap());
                let acquired = h["acquired_at_ms"].as_u64().unwrap();
                let g = grants.entry(key).or_insert_with(|| (origin.clone(), acquired, at));
                assert_eq!(&g.0, origin, "epoch {key:?} reported by two origins");
                g.2 = g.2.max(at);
            }
        }
        for (&(shard, e1), (o1, _, last)) in &grants {
            for (&(_, e2), (o2, acquired, _)) in grants.range((shard, e1 + 1)..(shard + 1, 0)) {
                assert!(
                    o1 == o2 || acquired >= last,
                    "shard {shard}: {o1} acted under epoch {e1} until {last}, {o2} was granted epoch {e2} at {acquired}"
                );
            }
        }
        assert!(!grants.is_empty());
        reports.len()
    }
}

fn held_shards(control: &Value) -> BTreeSet<u32> {
    control["held"]
        .as_array()
        .map_or_else(BTreeSet::new, |a| a.iter().map(|h| h["shard"].as_u64().unwrap() as u32).collect())
}

fn origin(redis: &RedisServer, env: &[(&str, &str)]) -> OriginProcess {
    OriginProcess::start(redis, "[control]\nperiod_ms = 500\n", env)
}

fn placements(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("p{i:03}")).collect()
}

async fn put_all(via: &OriginApi, names: &[String], rate: f64) {
    for p in names {
        let r = via.put_targets(p, &json!({"campaigns": [{"id": "A", "rate": rate}]}), MANAGER_TOKEN).await;
        assert!(r.status().is_success(), "{p}: {}", r.status());
    }
}

fn plan_version(redis: &RedisServer, p: &str) -> u64 {
    let raw: Option<String> =
        redis::cmd("GET").arg(keys::PlacementKeys::of_raw(p).plan()).query(&mut redis.conn()).unwrap();
    raw.map_or(0, |s| serde_json::from_str::<Value>(&s).unwrap()["plan"]["version"].as_u64().unwrap())
}

/// Waits until every placement's stored plan is at `version` or later.
async fn all_at(redis: &RedisServer, names: &[String], version: u64, secs: u64) {
    eventually(secs, &format!("every placement at version {version}"), || async {
        names.iter().all(|p| plan_version(redis, p) >= version)
    })
    .await
}

/// Each placement's issued versions are unique and only go up, and every published
/// version is logged once: no two controllers ever made plans for one placement.
fn plans_are_one_controllers(redis: &RedisServer, names: &[String]) {
    let mut c = redis.conn();
    for p in names {
        let raw: Vec<String> =
            redis::cmd("LRANGE").arg(keys::PlacementKeys::of_raw(p).plans()).arg(0).arg(-1).query(&mut c).unwrap();
        let versions: Vec<u64> = raw.iter().map(|s| Plan::parse(s.as_bytes()).unwrap().version).collect();
        assert!(versions.windows(2).all(|w| w[0] > w[1]), "{p}: {versions:?}");
    }
    let log: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream::PLAN_LOG).arg("-").arg("+").query(&mut c).unwrap();
    let mut seen = BTreeSet::new();
    for e in &log.ids {
        let s: String = e.get(stream::SNAPSHOT).unwrap();
        let snap = PlanSnapshot::parse(s.as_bytes()).unwrap();
        assert!(seen.insert((snap.placement.to_string(), snap.version)), "logged twice: {snap:?}");
    }
}

async fn fenced(o: &OriginApi) -> f64 {
    let mut n = 0.0;
    for step in ["allocate", "publish", "save"] {
        n += o.metric(&format!("allot_control_fenced_total{{step=\"{step}\"}}")).await;
    }
    n
}

#[tokio::test]
async fn origins_share_the_shards_and_rebalance_as_they_join_and_leave() {
    let redis = RedisServer::start();
    let watch = Watch::start();
    let (a, b) = (origin(&redis, &[]), origin(&redis, &[]));
    watch.add("a", &a);
    watch.add("b", &b);
    let names = placements(40);
    put_all(&a, &names, 0.5).await;
    let two = watch.settled(20, 32).await;
    assert!(two.values().all(|h| h.len() == 32), "{two:?}");
    all_at(&redis, &names, 1, 15).await;

    // A third joins: once settled, each holds at most ceil(64 / 3) = 22.
    let mut c = origin(&redis, &[]);
    watch.add("c", &c);
    let three = watch.settled(20, 22).await;
    assert!(three.values().all(|h| h.len() >= 20), "{three:?}");
    assert!(a.metric("allot_control_rebalances_total").await >= 2.0);
    assert!(a.metric("allot_control_shard_changes_total{change=\"released\"}").await >= 10.0);
    assert_eq!(c.metric("allot_control_members").await, 3.0);
    // A change is solved by whoever holds the placement's shard, wherever it was made.
    put_all(&c, &names, 0.4).await;
    all_at(&redis, &names, 2, 15).await;
    let controlled: BTreeSet<u32> = names.iter().map(|p| shard_of(p, SHARDS)).collect();
    assert!(three.values().filter(|h| !h.is_disjoint(&controlled)).count() >= 2, "the work is spread");

    // c leaves gracefully: its shards are given back and taken at the next syncs.
    c.sigterm();
    assert_eq!(c.wait_exit(20), Some(0));
    watch.remove("c");
    let started = Instant::now();
    watch.settled(10, 32).await;
    assert!(started.elapsed() < Duration::from_millis(3 * LEASE_MS), "{:?}", started.elapsed());
    put_all(&b, &names, 0.3).await;
    all_at(&redis, &names, 3, 15).await;

    assert!(watch.check() > 100);
    plans_are_one_controllers(&redis, &names);
    for o in [&a, &b] {
        assert_eq!(fenced(o).await, 0.0, "no competing writes in a graceful rebalance");
    }
}

#[tokio::test]
async fn a_killed_origins_shards_are_taken_within_a_lease() {
    let redis = RedisServer::start();
    let watch = Watch::start();
    let (a, mut b, c) = (origin(&redis, &[]), origin(&redis, &[]), origin(&redis, &[]));
    for (n, o) in [("a", &a), ("b", &b), ("c", &c)] {
        watch.add(n, o);
    }
    let names = placements(30);
    put_all(&a, &names, 0.5).await;
    let before = watch.settled(25, 22).await;
    all_at(&redis, &names, 1, 15).await;

    b.kill9();
    let killed = Instant::now();
    watch.remove("b");
    let after = watch.settled(15, 32).await;
    let took = killed.elapsed();
    // b's grants end at most a lease after its last renewal; the others see its
    // membership expire and ask at their next sync (a third of a lease).
    assert!(took < Duration::from_millis(LEASE_MS * 2 + 1_000), "taken over in {took:?}");
    assert!(after["a"].len() + after["c"].len() == SHARDS as usize && !before["b"].is_empty());
    put_all(&c, &names, 0.4).await;
    all_at(&redis, &names, 2, 15).await;
    watch.check();
    plans_are_one_controllers(&redis, &names);
}

/// An origin paused (renewals included) between deciding and publishing, for three
/// lease times: the other takes its shards, and the paused one's publish is abandoned.
#[tokio::test]
async fn a_stalled_origin_cannot_publish_on_shards_it_lost() {
    let redis = RedisServer::start();
    let watch = Watch::start();
    let stall = origin(&redis, &[("ALLOT_CONTROL_FAILPOINT", "stall_before_publish")]);
    let other = origin(&redis, &[]);
    watch.add("stall", &stall);
    watch.add("other", &other);
    let held = watch.settled(20, 32).await;
    let p = (0..).map(|i| format!("s{i}")).find(|p| held["stall"].contains(&shard_of(p, SHARDS))).unwrap();
    assert_eq!(
        other.put_targets(&p, &json!({"campaigns": [{"id": "A", "rate": 0.5}]}), MANAGER_TOKEN).await.status(),
        201
    );
    // The stalled origin allocated and issued version 1 and paused; the other took the
    // shard under a newer epoch and published version 2.
    eventually(15, "the other's plan", || async { (plan_version(&redis, &p) == 2).then_some(()) }).await;
    let fenced_publish = "allot_control_fenced_total{step=\"publish\"}";
    eventually(15, "the paused publish abandoned", || async { stall.metric(fenced_publish).await >= 1.0 }).await;
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(keys::PlacementKeys::of_raw(&p).plans())
        .arg(0)
        .arg(-1)
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(raw.len(), 2, "both issued (ingest knows both)");
    let log: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream::PLAN_LOG).arg("-").arg("+").query(&mut redis.conn()).unwrap();
    let published: Vec<u64> = log
        .ids
        .iter()
        .map(|e| PlanSnapshot::parse(e.get::<String>(stream::SNAPSHOT).unwrap().as_bytes()).unwrap())
        .filter(|s| s.placement.as_str() == p)
        .map(|s| s.version)
        .collect();
    assert_eq!(published, [2], "only the holder's plan went out");
    assert!(stall.metric("allot_control_shard_changes_total{change=\"lost\"}").await >= 1.0);
    watch.check();
}

/// A key holder writes the control keys: an old epoch under the holder's own name, an
/// epoch never issued, a value without a TTL, a key of the wrong type; members with bad
/// ids, far-future expiries, info without a member, a membership of the wrong type.
/// Each is refused or removed and counted; no shard is ever held twice.
#[tokio::test]
async fn forged_control_keys_are_refused_and_counted() {
    let redis = RedisServer::start();
    let watch = Watch::start();
    let (a, b) = (origin(&redis, &[]), origin(&redis, &[]));
    watch.add("a", &a);
    watch.add("b", &b);
    let names = placements(20);
    put_all(&a, &names, 0.5).await;
    watch.settled(20, 32).await;
    let mut c = redis.conn();
    let lease = |c: &mut redis::Connection, s: u32| -> (u64, String) {
        let v: String = redis::cmd("GET").arg(keys::shard_lease(s)).query(c).unwrap();
        let (e, h) = v.split_once(' ').unwrap();
        (e.parse().unwrap(), h.to_string())
    };
    let (e0, holder0) = lease(&mut c, 0);
    let set = |c: &mut redis::Connection, s: u32, v: &str, px: Option<u64>| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(keys::shard_lease(s)).arg(v);
        if let Some(px) = px {
            cmd.arg("PX").arg(px);
        }
        cmd.query::<()>(c).unwrap();
    };
    // An epoch that was issued, but not to this holder for this shard (shard 1's).
    let (other, _) = lease(&mut c, 1);
    assert_ne!(other, e0);
    set(&mut c, 0, &format!("{other} {holder0}"), Some(LEASE_MS));
    set(&mut c, 1, "999999999 mallory", Some(LEASE_MS));
    set(&mut c, 2, "not a lease", None);
    redis::cmd("DEL").arg(keys::shard_lease(3)).query::<()>(&mut c).unwrap();
    redis::cmd("HSET").arg(keys::shard_lease(3)).arg("x").arg("y").query::<()>(&mut c).unwrap();
    let far = allot_testkit::events::now_ms() + 1_000_000_000;
    redis::cmd("ZADD").arg(keys::MEMBERS).arg(far).arg("evil").query::<()>(&mut c).unwrap();
    let soon = allot_testkit::events::now_ms() + LEASE_MS;
    redis::cmd("ZADD").arg(keys::MEMBERS).arg(soon).arg("bad id!").query::<()>(&mut c).unwrap();
    redis::cmd("HSET").arg(keys::MEMBER_INFO).arg("ghost").arg("64 1").query::<()>(&mut c).unwrap();

    eventually(20, "every forged lease taken back under a new epoch", || async {
        let mut c = redis.conn();
        (0..4).all(|s| {
            let v: Option<String> = redis::cmd("GET").arg(keys::shard_lease(s)).query(&mut c).ok().flatten();
            v.and_then(|v| v.split_once(' ').map(|(e, h)| (e.parse::<u64>().ok(), h.to_string())))
                .is_some_and(|(e, h)| e.is_some_and(|e| e > e0 && e < 999_999_999) && h != "mallory")
        })
    })
    .await;
    assert_eq!(lease(&mut c, 0).1, holder0, "the holder took its shard back under a new epoch");
    eventually(5, "forged leases counted", || async { garbage(&a, "shard").await + garbage(&b, "shard").await >= 4.0 })
        .await;
    eventually(5, "forged members counted", || async {
        garbage(&a, "member").await + garbage(&b, "member").await >= 2.0
    })
    .await;
    let members: Vec<String> = redis::cmd("ZRANGE").arg(keys::MEMBERS).arg(0).arg(-1).query(&mut c).unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    let info: BTreeMap<String, String> = redis::cmd("HGETALL").arg(keys::MEMBER_INFO).query(&mut c).unwrap();
    assert!(!info.contains_key("ghost"), "{info:?}");

    // The membership replaced by a string: removed, counted, rebuilt at the next syncs.
    redis::cmd("SET").arg(keys::MEMBERS).arg("garbage").query::<()>(&mut c).unwrap();
    eventually(5, "the membership rebuilt", || async {
        let members: Result<Vec<String>, _> =
            redis::cmd("ZRANGE").arg(keys::MEMBERS).arg(0).arg(-1).query(&mut redis.conn());
        members.is_ok_and(|m| m.len() == 2)
    })
    .await;
    watch.settled(10, 32).await;
    put_all(&b, &names, 0.4).await;
    all_at(&redis, &names, 2, 15).await;
    watch.check();
    plans_are_one_controllers(&redis, &names);
}

async fn garbage(o: &OriginApi, key: &str) -> f64 {
    o.metric(&format!("allot_control_garbage_total{{key=\"{key}\"}}")).await
}

/// Redis stops mid-round and stays down past the leases, then comes back (its
/// append-only file fsynced on every write, so no acknowledged grant is lost): the
/// origins stop acting on their own clocks, no shard is ever held twice, and they take
/// every shard back and solve changes again.
#[tokio::test]
async fn a_redis_outage_leaves_no_shard_held_twice_and_control_recovers() {
    let mut redis = RedisServer::start_with_aof();
    let watch = Watch::start();
    let (a, b) = (origin(&redis, &[]), origin(&redis, &[]));
    watch.add("a", &a);
    watch.add("b", &b);
    let names = placements(100);
    put_all(&a, &names, 0.5).await;
    watch.settled(20, 32).await;
    all_at(&redis, &names, 1, 20).await;

    // Mid-round: changes are being solved when Redis goes.
    put_all(&b, &names, 0.4).await;
    redis.stop();
    eventually(10, "every grant run out", || async {
        a.metric("allot_control_shards_held").await == 0.0 && b.metric("allot_control_shards_held").await == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(LEASE_MS)).await;
    redis.restart();
    watch.settled(20, 32).await;
    all_at(&redis, &names, 2, 20).await;
    assert!(a.metric("allot_control_sync_failures_total").await >= 1.0);
    watch.check();
    plans_are_one_controllers(&redis, &names);
}
