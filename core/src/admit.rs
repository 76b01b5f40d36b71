//! Which signed events the origin counts.
//!
//! A valid signature says an edge sent the body, not that every event in it is sane: a
//! holder of the ingest key (or an edge bug) can send a rate of `1e-160`, whose squared
//! Horvitz–Thompson weight overflows, a time decades away, or a placement, campaign or
//! plan version the origin never published. Each event is therefore judged on its own,
//! in two steps, and a bad one is dropped with a [`DropReason`] while the genuine events
//! of the same body are stored:
//!
//! 1. [`Limits::admit`] — the event alone against the origin's clock: its rate is finite
//!    and within `[min_rate, 1]` and its time within the skew ahead and, behind, within
//!    the longest a genuine event travels (at least the window retention). The result,
//!    an [`Admitted`] event, can only hold a finite weight and finite squared weight, so
//!    every delta folded from it is finite before any write.
//! 2. [`Catalogue::judge`] — the event against what the origin published: its placement
//!    is registered, the plan version it names was published for that placement, its
//!    campaigns are in that version, its rate is that version's rate and its platform
//!    is in that version's vocabulary.
//!
//! The [`Catalogue`] is the origin's in-process copy of the published plans. It is a
//! state machine without I/O: it says what to read ([`Catalogue::wants_registry`],
//! [`Catalogue::wants_plans`]) and is told what was read; the origin's shell does the
//! reads. The registry is read at most once per refresh interval. A placement's history
//! is read whole when an event first names it; after that it is *refreshed* only for a
//! version newer than the newest it held, at most once per interval, reading the newest
//! entry alone, then older ones in growing pages only while they are new: plans are
//! appended at the head, so a head already seen means nothing was issued since.
//!
//! A plan is recorded in its history before it is published, so before any edge can
//! name its version: a read begun after a body arrived holds every version the body
//! can genuinely name, and a newer one still unknown then was never issued (a body
//! waits for a read only when the last one began before it arrived). One body may cause
//! at most [`REFRESHES_PER_BODY`] refreshes that teach nothing; its other newer versions
//! are then unknown without a read. A refresh that learns a plan issued since is not
//! counted: those are bounded by what the control loop issues, not by what bodies name,
//! so a body naming the new versions of many placements after a round is counted whole.
//!
//! So a flood of made-up placements or versions costs at most one registry read per
//! interval and, per body, a few reads of one entry each (a history is read whole once,
//! when first needed), and the memory held is bounded by the registry: each placement
//! keeps as many versions as its plan history holds (a placement publishes tens of
//! versions an hour, and an origin runs for months), evicting the one events named
//! least recently. A version edges still serve is named all the time, so it stays,
//! however many were published since (a publisher that failed for an hour issued
//! versions no edge got), and an origin started meanwhile, whose history read no longer
//! holds it, learns it from the plan stored as in force ([`Catalogue::learn_in_force`]).
//! Only accepted events count as naming a version, and the newest two (what edges
//! serve, also during a hand-over) are never evicted, so events refused for their
//! content cannot push the version in use out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{CampaignId, Event, EventKind, PlacementId, Plan};

mod limits;

pub use limits::{Admitted, DropReason, Limits, LimitsError, MIN_RATE_FLOOR};

/// What one published plan version admits.
#[derive(Debug, Clone, PartialEq)]
struct Published {
    sample_rate: f64,
    campaigns: BTreeSet<CampaignId>,
    /// [`Plan::vocabulary`]: the platforms its events may name (`None`: any).
    platforms: Option<BTreeSet<String>>,
    /// When an event last named it (or it was learnt), on the catalogue's own count.
    used: u64,
}

/// The newest versions of a placement that are never evicted ([`Catalogue::learn_plans`]).
const PROTECTED: usize = 2;

/// How many history refreshes one body may cause that teach the catalogue no plan: a
/// genuine body names only versions already issued, so its refreshes learn them; a body
/// that has named this many versions its placements' histories do not hold has its
/// other newer versions judged unknown without a read.
pub const REFRESHES_PER_BODY: usize = 8;

/// A registered placement's known versions, and what its reads have seen.
#[derive(Debug, Clone, Default)]
struct History {
    /// When the last read began (`None`: never, or it failed): the throttle.
    read_ms: Option<u64>,
    /// The number of the last read learnt whole (0: none yet).
    learnt: u64,
    /// The newest version the history held at that read, withdrawn ones included.
    newest: Option<u64>,
    versions: BTreeMap<u64, Published>,
}

