//! The outbox under a fake clock: the time is a number the test moves, the origin's
//! answers are the test's choice.

use allot_core::{CampaignId, EventKind, PlacementId, RequestId};

use super::*;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const KEY: &[u8] = b"test-ingest-key-0123456789abcdef";

fn settings() -> Settings {
    Settings {
        key: KEY.to_vec(),
        batch_max: 10,
        batch_max_bytes: BATCH_MAX_BYTES,
        batch_age_ms: 100,
        max_bytes: MAX_BYTES,
        max_age_ms: MAX_AGE_MS,
        max_in_flight: MAX_IN_FLIGHT,
        send_timeout_ms: 5_000,
    }
}

fn event(i: usize) -> Event {
    Event {
        kind: EventKind::Allocation,
        event_time_ms: 1_700_000_000_000,
        request_id: RequestId::parse(format!("r{i}")).expect("id"),
        placement: PlacementId::parse("home").expect("placement"),
        ad_id: None,
        plan_version: 1,
        sample_rate: 1.0,
        eligible: Vec::new(),
        platform: None,
        country: None,
        colo: None,
        unreported: false,
    }
}

fn ids(sends: &[Send]) -> Vec<String> {
    sends
        .iter()
        .flat_map(|s| EventBatch::parse(s.body.as_bytes()).expect("a batch").events)
        .map(|e| e.request_id.as_str().to_string())
        .collect()
}

#[test]
fn a_full_batch_is_due_at_once_and_a_partial_one_after_its_age() {
    let mut o = Outbox::new(settings());
    for i in 0..13 {
        assert!(o.push(event(i), 1_000));
    }
    let (sends, _) = o.poll(1_000);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].events, 10);
    assert_eq!(o.next_wake(1_000), Some(1_100), "the three others are sealed at 100 ms");
    assert!(o.poll(1_099).0.is_empty());
    let (later, _) = o.poll(1_100);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].events, 3);
    let sig = signature::sign(KEY, 1, sends[0].body.as_bytes());
    assert_eq!(&*sends[0].signature, sig, "signed with the key at the sealing time");
    for s in [&sends[0], &later[0]] {
        assert_eq!(o.settle(s.id, Outcome::Acked, 1_200, 0.5), Note::Nothing);
    }
    let c = o.counters();
    assert_eq!((c.queued, c.sent, c.waiting, c.waiting_bytes), (13, 13, 0, 0));
    assert_eq!(o.next_wake(1_200), None, "nothing waits");
}

/// A thousand events naming 64 long campaign ids are over a megabyte: past the
/// origin's body limit, which refuses the whole body. Batches are sealed by bytes too.
#[test]
fn batches_are_sealed_before_their_body_passes_the_byte_bound_and_carry_every_event() {
    let cap = 64 * 1024;
    let mut o = Outbox::new(Settings { batch_max: 1_000, batch_max_bytes: cap, ..settings() });
    let eligible: Vec<CampaignId> = (0..64).map(|c| CampaignId::parse(format!("{c:064}")).expect("id")).collect();
    for i in 0..1_000 {
        assert!(o.push(Event { eligible: eligible.clone(), ..event(i) }, 1_000));
    }
    let mut sends = Vec::new();
    for now in 1_100..1_300 {
        for send in o.poll(now).0 {
            assert_eq!(o.settle(send.id, Outcome::Acked, now, 0.5), Note::Nothing);
            sends.push(send);
        }
    }
    assert!(sends.len() > 60, "{} batches for about 4.3 MB", sends.len());
    for s in &sends {
        assert!(s.body.len() <= cap, "a body of {} bytes", s.body.len());
    }
    for s in &sends[..sends.len() - 1] {
        assert!(s.body.len() > cap - 5_000, "full but for less than an event: {}", s.body.len());
    }
    let want: Vec<String> = (0..1_000).map(|i| format!("r{i}")).collect();
    assert_eq!(ids(&sends), want, "every event once, in order");
}

