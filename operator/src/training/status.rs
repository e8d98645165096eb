//! From a decision to the job's next status (and the Events of its transitions), plus
//! the extraction of the decision's inputs from Kubernetes objects.

use janus_crds::training::{condition, reason, JobPhase, JobProgress, WorkerCounts};
use janus_crds::{defaults, labels, JanusTrainingJob, JanusTrainingJobStatus, Progress};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::gang::{Decision, JobFacts, NodeDown, PodFacts, PodPhase};

pub fn job_facts(job: &JanusTrainingJob) -> JobFacts {
    let s = job.status.clone().unwrap_or_default();
    let rp = &job.spec.run_policy;
    JobFacts {
        replicas: job.spec.workers.replicas,
        backoff_limit: rp.backoff_limit,
        active_deadline_seconds: rp.active_deadline_seconds,
        scheduling_timeout_seconds: rp.scheduling_timeout_seconds,
        unreachable_node_toleration_seconds: rp.unreachable_node_toleration_seconds,
        failure_rules: rp
            .failure_policy
            .as_ref()
            .map(|f| f.rules.clone())
            .unwrap_or_default(),
        ttl_seconds_after_finished: rp.ttl_seconds_after_finished,
        suspend: rp.suspend,
        // The controller sets it from the job's Workload (`kueue::KueueFacts`).
        admitted: true,
        clean_pod_policy: rp.clean_pod_policy,
        phase: s.phase.unwrap_or_default(),
        restarts: s.restarts,
        counted_restarts: s.restarts_counted_towards_backoff,
        start_time: s.start_time.map(|t| t.0),
        completion_time: s.completion_time.map(|t| t.0),
    }
}

/// What the decisions know of a worker's node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeState {
    /// No such node (any more).
    Missing,
    Ready,
    /// NotReady or unreachable since then, for this reason.
    Down(Timestamp, String),
}

/// Taints the node lifecycle controller puts on a node whose kubelet does not report
/// Ready (and the taint-based eviction reads).
const DOWN_TAINTS: [&str; 2] = [
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/not-ready",
];

/// Whether `node` is Ready, or since when it is not and why: its `Ready` condition not
/// `True` (kubelet reporting NotReady, or `Unknown`: no kubelet reports at all), or a
/// not-ready / unreachable taint; the earliest of those times.
pub fn node_state(node: &Node) -> NodeState {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let mut down: Vec<(Timestamp, String)> = vec![];
    if let Some(c) = ready.filter(|c| c.status != "True") {
        let why = format!(
            "Ready={} ({}: {})",
            c.status,
            c.reason.as_deref().unwrap_or(""),
            c.message.as_deref().unwrap_or("")
        );
        let since = c
            .last_transition_time
            .as_ref()
            .or(c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        // Without a time it cannot say how long (down since 1970 would force-delete at
        // once); the taints, which carry one, still count.
        if let Some(since) = since {
            down.push((since, why));
        }
    }
    for t in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        if DOWN_TAINTS.contains(&t.key.as_str()) {
            if let Some(at) = t.time_added.as_ref() {
                down.push((at.0, format!("taint {}:{}", t.key, t.effect)));
            }
        }
    }
    // The Ready condition's words when there is one (they say the most).
    let why = down.first().map(|(_, w)| w.clone());
    match (down.iter().map(|(t, _)| *t).min(), why) {
        (Some(since), Some(why)) => NodeState::Down(since, why),
        _ => NodeState::Ready,
    }
}

