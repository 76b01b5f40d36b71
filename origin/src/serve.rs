//! The HTTP server: the router on hyper connections, with the limits a public endpoint
//! needs.
//!
//! `axum::serve` has no timeouts and no connection limit, so a client could hold
//! connections open forever by sending headers a byte at a time, or by never finishing
//! a body. Here:
//!
//! - headers must arrive within `header_read_timeout_ms` (also the longest a kept-alive
//!   connection may sit idle), or the connection is closed;
//! - a request, body included, must be answered within `request_timeout_ms`, or it gets
//!   `503 timeout` in the one JSON error format (the body is read inside the handler, so
//!   a slow body is covered too);
//! - at most `max_connections` are served at once; further ones wait in the listen
//!   backlog until one closes, so memory and file descriptors stay bounded.
//!
//! Shutdown stops accepting, lets in-flight requests finish (each within its timeout)
//! and closes idle connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Counts and times every request by its route template (`/v1/placements/{id}`), never
/// by its path, and by its method only when it is a standard one: made-up ids, paths
/// and methods cannot grow the number of series.
pub fn with_request_metrics(router: Router, metrics: Metrics) -> Router {
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let metrics = metrics.clone();
        async move {
            let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
            let method: &'static str = match req.method().as_str() {
                "GET" => "GET",
                "HEAD" => "HEAD",
                "POST" => "POST",
                "PUT" => "PUT",
                "DELETE" => "DELETE",
                "OPTIONS" => "OPTIONS",
                "PATCH" => "PATCH",
                _ => "other",
            };
            let started = Instant::now();
            let response = next.run(req).await;
            metrics.http_requests.with_label_values(&[&route, method, response.status().as_str()]).inc();
            metrics.http_duration.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
            response
        }
    }))
}

/// The request timeout as a layer: the handler's future is dropped when it expires.
pub fn with_request_timeout(router: Router, limit: Duration) -> Router {
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| async move {
        match tokio::time::timeout(limit, next.run(req)).await {
            Ok(response) => response,
            Err(_) => ApiError::Timeout { after_ms: limit.as_millis() as u64 }.into_response(),
        }
    }))
}

/// Serves `router` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, router: Router, cfg: &HttpConfig, cancel: CancellationToken) {
    let router = with_request_timeout(router, Duration::from_millis(cfg.request_timeout_ms));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms))
        .keep_alive(true);
    let builder = Arc::new(builder.http1_only());
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
