//! Kueue admission, the way Kueue's own job integrations (`pkg/controller/jobframework`)
//! do it, with the operator in the role of Kueue's generic job reconciler:
//! - a job labelled `kueue.x-k8s.io/queue-name` gets a `Workload` (owned by the job) with
//!   one pod set: `replicas` copies of the worker pod template, resources included;
//! - until the Workload is admitted the job is held suspended (no pods) with an
//!   `Admitted=False` condition quoting Kueue (why it is not admitted yet);
//! - once admitted, the gang starts with the node labels and tolerations of the
//!   ResourceFlavors Kueue assigned;
//! - Kueue evicts (preemption, a deactivated Workload, ...): the gang is deleted, and once
//!   no worker is left the Workload's quota reservation is released so it requeues;
//! - a finished job marks its Workload `Finished`, which returns the quota;
//! - `PodsReady` on the Workload says whether the whole gang is Ready (what Kueue's
//!   `waitForPodsReady` times), written as Kueue's job reconciler writes it;
//! - the Workload's priority comes from the job's `kueue.x-k8s.io/priority-class`
//!   label (a WorkloadPriorityClass), else the workers' PriorityClass, else the
//!   cluster's default one, as `jobframework.ExtractPriority` computes it;
//! - the `podSetUpdates` of the Workload's admission checks go on the pods with the
//!   flavors' placement;
//! - a Workload that no longer matches its job (the spec changed while it holds no
//!   quota) is updated to match, as Kueue updates an outdated Workload of a suspended
//!   job.
//!
//! Kueue is told that `JanusTrainingJob` is handled outside Kueue through its
//! configuration's `integrations.externalFrameworks`, so it neither garbage-collects
//! these Workloads nor gates the job's pods.
//!
//! The functions that read a Workload and write the job's status are pure; the few API
//! calls are at the bottom.

use std::collections::BTreeMap;

use janus_crds::training::{condition, JobPhase};
use janus_crds::{labels, JanusTrainingJob, JanusTrainingJobStatus};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Toleration};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Resource, ResourceExt};
use serde::Deserialize;
use serde_json::json;

use super::children;
use super::gang::Decision;
use crate::controller::apply::MANAGER;
use crate::controller::conditions::{set_condition, Cond, EventSpec, Transitions, When};
use crate::controller::pods::owned_by;
use crate::error::{is_status, Error, Result};

pub const GROUP: &str = "kueue.x-k8s.io";
/// The storage version of Kueue 0.15 and later (v1beta1 is still served but deprecated).
pub const VERSION: &str = "v1beta2";
/// The one pod set of a training job's Workload.
pub const POD_SET: &str = "workers";
/// The job's name in Kueue's `integrations.externalFrameworks` (`Kind.version.group`).
pub const EXTERNAL_FRAMEWORK: &str = "JanusTrainingJob.v1alpha1.janus.dev";
/// Label Kueue's integrations put on a Workload: the UID of the job it stands for.
const JOB_UID_LABEL: &str = "kueue.x-k8s.io/job-uid";
/// Label of a job naming its WorkloadPriorityClass (Kueue's `WorkloadPriorityClassName`).
pub const PRIORITY_CLASS_LABEL: &str = "kueue.x-k8s.io/priority-class";
/// Label Kueue puts on the pods of an admitted pod set: the pod set's name.
const POD_SET_LABEL: &str = "kueue.x-k8s.io/podset";
/// Annotation on the Workload: a fingerprint of what it was built from (the pod set and
/// the priority's source), so that a changed job is noticed without comparing a
/// template the API server may have defaulted.
const SPEC_HASH_ANNOTATION: &str = "janus.dev/workload-spec-hash";
/// The Workload condition Kueue's `waitForPodsReady` reads.
pub const PODS_READY: &str = "PodsReady";
/// Reasons of `PodsReady`, Kueue's words (`kueue.WorkloadStarted`, ...).
pub mod pods_ready {
    pub const STARTED: &str = "Started";
    pub const RECOVERED: &str = "Recovered";
    pub const WAIT_FOR_START: &str = "WaitForStart";
    pub const WAIT_FOR_RECOVERY: &str = "WaitForRecovery";
}

/// Condition type on the job: whether Kueue admitted its Workload.
pub const ADMITTED: &str = "Admitted";
/// Reasons of the `Admitted` condition (and of their Events).
pub mod reason {
    /// Created the job's Workload.
    pub const WORKLOAD_CREATED: &str = "WorkloadCreated";
    /// Kueue has not admitted the Workload yet; the message is Kueue's.
    pub const WAITING_FOR_ADMISSION: &str = "WaitingForAdmission";
    /// Kueue admitted the Workload: the gang starts.
    pub const ADMITTED: &str = "Admitted";
    /// Kueue evicted the Workload: the gang is deleted and waits to be admitted again.
    pub const EVICTED: &str = "Evicted";
    /// The Workload API is not installed (no Kueue in the cluster).
    pub const KUEUE_NOT_INSTALLED: &str = "KueueNotInstalled";
    /// The job changed while its Workload held no quota: the Workload is updated.
    pub const WORKLOAD_UPDATED: &str = "WorkloadUpdated";
}

pub fn workload_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "Workload"),
        "workloads",
    )
}

fn workload_priority_class_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "WorkloadPriorityClass"),
        "workloadpriorityclasses",
    )
}

fn resource_flavor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "ResourceFlavor"),
        "resourceflavors",
    )
}

/// The LocalQueue the job asks for, if any (an empty label means none, as in Kueue).
pub fn queue_name(job: &JanusTrainingJob) -> Option<&str> {
    job.labels()
        .get(labels::KUEUE_QUEUE_NAME)
        .map(String::as_str)
        .filter(|q| !q.is_empty())
}

/// `janustrainingjob-<job>`, as Kueue names the Workloads of its integrations
/// (`<kind>-<name>`).
pub fn workload_name(job: &str) -> String {
    format!("janustrainingjob-{job}")
}

