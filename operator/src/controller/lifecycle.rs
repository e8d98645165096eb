//! The lifecycle every kind shares, as pure functions of its run policy, its status and
//! its pods: a finished job only cleans up (`cleanPodPolicy`) and expires
//! (`ttlSecondsAfterFinished`, deleted with a UID precondition by the run loop); a
//! suspended job has no pods, and a resumed one first waits for the pods of the run
//! before the suspend to go; `activeDeadlineSeconds` counts from the start or the
//! resume; pods of another owner (a deleted job's, same name) are never counted and
//! only hold their names.

use std::time::Duration;

use janus_crds::training::CleanPodPolicy;
use jiff::Timestamp;

use super::pods::PodFacts;

/// What the lifecycle (and the stuck states) read of a job of any kind: its run policy
/// (every kind's `runPolicy` has these fields, with Kubeflow's names and meanings) and
/// the times of its status. Made by [`run_facts!`](crate::run_facts).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub backoff_limit: i32,
    pub active_deadline_seconds: Option<i64>,
    pub ttl_seconds_after_finished: Option<i32>,
    pub suspend: bool,
    pub clean_pod_policy: CleanPodPolicy,
    /// `runPolicy.schedulingTimeoutSeconds`.
    pub scheduling_timeout_seconds: Option<i64>,
    /// `runPolicy.unreachableNodeTolerationSeconds`.
    pub unreachable_node_toleration_seconds: i64,
    /// When the job (last) started or resumed.
    pub start_time: Option<Timestamp>,
    /// When it Succeeded or Failed.
    pub completion_time: Option<Timestamp>,
}

/// The [`Run`] of a kind whose `runPolicy` is `$rp` and whose status is `$s` (their
/// fields are named alike in every kind).
#[macro_export]
macro_rules! run_facts {
    ($rp:expr, $s:expr) => {
        $crate::controller::lifecycle::Run {
            backoff_limit: $rp.backoff_limit,
            active_deadline_seconds: $rp.active_deadline_seconds,
            ttl_seconds_after_finished: $rp.ttl_seconds_after_finished,
            suspend: $rp.suspend,
            clean_pod_policy: $rp.clean_pod_policy,
            scheduling_timeout_seconds: $rp.scheduling_timeout_seconds,
            unreachable_node_toleration_seconds: $rp.unreachable_node_toleration_seconds,
            start_time: $s.start_time.as_ref().map(|t| t.0),
            completion_time: $s.completion_time.as_ref().map(|t| t.0),
        }
    };
}

impl Run {
    /// What a finished job does now (see [`finished`]).
    pub fn finished<R>(&self, pods: &[PodFacts<R>], now: Timestamp) -> Finished {
        finished(
            self.ttl_seconds_after_finished,
            self.completion_time,
            self.clean_pod_policy,
            pods,
            now,
        )
    }

    /// Pods its `cleanPodPolicy` deletes once it finished.
    pub fn cleanup<R>(&self, pods: &[PodFacts<R>]) -> Vec<String> {
        cleanup(self.clean_pod_policy, pods)
    }

    /// Its deadline, counted from its start, or from now when it resumes (the status's
    /// startTime is reset in the same reconcile).
    pub fn deadline(&self, resuming: bool, now: Timestamp) -> Deadline {
        let start = if resuming { Some(now) } else { self.start_time };
        deadline(self.active_deadline_seconds, start, now)
    }
}

/// How soon to look again while a pod of another owner holds a name we need.
pub const FOREIGN_POD_WAIT: Duration = Duration::from_secs(2);

/// Seconds as a duration to wait (none when negative).
pub fn secs(d: i64) -> Duration {
    Duration::from_secs(d.max(0) as u64)
}

/// The sooner of a wait already planned and `b`.
pub fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Names of the pods to delete of `pods`: those not already being deleted.
pub fn names<'a, R: 'a>(pods: impl IntoIterator<Item = &'a PodFacts<R>>) -> Vec<String> {
    pods.into_iter()
        .filter(|p| !p.terminating)
        .map(|p| p.name.clone())
        .collect()
}

/// Pods `cleanPodPolicy` deletes once the job finished (never another owner's).
pub fn cleanup<R>(policy: CleanPodPolicy, pods: &[PodFacts<R>]) -> Vec<String> {
    let owned = pods.iter().filter(|p| !p.foreign);
    match policy {
        CleanPodPolicy::None => vec![],
        CleanPodPolicy::All => names(owned),
        CleanPodPolicy::Running => names(owned.filter(|p| !p.finished())),
    }
}

