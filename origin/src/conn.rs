//! Redis connections: one node or a Redis Cluster, behind one type.
//!
//! Everything else talks to [`RedisConn`], so the origin runs unchanged on a single
//! `redis-server` and on a cluster. What makes that work is the key layout
//! ([`crate::keys`]): every command, script and pipeline touches one hash slot (one
//! placement's keys, or a single global key), which is all a cluster needs.
//!
//! Two connections per origin: a shared multiplexed one (every request's commands are
//! pipelined on it, with a response timeout) and one for the aggregator's blocking
//! `XREADGROUP`, which must not stall the shared one and has no response timeout; and,
//! when the archiver runs, one per archived stream ([`ArchiveRedis`]).

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
    /// Reconnects by itself; the shared connection on a single node.
    Managed(ConnectionManager),
    /// The aggregator's connection on a single node.
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Managed(_) => "RedisConn::Managed",
            Self::Multiplexed(_) => "RedisConn::Multiplexed",
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
            Self::Multiplexed(c) => c.req_packed_command(cmd),
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
            Self::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Multiplexed(c) => c.get_db(),
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

/// A connection for blocking reads (no response timeout).
pub async fn blocking(cfg: &RedisConfig) -> RedisResult<RedisConn> {
    if cfg.cluster {
        let client = ClusterClient::builder(nodes(cfg)).build()?;
        return Ok(RedisConn::Cluster(client.get_async_connection().await?));
    }
    let client = redis::Client::open(cfg.url.expose_secret())?;
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(RedisConn::Multiplexed(client.get_multiplexed_async_connection_with_config(&config).await?))
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
