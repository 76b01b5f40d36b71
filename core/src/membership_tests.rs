//! The membership machine against a model of the Redis script (`origin/src/shards.rs`),
//! on a fake clock: several origins, each fed the model's answers, and after every tick
//! the one invariant that matters: no shard is held by two origins at once.

use super::*;

const TTL: u64 = 1_500;
const SHARDS: u32 = 16;
const TICK: u64 = 50;

/// What Redis keeps, and what the sync script does with it.
#[derive(Debug, Default)]
struct Redis {
    counter: u64,
    /// id → (expiry, shards, since)
    members: BTreeMap<String, (u64, u32, u64)>,
    /// shard → (epoch, holder, expiry)
    shards: BTreeMap<u32, (u64, String, u64)>,
}

impl Redis {
    fn sync(&mut self, now: u64, me: &str, shards: u32, req: &SyncRequest) -> SyncReply {
        self.members.retain(|_, m| m.0 > now);
        self.shards.retain(|_, s| s.2 > now);
        if req.leave {
            self.members.remove(me);
        } else {
            let since = self.members.get(me).map_or(now, |m| m.2);
            self.members.insert(me.to_string(), (now + TTL, shards, since));
        }
        let outcomes = req
            .ops
            .iter()
            .map(|op| match *op {
                ShardOp::Release { shard, epoch } => {
                    if self.shards.get(&shard).is_some_and(|s| s.0 == epoch && s.1 == me) {
                        self.shards.remove(&shard);
                    }
                    OpOutcome::Released
                }
                ShardOp::Ask { shard, held, reissue_from } => match self.shards.get_mut(&shard) {
                    Some(s) if s.1 == me && Some(s.0) == held => {
                        if let Some(from) = reissue_from {
                            self.counter = self.counter.max(from) + 1;
                            s.0 = self.counter;
                        }
                        s.2 = now + TTL;
                        OpOutcome::Granted { epoch: s.0 }
                    }
                    // Its own reissue, whose reply was lost.
                    Some(s) if s.1 == me && reissue_from.is_some_and(|from| s.0 > from) => {
                        s.2 = now + TTL;
                        OpOutcome::Granted { epoch: s.0 }
                    }
                    Some(s) if s.1 != me => OpOutcome::Refused,
                    _ => {
                        self.counter += 1;
                        self.shards.insert(shard, (self.counter, me.to_string(), now + TTL));
                        OpOutcome::Granted { epoch: self.counter }
                    }
                },
            })
            .collect();
        let members =
            self.members.iter().map(|(id, m)| Member { id: id.clone(), shards: m.1, since_ms: m.2 }).collect();
        SyncReply { now_ms: now, members, outcomes }
    }
}

/// How an origin reaches Redis at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Requests get no answer (a partition, Redis down): the shell times them out.
    Down,
    /// The process is stopped: nothing runs, no time passes for it (a crash, a pause).
    Stopped,
}

#[derive(Debug)]
struct Origin {
    m: Membership,
    shards: u32,
    link: Link,
    busy: BTreeSet<u32>,
    changes: Vec<Change>,
}

#[derive(Debug, Default)]
struct World {
    now: u64,
    redis: Redis,
    origins: BTreeMap<&'static str, Origin>,
}

impl World {
    fn start(&mut self, id: &'static str) {
        self.start_with(id, SHARDS);
    }

    fn start_with(&mut self, id: &'static str, shards: u32) {
        let config = MembershipConfig { shards, lease: LeaseConfig::new(TTL) };
        let o =
            Origin { m: Membership::new(id, config), shards, link: Link::Up, busy: BTreeSet::new(), changes: vec![] };
        self.origins.insert(id, o);
    }

    fn link(&mut self, id: &str, link: Link) {
        self.origins.get_mut(id).unwrap().link = link;
    }

    fn tick(&mut self) {
        self.now += TICK;
        let now = self.now;
        for (id, o) in &mut self.origins {
            if o.link == Link::Stopped {
                continue;
            }
            o.changes.extend(o.m.expire(now));
            if let Some(req) = o.m.poll(now, &o.busy) {
                let reply = (o.link == Link::Up).then(|| self.redis.sync(now, id, o.shards, &req));
                o.changes.extend(o.m.on_reply(now, reply));
            }
        }
        self.check();
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms / TICK {
            self.tick();
        }
    }

