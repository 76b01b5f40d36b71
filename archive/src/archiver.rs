//! The archiver: consumer groups on the event and plan streams that write Parquet to S3.
//!
//! One [`Archiver`] runs one [`crate::lane::Lane`] per [`Dataset`]: the sampled events
//! (`allot:events` → `events/`) and the published plans (`allot:plans` → `plans/`). Each
//! lane reads its stream with `XREADGROUP` into a buffer, flushes it by size and by age
//! as one object per hour partition keyed by the flush's first and last stream ids, and
//! acknowledges the entries only after every object is stored. So:
//!
//! - while S3 is down, the entries stay pending in the stream, the lane retries with
//!   exponential backoff and jitter, and the lag metric grows;
//! - if the archiver stops or crashes between storing and acknowledging, its pending
//!   entries are exactly the failed flush; whoever takes them over (the same process
//!   restarted under a configured consumer name, or a consumer that claims them once
//!   idle; default names are unique per process) flushes them as one and overwrites the
//!   same keys with the same bytes: no loss and no duplicate rows;
//! - if a replica never comes back, another claims its pending entries once they have
//!   been idle for `claim_idle_secs` and flushes them the same way ([`crate::claim`]);
//! - a lane that fails is restarted ([`crate::supervise`]).
//!
//! The consumer-group cycle itself (group, own pending entries, claims, reads,
//! acknowledgements) is `allot-stream`'s, shared with the origin's aggregator.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_core::retry::RetryPolicy;
use redis::RedisResult;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use crate::dataset::{Audit, Dataset, Events, Plans};
use crate::lane::Lane;
use crate::store::ArchiveStore;
use crate::supervise::LaneStates;
use crate::{ArchiveConfig, ArchiveError, ArchiverMetrics};

/// The first retry's ceiling; later ones double up to `retry_max_backoff_ms`.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// How a lane retries Redis and S3: the one retry policy (`allot_core::retry`, with
/// jitter, so replicas that failed together do not retry in lockstep), capped at
/// `retry_max_backoff_ms`.
pub(crate) fn retry_policy(cfg: &ArchiveConfig) -> RetryPolicy {
    RetryPolicy::new(FIRST_RETRY, cfg.retry_max_backoff())
}

impl From<allot_stream::Stopped> for ArchiveError {
    fn from(_: allot_stream::Stopped) -> Self {
        Self::Shutdown
    }
}

/// The longest a read blocks, which bounds how late a shutdown is noticed.
pub(crate) const MAX_BLOCK: Duration = Duration::from_millis(500);

/// How the archiver gets its Redis connections: one per lane, since a lane's reads block.
/// A connection must re-establish itself after a failure (a `ConnectionManager`, a
/// cluster connection); the lane retries a failed command with backoff.
///
/// A `redis::Client` connects to one node. The origin passes its own connector, which
/// opens a cluster connection when Redis is a cluster: the streams are single keys, so
/// every command the archiver sends touches one slot.
pub trait Connect: Send + Sync {
    type Conn: ConnectionLike + Send + Sync + 'static;

    fn connect(&self) -> impl Future<Output = RedisResult<Self::Conn>> + Send;

    /// The response timeout a connection needs: above the longest blocking read.
    fn response_timeout() -> Duration {
        MAX_BLOCK + Duration::from_secs(10)
    }
}

impl Connect for redis::Client {
    type Conn = ConnectionManager;

    async fn connect(&self) -> RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Self::response_timeout()))
            .set_max_delay(Duration::from_secs(5));
        ConnectionManager::new_with_config(self.clone(), config).await
    }
}

/// The streams-to-S3 archiver.
#[derive(Debug)]
pub struct Archiver {
    cfg: ArchiveConfig,
    store: ArchiveStore,
    metrics: Arc<ArchiverMetrics>,
    lanes: Arc<LaneStates>,
    /// Lane runs the `fail_lane` failpoint has still to fail.
    #[cfg(feature = "failpoints")]
    failures_left: std::sync::atomic::AtomicU32,
}