/// `node(name)`: the state of the pod's node.
/// `job_uid`: the UID of the job the pod is looked at for; a pod whose controller owner
/// reference names another UID is foreign.
pub fn pod_facts(pod: &Pod, job_uid: Option<&str>, node: impl Fn(&str) -> NodeState) -> PodFacts {
    let label = |k: &str| pod.labels().get(k).and_then(|v| v.parse::<i32>().ok());
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Pending,
    };
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == defaults::CONTAINER_NAME))
        .and_then(|c| c.state.as_ref())
        .and_then(|st| st.terminated.as_ref());
    let exit_code = terminated.map(|t| t.exit_code);
    let waiting = (phase == PodPhase::Pending)
        .then(|| waiting_reason(pod))
        .flatten();
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let node_state = node_name.map(&node);
    PodFacts {
        name: pod.name_any(),
        rank: label(labels::RANK),
        attempt: label(labels::ATTEMPT),
        phase,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        exit_code,
        message: terminated.and_then(|t| t.message.clone()),
        finished_at: terminated.and_then(|t| t.finished_at.as_ref()).map(|t| t.0),
        reason: status.and_then(|s| s.reason.clone()),
        created_at: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        waiting,
        disrupted: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
            })
            .map(|c| {
                (
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            }),
        node_lost: node_state == Some(NodeState::Missing),
        node_down: match (node_name, node_state) {
            (Some(n), Some(NodeState::Down(since, why))) => Some(NodeDown {
                node: n.to_string(),
                since,
                why,
            }),
            _ => None,
        },
        foreign: !owned_by(pod, job_uid),
    }
}

/// Why a pending pod does not start, in the words of the component that knows: the
/// scheduler's Unschedulable message, or the kubelet's waiting reason of the trainer
/// container (image pulls, a missing Secret or key).
pub fn waiting_reason(pod: &Pod) -> Option<(&'static str, String)> {
    let status = pod.status.as_ref()?;
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == defaults::CONTAINER_NAME))
        .and_then(|c| c.state.as_ref())
        .and_then(|st| st.waiting.as_ref())
        .and_then(|w| {
            let r = reason::CONTAINER_WAITING
                .iter()
                .find(|r| w.reason.as_deref() == Some(**r))?;
            Some((*r, w.message.clone().unwrap_or_default()))
        });
    container.or_else(|| {
        let c = status
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        (c.reason.as_deref() == Some("Unschedulable")).then(|| {
            (
                reason::WORKERS_PENDING,
                format!(
                    "cannot be scheduled: {}",
                    c.message.clone().unwrap_or_default()
                ),
            )
        })
    })
}

/// Whether `pod`'s controller owner reference is the object with UID `uid`.
pub fn owned_by(pod: &Pod, uid: Option<&str>) -> bool {
    let Some(uid) = uid else {
        return false;
    };
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// An Event to publish: (warning?, reason, note).
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// Set condition `type_` (keeping `lastTransitionTime` when its status is unchanged).
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message.into();
        }
        None => conds.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: None,
        }),
    }
}

/// Set `type_` to False only where it exists (conditions that never happened stay absent).
fn clear_condition(
    conds: &mut [Condition],
    type_: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != "False" {
            c.status = "False".into();
            c.last_transition_time = Time(now);
            c.reason = reason.into();
            c.message = message.into();
        }
    }
}

pub(crate) fn has_condition(conds: &[Condition], type_: &str, status: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == status)
}

/// Resume bookkeeping, once, whatever the decision: the phase stays Suspended until the
/// pods of the earlier run are gone (see `gang::decide`), so the Suspended condition
/// tells whether this already happened. `activeDeadlineSeconds` counts from the
/// resume, as in Kubeflow.
fn resume(s: &mut JanusTrainingJobStatus, events: &mut Vec<EventSpec>, now: Timestamp) {
    set_condition(
        &mut s.conditions,
        condition::SUSPENDED,
        false,
        reason::JOB_RESUMED,
        "the job resumed from its latest checkpoint",
        now,
    );
    s.start_time = Some(Time(now));
    events.push(EventSpec {
        warning: false,
        reason: reason::JOB_RESUMED,
        note: "resuming from the latest checkpoint".into(),
    });
}

