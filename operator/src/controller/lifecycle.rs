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
