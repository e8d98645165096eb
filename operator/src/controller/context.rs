//! What every reconcile of every kind runs with: the client, the Event recorder, the
//! metrics, the health the probes read, the pod and node caches, the per-job failure
//! counts of the backoff, the expectations, and the kind's own caches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};

use super::apply::{write_status, MANAGER};
use super::conditions::{publish, set_condition, EventSpec};
use super::expectations::Expectations;
use super::nodes::state_in;
use super::pods::{pod_facts, PodFacts};
use super::run::{JobStatus, Kind};
use crate::error::Result;
use crate::health::Health;
use crate::metrics::Metrics;
use janus_crds::pods::condition;

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