/// Where the Workload's priority comes from, in `jobframework.ExtractPriority`'s
/// order: the job's WorkloadPriorityClass label, else the pod template's
/// `priorityClassName`, else the cluster's default PriorityClass.
#[derive(Debug, Clone, PartialEq)]
pub enum PrioritySource {
    WorkloadPriorityClass(String),
    PriorityClass(String),
    Default,
}

pub fn priority_source(job: &JanusTrainingJob) -> PrioritySource {
    if let Some(name) = job
        .labels()
        .get(PRIORITY_CLASS_LABEL)
        .filter(|n| !n.is_empty())
    {
        return PrioritySource::WorkloadPriorityClass(name.clone());
    }
    match children::worker_pod(job, 0, 0)
        .ok()
        .and_then(|p| p.spec?.priority_class_name)
        .filter(|n| !n.is_empty())
    {
        Some(name) => PrioritySource::PriorityClass(name),
        None => PrioritySource::Default,
    }
}

/// The Workload's `spec.priorityClassRef` (group, kind, name) and `spec.priority`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Priority {
    pub class: Option<(&'static str, &'static str, String)>,
    pub value: i32,
}

impl Priority {
    fn workload_class(name: &str, value: i32) -> Self {
        Self {
            class: Some((GROUP, "WorkloadPriorityClass", name.into())),
            value,
        }
    }

    fn pod_class(name: &str, value: i32) -> Self {
        Self {
            class: Some(("scheduling.k8s.io", "PriorityClass", name.into())),
            value,
        }
    }
}

/// The priority without a named class: the cluster's globalDefault PriorityClass (the
/// lowest, should there be several), else 0 (`priority.getDefaultPriority`).
pub fn default_priority(classes: &[PriorityClass]) -> Priority {
    classes
        .iter()
        .filter(|c| c.global_default == Some(true))
        .min_by_key(|c| c.value)
        .map(|c| Priority::pod_class(&c.name_any(), c.value))
        .unwrap_or_default()
}

/// A 64-bit FNV-1a of `bytes`: stable across builds (unlike std's hasher), so that an
/// operator upgrade does not make every Workload look outdated.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The fingerprint of what the job's Workload is built from.
pub fn spec_hash(job: &JanusTrainingJob) -> Result<String> {
    let pod_sets = pod_sets(job)?;
    let src = format!(
        "{pod_sets}|{:?}|{:?}",
        priority_source(job),
        queue_name(job)
    );
    Ok(format!("{:016x}", fnv1a(src.as_bytes())))
}

/// The Workload's `spec.podSets`: one pod set of `replicas` worker pods. The template is
/// the one rank-0 pod is created from, so Kueue counts exactly the resources the pods
/// request.
fn pod_sets(job: &JanusTrainingJob) -> Result<serde_json::Value> {
    let pod = children::worker_pod(job, 0, 0)?;
    // Only what scheduling reads: the pod's own identity (name, rank) is per pod.
    let mut template_labels = pod.metadata.labels.clone().unwrap_or_default();
    template_labels.retain(|k, _| k != labels::RANK && k != labels::ATTEMPT);
    Ok(json!([{
        "name": POD_SET,
        "count": job.spec.workers.replicas,
        "template": {
            "metadata": { "labels": template_labels },
            "spec": pod.spec,
        },
    }]))
}

/// The job's Workload with its priority (see [`pod_sets`]).
pub fn workload(job: &JanusTrainingJob, priority: &Priority) -> Result<DynamicObject> {
    let queue = queue_name(job).ok_or(Error::MissingField("metadata.labels[queue-name]"))?;
    let ar = workload_resource();
    let mut wl = DynamicObject::new(&workload_name(&job.name_any()), &ar);
    wl.metadata.namespace = job.namespace();
    let mut wl_labels = children::job_labels(&job.name_any());
    if let Some(uid) = &job.metadata.uid {
        wl_labels.insert(JOB_UID_LABEL.into(), uid.clone());
    }
    wl.metadata.labels = Some(wl_labels);
    wl.metadata.owner_references = Some(vec![job
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?]);
    wl.metadata.annotations = Some([(SPEC_HASH_ANNOTATION.to_string(), spec_hash(job)?)].into());
    let mut spec = json!({
        "queueName": queue,
        "podSets": pod_sets(job)?,
        "priority": priority.value,
    });
    if let Some((group, kind, name)) = &priority.class {
        spec["priorityClassRef"] = json!({"group": group, "kind": kind, "name": name});
    }
    wl.data = json!({ "spec": spec });
    Ok(wl)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub admission: Option<Admission>,
    #[serde(default)]
    pub admission_checks: Vec<AdmissionCheckState>,
}

/// An admission check's state on the Workload, with what it asks of the pods.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionCheckState {
    pub name: String,
    #[serde(default)]
    pub pod_set_updates: Vec<PodSetUpdate>,
}

/// What an admission check adds to the pods of a pod set (Kueue's `PodSetUpdate`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSetUpdate {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admission {
    pub cluster_queue: String,
    #[serde(default)]
    pub pod_set_assignments: Vec<PodSetAssignment>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSetAssignment {
    pub name: String,
    /// Resource name -> ResourceFlavor.
    #[serde(default)]
    pub flavors: BTreeMap<String, String>,
}

/// Where the job stands with Kueue.
#[derive(Debug, Clone, PartialEq)]
pub enum AdmissionState {
    /// Not admitted (yet): Kueue's reason, or ours.
    Waiting {
        reason: &'static str,
        message: String,
    },
    /// Admitted by `cluster_queue`, with these ResourceFlavors for the workers and the
    /// admission checks' updates of their pods (in the Workload's order).
    Admitted {
        cluster_queue: String,
        flavors: Vec<String>,
        updates: Vec<PodSetUpdate>,
    },
    /// Evicted by Kueue; `quota_reserved`: the reservation is not released yet (it is,
    /// once the gang is gone).
    Evicted {
        reason: String,
        message: String,
        quota_reserved: bool,
    },
    /// The Workload is marked Finished.
    Finished,
}

/// What the job's reconcile needs from Kueue.
#[derive(Debug, Clone, PartialEq)]
pub struct KueueFacts {
    pub workload: String,
    pub queue: String,
    pub state: AdmissionState,
    /// The Workload's `PodsReady` condition: (status, reason), when it has one.
    pub pods_ready: Option<(bool, String)>,
}

