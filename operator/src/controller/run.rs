//! The one run loop of every kind: its watches (the jobs, their pods, the nodes those
//! run on, and whatever the kind adds), `reconcile` / `error_policy` with a per-job
//! exponential backoff, and the order of a reconcile's reads and writes.
//!
//! Reconciles start from the caches. When the cached view asks for no change, nothing
//! is written. Otherwise the job is read fresh from the API server (or, where the kind
//! trusts it, taken from the cache once it shows this operator's last status write)
//! and, before anything is deleted, its pods are listed fresh too, and the decision is
//! made again on that, so a stale cache can never double-count a restart or delete the
//! pods of a new attempt. Pods created but not yet in the cache are waited for
//! (expectations). The status is written before any pod is deleted or created, so the
//! attempt a pod belongs to is always recorded first.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use janus_crds::pods::reason;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};

use super::apply::{delete_job, describe, holder, is_ours, write_status};
use super::conditions::publish_all;
use super::context::{expect_key, key, recorder, Context, Settings};
use super::expectations::Expectations;
use super::nodes::{self, jobs_on_node, slim_node};
use super::pods::slim_pod;
use super::stuck::{refused, REFUSALS};
use crate::error::{is_status, Error, Result};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::watch::{dynamic_api, lenient_watcher, DecodeReporter};

// Where the kinds import them from (they are declared with the context every hook is
// handed).
pub use super::conditions::JobStatus;
pub use super::context::{AddWatches, Kind, Plan, Policy, Watch, WatchNames};

/// Periodic resync of a quiet job.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Quiet period before a triggered reconcile runs: coalesces the burst of pod events
/// of a starting job (and of pods reporting progress) into fewer reconciles.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Requeue delay after `n` consecutive failures: 1 s, 2 s, 4 s ... capped at 5 minutes.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(RESYNC)
}

impl<K: Kind> Plan<K> {
    fn is_quiet(&self) -> bool {
        self.decision.is_quiet() && self.force.is_empty()
    }

    fn is_destructive(&self) -> bool {
        self.decision.is_destructive() || !self.force.is_empty()
    }

    /// When to reconcile again: the decision's deadline or the end of a down node's
    /// toleration, whichever comes first, else the resync.
    fn requeue(&self) -> Action {
        let after = [self.decision.requeue_after(), self.toleration_end]
            .into_iter()
            .flatten()
            .min();
        Action::requeue(after.map_or(RESYNC, |t| t.min(RESYNC) + Duration::from_millis(100)))
    }
}

/// Top-level reconcile: metrics, health and the backoff's bookkeeping around
/// [`reconcile_job`].
pub async fn reconcile<K: Kind>(job: Arc<K>, ctx: Arc<Context<K>>) -> Result<Action> {
    ctx.metrics.reconcile_total.inc();
    let _in_flight = ctx.health.reconcile_started(key(&*job), Instant::now());
    let result = ctx
        .metrics
        .timed_reconcile(reconcile_job(&*job, &*ctx))
        .await;
    if result.is_ok() {
        ctx.failures.lock().unwrap().remove(&key(&*job));
    }
    result
}

