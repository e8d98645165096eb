//! The JanusTrainingJob controller: watches jobs, their pods (and node deletions),
//! decides with [`super::gang::decide`] and acts.
//!
//! Reconciles start from the caches. When the cached view asks for no change, nothing
//! is written. Otherwise the job and its pods are read fresh from the API server and
//! the decision is made again on that, so a stale cache can never double-count a
//! restart or delete the pods of a new attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use janus_crds::training::{condition, reason, JanusTrainingJobStatus};
use janus_crds::{labels, JanusTrainingJob, Progress};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::children;
use super::expectations::Expectations;
use super::gang::{self, Decision, PodFacts};
use super::kueue::{self, KueueFacts};
use super::status::{self, EventSpec};
use crate::error::{is_status, Error, Result};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::watch::{dynamic_api, lenient_watcher, resource_api, DecodeReporter};

/// Field manager of everything the operator applies.
pub const MANAGER: &str = "janus-operator";
/// Periodic resync of a quiet job.
const RESYNC: Duration = Duration::from_secs(300);
/// Quiet period before a triggered reconcile runs.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Reconciles in flight at once: bounds the requests a burst of new jobs sends to the
/// API server together (the rest wait in the controller's queue). With 16, a burst of
/// 200 gangs kept the test API server's queue so long that a reconcile's p99 was 2.2 s
/// against 1.6 s with 4, for pods created 12 s sooner out of 40 (`bench-operator`);
/// `--concurrency` raises it where the API server has the cores.
const CONCURRENCY: u16 = 4;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub health: Health,
    /// Where pods report progress (`JANUS_REPORT_URL`); None: they do not.
    pub report_url: Option<String>,
    /// Consecutive failed reconciles per job (`namespace/name`), for the backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Pods created and status written that the caches may not show yet.
    pub expectations: Arc<Expectations>,
}