impl KueueFacts {
    /// May the gang run: admitted and not evicted.
    pub fn admitted(&self) -> bool {
        matches!(self.state, AdmissionState::Admitted { .. })
    }
}

fn is_true<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// The admission state from a Workload's status (Kueue's conditions: `QuotaReserved`,
/// `Admitted`, `Evicted`, `Finished`).
pub fn admission_state(status: &WorkloadStatus) -> AdmissionState {
    let conds = &status.conditions;
    if is_true(conds, "Finished").is_some() {
        return AdmissionState::Finished;
    }
    let reserved = is_true(conds, "QuotaReserved").is_some();
    if let Some(e) = is_true(conds, "Evicted") {
        return AdmissionState::Evicted {
            reason: e.reason.clone(),
            message: e.message.clone(),
            quota_reserved: reserved || status.admission.is_some(),
        };
    }
    if let (Some(_), Some(a)) = (is_true(conds, "Admitted"), &status.admission) {
        let mut flavors: Vec<String> = a
            .pod_set_assignments
            .iter()
            .filter(|p| p.name == POD_SET)
            .flat_map(|p| p.flavors.values().cloned())
            .collect();
        flavors.sort();
        flavors.dedup();
        let updates = status
            .admission_checks
            .iter()
            .flat_map(|c| {
                c.pod_set_updates
                    .iter()
                    .filter(|u| u.name == POD_SET)
                    .cloned()
            })
            .collect();
        return AdmissionState::Admitted {
            cluster_queue: a.cluster_queue.clone(),
            flavors,
            updates,
        };
    }
    // Kueue explains a pending Workload in its QuotaReserved condition ("couldn't assign
    // flavors to pod set workers: insufficient unused quota ..."), and an admitted-but-
    // checking one in Admitted.
    let message = conds
        .iter()
        .filter(|c| c.status == "False" && (c.type_ == "QuotaReserved" || c.type_ == "Admitted"))
        .map(|c| c.message.trim())
        .find(|m| !m.is_empty())
        .map(String::from)
        .unwrap_or_else(|| "the Workload is queued; Kueue has not considered it yet".into());
    AdmissionState::Waiting {
        reason: reason::WAITING_FOR_ADMISSION,
        message,
    }
}

/// The `Admitted` condition (and the Events of its transitions) after `facts`, and the
/// Suspended condition's words while Kueue, not the user, holds the job: the gang
/// decision suspends a job that is not admitted (see `gang::JobFacts::admitted`).
pub fn admission_status(
    job: &JanusTrainingJob,
    facts: &KueueFacts,
    s: &mut JanusTrainingJobStatus,
    events: &mut Vec<EventSpec>,
    now: Timestamp,
) {
    if s.phase.is_some_and(JobPhase::is_finished) {
        return;
    }
    let wl = format!(
        "Workload {}/{}",
        job.namespace().unwrap_or_default(),
        facts.workload
    );
    let (status, why, message, warning) = match &facts.state {
        AdmissionState::Admitted {
            cluster_queue,
            flavors,
            ..
        } => (
            true,
            reason::ADMITTED,
            format!(
                "{wl} admitted by ClusterQueue {cluster_queue}{}",
                if flavors.is_empty() {
                    String::new()
                } else {
                    format!(" (flavors {})", flavors.join(", "))
                }
            ),
            false,
        ),
        AdmissionState::Waiting { reason, message } => (
            false,
            *reason,
            format!(
                "{wl} waits for admission in LocalQueue {}: {message}",
                facts.queue
            ),
            *reason == reason::KUEUE_NOT_INSTALLED,
        ),
        AdmissionState::Evicted {
            reason: why, message, ..
        } => (
            false,
            reason::EVICTED,
            format!("{wl} was evicted by Kueue ({why}: {message}); the workers are deleted and the job waits to be admitted again"),
            true,
        ),
        AdmissionState::Finished => return,
    };
    let mut t = Transitions::new(&s.conditions, now);
    let admitted = Cond::new(ADMITTED, status, why, &message);
    t.announce(&mut s.conditions, admitted, When::OnReason, warning);
    events.extend(t.events);
    if !status && !job.spec.run_policy.suspend {
        // Held by Kueue: say so on Suspended too, instead of "suspended by the user".
        if let Some(c) = s
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition::SUSPENDED && c.status == "True")
        {
            c.reason = why.into();
            c.message = message;
        }
        events.retain(|e| e.reason != janus_crds::training::reason::JOB_SUSPENDED);
    }
}

/// What Kueue's integrations add to the pod template of an admitted pod set: the
/// ResourceFlavors' scheduling constraints (`podset.FromAssignment`), the pod set's
/// label, and the admission checks' `podSetUpdates` (`podset.FromUpdate`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

impl Placement {
    fn add_tolerations(&mut self, ts: impl IntoIterator<Item = Toleration>) {
        for t in ts {
            if !self.tolerations.contains(&t) {
                self.tolerations.push(t);
            }
        }
    }

