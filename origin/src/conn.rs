//! Redis connections: one node or a Redis Cluster, behind one type.
//!
//! Everything else talks to [`RedisConn`], so the origin runs unchanged on a single
//! `redis-server` and on a cluster. What makes that work is the key layout
//! ([`allot_core::contract::keys`]): every command, script and pipeline touches one hash slot (one
//! placement's keys, or a single global key), which is all a cluster needs.
//!
//! Two connections per origin: a shared multiplexed one (every request's commands are
//! pipelined on it, with a response timeout) and one for the aggregator's blocking
//! `XREADGROUP`, which must not stall the shared one; and, when the archiver runs, one
//! per archived stream ([`ArchiveRedis`]). Every one of them reconnects by itself and has
//! a response timeout: the blocking one's lies above the longest `BLOCK` it is sent, so a
//! read that outlives it is a dead or half-open socket, not a quiet stream. Without that,
//! a Redis restart, a `CLIENT KILL` or a silently dropped socket would leave the
//! aggregator failing (or waiting) for ever while the ingest, on its own connection, kept
//! answering 202.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};
use secrecy::ExposeSecret;

use crate::config::RedisConfig;

/// A connection to a single node or a cluster.
#[derive(Clone)]
pub enum RedisConn {
    /// Reconnects by itself: the shared and the archiver's connections on a single node.
    Managed(ConnectionManager),
    /// The aggregator's blocking connection on a single node.
    Replaced(Replacing),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Managed(_) => "RedisConn::Managed",
            Self::Replaced(_) => "RedisConn::Replaced",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Replaced(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Replaced(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Replaced(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

fn nodes(cfg: &RedisConfig) -> Vec<String> {
    cfg.url.expose_secret().split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The shared connection (with a response timeout).
pub async fn shared(cfg: &RedisConfig) -> RedisResult<RedisConn> {
    let timeout = Duration::from_millis(cfg.response_timeout_ms);
    reconnecting(cfg, timeout, timeout).await
}

/// A connection that re-establishes itself, with these timeouts.
async fn reconnecting(cfg: &RedisConfig, response: Duration, connect: Duration) -> RedisResult<RedisConn> {
    if cfg.cluster {
        let client =
            ClusterClient::builder(nodes(cfg)).response_timeout(response).connection_timeout(connect).build()?;
        return Ok(RedisConn::Cluster(client.get_async_connection().await?));
    }
    let client = redis::Client::open(cfg.url.expose_secret())?;
    let config =
        ConnectionManagerConfig::new().set_response_timeout(Some(response)).set_connection_timeout(Some(connect));
    Ok(RedisConn::Managed(ConnectionManager::new_with_config(client, config).await?))
}

/// How far above the longest `BLOCK` the blocking connection's response timeout lies:
/// the time a loaded Redis may take to answer once the block ends.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);

/// The connection for blocking reads of at most `max_block`: its response timeout is
/// `max_block` plus a margin, so only a dead connection times out, and then it is
/// replaced ([`Replacing`]). A cluster connection reconnects by itself.
pub async fn blocking(cfg: &RedisConfig, max_block: Duration) -> RedisResult<RedisConn> {
    let connect = Duration::from_millis(cfg.response_timeout_ms);
    if cfg.cluster {
        return reconnecting(cfg, blocking_timeout(max_block), connect).await;
    }
    let client = redis::Client::open(cfg.url.expose_secret())?;
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(blocking_timeout(max_block)))
        .set_connection_timeout(Some(connect));
    let conn = Replacing { connect: Arc::new((client, config)), current: Arc::default() };
    // Connect now: a wrong address fails the start, as the shared connection does.
    conn.get().await?;
    Ok(RedisConn::Replaced(conn))
}

/// A multiplexed connection replaced after any I/O error or timeout.
///
/// A `ConnectionManager` reconnects after a dropped connection, but not after a
/// timeout: on a half-open socket (a peer gone without a FIN, a NAT that forgot the
/// flow) every command would time out for as long as the kernel keeps the socket. For
/// the blocking connection a timeout can only mean that, so it is dropped and the next
/// command opens a new one.
#[derive(Clone)]
pub struct Replacing {
    /// Where and how to connect.
    connect: Arc<(redis::Client, AsyncConnectionConfig)>,
    /// The connection in use, with a generation number so that a failure seen on an old
    /// connection does not drop its replacement.
    current: Arc<tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>>,
}

impl Replacing {
    async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            return Ok(c.clone());
        }
        let (client, config) = &*self.connect;
        let conn = client.get_multiplexed_async_connection_with_config(config).await?;
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        *current = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    async fn failed(&self, generation: u64, e: &redis::RedisError) {
        if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() {
            let mut current = self.current.lock().await;
            if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                tracing::warn!(error = %e, "replacing the blocking redis connection");
                *current = None;
            }
        }
    }

    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.get().await?;
            let reply = conn.req_packed_command(cmd).await;
            if let Err(e) = &reply {
                self.failed(generation, e).await;
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.get().await?;
            let reply = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &reply {
                self.failed(generation, e).await;
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.connect.0.get_connection_info().redis_settings().db()
    }
}

impl std::fmt::Debug for Replacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replacing")
    }
}

/// Generations of [`Replacing`] connections.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The response timeout of a connection whose reads block up to `max_block`.
pub fn blocking_timeout(max_block: Duration) -> Duration {
    max_block + BLOCK_MARGIN
}

/// The archiver's connections, one per archived stream: single node or cluster like the
/// rest of the origin. Its reads block for at most half a second, so the connections get
/// a response timeout above that; both kinds reconnect by themselves.
#[derive(Debug, Clone)]
pub struct ArchiveRedis(pub RedisConfig);

impl allot_archive::Connect for ArchiveRedis {
    type Conn = RedisConn;

    async fn connect(&self) -> RedisResult<RedisConn> {
        reconnecting(&self.0, Self::response_timeout(), Duration::from_secs(5)).await
    }
}
