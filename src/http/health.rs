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
type StatusFuture = Pin<Box<dyn Future<Output = Option<serde_json::Value>> + Send>>;
type StatusFn = Arc<dyn Fn() -> StatusFuture + Send + Sync>;

/// Named dependency checks run by `/readyz`, and named facts it reports.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, CheckFn)>,
    statuses: Vec<(&'static str, StatusFn)>,
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

    /// Adds a fact `/readyz` reports under `name` when it has one (the
    /// binlog capture's role, say).
    pub fn with_status<F, Fut>(mut self, name: &'static str, status: F) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<serde_json::Value>> + Send + 'static,
    {
        self.statuses
            .push((name, Arc::new(move || Box::pin(status()))));
        self
    }

    /// Every fact that has a value (each bounded by 5 s).
    async fn statuses(&self) -> serde_json::Map<String, serde_json::Value> {
        let runs = self.statuses.iter().map(|(name, status)| async move {
            let value = tokio::time::timeout(Duration::from_secs(5), status()).await;
            Some(((*name).to_owned(), value.ok()??))
        });
        futures::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect()
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
    let (failures, mut body) = futures::join!(s.readiness.failures(), s.readiness.statuses());
    if failures.is_empty() {
        body.insert("status".into(), "ready".into());
        (StatusCode::OK, Json(body.into()))
    } else {
        let reasons: serde_json::Map<String, serde_json::Value> = failures
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        body.insert("status".into(), "not_ready".into());
        body.insert("failing".into(), reasons.into());
        (StatusCode::SERVICE_UNAVAILABLE, Json(body.into()))
    }
}
