//! `JanusEvalJob` on the controller layer: what it watches besides its pods and nodes
//! (the training jobs and baseline evaluations it waits for), what it reads besides
//! them (its gates: the model, the baseline, its Secrets), its plan
//! ([`super::stage::decide`], then [`super::status::next_status`]), its children and
//! its pods. The run loop, the stuck states and the lifecycle are the layer's
//! ([`crate::controller`]).
//!
//! Secrets are not watched (an operator that lists Secrets could read every
//! credential): they are read when something is about to change, and looked for again
//! every few seconds while one is missing.

use std::sync::Arc;

use futures::StreamExt;
use janus_crds::eval::{condition, reason};
use janus_crds::{annotations, labels, JanusEvalJob, JanusEvalJobStatus, JanusTrainingJob};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;

use super::children;
use super::gates::{self, Gates};
use super::stage::{self, Decision, Progress, Slot};
use super::status;
use crate::controller::apply::apply_child;
use crate::controller::run::{watch_health, AddWatches, Watch, WatchNames};
use crate::controller::{stuck, Context, Kind, Plan, Policy};
use crate::error::{Error, Result};
use crate::watch::{dynamic_api, lenient_watcher};

crate::job_status!(JanusEvalJobStatus);

/// The evaluation's own caches.
pub struct EvalCaches {
    /// Training jobs an evaluation may wait for (`spec.model.trainingJob`).
    pub training_jobs: Store<JanusTrainingJob>,
    /// Evaluations (baselines are evaluations too).
    pub eval_jobs: Store<JanusEvalJob>,
}

impl Kind for JanusEvalJob {
    type Step = Progress;
    type Role = Slot;
    type Facts = Gates;
    type Own = EvalCaches;
    const POLICY: Policy = Policy {
        job_label: labels::EVAL_JOB,
        progress_annotation: annotations::EVAL_PROGRESS,
        containers: status::CONTAINERS,
        noun: "pod",
        watches: WatchNames {
            jobs: "eval-jobs",
            pods: "eval-pods",
            nodes: "eval-nodes",
        },
        concurrency: 8,
        // Its decisions read Secrets that no cache holds: read the job fresh with them.
        trust_cached_job: false,
        restarts_total: |m| &m.eval_restarts_total,
        children_before_status: true,
    };

    fn role(pod: &Pod) -> Option<Slot> {
        status::slot_of(pod)
    }

    /// The training jobs and the baseline evaluations waited for.
    async fn watches(w: Watch<'_>, jobs: Store<Self>) -> (EvalCaches, AddWatches<Self>) {
        let (training_jobs, tj_writer) = reflector::store();
        let tj_stream = reflector::reflector(
            tj_writer,
            lenient_watcher(
                dynamic_api::<JanusTrainingJob>(w.client, w.namespace),
                watcher::Config::default(),
                w.decode.clone(),
            ),
        )
        .default_backoff()
        .inspect(watch_health(w.health, w.metrics, "eval-training-jobs"))
        .touched_objects();
        let baseline_stream = lenient_watcher::<JanusEvalJob>(
            dynamic_api::<JanusEvalJob>(w.client, w.namespace),
            watcher::Config::default(),
            w.decode.clone(),
        )
        .default_backoff()
        .inspect(watch_health(w.health, w.metrics, "eval-baselines"))
        .touched_objects();
        let own = EvalCaches {
            training_jobs,
            eval_jobs: jobs.clone(),
        };
        let add: AddWatches<Self> = Box::new(move |c| {
            let store = jobs.clone();
            c.watches_stream(tj_stream, move |tj| waiting_for_training(&store, &tj))
                .watches_stream(baseline_stream, move |b| waiting_for_baseline(&jobs, &b))
        });
        (own, add)
    }

    async fn caches_ready(ctx: &Context<Self>) {
        let _ = ctx.own.training_jobs.wait_until_ready().await;
        let _ = ctx.own.eval_jobs.wait_until_ready().await;
    }

    /// Gates with the Secrets as the status last saw them (no API request).
    async fn observe(ctx: &Context<Self>, job: &Self) -> Result<Gates> {
        Ok(cached_gates(ctx, job))
    }

    /// With the Secrets read now. A finished job creates nothing: its Secrets do not
    /// matter any more.
    async fn refresh(ctx: &Context<Self>, job: &Self, _: Gates) -> Result<Gates> {
        if job.phase().is_finished() {
            Ok(cached_gates(ctx, job))
        } else {
            fresh_gates(ctx, job).await
        }
    }

