//! Gang semantics as one pure function: from what the job asks for and what its pods
//! look like, decide the next step. No I/O here, so every rule is unit-tested.
//!
//! Rules (issue 5):
//! - any worker of the current attempt Failed, evicted, deleted by someone else, or on a
//!   node that no longer exists -> delete all workers, attempt + 1 (Restarting);
//! - more restarts than `backoffLimit` -> Failed (BackoffLimitExceeded); disruptions
//!   (a `DisruptionTarget` pod condition: preemption, Eviction API, drain, the kubelet;
//!   a kubelet eviction; a lost node) restart without counting;
//! - exit code 64 (bad input) -> Failed at once (NonRetryableExit);
//! - `runPolicy.failurePolicy.rules` (exit codes, the `DisruptionTarget` condition)
//!   override these three defaults per failed worker: FailJob, RestartJob,
//!   RestartJobAndIgnoreBackoff;
//! - a worker's node NotReady or unreachable past `unreachableNodeTolerationSeconds`
//!   -> restart without counting, and force-delete the pods on it (no kubelet will
//!   confirm their deletion, and the new gang reuses their names);
//! - `activeDeadlineSeconds` passed -> Failed (DeadlineExceeded);
//! - `suspend` -> delete the pods (Suspended); resume recreates them;
//! - every rank exited 0 -> Succeeded;
//! - finished jobs: `cleanPodPolicy` applied; deleted after `ttlSecondsAfterFinished`.

use std::time::Duration;

use janus_crds::exit_code;
use janus_crds::training::{
    reason, CleanPodPolicy, ExitCodeOperator, FailurePolicyAction, FailurePolicyRule, JobPhase,
    PodConditionType,
};
use jiff::Timestamp;

/// What the decision needs from the job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFacts {
    pub replicas: i32,
    pub backoff_limit: i32,
    pub active_deadline_seconds: Option<i64>,
    pub scheduling_timeout_seconds: Option<i64>,
    /// `runPolicy.unreachableNodeTolerationSeconds`.
    pub unreachable_node_toleration_seconds: i64,
    /// `runPolicy.failurePolicy.rules`.
    pub failure_rules: Vec<FailurePolicyRule>,
    pub ttl_seconds_after_finished: Option<i32>,
    pub suspend: bool,
    /// Kueue admitted the job's Workload (always true for a job without a queue name):
    /// a job Kueue has not admitted, or evicted, is held suspended.
    pub admitted: bool,
    pub clean_pod_policy: CleanPodPolicy,
    /// Phase in the current status.
    pub phase: JobPhase,
    /// Gang restarts so far = the current attempt.
    pub restarts: i32,
    /// Of those, the ones `backoffLimit` counts (disruptions do not).
    pub counted_restarts: i32,
    pub start_time: Option<Timestamp>,
    pub completion_time: Option<Timestamp>,
}

/// Phase of a pod, as far as the gang cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// What the decision needs from one worker pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFacts {
    pub name: String,
    pub rank: Option<i32>,
    pub attempt: Option<i32>,
    pub phase: PodPhase,
    /// Has a deletionTimestamp.
    pub terminating: bool,
    /// Exit code of the trainer container, once terminated.
    pub exit_code: Option<i32>,
    /// Its termination message (the trainer writes its error there), if any.
    pub message: Option<String>,
    /// When the trainer container terminated.
    pub finished_at: Option<Timestamp>,
    /// `metadata.creationTimestamp`.
    pub created_at: Option<Timestamp>,
    /// `status.reason` of the pod (`Evicted`, ...).
    pub reason: Option<String>,
    /// Why a pending pod does not start: (reason, the scheduler's or kubelet's message).
    pub waiting: Option<(&'static str, String)>,
    /// Its `DisruptionTarget` condition: (reason, message) of a preemption, an
    /// eviction, a drain or the kubelet's termination.
    pub disrupted: Option<(String, String)>,
    /// Bound to a node that no longer exists.
    pub node_lost: bool,
    /// Bound to a node that is NotReady or unreachable.
    pub node_down: Option<NodeDown>,
    /// Carries the job's labels but its controller is not this job (another object of
    /// the same name, e.g. a deleted job whose pods the garbage collector has not yet
    /// removed). Never counted; only blocks creating pods of the same names.
    pub foreign: bool,
}

/// A node that does not report Ready: no kubelet acts on its pods.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDown {
    pub node: String,
    /// Since when (its Ready condition's last transition, or the taint's `timeAdded`).
    pub since: Timestamp,
    /// What the node says (`Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting
    /// node status.)`, or the taint).
    pub why: String,
}

/// Seconds left of the toleration of `p`'s node being down (<= 0: past it), counted
/// from when the node went down or the pod was created, whichever is later (a pod
/// placed on a node long down, tolerating its taints, gets the whole toleration too).
fn toleration_left(job: &JobFacts, p: &PodFacts, now: Timestamp) -> Option<i64> {
    let d = p.node_down.as_ref()?;
    let since = p.created_at.map_or(d.since, |c| c.max(d.since));
    Some(job.unreachable_node_toleration_seconds - now.duration_since(since).as_secs())
}

fn past_toleration(job: &JobFacts, p: &PodFacts, now: Timestamp) -> bool {
    toleration_left(job, p, now).is_some_and(|l| l <= 0)
}

/// Pods to delete with grace period 0: those on a node down for longer than the
/// toleration that are being deleted already (by anyone: a Terminating pod there
/// never goes) or that `delete` deletes now. Pods of another owner are included only
/// when already terminating: their deletion was asked for, it only never completes.
pub fn force_delete(
    job: &JobFacts,
    pods: &[PodFacts],
    delete: &[String],
    now: Timestamp,
) -> Vec<String> {
    pods.iter()
        .filter(|p| past_toleration(job, p, now))
        .filter(|p| p.terminating || (!p.foreign && delete.contains(&p.name)))
        .map(|p| p.name.clone())
        .collect()
}