fn key(job: &JanusTrainingJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// The job's expectations: per object (a job deleted and created again under its name
/// has other pods and another history).
fn expect_key(job: &JanusTrainingJob) -> String {
    format!(
        "{}/{}",
        key(job),
        job.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// Requeue delay after `n` consecutive failures: 1 s, 2 s, 4 s ... capped at 5 minutes.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(RESYNC)
}

fn cached_pods(ctx: &Context, ns: &str, job: &str) -> Vec<Arc<Pod>> {
    ctx.pods.state_filter(|p| {
        p.namespace().as_deref() == Some(ns)
            && p.labels().get(labels::JOB).map(String::as_str) == Some(job)
    })
}

/// Facts of `pods` as seen by `job`: pods another object controls are marked foreign.
fn facts(ctx: &Context, job: &JanusTrainingJob, pods: &[Arc<Pod>]) -> Vec<PodFacts> {
    let uid = job.metadata.uid.as_deref();
    pods.iter()
        .map(|p| {
            status::pod_facts(p, uid, |n| match ctx.nodes.get(&ObjectRef::new(n)) {
                Some(node) => status::node_state(&node),
                None => status::NodeState::Missing,
            })
        })
        .collect()
}

fn rank0_progress(job: &JanusTrainingJob, pods: &[Arc<Pod>], attempt: i32) -> Option<Progress> {
    pods.iter()
        .find(|p| {
            status::owned_by(p, job.metadata.uid.as_deref())
                && p.labels().get(labels::RANK).map(String::as_str) == Some("0")
                && p.labels().get(labels::ATTEMPT) == Some(&attempt.to_string())
        })
        .and_then(|p| children::progress_annotation(p))
        .and_then(|v| Progress::from_annotation(v))
}

/// A Fail decision when the job is about to create pods from a template override
/// that does not merge into a valid pod.
fn invalid_template(job: &JanusTrainingJob, d: &Decision) -> Option<Decision> {
    let Decision::Progress { create, .. } = d else {
        return None;
    };
    match children::worker_pod(job, *create.first()?, 0) {
        Err(e @ Error::TemplateOverride { .. }) => Some(Decision::Fail {
            reason: reason::INVALID_POD_TEMPLATE,
            message: e.to_string(),
            delete: vec![],
        }),
        _ => None,
    }
}

/// Whether `d` deletes anything.
fn is_destructive(d: &Decision) -> bool {
    match d {
        Decision::Progress { delete, .. }
        | Decision::Suspend { delete }
        | Decision::Succeed { delete }
        | Decision::Finished { delete, .. } => !delete.is_empty(),
        Decision::Restart { .. } | Decision::Fail { .. } => true,
    }
}

/// Whether acting on `d` changes nothing in the cluster.
fn is_quiet(d: &Decision) -> bool {
    match d {
        Decision::Progress { delete, create, .. } => delete.is_empty() && create.is_empty(),
        Decision::Finished {
            delete, delete_job, ..
        } => delete.is_empty() && !delete_job,
        Decision::Suspend { delete } => delete.is_empty(),
        _ => false,
    }
}

fn plan(
    ctx: &Context,
    job: &JanusTrainingJob,
    pods: &[Arc<Pod>],
    admission: Option<&KueueFacts>,
    now: Timestamp,
) -> Plan {
    let mut pf = facts(ctx, job, pods);
    let mut jf = status::job_facts(job);
    jf.admitted = admission.is_none_or(KueueFacts::admitted);
    let decision = gang::decide(&jf, &pf, now);
    let force = gang::force_delete(&jf, &pf, deletions(&decision), now);
    let toleration_end = gang::next_toleration_end(&jf, &pf, now);
    // Foreign pods are never counted in the status either.
    pf.retain(|p| !p.foreign);
    let attempt = job.status.as_ref().map(|s| s.restarts).unwrap_or(0);
    let (mut st, mut events) =
        status::next_status(job, &decision, &pf, rank0_progress(job, pods, attempt), now);
    if let Some(a) = admission {
        kueue::admission_status(job, a, &mut st, &mut events, now);
    }
    Plan {
        decision,
        status: st,
        events,
        force,
        toleration_end,
    }
}

/// What a reconcile does: the decision, the status it leads to and its Events, the
/// pods to force-delete (on nodes down past the toleration), and when a toleration of
/// a down node ends.
struct Plan {
    decision: Decision,
    status: JanusTrainingJobStatus,
    events: Vec<EventSpec>,
    force: Vec<String>,
    toleration_end: Option<Duration>,
}

/// The pods `d` deletes.
fn deletions(d: &Decision) -> &[String] {
    match d {
        Decision::Progress { delete, .. }
        | Decision::Restart { delete, .. }
        | Decision::Fail { delete, .. }
        | Decision::Succeed { delete }
        | Decision::Suspend { delete }
        | Decision::Finished { delete, .. } => delete,
    }
}

/// Top-level reconcile: metrics and tracing around [`reconcile_job`].
pub async fn reconcile(job: Arc<JanusTrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconcile_total.inc();
    let _in_flight = ctx
        .health
        .reconcile_started(key(&job), std::time::Instant::now());
    let result = ctx.metrics.timed_reconcile(reconcile_job(&job, &ctx)).await;
    if result.is_ok() {
        ctx.failures.lock().unwrap().remove(&key(&job));
    }
    result
}

pub fn error_policy(job: Arc<JanusTrainingJob>, err: &Error, ctx: Arc<Context>) -> Action {
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
    tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), error = %err, failures = n, retry_in = ?delay, "reconcile failed; requeueing");
    Action::requeue(delay)
}

