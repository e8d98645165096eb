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
//! - a finished job marks its Workload `Finished`, which returns the quota.
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
}

pub fn workload_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "Workload"),
        "workloads",
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

/// The job's Workload: one pod set of `replicas` worker pods. The template is the one
/// rank-0 pod is created from, so Kueue counts exactly the resources the pods request.
pub fn workload(job: &JanusTrainingJob) -> Result<DynamicObject> {
    let queue = queue_name(job).ok_or(Error::MissingField("metadata.labels[queue-name]"))?;
    let pod = children::worker_pod(job, 0, 0)?;
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
    // Only what scheduling reads: the pod's own identity (name, rank) is per pod.
    let mut template_labels = pod.metadata.labels.clone().unwrap_or_default();
    template_labels.retain(|k, _| k != labels::RANK && k != labels::ATTEMPT);
    wl.data = json!({
        "spec": {
            "queueName": queue,
            "podSets": [{
                "name": POD_SET,
                "count": job.spec.workers.replicas,
                "template": {
                    "metadata": { "labels": template_labels },
                    "spec": pod.spec,
                },
            }],
        }
    });
    Ok(wl)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub admission: Option<Admission>,
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
    /// Admitted by `cluster_queue`, with these ResourceFlavors for the workers.
    Admitted {
        cluster_queue: String,
        flavors: Vec<String>,
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
        return AdmissionState::Admitted {
            cluster_queue: a.cluster_queue.clone(),
            flavors,
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

/// ResourceFlavor scheduling constraints: what Kueue's integrations add to the pod
/// template of an admitted pod set (`podset.FromAssignment`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
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
        for t in spec.tolerations {
            if !p.tolerations.contains(&t) {
                p.tolerations.push(t);
            }
        }
    }
    Ok(p)
}

/// Adds the admitted flavors' node selector and tolerations to a worker pod.
pub fn apply_placement(pod: &mut Pod, p: &Placement) {
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
    let facts = |state: AdmissionState| {
        Ok(Some(KueueFacts {
            workload: name.clone(),
            queue: queue.to_string(),
            state,
        }))
    };
    let api = workloads(client, &ns);
    let existing = match api.get_opt(&name).await {
        Ok(wl) => wl,
        // No such resource: Kueue is not installed.
        Err(e) if is_status(&e, 404) => return facts(not_installed()),
        Err(e) => return Err(e.into()),
    };
    let Some(wl) = existing else {
        if job.phase().is_finished() {
            return Ok(None);
        }
        let body = workload(job)?;
        match api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return facts(not_installed()),
            Err(e) => return Err(e.into()),
        }
        return facts(AdmissionState::Waiting {
            reason: reason::WORKLOAD_CREATED,
            message: "created the Workload; Kueue has not considered it yet".into(),
        });
    };
    if !owned_by_job(&wl, job) {
        return facts(AdmissionState::Waiting {
            reason: reason::WAITING_FOR_ADMISSION,
            message: format!(
                "a Workload named {name} exists but belongs to another object; delete it"
            ),
        });
    }
    let status: WorkloadStatus = wl
        .data
        .get("status")
        .map(|s| serde_json::from_value(s.clone()))
        .transpose()
        .map_err(|e| Error::Kueue {
            object: format!("Workload {ns}/{name}"),
            message: format!("status: {e}"),
        })?
        .unwrap_or_default();
    facts(admission_state(&status))
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

/// The ResourceFlavors' node labels and tolerations of an admitted job.
pub async fn admitted_placement(client: &Client, facts: &KueueFacts) -> Result<Placement> {
    let AdmissionState::Admitted { flavors, .. } = &facts.state else {
        return Ok(Placement::default());
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource_flavor_resource());
    let objs = futures::future::try_join_all(flavors.iter().map(|f| api.get(f))).await?;
    placement(&objs)
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
/// True only after a preemption: a deactivated Workload requeues when reactivated).
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
        set_condition(conds, "Requeued", why == "Preempted", why, message, now);
        set_condition(conds, "QuotaReserved", false, "Pending", message, now);
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
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
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
        release_after_eviction(client, job, admission, now).await?;
    }
    Ok(())
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
        let wl = workload(&job).unwrap();
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
}