/// When a toleration of a down node ends next (reconcile then).
pub fn next_toleration_end(job: &JobFacts, pods: &[PodFacts], now: Timestamp) -> Option<Duration> {
    pods.iter()
        .filter_map(|p| toleration_left(job, p, now))
        .filter(|l| *l > 0)
        .min()
        .map(secs)
}

/// `": <message>"` for a termination message (trimmed, at most 1 KiB), else nothing.
fn quoted(message: &Option<String>) -> String {
    let Some(m) = message.as_deref().map(str::trim).filter(|m| !m.is_empty()) else {
        return String::new();
    };
    let mut end = m.len().min(1024);
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    format!(": {}", &m[..end])
}

impl PodFacts {
    fn finished(&self) -> bool {
        matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// The next step for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Gang under way: delete pods of older attempts, create the missing ranks of the
    /// current attempt (only once no older pod remains: names are reused), report `phase`.
    Progress {
        phase: JobPhase,
        delete: Vec<String>,
        create: Vec<i32>,
        /// Reconcile again then (the deadline).
        requeue_after: Option<Duration>,
    },
    /// Delete every worker of this attempt and start attempt `restarts + 1`.
    Restart {
        reason: &'static str,
        message: String,
        delete: Vec<String>,
        /// Whether `backoffLimit` counts it (disruptions do not).
        counted: bool,
    },
    /// The job failed now.
    Fail {
        reason: &'static str,
        message: String,
        delete: Vec<String>,
    },
    /// Every rank exited 0.
    Succeed { delete: Vec<String> },
    /// Suspended: no pods.
    Suspend { delete: Vec<String> },
    /// Finished earlier: apply the clean-up policy; delete the job once the TTL passed.
    Finished {
        delete: Vec<String>,
        delete_job: bool,
        requeue_after: Option<Duration>,
    },
}

fn names<'a>(pods: impl IntoIterator<Item = &'a PodFacts>) -> Vec<String> {
    pods.into_iter()
        .filter(|p| !p.terminating)
        .map(|p| p.name.clone())
        .collect()
}

/// Pods `cleanPodPolicy` deletes once the job finished.
fn cleanup(policy: CleanPodPolicy, pods: &[PodFacts]) -> Vec<String> {
    match policy {
        CleanPodPolicy::None => vec![],
        CleanPodPolicy::All => names(pods),
        CleanPodPolicy::Running => names(pods.iter().filter(|p| !p.finished())),
    }
}

fn secs(d: i64) -> Duration {
    Duration::from_secs(d.max(0) as u64)
}

/// While pods of the run before a suspend remain, delete them and create nothing. The
/// phase stays Suspended until they are gone: it is how the next reconcile still knows
/// that these pods are stale rather than a gang failure.
fn drain_before_resume(pods: &[PodFacts]) -> Decision {
    Decision::Progress {
        phase: JobPhase::Suspended,
        delete: names(pods),
        create: vec![],
        requeue_after: None,
    }
}

/// How soon to look again while foreign pods block creating the gang.
pub const FOREIGN_POD_WAIT: Duration = Duration::from_secs(2);

/// One failed worker (or a missing rank), as the failure policy sees it.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    reason: &'static str,
    message: String,
    /// The trainer container's exit code, when it failed with one.
    exit_code: Option<i32>,
    /// A disruption (`DisruptionTarget`): preempted, evicted, its node lost or down.
    disruption: bool,
}

/// The failures of the current attempt, the one to report first: a node down past the
/// toleration (its pods never report anything again), then a disruption (the peers it
/// leaves exit 75 before the disrupted pod itself has finished terminating), then the
/// failure that came first, and of those at the same time (the kubelet stamps seconds)
/// one that is not a lost-peer exit, so the condition names the cause.
fn failures(job: &JobFacts, current: &[&PodFacts], now: Timestamp) -> Vec<Failure> {
    let mut by_cause: Vec<&PodFacts> = current.to_vec();
    by_cause.sort_by_key(|p| {
        (
            !past_toleration(job, p, now) || p.finished(),
            p.disrupted.is_none(),
            p.phase != PodPhase::Failed,
            p.finished_at,
            p.exit_code == Some(exit_code::RETRYABLE),
            p.rank,
        )
    });
    by_cause
        .into_iter()
        .filter_map(|p| {
            let exit_code = p.exit_code.filter(|_| p.phase == PodPhase::Failed);
            let evicted = p.phase == PodPhase::Failed && p.reason.as_deref() == Some("Evicted");
            let (reason, message, disruption) = if let Some(d) = p
                .node_down
                .as_ref()
                .filter(|_| past_toleration(job, p, now) && !p.finished())
            {
                (
                    reason::NODE_UNREACHABLE,
                    format!(
                        "node {} of worker {} has been unavailable for {}s, longer than runPolicy.unreachableNodeTolerationSeconds ({}s): {}; its pods are force-deleted",
                        d.node,
                        p.name,
                        now.duration_since(d.since).as_secs(),
                        job.unreachable_node_toleration_seconds,
                        d.why
                    ),
                    true,
                )
            } else if let Some((why, msg)) = &p.disrupted {
                (
                    reason::WORKER_DISRUPTED,
                    format!("worker {} was disrupted ({why}: {msg})", p.name),
                    true,
                )
            } else if evicted {
                // The kubelet's node-pressure eviction: a disruption too.
                (
                    reason::WORKER_EVICTED,
                    format!("worker {} was evicted", p.name),
                    true,
                )
            } else if p.phase == PodPhase::Failed {
                let message = match exit_code {
                    Some(c) => format!("worker {} exited with code {c}{}", p.name, quoted(&p.message)),
                    None => format!("worker {} failed", p.name),
                };
                (reason::WORKER_FAILED, message, false)
            } else if p.node_lost && !p.finished() {
                (
                    reason::NODE_LOST,
                    format!("the node of worker {} is gone", p.name),
                    true,
                )
            } else if p.terminating && !p.finished() {
                (
                    reason::WORKER_DELETED,
                    format!("worker {} was deleted", p.name),
                    false,
                )
            } else {
                return None;
            };
            Some(Failure {
                reason,
                message,
                exit_code,
                disruption,
            })
        })
        .collect()
}

