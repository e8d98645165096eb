//! `/metrics`, `/healthz`, `/readyz`, and the pods' progress reports
//! (`POST /v1/report`, [`crate::report`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use janus_crds::{JanusEvalJob, JanusTrainingJob};
use kube::runtime::reflector::Store;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

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

/// Connections served at once. The next connection is accepted only when one ends:
/// the rest wait in the kernel's accept queue, where they cost this process nothing
/// (axum's own loop accepts every connection and gives each a task and hyper's
/// buffers, so a flood of 1,500 connections was 1,500 of each at once).
pub const MAX_CONNECTIONS: usize = 256;
/// The accept queue asked for (the kernel caps it at `net.core.somaxconn`): a flood
/// waits there instead of overflowing it, since a dropped SYN is retried only a
/// second later.
const BACKLOG: u32 = 4096;
/// hyper's read buffer at most, bytes: a request's head must fit (a projected token is
/// about 1 KiB); a body is read through it in pieces, and only once it is wanted.
const MAX_BUF_BYTES: usize = 16 * 1024;
/// The longest a request's head may take to arrive (a slow sender holds a connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one connection is served, keep-alive included: a connection that never
/// ends holds a place forever otherwise (a Prometheus scrape simply reconnects).
const CONNECTION_MAX: Duration = Duration::from_secs(60);

/// How much the server takes on at once (tests make it small).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub header_read_timeout: Duration,
    pub connection_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_max: CONNECTION_MAX,
        }
    }
}

/// Bind `addr` (port 0: any free port) and serve in the background; returns the bound
/// address.
pub async fn serve(addr: SocketAddr, state: HttpState) -> std::io::Result<SocketAddr> {
    serve_with(addr, router(state), Limits::default()).await
}

/// [`serve`] with other limits, any router.
pub async fn serve_with(
    addr: SocketAddr,
    app: Router,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, app, limits));
    Ok(bound)
}

/// Accept a connection only with a place for it, and serve it on its own task.
async fn accept_loop(listener: TcpListener, app: Router, limits: Limits) {
    let places = Arc::new(Semaphore::new(limits.connections));
    loop {
        let place = places.clone().acquire_owned().await.expect("never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: the error is the host's, wait before the next.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _place = place;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(MAX_BUF_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(limits.connection_max, conn).await {
                tracing::debug!(error = %e, "an HTTP connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    /// GET `/` over a new connection: the answer's status line, and how long it took.
    fn fetch(addr: SocketAddr) -> (String, Duration) {
        let start = Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        let line = answer.lines().next().unwrap_or_default().to_string();
        (line, start.elapsed())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_connection_cap_a_connection_waits_until_a_silent_one_times_out() {
        let limits = Limits {
            connections: 2,
            header_read_timeout: Duration::from_millis(600),
            connection_max: Duration::from_secs(30),
        };
        let app = Router::new().route("/", get_route());
        let addr = serve_with("127.0.0.1:0".parse().unwrap(), app, limits)
            .await
            .unwrap();
        // Two connections that never send a head hold both places.
        let silent: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (line, took) = tokio::task::spawn_blocking(move || fetch(addr))
            .await
            .unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "served once a silent connection timed out: {took:?}"
        );
        drop(silent);
        let (line, took) = tokio::task::spawn_blocking(move || fetch(addr))
            .await
            .unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        assert!(took < Duration::from_millis(300), "{took:?}");
    }

    #[tokio::test]
    async fn a_head_over_the_buffer_is_refused() {
        let app = Router::new().route("/", get_route());
        let addr = serve_with("127.0.0.1:0".parse().unwrap(), app, Limits::default())
            .await
            .unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let big = "t".repeat(MAX_BUF_BYTES * 2);
            let _ = write!(
                s,
                "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {big}\r\n\r\n"
            );
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer.lines().next().unwrap_or_default().to_string()
        })
        .await
        .unwrap();
        assert!(line.starts_with("HTTP/1.1 431"), "{line}");
    }

    fn get_route() -> axum::routing::MethodRouter {
        axum::routing::get(|| async { "ok" })
    }
}