#[test]
fn an_origin_outage_delays_every_batch_and_loses_none() {
    let mut o = Outbox::new(settings());
    let mut now = 0;
    let mut delivered = Vec::new();
    let mut bodies: std::collections::HashMap<u64, (Rc<str>, Rc<str>)> = Default::default();
    let mut probes_during_outage = 0;
    // 60 s of outage with 50 events a second, then the origin is back.
    let mut next_event = 0;
    while now <= 90_000 {
        if now <= 60_000 && now % 20 == 0 {
            o.push(event(next_event), now);
            next_event += 1;
        }
        let (sends, notes) = o.poll(now);
        assert!(notes.is_empty());
        for s in sends {
            let first = bodies.entry(s.id).or_insert((s.body.clone(), s.signature.clone())).clone();
            assert_eq!((first.0, first.1), (s.body.clone(), s.signature.clone()), "the same bytes and signature");
            if now < 60_000 {
                probes_during_outage += 1;
                o.settle(s.id, Outcome::Transient("connection refused".into()), now + 5, 0.5);
            } else {
                delivered.extend(ids(std::slice::from_ref(&s)));
                o.settle(s.id, Outcome::Acked, now + 5, 0.5);
            }
        }
        now += 10;
    }
    let c = o.counters();
    assert_eq!(c.sent, next_event as u64);
    assert_eq!(delivered.len(), next_event, "every event once");
    let unique: std::collections::BTreeSet<_> = delivered.iter().collect();
    assert_eq!(unique.len(), next_event, "and none twice");
    assert_eq!((c.failed, c.dropped, c.expired, c.waiting), (0, 0, 0, 0));
    assert!(c.retried_batches > 0);
    // Capped exponential backoff: a few probes a minute, not one per batch per poll.
    assert!((4..=20).contains(&probes_during_outage), "{probes_during_outage} probes in 60 s");
}