/// What a finished job does: clean up, and delete itself once its TTL passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub delete: Vec<String>,
    pub delete_job: bool,
    /// When the TTL ends (reconcile then).
    pub requeue_after: Option<Duration>,
}

/// A finished job (completed at `completion_time`) under `ttl_seconds_after_finished`.
pub fn finished<R>(
    ttl_seconds_after_finished: Option<i32>,
    completion_time: Option<Timestamp>,
    policy: CleanPodPolicy,
    pods: &[PodFacts<R>],
    now: Timestamp,
) -> Finished {
    let (delete_job, requeue_after) = match (ttl_seconds_after_finished, completion_time) {
        (Some(ttl), Some(done)) => {
            let left = ttl as i64 - now.duration_since(done).as_secs();
            (left <= 0, (left > 0).then(|| secs(left)))
        }
        _ => (false, None),
    };
    Finished {
        delete: cleanup(policy, pods),
        delete_job,
        requeue_after,
    }
}

/// Where a job stands with `activeDeadlineSeconds`.
#[derive(Debug, Clone, PartialEq)]
pub enum Deadline {
    /// No deadline, or not started.
    None,
    /// This long left (reconcile then).
    Left(Duration),
    /// Passed: the job fails with DeadlineExceeded.
    Passed { deadline: i64 },
}

/// The deadline of a run that started at `start` (a resumed run starts now).
pub fn deadline(
    active_deadline_seconds: Option<i64>,
    start: Option<Timestamp>,
    now: Timestamp,
) -> Deadline {
    match (active_deadline_seconds, start) {
        (Some(deadline), Some(start)) => {
            let left = deadline - now.duration_since(start).as_secs();
            if left <= 0 {
                Deadline::Passed { deadline }
            } else {
                Deadline::Left(secs(left))
            }
        }
        _ => Deadline::None,
    }
}

impl Deadline {
    /// The wait it adds to `requeue_after`.
    pub fn requeue_after(&self) -> Option<Duration> {
        match self {
            Deadline::Left(d) => Some(*d),
            _ => None,
        }
    }
}

/// `pods` without those of another owner.
pub fn owned<R: Clone>(pods: &[PodFacts<R>]) -> Vec<PodFacts<R>> {
    pods.iter().filter(|p| !p.foreign).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::pods::PodPhase;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn pod(name: &str, phase: PodPhase) -> PodFacts<()> {
        PodFacts {
            name: name.into(),
            role: Some(()),
            attempt: Some(0),
            phase,
            terminating: false,
            container: None,
            exit_code: None,
            message: None,
            finished_at: None,
            created_at: None,
            reason: None,
            waiting: None,
            disrupted: None,
            node_lost: false,
            node_down: None,
            foreign: false,
        }
    }

    #[test]
    fn clean_pod_policy_deletes_running_all_or_none_never_anothers_or_terminating_pods() {
        let mut foreign = pod("f", PodPhase::Running);
        foreign.foreign = true;
        let mut going = pod("g", PodPhase::Running);
        going.terminating = true;
        let pods = vec![
            pod("r", PodPhase::Running),
            pod("s", PodPhase::Succeeded),
            foreign,
            going,
        ];
        assert_eq!(cleanup(CleanPodPolicy::Running, &pods), ["r"]);
        assert_eq!(cleanup(CleanPodPolicy::All, &pods), ["r", "s"]);
        assert!(cleanup(CleanPodPolicy::None, &pods).is_empty());
    }

    #[test]
    fn a_finished_job_expires_after_its_ttl_and_is_looked_at_again_then() {
        let done = Some("2026-01-01T11:59:00Z".parse().unwrap());
        let f = finished::<()>(Some(100), done, CleanPodPolicy::None, &[], now());
        assert_eq!(
            (f.delete_job, f.requeue_after),
            (false, Some(Duration::from_secs(40)))
        );
        let f = finished::<()>(Some(60), done, CleanPodPolicy::None, &[], now());
        assert_eq!((f.delete_job, f.requeue_after), (true, None));
        let f = finished::<()>(None, done, CleanPodPolicy::None, &[], now());
        assert_eq!((f.delete_job, f.requeue_after), (false, None));
    }

    #[test]
    fn the_deadline_counts_from_the_start() {
        let start = Some("2026-01-01T11:00:00Z".parse().unwrap());
        assert_eq!(
            deadline(Some(3600), start, now()),
            Deadline::Passed { deadline: 3600 }
        );
        assert_eq!(
            deadline(Some(3601), start, now()),
            Deadline::Left(Duration::from_secs(1))
        );
        assert_eq!(deadline(Some(1), None, now()), Deadline::None);
        assert_eq!(deadline(None, start, now()), Deadline::None);
    }
}
