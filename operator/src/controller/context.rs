//! A kind and what every reconcile of it runs with. [`Kind`]: a kind's types and the
//! hooks the run loop calls, its [`Policy`], the [`Plan`] a look at a job concludes.
//! [`Context`], handed to every hook: the client, the Event recorder, the metrics, the
//! health the probes read, the pod and node caches, the per-job failure counts of the
//! backoff, the expectations, and the kind's own caches. (The two refer to each other,
//! so they are declared together; the run loop in [`super::run`] uses both.)

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::events::{Recorder, Reporter};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::core::object::HasStatus;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use prometheus::IntCounter;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::apply::{write_status, MANAGER};
use super::conditions::{publish, set_condition, EventSpec, JobStatus};
use super::decision::{Decision, Step};
use super::expectations::Expectations;
use super::nodes::state_in;
use super::pods::{pod_facts, Containers, PodFacts};
use crate::error::Result;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::watch::DecodeReporter;
use janus_crds::pods::condition;

/// Health names of a kind's watches (see [`crate::health::WATCHES`]).
#[derive(Debug, Clone, Copy)]
pub struct WatchNames {
    pub jobs: &'static str,
    pub pods: &'static str,
    pub nodes: &'static str,
}

/// What the run loop needs to know of a kind besides its hooks.
#[derive(Clone, Copy)]
pub struct Policy {
    /// Label naming the job on each of its children (the pod watch selects it).
    pub job_label: &'static str,
    /// The pods' progress annotation (kept in the slimmed pod cache).
    pub progress_annotation: &'static str,
    /// The containers whose states the decisions read.
    pub containers: Containers,
    /// What its pods are called in messages ("worker", "pod").
    pub noun: &'static str,
    pub watches: WatchNames,
    /// Reconciles in flight at once, unless `--concurrency` says otherwise.
    pub concurrency: u16,
    /// Whether a cached job that shows this operator's last status write stands in for
    /// a fresh read (else the job is always read fresh before acting).
    pub trust_cached_job: bool,
    /// Whether the children are applied before the status is written (else at the same
    /// time: they do not depend on it).
    pub children_before_status: bool,
    /// The counter of the restarts its decisions make.
    pub restarts_total: fn(&Metrics) -> &IntCounter,
}

/// What one look at a job concluded.
#[derive(Debug)]
pub struct Plan<K: Kind> {
    pub decision: Decision<K::Step>,
    /// The status it leads to, and the Events of its transitions.
    pub status: K::Status,
    pub events: Vec<EventSpec>,
    /// Pods to delete with grace period 0 (on a node down past the toleration).
    pub force: Vec<String>,
    /// When a toleration of a down node ends next.
    pub toleration_end: Option<Duration>,
}

/// What a kind's watches are started with.
pub struct Watch<'a> {
    pub client: &'a Client,
    pub namespace: &'a Option<String>,
    pub health: &'a Health,
    pub metrics: &'a Metrics,
    pub decode: &'a DecodeReporter,
}

/// Adds a kind's own watches to its controller.
pub type AddWatches<K> = Box<dyn FnOnce(Controller<K>) -> Controller<K> + Send>;

/// A kind of job: its types, and the hooks the run loop calls. Each kind decides alone
/// (a pure function of its job, its pods and its facts); everything else is here.
pub trait Kind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + HasStatus<Status: JobStatus>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Its own step of a job under way (the rest of a decision is the layer's).
    type Step: Step;
    /// A pod's place in the job (a rank, a slot), from its labels.
    type Role: Clone + Debug + PartialEq + Send + Sync + 'static;
    /// What a decision reads besides the job and its pods (Kueue's admission, gates).
    type Facts: Send + Sync;
    /// The kind's own caches.
    type Own: Send + Sync + 'static;
    const POLICY: Policy;

    fn role(pod: &Pod) -> Option<Self::Role>;

    /// Start the kind's own watches, given the job cache.
    fn watches(
        w: Watch<'_>,
        jobs: Store<Self>,
    ) -> impl Future<Output = (Self::Own, AddWatches<Self>)> + Send;

    /// Wait until the kind's own caches are complete ("not found" is only true then).
    fn caches_ready(ctx: &Context<Self>) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }

    /// The facts of the cached job.
    fn observe(ctx: &Context<Self>, job: &Self)
        -> impl Future<Output = Result<Self::Facts>> + Send;

    /// The facts of `job` read fresh, before acting (`facts`: those of the cached job).
    fn refresh(
        ctx: &Context<Self>,
        job: &Self,
        facts: Self::Facts,
    ) -> impl Future<Output = Result<Self::Facts>> + Send {
        let _ = (ctx, job);
        async move { Ok(facts) }
    }

    /// Whether the cached view may miss a change the kind reads outside its caches
    /// (then a quiet job is looked at fresh anyway).
    fn look_again(job: &Self) -> bool {
        let _ = job;
        false
    }

    /// The decision, the status it leads to and its Events, for `pods`.
    fn plan(
        ctx: &Context<Self>,
        job: &Self,
        facts: &Self::Facts,
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> Plan<Self>;

    /// Apply the children other than pods (server-side apply: again is a no-op).
    fn apply_children(
        ctx: &Context<Self>,
        job: &Self,
        facts: &Self::Facts,
        plan: &Plan<Self>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// What has to exist before the pods (a PodGroup); may block the job.
    fn before_pods(
        ctx: &Context<Self>,
        jobs: &Api<Self>,
        job: &Self,
        plan: &Plan<Self>,
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, jobs, job, plan, now);
        async { Ok(()) }
    }

    /// The pods the decision creates.
    fn pods(
        ctx: &Context<Self>,
        job: &Self,
        facts: &Self::Facts,
        plan: &Plan<Self>,
    ) -> impl Future<Output = Result<Vec<Pod>>> + Send;

    /// What others learn of the decision (Kueue's Workload), after acting on it.
    fn after(
        ctx: &Context<Self>,
        job: &Self,
        facts: &Self::Facts,
        decision: &Decision<Self::Step>,
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, job, facts, decision, pods, now);
        async { Ok(()) }
    }

    /// A requeue that replaces the decision's (looking again for something unwatched).
    fn requeue_instead(facts: &Self::Facts) -> Option<Duration> {
        let _ = facts;
        None
    }
}

