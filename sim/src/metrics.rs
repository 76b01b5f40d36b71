//! From runs to figures, with confidence intervals that respect how windows correlate.
//!
//! Every figure is over *windows × feasible campaigns* of all seeds. Windows of one run
//! are not independent (a plan lives across several), so intervals come from a moving
//! block bootstrap: each run's windows are cut into blocks of [`BLOCK`] consecutive
//! windows, blocks are drawn with replacement across all runs, and the figure is
//! recomputed [`REPLICATES`] times; the interval is the 2.5–97.5 % range.
//!
//! Steady-state figures leave out the warm-up (until the first data-driven plan has
//! certainly reached every colo) and the windows a change or a fault touches: those are
//! scored by the re-convergence and fault figures instead.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use allot_core::{CampaignId, Publish};

use crate::changes::{self, ChangeWait, FaultFigures};
use crate::scenario::Scenario;
use crate::world::{CampaignWindow, Run, WindowRecord};

pub const BLOCK: usize = 10;
pub const REPLICATES: usize = 400;

/// A figure and its bootstrap interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figure {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// What a scenario achieved over its seeds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub seeds: usize,
    pub windows: usize,
    pub p50_error: Figure,
    pub p95_error: Figure,
    pub max_error: f64,
    /// p95 of |error| / target, for targets under 5 % (if any).
    pub p95_relative_small: Option<Figure>,
    /// The same on the expected shares under the plans in force: what is left without
    /// the randomness of the edge's weighted pick.
    pub p95_relative_small_expected: Option<Figure>,
    /// Windows where every feasible campaign was within the margin.
    pub within: Figure,
    /// Published intervals that contain the realized share, per campaign and jointly,
    /// in sampled windows.
    pub coverage: Figure,
    pub joint_coverage: Figure,
    /// In windows at census (every request sampled) the estimate is the realized share
    /// itself but for the events still to come, so their intervals test completeness
    /// rather than the sample: scored apart (covered share, cells), not pooled into the
    /// coverage above.
    pub census_coverage: Option<(f64, usize)>,
    /// Census windows read before all their events were in (a body still on its way):
    /// their share of the census windows, and the coverage of their intervals. Windows
    /// read whole are covered by construction, so the census coverage above is set by
    /// these.
    pub census_incomplete: Option<(f64, f64)>,
    /// The census cells read with an allowance for late bodies, and those read as exact
    /// (the rounds had learnt that late bodies are rarer than `1 − level`): coverage and
    /// cells of each. Only the first can be held to the level: an exact interval covers
    /// every window read whole, so at `1 −` the chance of a late body, above the level.
    pub census_allowed: Option<((f64, usize), (f64, usize))>,
    /// The census cells of targets under 5 %, and of the others: coverage and cells of
    /// each (a late body moves a small share by whole requests, which the normal model
    /// behind the allowance does not know).
    pub census_by_target: Option<((f64, usize), (f64, usize))>,
    /// Sampled requests over the binomial minimum on the traffic seen.
    pub samples_vs_minimum: f64,
    /// Windows to re-converge after a change: p50, p95, max, and how many changes.
    pub reconverge: Option<(f64, f64, usize, usize)>,
    /// The same for changes made while a fault lasted (a colo that gets no plan cannot
    /// follow one until it recovers): reported apart, next to the fault's own figures.
    pub reconverge_in_faults: Option<(f64, f64, usize, usize)>,
    /// The changes that took longer than the bar allows, to look into.
    pub slow_changes: Vec<ChangeWait>,
    pub faults: Vec<FaultFigures>,
    /// Placement-windows the truth says are infeasible by more than the margin (their
    /// targets cannot be met even within it), and the share of them flagged.
    pub infeasible_windows: usize,
    pub infeasible_flagged: f64,
    /// Placement-windows short by more than half the margin but not more than it, and
    /// the share of them flagged (reported, not in the bar).
    pub marginal_windows: usize,
    pub marginal_flagged: f64,
    /// In windows short by at most the margin, the infeasible campaigns' realized share
    /// within the margin of target: the share of them, and how many. Their targets can
    /// still be met within the margin, flagged or not, and this checks that they were.
    pub near_miss_within: Option<(f64, usize)>,
    /// The first few windows short by more than half the margin left unflagged, to
    /// look into.
    pub unflagged: Vec<Misflagged>,
    /// The largest errors outside the margin, to look into: feasible campaigns of
    /// scored windows and the infeasible ones of windows short by at most the margin.
    pub outside: Vec<Outside>,
    /// Feasible placement-windows flagged infeasible.
    pub false_flags: usize,
    /// The first few of them, to look into.
    pub false_flagged: Vec<Misflagged>,
    /// Placement-windows whose traffic could not give the confidence at census, and the
    /// share of them sampled at rate 1.
    pub unattainable_windows: usize,
    pub unattainable_at_census: f64,
    /// The first few unattainable windows sampled below census, to look into.
    pub below_census: Vec<BelowCensus>,
    pub plans_per_hour: f64,
    /// The same by why they were published (all placements).
    pub plans_per_hour_by: Vec<(Publish, f64)>,
    /// Plans refused as invalid (the placement keeps its old plan).
    pub invalid_plans: u64,
    /// Sampled requests per second and placement in steady windows.
    pub sampled_per_s: f64,
}

