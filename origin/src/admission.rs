//! The ingest's judgement of single events: core's [`Limits`] and [`Catalogue`] with
//! the Redis reads the catalogue asks for.
//!
//! The catalogue is what this replica knows of the published plans: the placement
//! registry (`allot:registry`: a placement joins it when its targets are first set
//! and leaves it once its deletion has been published) and each registered placement's
//! plan history (its `plans` list, which the control loop appends to after every
//! publish). The catalogue decides what to read and when (at most once per
//! `ingest.catalogue_refresh_ms` per source); this shell reads it, one caller at a time.
//! A batch naming a version newer than any known waits for the next allowed reads (at
//! most [`MAX_WAITS`] intervals), so a plan published a moment ago is learnt instead of
//! its first events being dropped.
//!
//! A failed read fails the request (503, the edge retries the same body) and is
//! forgotten, so the next request reads again instead of judging against nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use allot_core::{Admitted, Catalogue, DropReason, Event, Limits, PlacementId};

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
    history_len: usize,
}

/// How many times a body naming a version newer than any known waits for the next
/// read: a plan published a moment ago is learnt within this many refresh intervals.
const MAX_WAITS: usize = 4;

impl Admission {
    pub fn new(config: &Config) -> Result<Self, allot_core::admit::LimitsError> {
        Ok(Self {
            limits: config.event_limits()?,
            catalogue: Mutex::new(Catalogue::new(config.ingest.catalogue_refresh_ms, config.control.history_len)),
            refreshing: tokio::sync::Mutex::new(()),
            history_len: config.control.history_len,
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
        self.refresh(store, &admitted).await?;
        // A version newer than any known may have been published a moment ago (its plan
        // reaches the edge before the control loop appends it to the history): wait for
        // the next allowed reads, a bounded number of times, before dropping.
        for _ in 0..MAX_WAITS {
            let now = crate::now_ms();
            let Some(at) = self.catalogue().next_read_ms(admitted.iter().map(Admitted::event), now) else {
                break;
            };
            if admitted.iter().all(|a| self.catalogue().judge(a).is_ok()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
            self.refresh(store, &admitted).await?;
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
    /// One caller at a time: a caller that finds a read due waits for an earlier
    /// caller's read to be learnt instead of judging against what it replaces.
    async fn refresh(&self, store: &Store, admitted: &[Admitted]) -> Result<(), StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let now_ms = crate::now_ms();
        let events = || admitted.iter().map(Admitted::event);
        if self.catalogue().wants_registry(now_ms) {
            match store.placements().await {
                Ok(placements) => self.catalogue().learn_registry(placements),
                Err(e) => {
                    self.catalogue().registry_read_failed();
                    return Err(e);
                }
            }
        }
        let wanted: Vec<PlacementId> = self.catalogue().wants_plans(events(), now_ms);
        for (i, p) in wanted.iter().enumerate() {
            match store.plan_history(p, self.history_len).await {
                Ok(plans) => self.catalogue().learn_plans(p, &plans),
                Err(e) => {
                    let mut catalogue = self.catalogue();
                    for unread in &wanted[i..] {
                        catalogue.plans_read_failed(unread);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
