//! The cycle under a fake clock: time moves only when a test says so.

use super::*;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn config() -> ConsumerConfig {
    ConsumerConfig {
        consumer: "me".into(),
        read_count: 10,
        pending_count: 100,
        max_block: 500 * MS,
        claim_idle: Some(30 * SEC),
        check_every: 10 * SEC,
        forget_idle: None,
        retry: RetryPolicy::new(100 * MS, SEC),
    }
}

fn entry(id: &str) -> Entry {
    Entry { id: id.into(), fields: Some(HashMap::from([("f".to_string(), redis::Value::Int(1))])) }
}

fn entries(ids: &[&str]) -> Reply {
    Reply::Entries(ids.iter().map(|id| entry(id)).collect())
}

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

fn consumer(name: &str, pending: usize, idle: Duration) -> ConsumerInfo {
    ConsumerInfo { name: name.into(), pending, idle }
}

fn pending(id: &str, idle: Duration) -> PendingInfo {
    PendingInfo { id: id.into(), idle }
}

/// A consumer past group creation and a first check that found nothing, at `t0`.
fn reading(cfg: ConsumerConfig, t0: Instant) -> Consumer {
    let claims = cfg.claim_idle.is_some();
    let mut c = Consumer::new(cfg, t0);
    assert_eq!(c.poll(t0), Some(Command::CreateGroup));
    assert_eq!(c.handle(t0, Ok(Reply::GroupReady), 0.0), None);
    assert_eq!(c.poll(t0), Some(Command::ReadPending { after: "0".into(), count: 100 }));
    assert_eq!(c.handle(t0, Ok(entries(&[])), 0.0), None);
    if claims {
        assert_eq!(c.poll(t0), Some(Command::ListConsumers));
        assert_eq!(c.handle(t0, Ok(Reply::Consumers(vec![])), 0.0), None);
    }
    c
}

fn read_new(block: Duration) -> Command {
    Command::ReadNew { count: 10, block }
}

#[test]
fn the_group_is_created_first_and_an_existing_one_is_fine() {
    let t0 = Instant::now();
    let mut c = Consumer::new(config(), t0);
    assert_eq!(c.poll(t0), Some(Command::CreateGroup));
    assert_eq!(c.handle(t0, Err(Failure::BusyGroup), 0.0), None);
    assert_eq!(c.poll(t0), Some(Command::ReadPending { after: "0".into(), count: 100 }));
}

#[test]
fn a_deleted_stream_is_created_again_and_its_acks_dropped() {
    let t0 = Instant::now();
    let mut c = reading(config(), t0);
    assert_eq!(c.poll(t0), Some(read_new(500 * MS)));
    assert!(c.handle(t0, Ok(entries(&["1-0"])), 0.0).is_some());
    c.done(ids(&["1-0"]));
    assert_eq!(c.poll(t0), Some(Command::Ack { ids: ids(&["1-0"]) }));
    assert_eq!(c.handle(t0, Err(Failure::NoGroup), 0.0), None);
    assert!(!c.acking(), "the pending list went with the group");
    assert_eq!(c.poll(t0), Some(Command::Wait { until: t0 + 50 * MS }));
    assert_eq!(c.poll(t0 + 50 * MS), Some(Command::CreateGroup));
}

