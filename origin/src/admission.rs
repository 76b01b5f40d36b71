//! The ingest's judgement of single events: core's [`Limits`] and [`Catalogue`] with
//! the Redis reads the catalogue asks for.
//!
//! The catalogue is what this replica knows of the published plans: the placement
//! registry (`allot:registry`: a placement joins it when its targets are first set
//! and leaves it once its deletion has been published) and each registered placement's
//! plan history (its `plans` list, which the control loop appends to before every
//! publish). The catalogue decides what to read and when (at most once per
//! `ingest.catalogue_refresh_ms` per source, and per body at most
//! [`REFRESHES_PER_BODY`](allot_core::admit::REFRESHES_PER_BODY) refreshes that teach
//! nothing); this shell reads it, one caller at a time. A body that needs no read, and
//! none that is being made, is judged at once, without waiting for another caller's
//! reads. A body naming a version newer than any known, whose placement was last read
//! before the body arrived and within the interval, waits for the next allowed read (at
//! most [`MAX_WAITS`] intervals), so a plan issued just after a read is learnt instead
//! of its first events being dropped.
//!
//! A failed read fails the request (503, the edge retries the same body) and is
//! forgotten, so the next request reads again instead of judging against nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use allot_core::admit::{BodyReads, PlansRead};
use allot_core::{Admitted, Catalogue, DropReason, Event, Limits};

use crate::config::Config;
use crate::store::{Store, StoreError};

/// The events of a body after judgement.
#[derive(Debug, Default)]
pub struct Judged {
    /// The events to store, in body order.
    pub accepted: Vec<Event>,
    /// Dropped events, by reason.
    pub dropped: BTreeMap<DropReason, usize>,
}

impl Judged {
    pub fn dropped_total(&self) -> usize {
        self.dropped.values().sum()
    }
}

/// Per-event limits and the catalogue of published plans.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    catalogue: Mutex<Catalogue>,
    refreshing: tokio::sync::Mutex<()>,
}

/// How many times a body naming a version newer than any known waits for the next
/// read: a plan issued just after a read is learnt within this many refresh intervals.
const MAX_WAITS: usize = 4;

impl Admission {
    pub fn new(config: &Config) -> Result<Self, allot_core::admit::LimitsError> {
        Ok(Self {
            limits: config.event_limits()?,
            catalogue: Mutex::new(Catalogue::new(config.ingest.catalogue_refresh_ms, config.control.history_len)),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    fn catalogue(&self) -> std::sync::MutexGuard<'_, Catalogue> {
        // The catalogue holds no invariant a panicking holder could break half-way.
        self.catalogue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Judges `events` at origin time `now_ms`.
    pub async fn judge(&self, store: &Store, events: Vec<Event>, now_ms: u64) -> Result<Judged, StoreError> {
        let mut judged = Judged::default();
        let mut admitted = Vec::with_capacity(events.len());
        for e in events {
            match self.limits.admit(e, now_ms) {
                Ok(a) => admitted.push(a),
                Err(reason) => *judged.dropped.entry(reason).or_default() += 1,
            }
        }
        let mut body = self.catalogue().body();
        self.refresh(store, &admitted, &mut body).await?;
        // A version newer than any known may have been issued just after its
        // placement's last read: wait for the next allowed read, a bounded number of
        // times, before dropping.
        for _ in 0..MAX_WAITS {
            let now = crate::now_ms();
            let Some(at) = self.catalogue().next_read_ms(admitted.iter().map(Admitted::event), &body, now) else {
                break;
            };
            tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
            self.refresh(store, &admitted, &mut body).await?;
        }
        let mut catalogue = self.catalogue();
        for a in admitted {
            match catalogue.judge(&a) {
                Ok(()) => judged.accepted.push(a.into_event()),
                Err(reason) => *judged.dropped.entry(reason).or_default() += 1,
            }
        }
        Ok(judged)
    }

    /// Reads what the catalogue asks for before judging `admitted`.
    /// One caller at a time: a caller that finds a read due, or one being made, waits
    /// for an earlier caller's read to be learnt instead of judging against what it
    /// replaces; a caller that needs none does not wait.
    async fn refresh(&self, store: &Store, admitted: &[Admitted], body: &mut BodyReads) -> Result<(), StoreError> {
        let events = || admitted.iter().map(Admitted::event);
        if self.catalogue().ready(events(), body, crate::now_ms()) {
            return Ok(());
        }
        let _one_at_a_time = self.refreshing.lock().await;
        let now_ms = crate::now_ms();
        if self.catalogue().wants_registry(now_ms) {
            match store.placements().await {
                Ok(placements) => self.catalogue().learn_registry(placements),
                Err(e) => {
                    self.catalogue().registry_read_failed();
                    return Err(e);
                }
            }
        }
        // Asked again until nothing is wanted: a refresh that taught something gives
        // the body another. Each placement is read at most once for a body (a read
        // learnt after it arrived settles its versions), so this ends.
        loop {
            let wanted = self.catalogue().wants_plans(events(), body, now_ms);
            if wanted.is_empty() {
                return Ok(());
            }
            for (i, read) in wanted.iter().enumerate() {
                if let Err(e) = self.read_plans(store, read, body).await {
                    let mut catalogue = self.catalogue();
                    for unread in &wanted[i..] {
                        catalogue.plans_read_failed(unread.placement());
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Makes `read`, page after page, as long as the catalogue asks for the next; a
    /// whole read also reads the plan stored as in force (it may have left the history).
    async fn read_plans(&self, store: &Store, read: &PlansRead, body: &mut BodyReads) -> Result<(), StoreError> {
        let in_force = if read.is_whole() { store.plan_record(read.placement()).await? } else { None };
        let mut page = Some(read.clone());
        while let Some(read) = page {
            let plans = store.plan_history(read.placement(), read.first(), read.last()).await?;
            page = self.catalogue().learn_plans(&read, &plans, body);
        }
        if let Some(record) = in_force {
            self.catalogue().learn_in_force(&record.plan);
        }
        Ok(())
    }
}