#[test]
fn the_backoff_doubles_to_its_cap_and_one_success_resets_it() {
    let mut o = Outbox::new(Settings { batch_max: 1, ..settings() });
    o.push(event(0), 0);
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 0..9 {
        let (sends, _) = o.poll(now);
        assert_eq!(sends.len(), 1);
        let Note::Retrying { retry_at_ms, .. } = o.settle(sends[0].id, Outcome::Transient("503".into()), now, 1.0)
        else {
            panic!("a retry")
        };
        waits.push(retry_at_ms - now);
        assert!(o.poll(retry_at_ms - 1).0.is_empty(), "nothing before the retry time");
        now = retry_at_ms;
    }
    assert_eq!(waits, [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
    let (sends, _) = o.poll(now);
    o.settle(sends[0].id, Outcome::Acked, now, 1.0);
    o.push(event(1), now);
    let (sends, _) = o.poll(now);
    let Note::Retrying { retry_at_ms, .. } = o.settle(sends[0].id, Outcome::Transient("503".into()), now, 1.0) else {
        panic!("a retry")
    };
    assert_eq!(retry_at_ms - now, 500, "back to the shortest wait");
}

#[test]
fn while_backing_off_one_probe_goes_out_and_after_a_success_up_to_the_cap() {
    let mut o = Outbox::new(Settings { batch_max: 1, ..settings() });
    for i in 0..10 {
        o.push(event(i), 0);
    }
    let (first, _) = o.poll(0);
    assert_eq!(first.len(), MAX_IN_FLIGHT);
    for s in &first {
        o.settle(s.id, Outcome::Transient("timeout".into()), 10, 0.0);
    }
    let (probe, _) = o.poll(1_000);
    assert_eq!(probe.len(), 1, "one probe");
    o.settle(probe[0].id, Outcome::Acked, 1_010, 0.0);
    let (rest, _) = o.poll(1_010);
    assert_eq!(rest.len(), MAX_IN_FLIGHT);
}

#[test]
fn a_full_outbox_drops_new_events_and_counts_them() {
    let mut o = Outbox::new(Settings { batch_max: 5, max_bytes: 1_000, ..settings() });
    let mut accepted = 0;
    for i in 0..100 {
        accepted += usize::from(o.push(event(i), 0));
    }
    let c = o.counters();
    assert!((5..100).contains(&accepted), "{accepted}");
    assert_eq!(c.dropped, 100 - accepted as u64);
    assert_eq!(c.queued, accepted as u64);
    assert!(c.waiting_bytes >= 1_000);
    // Space again once batches are acknowledged.
    let (sends, _) = o.poll(0);
    for s in sends {
        o.settle(s.id, Outcome::Acked, 0, 0.0);
    }
    assert!(o.push(event(1_000), 1));
}

#[test]
fn a_refused_batch_is_let_go_and_counted() {
    let mut o = Outbox::new(Settings { batch_max: 2, ..settings() });
    o.push(event(0), 0);
    o.push(event(1), 0);
    let (sends, _) = o.poll(0);
    let note = o.settle(sends[0].id, Outcome::Refused("origin answered 400".into()), 5, 0.0);
    assert_eq!(note, Note::Lost { events: 2, why: "origin answered 400".into() });
    let c = o.counters();
    assert_eq!((c.failed, c.failed_batches, c.waiting), (2, 1, 0));
    assert!(o.poll(10_000).0.is_empty(), "not sent again");
}

#[test]
fn a_batch_too_old_for_its_signature_expires_and_is_counted() {
    let mut o = Outbox::new(Settings { batch_max: 1, ..settings() });
    o.push(event(0), 0);
    let mut now = 0;
    while now < MAX_AGE_MS {
        let (sends, notes) = o.poll(now);
        assert!(notes.is_empty());
        for s in sends {
            o.settle(s.id, Outcome::Transient("refused".into()), now, 0.0);
        }
        now += 100;
    }
    let (sends, notes) = o.poll(MAX_AGE_MS);
    assert!(sends.is_empty());
    assert!(matches!(&notes[..], [Note::Lost { events: 1, .. }]), "{notes:?}");
    let c = o.counters();
    assert_eq!((c.expired, c.failed_batches, c.waiting), (1, 1, 0));
}

#[test]
fn a_send_never_settled_is_due_again_after_its_deadline() {
    let mut o = Outbox::new(Settings { batch_max: 1, ..settings() });
    o.push(event(0), 0);
    let (sends, _) = o.poll(0);
    assert_eq!(sends.len(), 1);
    assert!(o.poll(5_999).0.is_empty(), "still out");
    assert_eq!(o.next_wake(10), Some(6_000));
    let (again, _) = o.poll(6_000);
    assert_eq!(again, sends, "the same bytes, once presumed lost");
    // Both answers arrive: the second changes nothing.
    o.settle(sends[0].id, Outcome::Acked, 6_010, 0.0);
    assert_eq!(o.settle(again[0].id, Outcome::Acked, 6_020, 0.0), Note::Nothing);
    assert_eq!(o.counters().sent, 1);
}

#[test]
fn a_batch_whose_sends_are_all_cut_off_still_expires() {
    let mut o = Outbox::new(Settings { batch_max: 1, ..settings() });
    o.push(event(0), 0);
    // Every send is handed out and never settled (its task is cancelled).
    let mut now = 0;
    while now < MAX_AGE_MS {
        let (_, notes) = o.poll(now);
        assert!(notes.is_empty());
        now += 1_000;
    }
    // At its age the last send is past its deadline too: the batch expires, not resent.
    let (sends, notes) = o.poll(MAX_AGE_MS + 6_000);
    assert!(sends.is_empty(), "{sends:?}");
    assert!(matches!(&notes[..], [Note::Lost { events: 1, .. }]), "{notes:?}");
    assert_eq!((o.counters().expired, o.counters().waiting), (1, 0));
}

#[test]
fn a_batch_with_a_send_still_out_waits_for_its_answer_past_its_age() {
    let mut o = Outbox::new(Settings { batch_max: 1, ..settings() });
    o.push(event(0), 0);
    assert_eq!(o.poll(0).0.len(), 1);
    // Sent again just before its age (the first send presumed lost): it may yet be
    // acknowledged, so the batch waits past its age for that answer.
    assert_eq!(o.poll(MAX_AGE_MS - 2_000).0.len(), 1);
    let (sends, notes) = o.poll(MAX_AGE_MS + 1_000);
    assert!(sends.is_empty() && notes.is_empty(), "{sends:?} {notes:?}");
    // Its deadline passed unanswered: expired, not sent again.
    let (sends, notes) = o.poll(MAX_AGE_MS + 4_000);
    assert!(sends.is_empty(), "{sends:?}");
    assert!(matches!(&notes[..], [Note::Lost { events: 1, .. }]), "{notes:?}");
}

#[test]
fn losses_are_reported_once_with_the_next_batch_sealed() {
    let mut o = Outbox::new(Settings { batch_max: 5, max_bytes: 1_000, ..settings() });
    for i in 0..20 {
        o.push(event(i), 0);
    }
    let dropped = o.counters().dropped;
    assert!(dropped > 0);
    let (sends, _) = o.poll(0);
    assert!(sends.iter().all(|s| s.dropped == 0), "sealed before the drops");
    // The first batch is refused: its events are lost too, and reported.
    o.settle(sends[0].id, Outcome::Refused("400".into()), 1, 0.0);
    for s in &sends[1..] {
        o.settle(s.id, Outcome::Acked, 1, 0.0);
    }
    for i in 20..25 {
        o.push(event(i), 2);
    }
    let (next, _) = o.poll(2);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].dropped, dropped + sends[0].events as u64, "every loss so far, once");
    // Retries carry the same report (the origin counts it when it stores the body).
    o.settle(next[0].id, Outcome::Transient("503".into()), 3, 0.0);
    let (again, _) = o.poll(10_000);
    assert_eq!(again[0].dropped, next[0].dropped);
    o.settle(again[0].id, Outcome::Acked, 10_001, 0.0);
    o.push(event(99), 10_002);
    let (after, _) = o.poll(20_000);
    assert_eq!(after[0].dropped, 0, "reported once");
}