#[test]
fn own_pending_entries_come_as_one_batch_before_anything_new() {
    let t0 = Instant::now();
    let mut c = Consumer::new(config(), t0);
    c.poll(t0);
    c.handle(t0, Ok(Reply::GroupReady), 0.0);
    assert_eq!(c.poll(t0), Some(Command::ReadPending { after: "0".into(), count: 100 }));
    assert_eq!(c.handle(t0, Ok(entries(&["1-0", "2-0"])), 0.0), None);
    assert_eq!(c.poll(t0), Some(Command::ReadPending { after: "2-0".into(), count: 100 }));
    // A pending entry trimmed from the stream comes back with nil fields, in its place.
    let mut more = vec![Entry::trimmed("3-0"), entry("4-0")];
    assert_eq!(c.handle(t0, Ok(Reply::Entries(more.clone())), 0.0), None);
    assert_eq!(c.poll(t0), Some(Command::ReadPending { after: "4-0".into(), count: 100 }));
    let batch = c.handle(t0, Ok(entries(&[])), 0.0).expect("the pending entries");
    assert_eq!(batch.source, Source::Pending);
    let mut want = vec![entry("1-0"), entry("2-0")];
    want.append(&mut more);
    assert_eq!(batch.entries, want);
    assert!(batch.is_recovery());

    // Nothing is read while the batch is held: a consumer's pending entries are its one
    // unit of work.
    assert_eq!(c.poll(t0 + SEC), None);
    c.done(batch.ids());
    assert_eq!(c.poll(t0 + SEC), Some(Command::Ack { ids: ids(&["1-0", "2-0", "3-0", "4-0"]) }));
    assert_eq!(c.handle(t0 + SEC, Ok(Reply::Acked), 0.0), None);
    assert_eq!(c.poll(t0 + SEC), Some(Command::ListConsumers));
    c.handle(t0 + SEC, Ok(Reply::Consumers(vec![])), 0.0);
    assert_eq!(c.poll(t0 + SEC), Some(read_new(500 * MS)));
}

#[test]
fn checks_come_at_the_interval_and_only_with_an_empty_hand() {
    let t0 = Instant::now();
    let mut c = reading(config(), t0);
    for s in [0, 3] {
        let now = t0 + s * SEC;
        assert_eq!(c.poll(now), Some(read_new(500 * MS)), "at {s} s");
        c.handle(now, Ok(entries(&[])), 0.0);
    }
    assert_eq!(c.poll(t0 + 9 * SEC), Some(read_new(500 * MS)));
    let batch = c.handle(t0 + 9 * SEC, Ok(entries(&["5-0"])), 0.0).expect("new entries");
    assert_eq!(batch.source, Source::New);
    assert!(!batch.is_recovery());
    // Due, but the application holds new entries (a buffer): no check, more reads.
    let due = t0 + 10 * SEC;
    assert_eq!(c.poll(due), Some(read_new(500 * MS)));
    c.handle(due, Ok(entries(&[])), 0.0);
    c.done(batch.ids());
    assert_eq!(c.poll(due), Some(Command::Ack { ids: ids(&["5-0"]) }));
    c.handle(due, Ok(Reply::Acked), 0.0);
    assert_eq!(c.held(), 0);
    assert_eq!(c.poll(due), Some(Command::ReadPending { after: "0".into(), count: 100 }));
    c.handle(due, Ok(entries(&[])), 0.0);
    assert_eq!(c.poll(due), Some(Command::ListConsumers));
    c.handle(due, Ok(Reply::Consumers(vec![])), 0.0);
    assert_eq!(c.poll(due), Some(read_new(500 * MS)));
    c.handle(due, Ok(entries(&[])), 0.0);
    assert_eq!(c.poll(due + 9 * SEC), Some(read_new(500 * MS)), "the next check is an interval later");
}

#[test]
fn new_entries_are_read_between_checks_however_short_the_interval() {
    let t0 = Instant::now();
    let mut c = reading(ConsumerConfig { check_every: Duration::ZERO, ..config() }, t0);
    assert_eq!(c.poll(t0), Some(read_new(500 * MS)));
    c.handle(t0, Ok(entries(&[])), 0.0);
    assert_eq!(c.poll(t0), Some(Command::ReadPending { after: "0".into(), count: 100 }));
}

