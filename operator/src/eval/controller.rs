//! The JanusEvalJob controller: watches evaluations, their pods, the training jobs and
//! baseline evaluations they wait for; decides with [`super::stage::decide`] and acts.
//!
//! As for training jobs, reconciles start from the caches and write nothing when the
//! cached view asks for no change; otherwise the job (and, before anything is deleted,
//! its pods) is read fresh and the decision made again, so a stale cache can never
//! count a restart twice. Secrets are not watched (an operator that lists Secrets could
//! read every credential): they are read when something is about to change, and looked
//! for again every few seconds while one is missing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use janus_crds::eval::{condition, reason};
use janus_crds::{labels, JanusEvalJob, JanusTrainingJob};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};

use super::children;
use super::gates::{self, Gates};
use super::stage::{self, Decision, Slot};
use super::status;
use crate::error::{is_status, Error, Result};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::training::controller::watch_health;
use crate::training::controller::{apply, backoff, publish, MANAGER};
use crate::training::status::EventSpec;
use crate::watch::{dynamic_api, lenient_watcher, DecodeReporter};

/// Periodic resync of a quiet job.
const RESYNC: Duration = Duration::from_secs(300);
/// Quiet period before a triggered reconcile runs (pods report progress often).
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Reconciles in flight at once.
const CONCURRENCY: u16 = 8;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub pods: Store<Pod>,
    /// Training jobs an evaluation may wait for (`spec.model.trainingJob`).
    pub training_jobs: Store<JanusTrainingJob>,
    /// Evaluations (baselines are evaluations too).
    pub eval_jobs: Store<JanusEvalJob>,
    /// Where pods report progress (`JANUS_REPORT_URL`); None: they do not.
    pub report_url: Option<String>,
    /// Consecutive failed reconciles per job (`namespace/name`), for the backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

