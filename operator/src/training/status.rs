//! From a decision to the job's next status (and the Events of its transitions), plus
//! the extraction of the decision's inputs from Kubernetes objects.

use janus_crds::training::{
    condition, reason, FabricCheckAction, FabricCheckSpec, JobPhase, JobProgress, WorkerCounts,
};
use janus_crds::{defaults, labels, JanusTrainingJob, JanusTrainingJobStatus, Progress};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::gang::{Decision, Gang, JobFacts, PodFacts, PodPhase};
use crate::controller::conditions::{self, Cond, EventSpec, Transitions, When};
use crate::controller::nodes::NodeState;
use crate::controller::pods::{self, Containers};
use crate::controller::stuck;

/// The containers of a worker the decisions read: the trainer.
pub const CONTAINERS: Containers = Containers::Only(defaults::CONTAINER_NAME);

pub fn job_facts(job: &JanusTrainingJob) -> JobFacts {
    let s = job.status.clone().unwrap_or_default();
    let rp = &job.spec.run_policy;
    JobFacts {
        replicas: job.spec.workers.replicas,
        run: crate::run_facts!(rp, s),
        failure_rules: rp
            .failure_policy
            .as_ref()
            .map(|f| f.rules.clone())
            .unwrap_or_default(),
        // The controller sets it from the job's Workload (`kueue::KueueFacts`).
        admitted: true,
        phase: s.phase.unwrap_or_default(),
        restarts: s.restarts,
        counted_restarts: s.restarts_counted_towards_backoff,
        backoff: rp.restart_backoff.clone().unwrap_or_default(),
        consecutive_restarts: s.consecutive_restarts,
        restart_not_before: s.restart_not_before.as_ref().map(|t| t.0),
        running_since: s
            .conditions
            .iter()
            .find(|c| c.type_ == condition::RUNNING && c.status == "True")
            .map(|c| c.last_transition_time.0),
    }
}

/// The rank a worker's label names.
pub fn rank(pod: &Pod) -> Option<i32> {
    pod.labels().get(labels::RANK).and_then(|v| v.parse().ok())
}

/// `node(name)`: the state of the pod's node.
/// `job_uid`: the UID of the job the pod is looked at for; a pod whose controller owner
/// reference names another UID is foreign.
pub fn pod_facts(pod: &Pod, job_uid: Option<&str>, node: impl Fn(&str) -> NodeState) -> PodFacts {
    pods::pod_facts(pod, job_uid, rank(pod), CONTAINERS, node)
}

/// The status after `decision`, and the Events of the transitions it makes.
pub fn next_status(
    job: &JanusTrainingJob,
    decision: &Decision,
    pods: &[PodFacts],
    rank0_progress: Option<Progress>,
    now: Timestamp,
) -> (JanusTrainingJobStatus, Vec<EventSpec>) {
    let (old, mut s, mut t) = conditions::begin(job, now);
    if old.phase.is_none() {
        created(job, &mut s, &mut t);
    }
    let old_phase = s.phase.unwrap_or_default();
    // Not on a Suspend decision: a job Kueue holds is suspended without `suspend`.
    if old_phase == JobPhase::Suspended
        && !job.spec.run_policy.suspend
        && !matches!(decision, Decision::Suspend { .. })
        && !t.had(condition::SUSPENDED, "False")
    {
        resume(&mut s, &mut t);
    }
    transition(job, decision, old_phase, &mut s, &mut t);
    if let Decision::Step(Gang::Progress {
        phase: JobPhase::Pending,
        ..
    }) = decision
    {
        let current: Vec<&PodFacts> = pods
            .iter()
            .filter(|p| p.attempt == Some(s.restarts))
            .collect();
        stuck::running(&mut t, &mut s.conditions, &current, "worker");
    }
    if !matches!(decision, Decision::Finished { .. }) {
        s.workers = Some(worker_counts(&s, job.spec.workers.replicas, pods));
    }
    if let Some(mut p) = rank0_progress {
        if let Some(f) = p.fabric.take() {
            mirror_fabric(job, &mut s, &mut t, f);
        }
        mirror_progress(&mut s, old.progress.as_ref(), p);
    }
    (s, t.events)
}