/// What every controller runs with, besides its client and metrics.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// This replica's name (Events' reporting instance).
    pub identity: String,
    /// Watch only this namespace (None: all).
    pub namespace: Option<String>,
    /// The operator's report endpoint as pods reach it (`JANUS_REPORT_URL`); None: pods
    /// do not report progress.
    pub report_url: Option<String>,
    /// Reconciles in flight at once, per controller (None: each kind's default).
    pub concurrency: Option<u16>,
}

pub struct Context<K: Kind> {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub health: Health,
    /// Where pods report progress (`JANUS_REPORT_URL`); None: they do not.
    pub report_url: Option<String>,
    /// The kind's pods (those with its job label).
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    /// Consecutive failed reconciles per job (`namespace/name`), for the backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Pods created and status written that the caches may not show yet.
    pub expectations: Arc<Expectations>,
    /// The kind's own caches.
    pub own: K::Own,
}

/// The Event recorder of the operator's replica `identity`.
pub fn recorder(client: &Client, identity: &str) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.to_string()),
        },
    )
}

/// `namespace/name` of a job: its key in the backoff and the health's reconciles.
pub fn key<K: Resource>(job: &K) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// The job's expectations: per object (a job deleted and created again under its name
/// has other pods and another history).
pub fn expect_key<K: Resource>(job: &K) -> String {
    format!(
        "{}/{}",
        key(job),
        job.meta().uid.as_deref().unwrap_or_default()
    )
}

impl<K: Kind> Context<K> {
    /// A context over caches filled elsewhere (the run loop's watches, or a test's).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Metrics,
        health: Health,
        report_url: Option<String>,
        pods: Store<Pod>,
        nodes: Store<Node>,
        own: K::Own,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            health,
            report_url,
            pods,
            nodes,
            failures: Default::default(),
            expectations: Default::default(),
            own,
        }
    }

    /// The job's pods in the pod cache (by its label; foreign ones included).
    pub fn cached_pods(&self, ns: &str, job: &str) -> Vec<Arc<Pod>> {
        self.pods.state_filter(|p| {
            p.namespace().as_deref() == Some(ns)
                && p.labels().get(K::POLICY.job_label).map(String::as_str) == Some(job)
        })
    }

    /// Facts of `pods` as seen by `job` (pods another object controls are foreign),
    /// their nodes from the node cache.
    pub fn facts(&self, job: &K, pods: &[Arc<Pod>]) -> Vec<PodFacts<K::Role>> {
        let uid = job.meta().uid.as_deref();
        pods.iter()
            .map(|p| {
                pod_facts(p, uid, K::role(p), K::POLICY.containers, |n| {
                    state_in(&self.nodes, n)
                })
            })
            .collect()
    }

    /// The job cannot make its pods until something outside it changes: Running=False
    /// with `why` and `msg` written now, and a Warning Event when the words are new.
    pub async fn blocked(
        &self,
        jobs: &Api<K>,
        job: &K,
        mut st: K::Status,
        why: &'static str,
        msg: String,
        now: Timestamp,
    ) -> Result<()> {
        let conds = st.conditions_mut();
        let repeated = conds
            .iter()
            .any(|c| c.type_ == condition::RUNNING && c.reason == why && c.message == msg);
        if repeated {
            return Ok(());
        }
        set_condition(conds, condition::RUNNING, false, why, &msg, now);
        let written = write_status(jobs, job, &st).await?;
        self.expectations
            .wrote_status(&expect_key(job), written.meta().resource_version.clone());
        let ev = EventSpec {
            warning: true,
            reason: why,
            note: msg,
        };
        publish(&self.recorder, &job.object_ref(&()), &ev).await;
        Ok(())
    }
}
