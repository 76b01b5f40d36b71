//! allot's domain, with no I/O.
//!
//! Everything that decides something lives here: which campaign a request gets
//! ([`choose`]), whether a request is sampled ([`sample`]), what proves an ad was served
//! ([`token`]), what the edge tells the origin
//! ([`event`], [`signature`]), how sampled events become counts ([`stats`]) and estimates
//! ([`estimate`]), and how the origin computes the next plan ([`controller`],
//! [`planner`]). What the processes agree on (Redis keys, streams, the plan log) is the
//! [`contract`].
//!
//! Like quinn-proto, this crate never touches the outside world: it reads no clock, owns
//! no random number generator, opens no socket and spawns nothing. Time and randomness
//! are arguments. The edge worker (Wasm) and the origin (tokio) are thin shells around
//! it, so the math lives in exactly one place and runs identically in both.

pub mod admit;
mod bits;
pub mod choose;
pub mod contract;
pub mod controller;
pub mod estimate;
pub mod event;
pub mod evidence;
pub mod id;
pub mod lease;
pub mod membership;
pub mod plan;
pub mod planner;
pub mod quantile;
mod reading;
pub mod retry;
pub mod round;
pub mod sample;
pub mod shard;
pub mod signature;
pub mod solver;
pub mod spread;
pub mod stats;
pub mod stragglers;
pub mod targets;
pub mod token;

pub use admit::{Admitted, Catalogue, DropReason, Limits};
pub use choose::{Choice, CompiledPlan, Platform, RequestAttrs};
pub use controller::{ControlInput, ControlState, Controller, Decision, Feasibility};
pub use estimate::{DeliveryBasis, ShareEstimate};
pub use event::{Event, EventBatch, EventError, EventKind};
pub use evidence::Evidence;
pub use id::{CampaignId, IdError, PlacementId, RequestId};
pub use lease::{Fence, Lease, LeaseConfig, LeaseReply, Transition};
pub use membership::{Change, Member, Membership, MembershipConfig, OpOutcome, ShardOp, SyncReply, SyncRequest};
pub use plan::{PLAN_FORMAT, Plan, PlanCampaign, PlanError, Succession};
pub use planner::SampleRatePlanner;
pub use retry::{Backoff, RetryPolicy};
pub use round::{Outcome, Policy, Publish, Published, Round};
pub use sample::SampleKey;
pub use signature::{SignatureError, Verifier};
pub use spread::Spread;
pub use stats::WindowStats;
pub use targets::{CampaignTarget, Confidence, Eligibility, Rate, Targets, TargetsSpec, ValidationError};
pub use token::EdgeKey;

/// The most campaigns a placement may have. Eligibility sets are `u64` bit masks, which
/// keeps choosing allocation-free and the solver's inner loop branch-light.
pub const MAX_CAMPAIGNS: usize = 64;
