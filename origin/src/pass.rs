//! Which placements the control loop's rounds cover, shard by shard: a *pass*.
//!
//! An origin runs rounds only for the placements of the shards it holds
//! ([`crate::shards`]). A full pass covers every placement of those shards, after each
//! window closes; a shard it has just taken gets a full round at once (its previous
//! holder may have stopped mid-period); between, the placements whose targets changed
//! (marked in `allot:dirty` by the admin API) get a round from whoever holds their
//! shard, and the others' marks stay for them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use allot_core::PlacementId;

use crate::shards::ShardsView;
use crate::startup::App;
use crate::store::StoreError;

/// What the pass remembers between wake-ups.
#[derive(Debug, Default)]
pub struct Pass {
    /// The shards offered at the last wake-up, with their epochs.
    epochs: BTreeMap<u32, u64>,
    /// The registry as last read, by shard: whose gauges to drop when a shard goes.
    placements: BTreeMap<u32, Vec<PlacementId>>,
    started: Option<(Instant, &'static str, usize)>,
}

impl Pass {
    /// The rounds due now, shard by shard: all placements of the shards held when
    /// `full`, of the shards newly held in any case, and the changed ones.
    pub async fn due(
        &mut self,
        app: &App,
        shards: &ShardsView,
        full: bool,
    ) -> Result<Vec<(u32, Vec<PlacementId>)>, StoreError> {
        let offered = shards.offered();
        for shard in self.epochs.keys().filter(|s| !offered.contains_key(s)) {
            // Another origin runs this shard's rounds now; its gauges are the live ones.
            for p in self.placements.get(shard).into_iter().flatten() {
                app.metrics.delivery.forget(p.as_str());
            }
        }
        let fresh: BTreeSet<u32> =
            offered.iter().filter(|(s, e)| self.epochs.get(s) != Some(e)).map(|(s, _)| *s).collect();
        self.epochs = offered.clone();
        let mut due: BTreeMap<u32, BTreeSet<PlacementId>> = BTreeMap::new();
        if offered.is_empty() {
            return Ok(Vec::new());
        }
        // A failing wake-up set must not stop the full rounds.
        let dirty = app.store.take_dirty(|p| offered.contains_key(&shards.shard_of(p))).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not read the placements asking for a round");
            Vec::new()
        });
        for p in dirty {
            due.entry(shards.shard_of(&p)).or_default().insert(p);
        }
        if full || !fresh.is_empty() {
            self.placements.clear();
            for p in app.store.placements().await? {
                self.placements.entry(shards.shard_of(&p)).or_default().push(p);
            }
            for (shard, placements) in &self.placements {
                if offered.contains_key(shard) && (full || fresh.contains(shard)) {
                    due.entry(*shard).or_default().extend(placements.iter().cloned());
                }
            }
        }
        let due: Vec<(u32, Vec<PlacementId>)> = due.into_iter().map(|(s, ps)| (s, ps.into_iter().collect())).collect();
        let count: usize = due.iter().map(|(_, ps)| ps.len()).sum();
        let kind = match (full, fresh.is_empty()) {
            (true, _) => "full",
            (false, false) => "takeover",
            (false, true) => "changes",
        };
        self.started = (count > 0).then(|| (Instant::now(), kind, count));
        Ok(due)
    }

    /// Records how long the pass [`Pass::due`] planned took, once its rounds are done.
    pub fn finish(&mut self, app: &App) {
        // Both at the end, so the two histograms always count the same passes.
        if let Some((started, kind, count)) = self.started.take() {
            app.metrics.shards.pass_duration.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
            app.metrics.shards.pass_placements.with_label_values(&[kind]).observe(count as f64);
        }
    }
}
