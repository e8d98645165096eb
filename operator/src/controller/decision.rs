//! The decision of every kind: the kind's own step while a job is under way, or one of
//! the ends the lifecycle shares (failed, succeeded, suspended, finished earlier). The
//! run loop reads a decision only through what is here.

use std::fmt::Debug;
use std::time::Duration;

use super::lifecycle::Finished;

/// The next step for a job of a kind whose own steps are `S`.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<S> {
    /// Under way: the kind's own step.
    Step(S),
    /// The job failed now.
    Fail {
        reason: &'static str,
        message: String,
        delete: Vec<String>,
    },
    /// The job is done.
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

impl<S> From<Finished> for Decision<S> {
    fn from(f: Finished) -> Self {
        Decision::Finished {
            delete: f.delete,
            delete_job: f.delete_job,
            requeue_after: f.requeue_after,
        }
    }
}

/// What the run loop reads of a kind's own step.
pub trait Step: Debug + Send + Sync {
    /// Pods it deletes.
    fn deletes(&self) -> &[String];
    /// Whether acting on it changes nothing in the cluster.
    fn is_quiet(&self) -> bool;
    /// Whether it deletes a pod or counts a restart (decided again on fresh pods first).
    fn is_destructive(&self) -> bool;
    /// Whether it creates pods.
    fn creates(&self) -> bool;
    /// Reconcile again then at the latest (a deadline, a foreign pod).
    fn requeue_after(&self) -> Option<Duration>;
    /// Restarts it makes (the kind's restart counter).
    fn restarts(&self) -> u64;
}

impl<S: Step> Decision<S> {
    /// Pods it deletes.
    pub fn deletes(&self) -> &[String] {
        match self {
            Decision::Step(s) => s.deletes(),
            Decision::Fail { delete, .. }
            | Decision::Succeed { delete }
            | Decision::Suspend { delete }
            | Decision::Finished { delete, .. } => delete,
        }
    }

    /// Whether acting on it changes nothing in the cluster.
    pub fn is_quiet(&self) -> bool {
        match self {
            Decision::Step(s) => s.is_quiet(),
            Decision::Finished {
                delete, delete_job, ..
            } => delete.is_empty() && !delete_job,
            Decision::Suspend { delete } => delete.is_empty(),
            Decision::Fail { .. } | Decision::Succeed { .. } => false,
        }
    }

    /// Whether it deletes a pod, counts a restart or fails the job: decided again on a
    /// fresh list of the pods first.
    pub fn is_destructive(&self) -> bool {
        match self {
            Decision::Step(s) => s.is_destructive(),
            Decision::Fail { .. } => true,
            d => !d.deletes().is_empty(),
        }
    }

    /// Whether it creates pods.
    pub fn creates(&self) -> bool {
        matches!(self, Decision::Step(s) if s.creates())
    }

    /// Reconcile again then at the latest (a deadline, a foreign pod, the TTL).
    pub fn requeue_after(&self) -> Option<Duration> {
        match self {
            Decision::Step(s) => s.requeue_after(),
            Decision::Finished { requeue_after, .. } => *requeue_after,
            _ => None,
        }
    }

    /// The TTL passed: delete the job.
    pub fn deletes_job(&self) -> bool {
        matches!(
            self,
            Decision::Finished {
                delete_job: true,
                ..
            }
        )
    }

    /// Restarts it makes.
    pub fn restarts(&self) -> u64 {
        match self {
            Decision::Step(s) => s.restarts(),
            _ => 0,
        }
    }
}