fn key(job: &JanusEvalJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// What one look at a job concluded.
struct Plan {
    decision: Decision,
    status: janus_crds::JanusEvalJobStatus,
    events: Vec<EventSpec>,
}

fn cached_pods(ctx: &Context, ns: &str, job: &str) -> Vec<Arc<Pod>> {
    ctx.pods.state_filter(|p| {
        p.namespace().as_deref() == Some(ns)
            && p.labels().get(labels::EVAL_JOB).map(String::as_str) == Some(job)
    })
}

/// The model and baseline gates, from the caches of the objects they name.
fn object_gates(ctx: &Context, job: &JanusEvalJob) -> (stage::Gate, stage::Gate, gates::Resolved) {
    let ns = job.namespace().unwrap_or_default();
    let training = job
        .spec
        .model
        .training_job
        .as_ref()
        .and_then(|n| ctx.training_jobs.get(&ObjectRef::new(n).within(&ns)));
    let (model, mut resolved) = gates::model(job, training.as_deref());
    let baseline_job = job
        .spec
        .baseline
        .as_ref()
        .and_then(|b| b.eval_job.as_ref())
        .and_then(|n| ctx.eval_jobs.get(&ObjectRef::new(n).within(&ns)));
    let (baseline, url) = gates::baseline(job, baseline_job.as_deref());
    resolved.baseline_results_url = url;
    (model, baseline, resolved)
}

/// Gates with the Secrets as the status last saw them (no API request).
fn cached_gates(ctx: &Context, job: &JanusEvalJob) -> Gates {
    let (model, baseline, resolved) = object_gates(ctx, job);
    let (storage_secret, judge_secret) = gates::secrets_from_status(job);
    Gates {
        model,
        baseline,
        storage_secret,
        judge_secret,
        resolved,
    }
}

async fn get_secret(api: &Api<Secret>, name: &str) -> Result<Option<Secret>> {
    Ok(api.get_opt(name).await?)
}

/// Gates with the Secrets read now.
async fn fresh_gates(ctx: &Context, job: &JanusEvalJob) -> Result<Gates> {
    let (model, baseline, resolved) = object_gates(ctx, job);
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let ok = || stage::Gate::ready(reason::SECRETS_FOUND, "");
    let storage_secret = match &job.spec.storage_secret_ref {
        None => ok(),
        Some(s) => gates::secret(
            &s.name,
            None,
            get_secret(&api, &s.name).await?.as_ref(),
            "spec.storageSecretRef",
            "all pods",
        ),
    };
    let judge_secret = match &job.spec.judge.api_key_secret_ref {
        None => ok(),
        Some(k) => gates::secret(
            &k.name,
            Some(&k.key),
            get_secret(&api, &k.name).await?.as_ref(),
            "spec.judge.apiKeySecretRef",
            "the judge pod",
        ),
    };
    Ok(Gates {
        model,
        baseline,
        storage_secret,
        judge_secret,
        resolved,
    })
}

/// A Fail decision when the pods about to be created would get a config `janus eval`
/// refuses (the API server's checks cannot see everything): a visible reason instead
/// of pods that exit 64 one after the other.
fn invalid_config(job: &JanusEvalJob, gates: &Gates, d: &Decision) -> Option<Decision> {
    let Decision::Progress { create, .. } = d else {
        return None;
    };
    if create.is_empty() {
        return None;
    }
    match super::config_render::eval_config(job, &gates.resolved) {
        Err(e @ Error::EvalConfig { .. }) => Some(Decision::Fail {
            reason: reason::INVALID_CONFIG,
            message: e.to_string(),
            delete: vec![],
        }),
        _ => None,
    }
}

fn plan(job: &JanusEvalJob, gates: &Gates, pods: &[Arc<Pod>], now: Timestamp) -> Plan {
    let uid = job.metadata.uid.as_deref();
    let facts = status::eval_facts(job, gates);
    let pf: Vec<stage::PodFacts> = pods.iter().map(|p| status::pod_facts(p, uid)).collect();
    let mut decision = stage::decide(&facts, &pf, now);
    if let Some(d) = invalid_config(job, gates, &decision) {
        decision = d;
    }
    let pod_refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let reports = status::reports(&facts, uid, &pod_refs);
    let (status, events) = status::next_status(job, gates, &decision, &pf, &reports, now);
    Plan {
        decision,
        status,
        events,
    }
}

fn deletes(d: &Decision) -> &[String] {
    match d {
        Decision::Progress { delete, .. }
        | Decision::Fail { delete, .. }
        | Decision::Succeed { delete }
        | Decision::Suspend { delete }
        | Decision::Finished { delete, .. } => delete,
    }
}

/// Whether acting on `d` changes nothing in the cluster.
fn is_quiet(d: &Decision) -> bool {
    match d {
        Decision::Progress {
            delete,
            create,
            restart,
            done,
            ..
        } => delete.is_empty() && create.is_empty() && restart.is_empty() && done.is_empty(),
        Decision::Finished {
            delete, delete_job, ..
        } => delete.is_empty() && !delete_job,
        Decision::Suspend { delete } => delete.is_empty(),
        Decision::Fail { .. } | Decision::Succeed { .. } => false,
    }
}

/// Whether `d` deletes a pod or counts a restart (decided again on fresh pods first).
fn is_destructive(d: &Decision) -> bool {
    match d {
        Decision::Progress { restart, .. } if !restart.is_empty() => true,
        d => !deletes(d).is_empty(),
    }
}

fn creates(d: &Decision) -> &[Slot] {
    match d {
        Decision::Progress { create, .. } => create,
        _ => &[],
    }
}

fn requeue(d: &Decision) -> Action {
    let after = match d {
        Decision::Progress { requeue_after, .. } | Decision::Finished { requeue_after, .. } => {
            requeue_after.map(|t| t.min(RESYNC) + Duration::from_millis(100))
        }
        _ => None,
    };
    Action::requeue(after.unwrap_or(RESYNC))
}

/// Whether the job waits for a Secret (it is read again on every reconcile until found).
fn secrets_pending(job: &JanusEvalJob) -> bool {
    !job.phase().is_finished()
        && job.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == condition::SECRETS_READY && c.status == "False")
        })
}

/// Top-level reconcile: metrics around [`reconcile_eval`].
pub async fn reconcile(job: Arc<JanusEvalJob>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconcile_total.inc();
    let result = ctx
        .metrics
        .timed_reconcile(reconcile_eval(&job, &ctx))
        .await;
    if result.is_ok() {
        ctx.failures.lock().unwrap().remove(&key(&job));
    }
    result
}

