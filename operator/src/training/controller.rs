//! `JanusTrainingJob` on the controller layer: what it watches besides its pods and
//! nodes (Kueue's Workloads, when installed), what it reads besides them (its
//! Workload's admission), its plan ([`super::gang::decide`], then
//! [`super::status::next_status`]), its children and its worker pods. The run loop,
//! the stuck states and the lifecycle are the layer's ([`crate::controller`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use janus_crds::training::reason;
use janus_crds::{annotations, labels, JanusTrainingJob, JanusTrainingJobStatus, Progress};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;

use super::gang::{self, Decision, Gang};
use super::kueue::{self, KueueFacts};
use super::{children, pod_group, status};
use crate::controller::apply::apply_child;
use crate::controller::pods::owned_by;
use crate::controller::run::{watch_health, AddWatches, Watch, WatchNames};
use crate::controller::{Context, Kind, Plan, Policy};
use crate::error::{Error, Result};
use crate::watch::resource_api;

crate::job_status!(JanusTrainingJobStatus);

/// Reconciles in flight at once: bounds the requests a burst of new jobs sends to the
/// API server together (the rest wait in the controller's queue). With 16, a burst of
/// 200 gangs kept the test API server's queue so long that a reconcile's p99 was 2.2 s
/// against 1.6 s with 4, for pods created 12 s sooner out of 40 (`bench-operator`);
/// `--concurrency` raises it where the API server has the cores.
const CONCURRENCY: u16 = 4;

/// The Workload watch's name in `/readyz` and `janus_operator_watch_errors_total`.
const WORKLOADS_WATCH: &str = "workloads";

impl Kind for JanusTrainingJob {
    type Step = Gang;
    type Role = i32;
    /// The job's Workload's admission (None: the job has no queue name).
    type Facts = Option<KueueFacts>;
    type Own = ();
    const POLICY: Policy = Policy {
        job_label: labels::JOB,
        progress_annotation: annotations::PROGRESS,
        containers: status::CONTAINERS,
        noun: "worker",
        watches: WatchNames {
            jobs: "jobs",
            pods: "pods",
            nodes: "nodes",
        },
        concurrency: CONCURRENCY,
        trust_cached_job: true,
        restarts_total: |m| &m.job_restarts_total,
        children_before_status: false,
    };

    fn role(pod: &Pod) -> Option<i32> {
        status::rank(pod)
    }

    /// Workload changes (admission, eviction) trigger the owning job. The watch starts
    /// once the cluster serves the Workload API: at once, or when Kueue is installed
    /// after the operator (no restart; the operator is ready meanwhile, and the watch's
    /// health counts from its start).
    async fn watches(w: Watch<'_>, _jobs: Store<Self>) -> ((), AddWatches<Self>) {
        let api = resource_api(w.client, w.namespace, &kueue::workload_resource());
        let (client, health, metrics) = (w.client.clone(), w.health.clone(), w.metrics.clone());
        let stream = futures::stream::once(kueue::wait_installed(client)).flat_map(move |()| {
            watcher(api.clone(), watcher::Config::default())
                .default_backoff()
                .inspect(watch_health(&health, &metrics, WORKLOADS_WATCH))
                .touched_objects()
        });
        let add: AddWatches<Self> =
            Box::new(move |c| c.owns_stream_with(stream, kueue::workload_resource()));
        ((), add)
    }

    /// A job with a queue name runs when Kueue admits its Workload (created here).
    async fn observe(ctx: &Context<Self>, job: &Self) -> Result<Option<KueueFacts>> {
        kueue::observe(&ctx.client, job).await
    }

