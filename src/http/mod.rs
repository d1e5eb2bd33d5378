//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, the query API under
//! `/api/` and the dashboard at `/`, all on one port.

pub mod access;
pub mod api;
pub mod dashboard;
pub mod health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

use crate::control::SnapshotControl;
use crate::http::access::Access;
use crate::http::health::Readiness;
use crate::metrics::Metrics;
use crate::sink::Sink;

/// A client has this long to send its request line and headers: slow
/// senders cannot hold connections open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest any request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 512;
/// Requests handled at once; more are answered 503 at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// No route takes a body: a request body larger than this is refused.
pub const MAX_BODY_BYTES: u64 = 16 << 10;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// The searchable sink behind `/api/*`; `None` answers 404 there.
    pub query: Option<Arc<dyn Sink>>,
    /// Who may ask.
    pub access: Access,
    /// Where `POST /api/snapshot` requests go; `None` answers 404.
    pub snapshot: Option<SnapshotControl>,
    /// The source's TiDB checkpoint TSO, for `GET /api/checkpoint`; `None`
    /// answers `{"tso": null}`.
    pub checkpoint: Option<CheckpointFn>,
}

/// Reads the source's TiDB checkpoint TSO (`OffsetTracker::checkpoint_tso`).
pub type CheckpointFn = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// The router, for embedding and tests: the routes behind the access check
/// and the request limits.
pub fn router(state: HttpState) -> Router {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/events", get(api::events))
        .route("/api/stats", get(api::stats))
        .route("/api/rows", get(api::rows))
        .route("/api/rows/history", get(api::row_history))
        .route("/api/snapshot", post(api::snapshot))
        .route("/api/checkpoint", get(api::checkpoint))
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .layer(middleware::from_fn_with_state(
            state.access.clone(),
            access::guard,
        ))
        .layer(middleware::from_fn_with_state(in_flight, limits))
        .with_state(state)
}

/// The request limits: a body cap, a concurrency cap and a deadline.
async fn limits(
    axum::extract::State(in_flight): axum::extract::State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if chunked || declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONNECTION, "close")],
            "request bodies are not accepted here\n",
        )
            .into_response();
    }
    // Probes stay answerable however busy the API is.
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    let _permit = match (probe, in_flight.try_acquire()) {
        (true, _) => None,
        (false, Ok(permit)) => Some(permit),
        (false, Err(_)) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "too many requests in flight\n",
            )
                .into_response()
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
    }
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

/// Serves until `shutdown` fires, then lets open requests finish.
///
/// HTTP/1.1 only, with a header-read deadline and a connection cap, which
/// `axum::serve` does not offer: a flood of slow clients holds neither the
/// runtime nor the store away from ingestion.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, not exit.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|req: Request<hyper::body::Incoming>| req.map(axum::body::Body::new)),
        );
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}
