//! Liveness and readiness.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::http::HttpState;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Named dependency checks run by `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, CheckFn)>,
}

impl Readiness {
    /// Adds a check.
    pub fn with<F, Fut>(mut self, name: &'static str, check: F) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()))));
        self
    }

    /// Runs every check (each bounded by 5 s); the failures by name.
    pub async fn failures(&self) -> Vec<(&'static str, String)> {
        let runs = self.checks.iter().map(|(name, check)| async move {
            match tokio::time::timeout(Duration::from_secs(5), check()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((*name, e)),
                Err(_) => Some((*name, "timed out after 5s".to_owned())),
            }
        });
        futures::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Alive as long as the process serves requests.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when every dependency answers, else 503 with the reasons.
pub async fn readyz(State(s): State<HttpState>) -> (StatusCode, Json<serde_json::Value>) {
    let failures = s.readiness.failures().await;
    if failures.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
    } else {
        let reasons: serde_json::Map<String, serde_json::Value> = failures
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "failing": reasons})),
        )
    }
}
