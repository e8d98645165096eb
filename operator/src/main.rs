//! `janus-operator`: runs the JanusTrainingJob and JanusEvalJob controllers on the replica that holds the
//! leader Lease, and serves `/metrics`, `/healthz`, `/readyz` on every replica.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use futures::FutureExt;
use janus_crds::{JanusEvalJob, JanusTrainingJob};
use janus_operator::controller::{self, apply::MANAGER};
use janus_operator::events::{Recorder, Reporter};
use janus_operator::health::Health;
use janus_operator::http::{self, HttpState};
use janus_operator::leader::{LeaderElector, LeaseConfig};
use janus_operator::metrics::Metrics;
use janus_operator::report::Reports;
use janus_operator::telemetry;
use janus_operator::watch::DecodeReporter;
use janus_operator::Settings;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::reflector::Store;
use kube::{Api, Client};

#[derive(Parser, Debug)]
#[command(
    name = "janus-operator",
    version,
    about = "Kubernetes operator for JanusTrainingJobs and JanusEvalJobs"
)]
struct Args {
    /// Address of /metrics, /healthz, /readyz (port 0: any free port, printed at start).
    #[arg(long, env = "JANUS_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// JSON logs even on a terminal (they are JSON whenever stdout is not a terminal).
    #[arg(long)]
    log_json: bool,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "JANUS_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Run without leader election (a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "janus-operator")]
    lease_name: String,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the Lease (default: pod name, else host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// A leader that could not renew for this many seconds steps down.
    #[arg(long, default_value_t = 10)]
    renew_deadline_seconds: u64,
    /// Seconds between lease acquire / renew attempts.
    #[arg(long, default_value_t = 2)]
    retry_period_seconds: u64,
    /// /healthz fails once a watch has failed, or one reconcile has run, this long.
    #[arg(long, default_value_t = 120)]
    stall_seconds: u64,
    /// The report endpoint as pods reach it (the chart sets the operator's Service:
    /// `http://<service>.<namespace>.svc:<port>/v1/report`); without it pods do not
    /// report progress.
    #[arg(long, env = "JANUS_OPERATOR_REPORT_URL")]
    report_url: Option<String>,
    /// Reconciles in flight at once, per controller (default: 4 training, 8
    /// evaluation). More than the API server can serve only queues them there.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "janus-operator".into());
    format!("{host}-{}", std::process::id())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Caches of both controllers, once they run (for the phase gauges of `/metrics`).
#[derive(Clone, Default)]
struct Stores {
    jobs: Arc<OnceLock<Store<JanusTrainingJob>>>,
    eval_jobs: Arc<OnceLock<Store<JanusEvalJob>>>,
}

/// The training and the evaluation controller side by side until `shutdown`.
async fn run_controllers(
    client: Client,
    metrics: Metrics,
    health: Health,
    settings: Settings,
    stores: Stores,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let Stores { jobs, eval_jobs } = stores;
    // One reporter for both controllers: an undecodable object is reported once.
    let decode = DecodeReporter::new(
        metrics.clone(),
        Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(settings.identity.clone()),
            },
        ),
    );
    tokio::join!(
        controller::run::run::<JanusTrainingJob>(
            client.clone(),
            metrics.clone(),
            health.clone(),
            decode.clone(),
            settings.clone(),
            move |s| {
                let _ = jobs.set(s);
            },
            shutdown.clone(),
        ),
        controller::run::run::<JanusEvalJob>(
            client,
            metrics,
            health,
            decode,
            settings,
            move |s| {
                let _ = eval_jobs.set(s);
            },
            shutdown,
        ),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    janus_operator::install_crypto_provider();
    let args = Args::parse();
    telemetry::init(args.log_json);
    let identity = args.identity.clone().unwrap_or_else(default_identity);

    let metrics = Metrics::new();
    let health = Health::new(Duration::from_secs(args.stall_seconds));
    let ready = Arc::new(AtomicBool::new(false));
    let stores = Stores::default();
    // Every API request is counted (janus_operator_api_requests_total{method}) and all
    // but watches timed (janus_operator_api_request_duration_seconds{method,resource}).
    // Building the client sends nothing: HTTP is served before the API server answers.
    let client = kube::client::ClientBuilder::try_from(kube::Config::infer().await?)?
        .with_layer(&janus_operator::metrics::ApiRequestMetricsLayer::new(
            &metrics,
        ))
        .build();
    let bound = http::serve(
        args.http_addr,
        HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            jobs: stores.jobs.clone(),
            eval_jobs: stores.eval_jobs.clone(),
            health: health.clone(),
            reports: Arc::new(Reports::new(
                client.clone(),
                metrics.clone(),
                args.namespace.clone(),
            )),
        },
    )
    .await?;
    // Tests and humans read the port from here.
    tracing::info!(addr = %bound, identity = %identity, "serving /metrics /healthz /readyz /v1/report");
    if args.report_url.is_none() {
        tracing::warn!("no --report-url: pods will not report progress");
    }
    let version = client.apiserver_version().await?;
    tracing::info!(apiserver = %version.git_version, "connected to the API server");
    ready.store(true, Ordering::Relaxed);

    let settings = Settings {
        identity: identity.clone(),
        namespace: args.namespace.clone(),
        report_url: args.report_url.clone(),
        concurrency: args.concurrency,
    };
    let shutdown = async {
        shutdown_signal().await;
        tracing::info!("shutting down");
    };

    if args.no_leader_election {
        metrics.leader.set(1);
        run_controllers(client, metrics, health, settings, stores, shutdown).await;
        return Ok(());
    }

    lead(
        &args, identity, client, metrics, health, settings, stores, shutdown,
    )
    .await
}

/// Reconcile while this replica holds the leader lease: wait for it, run the
/// controllers, and on shutdown stop them before the lease is released (so no standby
/// reconciles beside them); a lost lease stops them at once and fails the process.
#[allow(clippy::too_many_arguments)]
async fn lead(
    args: &Args,
    identity: String,
    client: Client,
    metrics: Metrics,
    health: Health,
    settings: Settings,
    stores: Stores,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        LeaseConfig {
            name: args.lease_name.clone(),
            identity,
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
            retry_period: Duration::from_secs(args.retry_period_seconds),
        },
    );
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        _ = elector.acquire() => {},
        _ = &mut shutdown => return Ok(()),
    }
    metrics.leader.set(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut ctrl = tokio::spawn(run_controllers(
        client,
        metrics.clone(),
        health,
        settings,
        stores,
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::select! {
        _ = elector.hold() => {
            // Lost the lease: stop reconciling at once and exit, so a restart starts a
            // fresh candidate.
            ctrl.abort();
            let _ = ctrl.await;
            metrics.leader.set(0);
            anyhow::bail!("lost the leader lease; stopped reconciling");
        }
        _ = &mut shutdown => {
            // Stop in this order, so that no standby takes the lease while this replica
            // still reconciles: signal stop; keep renewing while the controller winds
            // down (at most 10 s); abort and await whatever is left; only then give up
            // leadership and release the lease.
            let _ = stop_tx.send(());
            let finished = tokio::select! {
                res = tokio::time::timeout(Duration::from_secs(10), &mut ctrl) => res.is_ok(),
                _ = elector.hold() => false,
            };
            if !finished {
                ctrl.abort();
                let _ = ctrl.await;
            }
            metrics.leader.set(0);
            elector.release().await;
            Ok(())
        }
        res = &mut ctrl => {
            elector.release().await;
            anyhow::bail!("the controller stopped unexpectedly: {res:?}");
        }
    }
}