async fn reconcile_job(cached: &JanusTrainingJob, ctx: &Context) -> Result<Action> {
    let ns = cached
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = cached.name_any();
    if cached.metadata.deletion_timestamp.is_some() {
        // Children go with the job (owner references, garbage collector).
        ctx.expectations.forget(&expect_key(cached));
        return Ok(Action::await_change());
    }
    // "Node gone" and "rank missing" can only be trusted on complete caches (the
    // controller's streams fill them; reconciles run in their own tasks).
    let _ = ctx.pods.wait_until_ready().await;
    let _ = ctx.nodes.wait_until_ready().await;
    let now = Timestamp::now();
    let pods = cached_pods(ctx, &ns, &name);
    // Pods this operator created are not all in the cache yet: deciding now would create
    // them again. Their watch events trigger the next reconcile.
    if let Some(left) = ctx
        .expectations
        .pods_pending(&expect_key(cached), &pods, Instant::now())
    {
        return Ok(Action::requeue(left));
    }
    // A job with a queue name runs when Kueue admits its Workload (created here).
    let admission = kueue::observe(&ctx.client, cached).await?;
    let cached_plan = plan(ctx, cached, &pods, admission.as_ref(), now);
    if is_quiet(&cached_plan.decision)
        && cached_plan.force.is_empty()
        && cached.status.as_ref() == Some(&cached_plan.status)
    {
        let decision = &cached_plan.decision;
        if let Some(a) = &admission {
            after_kueue_decision(ctx, cached, a, decision, &pods, now).await?;
        }
        let action = requeue(decision, cached_plan.toleration_end);
        return Ok(requeue_kueue(action, admission.as_ref()));
    }

    // Something changes: decide again on a job at least as new as this operator's last
    // status write (a stale cached job could double-count a restart or misjudge the
    // attempt): the cached one when it shows that write, else one read fresh.
    let jobs: Api<JanusTrainingJob> = Api::namespaced(ctx.client.clone(), &ns);
    let rv = cached.metadata.resource_version.as_deref();
    let (job, mut p) = if ctx.expectations.shows_last_write(&expect_key(cached), rv) {
        // The same job and pods: the plan made above stands.
        (cached.clone(), cached_plan)
    } else {
        let Some(job) = jobs.get_opt(&name).await? else {
            return Ok(Action::await_change());
        };
        let p = plan(ctx, &job, &pods, admission.as_ref(), now);
        (job, p)
    };
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if is_destructive(&p.decision) || !p.force.is_empty() {
        // Before deleting anything, confirm on a fresh list of the pods too.
        let lp = ListParams::default().labels(&format!("{}={}", labels::JOB, name));
        let fresh: Vec<Arc<Pod>> = pod_api
            .list(&lp)
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        p = plan(ctx, &job, &fresh, admission.as_ref(), now);
    }
    let Plan {
        mut decision,
        status: mut st,
        mut events,
        force,
        toleration_end,
    } = p;
    if let Some(d) = invalid_template(&job, &decision) {
        // A pod template override that cannot make a pod fails the job with a reason the
        // user sees, instead of an endless error loop.
        let mut pods: Vec<PodFacts> = facts(ctx, &job, &pods);
        pods.retain(|p| !p.foreign);
        (st, events) = status::next_status(&job, &d, &pods, None, now);
        decision = d;
    }
    tracing::debug!(job = %name, namespace = %ns, ?decision, "reconcile");

    let first_time = job.status.as_ref().and_then(|s| s.phase).is_none();
    let creating = matches!(&decision, Decision::Progress { create, .. } if !create.is_empty());
    // The status is written before any pod is deleted or created, so the attempt a pod
    // belongs to is always recorded first (the Service, ConfigMap and RBAC objects do
    // not depend on it and are applied at the same time).
    let statics = async {
        if first_time || creating {
            ensure_static_children(ctx, &job).await?;
        }
        Ok::<_, Error>(())
    };
    let write_status = async {
        if job.status.as_ref() != Some(&st) {
            let written = write_status(&jobs, &job, &st).await?;
            ctx.expectations
                .wrote_status(&expect_key(&job), written.metadata.resource_version);
        }
        Ok::<_, Error>(())
    };
    futures::try_join!(statics, write_status)?;
    if creating {
        ensure_pod_group(ctx, &jobs, &job, &st, now).await?;
    }
    if matches!(decision, Decision::Restart { .. }) {
        ctx.metrics.job_restarts_total.inc();
    }
    for ev in events {
        // Events are best effort: published without holding up the reconcile.
        let (recorder, reference) = (ctx.recorder.clone(), job.object_ref(&()));
        tokio::spawn(async move { publish(&recorder, &reference, &ev).await });
    }

    let delete = deletions(&decision);
    for pod in &force {
        tracing::warn!(job = %name, namespace = %ns, pod = %pod, "force-deleting a worker on a node down past unreachableNodeTolerationSeconds");
    }
    let normal = delete.iter().filter(|p| !force.contains(p));
    let forced = force.iter();
    let with = |grace: bool| {
        if grace {
            DeleteParams::default()
        } else {
            // As `kubectl delete --grace-period=0 --force`: no kubelet confirms it.
            DeleteParams::default().grace_period(0)
        }
    };
    let all = normal.map(|p| (p, true)).chain(forced.map(|p| (p, false)));
    futures::future::try_join_all(all.map(|(pod, grace)| {
        let (pod_api, dp) = (pod_api.clone(), with(grace));
        async move {
            match pod_api.delete(pod, &dp).await {
                Err(e) if !is_status(&e, 404) => Err(Error::from(e)),
                _ => Ok(()),
            }
        }
    }))
    .await?;
    if let Decision::Progress { create, .. } = &decision {
        let attempt = st.restarts;
        let placement = match &admission {
            Some(a) if !create.is_empty() => kueue::admitted_placement(&ctx.client, a).await?,
            _ => Default::default(),
        };
        let new_pods = create
            .iter()
            .map(|rank| {
                let mut pod = children::worker_pod(&job, *rank, attempt)?;
                kueue::apply_placement(&mut pod, &placement);
                if let Some(spec) = pod.spec.as_mut() {
                    crate::security::tell_report_url(spec, ctx.report_url.as_deref());
                }
                Ok(pod)
            })
            .collect::<Result<Vec<_>>>()?;
        let created = futures::future::join_all(new_pods.iter().map(|pod| {
            let pod_api = pod_api.clone();
            async move {
                match pod_api.create(&PostParams::default(), pod).await {
                    Ok(_) => Ok(true),
                    // Deterministic names: an existing pod is the one we meant to create
                    // (or a foreign one the decisions see; not expected in the cache).
                    Err(e) if is_status(&e, 409) => Ok(false),
                    Err(e) => Err((pod.name_any(), e)),
                }
            }
        }))
        .await;
        // Those created are expected in the cache.
        let made = new_pods
            .iter()
            .zip(&created)
            .filter(|(_, r)| matches!(r, Ok(true)));
        ctx.expectations.created(
            &expect_key(&job),
            made.map(|(p, _)| p.name_any()),
            Instant::now(),
        );
        if let Some((pod, e)) = created.into_iter().find_map(|r| r.err()) {
            if let kube::Error::Api(refusal) = &e {
                if REFUSALS.contains(&refusal.code) {
                    create_refused(ctx, &jobs, &job, st, &pod, &refusal.message, now).await?;
                }
            }
            return Err(e.into());
        }
    }
    if let Some(a) = &admission {
        after_kueue_decision(ctx, &job, a, &decision, &pods, now).await?;
    }
    if let Decision::Finished {
        delete_job: true, ..
    } = &decision
    {
        tracing::info!(job = %name, namespace = %ns, "ttlSecondsAfterFinished passed: deleting the job");
        // This job, not one created since under its name (the decision may be the
        // cached job's).
        let this = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: job.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match jobs.delete(&name, &this).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    Ok(requeue_kueue(
        requeue(&decision, toleration_end),
        admission.as_ref(),
    ))
}

/// What Kueue learns from the job: a finished job's Workload is marked Finished (the
/// quota returns), an evicted one releases its reservation once no worker is left.
async fn after_kueue_decision(
    ctx: &Context,
    job: &JanusTrainingJob,
    admission: &KueueFacts,
    decision: &Decision,
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Result<()> {
    let finished = match decision {
        Decision::Succeed { .. } => Some((true, "the job succeeded".to_string())),
        Decision::Fail { message, .. } => Some((false, message.clone())),
        Decision::Finished { .. } => Some((
            job.phase() == janus_crds::training::JobPhase::Succeeded,
            format!("the job {}", job.phase().as_str().to_lowercase()),
        )),
        _ => None,
    };
    if let Some((succeeded, message)) = finished {
        return kueue::finish(&ctx.client, job, admission, succeeded, &message, now).await;
    }
    let uid = job.metadata.uid.as_deref();
    let gang_gone = !pods.iter().any(|p| status::owned_by(p, uid));
    if matches!(decision, Decision::Suspend { .. }) && gang_gone {
        kueue::release_after_eviction(&ctx.client, job, admission, now).await?;
    }
    Ok(())
}

/// Without a Workload watch (Kueue not installed when the operator started), look again
/// soon while a job waits on Kueue.
fn requeue_kueue(action: Action, admission: Option<&KueueFacts>) -> Action {
    match admission.map(|a| &a.state) {
        Some(kueue::AdmissionState::Waiting {
            reason: kueue::reason::KUEUE_NOT_INSTALLED,
            ..
        }) => Action::requeue(Duration::from_secs(30)),
        _ => action,
    }
}

/// Refusals of a pod create that only a change elsewhere (the namespace's Pod Security
/// level or quota, a missing namespace or ServiceAccount, the job's template) can lift.
const REFUSALS: [u16; 4] = [400, 403, 404, 422];

/// The API server refused a worker pod: Running=False (`FailedCreate`) with its
/// message, and a Warning Event when the message is new. The create is retried with
/// the reconcile's backoff, as the Job controller does.
async fn create_refused(
    ctx: &Context,
    jobs: &Api<JanusTrainingJob>,
    job: &JanusTrainingJob,
    st: JanusTrainingJobStatus,
    pod: &str,
    message: &str,
    now: Timestamp,
) -> Result<()> {
    let msg = format!("creating worker pod {pod} was refused: {message}");
    blocked(ctx, jobs, job, st, reason::FAILED_CREATE, msg, now).await
}

/// The gang cannot be created until something outside the job changes: Running=False
/// with `why` and `msg`, and a Warning Event when the words are new.
async fn blocked(
    ctx: &Context,
    jobs: &Api<JanusTrainingJob>,
    job: &JanusTrainingJob,
    mut st: JanusTrainingJobStatus,
    why: &'static str,
    msg: String,
    now: Timestamp,
) -> Result<()> {
    let repeated = st
        .conditions
        .iter()
        .any(|c| c.type_ == condition::RUNNING && c.reason == why && c.message == msg);
    if repeated {
        return Ok(());
    }
    status::set_condition(
        &mut st.conditions,
        condition::RUNNING,
        false,
        why,
        &msg,
        now,
    );
    let written = write_status(jobs, job, &st).await?;
    ctx.expectations
        .wrote_status(&expect_key(job), written.metadata.resource_version);
    let ev = EventSpec {
        warning: true,
        reason: why,
        note: msg,
    };
    publish(&ctx.recorder, &job.object_ref(&()), &ev).await;
    Ok(())
}

/// The job's PodGroup (gang scheduling by Volcano or the coscheduling plugin), before
/// its pods. Without its scheduler's CRD (404) the job says so and waits.
async fn ensure_pod_group(
    ctx: &Context,
    jobs: &Api<JanusTrainingJob>,
    job: &JanusTrainingJob,
    st: &JanusTrainingJobStatus,
    now: Timestamp,
) -> Result<()> {
    let Some((ar, pg)) = children::pod_group(job)? else {
        return Ok(());
    };
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    let applied = api
        .patch(
            &job.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&pg),
        )
        .await;
    match applied {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let msg = format!(
                "the PodGroup API {}/{} is not installed (its scheduler's CRD): install it, or remove spec.scheduling.podGroup ({})",
                ar.group, ar.version, e.message
            );
            blocked(
                ctx,
                jobs,
                job,
                st.clone(),
                reason::POD_GROUP_NOT_INSTALLED,
                msg,
                now,
            )
            .await?;
            Err(kube::Error::Api(e).into())
        }
        r => r.map(|_| ()).map_err(Error::from),
    }
}