    /// No shard held by two origins that are running; and what an origin believes it
    /// holds, Redis agrees with (under that epoch, or one above it: a reissue whose
    /// reply was lost, while the origin acts under the older one, which every fence
    /// refuses).
    fn check(&self) {
        let mut holders: BTreeMap<u32, &str> = BTreeMap::new();
        for (id, o) in &self.origins {
            if o.link == Link::Stopped {
                continue;
            }
            for (s, fence) in o.m.held(self.now) {
                if let Some(other) = holders.insert(s, id) {
                    panic!("at {} shard {s} is held by {other} and {id}", self.now);
                }
                let stored = self.redis.shards.get(&s).filter(|r| r.2 > self.now);
                assert_eq!(stored.map(|r| r.1.as_str()), Some(*id), "shard {s} at {}", self.now);
                assert!(stored.is_some_and(|r| r.0 >= fence.epoch), "shard {s} at {}", self.now);
            }
        }
    }

    fn held(&self, id: &str) -> BTreeSet<u32> {
        self.origins[id].m.held(self.now).into_iter().map(|(s, _)| s).collect()
    }

    fn all_held(&self) -> bool {
        let n: usize = self.origins.keys().map(|id| self.held(id).len()).sum();
        n == SHARDS as usize
    }

    fn count(&self, id: &str, f: impl Fn(&Change) -> bool) -> usize {
        self.origins[id].changes.iter().filter(|c| f(c)).count()
    }
}

#[test]
fn one_origin_takes_every_shard_at_once() {
    let mut w = World::default();
    w.start("a");
    // The first sync learns the members; the next tick asks for the target.
    w.tick();
    assert!(w.held("a").is_empty());
    w.tick();
    assert_eq!(w.held("a").len(), SHARDS as usize);
    assert_eq!(w.origins["a"].m.live_members(), 1);
    assert_eq!(w.count("a", |c| matches!(c, Change::Acquired { .. })), SHARDS as usize);
}

#[test]
fn a_newcomer_settles_then_gets_its_share_without_overlap() {
    let mut w = World::default();
    w.start("a");
    // b comes later than the cohort that started the cluster: it must settle.
    w.run(2 * TTL + 500);
    w.start("b");
    // Not settled yet (two lease times): a keeps everything.
    w.run(2 * TTL - 200);
    assert_eq!(w.held("a").len(), SHARDS as usize);
    assert!(w.held("b").is_empty());
    // Settled: a gives back what b should hold, b takes it; never both (checked each tick).
    w.run(3 * TTL);
    let (a, b) = (w.held("a"), w.held("b"));
    assert_eq!(a.len() + b.len(), SHARDS as usize, "{a:?} {b:?}");
    assert!(a.is_disjoint(&b));
    assert!(a.len() as u32 <= shard::fair_share(SHARDS, 2) && b.len() as u32 <= shard::fair_share(SHARDS, 2));
    assert_eq!(&a, w.origins["a"].m.target());
    assert_eq!(w.count("a", |c| matches!(c, Change::Released { .. })), b.len());
    assert_eq!(w.count("a", |c| matches!(c, Change::Lost { .. })), 0, "given back, never lost");
}

#[test]
fn a_busy_shard_is_given_back_only_after_its_round() {
    let mut w = World::default();
    w.start("a");
    w.run(2 * TTL + 500);
    // A round runs on every shard while b joins and settles.
    w.origins.get_mut("a").unwrap().busy = (0..SHARDS).collect();
    w.start("b");
    w.run(4 * TTL);
    assert_eq!(w.held("a").len(), SHARDS as usize, "renewed, not released, while busy");
    assert!(w.origins["a"].m.offered(w.now).len() < SHARDS as usize, "no new round on b's shards");
    w.origins.get_mut("a").unwrap().busy.clear();
    // The release goes out at once, not at the next scheduled sync.
    w.tick();
    assert_eq!(w.held("a").len() as u32, w.origins["a"].m.target().len() as u32);
    w.run(TTL);
    assert!(w.all_held());
}