/// Rank 0's fabric check into `status.fabric`, and with `spec.fabricCheck` the
/// `FabricCheck` condition: True at or above the threshold (or without one), False
/// below it. A Warning Event with action `Warn`; with `Fail` the trainers exit 65 and
/// the Failed condition (`FabricCheckFailed`) carries the Event. Each new measurement
/// (a restarted gang measures again) is news once.
fn mirror_fabric(
    job: &JanusTrainingJob,
    s: &mut JanusTrainingJobStatus,
    t: &mut Transitions,
    f: janus_crds::progress::Fabric,
) {
    if let Some(check) = &job.spec.fabric_check {
        let (ok, why, msg) = fabric_outcome(check, &f);
        let c = Cond::new(condition::FABRIC_CHECK, ok, why, &msg);
        if !ok && check.action == FabricCheckAction::Fail {
            t.set(&mut s.conditions, c);
        } else {
            t.announce(&mut s.conditions, c, When::OnCause, !ok);
        }
    }
    s.fabric = Some(f);
}

/// The `FabricCheck` condition for measurement `f`: (status, reason, message naming the
/// measured and required figures).
pub fn fabric_outcome(
    check: &FabricCheckSpec,
    f: &janus_crds::progress::Fabric,
) -> (bool, &'static str, String) {
    let measured = format!(
        "all-reduce bus bandwidth {:.3} GB/s over {} ranks ({}, {} bytes)",
        f.bus_bandwidth_gbps, f.ranks, f.backend, f.size_bytes
    );
    match check.min_bus_bandwidth_gbps {
        None => (
            true,
            reason::FABRIC_MEASURED,
            format!("{measured}; no threshold set"),
        ),
        Some(min) if check.is_below(f.bus_bandwidth_gbps) => {
            let then = match check.action {
                FabricCheckAction::Fail => "the job fails",
                FabricCheckAction::Warn => "training goes on (action Warn)",
            };
            let why = match check.action {
                FabricCheckAction::Fail => reason::FABRIC_CHECK_FAILED,
                FabricCheckAction::Warn => reason::FABRIC_BELOW_THRESHOLD,
            };
            (
                false,
                why,
                format!(
                    "{measured} is below spec.fabricCheck.minBusBandwidthGBps {min} GB/s; {then}"
                ),
            )
        }
        Some(min) => (
            true,
            reason::FABRIC_CHECK_PASSED,
            format!("{measured}, at least spec.fabricCheck.minBusBandwidthGBps {min} GB/s"),
        ),
    }
}

/// A new job: Created, Pending, and its clock started unless it is created suspended.
fn created(job: &JanusTrainingJob, s: &mut JanusTrainingJobStatus, t: &mut Transitions) {
    let (name, replicas) = (job.name_any(), job.spec.workers.replicas);
    let msg = format!("created the gang of {replicas} workers of {name}");
    t.set(
        &mut s.conditions,
        Cond::new(condition::CREATED, true, reason::JOB_CREATED, &msg),
    );
    t.event(
        false,
        reason::JOB_CREATED,
        format!("creating {replicas} workers"),
    );
    s.phase = Some(JobPhase::Pending);
    if !job.spec.run_policy.suspend {
        s.start_time = Some(Time(t.now()));
    }
}

/// Resume bookkeeping, once, whatever the decision: the phase stays Suspended until the
/// pods of the earlier run are gone (see `gang::decide`), so the Suspended condition
/// tells whether this already happened. `activeDeadlineSeconds` counts from the
/// resume, as in Kubeflow.
fn resume(s: &mut JanusTrainingJobStatus, t: &mut Transitions) {
    let msg = "the job resumed from its latest checkpoint";
    t.set(
        &mut s.conditions,
        Cond::new(condition::SUSPENDED, false, reason::JOB_RESUMED, msg),
    );
    s.start_time = Some(Time(t.now()));
    t.event(
        false,
        reason::JOB_RESUMED,
        "resuming from the latest checkpoint",
    );
}