#[test]
fn claims_take_all_entries_of_silent_consumers_only() {
    let t0 = Instant::now();
    let mut c = Consumer::new(config(), t0);
    c.poll(t0);
    c.handle(t0, Ok(Reply::GroupReady), 0.0);
    c.poll(t0);
    c.handle(t0, Ok(entries(&[])), 0.0);
    assert_eq!(c.poll(t0), Some(Command::ListConsumers));
    let listed = vec![
        consumer("me", 4, 60 * SEC),
        consumer("busy", 3, 29 * SEC),
        consumer("drained", 0, 60 * SEC),
        consumer("gone", 3, 30 * SEC),
        consumer("stuck", 2, 45 * SEC),
    ];
    c.handle(t0, Ok(Reply::Consumers(listed)), 0.0);

    assert_eq!(c.poll(t0), Some(Command::ListPending { consumer: "gone".into(), count: 3 }));
    let listed = vec![pending("1-0", 40 * SEC), pending("2-0", 31 * SEC), pending("3-0", 30 * SEC)];
    c.handle(t0, Ok(Reply::Pending(listed)), 0.0);
    let claim = Command::Claim { ids: ids(&["1-0", "2-0", "3-0"]), min_idle: 30 * SEC };
    assert_eq!(c.poll(t0), Some(claim));
    // The first entry was trimmed from the stream: XCLAIM leaves it out.
    let batch = c.handle(t0, Ok(entries(&["2-0", "3-0"])), 0.0).expect("the claimed entries");
    assert_eq!(batch.source, Source::Claimed { from: "gone".into() });
    assert_eq!(batch.entries, vec![Entry::trimmed("1-0"), entry("2-0"), entry("3-0")]);
    assert_eq!(c.poll(t0), None, "the claimed set is done before the next one");
    c.done(batch.ids());
    assert_eq!(c.poll(t0), Some(Command::Ack { ids: ids(&["1-0", "2-0", "3-0"]) }));
    c.handle(t0, Ok(Reply::Acked), 0.0);

    // One entry delivered recently: the consumer is alive, none of its entries is taken.
    assert_eq!(c.poll(t0), Some(Command::ListPending { consumer: "stuck".into(), count: 2 }));
    c.handle(t0, Ok(Reply::Pending(vec![pending("4-0", 45 * SEC), pending("5-0", 29 * SEC)])), 0.0);
    assert_eq!(c.poll(t0), Some(read_new(500 * MS)));
}

#[test]
fn a_claim_another_consumer_won_delivers_nothing() {
    let t0 = Instant::now();
    let mut c = Consumer::new(config(), t0);
    for reply in [Reply::GroupReady, entries(&[]), Reply::Consumers(vec![consumer("gone", 1, 60 * SEC)])] {
        c.poll(t0);
        c.handle(t0, Ok(reply), 0.0);
    }
    c.poll(t0);
    c.handle(t0, Ok(Reply::Pending(vec![pending("1-0", 60 * SEC)])), 0.0);
    assert!(matches!(c.poll(t0), Some(Command::Claim { .. })));
    assert_eq!(c.handle(t0, Ok(entries(&[])), 0.0), None);
    assert_eq!(c.poll(t0), Some(read_new(500 * MS)));
}

#[test]
fn without_a_claim_time_nothing_is_claimed() {
    let t0 = Instant::now();
    let mut c = reading(ConsumerConfig { claim_idle: None, ..config() }, t0);
    assert_eq!(c.poll(t0), Some(read_new(500 * MS)));
}

#[test]
fn failures_back_off_with_jitter_and_a_success_resets() {
    let t0 = Instant::now();
    let mut c = reading(config(), t0);
    let mut now = t0;
    // Ceilings 100, 200, 400 ms; the wait is between half the ceiling and the ceiling.
    // A failed read of new entries is followed by a read of own pending ones (see
    // `a_lost_read_reply_is_recovered_at_once`), retried as it was.
    let own = Command::ReadPending { after: "0".into(), count: 100 };
    for (i, (unit, wait)) in [(0.0, 50 * MS), (1.0, 200 * MS), (0.5, 300 * MS)].into_iter().enumerate() {
        assert_eq!(c.poll(now), Some(if i == 0 { read_new(500 * MS) } else { own.clone() }));
        assert_eq!(c.handle(now, Err(Failure::Other), unit), None);
        assert_eq!(c.poll(now), Some(Command::Wait { until: now + wait }));
        assert_eq!(c.poll(now + wait - MS), Some(Command::Wait { until: now + wait }));
        now += wait;
    }
    assert_eq!(c.poll(now), Some(own));
    c.handle(now, Ok(entries(&[])), 0.0);
    assert_eq!(c.poll(now), Some(Command::ListConsumers));
    c.handle(now, Ok(Reply::Consumers(vec![])), 0.0);
    assert_eq!(c.poll(now), Some(read_new(500 * MS)));
    c.handle(now, Err(Failure::Other), 0.0);
    assert_eq!(c.poll(now), Some(Command::Wait { until: now + 50 * MS }), "back to the shortest wait");
}

