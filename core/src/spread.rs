//! Spreading an edge's picks evenly: within each eligibility pattern, each outcome's
//! deliveries follow its odds to about a request, instead of the binomial spread of
//! independent random picks.
//!
//! **Why.** With an independent uniform per request, the weighted pick gives a campaign
//! of share `s` a binomial count over `n` requests: its realized share is off by
//! `√(s(1−s)/n)` however right the weights are. For small targets on modest traffic that
//! is most of the error: a 0.5 % campaign on 20,000 requests a window is off by ±14 % of
//! its target one time in three. The manager judges the realized share, so this noise is
//! as real as a controller's.
//!
//! **How.** Per eligibility pattern, each eligible outcome (a campaign, or "no ad") keeps
//! a *credit*, what it is owed: a request adds to each its odds (its weight over the
//! eligible total, as [`crate::choose::pick`] uses) and goes to the one owed the most,
//! which pays one back. This is smooth weighted round robin (nginx's), the
//! largest-deficit rule of the chairman assignment problem: each outcome's deliveries
//! stay within about a request of the sum of its odds over the pattern's requests, so
//! the edge as a whole is off by about a request per isolate and pattern, not by `√n`.
//!
//! **Per pattern, on purpose.** Credits shared by all patterns would be smoother still
//! for a campaign spread thin over many patterns, but the largest-deficit rule then moves
//! a campaign's picks to the patterns where it has fewer rivals: totals stay right, while
//! the split over platforms and countries drifts from the odds, and with it everything
//! that differs between them (how often an ad renders, what an advertiser expects of its
//! targeting). In the simulator that cost windows outside the margin where ads render
//! differently per platform. Kept per pattern, every pattern gets its own odds.
//!
//! Nothing else changes: whether a request is sampled is decided on its id, independent
//! of the choice, so the origin's estimates stay unbiased for the realized shares and
//! its intervals keep their meaning. A new plan with the same campaigns keeps the
//! credits (a window that straddles two plans is delivered as its requests owed); one
//! with other campaigns starts the streams afresh.
//!
//! **Hostile input.** A client chooses its attributes, hence its pattern, but its
//! requests get only their own pattern's odds: no sequence of requests moves another
//! pattern's picks. At most [`MAX_STREAMS`] patterns keep credits per [`Spread`]; past
//! that a pattern gets the plain random pick, so memory is bounded whatever clients
//! send. Credits are clamped to `±CREDIT_BOUND`. Each stream starts at random and the
//! requests of many clients interleave, so an app cannot tell which ad its next request
//! gets.

use crate::bits::Ones;
use crate::choose::pick;
use crate::{CampaignId, Plan};

/// At most this many eligibility patterns keep credits, per placement and isolate.
pub const MAX_STREAMS: usize = 32;

/// A new stream starts this many steps into its sequence at most (uniformly).
const WARMUP: u64 = 1024;

/// How far a credit may stray from zero. Within a pattern credits stay within about ±1
/// (see the tests); the clamp only bounds what floating point could accumulate.
const CREDIT_BOUND: f64 = 8.0;

/// The credits of one placement's outcomes at one isolate, per eligibility pattern. The
/// shell owns it and passes it to [`crate::CompiledPlan::choose_spread`] with every
/// request of the placement.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    /// The plan the credits are indexed by: its version and campaign ids.
    version: Option<u64>,
    ids: Vec<CampaignId>,
    /// `(pattern, credit per campaign of the plan then "no ad")`, sorted by pattern.
    streams: Vec<(u64, Vec<f64>)>,
}

impl Spread {
    pub fn new() -> Self {
        Self::default()
    }

    /// The outcome for a request with eligibility `eligible` under `plan`: a campaign's
    /// index, or `None` for no ad. `fresh` gives 64 random bits: the start of a new
    /// pattern's stream, or the uniform of a plain pick past [`MAX_STREAMS`].
    pub fn pick(&mut self, plan: &Plan, eligible: u64, fresh: impl FnOnce() -> u64) -> Option<usize> {
        self.adopt(plan);
        let none = plan.campaigns.len();
        let weight = |i: usize| if i < none { plan.campaigns[i].weight.max(0.0) } else { plan.no_ad_weight.max(0.0) };
        // The eligible campaigns are the set bits below `none`, lowest first: plan order,
        // on which ties between equal credits and the rounding of the total depend.
        let outcomes = || Ones(eligible).take_while(move |&i| i < none).chain([none]);
        let total: f64 = outcomes().map(weight).sum();
        if total.is_nan() || total <= 0.0 {
            return None;
        }
        let at = match self.streams.binary_search_by_key(&eligible, |s| s.0) {
            Ok(at) => at,
            Err(at) if self.streams.len() < MAX_STREAMS => {
                // Started at a random point of its sequence: from zero credits, a random
                // number of steps below `WARMUP`. Any fixed start (zero, or even random
                // credits) favours some outcomes in a young stream's first picks; a
                // uniform point of the sequence gives each request its odds, up to
                // `2n/WARMUP` requests over the next `n`.
                let mut credit = vec![0.0; none + 1];
                for _ in 0..fresh() % WARMUP {
                    step(&mut credit, outcomes(), weight, total);
                }
                self.streams.insert(at, (eligible, credit));
                at
            }
            Err(_) => return pick(plan, eligible, unit(fresh())),
        };
        let b = step(&mut self.streams[at].1, outcomes(), weight, total)?;
        (b < none).then_some(b)
    }

    /// Patterns holding credits.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Follows `plan`: the same campaigns keep their credits (new weights, a new version);
    /// other campaigns start every stream afresh (a pattern is a set of campaign
    /// indices, which then mean other campaigns).
    fn adopt(&mut self, plan: &Plan) {
        if self.version == Some(plan.version) {
            return;
        }
        let same =
            self.ids.len() == plan.campaigns.len() && self.ids.iter().zip(&plan.campaigns).all(|(a, c)| a == &c.id);
        if !same {
            self.streams.clear();
            self.ids = plan.campaigns.iter().map(|c| c.id.clone()).collect();
        }
        self.version = Some(plan.version);
    }
}

/// One request of a stream: every eligible outcome is credited its odds, the one owed
/// the most is picked and pays one back.
fn step(
    credit: &mut [f64],
    outcomes: impl Iterator<Item = usize>,
    weight: impl Fn(usize) -> f64,
    total: f64,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    for i in outcomes {
        let w = weight(i);
        if w > 0.0 {
            credit[i] += w / total;
            if best.is_none_or(|b| credit[i] > credit[b]) {
                best = Some(i);
            }
        }
    }
    let b = best?;
    credit[b] = (credit[b] - 1.0).clamp(-CREDIT_BOUND, CREDIT_BOUND);
    Some(b)
}

/// The top 53 bits as a number in `[0, 1)`.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
#[path = "spread_tests.rs"]
mod tests;