async fn write_status(
    jobs: &Api<JanusTrainingJob>,
    job: &JanusTrainingJob,
    st: &JanusTrainingJobStatus,
) -> Result<JanusTrainingJob> {
    let name = job.name_any();
    // The uid makes it a precondition: a job deleted and created again under the name
    // since the decision (which may be the cached job's) refuses it with a 409.
    let patch = serde_json::json!({
        "apiVersion": "janus.dev/v1alpha1",
        "kind": "JanusTrainingJob",
        "metadata": {"uid": job.metadata.uid},
        "status": st,
    });
    let written = jobs
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(written)
}

/// When to reconcile again: the decision's deadline or the end of a down node's
/// toleration, whichever comes first, else the resync.
fn requeue(d: &Decision, toleration_end: Option<Duration>) -> Action {
    let after = match d {
        Decision::Progress { requeue_after, .. } | Decision::Finished { requeue_after, .. } => {
            *requeue_after
        }
        _ => None,
    };
    let after = [after, toleration_end].into_iter().flatten().min();
    Action::requeue(after.map_or(RESYNC, |t| t.min(RESYNC) + Duration::from_millis(100)))
}

/// The Events API refuses a note over 1 KiB (the whole Event would be lost): a
/// condition message quoting a worker's termination message can be longer.
pub(crate) fn event_note(note: &str) -> String {
    const MAX: usize = 1024;
    if note.len() <= MAX {
        return note.to_string();
    }
    let mut end = MAX - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

pub(crate) async fn publish(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    ev: &EventSpec,
) {
    let event = Event {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.into(),
        note: Some(event_note(&ev.note)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, reference).await {
        tracing::warn!(object = ?reference.name, error = %e, "could not publish an event");
    }
}

pub(crate) async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Service, ConfigMap, ServiceAccount (and the NetworkPolicy when asked for), by
/// server-side apply: creating them again is a no-op.
async fn ensure_static_children(ctx: &Context, job: &JanusTrainingJob) -> Result<()> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let c = &ctx.client;
    let (svc, cm, sa) = (
        children::service(job)?,
        children::config_map(job)?,
        children::service_account(job)?,
    );
    futures::try_join!(
        apply::<Service>(c, &ns, &svc),
        apply::<ConfigMap>(c, &ns, &cm),
        apply::<ServiceAccount>(c, &ns, &sa),
        async {
            match children::network_policy(job)? {
                Some(np) => apply::<NetworkPolicy>(c, &ns, &np).await,
                None => Ok(()),
            }
        },
    )?;
    Ok(())
}

/// Keep in the pod cache only what decisions read (memory: 1,600 pods of 200 jobs).
fn slim_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    if let Some(a) = p.metadata.annotations.as_mut() {
        a.retain(|k, _| k == janus_crds::annotations::PROGRESS);
    }
    if let Some(spec) = p.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::PodSpec {
            node_name: spec.node_name.take(),
            ..Default::default()
        };
    }
    if let Some(st) = p.status.as_mut() {
        // Only the scheduler's verdict of a pod it cannot place and a disruption are read.
        if let Some(c) = st.conditions.as_mut() {
            c.retain(|c| {
                (c.type_ == "PodScheduled" && c.status == "False")
                    || (c.type_ == "DisruptionTarget" && c.status == "True")
            });
        }
        st.pod_ips = None;
        st.host_ips = None;
        if let Some(cs) = st.container_statuses.as_mut() {
            cs.retain(|c| c.name == janus_crds::defaults::CONTAINER_NAME);
        }
    }
}

