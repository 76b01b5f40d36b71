//! Wiring: connections, the router, the background loops, and graceful shutdown.
//!
//! [`start`] returns once the listener is bound (port 0 is fine; the bound address is in
//! [`Running::addr`] and in the `listening` log line), so tests start origins in-process
//! and the binary is a few lines. [`Running::shutdown`] stops accepting, lets in-flight
//! requests finish, lets the aggregator apply and acknowledge the batch in hand, and
//! gives the control shards back.

use std::net::SocketAddr;
use std::sync::Arc;

use allot_core::Verifier;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::redis_check::Severity;
use crate::store::Store;

/// Shared state of one running origin.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub store: Store,
    pub verifier: Verifier,
    /// Which signed events are counted (limits, the catalogue of published plans).
    pub admission: crate::admission::Admission,
    /// The ingest's budget of body bytes in memory ([`crate::shed`]).
    pub bodies: crate::shed::BodyBudget,
    pub metrics: Metrics,
    pub auth: Auth,
    /// Wakes the control loop (targets changed).
    pub control_wake: Notify,
    /// This instance's identity (lease holder name).
    pub instance: String,
    /// A simulated process pause (failpoints only).
    pub pause: crate::lease::Pause,
    /// The control shards this origin holds, for `/readyz`.
    pub control: crate::shards::ControlState,
    /// Whether the archiver's lanes run, when the archiver runs here (for `/readyz`).
    pub archive_lanes: Option<Arc<allot_archive::LaneStates>>,
    /// One preview solved at a time ([`crate::preview`]).
    pub previews: tokio::sync::Semaphore,
}

/// Why the origin could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("ingest keys: {0}")]
    Keys(String),
    #[error("event limits: {0}")]
    Limits(#[from] allot_core::admit::LimitsError),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("archive: {0}")]
    Archive(#[from] allot_archive::ArchiveError),
    #[error("unsafe Redis: {0} (set redis.allow_unsafe = true to start anyway)")]
    UnsafeRedis(String),
}

/// A started origin.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    cancel: CancellationToken,
    server: JoinHandle<()>,
    loops: Vec<JoinHandle<()>>,
}

impl Running {
    /// Graceful stop: no new connections, in-flight requests and the aggregator's batch
    /// finish, the lease is released.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "server task failed");
        }
        for l in self.loops {
            let _ = l.await;
        }
        tracing::info!("origin stopped");
    }
}

pub fn router(app: Arc<App>) -> Router {
    let router = Router::new()
        .route("/v1/events", post(crate::ingest::post_events))
        .route("/v1/placements", get(crate::admin::list_placements))
        .route(
            "/v1/placements/{id}",
            get(crate::admin::get_placement).put(crate::admin::put_placement).delete(crate::admin::delete_placement),
        )
        .route("/v1/placements/{id}/status", get(crate::status::get_status))
        .route("/v1/placements/{id}/history", get(crate::history::get_history))
        .route("/v1/placements/{id}/preview", post(crate::preview::preview))
        .route("/v1/audit", get(crate::audit::get_audit))
        .route("/v1/me", get(crate::auth::me))
        .merge(crate::console::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::openapi::serve))
        // After the routes: it applies to those registered before it.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .with_state(app.clone());
    crate::serve::with_request_metrics(router, app.metrics.clone())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "`{\"status\": \"ok\"}`")))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: Redis answers, no archive lane has been down past its grace, and this
/// origin's shard count is the cluster's. The body says which control shards this
/// origin acts on (`control`, when the control loop runs here).
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "`{\"status\": \"ready\", \"control\": {\"shards\", \"members\", \"target\", \"held\": [{\"shard\", \"epoch\", \"acquired_at_ms\", \"valid_until_ms\", \"offered\"}], \"at_ms\"}}`"),
    (status = 503, description = "Not ready: `error.message` says why (Redis, which archive lane, or a shard count that differs from the cluster's)")))]