/// A window flagged wrongly: infeasible and not flagged, or feasible and flagged.
#[derive(Debug, Clone)]
pub struct Misflagged {
    /// The seed of the run it is in.
    pub seed: u64,
    pub placement: usize,
    pub index: u64,
    /// How far the true traffic fell short of the targets (share).
    pub short: f64,
    /// Per campaign: its target, the eligible share the controller estimated, and the
    /// true one.
    pub estimated: Vec<(CampaignId, f64, f64, f64)>,
    /// The campaigns the controller flagged infeasible.
    pub flagged: Vec<CampaignId>,
}

impl Misflagged {
    fn of(seed: u64, w: &WindowRecord) -> Self {
        Self {
            seed,
            placement: w.placement,
            index: w.index,
            short: w.short,
            estimated: w.campaigns.iter().map(|c| (c.id.clone(), c.target, c.eligible_estimated, c.eligible)).collect(),
            flagged: w.campaigns.iter().filter(|c| c.flagged).map(|c| c.id.clone()).collect(),
        }
    }
}

/// An unattainable window sampled below census: its requests, those of the window before
/// it (what its rate was planned on), and the highest rate in force.
#[derive(Debug, Clone)]
pub struct BelowCensus {
    pub seed: u64,
    pub placement: usize,
    pub index: u64,
    pub requests: u64,
    pub requests_before: Option<u64>,
    pub max_rate: f64,
}

/// A campaign's window outside the margin.
#[derive(Debug, Clone)]
pub struct Outside {
    pub seed: u64,
    pub placement: usize,
    pub index: u64,
    pub campaign: CampaignWindow,
    /// Sampled and all requests of the window.
    pub sampled: u64,
    pub requests: u64,
}

/// One window's figures, for the bootstrap.
#[derive(Debug, Clone)]
struct Scored {
    errors: Vec<f64>,
    relative_small: Vec<f64>,
    /// The same for the expected shares: the controller's part, without the pick's.
    expected_small: Vec<f64>,
    within: bool,
    /// One per feasible campaign with a published interval.
    cells: Vec<Cell>,
    census: bool,
    /// At census, and read by its round with events still to come.
    incomplete: bool,
    /// At census, and read with an allowance for requests still to come.
    allowed: bool,
}

/// A campaign's published interval in one window.
#[derive(Debug, Clone, Copy)]
struct Cell {
    /// It covers the realized share.
    covered: bool,
    /// The campaign's target is under 5 %.
    small: bool,
}

impl Scored {
    fn covered(&self) -> impl Iterator<Item = bool> + '_ {
        self.cells.iter().map(|c| c.covered)
    }
}

fn score(w: &WindowRecord) -> Option<Scored> {
    let feasible: Vec<_> = w.campaigns.iter().filter(|c| c.feasible).collect();
    // A placement whose traffic cannot give the confidence is scored on its flag only:
    // its realized shares are as noisy as its few requests.
    if feasible.is_empty() || w.requests == 0 || w.unattainable {
        return None;
    }
    let errors: Vec<f64> = feasible.iter().map(|c| (c.realized - c.target).abs()).collect();
    Some(Scored {
        within: changes::within(w),
        relative_small: feasible
            .iter()
            .filter(|c| c.target < 0.05 && c.target > 0.0)
            .map(|c| (c.realized - c.target).abs() / c.target)
            .collect(),
        expected_small: feasible
            .iter()
            .filter(|c| c.target < 0.05 && c.target > 0.0)
            .map(|c| (c.expected - c.target).abs() / c.target)
            .collect(),
        cells: feasible
            .iter()
            .filter_map(|c| c.published.map(|p| Cell { covered: p.contains(c.realized), small: c.target < 0.05 }))
            .collect(),
        census: w.sampled >= w.requests,
        incomplete: w.sampled >= w.requests && w.decided && w.counted < w.sampled,
        allowed: w.sampled >= w.requests && w.allowance > 0.0,
        errors,
    })
}