/// Only what [`status::node_state`] reads: does the node exist, is it Ready, since when
/// not (its Ready condition and the not-ready / unreachable taints).
fn slim_node(n: &mut Node) {
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    n.metadata.labels = None;
    let taints = n.spec.as_mut().and_then(|s| s.taints.take()).map(|mut t| {
        t.retain(|t| t.key.starts_with("node.kubernetes.io/"));
        t
    });
    n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
        taints,
        ..Default::default()
    });
    let ready = n
        .status
        .as_mut()
        .and_then(|s| s.conditions.take())
        .map(|mut c| {
            c.retain(|c| c.type_ == "Ready");
            // The heartbeat changes every few seconds; decisions never read it.
            for c in &mut c {
                c.last_heartbeat_time = None;
            }
            c
        });
    n.status = Some(k8s_openapi::api::core::v1::NodeStatus {
        conditions: ready,
        ..Default::default()
    });
}

type NodeEvent = std::result::Result<watcher::Event<Node>, watcher::Error>;
type NodeItem = std::result::Result<Node, watcher::Error>;

/// Nodes whose jobs to reconcile: those deleted, and those whose readiness changed
/// (became NotReady or unreachable, or Ready again); heartbeats pass unnoticed.
fn node_transitions() -> impl FnMut(NodeEvent) -> futures::future::Ready<Option<NodeItem>> {
    let mut seen: std::collections::HashMap<String, status::NodeState> = Default::default();
    move |ev| {
        let out = match ev {
            Ok(watcher::Event::Delete(n)) => {
                seen.remove(&n.name_any());
                Some(Ok(n))
            }
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                let state = status::node_state(&n);
                let changed = seen
                    .insert(n.name_any(), state.clone())
                    .map_or(state != status::NodeState::Ready, |old| old != state);
                changed.then_some(Ok(n))
            }
            _ => None,
        };
        futures::future::ready(out)
    }
}