#[test]
fn own_pending_reads_are_retried_from_where_they_stopped() {
    let t0 = Instant::now();
    let mut c = Consumer::new(config(), t0);
    c.poll(t0);
    c.handle(t0, Ok(Reply::GroupReady), 0.0);
    c.poll(t0);
    c.handle(t0, Ok(entries(&["1-0"])), 0.0);
    assert_eq!(c.poll(t0), Some(Command::ReadPending { after: "1-0".into(), count: 100 }));
    c.handle(t0, Err(Failure::Other), 0.0);
    let later = t0 + 50 * MS;
    assert_eq!(c.poll(later), Some(Command::ReadPending { after: "1-0".into(), count: 100 }));
    let batch = c.handle(later, Ok(entries(&[])), 0.0).expect("the pending entries");
    assert_eq!(batch.entries, vec![entry("1-0")]);
}

#[test]
fn a_failed_claim_is_left_to_the_next_check() {
    let t0 = Instant::now();
    let mut c = Consumer::new(config(), t0);
    c.poll(t0);
    c.handle(t0, Ok(Reply::GroupReady), 0.0);
    c.poll(t0);
    c.handle(t0, Ok(entries(&[])), 0.0);
    assert_eq!(c.poll(t0), Some(Command::ListConsumers));
    c.handle(t0, Err(Failure::Other), 0.0);
    assert_eq!(c.poll(t0 + 50 * MS), Some(read_new(500 * MS)));
}

#[test]
fn a_fresh_ack_goes_out_during_a_backoff_and_a_failed_one_waits() {
    let t0 = Instant::now();
    let mut c = reading(config(), t0);
    c.poll(t0);
    let batch = c.handle(t0, Ok(entries(&["1-0"])), 0.0).expect("new entries");
    c.poll(t0);
    c.handle(t0, Err(Failure::Other), 0.0);
    c.done(batch.ids());
    assert_eq!(c.poll(t0), Some(Command::Ack { ids: ids(&["1-0"]) }), "say, the last command of a shutdown");
    c.handle(t0, Err(Failure::Other), 0.0);
    let until = t0 + 100 * MS;
    assert_eq!(c.poll(t0), Some(Command::Wait { until }));
    assert_eq!(c.poll(until), Some(Command::Ack { ids: ids(&["1-0"]) }));
    c.handle(until, Ok(Reply::Acked), 0.0);
    assert!(!c.acking());
    // The failed read may have lost entries: own pending ones after the last one given
    // are read first.
    assert_eq!(c.poll(until), Some(Command::ReadPending { after: "1-0".into(), count: 100 }));
}

#[test]
fn reads_block_no_longer_than_the_wake_up_time() {
    let t0 = Instant::now();
    let mut c = reading(config(), t0);
    c.wake_by(Some(t0 + 200 * MS));
    assert_eq!(c.poll(t0), Some(read_new(200 * MS)));
    c.handle(t0, Ok(entries(&[])), 0.0);
    assert_eq!(c.poll(t0 + SEC), Some(read_new(MS)), "past the wake-up time: a minimal block, never BLOCK 0");
    c.handle(t0 + SEC, Ok(entries(&[])), 0.0);
    c.wake_by(Some(t0 + 5 * SEC));
    assert_eq!(c.poll(t0 + SEC), Some(read_new(500 * MS)));
}

