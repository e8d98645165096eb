//! The evaluation's stages as one pure function: from what the job asks for, what it
//! waits on (gates) and what its pods look like, decide the next step. No I/O here, so
//! every rule is unit-tested.
//!
//! Rules:
//! - generation first: one pod per shard, each independent (no gang); a shard is done
//!   once its pod exited 0, and stays done even when the pod is deleted later;
//! - then one judge pod (`judge` then `score`); it exiting 0 succeeds the job;
//! - a pod that Failed (exit code other than 64) or was evicted is deleted and created
//!   again with attempt + 1 (it resumes from the output); more restarts in total than
//!   `backoffLimit` -> Failed (BackoffLimitExceeded);
//! - exit code 64 (bad input) in any container -> Failed at once (NonRetryableExit);
//! - a pod deleted by someone else is created again, not counted (it resumes);
//! - a pod on a node that is gone, or down past `unreachableNodeTolerationSeconds`, is
//!   deleted (force-deleted from a down node) and created again, not counted;
//! - a pod not running `schedulingTimeoutSeconds` after its creation -> Failed
//!   (SchedulingTimeout), quoting why it waits;
//! - `activeDeadlineSeconds` passed (from the first pod or the resume) -> Failed;
//! - `suspend` -> delete the pods (Suspended); resume recreates them;
//! - gates: no pod before the model is known and the storage Secret exists; no judge pod
//!   before the baseline has results and the judge Secret exists; a failed training job
//!   or baseline fails the job;
//! - finished jobs: `cleanPodPolicy` applied; deleted after `ttlSecondsAfterFinished`.

use std::time::Duration;

use janus_crds::eval::{reason, EvalPhase};
use janus_crds::exit_code;
use jiff::Timestamp;

use crate::controller::decision::Step;
use crate::controller::lifecycle::{earliest, names, Deadline, Run, FOREIGN_POD_WAIT};
use crate::controller::pods;
pub use crate::controller::pods::PodPhase;
use crate::controller::stuck::{self, Timeout};

/// A pod's place in the evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    /// Generation shard `i` (pod `J-generate-i`).
    Generate(i32),
    /// The judge pod `J-judge`.
    Judge,
}

impl Slot {
    pub fn pod_name(self, job: &str) -> String {
        match self {
            Slot::Generate(i) => format!("{job}-generate-{i}"),
            Slot::Judge => format!("{job}-judge"),
        }
    }
}

/// Something the job waits on (the model, the baseline, a Secret).
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Ready {
        reason: &'static str,
        message: String,
    },
    /// Not yet: the pods it gates are not created; the reason is a False condition.
    Waiting {
        reason: &'static str,
        message: String,
    },
    /// Never: the job fails with this reason.
    Failed {
        reason: &'static str,
        message: String,
    },
}

impl Gate {
    pub fn ready(reason: &'static str, message: impl Into<String>) -> Gate {
        Gate::Ready {
            reason,
            message: message.into(),
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Gate::Ready { .. })
    }
}

/// What the decision needs from the job.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalFacts {
    /// The job's name (pod names derive from it).
    pub name: String,
    /// Generation pods (`spec.worker.replicas`).
    pub shards: i32,
    /// Its run policy and the times of its status.
    pub run: Run,
    /// Phase in the current status.
    pub phase: EvalPhase,
    /// Pod restarts so far.
    pub restarts: i32,
    /// Current attempt of each shard (index = shard).
    pub shard_attempts: Vec<i32>,
    /// Shards whose pod exited 0 earlier (index = shard).
    pub shard_done: Vec<bool>,
    pub judge_attempt: i32,
    /// Gates every pod.
    pub model: Gate,
    /// Gates every pod (the storage Secret; Ready when there is none).
    pub storage_secret: Gate,
    /// Gates the judge pod (Ready when there is no baseline job).
    pub baseline: Gate,
    /// Gates the judge pod (Ready when there is no key Secret).
    pub judge_secret: Gate,
}