/// Jobs with a pod on `node` (reconciled when the node disappears or its readiness
/// changes).
fn jobs_on_node(pods: &Store<Pod>, node: &Node) -> Vec<ObjectRef<JanusTrainingJob>> {
    let name = node.name_any();
    let mut out: Vec<ObjectRef<JanusTrainingJob>> = pods
        .state()
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
        .filter_map(|p| {
            let job = p.labels().get(labels::JOB)?;
            Some(ObjectRef::new(job).within(&p.namespace()?))
        })
        .collect();
    out.sort_by(|a, b| {
        (a.namespace.as_deref(), a.name.as_str()).cmp(&(b.namespace.as_deref(), b.name.as_str()))
    });
    out.dedup();
    out
}

/// Reports each event or error of a watch to `health` (a watch that keeps failing
/// wedges the controller: the runtime would retry it silently forever) and counts and
/// logs its errors at warn (`janus_operator_watch_errors_total{watch}`).
pub(crate) fn watch_health<K>(
    health: &Health,
    metrics: &Metrics,
    watch: &'static str,
) -> impl Fn(&std::result::Result<watcher::Event<K>, watcher::Error>) {
    let (health, errors) = (health.clone(), metrics.watch_errors_total.clone());
    health.watch_started(watch);
    move |ev| match ev {
        Ok(watcher::Event::InitDone) => health.watch_synced(watch),
        Ok(_) => health.watch_ok(watch),
        Err(e) => {
            errors.with_label_values(&[watch]).inc();
            tracing::warn!(watch, error = %e, "watch failed; retrying with backoff");
            health.watch_failed(watch, &e.to_string(), std::time::Instant::now())
        }
    }
}