#[test]
fn a_reply_of_the_wrong_shape_counts_as_a_failure() {
    let t0 = Instant::now();
    let mut c = reading(config(), t0);
    c.poll(t0);
    assert_eq!(c.handle(t0, Ok(Reply::Acked), 0.0), None);
    assert_eq!(c.poll(t0), Some(Command::Wait { until: t0 + 50 * MS }));
    assert_eq!(c.handle(t0, Ok(entries(&["1-0"])), 0.0), None, "a reply to a wait is ignored");
}

#[test]
fn gone_consumers_with_nothing_pending_are_forgotten_before_claims() {
    let t0 = Instant::now();
    let cfg = ConsumerConfig { forget_idle: Some(600 * SEC), ..config() };
    let mut c = Consumer::new(cfg, t0);
    assert_eq!(c.poll(t0), Some(Command::CreateGroup));
    c.handle(t0, Ok(Reply::GroupReady), 0.0);
    assert_eq!(c.poll(t0), Some(Command::ReadPending { after: "0".into(), count: 100 }));
    c.handle(t0, Ok(entries(&[])), 0.0);
    assert_eq!(c.poll(t0), Some(Command::ListConsumers));
    let list = vec![
        consumer("me", 0, 700 * SEC),
        consumer("gone", 0, 700 * SEC),
        consumer("quiet", 0, 10 * SEC),
        consumer("dead", 2, 700 * SEC),
    ];
    c.handle(t0, Ok(Reply::Consumers(list)), 0.0);
    // Only the other consumer that is both empty and idle past the horizon; one with
    // entries is claimed first (and forgotten at a later check, once empty).
    assert_eq!(c.poll(t0), Some(Command::Forget { consumer: "gone".into(), min_idle: 600 * SEC }));
    assert_eq!(c.handle(t0, Ok(Reply::Forgotten), 0.0), None);
    assert_eq!(c.poll(t0), Some(Command::ListPending { consumer: "dead".into(), count: 2 }));
}

#[test]
fn a_failed_forget_is_left_to_the_next_check() {
    let t0 = Instant::now();
    let cfg = ConsumerConfig { forget_idle: Some(SEC), ..config() };
    let mut c = Consumer::new(cfg, t0);
    c.poll(t0);
    c.handle(t0, Ok(Reply::GroupReady), 0.0);
    c.poll(t0);
    c.handle(t0, Ok(entries(&[])), 0.0);
    c.poll(t0);
    c.handle(t0, Ok(Reply::Consumers(vec![consumer("gone", 0, 2 * SEC)])), 0.0);
    assert!(matches!(c.poll(t0), Some(Command::Forget { .. })));
    c.handle(t0, Err(Failure::Other), 0.0);
    let later = t0 + SEC;
    assert_eq!(c.poll(later), Some(read_new(500 * MS)));
}

#[test]
fn a_lost_read_reply_is_recovered_at_once() {
    // Redis delivered 1-0 and 2-0 to this consumer, and the reply was lost with the
    // connection: they are pending, and the next read of own pending entries finds them
    // well before the interval (10 s) is up.
    let t0 = Instant::now();
    let mut c = reading(config(), t0);
    assert_eq!(c.poll(t0), Some(read_new(500 * MS)));
    assert_eq!(c.handle(t0, Err(Failure::Other), 0.0), None);
    let t1 = t0 + 50 * MS;
    assert_eq!(c.poll(t1), Some(Command::ReadPending { after: "0".into(), count: 100 }));
    assert_eq!(c.handle(t1, Ok(entries(&["1-0", "2-0"])), 0.0), None);
    assert_eq!(c.poll(t1), Some(Command::ReadPending { after: "2-0".into(), count: 100 }));
    let batch = c.handle(t1, Ok(entries(&[])), 0.0).expect("the lost entries");
    assert_eq!((&batch.source, batch.ids()), (&Source::Pending, ids(&["1-0", "2-0"])));
    assert_eq!(c.poll(t1), None, "nothing is read while the recovery batch is held");
    c.done(batch.ids());
    assert_eq!(c.poll(t1), Some(Command::Ack { ids: ids(&["1-0", "2-0"]) }));
}