#[test]
fn a_leaving_origin_hands_over_within_a_sync() {
    let mut w = World::default();
    w.start("a");
    w.start("b");
    w.run(2 * TTL);
    assert!(w.all_held() && !w.held("b").is_empty());
    w.origins.get_mut("b").unwrap().m.leave();
    w.tick();
    assert!(w.origins["b"].m.has_left() && w.held("b").is_empty());
    w.run(TTL / 3 + TICK);
    assert_eq!(w.held("a").len(), SHARDS as usize);
}

#[test]
fn a_crashed_origins_shards_are_taken_once_its_lease_runs_out() {
    let mut w = World::default();
    w.start("a");
    w.start("b");
    w.run(2 * TTL);
    let b = w.held("b");
    assert!(!b.is_empty());
    w.link("b", Link::Stopped);
    let crashed = w.now;
    while !w.held("a").is_superset(&b) {
        w.tick();
        assert!(w.now - crashed <= TTL + TTL / 3 + 2 * TICK, "taken over within a lease and a sync");
    }
    assert!(w.now - crashed >= TTL - TTL / 3 - TICK, "not before b's grant could have run out");
}

#[test]
fn a_partitioned_origin_steps_down_before_its_shards_move_and_comes_back() {
    let mut w = World::default();
    w.start("a");
    w.start("b");
    w.run(2 * TTL);
    let before = w.held("b");
    w.link("b", Link::Down);
    // b's grants run out on its own clock, before Redis lets a take them (checked every
    // tick), and a takes them.
    w.run(3 * TTL);
    assert!(w.held("b").is_empty());
    assert!(w.held("a").is_superset(&before));
    assert_eq!(w.count("b", |c| matches!(c, Change::Lost { .. })), before.len());
    w.link("b", Link::Up);
    w.run(3 * TTL);
    assert!(w.all_held() && !w.held("b").is_empty(), "b rejoined and got a share again");
}

#[test]
fn a_stopped_origin_that_resumes_after_its_lease_holds_nothing_stale() {
    let mut w = World::default();
    w.start("a");
    w.start("b");
    w.run(2 * TTL);
    w.link("b", Link::Stopped);
    w.run(3 * TTL);
    // b wakes (a GC pause ends): its clock moved on, so its grants are over; the check
    // after every tick would fail if it believed otherwise.
    w.link("b", Link::Up);
    w.tick();
    assert!(w.held("b").is_empty() || w.held("b").is_disjoint(&w.held("a")));
    w.run(3 * TTL);
    assert!(w.all_held());
}

#[test]
fn two_origins_racing_for_a_shard_get_it_once() {
    let mut w = World::default();
    // Both start in the same tick: each counts both, and both may ask for the same free
    // shards if their views differ; the script grants each shard to one.
    w.start("a");
    w.start("b");
    w.tick();
    w.run(2 * TTL);
    assert!(w.all_held());
    assert!(w.held("a").is_disjoint(&w.held("b")));
    let asks = |id: &str| w.count(id, |c| matches!(c, Change::Acquired { .. }));
    assert!(asks("a") + asks("b") >= SHARDS as usize);
}

#[test]
fn a_flapping_origin_moves_no_shards() {
    let mut w = World::default();
    w.start("a");
    w.start("b");
    w.run(3 * TTL);
    let rebalances = |w: &World| w.count("a", |c| matches!(c, Change::Rebalanced { .. }));
    let (held_a, before) = (w.held("a"), rebalances(&w));
    w.start("c");
    for _ in 0..10 {
        // c comes for half a lease, then goes long enough to expire: with the lease
        // its entry outlives it by, a member for less than two lease times.
        w.link("c", Link::Up);
        w.run(TTL / 2);
        w.link("c", Link::Down);
        w.run(TTL + TTL / 3);
    }
    assert_eq!(rebalances(&w), before, "c never settled: {:?}", w.origins["a"].changes);
    assert_eq!(w.held("a"), held_a);
    assert!(w.held("c").is_empty());
}

