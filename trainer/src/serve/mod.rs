//! `janus serve`: an OpenAI-compatible HTTP server (axum) over the generation engine.
//! The engine runs on its own thread ([`worker`]); the HTTP layer ([`routes`]) only
//! translates requests and answers. The port is open while the model loads: `/health`
//! answers 503 until it is ready. [`batches`] adds the subset of OpenAI's Files and
//! Batch API that batch judging uses.

mod batches;
mod metrics;
pub mod openai;
mod routes;
mod store;
mod worker;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crate::config::{DeviceChoice, Dtype};
use crate::data::PromptFormat;
use crate::error::{Error, Result};
use crate::generate::{Engine, EngineOptions, LoadedModel};

pub use metrics::{
    GENERATED_TOKENS_TOTAL, QUEUE_DEPTH, REQUESTS_TOTAL, TIME_TO_FIRST_TOKEN_SECONDS,
};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Model directory or URL.
    pub model: String,
    pub tokenizer: Option<String>,
    pub dtype: Dtype,
    pub device: DeviceChoice,
    pub prompt_format: PromptFormat,
    /// The name clients send as `model`.
    pub served_name: String,
    pub addr: SocketAddr,
    pub engine: EngineOptions,
    /// Longest prompt + completion (default: the model's `max_position_embeddings`).
    pub max_model_len: Option<usize>,
    /// Required bearer token (None: no authentication).
    pub api_key: Option<String>,
}

/// Serve until SIGINT/SIGTERM (in-flight requests finish first) or until the model
/// fails to load (that error is returned).
pub fn run(opts: ServeOptions) -> Result<()> {
    crate::storage::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the server runtime", e))?;
    rt.block_on(serve(opts))
}

async fn serve(opts: ServeOptions) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| Error::io(format!("binding {}", opts.addr), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("the listening address", e))?;
    let state = Arc::new(routes::AppState {
        name: opts.served_name.clone(),
        batches: store::Store::default(),
        metrics: metrics::Metrics::new(),
        api_key: opts.api_key.clone(),
        ready: OnceLock::new(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    tracing::info!(%addr, model = %opts.model, name = %opts.served_name, "listening (loading the model)");
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<Error>();
    let loader_state = state.clone();
    std::thread::Builder::new()
        .name("janus-loader".into())
        .spawn(move || match load(&opts, &loader_state) {
            Ok(()) => tracing::info!(%addr, "ready"),
            Err(e) => {
                let _ = failed_tx.send(e);
            }
        })
        .map_err(|e| Error::io("starting the loader thread", e))?;
    let failure = Arc::new(std::sync::Mutex::new(None));
    let slot = failure.clone();
    let shutdown = async move {
        // The loader drops its sender once the model is ready: only an error ends this.
        let failed = async {
            match failed_rx.await {
                Ok(e) => e,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            e = failed => *slot.lock().expect("lock") = Some(e),
            _ = signal() => tracing::info!("shutting down"),
        }
    };
    axum::serve(listener, routes::router(state, batches::routes()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving", e))?;
    let failed = failure.lock().expect("lock").take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn load(opts: &ServeOptions, state: &routes::AppState) -> Result<()> {
    let m = LoadedModel::load(
        &opts.model,
        opts.tokenizer.as_deref(),
        opts.dtype,
        opts.device,
    )?;
    let tokenizer = m.tokenizer.clone();
    let max_len = opts.max_model_len.unwrap_or(m.max_len).min(m.max_len);
    let engine = Engine::new(m, opts.engine.clone());
    let handle = worker::spawn(engine, state.metrics.clone());
    let _ = state.ready.set(routes::Ready {
        engine: handle,
        tokenizer,
        format: opts.prompt_format,
        max_len,
    });
    Ok(())
}

async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