/// Runs an archiver on `redis_url` until `shutdown` completes.
pub async fn run(
    redis_url: &str,
    cfg: ArchiveConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ArchiveError> {
    let client = redis::Client::open(redis_url)?;
    Archiver::new(cfg).await?.run(client, shutdown).await
}

impl Archiver {
    pub async fn new(cfg: ArchiveConfig) -> Result<Self, ArchiveError> {
        cfg.check()?;
        let store = ArchiveStore::connect(&cfg).await;
        Ok(Self {
            #[cfg(feature = "failpoints")]
            failures_left: std::sync::atomic::AtomicU32::new(cfg.failpoint.as_ref().map_or(0, |f| f.times)),
            cfg,
            store,
            metrics: Arc::default(),
            lanes: Arc::default(),
        })
    }

    /// The archiver's metrics, for the origin's `/metrics`.
    pub fn metrics(&self) -> Arc<ArchiverMetrics> {
        self.metrics.clone()
    }

    /// Whether each lane runs, for the origin's `/readyz`.
    pub fn lanes(&self) -> Arc<LaneStates> {
        self.lanes.clone()
    }

    /// Archives until `shutdown` completes. A lane that fails is restarted; buffered
    /// entries are flushed once more on shutdown; if that fails they stay pending and the
    /// next start stores them.
    pub async fn run(
        &self,
        redis: impl Connect,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ArchiveError> {
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        let watcher = tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let events = self.lane::<Events>(&self.metrics.events, &redis, &stop);
        let plans = self.lane::<Plans>(&self.metrics.plans, &redis, &stop);
        let audit = self.lane::<Audit>(&self.metrics.audit, &redis, &stop);
        let (events, plans, audit) = tokio::join!(events, plans, audit);
        watcher.abort();
        events.and(plans).and(audit)
    }

    /// Runs one dataset's lane until shutdown, restarting it after a failure
    /// ([`crate::supervise`]).
    async fn lane<D: Dataset>(
        &self,
        metrics: &crate::metrics::DatasetMetrics,
        redis: &impl Connect,
        stop: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let state = self.lanes.of::<D>();
        let mut retry = allot_stream::Retry::new(retry_policy(&self.cfg));
        loop {
            let lane = Lane::<D>::new(&self.cfg, &self.store, metrics);
            let started = Instant::now();
            let up = || {
                state.up();
                ArchiverMetrics::set(&metrics.lane_up, 1);
            };
            let result = match self.failpoint::<D>() {
                Some(e) => Err(e),
                None => lane.run(redis, stop, up).await,
            };
            let e = match result {
                Err(ArchiveError::Shutdown) | Ok(()) => return Ok(()),
                Err(e) => e,
            };
            state.down(Instant::now());
            ArchiverMetrics::set(&metrics.lane_up, 0);
            tracing::error!(dataset = D::NAME, error = %e, "archiver lane failed; restarting it");
            if started.elapsed() > retry_policy(&self.cfg).max {
                // It ran well for a while: this failure starts a new series of retries.
                retry.reset();
            }
            if retry.wait(stop).await.is_err() {
                return Ok(());
            }
            ArchiverMetrics::add(&metrics.lane_restarts, 1);
        }
    }

    /// The `fail_lane` failpoint: an error instead of this run of `D`'s lane.
    #[cfg(feature = "failpoints")]
    fn failpoint<D: Dataset>(&self) -> Option<ArchiveError> {
        use std::sync::atomic::Ordering;
        let f = self.cfg.failpoint.as_ref()?;
        if f.dataset != D::NAME {
            return None;
        }
        let left = self.failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        left.ok().map(|_| ArchiveError::Config("failpoint fail_lane".into()))
    }

    /// Without the test hooks: the same signature, so the call site is one.
    #[cfg(not(feature = "failpoints"))]
    #[allow(clippy::extra_unused_type_parameters)]
    fn failpoint<D: Dataset>(&self) -> Option<ArchiveError> {
        None
    }
}
