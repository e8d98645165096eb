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
//! - `activeDeadlineSeconds` passed (from the first pod or the resume) -> Failed;
//! - `suspend` -> delete the pods (Suspended); resume recreates them;
//! - gates: no pod before the model is known and the storage Secret exists; no judge pod
//!   before the baseline has results and the judge Secret exists; a failed training job
//!   or baseline fails the job;
//! - finished jobs: `cleanPodPolicy` applied; deleted after `ttlSecondsAfterFinished`.

use std::time::Duration;

use janus_crds::eval::{reason, EvalPhase, PodPhase};
use janus_crds::exit_code;
use janus_crds::training::CleanPodPolicy;
use jiff::Timestamp;

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
    pub backoff_limit: i32,
    pub active_deadline_seconds: Option<i64>,
    pub ttl_seconds_after_finished: Option<i32>,
    pub suspend: bool,
    pub clean_pod_policy: CleanPodPolicy,
    /// Phase in the current status.
    pub phase: EvalPhase,
    /// Pod restarts so far.
    pub restarts: i32,
    pub start_time: Option<Timestamp>,
    pub completion_time: Option<Timestamp>,
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
    fn attempt(&self, slot: Slot) -> Option<i32> {
        match slot {
            Slot::Generate(i) if i >= 0 && i < self.shards => {
                Some(self.shard_attempts.get(i as usize).copied().unwrap_or(0))
            }
            Slot::Generate(_) => None,
            Slot::Judge => Some(self.judge_attempt),
        }
    }
}

/// Why a container stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    pub container: String,
    pub exit_code: i32,
    /// The container's termination message (the `janus` error), if any.
    pub message: Option<String>,
}

/// What the decision needs from one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFacts {
    pub name: String,
    /// From the stage and shard labels; `None` for a pod with unreadable labels.
    pub slot: Option<Slot>,
    pub attempt: Option<i32>,
    pub phase: PodPhase,
    /// Has a deletionTimestamp.
    pub terminating: bool,
    /// The first container (init containers first) that exited non-zero.
    pub failure: Option<Termination>,
    /// `status.reason` is `Evicted`.
    pub evicted: bool,
    /// Its controller is another object (a deleted job of the same name): never
    /// counted, only blocks creating a pod of the same name.
    pub foreign: bool,
}

impl PodFacts {
    fn finished(&self) -> bool {
        matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// A failed pod to delete and create again (attempt + 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    pub slot: Slot,
    pub pod: String,
    pub reason: &'static str,
    pub message: String,
}

/// The next step for an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Under way: record `done` slots and `restart`s, delete stale and restarted pods,
    /// create the pods of `create`, report `phase`.
    Progress {
        phase: EvalPhase,
        done: Vec<Slot>,
        restart: Vec<Restart>,
        delete: Vec<String>,
        create: Vec<Slot>,
        /// Reconcile again then (the deadline, a foreign pod, a Secret to look for).
        requeue_after: Option<Duration>,
    },
    /// The job failed now.
    Fail {
        reason: &'static str,
        message: String,
        delete: Vec<String>,
    },
    /// The judge pod exited 0.
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

/// How soon to look again while a pod of another owner holds a name we need.
pub const FOREIGN_POD_WAIT: Duration = Duration::from_secs(2);
/// How soon to look again for a missing Secret (Secrets are not watched).
pub const SECRET_RECHECK: Duration = Duration::from_secs(10);

fn names<'a>(pods: impl IntoIterator<Item = &'a PodFacts>) -> Vec<String> {
    pods.into_iter()
        .filter(|p| !p.terminating)
        .map(|p| p.name.clone())
        .collect()
}

fn cleanup(policy: CleanPodPolicy, pods: &[PodFacts]) -> Vec<String> {
    let owned = pods.iter().filter(|p| !p.foreign);
    match policy {
        CleanPodPolicy::None => vec![],
        CleanPodPolicy::All => names(owned),
        CleanPodPolicy::Running => names(owned.filter(|p| !p.finished())),
    }
}

fn secs(d: i64) -> Duration {
    Duration::from_secs(d.max(0) as u64)
}

fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn describe(p: &PodFacts, t: &Termination) -> String {
    let mut m = format!(
        "pod {} (container {}) exited with code {}",
        p.name, t.container, t.exit_code
    );
    if let Some(msg) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        m.push_str(": ");
        m.push_str(msg);
    }
    m
}

pub fn decide(job: &EvalFacts, pods: &[PodFacts], now: Timestamp) -> Decision {
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
    let owned: Vec<&PodFacts> = pods.iter().filter(|p| !p.foreign).collect();

    // 2. Suspended: no pods.
    if job.suspend {
        return Decision::Suspend {
            delete: names(owned.iter().copied()),
        };
    }

    // 3. Resuming: wait until the pods of the run before the suspend are gone (they carry
    //    the current attempts and would read as failures or as running shards).
    let resuming = job.phase == EvalPhase::Suspended;
    if resuming && !owned.is_empty() {
        return Decision::Progress {
            phase: EvalPhase::Suspended,
            done: vec![],
            restart: vec![],
            delete: names(owned.iter().copied()),
            create: vec![],
            requeue_after: None,
        };
    }

    // 4. What can never become ready fails the job.
    for gate in [&job.model, &job.baseline] {
        if let Gate::Failed { reason, message } = gate {
            return Decision::Fail {
                reason,
                message: message.clone(),
                delete: cleanup(job.clean_pod_policy, pods),
            };
        }
    }

    // 5. Deadline, from the first pod (waiting for the model does not count) or the resume.
    let mut requeue_after = None;
    let start = if resuming { Some(now) } else { job.start_time };
    if let (Some(deadline), Some(start)) = (job.active_deadline_seconds, start) {
        let left = deadline - now.duration_since(start).as_secs();
        if left <= 0 {
            return Decision::Fail {
                reason: reason::DEADLINE_EXCEEDED,
                message: format!(
                    "the evaluation ran longer than activeDeadlineSeconds ({deadline}s)"
                ),
                delete: cleanup(job.clean_pod_policy, pods),
            };
        }
        requeue_after = Some(secs(left));
    }

    // 6. Current pods carry their slot's attempt; anything else of ours is stale.
    let (current, stale): (Vec<&PodFacts>, Vec<&PodFacts>) =
        owned.iter().partition(|p| match p.slot {
            Some(slot) => job.attempt(slot).is_some() && p.attempt == job.attempt(slot),
            None => false,
        });

    // 7. Bad input fails the job at once.
    for p in &current {
        if let Some(t) = &p.failure {
            if p.phase == PodPhase::Failed && t.exit_code == exit_code::BAD_INPUT {
                return Decision::Fail {
                    reason: reason::NON_RETRYABLE_EXIT,
                    message: format!("{} (bad input, not retried)", describe(p, t)),
                    delete: cleanup(job.clean_pod_policy, pods),
                };
            }
        }
    }

    // 8. Other failures: delete and recreate that one pod, while the backoff limit allows.
    let restart: Vec<Restart> = current
        .iter()
        .filter(|p| p.phase == PodPhase::Failed)
        .map(|p| {
            let (why, message) = match &p.failure {
                _ if p.evicted => (reason::POD_EVICTED, format!("pod {} was evicted", p.name)),
                Some(t) => (reason::POD_FAILED, describe(p, t)),
                None => (reason::POD_FAILED, format!("pod {} failed", p.name)),
            };
            Restart {
                slot: p.slot.expect("current pods have a slot"),
                pod: p.name.clone(),
                reason: why,
                message,
            }
        })
        .collect();
    if let Some(first) = restart.first() {
        if job.restarts + restart.len() as i32 > job.backoff_limit {
            return Decision::Fail {
                reason: reason::BACKOFF_LIMIT_EXCEEDED,
                message: format!(
                    "{}; {} pod restarts already (backoffLimit {})",
                    first.message, job.restarts, job.backoff_limit
                ),
                delete: cleanup(job.clean_pod_policy, pods),
            };
        }
    }

    // 9. Which shards are done, and whether the judge is.
    let succeeded = |slot: Slot| {
        current
            .iter()
            .any(|p| p.slot == Some(slot) && p.phase == PodPhase::Succeeded)
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
            delete: cleanup(job.clean_pod_policy, pods),
        };
    }

    // 10. Create what is due and not gated, once no pod holds its name.
    let due: Vec<Slot> = if generated {
        vec![Slot::Judge]
    } else {
        (0..job.shards)
            .filter(|i| !shard_is_done(*i))
            .map(Slot::Generate)
            .collect()
    };
    let mut create = vec![];
    let mut waits_for_secret = false;
    for slot in due {
        // (gate, whether it is a Secret: Secrets are not watched, so look again soon)
        let mut gates = vec![(&job.model, false), (&job.storage_secret, true)];
        if slot == Slot::Judge {
            gates.extend([(&job.baseline, false), (&job.judge_secret, true)]);
        }
        if let Some((_, secret)) = gates.iter().find(|(g, _)| !g.is_ready()) {
            waits_for_secret |= *secret;
            continue;
        }
        let name = slot.pod_name(&job.name);
        match pods.iter().find(|p| p.name == name) {
            Some(p) if p.foreign => requeue_after = earliest(requeue_after, FOREIGN_POD_WAIT),
            // Running, restarting (names are reused: wait until the old pod is gone),
            // or deleted by someone else and not gone yet.
            Some(_) => {}
            None => create.push(slot),
        }
    }
    if waits_for_secret {
        requeue_after = earliest(requeue_after, SECRET_RECHECK);
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
    Decision::Progress {
        phase,
        done,
        restart,
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

    fn ready() -> Gate {
        Gate::ready("Ready", "")
    }

    fn job(shards: i32) -> EvalFacts {
        EvalFacts {
            name: "e".into(),
            shards,
            backoff_limit: 3,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            suspend: false,
            clean_pod_policy: CleanPodPolicy::Running,
            phase: EvalPhase::Pending,
            restarts: 0,
            start_time: Some("2026-01-01T11:00:00Z".parse().unwrap()),
            completion_time: None,
            shard_attempts: vec![0; shards as usize],
            shard_done: vec![false; shards as usize],
            judge_attempt: 0,
            model: ready(),
            storage_secret: ready(),
            baseline: ready(),
            judge_secret: ready(),
        }
    }

    fn pod(slot: Slot, attempt: i32, phase: PodPhase) -> PodFacts {
        PodFacts {
            name: slot.pod_name("e"),
            slot: Some(slot),
            attempt: Some(attempt),
            phase,
            terminating: false,
            failure: (phase == PodPhase::Failed).then(|| Termination {
                container: "generate".into(),
                exit_code: 75,
                message: Some("connection reset".into()),
            }),
            evicted: false,
            foreign: false,
        }
    }

    fn generation(n: i32, phase: PodPhase) -> Vec<PodFacts> {
        (0..n).map(|i| pod(Slot::Generate(i), 0, phase)).collect()
    }

    fn progress(d: Decision) -> (EvalPhase, Vec<Slot>, Vec<Restart>, Vec<String>, Vec<Slot>) {
        match d {
            Decision::Progress {
                phase,
                done,
                restart,
                delete,
                create,
                ..
            } => (phase, done, restart, delete, create),
            d => panic!("expected Progress, got {d:?}"),
        }
    }

    #[test]
    fn a_new_job_creates_one_pod_per_shard_and_no_judge() {
        let d = decide(&job(3), &[], now());
        let (phase, _, _, _, create) = progress(d);
        assert_eq!(phase, EvalPhase::Pending);
        assert_eq!(
            create,
            &[Slot::Generate(0), Slot::Generate(1), Slot::Generate(2)]
        );
    }

    #[test]
    fn running_generation_pods_are_generating_and_create_nothing() {
        let d = decide(&job(2), &generation(2, PodPhase::Running), now());
        let (phase, done, restart, delete, create) = progress(d);
        assert_eq!(phase, EvalPhase::Generating);
        assert!(done.is_empty() && restart.is_empty() && delete.is_empty() && create.is_empty());
    }

    #[test]
    fn the_judge_starts_only_when_every_shard_succeeded() {
        let mut pods = generation(2, PodPhase::Succeeded);
        pods[1].phase = PodPhase::Running;
        let d = decide(&job(2), &pods, now());
        let (phase, done, _, _, create) = progress(d);
        assert_eq!(phase, EvalPhase::Generating);
        assert_eq!(done, &[Slot::Generate(0)]);
        assert!(create.is_empty(), "no judge while shard 1 runs");

        pods[1].phase = PodPhase::Succeeded;
        let d = decide(&job(2), &pods, now());
        let (phase, done, _, _, create) = progress(d);
        assert_eq!(phase, EvalPhase::Judging);
        assert_eq!(done, &[Slot::Generate(0), Slot::Generate(1)]);
        assert_eq!(create, &[Slot::Judge]);
    }

    #[test]
    fn done_shards_stay_done_after_their_pods_are_gone() {
        let mut j = job(2);
        j.shard_done = vec![true, true];
        j.phase = EvalPhase::Generating;
        let (phase, done, _, _, create) = progress(decide(&j, &[], now()));
        assert_eq!(phase, EvalPhase::Judging);
        assert!(done.is_empty(), "already recorded");
        assert_eq!(create, &[Slot::Judge], "not one generation pod again");
    }

    #[test]
    fn the_judge_pod_exiting_zero_succeeds_the_job() {
        let mut j = job(1);
        j.shard_done = vec![true];
        j.clean_pod_policy = CleanPodPolicy::All;
        let pods = vec![
            pod(Slot::Generate(0), 0, PodPhase::Succeeded),
            pod(Slot::Judge, 0, PodPhase::Succeeded),
        ];
        assert_eq!(
            decide(&j, &pods, now()),
            Decision::Succeed {
                delete: vec!["e-generate-0".into(), "e-judge".into()]
            }
        );
    }

    #[test]
    fn a_failed_shard_is_recreated_alone_and_counted() {
        let mut pods = generation(3, PodPhase::Running);
        pods[1] = pod(Slot::Generate(1), 0, PodPhase::Failed);
        let d = decide(&job(3), &pods, now());
        let (phase, _, restart, delete, create) = progress(d);
        assert_eq!(phase, EvalPhase::Generating);
        assert_eq!(restart.len(), 1);
        assert_eq!(restart[0].slot, Slot::Generate(1));
        assert_eq!(restart[0].reason, "PodFailed");
        assert!(
            restart[0].message.contains("e-generate-1")
                && restart[0].message.contains("75")
                && restart[0].message.contains("connection reset"),
            "{}",
            restart[0].message
        );
        assert_eq!(delete, &["e-generate-1".to_string()], "only the failed pod");
        assert!(
            create.is_empty(),
            "the name is reused: wait until it is gone"
        );

        // Next look: the shard is at attempt 1 and its old pod is gone -> create it.
        let mut j = job(3);
        j.restarts = 1;
        j.shard_attempts = vec![0, 1, 0];
        let pods = vec![pods[0].clone(), pods[2].clone()];
        let (_, _, restart, _, create) = progress(decide(&j, &pods, now()));
        assert!(restart.is_empty());
        assert_eq!(create, &[Slot::Generate(1)]);
    }

    #[test]
    fn a_failed_pod_seen_again_after_its_restart_is_stale_not_counted_twice() {
        let mut j = job(2);
        j.restarts = 1;
        j.shard_attempts = vec![0, 1];
        let pods = vec![
            pod(Slot::Generate(0), 0, PodPhase::Running),
            pod(Slot::Generate(1), 0, PodPhase::Failed),
        ];
        let (_, _, restart, delete, create) = progress(decide(&j, &pods, now()));
        assert!(restart.is_empty());
        assert_eq!(delete, &["e-generate-1".to_string()]);
        assert!(create.is_empty());
    }

    #[test]
    fn a_failed_judge_is_recreated_and_resumes() {
        let mut j = job(1);
        j.shard_done = vec![true];
        let mut judge = pod(Slot::Judge, 0, PodPhase::Failed);
        judge.failure.as_mut().unwrap().container = "judge".into();
        let (phase, _, restart, delete, _) = progress(decide(&j, &[judge], now()));
        assert_eq!(phase, EvalPhase::Judging);
        assert_eq!(restart[0].slot, Slot::Judge);
        assert!(restart[0].message.contains("container judge"));
        assert_eq!(delete, &["e-judge".to_string()]);
    }

    #[test]
    fn restarts_beyond_the_backoff_limit_fail_the_job() {
        let mut j = job(2);
        j.backoff_limit = 1;
        j.restarts = 1;
        let mut pods = generation(2, PodPhase::Running);
        pods[0] = pod(Slot::Generate(0), 0, PodPhase::Failed);
        match decide(&j, &pods, now()) {
            Decision::Fail {
                reason,
                message,
                delete,
            } => {
                assert_eq!(reason, "BackoffLimitExceeded");
                assert!(
                    message.contains("e-generate-0") && message.contains("backoffLimit 1"),
                    "{message}"
                );
                assert_eq!(
                    delete,
                    vec!["e-generate-1".to_string()],
                    "cleanPodPolicy Running"
                );
            }
            d => panic!("{d:?}"),
        }
        // Two failures at once with room for one: also over the limit.
        j.restarts = 0;
        pods[1] = pod(Slot::Generate(1), 0, PodPhase::Failed);
        assert!(matches!(
            decide(&j, &pods, now()),
            Decision::Fail {
                reason: "BackoffLimitExceeded",
                ..
            }
        ));
    }

    #[test]
    fn exit_code_64_fails_at_once_naming_pod_container_and_message() {
        let mut j = job(1);
        j.shard_done = vec![true];
        let mut judge = pod(Slot::Judge, 0, PodPhase::Failed);
        judge.failure = Some(Termination {
            container: "judge".into(),
            exit_code: 64,
            message: Some("judge.url: no such host".into()),
        });
        match decide(&j, &[judge], now()) {
            Decision::Fail {
                reason, message, ..
            } => {
                assert_eq!(reason, "NonRetryableExit");
                assert!(
                    message.contains("e-judge")
                        && message.contains("container judge")
                        && message.contains("64")
                        && message.contains("no such host"),
                    "{message}"
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn an_evicted_pod_is_recreated_with_its_reason() {
        let mut p = pod(Slot::Generate(0), 0, PodPhase::Failed);
        p.failure = None;
        p.evicted = true;
        let (_, _, restart, _, _) = progress(decide(&job(1), &[p], now()));
        assert_eq!(restart[0].reason, "PodEvicted");
    }

    #[test]
    fn a_pod_deleted_by_someone_else_is_recreated_without_counting() {
        let mut pods = generation(2, PodPhase::Running);
        pods[1].terminating = true;
        let (_, _, restart, delete, create) = progress(decide(&job(2), &pods, now()));
        assert!(restart.is_empty() && delete.is_empty() && create.is_empty());
        let (_, _, restart, _, create) = progress(decide(&job(2), &pods[..1], now()));
        assert!(restart.is_empty());
        assert_eq!(create, &[Slot::Generate(1)]);
    }

    #[test]
    fn waiting_for_the_model_creates_nothing() {
        let mut j = job(2);
        j.start_time = None;
        j.active_deadline_seconds = Some(1);
        j.model = Gate::Waiting {
            reason: "WaitingForTrainingJob",
            message: "m".into(),
        };
        let (phase, _, _, _, create) = progress(decide(&j, &[], now()));
        assert_eq!(phase, EvalPhase::Pending);
        assert!(create.is_empty());
    }

    #[test]
    fn a_failed_training_job_or_baseline_fails_the_job() {
        let mut j = job(1);
        j.model = Gate::Failed {
            reason: "TrainingJobFailed",
            message: "JanusTrainingJob sft failed: x".into(),
        };
        assert!(matches!(
            decide(&j, &[], now()),
            Decision::Fail {
                reason: "TrainingJobFailed",
                ..
            }
        ));
        let mut j = job(1);
        j.baseline = Gate::Failed {
            reason: "BaselineFailed",
            message: "m".into(),
        };
        assert!(matches!(
            decide(&j, &[], now()),
            Decision::Fail {
                reason: "BaselineFailed",
                ..
            }
        ));
    }

    #[test]
    fn a_missing_judge_secret_holds_only_the_judge_and_looks_again() {
        let mut j = job(1);
        j.judge_secret = Gate::Waiting {
            reason: "SecretNotFound",
            message: "m".into(),
        };
        // Generation goes ahead.
        let d = decide(&j, &[], now());
        assert_eq!(progress(d).4, &[Slot::Generate(0)]);
        // The judge waits, and the Secret is looked for again soon.
        j.shard_done = vec![true];
        match decide(&j, &[], now()) {
            Decision::Progress {
                phase,
                create,
                requeue_after,
                ..
            } => {
                assert_eq!(phase, EvalPhase::Judging);
                assert!(create.is_empty());
                assert_eq!(requeue_after, Some(SECRET_RECHECK));
            }
            d => panic!("{d:?}"),
        }
        // Same for the baseline, without the Secret recheck (baselines are watched).
        j.judge_secret = ready();
        j.baseline = Gate::Waiting {
            reason: "WaitingForBaseline",
            message: "m".into(),
        };
        match decide(&j, &[], now()) {
            Decision::Progress {
                create,
                requeue_after,
                ..
            } => {
                assert!(create.is_empty());
                assert_eq!(requeue_after, None);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_missing_storage_secret_holds_every_pod() {
        let mut j = job(2);
        j.storage_secret = Gate::Waiting {
            reason: "SecretNotFound",
            message: "m".into(),
        };
        match decide(&j, &[], now()) {
            Decision::Progress {
                create,
                requeue_after,
                ..
            } => {
                assert!(create.is_empty());
                assert_eq!(requeue_after, Some(SECRET_RECHECK));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn the_deadline_fails_the_job_and_is_requeued_before() {
        let mut j = job(1);
        j.active_deadline_seconds = Some(3600);
        assert!(matches!(
            decide(&j, &generation(1, PodPhase::Running), now()),
            Decision::Fail {
                reason: "DeadlineExceeded",
                ..
            }
        ));
        j.active_deadline_seconds = Some(3700);
        match decide(&j, &generation(1, PodPhase::Running), now()) {
            Decision::Progress { requeue_after, .. } => {
                assert_eq!(requeue_after, Some(Duration::from_secs(100)))
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn suspend_deletes_every_pod_and_resume_waits_for_them_to_go() {
        let mut j = job(2);
        j.suspend = true;
        let mut pods = generation(2, PodPhase::Running);
        pods[1].terminating = true;
        assert_eq!(
            decide(&j, &pods, now()),
            Decision::Suspend {
                delete: vec!["e-generate-0".into()]
            }
        );
        j.suspend = false;
        j.phase = EvalPhase::Suspended;
        let (phase, _, restart, delete, create) = progress(decide(&j, &pods, now()));
        assert_eq!(phase, EvalPhase::Suspended);
        assert!(restart.is_empty() && create.is_empty());
        assert_eq!(delete, &["e-generate-0".to_string()]);
        let (phase, _, _, _, create) = progress(decide(&j, &[], now()));
        assert_eq!(phase, EvalPhase::Pending);
        assert_eq!(create.len(), 2);
    }

    #[test]
    fn finished_jobs_clean_up_and_expire_after_the_ttl() {
        let mut j = job(1);
        j.phase = EvalPhase::Succeeded;
        j.completion_time = Some("2026-01-01T11:59:00Z".parse().unwrap());
        let pods = vec![
            pod(Slot::Generate(0), 0, PodPhase::Succeeded),
            pod(Slot::Judge, 0, PodPhase::Running),
        ];
        assert_eq!(
            decide(&j, &pods, now()),
            Decision::Finished {
                delete: vec!["e-judge".into()],
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
    }

    #[test]
    fn pods_of_another_owner_are_not_counted_and_block_their_names() {
        let mut pods = generation(2, PodPhase::Failed);
        for p in &mut pods {
            p.foreign = true;
        }
        match decide(&job(2), &pods, now()) {
            Decision::Progress {
                restart,
                create,
                delete,
                requeue_after,
                ..
            } => {
                assert!(restart.is_empty() && create.is_empty() && delete.is_empty());
                assert_eq!(requeue_after, Some(FOREIGN_POD_WAIT));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn pods_of_unknown_shards_are_stale() {
        let p = pod(Slot::Generate(5), 0, PodPhase::Running);
        let (_, _, _, delete, create) = progress(decide(&job(2), &[p], now()));
        assert_eq!(delete, &["e-generate-5".to_string()]);
        assert_eq!(create.len(), 2);
    }
}