/// What one body has had read for it: the reads that began after it arrived hold
/// every version it can genuinely name, and what it may still cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyReads {
    /// The number of reads begun before the body arrived.
    since: u64,
    /// Refreshes it may still cause that teach nothing ([`REFRESHES_PER_BODY`]).
    refreshes_left: usize,
}

/// A read of one placement's plan history the catalogue asks for: entries
/// `first..=last`, newest first (`LRANGE plans first last`). Handed back with what was
/// read to [`Catalogue::learn_plans`], which says what to read next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlansRead {
    placement: PlacementId,
    first: usize,
    last: usize,
    /// The newest version seen at the last whole read: a refresh reads on while its
    /// entries are newer. `None`: every entry is new.
    floor: Option<u64>,
    /// The newest version this read has met so far.
    newest: Option<u64>,
    /// The read's number, in the order reads began.
    seq: u64,
    /// A refresh charged to the body (a first read is not), refunded if it teaches.
    charged: bool,
    /// A read of the whole history, not a refresh: the plan in force is read with it.
    whole: bool,
}

impl PlansRead {
    pub fn placement(&self) -> &PlacementId {
        &self.placement
    }

    /// The first entry to read, counted from the newest.
    pub fn first(&self) -> usize {
        self.first
    }

    /// The last entry to read (inclusive).
    pub fn last(&self) -> usize {
        self.last
    }

    /// A read of the whole history (the placement never read, or its last read
    /// failed), which also reads the plan stored as in force for
    /// [`Catalogue::learn_in_force`].
    pub fn is_whole(&self) -> bool {
        self.whole
    }
}

/// What an event needs before it can be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// It can be judged now.
    Nothing,
    /// A read of its placement's history now: the whole of it, or a refresh.
    Read { whole: bool },
    /// A read its placement's throttle allows at this time.
    Wait(u64),
}

/// The origin's copy of what it published; see the module documentation.
#[derive(Debug, Clone)]
pub struct Catalogue {
    refresh_ms: u64,
    /// Versions kept per placement, as many as the plan history holds.
    keep: usize,
    /// Counts learnt versions and judged events: the order of use, for eviction.
    tick: u64,
    /// Counts the history reads begun.
    reads: u64,
    registry_read_ms: Option<u64>,
    /// Whether a registry read was ever learnt (until then, nothing can be judged).
    registry_learnt: bool,
    registry: BTreeSet<PlacementId>,
    histories: HashMap<PlacementId, History>,
}

impl Catalogue {
    /// A catalogue that reads each source at most once per `refresh_ms` and keeps
    /// `keep` versions of each placement (at least one), the most recently used.
    pub fn new(refresh_ms: u64, keep: usize) -> Self {
        Self {
            refresh_ms,
            keep: keep.max(1),
            tick: 0,
            reads: 0,
            registry_read_ms: None,
            registry_learnt: false,
            registry: BTreeSet::new(),
            histories: HashMap::new(),
        }
    }

    fn due(&self, read_ms: Option<u64>, now_ms: u64) -> bool {
        read_ms.is_none_or(|t| now_ms >= t.saturating_add(self.refresh_ms))
    }

    /// Whether the registry should be read now: never read, or last read an interval
    /// ago. Read on every interval, not only for an unknown placement, so that a
    /// deleted placement stops counting within an interval. A `true` counts as the read
    /// (concurrent callers do not repeat it).
    pub fn wants_registry(&mut self, now_ms: u64) -> bool {
        let wanted = self.due(self.registry_read_ms, now_ms);
        if wanted {
            self.registry_read_ms = Some(now_ms);
        }
        wanted
    }

    /// Replaces the registry with what was read; histories of placements no longer
    /// registered are forgotten.
    pub fn learn_registry(&mut self, placements: impl IntoIterator<Item = PlacementId>) {
        self.registry = placements.into_iter().collect();
        self.registry_learnt = true;
        self.histories.retain(|p, _| self.registry.contains(p));
    }

    /// A body that arrived now: the reads that begin from now on hold every version
    /// its events can genuinely name.
    pub fn body(&self) -> BodyReads {
        BodyReads { since: self.reads, refreshes_left: REFRESHES_PER_BODY }
    }