/// What the failure policy makes of one failure: the action, and the index of the rule
/// that matched (None: the defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Judgement {
    action: FailurePolicyAction,
    rule: Option<usize>,
}

/// The first rule matching `f`, else the defaults: exit code 64 fails the job, a
/// disruption restarts without counting, anything else restarts and counts.
fn judge(rules: &[FailurePolicyRule], f: &Failure) -> Judgement {
    let matches = |r: &FailurePolicyRule| {
        let on_code = r.on_exit_codes.as_ref().is_some_and(|c| {
            f.exit_code.is_some_and(|code| {
                let listed = c.values.contains(&code);
                match c.operator {
                    ExitCodeOperator::In => listed,
                    ExitCodeOperator::NotIn => !listed,
                }
            })
        });
        let on_condition = r.on_pod_conditions.as_ref().is_some_and(|cs| {
            cs.iter().any(|c| match c.type_ {
                PodConditionType::DisruptionTarget => f.disruption,
            })
        });
        on_code || on_condition
    };
    if let Some(i) = rules.iter().position(matches) {
        return Judgement {
            action: rules[i].action,
            rule: Some(i),
        };
    }
    let action = if f.exit_code == Some(exit_code::BAD_INPUT) {
        FailurePolicyAction::FailJob
    } else if f.disruption {
        FailurePolicyAction::RestartJobAndIgnoreBackoff
    } else {
        FailurePolicyAction::RestartJob
    };
    Judgement { action, rule: None }
}

pub fn decide(job: &JobFacts, pods: &[PodFacts], now: Timestamp) -> Decision {
    // Pods of another owner with this job's names: not ours, never counted. Creating a
    // pod under a name they hold would conflict, so wait until they are gone.
    if !pods.iter().any(|p| p.foreign) {
        return decide_owned(job, pods, now);
    }
    let owned: Vec<PodFacts> = pods.iter().filter(|p| !p.foreign).cloned().collect();
    let mut d = decide_owned(job, &owned, now);
    if let Decision::Progress {
        create,
        requeue_after,
        ..
    } = &mut d
    {
        if !create.is_empty() {
            create.clear();
            *requeue_after =
                Some(requeue_after.map_or(FOREIGN_POD_WAIT, |r| r.min(FOREIGN_POD_WAIT)));
        }
    }
    d
}