#[test]
fn an_origin_with_another_shard_count_holds_nothing() {
    let mut w = World::default();
    w.start("a");
    w.run(TTL);
    w.start_with("z", 8);
    w.run(3 * TTL);
    let z = &w.origins["z"].m;
    assert!(z.mismatched() && z.held(w.now).is_empty());
    assert_eq!(z.cluster_shards(), Some(SHARDS));
    assert_eq!(w.held("a").len(), SHARDS as usize, "a ignores z in the assignment");
    assert!(!w.origins["a"].m.mismatched());
}

#[test]
fn garbage_members_are_ignored_and_a_new_epoch_is_a_new_grant() {
    let mut m = Membership::new("a", MembershipConfig { shards: 2, lease: LeaseConfig::new(TTL) });
    let req = m.poll(0, &BTreeSet::new()).unwrap();
    assert_eq!(req.ops, [], "the first sync learns the members");
    let member = |id: &str, shards| Member { id: id.into(), shards, since_ms: 0 };
    let members = vec![member("a", 2), member("<script>", 2), member("", 2), member("b b", 2), member("zero", 0)];
    let changes = m.on_reply(10, Some(SyncReply { now_ms: 10, members: members.clone(), outcomes: vec![] }));
    assert!(changes.contains(&Change::Ignored { entries: 4 }), "{changes:?}");
    assert_eq!(m.live_members(), 1);
    assert_eq!(m.target().len(), 2);
    let req = m.poll(TTL / 3, &BTreeSet::new()).unwrap();
    let ask = |shard| ShardOp::Ask { shard, held: None, reissue_from: None };
    assert_eq!(req.ops, [ask(0), ask(1)]);
    let granted = |e| SyncReply {
        now_ms: 600,
        members: vec![member("a", 2)],
        outcomes: vec![OpOutcome::Granted { epoch: e }, OpOutcome::Refused],
    };
    assert_eq!(m.on_reply(600, Some(granted(5))), [Change::Acquired { shard: 0, epoch: 5 }]);
    let req = m.poll(2 * TTL / 3, &BTreeSet::new()).unwrap();
    assert!(req.ops.contains(&ShardOp::Ask { shard: 0, held: Some(5), reissue_from: None }));
    // Redis found the key forged and granted it anew: the rounds must use the new epoch.
    let mut reply = granted(9);
    reply.outcomes = req.ops.iter().map(|_| OpOutcome::Granted { epoch: 9 }).collect();
    let changes = m.on_reply(1_010, Some(reply));
    assert!(changes.contains(&Change::Acquired { shard: 0, epoch: 9 }), "{changes:?}");
    assert_eq!(m.held(1_010).iter().map(|(_, f)| f.epoch).collect::<Vec<_>>(), [9, 9]);
    // A reply that does not answer every op answers none.
    let req = m.poll(TTL, &BTreeSet::new()).unwrap();
    assert!(!req.ops.is_empty());
    let short = SyncReply { now_ms: 0, members: vec![], outcomes: vec![] };
    assert_eq!(m.on_reply(TTL + 5, Some(short)), []);
    assert_eq!(m.held(TTL + 5).len(), 2, "kept until they run out");
}