/// The status after `decision`, and the Events of the transitions it makes.
pub fn next_status(
    job: &JanusTrainingJob,
    decision: &Decision,
    pods: &[PodFacts],
    rank0_progress: Option<Progress>,
    now: Timestamp,
) -> (JanusTrainingJobStatus, Vec<EventSpec>) {
    let old = job.status.clone().unwrap_or_default();
    let mut s = old.clone();
    let mut events = vec![];
    let name = job.name_any();
    let replicas = job.spec.workers.replicas;
    s.observed_generation = job.metadata.generation;

    if old.phase.is_none() {
        set_condition(
            &mut s.conditions,
            condition::CREATED,
            true,
            reason::JOB_CREATED,
            &format!("created the gang of {replicas} workers of {name}"),
            now,
        );
        events.push(EventSpec {
            warning: false,
            reason: reason::JOB_CREATED,
            note: format!("creating {replicas} workers"),
        });
        s.phase = Some(JobPhase::Pending);
        if !job.spec.run_policy.suspend {
            s.start_time = Some(Time(now));
        }
    }
    let old_phase = s.phase.unwrap_or_default();

    let finish = |s: &mut JanusTrainingJobStatus,
                  phase: JobPhase,
                  cond: &str,
                  why: &'static str,
                  msg: &str,
                  warning: bool,
                  events: &mut Vec<EventSpec>| {
        s.phase = Some(phase);
        set_condition(&mut s.conditions, cond, true, why, msg, now);
        clear_condition(&mut s.conditions, condition::RUNNING, why, msg, now);
        clear_condition(&mut s.conditions, condition::RESTARTING, why, msg, now);
        s.completion_time = Some(Time(now));
        events.push(EventSpec {
            warning,
            reason: why,
            note: msg.to_string(),
        });
    };

    let was_suspended = has_condition(&old.conditions, condition::SUSPENDED, "True");
    let resumed = has_condition(&old.conditions, condition::SUSPENDED, "False");
    // Not on a Suspend decision: a job Kueue holds is suspended without `suspend`.
    if old_phase == JobPhase::Suspended
        && !job.spec.run_policy.suspend
        && !matches!(decision, Decision::Suspend { .. })
        && !resumed
    {
        resume(&mut s, &mut events, now);
    }

    match decision {
        Decision::Progress { phase, .. } => {
            s.phase = Some(*phase);
            if *phase == JobPhase::Running {
                let msg = format!("all {replicas} workers are running");
                set_condition(
                    &mut s.conditions,
                    condition::RUNNING,
                    true,
                    reason::ALL_WORKERS_RUNNING,
                    &msg,
                    now,
                );
                clear_condition(
                    &mut s.conditions,
                    condition::RESTARTING,
                    reason::ALL_WORKERS_RUNNING,
                    &msg,
                    now,
                );
                if old_phase != JobPhase::Running {
                    events.push(EventSpec {
                        warning: false,
                        reason: reason::ALL_WORKERS_RUNNING,
                        note: msg,
                    });
                }
            }
        }
        Decision::Restart {
            reason: why,
            message,
            counted,
            ..
        } => {
            s.restarts = old.restarts + 1;
            s.restarts_counted_towards_backoff =
                old.restarts_counted_towards_backoff + i32::from(*counted);
            s.phase = Some(JobPhase::Restarting);
            let msg = format!("{message}; restarting all workers (attempt {})", s.restarts);
            set_condition(
                &mut s.conditions,
                condition::RESTARTING,
                true,
                why,
                &msg,
                now,
            );
            clear_condition(&mut s.conditions, condition::RUNNING, why, &msg, now);
            events.push(EventSpec {
                warning: true,
                reason: why,
                note: msg,
            });
        }
        Decision::Fail {
            reason: why,
            message,
            ..
        } => {
            finish(
                &mut s,
                JobPhase::Failed,
                condition::FAILED,
                why,
                message,
                true,
                &mut events,
            );
        }
        Decision::Succeed { .. } => {
            let msg = format!("all {replicas} workers exited 0");
            finish(
                &mut s,
                JobPhase::Succeeded,
                condition::SUCCEEDED,
                reason::ALL_WORKERS_SUCCEEDED,
                &msg,
                false,
                &mut events,
            );
        }
        Decision::Suspend { .. } => {
            s.phase = Some(JobPhase::Suspended);
            let msg = "suspended: workers deleted, the checkpoint is kept";
            set_condition(
                &mut s.conditions,
                condition::SUSPENDED,
                true,
                reason::JOB_SUSPENDED,
                msg,
                now,
            );
            clear_condition(
                &mut s.conditions,
                condition::RUNNING,
                reason::JOB_SUSPENDED,
                msg,
                now,
            );
            if !was_suspended {
                events.push(EventSpec {
                    warning: false,
                    reason: reason::JOB_SUSPENDED,
                    note: msg.into(),
                });
            }
        }
        Decision::Finished { .. } => {}
    }

    if let Decision::Progress {
        phase: JobPhase::Pending,
        ..
    } = decision
    {
        stuck(&mut s, &old, pods, &mut events, now);
    }

    // Worker counts of the attempt the status now describes.
    let attempt = s.restarts;
    let mut c = WorkerCounts {
        desired: replicas,
        ..Default::default()
    };
    if !matches!(s.phase, Some(JobPhase::Suspended)) {
        for p in pods
            .iter()
            .filter(|p| p.attempt == Some(attempt) && !p.terminating)
        {
            match p.phase {
                PodPhase::Pending => c.pending += 1,
                PodPhase::Running => c.running += 1,
                PodPhase::Succeeded => c.succeeded += 1,
                PodPhase::Failed => c.failed += 1,
            }
        }
    }
    if !matches!(decision, Decision::Finished { .. }) {
        s.workers = Some(c);
    }

    if let Some(p) = rank0_progress {
        let eta = eta_seconds(old.progress.as_ref(), &p)
            .or(old.progress.as_ref().and_then(|o| o.eta_seconds));
        if p.last_checkpoint.is_some() {
            s.last_checkpoint = p.last_checkpoint.clone();
        }
        s.progress = Some(JobProgress {
            step: p.step,
            total_steps: p.total_steps,
            loss: p.loss.filter(|l| l.is_finite()),
            tokens_per_second: p.tokens_per_second.filter(|t| t.is_finite()),
            eta_seconds: if p.step >= p.total_steps {
                Some(0)
            } else {
                eta
            },
            updated_at: Some(p.updated_at),
        });
    }
    (s, events)
}