    /// While the job waits for a Secret it is read again on every reconcile until found.
    fn look_again(job: &Self) -> bool {
        !job.phase().is_finished()
            && job.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == condition::SECRETS_READY && c.status == "False")
            })
    }

    fn plan(
        ctx: &Context<Self>,
        job: &Self,
        gates: &Gates,
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> Plan<Self> {
        let uid = job.metadata.uid.as_deref();
        let facts = status::eval_facts(job, gates);
        let pf = ctx.facts(job, pods);
        let mut decision = stage::decide(&facts, &pf, now);
        if let Some(d) = invalid_config(job, gates, &decision) {
            decision = d;
        }
        let toleration = facts.run.unreachable_node_toleration_seconds;
        let force = stuck::force_delete(toleration, &pf, decision.deletes(), now);
        let pod_refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let reports = status::reports(&facts, uid, &pod_refs);
        let (status, events) = status::next_status(job, gates, &decision, &pf, &reports, now);
        Plan {
            decision,
            status,
            events,
            force,
            toleration_end: stuck::next_toleration_end(toleration, &pf, now),
        }
    }

    /// The pods' config and identity exist before any pod.
    async fn apply_children(
        ctx: &Context<Self>,
        job: &Self,
        gates: &Gates,
        plan: &Plan<Self>,
    ) -> Result<()> {
        if !plan.decision.creates() {
            return Ok(());
        }
        let ns = job
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let c = &ctx.client;
        let fresh = job.status.is_none();
        let sa = children::service_account(job)?;
        apply_child::<ServiceAccount>(c, &ns, &sa, fresh).await?;
        let cm = children::config_map(job, &gates.resolved)?;
        apply_child::<ConfigMap>(c, &ns, &cm, fresh).await
    }

    /// The pods of the slots created, at their slots' attempts.
    async fn pods(_: &Context<Self>, job: &Self, _: &Gates, plan: &Plan<Self>) -> Result<Vec<Pod>> {
        let Decision::Step(Progress { create, .. }) = &plan.decision else {
            return Ok(vec![]);
        };
        let s = &plan.status;
        create
            .iter()
            .map(|slot| {
                let attempt = match slot {
                    Slot::Generate(i) => s
                        .shards
                        .iter()
                        .find(|x| x.index == *i)
                        .map_or(0, |x| x.attempt),
                    Slot::Judge => s.judge.as_ref().map_or(0, |j| j.attempt),
                };
                children::slot_pod(job, *slot, attempt)
            })
            .collect()
    }
}

/// The model and baseline gates, from the caches of the objects they name.
fn object_gates(
    ctx: &Context<JanusEvalJob>,
    job: &JanusEvalJob,
) -> (stage::Gate, stage::Gate, gates::Resolved) {
    let ns = job.namespace().unwrap_or_default();
    let training = job
        .spec
        .model
        .training_job
        .as_ref()
        .and_then(|n| ctx.own.training_jobs.get(&ObjectRef::new(n).within(&ns)));
    let (model, mut resolved) = gates::model(job, training.as_deref());
    let baseline_job = job
        .spec
        .baseline
        .as_ref()
        .and_then(|b| b.eval_job.as_ref())
        .and_then(|n| ctx.own.eval_jobs.get(&ObjectRef::new(n).within(&ns)));
    let (baseline, url) = gates::baseline(job, baseline_job.as_deref());
    resolved.baseline_results_url = url;
    (model, baseline, resolved)
}

/// Gates with the Secrets as the status last saw them (no API request).
fn cached_gates(ctx: &Context<JanusEvalJob>, job: &JanusEvalJob) -> Gates {
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
async fn fresh_gates(ctx: &Context<JanusEvalJob>, job: &JanusEvalJob) -> Result<Gates> {
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
    if !d.creates() {
        return None;
    }
    if let Err(e @ Error::EvalConfig { .. }) =
        super::config_render::eval_config(job, &gates.resolved)
    {
        return Some(Decision::Fail {
            reason: reason::INVALID_CONFIG,
            message: e.to_string(),
            delete: vec![],
        });
    }
    // A template that does not merge into a pod fails the job, as a training job's.
    match children::generation_pod(job, 0, 0).and_then(|_| children::judge_pod(job, 0)) {
        Err(e @ Error::TemplateOverride { .. }) => Some(Decision::Fail {
            reason: reason::INVALID_POD_TEMPLATE,
            message: e.to_string(),
            delete: vec![],
        }),
        _ => None,
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