#[test]
fn an_epoch_counter_gone_back_below_the_fences_is_moved_past_them_by_the_next_renewals() {
    let mut w = World::default();
    w.start("a");
    w.run(TTL);
    assert_eq!(w.held("a").len(), SHARDS as usize);
    // Redis restored from an older copy: the counter is back at 3, while the placements'
    // fences hold the epochs the holders wrote before, 40 in one shard, 30 in another.
    w.redis.counter = 3;
    let held = w.origins["a"].m.held(w.now);
    let ((s1, _), (s2, _), (s3, f3)) = (held[0], held[1], held[2]);
    let now = w.now;
    let a = w.origins.get_mut("a").unwrap();
    a.m.fenced_above(s1, 40, now);
    a.m.fenced_above(s2, 30, now);
    // An ordinary fencing (a seen epoch at or below the grant's) asks for nothing; nor
    // does a fence only a forgery reaches.
    a.m.fenced_above(s3, 1, now);
    a.m.fenced_above(s3, MAX_FENCE_FOLLOWED, now);
    w.run(TTL / 3 + TICK);
    let epoch = |w: &World, s| w.origins["a"].m.held(w.now).into_iter().find(|(h, _)| *h == s).map(|(_, f)| f.epoch);
    let (e1, e2) = (epoch(&w, s1).unwrap(), epoch(&w, s2).unwrap());
    assert!(e1 > 40 + REISSUE_MARGIN && e2 > 30 + REISSUE_MARGIN, "both above their fences: {e1} {e2}");
    assert_ne!(e1, e2);
    assert!(w.redis.counter >= e1.max(e2), "the counter moved past them for every later grant");
    for (s, e) in [(s1, e1), (s2, e2)] {
        assert_eq!(w.count("a", |c| *c == Change::Acquired { shard: s, epoch: e }), 1, "a new grant: a full round");
    }
    assert_eq!(epoch(&w, s3), Some(f3.epoch), "the others renewed as they were");
    // Answered once: the next renewals are ordinary.
    w.run(TTL);
    assert_eq!((epoch(&w, s1), epoch(&w, s2)), (Some(e1), Some(e2)));
}

#[test]
fn a_reissue_whose_reply_was_lost_is_renewed_as_it_was_granted() {
    let mut w = World::default();
    w.start("a");
    w.run(TTL);
    let (shard, _) = w.origins["a"].m.held(w.now)[0];
    let now = w.now;
    w.origins.get_mut("a").unwrap().m.fenced_above(shard, 40, now);
    // The sync carrying the reissue reaches Redis, and its answer is lost.
    let a = w.origins.get_mut("a").unwrap();
    let req = loop {
        w.now += TICK;
        if let Some(req) = a.m.poll(w.now, &BTreeSet::new()) {
            break req;
        }
    };
    assert!(req.ops.iter().any(|op| matches!(op, ShardOp::Ask { shard: s, reissue_from: Some(_), .. } if *s == shard)));
    let _lost = w.redis.sync(w.now, "a", SHARDS, &req);
    a.m.on_reply(w.now, None);
    let reissued = w.redis.shards[&shard].0;
    let counter = w.redis.counter;
    // The next renewal asks again and is answered with the epoch granted then: no grant
    // more.
    w.run(TTL / 3 + TICK);
    let held = w.origins["a"].m.held(w.now).into_iter().find(|(s, _)| *s == shard).map(|(_, f)| f.epoch);
    assert_eq!(held, Some(reissued));
    assert_eq!(w.redis.counter, counter);
}

#[test]
fn a_fence_written_since_the_shard_changed_hands_is_not_followed() {
    let mut m = Membership::new("a", MembershipConfig { shards: 1, lease: LeaseConfig::new(TTL) });
    let member = vec![Member { id: "a".into(), shards: 1, since_ms: 0 }];
    let reply = |outcomes| Some(SyncReply { now_ms: 0, members: member.clone(), outcomes });
    m.poll(0, &BTreeSet::new()).unwrap();
    m.on_reply(10, reply(vec![]));
    m.poll(TTL / 3, &BTreeSet::new()).unwrap();
    m.on_reply(TTL / 3 + 10, reply(vec![OpOutcome::Granted { epoch: 5 }]));
    // A holder with epoch 7 wrote a placement of the shard: the grant is stale.
    m.fenced_above(0, 7, TTL / 3 + 20);
    let req = m.poll(2 * TTL / 3, &BTreeSet::new()).unwrap();
    assert_eq!(req.ops, [ShardOp::Ask { shard: 0, held: Some(5), reissue_from: Some(7 + REISSUE_MARGIN) }]);
    // The shard is the other holder's: the script answers as to any renewal, refused.
    assert_eq!(m.on_reply(2 * TTL / 3 + 10, reply(vec![OpOutcome::Refused])), [Change::Lost { shard: 0 }]);
    // Nothing held, nothing left to reissue.
    let req = m.poll(TTL, &BTreeSet::new()).unwrap();
    assert_eq!(req.ops, [ShardOp::Ask { shard: 0, held: None, reissue_from: None }]);
}