/// The phase, conditions and Events of `decision`.
fn transition(
    job: &JanusTrainingJob,
    decision: &Decision,
    old_phase: JobPhase,
    s: &mut JanusTrainingJobStatus,
    t: &mut Transitions,
) {
    let replicas = job.spec.workers.replicas;
    let conds = &mut s.conditions;
    match decision {
        Decision::Step(Gang::Progress { phase, .. }) => {
            s.phase = Some(*phase);
            if *phase == JobPhase::Running {
                let msg = format!("all {replicas} workers are running");
                let running =
                    Cond::new(condition::RUNNING, true, reason::ALL_WORKERS_RUNNING, &msg);
                t.set(conds, running);
                t.clear(
                    conds,
                    condition::RESTARTING,
                    reason::ALL_WORKERS_RUNNING,
                    &msg,
                );
                if old_phase != JobPhase::Running {
                    t.event(false, reason::ALL_WORKERS_RUNNING, msg);
                }
            }
        }
        Decision::Step(Gang::Restart {
            reason: why,
            message,
            counted,
            ..
        }) => {
            let old = job.status.clone().unwrap_or_default();
            s.restarts = old.restarts + 1;
            s.restarts_counted_towards_backoff =
                old.restarts_counted_towards_backoff + i32::from(*counted);
            s.phase = Some(JobPhase::Restarting);
            let (streak, wait) = super::gang::restart_wait(&job_facts(job), *counted, t.now());
            s.consecutive_restarts = streak;
            let mut msg = format!("{message}; restarting all workers (attempt {})", s.restarts);
            if wait.is_zero() {
                s.restart_not_before = None;
            } else {
                s.restart_not_before = Some(Time(t.now() + wait));
                msg += &format!(
                    "; the new gang starts in {}s (restart {streak} in a row, runPolicy.restartBackoff)",
                    wait.as_secs()
                );
            }
            t.announce(
                conds,
                Cond::new(condition::RESTARTING, true, why, &msg),
                When::Always,
                true,
            );
            t.clear(conds, condition::RUNNING, why, &msg);
        }
        Decision::Fail {
            reason: why,
            message,
            ..
        } => {
            s.phase = Some(JobPhase::Failed);
            t.finish(
                conds,
                Cond::new(condition::FAILED, true, why, message),
                true,
                RUNNING_CONDITIONS,
            );
            s.completion_time = Some(Time(t.now()));
        }
        Decision::Succeed { .. } => {
            s.phase = Some(JobPhase::Succeeded);
            let msg = format!("all {replicas} workers exited 0");
            let done = Cond::new(
                condition::SUCCEEDED,
                true,
                reason::ALL_WORKERS_SUCCEEDED,
                &msg,
            );
            t.finish(conds, done, false, RUNNING_CONDITIONS);
            s.completion_time = Some(Time(t.now()));
        }
        Decision::Suspend { .. } => {
            s.phase = Some(JobPhase::Suspended);
            let msg = "suspended: workers deleted, the checkpoint is kept";
            let suspended = Cond::new(condition::SUSPENDED, true, reason::JOB_SUSPENDED, msg);
            t.announce(conds, suspended, When::OnStatus, false);
            t.clear(conds, condition::RUNNING, reason::JOB_SUSPENDED, msg);
        }
        Decision::Finished { .. } => {}
    }
}

/// The conditions of a job under way, False once it finished.
const RUNNING_CONDITIONS: &[&str] = &[condition::RUNNING, condition::RESTARTING];

/// Worker counts of the attempt the status now describes.
fn worker_counts(s: &JanusTrainingJobStatus, replicas: i32, pods: &[PodFacts]) -> WorkerCounts {
    let mut c = WorkerCounts {
        desired: replicas,
        ..Default::default()
    };
    if matches!(s.phase, Some(JobPhase::Suspended)) {
        return c;
    }
    for p in pods
        .iter()
        .filter(|p| p.attempt == Some(s.restarts) && !p.terminating)
    {
        match p.phase {
            PodPhase::Pending => c.pending += 1,
            PodPhase::Running => c.running += 1,
            PodPhase::Succeeded => c.succeeded += 1,
            PodPhase::Failed => c.failed += 1,
        }
    }
    c
}

/// Rank 0's progress report into `status.progress` (and its last checkpoint).
fn mirror_progress(s: &mut JanusTrainingJobStatus, old: Option<&JobProgress>, p: Progress) {
    let eta = eta_seconds(old, &p).or(old.and_then(|o| o.eta_seconds));
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
mod tests;