/// A pending gang with a worker that cannot start: Running=False with the reason and
/// the underlying message, and a Warning Event when either changes.
fn stuck(
    s: &mut JanusTrainingJobStatus,
    old: &JanusTrainingJobStatus,
    pods: &[PodFacts],
    events: &mut Vec<EventSpec>,
    now: Timestamp,
) {
    let Some((why, msg)) = pods
        .iter()
        .filter(|p| p.attempt == Some(s.restarts) && !p.terminating)
        .find_map(|p| {
            let (r, m) = p.waiting.as_ref()?;
            Some((*r, format!("worker {} {}", p.name, waiting_text(r, m))))
        })
    else {
        // No longer stuck, not yet running: the old words would mislead.
        if let Some(c) = s
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition::RUNNING && c.status == "False")
        {
            // A refused create holds until a pod of this attempt exists.
            let created = pods.iter().any(|p| p.attempt == Some(s.restarts));
            if c.reason == reason::WORKERS_PENDING
                || reason::CONTAINER_WAITING.contains(&c.reason.as_str())
                || ([reason::FAILED_CREATE, reason::POD_GROUP_NOT_INSTALLED]
                    .contains(&c.reason.as_str())
                    && created)
            {
                c.reason = reason::WORKERS_PENDING.into();
                c.message = "waiting for the workers to start".into();
            }
        }
        return;
    };
    let same = old
        .conditions
        .iter()
        .any(|c| c.type_ == condition::RUNNING && c.reason == why && c.message == msg);
    set_condition(&mut s.conditions, condition::RUNNING, false, why, &msg, now);
    if !same {
        events.push(EventSpec {
            warning: true,
            reason: why,
            note: msg,
        });
    }
}

fn waiting_text(reason: &str, message: &str) -> String {
    if reason == reason::WORKERS_PENDING {
        message.to_string()
    } else {
        format!("cannot start ({reason}): {message}")
    }
}