pub fn error_policy(job: Arc<JanusEvalJob>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors_total
        .with_label_values(&[err.metric_label()])
        .inc();
    let n = {
        let mut f = ctx.failures.lock().unwrap();
        let n = f.entry(key(&job)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(n);
    tracing::warn!(eval_job = %job.name_any(), namespace = ?job.namespace(), error = %err, failures = n, retry_in = ?delay, "reconcile failed; requeueing");
    Action::requeue(delay)
}

async fn reconcile_eval(cached: &JanusEvalJob, ctx: &Context) -> Result<Action> {
    let ns = cached
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = cached.name_any();
    if cached.metadata.deletion_timestamp.is_some() {
        // Children go with the job (owner references, garbage collector).
        return Ok(Action::await_change());
    }
    // "Not found" of a training job or baseline is only true on complete caches.
    let _ = ctx.pods.wait_until_ready().await;
    let _ = ctx.training_jobs.wait_until_ready().await;
    let _ = ctx.eval_jobs.wait_until_ready().await;
    let now = Timestamp::now();
    let pods = cached_pods(ctx, &ns, &name);
    let first = plan(cached, &cached_gates(ctx, cached), &pods, now);
    if is_quiet(&first.decision)
        && cached.status.as_ref() == Some(&first.status)
        && !secrets_pending(cached)
    {
        return Ok(requeue(&first.decision));
    }

    // Something changes: decide again on the job read fresh, with the Secrets read now.
    let jobs: Api<JanusEvalJob> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(job) = jobs.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    // A finished job creates nothing: its Secrets do not matter any more.
    let gates = if job.phase().is_finished() {
        cached_gates(ctx, &job)
    } else {
        fresh_gates(ctx, &job).await?
    };
    let mut p = plan(&job, &gates, &pods, now);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if is_destructive(&p.decision) {
        let lp = ListParams::default().labels(&format!("{}={}", labels::EVAL_JOB, name));
        let fresh: Vec<Arc<Pod>> = pod_api
            .list(&lp)
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        p = plan(&job, &gates, &fresh, now);
    }
    tracing::debug!(eval_job = %name, namespace = %ns, decision = ?p.decision, "reconcile");

    // The pods' config and identity exist before any pod (server-side apply: again is
    // a no-op).
    if !creates(&p.decision).is_empty() {
        let c = &ctx.client;
        apply::<ServiceAccount>(c, &ns, &children::service_account(&job)?).await?;
        apply::<ConfigMap>(c, &ns, &children::config_map(&job, &gates.resolved)?).await?;
    }
    // The status (attempts, restarts) is written before any pod is deleted or created.
    if job.status.as_ref() != Some(&p.status) {
        let patch = serde_json::json!({
            "apiVersion": "janus.dev/v1alpha1",
            "kind": "JanusEvalJob",
            "status": p.status,
        });
        jobs.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    if let Decision::Progress { restart, .. } = &p.decision {
        ctx.metrics.eval_restarts_total.inc_by(restart.len() as u64);
    }
    let reference = job.object_ref(&());
    for ev in &p.events {
        // Best effort: a lost Event does not fail the reconcile.
        publish(&ctx.recorder, &reference, ev).await;
    }

    futures::future::try_join_all(deletes(&p.decision).iter().map(|pod| {
        let pod_api = pod_api.clone();
        async move {
            match pod_api.delete(pod, &DeleteParams::default()).await {
                Err(e) if !is_status(&e, 404) => Err(Error::from(e)),
                _ => Ok(()),
            }
        }
    }))
    .await?;
    let new_pods = creates(&p.decision)
        .iter()
        .map(|slot| {
            let attempt = match slot {
                Slot::Generate(i) => p
                    .status
                    .shards
                    .iter()
                    .find(|s| s.index == *i)
                    .map_or(0, |s| s.attempt),
                Slot::Judge => p.status.judge.as_ref().map_or(0, |j| j.attempt),
            };
            let mut pod = children::slot_pod(&job, *slot, attempt)?;
            if let Some(spec) = pod.spec.as_mut() {
                crate::security::tell_report_url(spec, ctx.report_url.as_deref());
            }
            Ok(pod)
        })
        .collect::<Result<Vec<_>>>()?;
    futures::future::try_join_all(new_pods.iter().map(|pod| {
        let pod_api = pod_api.clone();
        async move {
            match pod_api.create(&PostParams::default(), pod).await {
                // Deterministic names: an existing pod is the one we meant to create.
                Err(e) if !is_status(&e, 409) => Err(Error::from(e)),
                _ => Ok(()),
            }
        }
    }))
    .await?;
    if let Decision::Finished {
        delete_job: true, ..
    } = &p.decision
    {
        tracing::info!(eval_job = %name, namespace = %ns, "ttlSecondsAfterFinished passed: deleting the evaluation");
        match jobs.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    Ok(requeue(&p.decision))
}

/// Keep in the pod cache only what decisions read.
fn slim_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    if let Some(a) = p.metadata.annotations.as_mut() {
        a.retain(|k, _| k == janus_crds::annotations::EVAL_PROGRESS);
    }
    p.spec = None;
    if let Some(st) = p.status.as_mut() {
        st.conditions = None;
        st.pod_ips = None;
        st.host_ips = None;
    }
}

/// Evaluations in `ns` whose `spec.model.trainingJob` is `name`.
fn waiting_for_training(
    store: &Store<JanusEvalJob>,
    tj: &JanusTrainingJob,
) -> Vec<ObjectRef<JanusEvalJob>> {
    let (ns, name) = (tj.namespace(), tj.name_any());
    store
        .state()
        .iter()
        .filter(|e| {
            e.namespace() == ns && e.spec.model.training_job.as_deref() == Some(name.as_str())
        })
        .map(|e| ObjectRef::from_obj(e.as_ref()))
        .collect()
}

/// Evaluations in `ns` whose `spec.baseline.evalJob` is `name`.
fn waiting_for_baseline(
    store: &Store<JanusEvalJob>,
    b: &JanusEvalJob,
) -> Vec<ObjectRef<JanusEvalJob>> {
    let (ns, name) = (b.namespace(), b.name_any());
    store
        .state()
        .iter()
        .filter(|e| {
            e.namespace() == ns
                && e.spec.baseline.as_ref().and_then(|x| x.eval_job.as_deref())
                    == Some(name.as_str())
        })
        .map(|e| ObjectRef::from_obj(e.as_ref()))
        .collect()
}

/// Runs the controller (over all namespaces, or only `namespace`) until `shutdown`
/// resolves. `on_store` receives the evaluation cache (for `janus_eval_jobs{phase}`).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    metrics: Metrics,
    health: Health,
    decode: DecodeReporter,
    settings: crate::Settings,
    on_store: impl FnOnce(Store<JanusEvalJob>),
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let crate::Settings {
        identity,
        namespace,
        report_url,
        concurrency,
    } = settings;
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let (pods, pod_writer) = reflector::store();
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(
            api::<Pod>(&client, &namespace),
            watcher::Config::default().labels(labels::EVAL_JOB),
        )
        .modify(slim_pod),
    )
    .default_backoff()
    .inspect(watch_health(&health, &metrics, "eval-pods"))
    .touched_objects();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(identity),
        },
    );
    let (training_jobs, tj_writer) = reflector::store();
    let tj_stream = reflector::reflector(
        tj_writer,
        lenient_watcher(
            dynamic_api::<JanusTrainingJob>(&client, &namespace),
            watcher::Config::default(),
            decode.clone(),
        ),
    )
    .default_backoff()
    .inspect(watch_health(&health, &metrics, "eval-training-jobs"))
    .touched_objects();
    let (eval_store, eval_writer) = reflector::store();
    let eval_stream = reflector::reflector(
        eval_writer,
        lenient_watcher(
            dynamic_api::<JanusEvalJob>(&client, &namespace),
            watcher::Config::default(),
            decode.clone(),
        ),
    )
    .default_backoff()
    .inspect(watch_health(&health, &metrics, "eval-jobs"))
    .touched_objects();
    let baseline_stream = lenient_watcher::<JanusEvalJob>(
        dynamic_api::<JanusEvalJob>(&client, &namespace),
        watcher::Config::default(),
        decode,
    )
    .default_backoff()
    .inspect(watch_health(&health, &metrics, "eval-baselines"))
    .touched_objects();

    let controller = Controller::for_stream(eval_stream, eval_store).with_config(
        kube::runtime::controller::Config::default()
            .debounce(DEBOUNCE)
            .concurrency(concurrency.unwrap_or(CONCURRENCY)),
    );
    let eval_jobs = controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        metrics,
        pods,
        training_jobs,
        eval_jobs: eval_jobs.clone(),
        failures: Default::default(),
        report_url,
    });
    let controller = controller
        .owns_stream(pod_stream)
        .watches_stream(tj_stream, {
            let store = eval_jobs.clone();
            move |tj| waiting_for_training(&store, &tj)
        })
        .watches_stream(baseline_stream, {
            let store = eval_jobs.clone();
            move |b| waiting_for_baseline(&store, &b)
        })
        .graceful_shutdown_on(shutdown);
    on_store(eval_jobs);
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "eval controller event");
            }
        })
        .await;
}