pub async fn readyz(State(app): State<Arc<App>>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    app.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready: redis unreachable");
        ApiError::NotReady("redis unreachable".into())
    })?;
    if let (Some(lanes), Some(cfg)) = (&app.archive_lanes, &app.config.archive) {
        // A lane restarting after a failure is down for a moment; one down longer than the
        // grace is not coming back by itself soon.
        if let Some(lane) = lanes.down_past(cfg.lane_down_grace(), std::time::Instant::now()).first() {
            tracing::warn!(dataset = lane, "not ready: an archive lane is down");
            return Err(ApiError::NotReady(format!("archive lane {lane} is down").into()));
        }
    }
    let control = app.control.status(crate::now_ms());
    if let Some(cluster) = control.as_ref().and_then(|c| c.mismatch) {
        let message = format!("control.shards is {} here but {cluster} in the cluster", app.config.control.shards);
        tracing::warn!(%message, "not ready");
        return Err(ApiError::NotReady(message.into()));
    }
    Ok(axum::Json(match control {
        Some(control) => serde_json::json!({"status": "ready", "control": control}),
        None => serde_json::json!({"status": "ready"}),
    }))
}

/// One registry: the origin's metrics and, when it runs here, the archiver's. With
/// `metrics.require_token`, only for a caller with an admin token, checked before any
/// rendering.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4"),
    (status = 401, description = "`metrics.require_token` is set and the request has no valid admin token")))]
pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if app.config.metrics.require_token {
        app.auth.check(&headers, crate::config::Role::Viewer)?;
    }
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], app.metrics.render_in_turn().await).into_response())
}

fn instance_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:08x}", crate::aggregate::process_name())
}

/// Connects, binds, and starts serving and the background loops.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let mut shared = crate::conn::shared(&config.redis).await?;
    for finding in crate::redis_check::check(&mut shared).await {
        match finding.severity {
            Severity::Unsafe if !config.redis.allow_unsafe => return Err(StartError::UnsafeRedis(finding.message)),
            Severity::Unsafe => {
                tracing::error!(problem = %finding.message, "unsafe Redis, allowed by redis.allow_unsafe")
            }
            Severity::Warning => tracing::warn!(problem = %finding.message, "Redis settings"),
        }
    }
    let verifier = Verifier::new(config.ingest_keys(), config.ingest.max_skew_secs)
        .map(|v| v.with_max_age(config.ingest.max_signature_age_secs))
        .map_err(|e| StartError::Keys(e.to_string()))?;
    let admission = crate::admission::Admission::new(&config)?;
    let publisher = Arc::new(Publisher::from_config(&config)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let archiver = match &config.archive {
        Some(cfg) => Some(allot_archive::Archiver::new(cfg.clone()).await?),
        None => None,
    };
    let metrics = Metrics::with_config(&config.metrics);
    if let Some(archiver) = &archiver {
        metrics.register_archive(&archiver.metrics());
    }

    let app = Arc::new(App {
        auth: Auth::new(&config.admin.tokens),
        store: Store::new(shared),
        verifier,
        admission,
        bodies: crate::shed::BodyBudget::new(config.ingest.max_buffered_bytes, config.ingest.max_body_bytes),
        metrics,
        control_wake: Notify::new(),
        instance: instance_id(),
        pause: Default::default(),
        control: Default::default(),
        archive_lanes: archiver.as_ref().map(|a| a.lanes()),
        previews: tokio::sync::Semaphore::new(1),
        config,
    });
    // Blocking reads get their own connection, whose response timeout lies above the
    // longest block.
    let blocking = match app.config.aggregate.enabled {
        true => {
            let max_block = std::time::Duration::from_millis(app.config.aggregate.block_ms);
            Some(crate::conn::blocking(&app.config.redis, max_block).await?)
        }
        false => None,
    };
    let cancel = CancellationToken::new();
    let server = {
        let (cancel, router, http) = (cancel.clone(), router(app.clone()), app.config.http.clone());
        tokio::spawn(async move { crate::serve::serve(listener, router, &http, cancel).await })
    };
    tracing::info!(addr = %addr, instance = %app.instance, "listening");
    let mut loops = Vec::new();
    // The loops start after the "listening" line, which tests and scripts wait for.
    if let Some(conn) = blocking {
        loops.push(tokio::spawn(crate::aggregate::run(app.clone(), conn, cancel.clone())));
    }
    loops.push(tokio::spawn(crate::trim::run(app.clone(), app.store.conn(), cancel.clone())));
    if app.config.control.enabled {
        loops.push(tokio::spawn(crate::control::run(app.clone(), publisher, cancel.clone())));
    }
    if let Some(archiver) = archiver {
        let redis = crate::conn::ArchiveRedis(app.config.redis.clone());
        let stop = cancel.clone();
        loops.push(tokio::spawn(async move {
            if let Err(e) = archiver.run(redis, async move { stop.cancelled().await }).await {
                tracing::error!(error = %e, "archiver stopped");
            }
        }));
    }
    Ok(Running { addr, app, cancel, server, loops })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
