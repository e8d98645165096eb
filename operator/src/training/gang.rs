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
//!   override these three defaults: the first rule matching the gang's first failure
//!   decides (FailJob, RestartJob, RestartJobAndIgnoreBackoff);
//! - a restarted gang's pods wait out `runPolicy.restartBackoff` ([`restart_wait`]);
//! - a worker's node NotReady or unreachable past `unreachableNodeTolerationSeconds`,
//!   or out of service -> restart without counting; the pods on an unreachable or
//!   out-of-service node are force-deleted (no kubelet will confirm their deletion, and
//!   the new gang reuses their names), those on a NotReady node (its kubelet reports)
//!   deleted with their grace period and waited for;
//! - `activeDeadlineSeconds` passed -> Failed (DeadlineExceeded);
//! - `suspend` -> delete the pods (Suspended); resume recreates them;
//! - every rank exited 0 -> Succeeded;
//! - finished jobs: `cleanPodPolicy` applied; deleted after `ttlSecondsAfterFinished`.

use std::time::Duration;

use janus_crds::exit_code;
use janus_crds::training::{
    reason, ExitCodeOperator, FailurePolicyAction, FailurePolicyRule, JobPhase, PodConditionType,
    RestartBackoff,
};
use jiff::Timestamp;

use crate::controller::decision::Step;
use crate::controller::lifecycle::{self, earliest, names, Deadline, Run, FOREIGN_POD_WAIT};
use crate::controller::pods;
pub use crate::controller::pods::{NodeDown, PodPhase};
use crate::controller::stuck::{self, past_toleration, Timeout};

/// What the decision needs from the job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFacts {
    pub replicas: i32,
    /// Its run policy and the times of its status.
    pub run: Run,
    /// `runPolicy.failurePolicy.rules`.
    pub failure_rules: Vec<FailurePolicyRule>,
    /// Kueue admitted the job's Workload (always true for a job without a queue name):
    /// a job Kueue has not admitted, or evicted, is held suspended.
    pub admitted: bool,
    /// Phase in the current status.
    pub phase: JobPhase,
    /// Gang restarts so far = the current attempt.
    pub restarts: i32,
    /// Of those, the ones `backoffLimit` counts (disruptions do not).
    pub counted_restarts: i32,
    /// `runPolicy.restartBackoff` (its defaults when left out).
    pub backoff: RestartBackoff,
    /// Restarts in a row so far (`status.consecutiveRestarts`).
    pub consecutive_restarts: i32,
    /// The restarted gang's pods wait until then (`status.restartNotBefore`).
    pub restart_not_before: Option<Timestamp>,
    /// Since when every worker has been running (the `Running` condition's last
    /// transition, while it is True).
    pub running_since: Option<Timestamp>,
}

/// The restart `job` makes now (`counted`: towards `backoffLimit`): which one in a
/// row it is, and how long its new gang waits. The first after a healthy run (every
/// worker running `resetAfterSeconds`), or the job's first, starts at once; in a row, a
/// counted one waits `initialSeconds` doubled per restart before it (at most
/// `maxSeconds`), an uncounted one `initialSeconds` (never hot, never doubled).
pub fn restart_wait(job: &JobFacts, counted: bool, now: Timestamp) -> (i32, Duration) {
    let b = &job.backoff;
    let healthy = job
        .running_since
        .is_some_and(|t| now.duration_since(t).as_secs() >= b.reset_after_seconds);
    let streak = if healthy {
        1
    } else {
        job.consecutive_restarts + 1
    };
    let secs = match streak {
        ..=1 => 0,
        _ if !counted => b.initial_seconds,
        n => {
            let doublings = u32::try_from(n - 2).unwrap_or(u32::MAX).min(30);
            b.initial_seconds
                .saturating_mul(1i64 << doublings)
                .min(b.max_seconds.max(b.initial_seconds))
        }
    };
    (streak, Duration::from_secs(secs.max(0) as u64))
}

/// What the decision needs from one worker pod; its role is its rank.
pub type PodFacts = pods::PodFacts<i32>;