/// Seconds to the last step at the step rate between the previous report and this one.
fn eta_seconds(prev: Option<&JobProgress>, now: &Progress) -> Option<u64> {
    let prev = prev?;
    let t0: Timestamp = prev.updated_at.as_deref()?.parse().ok()?;
    let t1: Timestamp = now.updated_at.parse().ok()?;
    let dt = t1.duration_since(t0).as_secs_f64();
    if now.step <= prev.step || dt <= 0.0 {
        return None;
    }
    let rate = (now.step - prev.step) as f64 / dt;
    Some((now.total_steps.saturating_sub(now.step) as f64 / rate).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::config_render::tests::representative_job;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn progress(step: u64, at: &str) -> Progress {
        Progress {
            step,
            total_steps: 1000,
            loss: Some(1.5),
            tokens_per_second: Some(1e4),
            last_checkpoint: Some(format!("s3://c/j/step-{step}")),
            updated_at: at.into(),
        }
    }

    fn pending_pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j-worker-1", "labels": {"janus.dev/rank": "1", "janus.dev/attempt": "0"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn the_kubelets_and_the_schedulers_words_say_why_a_worker_waits() {
        for r in [
            "ErrImagePull",
            "ImagePullBackOff",
            "CreateContainerConfigError",
        ] {
            let p = pending_pod(
                serde_json::json!({"phase": "Pending", "containerStatuses": [
                {"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": r, "message": "secret \"s3\" not found"}}}]}),
            );
            let f = pod_facts(&p, None, |_| NodeState::Ready);
            assert_eq!(
                f.waiting,
                Some((r_static(r), "secret \"s3\" not found".into()))
            );
        }
        let p = pending_pod(serde_json::json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}));
        let (r, m) = waiting_reason(&p).unwrap();
        assert_eq!(r, "WorkersPending");
        assert!(m.contains("Insufficient nvidia.com/gpu"), "{m}");
        // ContainerCreating is normal progress, not a stuck state.
        let p = pending_pod(
            serde_json::json!({"phase": "Pending", "containerStatuses": [
            {"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        assert_eq!(waiting_reason(&p), None);
    }

    fn r_static(r: &str) -> &'static str {
        reason::CONTAINER_WAITING.iter().find(|x| **x == r).unwrap()
    }

    #[test]
    fn a_stuck_pending_gang_is_running_false_with_the_reason_and_one_warning() {
        let job = representative_job();
        let d = Decision::Progress {
            phase: JobPhase::Pending,
            delete: vec![],
            create: vec![],
            requeue_after: None,
        };
        let p = pending_pod(
            serde_json::json!({"phase": "Pending", "containerStatuses": [
            {"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}),
        );
        let pf = vec![pod_facts(&p, None, |_| NodeState::Ready)];
        let (s, ev) = next_status(&job, &d, &pf, None, now());
        let c = s.conditions.iter().find(|c| c.type_ == "Running").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ImagePullBackOff")
        );
        assert!(c.message.contains("j-worker-1") && c.message.contains("Back-off pulling image"));
        let w: Vec<_> = ev.iter().filter(|e| e.warning).collect();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].reason, "ImagePullBackOff");
        // The same state again: no second Event.
        let mut job2 = job.clone();
        job2.status = Some(s);
        let (_, ev) = next_status(&job2, &d, &pf, None, now());
        assert!(ev.iter().all(|e| !e.warning), "{ev:?}");
    }

    #[test]
    fn a_refused_create_holds_until_a_pod_of_the_attempt_exists() {
        let mut job = representative_job();
        let d = Decision::Progress {
            phase: JobPhase::Pending,
            delete: vec![],
            create: vec![0, 1],
            requeue_after: None,
        };
        let (mut s, _) = next_status(&job, &d, &[], None, now());
        let refused = "creating worker pod j-worker-0 was refused: violates PodSecurity";
        set_condition(
            &mut s.conditions,
            condition::RUNNING,
            false,
            reason::FAILED_CREATE,
            refused,
            now(),
        );
        job.status = Some(s);
        // Retried: the refusal's words stay (no new Event from a reset and repeat).
        let (s, _) = next_status(&job, &d, &[], None, now());
        let c = s.conditions.iter().find(|c| c.type_ == "Running").unwrap();
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            ("FailedCreate", refused)
        );
        // A pod of the attempt exists: the refusal is over.
        let p = pending_pod(serde_json::json!({"phase": "Pending"}));
        let pf = vec![pod_facts(&p, None, |_| NodeState::Ready)];
        let (s, _) = next_status(&job, &d, &pf, None, now());
        let c = s.conditions.iter().find(|c| c.type_ == "Running").unwrap();
        assert_eq!(c.reason, "WorkersPending");
    }

    #[test]
    fn first_status_is_created_and_pending() {
        let job = representative_job();
        let d = Decision::Progress {
            phase: JobPhase::Pending,
            delete: vec![],
            create: vec![0, 1, 2, 3],
            requeue_after: None,
        };
        let (s, ev) = next_status(&job, &d, &[], None, now());
        assert_eq!(s.phase, Some(JobPhase::Pending));
        assert_eq!(s.conditions[0].type_, "Created");
        assert_eq!(s.start_time, Some(Time(now())));
        assert_eq!(ev[0].reason, "JobCreated");
        assert_eq!(s.workers.unwrap().desired, 4);
    }

    #[test]
    fn restart_counts_and_sets_the_restarting_condition_with_an_event() {
        let mut job = representative_job();
        job.status = Some(JanusTrainingJobStatus {
            phase: Some(JobPhase::Running),
            ..Default::default()
        });
        let d = Decision::Restart {
            reason: "WorkerFailed",
            message: "worker x exited with code 75".into(),
            delete: vec![],
            counted: true,
        };
        let (s, ev) = next_status(&job, &d, &[], None, now());
        assert_eq!((s.restarts, s.phase), (1, Some(JobPhase::Restarting)));
        assert_eq!(s.restarts_counted_towards_backoff, 1);
        // A disruption restarts without counting.
        let mut again = job.clone();
        again.status = Some(s.clone());
        let d = Decision::Restart {
            reason: "WorkerDisrupted",
            message: "worker x was disrupted".into(),
            delete: vec![],
            counted: false,
        };
        let (s2, _) = next_status(&again, &d, &[], None, now());
        assert_eq!((s2.restarts, s2.restarts_counted_towards_backoff), (2, 1));
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Restarting")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "WorkerFailed")
        );
        assert!(c.message.contains("attempt 1"));
        assert!(ev.iter().any(|e| e.warning && e.reason == "WorkerFailed"));
    }

    #[test]
    fn running_again_clears_restarting_and_emits_once() {
        let mut job = representative_job();
        let mut conds = vec![];
        set_condition(&mut conds, "Restarting", true, "WorkerFailed", "m", now());
        job.status = Some(JanusTrainingJobStatus {
            phase: Some(JobPhase::Restarting),
            restarts: 1,
            conditions: conds,
            ..Default::default()
        });
        let d = Decision::Progress {
            phase: JobPhase::Running,
            delete: vec![],
            create: vec![],
            requeue_after: None,
        };
        let (s, ev) = next_status(&job, &d, &[], None, now());
        let r = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Restarting")
            .unwrap();
        assert_eq!(r.status, "False");
        assert_eq!(ev.len(), 1);
        job.status = Some(s.clone());
        let (s2, ev2) = next_status(&job, &d, &[], None, now());
        assert_eq!(s2, s, "a steady state produces the same status");
        assert!(ev2.is_empty());
    }

    #[test]
    fn failure_sets_phase_condition_and_completion_time() {
        let mut job = representative_job();
        job.status = Some(JanusTrainingJobStatus {
            phase: Some(JobPhase::Running),
            ..Default::default()
        });
        let d = Decision::Fail {
            reason: "NonRetryableExit",
            message: "worker w exited with code 64".into(),
            delete: vec![],
        };
        let (s, ev) = next_status(&job, &d, &[], None, now());
        assert_eq!(s.phase, Some(JobPhase::Failed));
        assert_eq!(s.completion_time, Some(Time(now())));
        let f = s.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
        assert_eq!(f.reason, "NonRetryableExit");
        assert!(ev[0].warning);
    }

    #[test]
    fn suspend_and_resume_toggle_the_condition_and_reset_the_start_time() {
        let mut job = representative_job();
        job.status = Some(JanusTrainingJobStatus {
            phase: Some(JobPhase::Running),
            start_time: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
            ..Default::default()
        });
        let (s, ev) = next_status(
            &job,
            &Decision::Suspend { delete: vec![] },
            &[],
            None,
            now(),
        );
        assert_eq!(s.phase, Some(JobPhase::Suspended));
        assert_eq!(ev[0].reason, "JobSuspended");
        job.status = Some(s);
        let d = Decision::Progress {
            phase: JobPhase::Pending,
            delete: vec![],
            create: vec![0],
            requeue_after: None,
        };
        let (s, ev) = next_status(&job, &d, &[], None, now());
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Suspended")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "JobResumed")
        );
        assert_eq!(s.start_time, Some(Time(now())));
        assert_eq!(ev[0].reason, "JobResumed");
    }

    fn suspended_job() -> JanusTrainingJob {
        let mut job = representative_job();
        let mut conds = vec![];
        set_condition(&mut conds, "Suspended", true, "JobSuspended", "m", now());
        job.status = Some(JanusTrainingJobStatus {
            phase: Some(JobPhase::Suspended),
            start_time: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
            conditions: conds,
            ..Default::default()
        });
        job
    }

    #[test]
    fn resume_is_recorded_once_while_the_old_pods_drain() {
        let mut job = suspended_job();
        let drain = Decision::Progress {
            phase: JobPhase::Suspended,
            delete: vec!["j-worker-0".into()],
            create: vec![],
            requeue_after: None,
        };
        let (s, ev) = next_status(&job, &drain, &[], None, now());
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Suspended")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "JobResumed")
        );
        assert_eq!(s.start_time, Some(Time(now())));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].reason, "JobResumed");
        assert_eq!(s.restarts, 0);

        // Later reconciles of the same resume neither move the start time nor repeat the
        // event, whether the old pods are still draining or the new gang is created.
        job.status = Some(s);
        let later: Timestamp = "2026-01-01T12:00:30Z".parse().unwrap();
        let (s, ev) = next_status(&job, &drain, &[], None, later);
        assert_eq!(s.start_time, Some(Time(now())));
        assert!(ev.is_empty(), "{ev:?}");
        let create = Decision::Progress {
            phase: JobPhase::Pending,
            delete: vec![],
            create: vec![0, 1, 2, 3],
            requeue_after: None,
        };
        job.status = Some(s);
        let (s, ev) = next_status(&job, &create, &[], None, later);
        assert_eq!(s.phase, Some(JobPhase::Pending));
        assert_eq!(s.start_time, Some(Time(now())));
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn resume_is_recorded_whatever_the_decision() {
        let job = suspended_job();
        let d = Decision::Fail {
            reason: "InvalidPodTemplate",
            message: "bad template".into(),
            delete: vec![],
        };
        let (s, ev) = next_status(&job, &d, &[], None, now());
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Suspended")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "JobResumed")
        );
        assert_eq!(s.start_time, Some(Time(now())));
        assert_eq!(s.phase, Some(JobPhase::Failed));
        assert!(ev.iter().any(|e| e.reason == "JobResumed"), "{ev:?}");
    }

    #[test]
    fn suspending_again_while_draining_emits_the_event() {
        let mut job = suspended_job();
        let drain = Decision::Progress {
            phase: JobPhase::Suspended,
            delete: vec![],
            create: vec![],
            requeue_after: None,
        };
        job.status = Some(next_status(&job, &drain, &[], None, now()).0);
        job.spec.run_policy.suspend = true;
        let (s, ev) = next_status(
            &job,
            &Decision::Suspend { delete: vec![] },
            &[],
            None,
            now(),
        );
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Suspended")
            .unwrap();
        assert_eq!(c.status, "True");
        assert!(ev.iter().any(|e| e.reason == "JobSuspended"), "{ev:?}");
    }

    #[test]
    fn progress_is_mirrored_with_an_eta() {
        let mut job = representative_job();
        job.status = Some(JanusTrainingJobStatus {
            phase: Some(JobPhase::Running),
            ..Default::default()
        });
        let d = Decision::Progress {
            phase: JobPhase::Running,
            delete: vec![],
            create: vec![],
            requeue_after: None,
        };
        let (s, _) = next_status(
            &job,
            &d,
            &[],
            Some(progress(100, "2026-01-01T11:00:00Z")),
            now(),
        );
        assert_eq!(s.progress.as_ref().unwrap().step, 100);
        assert_eq!(s.last_checkpoint.as_deref(), Some("s3://c/j/step-100"));
        job.status = Some(s);
        let (s, _) = next_status(
            &job,
            &d,
            &[],
            Some(progress(200, "2026-01-01T11:01:40Z")),
            now(),
        );
        // 100 steps in 100 s, 800 to go.
        assert_eq!(s.progress.unwrap().eta_seconds, Some(800));
    }

    #[test]
    fn pod_facts_read_rank_attempt_exit_code_and_lost_nodes() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j-worker-1", "labels": {"janus.dev/rank": "1", "janus.dev/attempt": "2"}},
            "spec": {"nodeName": "gone", "containers": [{"name": "trainer"}]},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 64}}}]}
        }))
        .unwrap();
        let f = pod_facts(&pod, None, |n| {
            if n == "gone" {
                NodeState::Missing
            } else {
                NodeState::Ready
            }
        });
        assert_eq!(
            (f.rank, f.attempt, f.exit_code),
            (Some(1), Some(2), Some(64))
        );
        assert_eq!(f.phase, PodPhase::Failed);
        assert!(f.node_lost);
        assert!(f.foreign, "no owner reference: not the job's");
    }

    #[test]
    fn a_node_not_ready_or_tainted_unreachable_is_down_since_the_earliest_sign() {
        let node = |v: serde_json::Value| -> Node { serde_json::from_value(v).unwrap() };
        let ready = node(serde_json::json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
        assert_eq!(node_state(&ready), NodeState::Ready);
        let unknown = node(serde_json::json!({"metadata": {"name": "n"},
            "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                                 "timeAdded": "2026-01-01T12:00:05Z"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown",
                "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.",
                "lastTransitionTime": "2026-01-01T12:00:03Z"}]}}));
        assert_eq!(
            node_state(&unknown),
            NodeState::Down(
                "2026-01-01T12:00:03Z".parse().unwrap(),
                "Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)".into()
            )
        );
        let tainted = node(serde_json::json!({"metadata": {"name": "n"},
            "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule",
                                 "timeAdded": "2026-01-01T12:00:05Z"}]}}));
        assert!(
            matches!(node_state(&tainted), NodeState::Down(_, w) if w == "taint node.kubernetes.io/not-ready:NoSchedule")
        );
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j-worker-0"}, "spec": {"nodeName": "n", "containers": []}}))
        .unwrap();
        let f = pod_facts(&pod, None, |_| node_state(&unknown));
        assert_eq!(f.node_down.map(|d| d.node), Some("n".to_string()));
        assert!(!f.node_lost);
    }

    #[test]
    fn only_pods_controlled_by_the_job_uid_are_the_jobs() {
        let pod = |uid: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "j-worker-0", "labels": {"janus.dev/rank": "0", "janus.dev/attempt": "0"},
                             "ownerReferences": [{"apiVersion": "janus.dev/v1alpha1", "kind": "JanusTrainingJob",
                                                  "name": "j", "uid": uid, "controller": true}]},
                "status": {"phase": "Running"}
            }))
            .unwrap()
        };
        assert!(!pod_facts(&pod("new"), Some("new"), |_| NodeState::Ready).foreign);
        assert!(pod_facts(&pod("old"), Some("new"), |_| NodeState::Ready).foreign);
    }
}