    /// An admission check's update over the flavors' placement. A key set twice with
    /// different values is a conflict Kueue refuses to start a job with
    /// (`PodSetInfo.Merge`): an error, and the gang is not created.
    pub fn merge(&mut self, u: &PodSetUpdate) -> Result<()> {
        let conflict = |what: &str, k: &str| Error::Kueue {
            object: format!("pod set {POD_SET}"),
            message: format!(
                "an admission check's podSetUpdates sets {what} {k} against another value"
            ),
        };
        for (what, mine, theirs) in [
            ("label", &mut self.labels, &u.labels),
            ("annotation", &mut self.annotations, &u.annotations),
            ("nodeSelector", &mut self.node_selector, &u.node_selector),
        ] {
            for (k, v) in theirs {
                match mine.get(k) {
                    Some(old) if old != v => return Err(conflict(what, k)),
                    _ => {
                        mine.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        self.add_tolerations(u.tolerations.iter().cloned());
        Ok(())
    }
}

/// The placement from ResourceFlavor objects (their `spec.nodeLabels`, `spec.tolerations`).
pub fn placement(flavors: &[DynamicObject]) -> Result<Placement> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct FlavorSpec {
        #[serde(default)]
        node_labels: BTreeMap<String, String>,
        #[serde(default)]
        tolerations: Vec<Toleration>,
    }
    let mut p = Placement::default();
    for f in flavors {
        let spec: FlavorSpec = match f.data.get("spec") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::Kueue {
                object: format!("ResourceFlavor {}", f.name_any()),
                message: e.to_string(),
            })?,
            None => FlavorSpec::default(),
        };
        p.node_selector.extend(spec.node_labels);
        p.add_tolerations(spec.tolerations);
    }
    Ok(p)
}

/// Adds the admitted placement (labels, annotations, node selector, tolerations) to a
/// worker pod.
pub fn apply_placement(pod: &mut Pod, p: &Placement) {
    if !p.labels.is_empty() {
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .extend(p.labels.clone());
    }
    if !p.annotations.is_empty() {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .extend(p.annotations.clone());
    }
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    if !p.node_selector.is_empty() {
        spec.node_selector
            .get_or_insert_with(Default::default)
            .extend(p.node_selector.clone());
    }
    if !p.tolerations.is_empty() {
        let t = spec.tolerations.get_or_insert_with(Vec::new);
        for tol in &p.tolerations {
            if !t.contains(tol) {
                t.push(tol.clone());
            }
        }
    }
}

/// Whether the gang of the current attempt is started as Kueue's Job integration
/// counts it: at least `replicas` of its pods Ready or Succeeded (a deleted pod is
/// neither).
pub fn gang_ready(job: &JanusTrainingJob, pods: &[std::sync::Arc<Pod>]) -> bool {
    let uid = job.metadata.uid.as_deref();
    let attempt = job.status.as_ref().map_or(0, |s| s.restarts).to_string();
    let ready = pods
        .iter()
        .filter(|p| owned_by(p, uid) && p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.labels().get(labels::ATTEMPT) == Some(&attempt))
        .filter(|p| {
            let st = p.status.as_ref();
            st.and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                || st
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    ready >= usize::try_from(job.spec.workers.replicas).unwrap_or(usize::MAX)
}

/// The `PodsReady` condition Kueue's job reconciler would write
/// (`generatePodsReadyCondition`): (status, reason, message). `current`: the Workload's.
pub fn pods_ready_condition(
    state: &AdmissionState,
    current: Option<&(bool, String)>,
    gang_ready: bool,
) -> (bool, &'static str, &'static str) {
    use pods_ready::*;
    const NOT_READY: &str = "Not all pods are ready or succeeded";
    const RECOVERY: &str = "At least one pod has failed, waiting for recovery";
    const READY: &str = "All pods reached readiness and the workload is running";
    if !matches!(state, AdmissionState::Admitted { .. }) {
        return (false, WAIT_FOR_START, NOT_READY);
    }
    if gang_ready {
        let recovered = current.is_some_and(|(_, r)| r == WAIT_FOR_RECOVERY || r == RECOVERED);
        return (true, if recovered { RECOVERED } else { STARTED }, READY);
    }
    match current {
        Some((true, _)) => (false, WAIT_FOR_RECOVERY, RECOVERY),
        Some((false, r)) if r == WAIT_FOR_RECOVERY => (false, WAIT_FOR_RECOVERY, RECOVERY),
        _ => (false, WAIT_FOR_START, NOT_READY),
    }
}

/// Whether a Workload holds quota (then Kueue refuses changes to its spec).
fn quota_reserved(status: &WorkloadStatus) -> bool {
    is_true(&status.conditions, "QuotaReserved").is_some() || status.admission.is_some()
}

// ---- API calls ----

fn workloads(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &workload_resource())
}

/// Reads (creating it when missing) the Workload of a job with a queue name.
/// `None`: the job has no queue name.
pub async fn observe(client: &Client, job: &JanusTrainingJob) -> Result<Option<KueueFacts>> {
    let Some(queue) = queue_name(job) else {
        return Ok(None);
    };
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = workload_name(&job.name_any());
    let facts = |state: AdmissionState, pods_ready: Option<(bool, String)>| {
        Ok(Some(KueueFacts {
            workload: name.clone(),
            queue: queue.to_string(),
            state,
            pods_ready,
        }))
    };
    let api = workloads(client, &ns);
    let existing = match api.get_opt(&name).await {
        Ok(wl) => wl,
        // No such resource: Kueue is not installed.
        Err(e) if is_status(&e, 404) => return facts(not_installed(), None),
        Err(e) => return Err(e.into()),
    };
    let Some(wl) = existing else {
        if job.phase().is_finished() {
            return Ok(None);
        }
        if !apply_workload(client, &api, job).await? {
            return facts(not_installed(), None);
        }
        let state = AdmissionState::Waiting {
            reason: reason::WORKLOAD_CREATED,
            message: "created the Workload; Kueue has not considered it yet".into(),
        };
        return facts(state, None);
    };
    if !owned_by_job(&wl, job) {
        let state = AdmissionState::Waiting {
            reason: reason::WAITING_FOR_ADMISSION,
            message: format!(
                "a Workload named {name} exists but belongs to another object; delete it"
            ),
        };
        return facts(state, None);
    }
    let status = workload_status(&wl)?;
    let pods_ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == PODS_READY)
        .map(|c| (c.status == "True", c.reason.clone()));
    let outdated = !job.phase().is_finished()
        && !quota_reserved(&status)
        && wl.annotations().get(SPEC_HASH_ANNOTATION) != Some(&spec_hash(job)?);
    if outdated {
        // The job changed while it waits (more workers, other resources, another
        // priority): Kueue must queue what the pods will be.
        apply_workload(client, &api, job).await?;
        let state = AdmissionState::Waiting {
            reason: reason::WORKLOAD_UPDATED,
            message:
                "the job changed: updated its Workload to match; Kueue has not considered it yet"
                    .into(),
        };
        return facts(state, pods_ready);
    }
    facts(admission_state(&status), pods_ready)
}

/// Creates or updates (server-side apply) the job's Workload with its priority.
/// `false`: the Workload API is not installed.
async fn apply_workload(
    client: &Client,
    api: &Api<DynamicObject>,
    job: &JanusTrainingJob,
) -> Result<bool> {
    let priority = resolve_priority(client, &priority_source(job)).await?;
    let body = workload(job, &priority)?;
    let name = body.name_any();
    match api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn workload_status(wl: &DynamicObject) -> Result<WorkloadStatus> {
    Ok(wl
        .data
        .get("status")
        .map(|s| serde_json::from_value(s.clone()))
        .transpose()
        .map_err(|e| Error::Kueue {
            object: format!(
                "Workload {}/{}",
                wl.namespace().unwrap_or_default(),
                wl.name_any()
            ),
            message: format!("status: {e}"),
        })?
        .unwrap_or_default())
}

/// The priority `source` names, read from its class (`utilpriority`): a named class that
/// does not exist is an error, as in Kueue (the job waits until it is created).
pub async fn resolve_priority(client: &Client, source: &PrioritySource) -> Result<Priority> {
    let missing = |kind: &str, name: &str, e: kube::Error| match e {
        e if is_status(&e, 404) => Error::Kueue {
            object: format!("{kind} {name}"),
            message: "not found: the job's Workload takes its priority from it".into(),
        },
        e => e.into(),
    };
    match source {
        PrioritySource::WorkloadPriorityClass(name) => {
            let api: Api<DynamicObject> =
                Api::all_with(client.clone(), &workload_priority_class_resource());
            let wpc = api
                .get(name)
                .await
                .map_err(|e| missing("WorkloadPriorityClass", name, e))?;
            let value = wpc.data.get("value").and_then(|v| v.as_i64()).unwrap_or(0);
            Ok(Priority::workload_class(
                name,
                i32::try_from(value).unwrap_or(0),
            ))
        }
        PrioritySource::PriorityClass(name) => {
            let pc = Api::<PriorityClass>::all(client.clone())
                .get(name)
                .await
                .map_err(|e| missing("PriorityClass", name, e))?;
            Ok(Priority::pod_class(name, pc.value))
        }
        PrioritySource::Default => {
            let pcs = Api::<PriorityClass>::all(client.clone())
                .list(&Default::default())
                .await?;
            Ok(default_priority(&pcs.items))
        }
    }
}

fn not_installed() -> AdmissionState {
    AdmissionState::Waiting {
        reason: reason::KUEUE_NOT_INSTALLED,
        message: format!(
            "the job has the {} label but the {GROUP}/{VERSION} Workload API is not installed (is Kueue running?)",
            labels::KUEUE_QUEUE_NAME
        ),
    }
}

fn owned_by_job(wl: &DynamicObject, job: &JanusTrainingJob) -> bool {
    let Some(uid) = job.metadata.uid.as_deref() else {
        return false;
    };
    wl.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// The placement of an admitted job: its ResourceFlavors' node labels and tolerations,
/// the pod set's label, then its admission checks' updates.
pub async fn admitted_placement(client: &Client, facts: &KueueFacts) -> Result<Placement> {
    let AdmissionState::Admitted {
        flavors, updates, ..
    } = &facts.state
    else {
        return Ok(Placement::default());
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource_flavor_resource());
    let objs = futures::future::try_join_all(flavors.iter().map(|f| api.get(f))).await?;
    admitted(placement(&objs)?, updates)
}

/// The flavors' placement with the pod set's label and the admission checks' updates.
pub fn admitted(mut p: Placement, updates: &[PodSetUpdate]) -> Result<Placement> {
    p.labels.insert(POD_SET_LABEL.into(), POD_SET.into());
    for u in updates {
        p.merge(u)?;
    }
    Ok(p)
}

/// Marks the Workload Finished (Kueue then returns its quota), as Kueue's integrations
/// do when their job completes.
pub async fn finish(
    client: &Client,
    job: &JanusTrainingJob,
    facts: &KueueFacts,
    succeeded: bool,
    message: &str,
    now: Timestamp,
) -> Result<()> {
    if facts.state == AdmissionState::Finished {
        return Ok(());
    }
    let reason = if succeeded { "Succeeded" } else { "Failed" };
    update_status(client, job, &facts.workload, |conds, _| {
        set_condition(conds, "Finished", true, reason, message, now);
    })
    .await
}

/// After an eviction, once the gang is gone: release the quota reservation so that the
/// Workload requeues, as Kueue's job reconciler does for its own integrations once
/// their job is no longer active (`UnsetQuotaReservationWithCondition`, and `Requeued`
/// True only after a preemption or node failures: a deactivated Workload requeues when
/// reactivated, one evicted by `PodsReadyTimeout` when Kueue's backoff has passed).
pub async fn release_after_eviction(
    client: &Client,
    job: &JanusTrainingJob,
    facts: &KueueFacts,
    now: Timestamp,
) -> Result<()> {
    let AdmissionState::Evicted {
        reason: why,
        message,
        quota_reserved: true,
    } = &facts.state
    else {
        return Ok(());
    };
    update_status(client, job, &facts.workload, |conds, status| {
        status["admission"] = serde_json::Value::Null;
        let requeued = why == "Preempted" || why == "NodeFailures";
        set_condition(conds, "Requeued", requeued, why, message, now);
        set_condition(conds, "QuotaReserved", false, "Pending", message, now);
        if conds.iter().any(|c| c.type_ == PODS_READY) {
            let (_, why, words) = pods_ready_condition(&facts.state, None, false);
            set_condition(conds, PODS_READY, false, why, words, now);
        }
        if conds
            .iter()
            .any(|c| c.type_ == "Admitted" && c.status == "True")
        {
            set_condition(
                conds,
                "Admitted",
                false,
                "NoReservation",
                "The workload has no reservation",
                now,
            );
        }
    })
    .await
}

/// Read-modify-write of a Workload's status: `edit` changes its conditions (and other
/// status fields); the whole list is written back under the read's resourceVersion (a
/// concurrent write by Kueue is a conflict, retried by the next reconcile). Kueue owns
/// these conditions: a partial server-side apply would drop fields of the others.
async fn update_status(
    client: &Client,
    job: &JanusTrainingJob,
    name: &str,
    edit: impl FnOnce(&mut Vec<Condition>, &mut serde_json::Value),
) -> Result<()> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api = workloads(client, &ns);
    let wl = api.get(name).await?;
    let mut status = json!({});
    let mut conds: Vec<Condition> = match wl.data.get("status").and_then(|s| s.get("conditions")) {
        Some(c) => serde_json::from_value(c.clone()).map_err(|e| Error::Kueue {
            object: format!("Workload {ns}/{name}"),
            message: format!("status.conditions: {e}"),
        })?,
        None => vec![],
    };
    edit(&mut conds, &mut status);
    status["conditions"] = serde_json::to_value(&conds).map_err(|e| Error::Kueue {
        object: format!("Workload {ns}/{name}"),
        message: e.to_string(),
    })?;
    let patch = json!({
        "metadata": { "resourceVersion": wl.metadata.resource_version },
        "status": status,
    });
    // Its own field manager: the conditions it writes are told apart from Kueue's.
    api.patch_status(name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Whether the cluster serves the Workload API (then the controller watches Workloads).
pub async fn installed(client: &Client) -> bool {
    let ar = workload_resource();
    match client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == ar.plural),
        Err(_) => false,
    }
}

/// What Kueue learns from the job: a finished job's Workload is marked Finished (the
/// quota returns), an evicted one releases its reservation once no worker is left.
pub async fn after_decision(
    client: &Client,
    job: &JanusTrainingJob,
    admission: &KueueFacts,
    decision: &Decision,
    pods: &[std::sync::Arc<Pod>],
    now: Timestamp,
) -> Result<()> {
    let finished = match decision {
        Decision::Succeed { .. } => Some((true, "the job succeeded".to_string())),
        Decision::Fail { message, .. } => Some((false, message.clone())),
        Decision::Finished { .. } => Some((
            job.phase() == JobPhase::Succeeded,
            format!("the job {}", job.phase().as_str().to_lowercase()),
        )),
        _ => None,
    };
    if let Some((succeeded, message)) = finished {
        return finish(client, job, admission, succeeded, &message, now).await;
    }
    let uid = job.metadata.uid.as_deref();
    let gang_gone = !pods.iter().any(|p| owned_by(p, uid));
    if matches!(decision, Decision::Suspend { .. }) && gang_gone {
        return release_after_eviction(client, job, admission, now).await;
    }
    sync_pods_ready(client, job, admission, pods, now).await
}

/// Writes `PodsReady` when the gang's readiness changes what it says, as Kueue's job
/// reconciler does (an admitted Workload only: before, Kueue times nothing).
async fn sync_pods_ready(
    client: &Client,
    job: &JanusTrainingJob,
    admission: &KueueFacts,
    pods: &[std::sync::Arc<Pod>],
    now: Timestamp,
) -> Result<()> {
    if !matches!(admission.state, AdmissionState::Admitted { .. }) {
        return Ok(());
    }
    let current = admission.pods_ready.as_ref();
    let (ready, why, words) =
        pods_ready_condition(&admission.state, current, gang_ready(job, pods));
    if current.is_some_and(|(s, r)| *s == ready && r == why) {
        return Ok(());
    }
    tracing::debug!(job = %job.name_any(), ready, reason = why, "PodsReady on the Workload");
    update_status(client, job, &admission.workload, |conds, _| {
        set_condition(conds, PODS_READY, ready, why, words, now);
    })
    .await
}

/// Resolves once the cluster serves the Workload API (at once when it does): the
/// Workload watch starts then, without a restart, when Kueue is installed after the
/// operator.
pub async fn wait_installed(client: Client) {
    let mut said = false;
    while !installed(&client).await {
        if !said {
            tracing::info!("Kueue's Workload API is not installed: looking for it every 15 s");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(15)).await;
    }
    tracing::info!("Kueue's Workload API is installed: watching Workloads");
}

/// Without a Workload watch (Kueue not installed when the operator started), look again
/// soon while a job waits on Kueue.
pub fn requeue_instead(admission: &KueueFacts) -> Option<std::time::Duration> {
    match &admission.state {
        AdmissionState::Waiting {
            reason: reason::KUEUE_NOT_INSTALLED,
            ..
        } => Some(std::time::Duration::from_secs(30)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing;
    use crate::training::config_render::tests::representative_job;

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ),
            observed_generation: None,
        }
    }

    fn queued_job() -> JanusTrainingJob {
        let mut job = representative_job();
        job.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(labels::KUEUE_QUEUE_NAME.into(), "research".into());
        job.metadata.uid = Some("u-1".into());
        job
    }

    #[test]
    fn the_workload_has_one_pod_set_of_replicas_workers_with_their_resources() {
        let job = queued_job();
        let wl = workload(&job, &Priority::default()).unwrap();
        assert_eq!(
            wl.metadata.name.as_deref(),
            Some("janustrainingjob-janus-7b-sft")
        );
        let owner = &wl.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("JanusTrainingJob", Some(true))
        );
        assert_eq!(wl.data["spec"]["queueName"], "research");
        let ps = &wl.data["spec"]["podSets"][0];
        assert_eq!(ps["name"], POD_SET);
        assert_eq!(ps["count"], job.spec.workers.replicas);
        let c = &ps["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "8");
        assert!(ps["template"]["metadata"]["labels"]
            .get(labels::RANK)
            .is_none());
    }

    #[test]
    fn a_job_without_the_label_has_no_queue() {
        assert_eq!(queue_name(&representative_job()), None);
        assert_eq!(queue_name(&queued_job()), Some("research"));
    }

    #[test]
    fn pending_workloads_quote_kueue() {
        let st = WorkloadStatus {
            conditions: vec![cond(
                "QuotaReserved",
                "False",
                "Pending",
                "couldn't assign flavors to pod set workers: insufficient unused quota for cpu in flavor default, 4 more needed",
            )],
            admission: None,
            admission_checks: vec![],
        };
        match admission_state(&st) {
            AdmissionState::Waiting { reason, message } => {
                assert_eq!(reason, "WaitingForAdmission");
                assert!(message.contains("insufficient unused quota"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            admission_state(&WorkloadStatus::default()),
            AdmissionState::Waiting { .. }
        ));
    }

    #[test]
    fn admitted_workloads_name_queue_and_flavors() {
        let st: WorkloadStatus = serde_json::from_value(json!({
            "conditions": [cond("QuotaReserved", "True", "QuotaReserved", ""), cond("Admitted", "True", "Admitted", "")],
            "admission": {"clusterQueue": "cq", "podSetAssignments": [
                {"name": "workers", "flavors": {"cpu": "on-demand", "nvidia.com/gpu": "h100"}, "count": 4}
            ]}
        }))
        .unwrap();
        assert_eq!(
            admission_state(&st),
            AdmissionState::Admitted {
                cluster_queue: "cq".into(),
                flavors: vec!["h100".into(), "on-demand".into()],
                updates: vec![],
            }
        );
    }

    #[test]
    fn eviction_wins_over_admission_until_kueue_readmits() {
        let mut st: WorkloadStatus = serde_json::from_value(json!({
            "conditions": [cond("QuotaReserved", "True", "QuotaReserved", ""), cond("Admitted", "True", "Admitted", ""),
                           cond("Evicted", "True", "Preempted", "Preempted to accommodate a higher priority Workload")],
            "admission": {"clusterQueue": "cq", "podSetAssignments": []}
        }))
        .unwrap();
        match admission_state(&st) {
            AdmissionState::Evicted {
                reason,
                message,
                quota_reserved,
            } => {
                assert_eq!(reason, "Preempted");
                assert!(message.contains("higher priority"), "{message}");
                assert!(quota_reserved);
            }
            other => panic!("{other:?}"),
        }
        // Kueue resets Evicted when it reserves quota again.
        st.conditions[2].status = "False".into();
        assert!(matches!(
            admission_state(&st),
            AdmissionState::Admitted { .. }
        ));
        st.conditions
            .push(cond("Finished", "True", "Succeeded", ""));
        assert_eq!(admission_state(&st), AdmissionState::Finished);
    }

    #[test]
    fn waiting_is_a_condition_and_one_event_with_kueues_message_and_holds_the_suspended_reason() {
        let job = queued_job();
        let facts = KueueFacts {
            workload: "janustrainingjob-janus-7b-sft".into(),
            queue: "research".into(),
            state: AdmissionState::Waiting {
                reason: reason::WAITING_FOR_ADMISSION,
                message: "insufficient unused quota for cpu".into(),
            },
            pods_ready: None,
        };
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let mut s = JanusTrainingJobStatus {
            phase: Some(JobPhase::Suspended),
            ..Default::default()
        };
        set_condition(
            &mut s.conditions,
            condition::SUSPENDED,
            true,
            "JobSuspended",
            "x",
            now,
        );
        let mut events = vec![EventSpec {
            warning: false,
            reason: "JobSuspended",
            note: "x".into(),
        }];
        admission_status(&job, &facts, &mut s, &mut events, now);
        let c = s.conditions.iter().find(|c| c.type_ == ADMITTED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "WaitingForAdmission")
        );
        assert!(
            c.message
                .contains("LocalQueue research: insufficient unused quota"),
            "{}",
            c.message
        );
        let susp = testing::cond(&s.conditions, "Suspended");
        assert_eq!(susp.reason, "WaitingForAdmission");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "WaitingForAdmission");
        // The same state again: no second Event.
        let mut again = vec![];
        admission_status(&job, &facts, &mut s, &mut again, now);
        assert!(again.is_empty());
    }

    #[test]
    fn the_admitted_flavors_node_labels_and_tolerations_go_on_the_pods() {
        let ar = resource_flavor_resource();
        let mut f = DynamicObject::new("h100", &ar);
        f.data = json!({"spec": {"nodeLabels": {"gpu": "h100"}, "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}});
        let p = placement(&[f.clone(), f]).unwrap();
        assert_eq!(p.tolerations.len(), 1);
        let mut pod = children::worker_pod(&queued_job(), 0, 0).unwrap();
        apply_placement(&mut pod, &p);
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["gpu"], "h100");
        assert!(spec
            .tolerations
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu")));
    }

    fn admitted_state() -> AdmissionState {
        AdmissionState::Admitted {
            cluster_queue: "cq".into(),
            flavors: vec![],
            updates: vec![],
        }
    }

    fn ready_pod(
        job: &JanusTrainingJob,
        rank: i32,
        attempt: i32,
        ready: bool,
    ) -> std::sync::Arc<Pod> {
        let mut pod = children::worker_pod(job, rank, attempt).unwrap();
        pod.status = Some(
            serde_json::from_value(json!({
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }))
            .unwrap(),
        );
        std::sync::Arc::new(pod)
    }

    #[test]
    fn the_gang_is_ready_once_every_pod_of_the_attempt_is_ready() {
        let mut job = queued_job();
        job.spec.workers.replicas = 2;
        let (a, b) = (ready_pod(&job, 0, 0, true), ready_pod(&job, 1, 0, false));
        assert!(!gang_ready(&job, std::slice::from_ref(&a)), "one of two");
        assert!(!gang_ready(&job, &[a.clone(), b]), "one not Ready");
        let b = ready_pod(&job, 1, 0, true);
        assert!(gang_ready(&job, &[a.clone(), b.clone()]));
        // Pods of another attempt, or being deleted, are not the gang.
        job.status = Some(JanusTrainingJobStatus {
            restarts: 1,
            ..Default::default()
        });
        assert!(!gang_ready(&job, &[a.clone(), b]));
        let job0 = queued_job();
        let mut gone = (*ready_pod(&job0, 1, 0, true)).clone();
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        let mut job2 = job0.clone();
        job2.spec.workers.replicas = 2;
        assert!(!gang_ready(&job2, &[a, std::sync::Arc::new(gone)]));
    }

    #[test]
    fn pods_ready_follows_kueues_job_reconciler() {
        use pods_ready::*;
        let adm = admitted_state();
        let waiting = AdmissionState::Waiting {
            reason: reason::WAITING_FOR_ADMISSION,
            message: String::new(),
        };
        let r = |st: &AdmissionState, cur: Option<(bool, &str)>, ready| {
            let cur = cur.map(|(s, r)| (s, r.to_string()));
            let (s, why, _) = pods_ready_condition(st, cur.as_ref(), ready);
            (s, why)
        };
        assert_eq!(
            r(&waiting, Some((true, STARTED)), true),
            (false, WAIT_FOR_START)
        );
        assert_eq!(r(&adm, None, false), (false, WAIT_FOR_START));
        assert_eq!(r(&adm, None, true), (true, STARTED));
        assert_eq!(
            r(&adm, Some((false, WAIT_FOR_START)), true),
            (true, STARTED)
        );
        // A started gang that loses a pod waits for recovery, then has recovered.
        assert_eq!(
            r(&adm, Some((true, STARTED)), false),
            (false, WAIT_FOR_RECOVERY)
        );
        assert_eq!(
            r(&adm, Some((false, WAIT_FOR_RECOVERY)), false),
            (false, WAIT_FOR_RECOVERY)
        );
        assert_eq!(
            r(&adm, Some((false, WAIT_FOR_RECOVERY)), true),
            (true, RECOVERED)
        );
        assert_eq!(r(&adm, Some((true, RECOVERED)), true), (true, RECOVERED));
    }

    #[test]
    fn priority_comes_from_the_workload_priority_class_label_then_the_pods_class() {
        let mut job = queued_job();
        assert_eq!(priority_source(&job), PrioritySource::Default);
        job.spec.workers.priority_class_name = Some("pod-high".into());
        assert_eq!(
            priority_source(&job),
            PrioritySource::PriorityClass("pod-high".into())
        );
        job.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(PRIORITY_CLASS_LABEL.into(), "wl-high".into());
        assert_eq!(
            priority_source(&job),
            PrioritySource::WorkloadPriorityClass("wl-high".into())
        );
        let wl = workload(&job, &Priority::workload_class("wl-high", 1000)).unwrap();
        assert_eq!(wl.data["spec"]["priority"], 1000);
        assert_eq!(
            wl.data["spec"]["priorityClassRef"],
            json!({"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "wl-high"})
        );
        // No class: no reference, priority 0 (Kueue's DefaultPriority).
        let wl = workload(&queued_job(), &Priority::default()).unwrap();
        assert_eq!(wl.data["spec"]["priority"], 0);
        assert!(wl.data["spec"].get("priorityClassRef").is_none());
    }

    #[test]
    fn the_default_priority_is_the_lowest_global_default_class() {
        let pc = |name: &str, value: i32, default: bool| PriorityClass {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            value,
            global_default: Some(default),
            ..Default::default()
        };
        assert_eq!(default_priority(&[pc("a", 5, false)]), Priority::default());
        assert_eq!(
            default_priority(&[pc("a", 5, false), pc("b", 300, true), pc("c", 200, true)]),
            Priority::pod_class("c", 200)
        );
    }

    #[test]
    fn the_spec_hash_changes_with_the_pods_and_the_priority_only() {
        let job = queued_job();
        let h = spec_hash(&job).unwrap();
        assert_eq!(h, spec_hash(&job.clone()).unwrap());
        let wl = workload(&job, &Priority::default()).unwrap();
        assert_eq!(wl.annotations()[SPEC_HASH_ANNOTATION], h);
        let mut more = job.clone();
        more.spec.workers.replicas += 1;
        assert_ne!(spec_hash(&more).unwrap(), h);
        let mut other = job.clone();
        other
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(PRIORITY_CLASS_LABEL.into(), "high".into());
        assert_ne!(spec_hash(&other).unwrap(), h);
        let mut status_only = job.clone();
        status_only.status = Some(JanusTrainingJobStatus {
            restarts: 3,
            ..Default::default()
        });
        assert_eq!(spec_hash(&status_only).unwrap(), h);
    }

    #[test]
    fn admission_check_pod_set_updates_go_on_the_pods_after_the_flavors() {
        let st: WorkloadStatus = serde_json::from_value(json!({
            "conditions": [cond("QuotaReserved", "True", "QuotaReserved", ""), cond("Admitted", "True", "Admitted", "")],
            "admission": {"clusterQueue": "cq", "podSetAssignments": [{"name": "workers", "flavors": {"cpu": "f"}}]},
            "admissionChecks": [{
                "name": "prov", "state": "Ready", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
                "podSetUpdates": [
                    {"name": "other", "labels": {"not": "ours"}},
                    {"name": "workers", "labels": {"prov": "yes"}, "annotations": {"a": "b"},
                     "nodeSelector": {"pool": "reserved"},
                     "tolerations": [{"key": "reserved", "operator": "Exists", "effect": "NoSchedule"}]}
                ]
            }]
        }))
        .unwrap();
        let AdmissionState::Admitted { updates, .. } = admission_state(&st) else {
            panic!("admitted");
        };
        assert_eq!(updates.len(), 1);
        let flavors = Placement {
            node_selector: [("type".to_string(), "kwok".to_string())].into(),
            ..Default::default()
        };
        let p = admitted(flavors.clone(), &updates).unwrap();
        let mut pod = children::worker_pod(&queued_job(), 0, 0).unwrap();
        apply_placement(&mut pod, &p);
        assert_eq!(pod.labels()["prov"], "yes");
        assert_eq!(pod.labels()[POD_SET_LABEL], POD_SET);
        assert!(pod.labels().get("not").is_none());
        assert_eq!(pod.annotations()["a"], "b");
        let spec = pod.spec.unwrap();
        let sel = spec.node_selector.unwrap();
        assert_eq!(
            (sel["type"].as_str(), sel["pool"].as_str()),
            ("kwok", "reserved")
        );
        assert!(spec
            .tolerations
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("reserved")));
        // Another value for a key the flavors set: refused, as Kueue refuses it.
        let clash = PodSetUpdate {
            name: POD_SET.into(),
            node_selector: [("type".to_string(), "real".to_string())].into(),
            ..Default::default()
        };
        assert!(admitted(flavors, &[clash]).is_err());
    }
}