/// Pods to delete with grace period 0 (see [`stuck::force_delete`]).
pub fn force_delete(
    job: &JobFacts,
    pods: &[PodFacts],
    delete: &[String],
    now: Timestamp,
) -> Vec<String> {
    stuck::force_delete(
        job.run.unreachable_node_toleration_seconds,
        pods,
        delete,
        now,
    )
}

/// When a toleration of a down node ends next (reconcile then).
pub fn next_toleration_end(job: &JobFacts, pods: &[PodFacts], now: Timestamp) -> Option<Duration> {
    stuck::next_toleration_end(job.run.unreachable_node_toleration_seconds, pods, now)
}

/// The next step for a job (the lifecycle's ends are the layer's).
pub type Decision = crate::controller::Decision<Gang>;

/// A gang under way.
#[derive(Debug, Clone, PartialEq)]
pub enum Gang {
    /// Delete pods of older attempts, create the missing ranks of the current attempt
    /// (only once no older pod remains: names are reused), report `phase`.
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
}

impl Step for Gang {
    fn deletes(&self) -> &[String] {
        match self {
            Gang::Progress { delete, .. } | Gang::Restart { delete, .. } => delete,
        }
    }

    fn is_quiet(&self) -> bool {
        matches!(self, Gang::Progress { delete, create, .. } if delete.is_empty() && create.is_empty())
    }

    fn is_destructive(&self) -> bool {
        matches!(self, Gang::Restart { .. }) || !self.deletes().is_empty()
    }

    fn creates(&self) -> bool {
        matches!(self, Gang::Progress { create, .. } if !create.is_empty())
    }

    fn requeue_after(&self) -> Option<Duration> {
        match self {
            Gang::Progress { requeue_after, .. } => *requeue_after,
            Gang::Restart { .. } => None,
        }
    }

    fn restarts(&self) -> u64 {
        u64::from(matches!(self, Gang::Restart { .. }))
    }
}

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
    let toleration = job.run.unreachable_node_toleration_seconds;
    let mut by_cause: Vec<&PodFacts> = current.to_vec();
    by_cause.sort_by_key(|p| {
        (
            !past_toleration(toleration, p, now) || p.finished(),
            p.disrupted.is_none(),
            p.phase != PodPhase::Failed,
            p.finished_at,
            p.exit_code == Some(exit_code::RETRYABLE),
            p.role,
        )
    });
    by_cause
        .into_iter()
        .filter_map(|p| failure(toleration, p, now))
        .collect()
}

/// What went wrong with worker `p`, if anything.
fn failure(toleration: i64, p: &PodFacts, now: Timestamp) -> Option<Failure> {
    let exit_code = p.exit_code.filter(|_| p.phase == PodPhase::Failed);
    let (reason, message, disruption) =
        if let Some((reason, message)) = stuck::unreachable(toleration, "worker", p, now) {
            (reason, message, true)
        } else if let Some((why, msg)) = &p.disrupted {
            let message = format!("worker {} was disrupted ({why}: {msg})", p.name);
            (reason::WORKER_DISRUPTED, message, true)
        } else if p.phase == PodPhase::Failed && p.evicted() {
            // The kubelet's node-pressure eviction: a disruption too.
            let message = format!("worker {} was evicted", p.name);
            (reason::WORKER_EVICTED, message, true)
        } else if p.phase == PodPhase::Failed {
            let message = match exit_code {
                Some(c) => format!(
                    "worker {} exited with code {c}{}",
                    p.name,
                    p.quoted_message()
                ),
                None => format!("worker {} failed", p.name),
            };
            (reason::WORKER_FAILED, message, false)
        } else if p.node_lost && !p.finished() {
            let message = format!("the node of worker {} is gone", p.name);
            (reason::NODE_LOST, message, true)
        } else if p.terminating && !p.finished() {
            let message = format!("worker {} was deleted", p.name);
            (reason::WORKER_DELETED, message, false)
        } else {
            return None;
        };
    Some(Failure {
        reason,
        message,
        exit_code,
        disruption,
    })
}