/// Windows from the start that are left out: until a plan made on data has reached
/// every colo (a period, then propagation's p99 and the caches).
pub fn warmup_windows(sc: &Scenario) -> u64 {
    let reach = sc.edges.propagation_p99_s + sc.edges.cache_ttl_s + sc.edges.isolate_ttl_s;
    ((sc.period_s as f64 + reach) / sc.period_s as f64).ceil() as u64 + 1
}

/// Whether window `index` is touched by a change or a fault (or their next window).
fn disturbed(sc: &Scenario, index: u64) -> bool {
    let p = sc.period_s;
    let (start, end) = (index * p, (index + 1) * p);
    let settle = 2 * p;
    sc.changes.iter().any(|c| c.at_s < end && start < c.at_s + settle)
        || sc.faults.iter().any(|f| f.from_s < end && start < f.until_s + settle)
}

/// Figures over `runs`, each run in its own scenario (`built[i]`: a seed draws its own
/// change offsets).
pub fn summarize(built: &[Scenario], runs: &[Run]) -> Summary {
    let waits = changes::waits(built, runs);
    let sc = &built[0];
    let warmup = warmup_windows(sc);
    let mut series: Vec<Vec<Scored>> = Vec::new();
    for (run, sc) in runs.iter().zip(built) {
        for p in 0..sc.placements.len() {
            let s: Vec<Scored> = run
                .windows
                .iter()
                .filter(|w| w.placement == p && w.index >= warmup && !disturbed(sc, w.index))
                .filter_map(score)
                .collect();
            if !s.is_empty() {
                series.push(s);
            }
        }
    }
    let all: Vec<&Scored> = series.iter().flatten().collect();
    let mut rng = SmallRng::seed_from_u64(0xb007);
    let mut fig = |f: &dyn Fn(&[&Scored]) -> f64| bootstrap(&series, &mut rng, f);
    let p50 = fig(&|w| quantile(w.iter().flat_map(|s| s.errors.iter().copied()).collect(), 0.5));
    let p95 = fig(&|w| quantile(w.iter().flat_map(|s| s.errors.iter().copied()).collect(), 0.95));
    let within = fig(&|w| share(w.iter().map(|s| s.within)));
    let coverage = fig(&|w| sampled_coverage(w));
    let joint = fig(&|w| share(w.iter().filter(|s| !s.census && !s.cells.is_empty()).map(|s| s.covered().all(|c| c))));
    let census_coverage =
        Some(cells(all.iter().filter(|s| s.census).flat_map(|s| s.covered()))).filter(|(_, n)| *n > 0);
    let census_windows: Vec<&&Scored> = all.iter().filter(|s| s.census && !s.cells.is_empty()).collect();
    let census_incomplete = (!census_windows.is_empty()).then(|| {
        let late: Vec<bool> = census_windows.iter().filter(|s| s.incomplete).flat_map(|s| s.covered()).collect();
        (share(census_windows.iter().map(|s| s.incomplete)), share(late.into_iter()))
    });
    let census_allowed = (!census_windows.is_empty()).then(|| {
        let read =
            |allowed: bool| cells(census_windows.iter().filter(|s| s.allowed == allowed).flat_map(|s| s.covered()));
        (read(true), read(false))
    });
    let census_by_target = (!census_windows.is_empty()).then(|| {
        let of = |small: bool| {
            cells(
                census_windows.iter().flat_map(|s| s.cells.iter().filter(move |c| c.small == small).map(|c| c.covered)),
            )
        };
        (of(true), of(false))
    });
    let has_small = all.iter().any(|s| !s.relative_small.is_empty());
    let rel =
        has_small.then(|| fig(&|w| quantile(w.iter().flat_map(|s| s.relative_small.iter().copied()).collect(), 0.95)));
    let rel_expected =
        has_small.then(|| fig(&|w| quantile(w.iter().flat_map(|s| s.expected_small.iter().copied()).collect(), 0.95)));

    // Steady windows, each with the seed of its run (for the lists to look into).
    let seeded: Vec<(u64, &WindowRecord)> = runs
        .iter()
        .zip(built)
        .flat_map(|(r, sc)| {
            r.windows.iter().filter(move |w| w.index >= warmup && !disturbed(sc, w.index)).map(move |w| (r.seed, w))
        })
        .collect();
    let steady: Vec<&WindowRecord> = seeded.iter().map(|(_, w)| *w).collect();
    let attainable: Vec<&&WindowRecord> = steady.iter().filter(|w| !w.unattainable).collect();
    let sampled: u64 = attainable.iter().map(|w| w.sampled).sum();
    let needed: f64 = attainable.iter().map(|w| w.needed).sum();
    // Flags are scored in windows a round has read. A target short by less than the
    // margin is still met within it at the best achievable shares, so the promise holds
    // unflagged: the bar is on windows short by more (and no false flags on feasible
    // ones); those short by half the margin to the whole of it are reported apart, as
    // a sample sized for the margin cannot always tell them from feasible.
    let scored = |w: &WindowRecord| w.decided && !w.unattainable;
    let scored_infeasible = |w: &WindowRecord| scored(w) && w.short > w.margin;
    let flagged_any = |w: &WindowRecord| w.campaigns.iter().any(|c| c.flagged);
    let infeasible: Vec<&&WindowRecord> = steady.iter().filter(|w| scored_infeasible(w)).collect();
    let marginal: Vec<&&WindowRecord> =
        steady.iter().filter(|w| scored(w) && w.short > w.margin / 2.0 && w.short <= w.margin).collect();
    let share_flagged = |ws: &[&&WindowRecord]| {
        if ws.is_empty() { 1.0 } else { ws.iter().filter(|w| flagged_any(w)).count() as f64 / ws.len() as f64 }
    };
    let near: Vec<bool> = steady
        .iter()
        .filter(|w| scored(w) && w.short > 0.0 && w.short <= w.margin && w.requests > 0)
        .flat_map(|w| w.campaigns.iter().filter(|c| !c.feasible).map(|c| changes::delivered_within(c, w.margin)))
        .collect();
    let near_miss_within = (!near.is_empty()).then(|| (share(near.iter().copied()), near.len()));
    let unflagged = seeded
        .iter()
        .filter(|(_, w)| scored(w) && w.short > w.margin / 2.0 && !flagged_any(w))
        .map(|&(seed, w)| Misflagged::of(seed, w))
        .take(10)
        .collect();
    let mut outside: Vec<Outside> = seeded
        .iter()
        .filter(|(_, w)| w.requests > 0 && !w.unattainable)
        .flat_map(|&(seed, w)| {
            let near = w.decided && w.short > 0.0 && w.short <= w.margin;
            w.campaigns.iter().filter(move |c| (c.feasible || near) && !changes::delivered_within(c, w.margin)).map(
                move |c| Outside {
                    seed,
                    placement: w.placement,
                    index: w.index,
                    campaign: c.clone(),
                    sampled: w.sampled,
                    requests: w.requests,
                },
            )
        })
        .collect();
    let error = |o: &Outside| (o.campaign.realized - o.campaign.target).abs();
    outside.sort_by(|a, b| error(b).total_cmp(&error(a)));
    outside.truncate(5);
    let falsely_flagged: Vec<&(u64, &WindowRecord)> =
        seeded.iter().filter(|(_, w)| scored(w) && w.short == 0.0 && flagged_any(w)).collect();
    let false_flags = falsely_flagged.len();
    let false_flagged = falsely_flagged.iter().map(|&&(seed, w)| Misflagged::of(seed, w)).take(5).collect();
    let unattainable: Vec<&&WindowRecord> = steady.iter().filter(|w| w.unattainable).collect();
    let at_census = unattainable.iter().filter(|w| w.max_rate >= 1.0).count();
    let requests: std::collections::HashMap<(u64, usize, u64), u64> =
        seeded.iter().map(|(seed, w)| ((*seed, w.placement, w.index), w.requests)).collect();
    let below_census = seeded
        .iter()
        .filter(|(_, w)| w.unattainable && w.max_rate < 1.0)
        .map(|&(seed, w)| BelowCensus {
            seed,
            placement: w.placement,
            index: w.index,
            requests: w.requests,
            requests_before: w.index.checked_sub(1).and_then(|i| requests.get(&(seed, w.placement, i)).copied()),
            max_rate: w.max_rate,
        })
        .take(5)
        .collect();
    let hours = runs.len() as f64 * sc.duration_s as f64 / 3600.0;
    Summary {
        seeds: runs.len(),
        windows: all.len(),
        p50_error: p50,
        p95_error: p95,
        max_error: all.iter().flat_map(|s| s.errors.iter().copied()).fold(0.0, f64::max),
        p95_relative_small: rel,
        p95_relative_small_expected: rel_expected,
        within,
        coverage,
        joint_coverage: joint,
        census_coverage,
        census_incomplete,
        census_allowed,
        census_by_target,
        samples_vs_minimum: if needed > 0.0 { sampled as f64 / needed } else { 0.0 },
        reconverge: changes::reconvergence(&waits, false),
        reconverge_in_faults: changes::reconvergence(&waits, true),
        slow_changes: changes::slow(&waits),
        faults: sc.faults.iter().map(|f| changes::fault(sc, runs, f)).collect(),
        infeasible_windows: infeasible.len(),
        infeasible_flagged: share_flagged(&infeasible),
        marginal_windows: marginal.len(),
        marginal_flagged: share_flagged(&marginal),
        near_miss_within,
        unflagged,
        outside,
        false_flags,
        false_flagged,
        unattainable_windows: unattainable.len(),
        unattainable_at_census: if unattainable.is_empty() {
            1.0
        } else {
            at_census as f64 / unattainable.len() as f64
        },
        below_census,
        invalid_plans: runs.iter().map(|r| r.invalid_plans).sum(),
        plans_per_hour: runs.iter().flat_map(|r| r.published.values()).sum::<u64>() as f64 / hours.max(1e-9),
        plans_per_hour_by: {
            let mut by = std::collections::BTreeMap::<Publish, u64>::new();
            runs.iter().flat_map(|r| &r.published).for_each(|(w, n)| *by.entry(*w).or_default() += n);
            by.into_iter().map(|(w, n)| (w, n as f64 / hours.max(1e-9))).collect()
        },
        sampled_per_s: sampled as f64 / (attainable.len() as f64 * sc.period_s as f64).max(1.0),
    }
}