#[test]
fn a_lost_read_reply_while_holding_new_entries_is_added_to_the_hand() {
    // Holding 1-0 (a buffer not yet flushed), a read whose reply is lost delivered 2-0
    // and 3-0: they are read from the pending list after 1-0 and added to the hand as
    // new, so the pending list is again what the hand holds.
    let t0 = Instant::now();
    let mut c = reading(config(), t0);
    assert_eq!(c.poll(t0), Some(read_new(500 * MS)));
    assert!(c.handle(t0, Ok(entries(&["1-0"])), 0.0).is_some());
    assert_eq!(c.poll(t0), Some(read_new(500 * MS)));
    assert_eq!(c.handle(t0, Err(Failure::Other), 0.0), None);
    let t1 = t0 + 50 * MS;
    assert_eq!(c.poll(t1), Some(Command::ReadPending { after: "1-0".into(), count: 100 }));
    assert_eq!(c.handle(t1, Ok(entries(&["2-0", "3-0"])), 0.0), None);
    assert_eq!(c.poll(t1), Some(Command::ReadPending { after: "3-0".into(), count: 100 }));
    let batch = c.handle(t1, Ok(entries(&[])), 0.0).expect("the lost entries");
    assert_eq!((&batch.source, batch.ids()), (&Source::New, ids(&["2-0", "3-0"])));
    assert_eq!(c.held(), 3);
    // Reading on, as with any new entries; a second lost read starts after 3-0.
    assert_eq!(c.poll(t1), Some(read_new(500 * MS)));
    assert_eq!(c.handle(t1, Err(Failure::Other), 0.0), None);
    let t2 = t1 + 50 * MS;
    assert_eq!(c.poll(t2), Some(Command::ReadPending { after: "3-0".into(), count: 100 }));
    assert_eq!(c.handle(t2, Ok(entries(&[])), 0.0), None, "nothing was lost this time");
    assert_eq!(c.poll(t2), Some(read_new(500 * MS)));
    assert!(c.handle(t2, Ok(entries(&[])), 0.0).is_some_and(|b| b.entries.is_empty()));
    c.done(ids(&["1-0", "2-0", "3-0"]));
    assert_eq!(c.poll(t2), Some(Command::Ack { ids: ids(&["1-0", "2-0", "3-0"]) }));
}

#[test]
fn a_lost_claim_reply_is_recovered_before_anything_new_is_read() {
    // The claim moved 5-0 to this consumer, and the reply was lost: its own pending
    // entries are read at once, while the hand is still empty, not after new entries.
    let t0 = Instant::now();
    let mut c = reading(config(), t0);
    let t1 = t0 + 40 * SEC;
    assert_eq!(c.poll(t1), Some(read_new(500 * MS)));
    assert!(c.handle(t1, Ok(entries(&[])), 0.0).is_some());
    assert_eq!(c.poll(t1), Some(Command::ReadPending { after: "0".into(), count: 100 }));
    assert_eq!(c.handle(t1, Ok(entries(&[])), 0.0), None);
    assert_eq!(c.poll(t1), Some(Command::ListConsumers));
    assert_eq!(c.handle(t1, Ok(Reply::Consumers(vec![consumer("dead", 1, 60 * SEC)])), 0.0), None);
    assert!(matches!(c.poll(t1), Some(Command::ListPending { .. })));
    assert_eq!(c.handle(t1, Ok(Reply::Pending(vec![pending("5-0", 60 * SEC)])), 0.0), None);
    assert!(matches!(c.poll(t1), Some(Command::Claim { .. })));
    assert_eq!(c.handle(t1, Err(Failure::Other), 0.0), None);
    let t2 = t1 + SEC;
    assert_eq!(c.poll(t2), Some(Command::ReadPending { after: "0".into(), count: 100 }));
    assert_eq!(c.handle(t2, Ok(entries(&["5-0"])), 0.0), None);
    assert_eq!(c.poll(t2), Some(Command::ReadPending { after: "5-0".into(), count: 100 }));
    let batch = c.handle(t2, Ok(entries(&[])), 0.0).expect("the claimed entry");
    assert_eq!((&batch.source, batch.ids()), (&Source::Pending, ids(&["5-0"])));
}