    fn plan(
        ctx: &Context<Self>,
        job: &Self,
        admission: &Option<KueueFacts>,
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> Plan<Self> {
        plan(ctx, job, admission.as_ref(), pods, now)
    }

    /// Service, ConfigMap, ServiceAccount (and the NetworkPolicy when asked for), by a
    /// new job and whenever pods are created.
    async fn apply_children(
        ctx: &Context<Self>,
        job: &Self,
        _: &Option<KueueFacts>,
        plan: &Plan<Self>,
    ) -> Result<()> {
        let first_time = job.status.as_ref().and_then(|s| s.phase).is_none();
        if !(first_time || plan.decision.creates()) {
            return Ok(());
        }
        let ns = job
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let c = &ctx.client;
        let (svc, cm, sa) = (
            children::service(job)?,
            children::config_map(job)?,
            children::service_account(job)?,
        );
        // Each to the end, the first error in this order: with two objects in the way,
        // the condition names the same one each time (one Warning, not one per retry).
        let (on_svc, on_cm, on_sa, on_np) = futures::join!(
            apply_child::<Service>(c, &ns, &svc, first_time),
            apply_child::<ConfigMap>(c, &ns, &cm, first_time),
            apply_child::<ServiceAccount>(c, &ns, &sa, first_time),
            async {
                match children::network_policy(job)? {
                    Some(np) => apply_child::<NetworkPolicy>(c, &ns, &np, first_time).await,
                    None => Ok(()),
                }
            },
        );
        on_svc.and(on_cm).and(on_sa).and(on_np)
    }

    /// The job's PodGroup, before its pods.
    async fn before_pods(
        ctx: &Context<Self>,
        jobs: &Api<Self>,
        job: &Self,
        plan: &Plan<Self>,
        now: Timestamp,
    ) -> Result<()> {
        if !plan.decision.creates() {
            return Ok(());
        }
        pod_group::ensure(ctx, jobs, job, &plan.status, now).await
    }

    /// The missing ranks of the current attempt, placed where Kueue admitted them.
    async fn pods(
        ctx: &Context<Self>,
        job: &Self,
        admission: &Option<KueueFacts>,
        plan: &Plan<Self>,
    ) -> Result<Vec<Pod>> {
        let Decision::Step(Gang::Progress { create, .. }) = &plan.decision else {
            return Ok(vec![]);
        };
        let placement = match admission {
            Some(a) if !create.is_empty() => kueue::admitted_placement(&ctx.client, a).await?,
            _ => Default::default(),
        };
        create
            .iter()
            .map(|rank| {
                let mut pod = children::worker_pod(job, *rank, plan.status.restarts)?;
                kueue::apply_placement(&mut pod, &placement);
                Ok(pod)
            })
            .collect()
    }

    async fn after(
        ctx: &Context<Self>,
        job: &Self,
        admission: &Option<KueueFacts>,
        decision: &Decision,
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> Result<()> {
        match admission {
            Some(a) => kueue::after_decision(&ctx.client, job, a, decision, pods, now).await,
            None => Ok(()),
        }
    }

    fn requeue_instead(admission: &Option<KueueFacts>) -> Option<Duration> {
        admission.as_ref().and_then(kueue::requeue_instead)
    }
}

fn rank0_progress(job: &JanusTrainingJob, pods: &[Arc<Pod>], attempt: i32) -> Option<Progress> {
    pods.iter()
        .find(|p| {
            owned_by(p, job.metadata.uid.as_deref())
                && p.labels().get(labels::RANK).map(String::as_str) == Some("0")
                && p.labels().get(labels::ATTEMPT) == Some(&attempt.to_string())
        })
        .and_then(|p| children::progress_annotation(p))
        .and_then(|v| Progress::from_annotation(v))
}

/// A Fail decision when the job is about to create pods from a template override
/// that does not merge into a valid pod.
fn invalid_template(job: &JanusTrainingJob, d: &Decision) -> Option<Decision> {
    let Decision::Step(Gang::Progress { create, .. }) = d else {
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

/// A measurement new in `next` (another `measuredAt` than the job's status had) into
/// the operator's fabric metrics, by the `FabricCheck` condition's reason.
fn count_fabric_check(
    metrics: &crate::metrics::Metrics,
    job: &JanusTrainingJob,
    next: &janus_crds::JanusTrainingJobStatus,
) {
    let Some(f) = &next.fabric else {
        return;
    };
    let old = job.status.as_ref().and_then(|s| s.fabric.as_ref());
    if old.is_some_and(|o| o.measured_at == f.measured_at) {
        return;
    }
    let reason = next
        .conditions
        .iter()
        .find(|c| c.type_ == janus_crds::training::condition::FABRIC_CHECK)
        .map(|c| c.reason.as_str());
    let result = match reason {
        Some(reason::FABRIC_CHECK_PASSED) => "passed",
        Some(reason::FABRIC_BELOW_THRESHOLD) => "below_threshold",
        Some(reason::FABRIC_CHECK_FAILED) => "failed",
        _ => "measured",
    };
    metrics
        .fabric_checks_total
        .with_label_values(&[result])
        .inc();
    metrics
        .fabric_bus_bandwidth_gbps
        .observe(f.bus_bandwidth_gbps);
}

/// The decision on `pods`, the status it leads to and its Events, the pods to
/// force-delete (on nodes down past the toleration), and when a toleration ends.
fn plan(
    ctx: &Context<JanusTrainingJob>,
    job: &JanusTrainingJob,
    admission: Option<&KueueFacts>,
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Plan<JanusTrainingJob> {
    let mut pf = ctx.facts(job, pods);
    let mut jf = status::job_facts(job);
    jf.admitted = admission.is_none_or(KueueFacts::admitted);
    let decision = gang::decide(&jf, &pf, now);
    let force = gang::force_delete(&jf, &pf, decision.deletes(), now);
    let toleration_end = gang::next_toleration_end(&jf, &pf, now);
    // Foreign pods are never counted in the status either.
    pf.retain(|p| !p.foreign);
    if let Some(d) = invalid_template(job, &decision) {
        // A pod template override that cannot make a pod fails the job with a reason the
        // user sees, instead of an endless error loop.
        let (status, events) = status::next_status(job, &d, &pf, None, now);
        return Plan {
            decision: d,
            status,
            events,
            force,
            toleration_end,
        };
    }
    let attempt = job.status.as_ref().map(|s| s.restarts).unwrap_or(0);
    let (mut st, mut events) =
        status::next_status(job, &decision, &pf, rank0_progress(job, pods, attempt), now);
    if let Some(a) = admission {
        kueue::admission_status(job, a, &mut st, &mut events, now);
    }
    count_fabric_check(&ctx.metrics, job, &st);
    Plan {
        decision,
        status: st,
        events,
        force,
        toleration_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use janus_crds::training::JobPhase;

    #[test]
    fn an_unmergeable_pod_template_fails_the_job_instead_of_looping() {
        let mut job = crate::training::config_render::tests::representative_job();
        let d = Decision::Step(Gang::Progress {
            phase: JobPhase::Pending,
            delete: vec![],
            create: vec![0, 1],
            requeue_after: None,
        });
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