/// What the failure policy makes of one failure: the action, and the index of the rule
/// that matched (None: the defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Judgement {
    action: FailurePolicyAction,
    rule: Option<usize>,
}

/// The first rule matching `f`, else the defaults: exit code 64 (bad input) or 65 (the
/// fabric check failed) fails the job, a
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
    let action = if matches!(
        f.exit_code,
        Some(exit_code::BAD_INPUT | exit_code::FABRIC_CHECK_FAILED)
    ) {
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
    let mut d = decide_owned(job, &lifecycle::owned(pods), now);
    if let Decision::Step(Gang::Progress {
        create,
        requeue_after,
        ..
    }) = &mut d
    {
        if !create.is_empty() {
            create.clear();
            *requeue_after = earliest(*requeue_after, FOREIGN_POD_WAIT);
        }
    }
    d
}

fn decide_owned(job: &JobFacts, pods: &[PodFacts], now: Timestamp) -> Decision {
    // 1. Finished jobs only clean up and expire.
    if job.phase.is_finished() {
        return job.run.finished(pods, now).into();
    }

    // 2. Suspended (by the user, or held by Kueue): no pods.
    if job.run.suspend || !job.admitted {
        return Decision::Suspend {
            delete: names(pods),
        };
    }

    // 3. Resuming: the pods still there belong to the run before the suspend. Suspend
    //    only deleted them, so they still carry the current attempt and would read as a
    //    lost gang; wait until they are gone before starting the run again. The phase
    //    stays Suspended until they are gone: it is how the next reconcile still knows
    //    that these pods are stale rather than a gang failure.
    let resuming = job.phase == JobPhase::Suspended;
    if resuming && !pods.is_empty() {
        return Decision::Step(Gang::Progress {
            phase: JobPhase::Suspended,
            delete: names(pods),
            create: vec![],
            requeue_after: None,
        });
    }

    // 4. Deadline, counted from the start of this run (a resumed run starts now: the
    //    status's startTime is reset in the same reconcile).
    let deadline = job.run.deadline(resuming, now);
    if let Deadline::Passed { deadline } = deadline {
        return Decision::Fail {
            reason: reason::DEADLINE_EXCEEDED,
            message: format!("the job ran longer than activeDeadlineSeconds ({deadline}s)"),
            delete: job.run.cleanup(pods),
        };
    }

    let attempt = job.restarts;
    let (current, stale): (Vec<&PodFacts>, Vec<&PodFacts>) = pods.iter().partition(|p| {
        p.attempt == Some(attempt) && p.role.is_some_and(|r| r >= 0 && r < job.replicas)
    });
    let missing: Vec<i32> = (0..job.replicas)
        .filter(|r| !current.iter().any(|p| p.role == Some(*r)))
        .collect();
    if let Some(d) = gang_failure(job, pods, &current, &missing, now) {
        return d;
    }

    // 7. Success: every rank of the current attempt exited 0.
    if missing.is_empty()
        && current.len() as i32 == job.replicas
        && current.iter().all(|p| p.phase == PodPhase::Succeeded)
    {
        return Decision::Succeed {
            delete: job.run.cleanup(pods),
        };
    }
    progress(
        job,
        pods,
        &current,
        &stale,
        missing,
        deadline.requeue_after(),
        now,
    )
}

