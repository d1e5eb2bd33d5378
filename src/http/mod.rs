//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, the query API under
//! `/api/` and the dashboard at `/`, all on one port.

pub mod api;
pub mod dashboard;
pub mod health;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::health::Readiness;
use crate::metrics::Metrics;
use crate::sink::Sink;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// The searchable sink behind `/api/*`; `None` answers 404 there.
    pub query: Option<Arc<dyn Sink>>,
}

/// The router, for embedding and tests.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/events", get(api::events))
        .route("/api/stats", get(api::stats))
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .with_state(state)
}

async fn metrics(
    axum::extract::State(s): axum::extract::State<HttpState>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Binds `addr` (port 0 picks a free port) and returns the bound address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