/// Runs the controller (over all namespaces, or only `namespace`) until `shutdown`
/// resolves. `on_store` receives the job cache
/// (for the `janus_jobs{phase}` gauge).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    metrics: Metrics,
    health: Health,
    decode: DecodeReporter,
    settings: crate::Settings,
    on_store: impl FnOnce(Store<JanusTrainingJob>),
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let crate::Settings {
        identity,
        namespace,
        report_url,
        concurrency,
    } = settings;
    let pods_api: Api<Pod> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let nodes_api: Api<Node> = Api::all(client.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(identity),
        },
    );

    let expectations: Arc<Expectations> = Default::default();
    let (job_store, job_writer) = reflector::store();
    let job_stream = reflector::reflector(
        job_writer,
        lenient_watcher(
            dynamic_api::<JanusTrainingJob>(&client, &namespace),
            watcher::Config::default(),
            decode,
        ),
    )
    .default_backoff()
    .inspect(watch_health(&health, &metrics, "jobs"))
    .inspect({
        // A deleted job is not reconciled again (no finalizer): forget it here.
        let e = expectations.clone();
        move |ev| {
            if let Ok(watcher::Event::Delete(job)) = ev {
                e.forget(&expect_key(job));
            }
        }
    })
    .touched_objects();
    let (pods, pod_writer) = reflector::store();
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(pods_api, watcher::Config::default().labels(labels::JOB)).modify(slim_pod),
    )
    .default_backoff()
    .inspect(watch_health(&health, &metrics, "pods"))
    .touched_objects();
    let (nodes, node_writer) = reflector::store();
    let node_stream = reflector::reflector(
        node_writer,
        watcher(nodes_api, watcher::Config::default()).modify(slim_node),
    )
    .default_backoff()
    .inspect(watch_health(&health, &metrics, "nodes"))
    .filter_map(node_transitions());

    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        metrics,
        pods: pods.clone(),
        nodes: nodes.clone(),
        health,
        failures: Default::default(),
        report_url,
        expectations,
    });
    let controller = Controller::for_stream(job_stream, job_store)
        // Coalesce the burst of pod events of a starting gang into fewer reconciles.
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(DEBOUNCE)
                .concurrency(concurrency.unwrap_or(CONCURRENCY)),
        )
        .owns_stream(pod_stream)
        .watches_stream(node_stream, {
            let pods = pods.clone();
            move |node: Node| jobs_on_node(&pods, &node)
        })
        .graceful_shutdown_on(shutdown);
    // Workload changes (admission, eviction) trigger the owning job, when Kueue is there.
    let controller = if kueue::installed(&client).await {
        let api = resource_api(&client, &namespace, &kueue::workload_resource());
        tracing::info!("Kueue's Workload API is installed: watching Workloads");
        controller.owns_with(api, kueue::workload_resource(), watcher::Config::default())
    } else {
        controller
    };
    on_store(controller.store());

    let run = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                // Watch errors are logged (warn) and counted where they happen.
                tracing::debug!(error = %e, "controller event");
            }
        });
    run.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use janus_crds::training::JobPhase;

    #[test]
    fn failed_reconciles_back_off_exponentially_up_to_the_resync() {
        let d: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn an_unmergeable_pod_template_fails_the_job_instead_of_looping() {
        let mut job = crate::training::config_render::tests::representative_job();
        let d = Decision::Progress {
            phase: JobPhase::Pending,
            delete: vec![],
            create: vec![0, 1],
            requeue_after: None,
        };
        assert!(invalid_template(&job, &d).is_none());
        job.spec.workers.template = Some(serde_json::json!({"spec": {"containers": "oops"}}));
        match invalid_template(&job, &d) {
            Some(Decision::Fail {
                reason, message, ..
            }) => {
                assert_eq!(reason, "InvalidPodTemplate");
                assert!(message.contains("janus-7b-sft"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod note_tests {
    use super::event_note;

    #[test]
    fn event_notes_fit_the_events_api_limit_on_a_char_boundary() {
        assert_eq!(event_note("short"), "short");
        let long = "é".repeat(700);
        let n = event_note(&long);
        assert!(n.len() <= 1024, "{}", n.len());
        assert!(n.ends_with('…'));
        assert!(long.starts_with(n.trim_end_matches('…')));
    }
}