impl EvalFacts {
    pub fn attempt(&self, slot: Slot) -> Option<i32> {
        match slot {
            Slot::Generate(i) if i >= 0 && i < self.shards => {
                Some(self.shard_attempts.get(i as usize).copied().unwrap_or(0))
            }
            Slot::Generate(_) => None,
            Slot::Judge => Some(self.judge_attempt),
        }
    }
}

/// What the decision needs from one pod; its role is its slot.
pub type PodFacts = pods::PodFacts<Slot>;

/// A pod to delete and create again (attempt + 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    pub slot: Slot,
    pub pod: String,
    pub reason: &'static str,
    pub message: String,
    /// Whether `backoffLimit` counts it (a lost or unreachable node does not).
    pub counted: bool,
}

/// The next step for an evaluation (the lifecycle's ends are the layer's).
pub type Decision = crate::controller::Decision<Progress>;

/// An evaluation under way: record `done` slots and `restart`s, delete stale and
/// restarted pods, create the pods of `create`, report `phase`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub phase: EvalPhase,
    pub done: Vec<Slot>,
    pub restart: Vec<Restart>,
    pub delete: Vec<String>,
    pub create: Vec<Slot>,
    /// Reconcile again then (the deadline, a foreign pod, a Secret to look for).
    pub requeue_after: Option<Duration>,
}

impl Step for Progress {
    fn deletes(&self) -> &[String] {
        &self.delete
    }

    fn is_quiet(&self) -> bool {
        self.delete.is_empty()
            && self.create.is_empty()
            && self.restart.is_empty()
            && self.done.is_empty()
    }

    fn is_destructive(&self) -> bool {
        !self.restart.is_empty() || !self.delete.is_empty()
    }

    fn creates(&self) -> bool {
        !self.create.is_empty()
    }

    fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }

    fn restarts(&self) -> u64 {
        self.restart.len() as u64
    }
}

/// How soon to look again for a missing Secret (Secrets are not watched).
pub const SECRET_RECHECK: Duration = Duration::from_secs(10);

fn describe(p: &PodFacts) -> String {
    format!(
        "pod {} (container {}) exited with code {}{}",
        p.name,
        p.container.as_deref().unwrap_or_default(),
        p.exit_code.unwrap_or_default(),
        p.quoted_message()
    )
}

/// The current pods to delete and create again, and why.
fn restarts(job: &EvalFacts, current: &[&PodFacts], now: Timestamp) -> Vec<Restart> {
    let toleration = job.run.unreachable_node_toleration_seconds;
    current
        .iter()
        .filter_map(|p| {
            let (why, message, counted) =
                if let Some((why, m)) = stuck::unreachable(toleration, "pod", p, now) {
                    (why, m, false)
                } else if p.phase == PodPhase::Failed {
                    match p.exit_code {
                        _ if p.evicted() => (
                            reason::POD_EVICTED,
                            format!("pod {} was evicted", p.name),
                            true,
                        ),
                        Some(_) => (reason::POD_FAILED, describe(p), true),
                        None => (reason::POD_FAILED, format!("pod {} failed", p.name), true),
                    }
                } else if p.node_lost && !p.finished() {
                    (
                        reason::NODE_LOST,
                        format!("the node of pod {} is gone", p.name),
                        false,
                    )
                } else {
                    return None;
                };
            Some(Restart {
                slot: p.role.expect("current pods have a slot"),
                pod: p.name.clone(),
                reason: why,
                message,
                counted,
            })
        })
        .collect()
}