/// 5-6. Gang failures: a worker failed, was disrupted (evicted, preempted, its node lost
/// or down past the toleration), deleted under us, or a rank is missing after the gang
/// started. `runPolicy.failurePolicy` (else the defaults) says what each failed worker
/// does to the job.
fn gang_failure(
    job: &JobFacts,
    pods: &[PodFacts],
    current: &[&PodFacts],
    missing: &[i32],
    now: Timestamp,
) -> Option<Decision> {
    let started = current
        .iter()
        .any(|p| matches!(p.phase, PodPhase::Running | PodPhase::Succeeded));
    let mut failures: Vec<Failure> = failures(job, current, now);
    if failures.is_empty() && started && !missing.is_empty() {
        failures.push(Failure {
            reason: reason::WORKER_LOST,
            message: format!("the worker of rank {} disappeared", missing[0]),
            exit_code: None,
            disruption: false,
        });
    }
    // The gang's first failure is judged, by the first rule matching it (as JobSet
    // judges its first failed child): the peers that lose it exit too, and their exits
    // say nothing of the cause.
    let f = failures.first()?;
    let j = judge(&job.failure_rules, f);
    if j.action == FailurePolicyAction::FailJob {
        let (reason, message) = match j.rule {
            Some(i) => (
                reason::POD_FAILURE_POLICY,
                format!(
                    "{}, matching runPolicy.failurePolicy.rules[{i}] (FailJob)",
                    f.message
                ),
            ),
            None if f.exit_code == Some(exit_code::FABRIC_CHECK_FAILED) => (
                reason::FABRIC_CHECK_FAILED,
                f.message.replacen(
                    &format!("with code {}", exit_code::FABRIC_CHECK_FAILED),
                    &format!(
                        "with code {} (the fabric check failed, not retried)",
                        exit_code::FABRIC_CHECK_FAILED
                    ),
                    1,
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
        return Some(Decision::Fail {
            reason,
            message,
            delete: job.run.cleanup(pods),
        });
    }
    let counted = j.action == FailurePolicyAction::RestartJob;
    let message = match j.rule {
        Some(i) => format!(
            "{} (runPolicy.failurePolicy.rules[{i}]: {})",
            f.message,
            j.action.as_str()
        ),
        None => f.message.clone(),
    };
    if counted && job.counted_restarts + 1 > job.run.backoff_limit {
        return Some(Decision::Fail {
            reason: reason::BACKOFF_LIMIT_EXCEEDED,
            message: format!(
                "{message}; {} counted gang restarts already (backoffLimit {})",
                job.counted_restarts, job.run.backoff_limit
            ),
            delete: job.run.cleanup(pods),
        });
    }
    Some(Decision::Step(Gang::Restart {
        reason: f.reason,
        message,
        delete: names(pods),
        counted,
    }))
}

/// Step 8, progress: remove older attempts first (pod names are reused), then create;
/// a gang not running within `schedulingTimeoutSeconds` fails.
fn progress(
    job: &JobFacts,
    pods: &[PodFacts],
    current: &[&PodFacts],
    stale: &[&PodFacts],
    missing: Vec<i32>,
    mut requeue_after: Option<Duration>,
    now: Timestamp,
) -> Decision {
    let delete = names(stale.iter().copied());
    let mut create = if stale.is_empty() { missing } else { vec![] };
    // A restarted gang waits out its backoff before any pod is made.
    if let Some(left) = job
        .restart_not_before
        .map(|t| t.duration_since(now).as_secs_f64())
        .filter(|l| *l > 0.0 && !create.is_empty())
    {
        create.clear();
        requeue_after = earliest(requeue_after, Duration::from_secs_f64(left));
    }
    let all_running = current.len() as i32 == job.replicas
        && current
            .iter()
            .all(|p| matches!(p.phase, PodPhase::Running | PodPhase::Succeeded));
    match stuck::scheduling(
        job.run.scheduling_timeout_seconds,
        current,
        all_running,
        "worker",
        now,
    ) {
        Timeout::Passed { timeout, why } => {
            return Decision::Fail {
                reason: reason::SCHEDULING_TIMEOUT,
                message: format!(
                    "the gang was not running {timeout}s (runPolicy.schedulingTimeoutSeconds) after its first pod was created{why}"
                ),
                delete: job.run.cleanup(pods),
            };
        }
        Timeout::Left(left) => requeue_after = earliest(requeue_after, left),
        Timeout::None => {}
    }
    let phase = if all_running {
        JobPhase::Running
    } else if job.phase == JobPhase::Restarting || !stale.is_empty() {
        JobPhase::Restarting
    } else {
        JobPhase::Pending
    };
    Decision::Step(Gang::Progress {
        phase,
        delete,
        create,
        requeue_after,
    })
}

#[cfg(test)]
mod tests;