fn decide_owned(job: &JobFacts, pods: &[PodFacts], now: Timestamp) -> Decision {
    // 1. Finished jobs only clean up and expire.
    if job.phase.is_finished() {
        let (delete_job, requeue_after) =
            match (job.ttl_seconds_after_finished, job.completion_time) {
                (Some(ttl), Some(done)) => {
                    let left = ttl as i64 - now.duration_since(done).as_secs();
                    (left <= 0, (left > 0).then(|| secs(left)))
                }
                _ => (false, None),
            };
        return Decision::Finished {
            delete: cleanup(job.clean_pod_policy, pods),
            delete_job,
            requeue_after,
        };
    }

    // 2. Suspended (by the user, or held by Kueue): no pods.
    if job.suspend || !job.admitted {
        return Decision::Suspend {
            delete: names(pods),
        };
    }

    // 3. Resuming: the pods still there belong to the run before the suspend. Suspend
    //    only deleted them, so they still carry the current attempt and would read as a
    //    lost gang; wait until they are gone before starting the run again.
    let resuming = job.phase == JobPhase::Suspended;
    if resuming && !pods.is_empty() {
        return drain_before_resume(pods);
    }

    // 4. Deadline, counted from the start of this run (a resumed run starts now: the
    //    status's startTime is reset in the same reconcile).
    let mut requeue_after = None;
    let start = if resuming { Some(now) } else { job.start_time };
    if let (Some(deadline), Some(start)) = (job.active_deadline_seconds, start) {
        let left = deadline - now.duration_since(start).as_secs();
        if left <= 0 {
            return Decision::Fail {
                reason: reason::DEADLINE_EXCEEDED,
                message: format!("the job ran longer than activeDeadlineSeconds ({deadline}s)"),
                delete: cleanup(job.clean_pod_policy, pods),
            };
        }
        requeue_after = Some(secs(left));
    }

    let attempt = job.restarts;
    let (current, stale): (Vec<&PodFacts>, Vec<&PodFacts>) = pods.iter().partition(|p| {
        p.attempt == Some(attempt) && p.rank.is_some_and(|r| r >= 0 && r < job.replicas)
    });

    // 5-6. Gang failures: a worker failed, was disrupted (evicted, preempted, its node
    //    lost or down past the toleration), deleted under us, or a rank is missing after
    //    the gang started. `runPolicy.failurePolicy` (else the defaults) says what each
    //    failed worker does to the job.
    let started = current
        .iter()
        .any(|p| matches!(p.phase, PodPhase::Running | PodPhase::Succeeded));
    let missing: Vec<i32> = (0..job.replicas)
        .filter(|r| !current.iter().any(|p| p.rank == Some(*r)))
        .collect();
    let mut failures: Vec<Failure> = failures(job, &current, now);
    if failures.is_empty() && started && !missing.is_empty() {
        failures.push(Failure {
            reason: reason::WORKER_LOST,
            message: format!("the worker of rank {} disappeared", missing[0]),
            exit_code: None,
            disruption: false,
        });
    }
    let judged: Vec<(&Failure, Judgement)> = failures
        .iter()
        .map(|f| (f, judge(&job.failure_rules, f)))
        .collect();
    // `FailJob` of any failed worker fails the job (as in a Job's podFailurePolicy).
    if let Some((f, j)) = judged
        .iter()
        .find(|(_, j)| j.action == FailurePolicyAction::FailJob)
    {
        let (reason, message) = match j.rule {
            Some(i) => (
                reason::POD_FAILURE_POLICY,
                format!(
                    "{}, matching runPolicy.failurePolicy.rules[{i}] (FailJob)",
                    f.message
                ),
            ),
            None => (
                reason::NON_RETRYABLE_EXIT,
                f.message.replacen(
                    &format!("with code {}", exit_code::BAD_INPUT),
                    &format!(
                        "with code {} (bad input, not retried)",
                        exit_code::BAD_INPUT
                    ),
                    1,
                ),
            ),
        };
        return Decision::Fail {
            reason,
            message,
            delete: cleanup(job.clean_pod_policy, pods),
        };
    }
    if let Some((f, j)) = judged.first() {
        let counted = j.action == FailurePolicyAction::RestartJob;
        let message = match j.rule {
            Some(i) => format!(
                "{} (runPolicy.failurePolicy.rules[{i}]: {})",
                f.message,
                j.action.as_str()
            ),
            None => f.message.clone(),
        };
        let delete = names(pods);
        if counted && job.counted_restarts + 1 > job.backoff_limit {
            return Decision::Fail {
                reason: reason::BACKOFF_LIMIT_EXCEEDED,
                message: format!(
                    "{message}; {} counted gang restarts already (backoffLimit {})",
                    job.counted_restarts, job.backoff_limit
                ),
                delete: cleanup(job.clean_pod_policy, pods),
            };
        }
        return Decision::Restart {
            reason: f.reason,
            message,
            delete,
            counted,
        };
    }

    // 7. Success: every rank of the current attempt exited 0.
    if missing.is_empty()
        && current.len() as i32 == job.replicas
        && current.iter().all(|p| p.phase == PodPhase::Succeeded)
    {
        return Decision::Succeed {
            delete: cleanup(job.clean_pod_policy, pods),
        };
    }

    // 8. Make progress: remove older attempts first (pod names are reused), then create.
    let delete = names(stale.iter().copied());
    let create = if stale.is_empty() { missing } else { vec![] };
    let all_running = current.len() as i32 == job.replicas
        && current
            .iter()
            .all(|p| matches!(p.phase, PodPhase::Running | PodPhase::Succeeded));
    if let (false, Some(timeout), Some(first)) = (
        all_running,
        job.scheduling_timeout_seconds,
        current.iter().filter_map(|p| p.created_at).min(),
    ) {
        let left = timeout - now.duration_since(first).as_secs();
        if left <= 0 {
            let why = current
                .iter()
                .find_map(|p| {
                    p.waiting
                        .as_ref()
                        .map(|(r, m)| format!(": worker {} {r}: {m}", p.name))
                })
                .unwrap_or_default();
            return Decision::Fail {
                reason: reason::SCHEDULING_TIMEOUT,
                message: format!(
                    "the gang was not running {timeout}s (runPolicy.schedulingTimeoutSeconds) after its first pod was created{why}"
                ),
                delete: cleanup(job.clean_pod_policy, pods),
            };
        }
        requeue_after = Some(requeue_after.map_or(secs(left), |r: Duration| r.min(secs(left))));
    }
    let phase = if all_running {
        JobPhase::Running
    } else if job.phase == JobPhase::Restarting || !stale.is_empty() {
        JobPhase::Restarting
    } else {
        JobPhase::Pending
    };
    Decision::Progress {
        phase,
        delete,
        create,
        requeue_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn job(replicas: i32) -> JobFacts {
        JobFacts {
            replicas,
            backoff_limit: 3,
            active_deadline_seconds: None,
            scheduling_timeout_seconds: None,
            unreachable_node_toleration_seconds: 300,
            failure_rules: vec![],
            ttl_seconds_after_finished: None,
            suspend: false,
            admitted: true,
            clean_pod_policy: CleanPodPolicy::Running,
            phase: JobPhase::Pending,
            restarts: 0,
            counted_restarts: 0,
            start_time: Some("2026-01-01T11:00:00Z".parse().unwrap()),
            completion_time: None,
        }
    }

    fn pod(rank: i32, attempt: i32, phase: PodPhase) -> PodFacts {
        PodFacts {
            name: format!("j-worker-{rank}"),
            rank: Some(rank),
            attempt: Some(attempt),
            phase,
            terminating: false,
            exit_code: match phase {
                PodPhase::Succeeded => Some(0),
                PodPhase::Failed => Some(75),
                _ => None,
            },
            reason: None,
            message: None,
            finished_at: None,
            created_at: None,
            waiting: None,
            disrupted: None,
            node_lost: false,
            node_down: None,
            foreign: false,
        }
    }

    #[test]
    fn a_gang_not_running_within_the_scheduling_timeout_fails_quoting_the_wait() {
        let mut j = job(2);
        j.scheduling_timeout_seconds = Some(300);
        let created = |secs_ago: i64| Some(now() - jiff::SignedDuration::from_secs(secs_ago));
        let mut pods = vec![pod(0, 0, PodPhase::Running), pod(1, 0, PodPhase::Pending)];
        pods[0].created_at = created(200);
        pods[1].created_at = created(200);
        pods[1].waiting = Some((
            "WorkersPending",
            "cannot be scheduled: 0/4 nodes are available".into(),
        ));
        // 100 s left: keep waiting, look again then.
        match decide(&j, &pods, now()) {
            Decision::Progress {
                requeue_after,
                create,
                ..
            } => {
                assert!(create.is_empty());
                assert_eq!(requeue_after, Some(Duration::from_secs(100)));
            }
            d => panic!("{d:?}"),
        }
        pods[0].created_at = created(301);
        match decide(&j, &pods, now()) {
            Decision::Fail {
                reason, message, ..
            } => {
                assert_eq!(reason, "SchedulingTimeout");
                assert!(
                    message.contains("300s")
                        && message.contains("j-worker-1")
                        && message.contains("0/4 nodes"),
                    "{message}"
                );
            }
            d => panic!("{d:?}"),
        }
        // A running gang is past it.
        pods[1] = pod(1, 0, PodPhase::Running);
        pods[1].created_at = created(400);
        assert!(matches!(
            decide(&j, &pods, now()),
            Decision::Progress {
                phase: JobPhase::Running,
                ..
            }
        ));
    }

    #[test]
    fn a_disruption_restarts_without_counting_even_at_the_backoff_limit() {
        let mut j = job(2);
        j.restarts = 5;
        j.counted_restarts = 3;
        j.phase = JobPhase::Running;
        let mut preempted = pod(0, 5, PodPhase::Running);
        preempted.terminating = true;
        preempted.disrupted = Some((
            "PreemptionByScheduler".into(),
            "Preempted by research/urgent on node gpu-3".into(),
        ));
        // Its peer already lost it and exited 75: the disruption is still the cause.
        let mut peer = pod(1, 5, PodPhase::Failed);
        peer.finished_at = Some(now());
        match decide(&j, &[preempted, peer.clone()], now()) {
            Decision::Restart {
                reason,
                message,
                counted,
                ..
            } => {
                assert_eq!(reason, "WorkerDisrupted");
                assert!(!counted);
                assert!(
                    message.contains("PreemptionByScheduler") && message.contains("urgent"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The same failure without the disruption counts, and the limit is reached.
        let mut failed = pod(0, 5, PodPhase::Failed);
        failed.exit_code = Some(1);
        assert!(matches!(
            decide(&j, &[failed, peer], now()),
            Decision::Fail {
                reason: "BackoffLimitExceeded",
                ..
            }
        ));
        // The kubelet's eviction and a lost node do not count either.
        let mut evicted = pod(0, 5, PodPhase::Failed);
        evicted.reason = Some("Evicted".into());
        assert!(matches!(
            decide(&j, &[evicted, pod(1, 5, PodPhase::Running)], now()),
            Decision::Restart { counted: false, .. }
        ));
    }

    fn gang(n: i32, attempt: i32, phase: PodPhase) -> Vec<PodFacts> {
        (0..n).map(|r| pod(r, attempt, phase)).collect()
    }

    #[test]
    fn a_new_job_creates_every_rank() {
        let d = decide(&job(3), &[], now());
        assert_eq!(
            d,
            Decision::Progress {
                phase: JobPhase::Pending,
                delete: vec![],
                create: vec![0, 1, 2],
                requeue_after: None
            }
        );
    }

    #[test]
    fn only_missing_ranks_are_created_before_the_gang_starts() {
        let pods = vec![pod(0, 0, PodPhase::Pending), pod(2, 0, PodPhase::Pending)];
        match decide(&job(3), &pods, now()) {
            Decision::Progress { create, phase, .. } => {
                assert_eq!(create, vec![1]);
                assert_eq!(phase, JobPhase::Pending);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn all_workers_running_is_running() {
        match decide(&job(2), &gang(2, 0, PodPhase::Running), now()) {
            Decision::Progress {
                phase,
                create,
                delete,
                ..
            } => {
                assert_eq!(phase, JobPhase::Running);
                assert!(create.is_empty() && delete.is_empty());
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn one_failed_worker_restarts_the_whole_gang() {
        let mut pods = gang(3, 0, PodPhase::Running);
        pods[1] = pod(1, 0, PodPhase::Failed);
        match decide(&job(3), &pods, now()) {
            Decision::Restart {
                reason,
                message,
                delete,
                counted,
            } => {
                assert!(counted);
                assert_eq!(reason, "WorkerFailed");
                assert!(
                    message.contains("j-worker-1") && message.contains("75"),
                    "{message}"
                );
                assert_eq!(delete.len(), 3);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn an_evicted_worker_restarts_the_gang() {
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[0].phase = PodPhase::Failed;
        pods[0].exit_code = None;
        pods[0].reason = Some("Evicted".into());
        assert!(matches!(
            decide(&job(2), &pods, now()),
            Decision::Restart {
                reason: "WorkerEvicted",
                ..
            }
        ));
    }

    #[test]
    fn a_lost_node_restarts_the_gang() {
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[1].node_lost = true;
        assert!(matches!(
            decide(&job(2), &pods, now()),
            Decision::Restart {
                reason: "NodeLost",
                ..
            }
        ));
    }

    fn down_since(secs_ago: i64) -> Option<NodeDown> {
        Some(NodeDown {
            node: "node-7".into(),
            since: now() - jiff::SignedDuration::from_secs(secs_ago),
            why: "Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)".into(),
        })
    }

    #[test]
    fn a_node_down_within_the_toleration_is_waited_for() {
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[1].node_down = down_since(100);
        let j = job(2);
        assert!(matches!(
            decide(&j, &pods, now()),
            Decision::Progress {
                phase: JobPhase::Running,
                ..
            }
        ));
        assert_eq!(
            next_toleration_end(&j, &pods, now()),
            Some(Duration::from_secs(200))
        );
        assert!(force_delete(&j, &pods, &names(&pods), now()).is_empty());
        // A pod placed on a node long down gets the whole toleration from its creation.
        pods[1].node_down = down_since(4000);
        pods[1].created_at = Some(now() - jiff::SignedDuration::from_secs(10));
        assert!(matches!(
            decide(&j, &pods, now()),
            Decision::Progress { .. }
        ));
        assert_eq!(
            next_toleration_end(&j, &pods, now()),
            Some(Duration::from_secs(290))
        );
    }

    #[test]
    fn a_node_down_past_the_toleration_restarts_uncounted_and_force_deletes_its_pods() {
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[1].node_down = down_since(301);
        let mut j = job(2);
        j.backoff_limit = 0;
        match decide(&j, &pods, now()) {
            Decision::Restart {
                reason,
                message,
                delete,
                counted,
            } => {
                assert_eq!(reason, "NodeUnreachable");
                assert!(!counted, "a lost node is a disruption");
                assert!(
                    message.contains("node node-7 of worker j-worker-1")
                        && message.contains("301s")
                        && message.contains("(300s)")
                        && message.contains("Kubelet stopped posting node status."),
                    "{message}"
                );
                assert_eq!(
                    force_delete(&j, &pods, &delete, now()),
                    vec!["j-worker-1".to_string()]
                );
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(next_toleration_end(&j, &pods, now()), None);
    }

    #[test]
    fn terminating_pods_on_a_node_down_past_the_toleration_are_force_deleted() {
        // Attempt 1 waits for the old pods, which a dead kubelet never lets go.
        let mut j = job(2);
        j.restarts = 1;
        j.phase = JobPhase::Restarting;
        let mut pods = gang(2, 0, PodPhase::Running);
        for p in &mut pods {
            p.terminating = true;
        }
        pods[0].node_down = down_since(10);
        pods[1].node_down = down_since(400);
        pods[1].foreign = true;
        let d = decide(&j, &pods, now());
        assert!(
            matches!(&d, Decision::Progress { create, .. } if create.is_empty()),
            "{d:?}"
        );
        assert_eq!(
            force_delete(&j, &pods, &[], now()),
            vec!["j-worker-1".to_string()],
            "only past the toleration; a foreign pod only as it is terminating already"
        );
        pods[1].terminating = false;
        assert!(force_delete(&j, &pods, &["j-worker-1".into()], now()).is_empty());
    }

    fn rule(action: &str, on: serde_json::Value) -> FailurePolicyRule {
        let mut v = on;
        v["action"] = serde_json::json!(action);
        serde_json::from_value(v).unwrap()
    }

    fn failed_with(code: i32) -> Vec<PodFacts> {
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[1].phase = PodPhase::Failed;
        pods[1].exit_code = Some(code);
        pods
    }

    #[test]
    fn a_fail_job_rule_on_an_exit_code_fails_the_job_naming_the_rule() {
        let mut j = job(2);
        j.failure_rules = vec![rule(
            "FailJob",
            serde_json::json!({"onExitCodes": {"operator": "In", "values": [3, 4]}}),
        )];
        match decide(&j, &failed_with(3), now()) {
            Decision::Fail {
                reason, message, ..
            } => {
                assert_eq!(reason, "PodFailurePolicy");
                assert_eq!(
                    message,
                    "worker j-worker-1 exited with code 3, matching runPolicy.failurePolicy.rules[0] (FailJob)"
                );
            }
            d => panic!("{d:?}"),
        }
        // Other codes keep the defaults.
        assert!(matches!(
            decide(&j, &failed_with(1), now()),
            Decision::Restart { counted: true, .. }
        ));
        assert!(matches!(
            decide(&j, &failed_with(64), now()),
            Decision::Fail {
                reason: "NonRetryableExit",
                ..
            }
        ));
    }

    #[test]
    fn the_first_matching_rule_wins_and_rules_override_the_defaults() {
        let mut j = job(2);
        j.backoff_limit = 0;
        j.failure_rules = vec![
            rule(
                "RestartJobAndIgnoreBackoff",
                serde_json::json!({"onExitCodes": {"operator": "NotIn", "values": [75, 64]}}),
            ),
            rule(
                "FailJob",
                serde_json::json!({"onExitCodes": {"operator": "In", "values": [3]}}),
            ),
            rule(
                "RestartJob",
                serde_json::json!({"onExitCodes": {"operator": "In", "values": [64]}}),
            ),
        ];
        match decide(&j, &failed_with(3), now()) {
            Decision::Restart {
                counted, message, ..
            } => {
                assert!(!counted);
                assert!(
                    message.ends_with(
                        "(runPolicy.failurePolicy.rules[0]: RestartJobAndIgnoreBackoff)"
                    ),
                    "{message}"
                );
            }
            d => panic!("{d:?}"),
        }
        // 64 restarts (and counts: backoffLimit 0 fails) instead of failing at once.
        assert!(matches!(
            decide(&j, &failed_with(64), now()),
            Decision::Fail {
                reason: "BackoffLimitExceeded",
                ..
            }
        ));
        // No rule for 75: the default counts it.
        assert!(matches!(
            decide(&j, &failed_with(75), now()),
            Decision::Fail {
                reason: "BackoffLimitExceeded",
                ..
            }
        ));
    }

    #[test]
    fn a_rule_on_the_disruption_target_condition_can_count_disruptions() {
        let mut j = job(2);
        j.backoff_limit = 0;
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[0].disrupted = Some(("PreemptionByScheduler".into(), "preempted".into()));
        assert!(matches!(
            decide(&j, &pods, now()),
            Decision::Restart { counted: false, .. }
        ));
        j.failure_rules = vec![rule(
            "RestartJob",
            serde_json::json!({"onPodConditions": [{"type": "DisruptionTarget"}]}),
        )];
        assert!(matches!(
            decide(&j, &pods, now()),
            Decision::Fail {
                reason: "BackoffLimitExceeded",
                ..
            }
        ));
        // A lost node is a disruption too; so is a node down past the toleration.
        let mut lost = gang(2, 0, PodPhase::Running);
        lost[1].node_lost = true;
        j.failure_rules[0].action = FailurePolicyAction::FailJob;
        assert!(matches!(
            decide(&j, &lost, now()),
            Decision::Fail {
                reason: "PodFailurePolicy",
                ..
            }
        ));
    }

    #[test]
    fn fail_job_of_any_failed_worker_wins_over_a_restart() {
        let mut j = job(3);
        j.failure_rules = vec![rule(
            "FailJob",
            serde_json::json!({"onExitCodes": {"operator": "In", "values": [3]}}),
        )];
        let mut pods = gang(3, 0, PodPhase::Running);
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        pods[0].phase = PodPhase::Failed;
        pods[0].exit_code = Some(137);
        pods[0].finished_at = at("2026-01-01T11:59:00Z");
        pods[2].phase = PodPhase::Failed;
        pods[2].exit_code = Some(3);
        pods[2].finished_at = at("2026-01-01T11:59:30Z");
        match decide(&j, &pods, now()) {
            Decision::Fail {
                reason, message, ..
            } => {
                assert_eq!(reason, "PodFailurePolicy");
                assert!(message.contains("j-worker-2"), "{message}");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_worker_deleted_by_someone_else_restarts_the_gang() {
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[1].terminating = true;
        match decide(&job(2), &pods, now()) {
            Decision::Restart { reason, delete, .. } => {
                assert_eq!(reason, "WorkerDeleted");
                assert_eq!(
                    delete,
                    vec!["j-worker-0".to_string()],
                    "terminating pods are not deleted twice"
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_worker_that_vanished_after_the_start_restarts_the_gang() {
        let pods = vec![pod(0, 0, PodPhase::Running)];
        assert!(matches!(
            decide(&job(2), &pods, now()),
            Decision::Restart {
                reason: "WorkerLost",
                ..
            }
        ));
    }

    #[test]
    fn restarts_beyond_the_backoff_limit_fail_the_job() {
        let mut j = job(2);
        j.backoff_limit = 1;
        j.restarts = 1;
        j.counted_restarts = 1;
        j.phase = JobPhase::Running;
        let mut pods = gang(2, 1, PodPhase::Running);
        pods[0] = pod(0, 1, PodPhase::Failed);
        match decide(&j, &pods, now()) {
            Decision::Fail {
                reason,
                message,
                delete,
            } => {
                assert_eq!(reason, "BackoffLimitExceeded");
                assert!(message.contains("backoffLimit 1"), "{message}");
                assert_eq!(
                    delete,
                    vec!["j-worker-1".to_string()],
                    "cleanPodPolicy Running"
                );
            }
            d => panic!("{d:?}"),
        }
        j.backoff_limit = 0;
        j.restarts = 0;
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[1] = pod(1, 0, PodPhase::Failed);
        assert!(matches!(
            decide(&j, &pods, now()),
            Decision::Fail {
                reason: "BackoffLimitExceeded",
                ..
            }
        ));
    }

    #[test]
    fn the_first_failure_is_the_reason_not_the_peer_that_lost_it() {
        let mut pods = gang(3, 0, PodPhase::Running);
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        // Rank 2 was killed; ranks 0 and 1 exited 75 for the lost peer, one at the same
        // second and one later.
        pods[2].phase = PodPhase::Failed;
        pods[2].exit_code = Some(137);
        pods[2].finished_at = at("2026-01-01T12:00:05Z");
        pods[0].phase = PodPhase::Failed;
        pods[0].exit_code = Some(75);
        pods[0].finished_at = at("2026-01-01T12:00:05Z");
        pods[1].phase = PodPhase::Failed;
        pods[1].exit_code = Some(75);
        pods[1].finished_at = at("2026-01-01T12:00:06Z");
        match decide(&job(3), &pods, now()) {
            Decision::Restart { message, .. } => {
                assert_eq!(message, "worker j-worker-2 exited with code 137")
            }
            other => panic!("{other:?}"),
        }
        // An earlier failure wins whatever its code.
        pods[1].finished_at = at("2026-01-01T12:00:04Z");
        match decide(&job(3), &pods, now()) {
            Decision::Restart { message, .. } => {
                assert_eq!(message, "worker j-worker-1 exited with code 75")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_trainers_message_is_quoted_in_the_failure() {
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[1].phase = PodPhase::Failed;
        pods[1].exit_code = Some(64);
        pods[1].message = Some("data/sft.jsonl:3: missing field `prompt`\n".into());
        match decide(&job(2), &pods, now()) {
            Decision::Fail { message, .. } => assert_eq!(
                message,
                "worker j-worker-1 exited with code 64 (bad input, not retried): \
                 data/sft.jsonl:3: missing field `prompt`"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exit_code_64_fails_at_once_naming_pod_and_code() {
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[1] = pod(1, 0, PodPhase::Failed);
        pods[1].exit_code = Some(64);
        match decide(&job(2), &pods, now()) {
            Decision::Fail {
                reason, message, ..
            } => {
                assert_eq!(reason, "NonRetryableExit");
                assert!(
                    message.contains("j-worker-1") && message.contains("64"),
                    "{message}"
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn the_deadline_fails_the_job_and_is_requeued_before() {
        let mut j = job(1);
        j.active_deadline_seconds = Some(3600);
        assert!(matches!(
            decide(&j, &gang(1, 0, PodPhase::Running), now()),
            Decision::Fail {
                reason: "DeadlineExceeded",
                ..
            }
        ));
        j.active_deadline_seconds = Some(3700);
        match decide(&j, &gang(1, 0, PodPhase::Running), now()) {
            Decision::Progress { requeue_after, .. } => {
                assert_eq!(requeue_after, Some(Duration::from_secs(100)))
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn suspend_deletes_every_pod() {
        let mut j = job(2);
        j.suspend = true;
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[1].terminating = true;
        assert_eq!(
            decide(&j, &pods, now()),
            Decision::Suspend {
                delete: vec!["j-worker-0".into()]
            }
        );
    }

    #[test]
    fn a_job_kueue_has_not_admitted_or_evicted_has_no_pods() {
        let mut j = job(2);
        j.admitted = false;
        assert_eq!(decide(&j, &[], now()), Decision::Suspend { delete: vec![] });
        assert_eq!(
            decide(&j, &gang(2, 0, PodPhase::Running), now()),
            Decision::Suspend {
                delete: vec!["j-worker-0".into(), "j-worker-1".into()]
            }
        );
    }

    #[test]
    fn resume_recreates_the_gang_without_counting_a_restart() {
        let mut j = job(2);
        j.phase = JobPhase::Suspended;
        match decide(&j, &[], now()) {
            Decision::Progress { create, phase, .. } => {
                assert_eq!(create, vec![0, 1]);
                assert_eq!(phase, JobPhase::Pending);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn resume_while_the_old_pods_terminate_deletes_them_without_a_restart() {
        let mut j = job(2);
        j.phase = JobPhase::Suspended;
        let mut pods = gang(2, 0, PodPhase::Running);
        pods[0].terminating = true;
        assert_eq!(
            decide(&j, &pods, now()),
            Decision::Progress {
                phase: JobPhase::Suspended,
                delete: vec!["j-worker-1".into()],
                create: vec![],
                requeue_after: None
            }
        );
        // Every old pod terminating: wait, still no restart and nothing created.
        pods[1].terminating = true;
        assert_eq!(
            decide(&j, &pods, now()),
            Decision::Progress {
                phase: JobPhase::Suspended,
                delete: vec![],
                create: vec![],
                requeue_after: None
            }
        );
        // Even failed or lost old pods are no gang failure.
        let mut pods = gang(2, 0, PodPhase::Failed);
        pods[1].node_lost = true;
        assert!(matches!(
            decide(&j, &pods, now()),
            Decision::Progress {
                phase: JobPhase::Suspended,
                ..
            }
        ));
    }

    #[test]
    fn a_resumed_job_counts_the_deadline_from_the_resume() {
        let mut j = job(2);
        j.phase = JobPhase::Suspended;
        // Started an hour before the resume: the whole deadline is left.
        j.active_deadline_seconds = Some(3600);
        match decide(&j, &[], now()) {
            Decision::Progress {
                create,
                requeue_after,
                ..
            } => {
                assert_eq!(create, vec![0, 1]);
                assert_eq!(requeue_after, Some(Duration::from_secs(3600)));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn all_ranks_exiting_zero_succeed() {
        let mut j = job(2);
        j.clean_pod_policy = CleanPodPolicy::All;
        assert_eq!(
            decide(&j, &gang(2, 0, PodPhase::Succeeded), now()),
            Decision::Succeed {
                delete: vec!["j-worker-0".into(), "j-worker-1".into()]
            }
        );
        // One rank done, another still running: keep going.
        let pods = vec![pod(0, 0, PodPhase::Succeeded), pod(1, 0, PodPhase::Running)];
        assert!(matches!(
            decide(&job(2), &pods, now()),
            Decision::Progress {
                phase: JobPhase::Running,
                ..
            }
        ));
    }

    #[test]
    fn pods_of_an_older_attempt_are_deleted_before_new_ones_are_created() {
        let mut j = job(2);
        j.restarts = 1;
        j.phase = JobPhase::Restarting;
        let mut pods = gang(2, 0, PodPhase::Failed);
        pods[0].terminating = true;
        match decide(&j, &pods, now()) {
            Decision::Progress {
                phase,
                delete,
                create,
                ..
            } => {
                assert_eq!(phase, JobPhase::Restarting);
                assert_eq!(delete, vec!["j-worker-1".to_string()]);
                assert!(create.is_empty(), "names are reused: wait for the old pods");
            }
            d => panic!("{d:?}"),
        }
        match decide(&j, &[], now()) {
            Decision::Progress { phase, create, .. } => {
                assert_eq!(phase, JobPhase::Restarting);
                assert_eq!(create, vec![0, 1]);
            }
            d => panic!("{d:?}"),
        }
        match decide(&j, &gang(2, 1, PodPhase::Running), now()) {
            Decision::Progress { phase, .. } => assert_eq!(phase, JobPhase::Running),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn finished_jobs_clean_up_and_expire_after_the_ttl() {
        let mut j = job(2);
        j.phase = JobPhase::Succeeded;
        j.completion_time = Some("2026-01-01T11:59:00Z".parse().unwrap());
        let pods = vec![pod(0, 0, PodPhase::Succeeded), pod(1, 0, PodPhase::Running)];
        assert_eq!(
            decide(&j, &pods, now()),
            Decision::Finished {
                delete: vec!["j-worker-1".into()],
                delete_job: false,
                requeue_after: None
            }
        );
        j.ttl_seconds_after_finished = Some(100);
        assert_eq!(
            decide(&j, &[], now()),
            Decision::Finished {
                delete: vec![],
                delete_job: false,
                requeue_after: Some(Duration::from_secs(40))
            }
        );
        j.ttl_seconds_after_finished = Some(60);
        assert!(matches!(
            decide(&j, &[], now()),
            Decision::Finished {
                delete_job: true,
                ..
            }
        ));
        j.clean_pod_policy = CleanPodPolicy::None;
        assert!(
            matches!(decide(&j, &pods, now()), Decision::Finished { ref delete, .. } if delete.is_empty())
        );
        // A failed job is never restarted, whatever its pods do.
        j.phase = JobPhase::Failed;
        let failed = vec![pod(0, 0, PodPhase::Failed)];
        assert!(matches!(
            decide(&j, &failed, now()),
            Decision::Finished { .. }
        ));
    }

    #[test]
    fn pods_of_another_owner_are_not_counted_and_block_creation_until_gone() {
        // A job re-created under the name of a deleted one whose pods still exist.
        let mut pods = gang(2, 0, PodPhase::Running);
        for p in &mut pods {
            p.foreign = true;
        }
        assert_eq!(
            decide(&job(2), &pods, now()),
            Decision::Progress {
                phase: JobPhase::Pending,
                delete: vec![],
                create: vec![],
                requeue_after: Some(FOREIGN_POD_WAIT)
            },
            "not adopted as running, not deleted, nothing created over them"
        );
        // A foreign failed pod is no gang failure of this job.
        pods[1].phase = PodPhase::Failed;
        assert!(matches!(
            decide(&job(2), &pods, now()),
            Decision::Progress { ref create, .. } if create.is_empty()
        ));
        // Gone: the gang is created.
        match decide(&job(2), &[], now()) {
            Decision::Progress { create, .. } => assert_eq!(create, vec![0, 1]),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn pods_with_unexpected_rank_are_stale() {
        let mut p = pod(5, 0, PodPhase::Running);
        p.name = "j-worker-5".into();
        match decide(&job(2), &[p], now()) {
            Decision::Progress { delete, create, .. } => {
                assert_eq!(delete, vec!["j-worker-5".to_string()]);
                assert!(create.is_empty());
            }
            d => panic!("{d:?}"),
        }
    }
}