pub fn decide(job: &EvalFacts, pods: &[PodFacts], now: Timestamp) -> Decision {
    // 1. Finished jobs only clean up and expire.
    if job.phase.is_finished() {
        return job.run.finished(pods, now).into();
    }
    let owned: Vec<&PodFacts> = pods.iter().filter(|p| !p.foreign).collect();

    // 2. Suspended: no pods.
    if job.run.suspend {
        return Decision::Suspend {
            delete: names(owned.iter().copied()),
        };
    }

    // 3. Resuming: wait until the pods of the run before the suspend are gone (they carry
    //    the current attempts and would read as failures or as running shards).
    let resuming = job.phase == EvalPhase::Suspended;
    if resuming && !owned.is_empty() {
        return Decision::Step(Progress {
            phase: EvalPhase::Suspended,
            done: vec![],
            restart: vec![],
            delete: names(owned.iter().copied()),
            create: vec![],
            requeue_after: None,
        });
    }

    // 4. What can never become ready fails the job.
    for gate in [&job.model, &job.baseline] {
        if let Gate::Failed { reason, message } = gate {
            return Decision::Fail {
                reason,
                message: message.clone(),
                delete: job.run.cleanup(pods),
            };
        }
    }

    // 5. Deadline, from the first pod (waiting for the model does not count) or the resume.
    let deadline = job.run.deadline(resuming, now);
    if let Deadline::Passed { deadline } = deadline {
        return Decision::Fail {
            reason: reason::DEADLINE_EXCEEDED,
            message: format!("the evaluation ran longer than activeDeadlineSeconds ({deadline}s)"),
            delete: job.run.cleanup(pods),
        };
    }

    // 6. Current pods carry their slot's attempt; anything else of ours is stale.
    let (current, stale): (Vec<&PodFacts>, Vec<&PodFacts>) =
        owned.iter().partition(|p| match p.role {
            Some(slot) => job.attempt(slot).is_some() && p.attempt == job.attempt(slot),
            None => false,
        });
    match failure(job, pods, &current, now) {
        Ok(restart) => progress(
            job,
            pods,
            &current,
            &stale,
            restart,
            deadline.requeue_after(),
            now,
        ),
        Err(fail) => fail,
    }
}

/// 7-8. Bad input fails the job at once; other failures (and lost or unreachable
/// nodes) restart that one pod, while the backoff limit allows; a pod not running
/// within the scheduling timeout fails the job.
fn failure(
    job: &EvalFacts,
    pods: &[PodFacts],
    current: &[&PodFacts],
    now: Timestamp,
) -> Result<Vec<Restart>, Decision> {
    let fail = |reason, message| Decision::Fail {
        reason,
        message,
        delete: job.run.cleanup(pods),
    };
    for p in current {
        if p.phase == PodPhase::Failed && p.exit_code == Some(exit_code::BAD_INPUT) {
            let message = format!("{} (bad input, not retried)", describe(p));
            return Err(fail(reason::NON_RETRYABLE_EXIT, message));
        }
    }
    let restart = restarts(job, current, now);
    let counted = restart.iter().filter(|r| r.counted).count() as i32;
    if let Some(first) = restart.iter().find(|r| r.counted) {
        if job.restarts + counted > job.run.backoff_limit {
            let message = format!(
                "{}; {} pod restarts already (backoffLimit {})",
                first.message, job.restarts, job.run.backoff_limit
            );
            return Err(fail(reason::BACKOFF_LIMIT_EXCEEDED, message));
        }
    }
    let pending = current
        .iter()
        .filter(|p| p.phase == PodPhase::Pending && !p.terminating)
        .filter(|p| !restart.iter().any(|r| r.pod == p.name));
    for p in pending {
        let timeout = job.run.scheduling_timeout_seconds;
        if let Timeout::Passed { timeout, why } =
            stuck::scheduling(timeout, &[p], false, "pod", now)
        {
            let message = format!(
                "pod {} was not running {timeout}s (runPolicy.schedulingTimeoutSeconds) after it was created{why}",
                p.name
            );
            return Err(fail(reason::SCHEDULING_TIMEOUT, message));
        }
    }
    Ok(restart)
}