    fn need(&self, e: &Event, body: &BodyReads, now_ms: u64) -> Need {
        if !self.registry.contains(&e.placement) {
            return Need::Nothing;
        }
        let Some(h) = self.histories.get(&e.placement) else { return Need::Read { whole: true } };
        let whole = h.learnt == 0;
        // A version known, or not newer than the history held: a read cannot help (an
        // evicted, withdrawn or never issued version).
        if h.versions.contains_key(&e.plan_version) || (!whole && h.newest.is_some_and(|n| e.plan_version <= n)) {
            return Need::Nothing;
        }
        // Learnt from a read begun after the body arrived (the version was never
        // issued), or the body has caused all the refreshes it may.
        if h.learnt > body.since || (!whole && body.refreshes_left == 0) {
            return Need::Nothing;
        }
        match h.read_ms {
            // Throttled, or being read by another caller.
            Some(t) if !self.due(Some(t), now_ms) => Need::Wait(t.saturating_add(self.refresh_ms)),
            _ => Need::Read { whole },
        }
    }

    /// Whether `events` can be judged now without any read, nor waiting for one: the
    /// registry was learnt and is not due, and no event's placement needs its history
    /// read or is being read. Such a body need not wait for another caller's reads.
    pub fn ready<'a>(&self, events: impl IntoIterator<Item = &'a Event>, body: &BodyReads, now_ms: u64) -> bool {
        self.registry_learnt
            && !self.due(self.registry_read_ms, now_ms)
            && events.into_iter().all(|e| self.need(e, body, now_ms) == Need::Nothing)
    }

    /// The history reads to make before judging `events` for `body`: the whole history
    /// of a registered placement never read, and a refresh of one for a version newer
    /// than it held, last read an interval ago and not since the body arrived, while the
    /// body may still cause one. The returned reads count as begun; ask again once they
    /// are learnt (a refresh that taught something gives the body another).
    pub fn wants_plans<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a Event>,
        body: &mut BodyReads,
        now_ms: u64,
    ) -> Vec<PlansRead> {
        let mut wanted: Vec<PlansRead> = Vec::new();
        let mut asked = BTreeSet::new();
        for e in events {
            if asked.contains(&e.placement) {
                continue;
            }
            let Need::Read { whole } = self.need(e, body, now_ms) else { continue };
            asked.insert(e.placement.clone());
            if !whole {
                body.refreshes_left -= 1;
            }
            self.reads += 1;
            let h = self.histories.entry(e.placement.clone()).or_default();
            h.read_ms = Some(now_ms);
            wanted.push(PlansRead {
                placement: e.placement.clone(),
                first: 0,
                // A refresh starts at the newest entry: one, if nothing was issued since.
                last: if whole { self.keep - 1 } else { 0 },
                floor: if whole { None } else { h.newest },
                newest: None,
                seq: self.reads,
                charged: !whole,
                whole,
            });
        }
        wanted
    }

    /// When a read for `body` now refused by the throttle becomes due (`now_ms` for a
    /// read due now), for an event of a registered placement naming a version newer
    /// than it held, not read since the body arrived. A plan issued just after the last
    /// read is then learnt by waiting instead of dropping its first events. An
    /// unregistered placement never waits: it gets its first plan only after it joined
    /// the registry.
    pub fn next_read_ms<'a>(
        &self,
        events: impl IntoIterator<Item = &'a Event>,
        body: &BodyReads,
        now_ms: u64,
    ) -> Option<u64> {
        events
            .into_iter()
            .filter_map(|e| match self.need(e, body, now_ms) {
                Need::Nothing => None,
                Need::Read { .. } => Some(now_ms),
                Need::Wait(at) => Some(at),
            })
            .min()
    }

    /// Forgets that the registry was read: the read failed, and the next caller should
    /// try again rather than judge against an empty registry for an interval.
    pub fn registry_read_failed(&mut self) {
        self.registry_read_ms = None;
    }

    /// Forgets that `placement`'s history was read (the read failed, or was not made):
    /// the next caller reads it again, from the same entry, whatever pages of it were
    /// learnt.
    pub fn plans_read_failed(&mut self, placement: &PlacementId) {
        if let Some(h) = self.histories.get_mut(placement) {
            h.read_ms = None;
        }
    }

    /// Adds the plans `read` returned (a registered placement's only), newest first,
    /// and says what to read next: the next page, twice as long, while every entry of
    /// this one was new, or `None` once the read is whole. A refresh that found a plan
    /// issued since gives `body` back the refresh it cost.
    pub fn learn_plans(&mut self, read: &PlansRead, plans: &[Plan], body: &mut BodyReads) -> Option<PlansRead> {
        let placement = &read.placement;
        if !self.registry.contains(placement) {
            return None;
        }
        let mine: Vec<&Plan> = plans.iter().filter(|p| &p.placement == placement).collect();
        let is_new = |v: u64| read.floor.is_none_or(|f| v > f);
        if read.charged && read.first == 0 && mine.first().is_some_and(|p| is_new(p.version)) {
            body.refreshes_left += 1;
        }
        let newest = read.newest.max(mine.iter().map(|p| p.version).max());
        self.insert(placement, &mine);
        let full = plans.len() == read.last - read.first + 1;
        if full && read.last + 1 < self.keep && mine.last().is_some_and(|p| is_new(p.version)) {
            let first = read.last + 1;
            let last = first.saturating_mul(2).min(self.keep) - 1;
            return Some(PlansRead { first, last, newest, ..read.clone() });
        }
        // Whole: from now on, a version it did not hold was never issued.
        let h = self.histories.entry(placement.clone()).or_default();
        h.learnt = h.learnt.max(read.seq);
        h.newest = h.newest.max(newest);
        None
    }

    /// Learns the plan stored as in force for its placement: the last one published,
    /// what edges serve. The history keeps only the plans issued last, and a publisher
    /// failing long enough issues more of them than it keeps, none of which any edge
    /// got: the version in force falls off its end. An origin that learnt it before
    /// keeps it while events name it; one started since learns it here, with its first
    /// whole read, or it would drop every event edges send until a publish succeeds.
    pub fn learn_in_force(&mut self, plan: &Plan) {
        if self.registry.contains(&plan.placement) {
            self.insert(&plan.placement, &[plan]);
        }
    }

    fn insert(&mut self, placement: &PlacementId, plans: &[&Plan]) {
        let history = self.histories.entry(placement.clone()).or_default();
        // A withdrawn plan (a deleted placement's tombstone) is never served, so no
        // genuine event names its version.
        for plan in plans.iter().filter(|p| !p.withdrawn) {
            if history.versions.contains_key(&plan.version) {
                continue;
            }
            self.tick += 1;
            let campaigns = plan.campaigns.iter().map(|c| c.id.clone()).collect();
            let published =
                Published { sample_rate: plan.sample_rate, campaigns, platforms: plan.vocabulary(), used: self.tick };
            history.versions.insert(plan.version, published);
        }
        // The newest two are what edges serve now, or during a hand-over: never evicted,
        // whatever events name the others.
        let protected = PROTECTED.min(self.keep);
        while history.versions.len() > self.keep {
            let candidates = history.versions.len() - protected;
            let stalest = history.versions.iter().take(candidates).min_by_key(|(v, p)| (p.used, **v)).map(|(v, _)| *v);
            let Some(stalest) = stalest else { break };
            history.versions.remove(&stalest);
        }
    }

    /// How many versions are known, over every placement (what the catalogue holds).
    pub fn versions_known(&self) -> usize {
        self.histories.values().map(|h| h.versions.len()).sum()
    }

    /// Whether `event` matches what was published. A version counts as used only by
    /// an event it accepts: events refused for their campaigns or rate (anyone holding
    /// the ingest key can send them, and they cost nothing) must not keep old versions
    /// in and push out the one edges serve.
    pub fn judge(&mut self, event: &Admitted) -> Result<(), DropReason> {
        let e = event.event();
        if !self.registry.contains(&e.placement) {
            return Err(DropReason::UnknownPlacement);
        }
        self.tick += 1;
        let published = self
            .histories
            .get_mut(&e.placement)
            .and_then(|h| h.versions.get_mut(&e.plan_version))
            .ok_or(DropReason::UnknownVersion)?;
        let named = e.ad_id.iter().chain(&e.eligible);
        if !named.into_iter().all(|c| published.campaigns.contains(c)) {
            return Err(DropReason::UnknownCampaign);
        }
        if e.kind == EventKind::Impression && e.ad_id.is_none() {
            return Err(DropReason::UnknownCampaign);
        }
        if e.sample_rate.to_bits() != published.sample_rate.to_bits() {
            return Err(DropReason::RateMismatch);
        }
        // An edge names only the plan's platforms (`CompiledPlan::resolve`); another is
        // a key holder's, and each made-up one would add fields to the window's hash.
        if let (Some(known), Some(platform)) = (&published.platforms, &e.platform)
            && !known.contains(platform)
        {
            return Err(DropReason::UnknownPlatform);
        }
        published.used = self.tick;
        Ok(())
    }
}

#[cfg(test)]
#[path = "admit_tests.rs"]
mod tests;
