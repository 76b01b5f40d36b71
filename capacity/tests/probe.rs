//! The measurement's probes on a real `redis-server` fail loudly when what they read
//! cannot be trusted: consumers that did not drain, a group that is missing, counters
//! reset by a restart between two readings.

use std::time::Duration;

use allot_capacity::probe;
use allot_core::contract::stream;
use allot_testkit::redis::RedisServer;

fn group(conn: &mut redis::Connection, name: &str) {
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream::EVENTS)
        .arg(name)
        .arg("0")
        .arg("MKSTREAM")
        .query::<()>(conn)
        .expect("XGROUP CREATE");
}

#[test]
fn undrained_or_missing_consumer_groups_fail_the_reading() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    group(&mut conn, stream::AGGREGATOR_GROUP);
    let missing = probe::wait_drained(&mut conn, Duration::from_millis(200)).unwrap_err().to_string();
    assert!(missing.contains("archiver does not exist"), "{missing}");

    group(&mut conn, stream::ARCHIVER_GROUP);
    probe::wait_drained(&mut conn, Duration::from_millis(200)).expect("an empty stream is drained");
    let id: String = redis::cmd("XADD").arg(stream::EVENTS).arg("*").arg("p").arg("x").query(&mut conn).unwrap();
    let unread = probe::wait_drained(&mut conn, Duration::from_millis(200)).unwrap_err().to_string();
    assert!(unread.contains("did not drain") && unread.contains("lag Some(1)"), "{unread}");

    // Read by both groups but acknowledged by one: pending, not drained.
    for g in [stream::AGGREGATOR_GROUP, stream::ARCHIVER_GROUP] {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(g)
            .arg("c")
            .arg("STREAMS")
            .arg(stream::EVENTS)
            .arg(">")
            .query(&mut conn)
            .unwrap();
    }
    let _: u64 =
        redis::cmd("XACK").arg(stream::EVENTS).arg(stream::AGGREGATOR_GROUP).arg(&id).query(&mut conn).unwrap();
    let pending = probe::wait_drained(&mut conn, Duration::from_millis(200)).unwrap_err().to_string();
    assert!(pending.contains("group archiver") && pending.contains("pending Some(1)"), "{pending}");
    let _: u64 = redis::cmd("XACK").arg(stream::EVENTS).arg(stream::ARCHIVER_GROUP).arg(&id).query(&mut conn).unwrap();
    probe::wait_drained(&mut conn, Duration::from_secs(2)).expect("drained once both acknowledged");
}

#[test]
fn a_redis_restart_between_two_readings_is_refused() {
    let mut redis = RedisServer::start();
    let mut conn = redis.conn();
    for i in 0..5 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut conn).unwrap();
    }
    let before = probe::command_counts(&mut conn).expect("INFO commandstats");
    assert!(before.get("set").is_some_and(|&n| n >= 5), "{before:?}");
    redis.restart();
    let mut conn = redis.conn();
    let after = probe::command_counts(&mut conn).expect("INFO commandstats");
    let err = probe::delta(&before, &after).unwrap_err().to_string();
    assert!(err.contains("restarted"), "{err}");
}