/// 9-10. Which shards are done and whether the judge is; what is due and not gated is
/// created, once no pod holds its name.
fn progress(
    job: &EvalFacts,
    pods: &[PodFacts],
    current: &[&PodFacts],
    stale: &[&PodFacts],
    restart: Vec<Restart>,
    mut requeue_after: Option<Duration>,
    now: Timestamp,
) -> Decision {
    let succeeded = |slot: Slot| {
        current
            .iter()
            .any(|p| p.role == Some(slot) && p.phase == PodPhase::Succeeded)
    };
    let was_done = |i: i32| job.shard_done.get(i as usize).copied().unwrap_or(false);
    let done: Vec<Slot> = (0..job.shards)
        .filter(|i| !was_done(*i) && succeeded(Slot::Generate(*i)))
        .map(Slot::Generate)
        .collect();
    let shard_is_done = |i: i32| was_done(i) || done.contains(&Slot::Generate(i));
    let generated = (0..job.shards).all(shard_is_done);
    if generated && succeeded(Slot::Judge) {
        return Decision::Succeed {
            delete: job.run.cleanup(pods),
        };
    }
    let due: Vec<Slot> = if generated {
        vec![Slot::Judge]
    } else {
        (0..job.shards)
            .filter(|i| !shard_is_done(*i))
            .map(Slot::Generate)
            .collect()
    };
    let (create, wait) = creatable(job, pods, due);
    if let Some(w) = wait {
        requeue_after = earliest(requeue_after, w);
    }
    // A pending pod's scheduling timeout.
    for p in current.iter().filter(|p| p.phase == PodPhase::Pending) {
        let timeout = job.run.scheduling_timeout_seconds;
        if let Timeout::Left(left) = stuck::scheduling(timeout, &[p], false, "pod", now) {
            requeue_after = earliest(requeue_after, left);
        }
    }
    let mut delete = names(stale.iter().copied());
    delete.extend(
        restart
            .iter()
            .filter(|r| current.iter().any(|p| p.name == r.pod && !p.terminating))
            .map(|r| r.pod.clone()),
    );
    let started = current
        .iter()
        .any(|p| matches!(p.phase, PodPhase::Running | PodPhase::Succeeded))
        || (0..job.shards).any(shard_is_done);
    let phase = if generated {
        EvalPhase::Judging
    } else if job.phase == EvalPhase::Generating || started {
        EvalPhase::Generating
    } else {
        EvalPhase::Pending
    };
    Decision::Step(Progress {
        phase,
        done,
        restart,
        delete,
        create,
        requeue_after,
    })
}

/// Of the `due` slots, those to create now (not gated, no pod holds the name), and how
/// soon to look again for the others (a foreign pod's name, an unwatched Secret).
fn creatable(job: &EvalFacts, pods: &[PodFacts], due: Vec<Slot>) -> (Vec<Slot>, Option<Duration>) {
    let mut create = vec![];
    let mut wait = None;
    for slot in due {
        // (gate, whether it is a Secret: Secrets are not watched, so look again soon)
        let mut gates = vec![(&job.model, false), (&job.storage_secret, true)];
        if slot == Slot::Judge {
            gates.extend([(&job.baseline, false), (&job.judge_secret, true)]);
        }
        if let Some((_, secret)) = gates.iter().find(|(g, _)| !g.is_ready()) {
            if *secret {
                wait = earliest(wait, SECRET_RECHECK);
            }
            continue;
        }
        let name = slot.pod_name(&job.name);
        match pods.iter().find(|p| p.name == name) {
            Some(p) if p.foreign => wait = earliest(wait, FOREIGN_POD_WAIT),
            // Running, restarting (names are reused: wait until the old pod is gone),
            // or deleted by someone else and not gone yet.
            Some(_) => {}
            None => create.push(slot),
        }
    }
    (create, wait)
}

#[cfg(test)]
mod tests;