/// Coverage per campaign over the sampled windows (census ones are scored apart).
fn sampled_coverage(windows: &[&Scored]) -> f64 {
    share(windows.iter().filter(|s| !s.census).flat_map(|s| s.covered()))
}

fn share(it: impl Iterator<Item = bool>) -> f64 {
    cells(it).0
}

/// The share of `it` that is true, and how many there were (NaN of none).
fn cells(it: impl Iterator<Item = bool>) -> (f64, usize) {
    let (mut yes, mut n) = (0usize, 0usize);
    for b in it {
        yes += usize::from(b);
        n += 1;
    }
    (if n == 0 { f64::NAN } else { yes as f64 / n as f64 }, n)
}

/// The `q` quantile (nearest rank) of `v`.
pub fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// `stat` over all windows, and its moving-block-bootstrap 95 % interval.
fn bootstrap<T>(series: &[Vec<T>], rng: &mut SmallRng, stat: &dyn Fn(&[&T]) -> f64) -> Figure {
    let all: Vec<&T> = series.iter().flatten().collect();
    let value = stat(&all);
    let blocks: Vec<&[T]> = series.iter().flat_map(|s| s.chunks(BLOCK)).collect();
    if blocks.len() < 2 {
        return Figure { value, low: value, high: value };
    }
    let mut replicates: Vec<f64> = (0..REPLICATES)
        .map(|_| {
            let mut sample: Vec<&T> = Vec::with_capacity(all.len());
            while sample.len() < all.len() {
                sample.extend(blocks[rng.random_range(0..blocks.len())].iter());
            }
            stat(&sample)
        })
        .filter(|x| x.is_finite())
        .collect();
    replicates.sort_by(f64::total_cmp);
    if replicates.is_empty() {
        return Figure { value, low: value, high: value };
    }
    let at = |q: f64| replicates[((replicates.len() - 1) as f64 * q).round() as usize];
    Figure { value, low: at(0.025), high: at(0.975) }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