pub fn error_policy<K: Kind>(job: Arc<K>, err: &Error, ctx: Arc<Context<K>>) -> Action {
    ctx.metrics
        .reconcile_errors_total
        .with_label_values(&[err.metric_label()])
        .inc();
    let n = {
        let mut f = ctx.failures.lock().unwrap();
        let n = f.entry(key(&*job)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(n);
    tracing::warn!(kind = K::kind(&()).as_ref(), job = %job.name_any(), namespace = ?job.namespace(), error = %err, failures = n, retry_in = ?delay, "reconcile failed; requeueing");
    Action::requeue(delay)
}

async fn reconcile_job<K: Kind>(cached: &K, ctx: &Context<K>) -> Result<Action> {
    let ns = cached
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = cached.name_any();
    if cached.meta().deletion_timestamp.is_some() {
        // Children go with the job (owner references, garbage collector).
        ctx.expectations.forget(&expect_key(cached));
        return Ok(Action::await_change());
    }
    // "Node gone", "rank missing" and "not found" can only be trusted on complete
    // caches (the controller's streams fill them; reconciles run in their own tasks).
    let _ = ctx.pods.wait_until_ready().await;
    let _ = ctx.nodes.wait_until_ready().await;
    K::caches_ready(ctx).await;
    let now = Timestamp::now();
    let pods = ctx.cached_pods(&ns, &name);
    // Pods this operator created are not all in the cache yet: deciding now would create
    // them again. Their watch events trigger the next reconcile.
    if let Some(left) = ctx
        .expectations
        .pods_pending(&expect_key(cached), &pods, Instant::now())
    {
        return Ok(Action::requeue(left));
    }
    let facts = K::observe(ctx, cached).await?;
    let first = K::plan(ctx, cached, &facts, &pods, now);
    if first.is_quiet() && cached.status() == Some(&first.status) && !K::look_again(cached) {
        K::after(ctx, cached, &facts, &first.decision, &pods, now).await?;
        return Ok(requeue(&first, &facts));
    }

    // Something changes: decide again on a job at least as new as this operator's last
    // status write (a stale cached job could double-count a restart or misjudge the
    // attempt).
    let jobs: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let rv = cached.meta().resource_version.as_deref();
    let trusted =
        K::POLICY.trust_cached_job && ctx.expectations.shows_last_write(&expect_key(cached), rv);
    let (job, facts, mut plan) = if trusted {
        // The same job and pods: the plan made above stands.
        (cached.clone(), facts, first)
    } else {
        let Some(job) = jobs.get_opt(&name).await? else {
            return Ok(Action::await_change());
        };
        let facts = K::refresh(ctx, &job, facts).await?;
        let plan = K::plan(ctx, &job, &facts, &pods, now);
        (job, facts, plan)
    };
    if plan.is_destructive() {
        // Before deleting anything, confirm on a fresh list of the pods too.
        let lp = ListParams::default().labels(&format!("{}={}", K::POLICY.job_label, name));
        let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let fresh: Vec<Arc<Pod>> = pod_api
            .list(&lp)
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        plan = K::plan(ctx, &job, &facts, &fresh, now);
    }
    tracing::debug!(kind = K::kind(&()).as_ref(), job = %name, namespace = %ns, decision = ?plan.decision, "reconcile");
    act(ctx, &jobs, &job, &facts, plan, &pods, now).await
}

fn requeue<K: Kind>(plan: &Plan<K>, facts: &K::Facts) -> Action {
    K::requeue_instead(facts).map_or_else(|| plan.requeue(), Action::requeue)
}

/// Acting on a plan: children and status, then (with Events published on the side) the
/// pods deleted and created, then what others learn, then the job's own TTL.
async fn act<K: Kind>(
    ctx: &Context<K>,
    jobs: &Api<K>,
    job: &K,
    facts: &K::Facts,
    plan: Plan<K>,
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Result<Action> {
    children_and_status(ctx, jobs, job, facts, &plan).await?;
    K::before_pods(ctx, jobs, job, &plan, now).await?;
    (K::POLICY.restarts_total)(&ctx.metrics).inc_by(plan.decision.restarts());
    publish_all(&ctx.recorder, job.object_ref(&()), plan.events.clone());
    delete_pods(ctx, job, &plan).await?;
    create_pods(ctx, jobs, job, facts, &plan, now).await?;
    K::after(ctx, job, facts, &plan.decision, pods, now).await?;
    if plan.decision.deletes_job() {
        tracing::info!(kind = K::kind(&()).as_ref(), job = %job.name_any(), namespace = ?job.namespace(), "ttlSecondsAfterFinished passed: deleting the job");
        delete_job(jobs, job).await?;
        return Ok(Action::await_change());
    }
    Ok(requeue(&plan, facts))
}

/// The children (the kind says which, and when) and the status, in the kind's order.
async fn children_and_status<K: Kind>(
    ctx: &Context<K>,
    jobs: &Api<K>,
    job: &K,
    facts: &K::Facts,
    plan: &Plan<K>,
) -> Result<()> {
    let children = K::apply_children(ctx, job, facts, plan);
    let status = async {
        if job.status() != Some(&plan.status) {
            let written = write_status(jobs, job, &plan.status).await?;
            ctx.expectations
                .wrote_status(&expect_key(job), written.meta().resource_version.clone());
        }
        Ok::<_, Error>(())
    };
    let children = if K::POLICY.children_before_status {
        let children = children.await;
        if children.is_ok() {
            status.await?;
        }
        children
    } else {
        // Both to the end: a conflict's condition is written after the status.
        let (children, status) = futures::join!(children, status);
        status?;
        children
    };
    match children {
        Err(e @ Error::ChildConflict { .. }) => {
            let msg = e.to_string();
            ctx.blocked(
                jobs,
                job,
                plan.status.clone(),
                reason::CHILD_CONFLICT,
                msg,
                Timestamp::now(),
            )
            .await?;
            Err(e)
        }
        other => other,
    }
}

async fn delete_pods<K: Kind>(ctx: &Context<K>, job: &K, plan: &Plan<K>) -> Result<()> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for pod in &plan.force {
        tracing::warn!(job = %job.name_any(), namespace = %ns, pod = %pod, "force-deleting a pod on a node unreachable past unreachableNodeTolerationSeconds, or out of service");
    }
    let normal = plan
        .decision
        .deletes()
        .iter()
        .filter(|p| !plan.force.contains(p));
    let all = normal
        .map(|p| (p, DeleteParams::default()))
        // As `kubectl delete --grace-period=0 --force`: no kubelet confirms it.
        .chain(
            plan.force
                .iter()
                .map(|p| (p, DeleteParams::default().grace_period(0))),
        );
    futures::future::try_join_all(all.map(|(pod, dp)| {
        let pod_api = pod_api.clone();
        async move {
            match pod_api.delete(pod, &dp).await {
                Err(e) if !is_status(&e, 404) => Err(Error::from(e)),
                _ => Ok(()),
            }
        }
    }))
    .await?;
    Ok(())
}

/// Create the decision's pods; those created are expected in the cache. A refusal only
/// a change elsewhere can lift makes the job say so (`FailedCreate`, quoting the API
/// server); the create is retried with the backoff, as the Job controller does.
async fn create_pods<K: Kind>(
    ctx: &Context<K>,
    jobs: &Api<K>,
    job: &K,
    facts: &K::Facts,
    plan: &Plan<K>,
    now: Timestamp,
) -> Result<()> {
    if !plan.decision.creates() {
        return Ok(());
    }
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut new_pods = K::pods(ctx, job, facts, plan).await?;
    for pod in &mut new_pods {
        if let Some(spec) = pod.spec.as_mut() {
            crate::security::tell_report_url(spec, ctx.report_url.as_deref());
        }
    }
    // While a pod of another owner held one of these names, look before creating any:
    // retries would otherwise make and delete the rest of the group each time.
    if conflict_stands(job) {
        for pod in &new_pods {
            if let Some(e) = pod_api.get_opt(&pod.name_any()).await? {
                if !is_ours(&e, pod) {
                    return pod_conflict(ctx, jobs, job, plan, pod, &e, now).await;
                }
            }
        }
    }
    let created = futures::future::join_all(new_pods.iter().map(|pod| {
        let pod_api = pod_api.clone();
        async move {
            match pod_api.create(&PostParams::default(), pod).await {
                Ok(_) => Ok(Created::Made),
                // Deterministic names: an existing pod is the one we meant to create
                // (or a foreign one the decisions see; not expected in the cache), unless
                // another object controls it.
                Err(e) if is_status(&e, 409) => match pod_api.get_opt(&pod.name_any()).await {
                    Ok(Some(e)) if !is_ours(&e, pod) => Ok(Created::Foreign(Box::new(e))),
                    _ => Ok(Created::There),
                },
                Err(e) => Err((pod.name_any(), e)),
            }
        }
    }))
    .await;
    let made: Vec<String> = new_pods
        .iter()
        .zip(&created)
        .filter(|(_, r)| matches!(r, Ok(Created::Made)))
        .map(|(p, _)| p.name_any())
        .collect();
    let foreign = new_pods.iter().zip(&created).find_map(|(p, r)| match r {
        Ok(Created::Foreign(e)) => Some((p, e)),
        _ => None,
    });
    if let Some((pod, existing)) = foreign {
        // A group with a member missing cannot run: take back the pods just made.
        for name in &made {
            match pod_api.delete(name, &DeleteParams::default()).await {
                Err(e) if !is_status(&e, 404) => return Err(e.into()),
                _ => {}
            }
        }
        return pod_conflict(ctx, jobs, job, plan, pod, existing, now).await;
    }
    ctx.expectations
        .created(&expect_key(job), made, Instant::now());
    if let Some((pod, e)) = created.into_iter().find_map(|r| r.err()) {
        if let kube::Error::Api(refusal) = &e {
            if REFUSALS.contains(&refusal.code) {
                let msg = refused(K::POLICY.noun, &pod, &refusal.message);
                ctx.blocked(
                    jobs,
                    job,
                    plan.status.clone(),
                    reason::FAILED_CREATE,
                    msg,
                    now,
                )
                .await?;
            }
        }
        return Err(e.into());
    }
    Ok(())
}

/// What a pod create found.
enum Created {
    Made,
    /// The pod was there already, the job's.
    There,
    /// Another object's pod (or one without a controller) holds the name.
    Foreign(Box<Pod>),
}

/// Whether the job's Running condition says a child's name was held by another object.
fn conflict_stands<K: Kind>(job: &K) -> bool {
    job.status().is_some_and(|s| {
        s.conditions().iter().any(|c| {
            c.type_ == janus_crds::pods::condition::RUNNING && c.reason == reason::CHILD_CONFLICT
        })
    })
}

/// `existing` holds the name of `pod`: Running=False ChildConflict naming it, and the
/// reconcile fails (retried with the backoff until the name is free).
async fn pod_conflict<K: Kind>(
    ctx: &Context<K>,
    jobs: &Api<K>,
    job: &K,
    plan: &Plan<K>,
    pod: &Pod,
    existing: &Pod,
    now: Timestamp,
) -> Result<()> {
    let e = Error::ChildConflict {
        object: describe(pod),
        holder: holder(existing),
    };
    let msg = e.to_string();
    ctx.blocked(
        jobs,
        job,
        plan.status.clone(),
        reason::CHILD_CONFLICT,
        msg,
        now,
    )
    .await?;
    Err(e)
}

/// Reports each event or error of a watch to `health` (a watch that keeps failing
/// wedges the controller: the runtime would retry it silently forever) and counts and
/// logs its errors at warn (`janus_operator_watch_errors_total{watch}`).
pub fn watch_health<K>(
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

/// The API of `K` in all namespaces, or only `namespace`.
pub fn scoped_api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs kind `K`'s controller (over all namespaces, or only `namespace`) until
/// `shutdown` resolves. `on_store` receives the job cache (for the phase gauges).
pub async fn run<K: Kind>(
    client: Client,
    metrics: Metrics,
    health: Health,
    decode: DecodeReporter,
    settings: Settings,
    on_store: impl FnOnce(Store<K>),
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Settings {
        identity,
        namespace,
        report_url,
        concurrency,
    } = settings;
    let p = K::POLICY;
    let expectations: Arc<Expectations> = Default::default();
    let (job_store, job_writer) = reflector::store();
    let job_stream = reflector::reflector(
        job_writer,
        lenient_watcher(
            dynamic_api::<K>(&client, &namespace),
            watcher::Config::default(),
            decode.clone(),
        ),
    )
    .default_backoff()
    .inspect(watch_health(&health, &metrics, p.watches.jobs))
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
    let pod_watch = watcher(
        scoped_api::<Pod>(&client, &namespace),
        watcher::Config::default().labels(p.job_label),
    )
    .modify(move |pod| slim_pod(pod, p.progress_annotation, p.containers));
    let pod_stream = reflector::reflector(pod_writer, pod_watch)
        .default_backoff()
        .inspect(watch_health(&health, &metrics, p.watches.pods))
        .touched_objects();
    let (nodes, node_writer) = reflector::store();
    let node_watch = watcher(Api::<Node>::all(client.clone()), watcher::Config::default());
    let node_stream = reflector::reflector(node_writer, node_watch.modify(slim_node))
        .default_backoff()
        .inspect(watch_health(&health, &metrics, p.watches.nodes))
        .filter_map(nodes::transitions());

    let controller = Controller::for_stream(job_stream, job_store).with_config(
        kube::runtime::controller::Config::default()
            .debounce(DEBOUNCE)
            .concurrency(concurrency.unwrap_or(p.concurrency)),
    );
    let jobs = controller.store();
    let w = Watch {
        client: &client,
        namespace: &namespace,
        health: &health,
        metrics: &metrics,
        decode: &decode,
    };
    let (own, add_watches) = K::watches(w, jobs.clone()).await;
    let mut ctx = Context::new(
        client.clone(),
        recorder(&client, &identity),
        metrics,
        health,
        report_url,
        pods.clone(),
        nodes,
        own,
    );
    ctx.expectations = expectations;
    let controller = controller
        .owns_stream(pod_stream)
        .watches_stream(node_stream, move |node: Node| {
            jobs_on_node(&pods, p.job_label, &node)
        })
        .graceful_shutdown_on(shutdown);
    let controller = add_watches(controller);
    on_store(jobs);
    controller
        .run(reconcile::<K>, error_policy::<K>, Arc::new(ctx))
        .for_each(|res| async move {
            if let Err(e) = res {
                // Watch errors are logged (warn) and counted where they happen.
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_back_off_exponentially_up_to_the_resync() {
        let d: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
