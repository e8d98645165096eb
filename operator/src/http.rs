//! `/metrics`, `/healthz`, `/readyz`, and the pods' progress reports
//! (`POST /v1/report`, [`crate::report`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use janus_crds::{JanusEvalJob, JanusTrainingJob};
use kube::runtime::reflector::Store;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::report::Reports;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    /// Set once the API server answered.
    pub ready: Arc<AtomicBool>,
    /// The controller's job cache, once this replica leads (for `janus_jobs{phase}`).
    pub jobs: Arc<OnceLock<Store<JanusTrainingJob>>>,
    /// Whether the controller is wedged (see [`crate::health`]).
    pub health: Health,
    /// The evaluation controller's cache, once this replica leads (`janus_eval_jobs{phase}`).
    pub eval_jobs: Arc<OnceLock<Store<JanusEvalJob>>>,
    /// The report endpoint (every replica serves it, leader or not).
    pub reports: Arc<Reports>,
}

async fn metrics(State(s): State<HttpState>) -> String {
    if let Some(store) = s.jobs.get() {
        s.metrics
            .set_job_phases(store.state().iter().map(|j| j.phase()));
    }
    if let Some(store) = s.eval_jobs.get() {
        s.metrics
            .set_eval_job_phases(store.state().iter().map(|j| j.phase()));
    }
    s.metrics.encode()
}

/// The liveness probe: 503 with the reason when the controller is wedged.
async fn healthz(State(s): State<HttpState>) -> (StatusCode, String) {
    match s.health.check(std::time::Instant::now()) {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(why) => {
            tracing::error!(reason = %why, "controller wedged: /healthz fails");
            (StatusCode::SERVICE_UNAVAILABLE, format!("wedged: {why}"))
        }
    }
}

/// The readiness probe: the API server answered, and (on the leader) every cache is
/// complete and no watch is failing.
async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    if !s.ready.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the API server has not answered".into(),
        );
    }
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

/// The body is handed on unread: [`Reports`] reads it only once the request is let in.
async fn report(State(s): State<HttpState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (status, retry_after, text) = s.reports.handle(&parts.headers, body).await;
    let mut resp = (status, text).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(janus_crds::progress::publish::PATH, post(report))
        .with_state(state)
}

/// Bind `addr` (port 0: any free port) and serve in the background; returns the bound
/// address.
pub async fn serve(addr: SocketAddr, state: HttpState) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(bound)
}
