//! What every kind's unit tests build on: a fixed now, a job's run facts, pod facts,
//! the golden-file check, and the lifecycle's rules as tests any kind runs on its own
//! decision ([`Case`]), so a rule the layer gives every kind is checked for each.

use std::time::Duration;

use janus_crds::training::CleanPodPolicy;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};

use super::children::GPU_RESOURCE;

use super::decision::{Decision, Step};
use super::lifecycle::{Run, FOREIGN_POD_WAIT};
use super::pods::{PodFacts, PodPhase};

/// The tests' now.
pub fn now() -> Timestamp {
    "2026-01-01T12:00:00Z".parse().unwrap()
}

/// The run facts of a job started an hour before [`now`]: backoff limit 3, no deadline
/// nor TTL, cleanPodPolicy Running, toleration 300 s.
pub fn run() -> Run {
    Run {
        backoff_limit: 3,
        active_deadline_seconds: None,
        ttl_seconds_after_finished: None,
        suspend: false,
        clean_pod_policy: CleanPodPolicy::Running,
        scheduling_timeout_seconds: None,
        unreachable_node_toleration_seconds: 300,
        start_time: Some("2026-01-01T11:00:00Z".parse().unwrap()),
        completion_time: None,
    }
}

/// Pod `name` of role `role` at `attempt` in `phase`, owned, on a Ready node.
pub fn pod<R>(name: String, role: R, attempt: i32, phase: PodPhase) -> PodFacts<R> {
    PodFacts {
        name,
        role: Some(role),
        attempt: Some(attempt),
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

/// The reason of a decision that fails the job.
pub fn fail_reason<S: std::fmt::Debug>(d: Decision<S>) -> &'static str {
    match d {
        Decision::Fail { reason, .. } => reason,
        d => panic!("expected the job to fail, got {d:?}"),
    }
}

/// `message` says every one of `words`.
pub fn says(message: &str, words: &[&str]) {
    for w in words {
        assert!(message.contains(w), "{w:?} missing in {message:?}");
    }
}

/// `job` with the default status that `edit` makes.
pub fn with_status<K>(mut job: K, edit: impl FnOnce(&mut K::Status)) -> K
where
    K: kube::core::object::HasStatus,
    K::Status: Default,
{
    edit(job.status_mut().get_or_insert_with(Default::default));
    job
}

/// `d` fails the job with `reason`.
pub fn fails<S: std::fmt::Debug>(d: Decision<S>, reason: &str) {
    assert_eq!(fail_reason(d), reason);
}

/// (reason, message, pods deleted) of a decision that fails the job.
pub fn failure<S: std::fmt::Debug>(d: Decision<S>) -> (&'static str, String, Vec<String>) {
    match d {
        Decision::Fail {
            reason,
            message,
            delete,
        } => (reason, message, delete),
        d => panic!("expected the job to fail, got {d:?}"),
    }
}

/// The plain environment variables of a container.
pub fn env_of(c: &Container) -> std::collections::BTreeMap<String, String> {
    c.env
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect()
}

/// Condition `type_` of `conds`, which has it.
pub fn cond<'a>(conds: &'a [Condition], type_: &str) -> &'a Condition {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conds:?}"))
}

/// `job` as the API server has it: in namespace `research`, with UID `uid`.
pub fn stored<K: kube::Resource>(mut job: K, uid: &str) -> K {
    job.meta_mut().namespace = Some("research".into());
    job.meta_mut().uid = Some(uid.into());
    job
}

/// The GPUs a container's limits ask for.
pub fn gpus(c: &Container) -> &str {
    &c.resources.as_ref().unwrap().limits.as_ref().unwrap()[GPU_RESOURCE].0
}

/// The Secret a container's environment comes from.
pub fn storage_secret(c: &Container) -> &str {
    &c.env_from.as_ref().unwrap()[0]
        .secret_ref
        .as_ref()
        .unwrap()
        .name
}

/// (kind, controller?) of a child's first owner reference.
pub fn owner(meta: &ObjectMeta) -> (&str, Option<bool>) {
    let o = &meta.owner_references.as_ref().unwrap()[0];
    (o.kind.as_str(), o.controller)
}

/// `rendered` is what `operator/<golden>` holds; `JANUS_UPDATE_GOLDEN=1` rewrites it.
pub fn assert_golden(golden: &str, rendered: &str) {
    let path = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join(golden);
    if std::env::var_os("JANUS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, rendered).unwrap();
    }
    let golden_text = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        rendered == golden_text,
        "renderer output differs from {golden}; if the change is intended, rerun with JANUS_UPDATE_GOLDEN=1\n--- rendered ---\n{rendered}"
    );
}

/// A kind's decision as the lifecycle's tests drive it.
pub trait Case: Sized {
    type Role;
    type Step: Step + Clone + PartialEq;
    /// A job under way (Pending) with `n` pods to run, its run facts from [`run`].
    fn job(n: i32) -> Self;
    fn run(&mut self) -> &mut Run;
    /// The status says Succeeded.
    fn succeeded(&mut self);
    /// The status says Suspended (the spec no longer does: it resumes).
    fn resuming(&mut self);
    /// Pod `i` of the current attempt in `phase`.
    fn pod(i: i32, phase: PodPhase) -> PodFacts<Self::Role>;
    fn decide(&self, pods: &[PodFacts<Self::Role>], now: Timestamp) -> Decision<Self::Step>;
    /// The pods a step of the kind creates, by name.
    fn created(step: &Self::Step) -> Vec<String>;
    /// The phase a step reports.
    fn phase(step: &Self::Step) -> &'static str;
}

fn step<C: Case>(d: Decision<C::Step>) -> C::Step {
    match d {
        Decision::Step(s) => s,
        d => panic!("expected a step, got {d:?}"),
    }
}

/// Finished jobs only clean up (cleanPodPolicy Running: the pod still running) and are
/// deleted once the TTL passed, looked at again when it ends.
pub fn finished_jobs_clean_up_and_expire_after_the_ttl<C: Case>() {
    let mut j = C::job(2);
    j.succeeded();
    j.run().completion_time = Some("2026-01-01T11:59:00Z".parse().unwrap());
    let pods = vec![C::pod(0, PodPhase::Succeeded), C::pod(1, PodPhase::Running)];
    let running = pods[1].name.clone();
    assert_eq!(
        j.decide(&pods, now()),
        Decision::Finished {
            delete: vec![running],
            delete_job: false,
            requeue_after: None
        }
    );
    j.run().ttl_seconds_after_finished = Some(100);
    assert_eq!(
        j.decide(&[], now()),
        Decision::Finished {
            delete: vec![],
            delete_job: false,
            requeue_after: Some(Duration::from_secs(40))
        }
    );
    j.run().ttl_seconds_after_finished = Some(60);
    assert!(matches!(
        j.decide(&[], now()),
        Decision::Finished {
            delete_job: true,
            ..
        }
    ));
}

/// `activeDeadlineSeconds` passed fails the job (DeadlineExceeded); before, the job is
/// looked at again when it passes.
pub fn the_deadline_fails_the_job_and_is_requeued_before<C: Case>() {
    let mut j = C::job(1);
    j.run().active_deadline_seconds = Some(3600);
    let pods = vec![C::pod(0, PodPhase::Running)];
    fails(j.decide(&pods, now()), "DeadlineExceeded");
    j.run().active_deadline_seconds = Some(3700);
    let s = step::<C>(j.decide(&pods, now()));
    assert_eq!(s.requeue_after(), Some(Duration::from_secs(100)));
}

/// Suspended: every pod not already going is deleted. Resuming: the old pods go first
/// (still Suspended, nothing created), then the pods are created again.
pub fn suspend_deletes_every_pod_and_resume_waits_for_them_to_go<C: Case>() {
    let mut j = C::job(2);
    j.run().suspend = true;
    let mut pods = vec![C::pod(0, PodPhase::Running), C::pod(1, PodPhase::Running)];
    pods[1].terminating = true;
    assert_eq!(
        j.decide(&pods, now()),
        Decision::Suspend {
            delete: vec![pods[0].name.clone()]
        }
    );
    j.run().suspend = false;
    j.resuming();
    let s = step::<C>(j.decide(&pods, now()));
    assert_eq!(C::phase(&s), "Suspended");
    assert_eq!(s.deletes(), [pods[0].name.clone()]);
    assert!(C::created(&s).is_empty() && s.restarts() == 0, "{s:?}");
    let s = step::<C>(j.decide(&[], now()));
    assert_eq!(C::phase(&s), "Pending");
    assert_eq!(C::created(&s).len(), 2);
}

/// Pods of another owner under the job's names are not counted, not deleted, and
/// block creating pods of their names (looked at again soon) until they are gone.
pub fn pods_of_another_owner_are_not_counted_and_block_their_names<C: Case>() {
    let j = C::job(2);
    let mut pods = vec![C::pod(0, PodPhase::Running), C::pod(1, PodPhase::Running)];
    for p in &mut pods {
        p.foreign = true;
    }
    // Not adopted as running, not deleted, nothing created over them.
    let s = step::<C>(j.decide(&pods, now()));
    assert_eq!(C::phase(&s), "Pending");
    assert!(s.deletes().is_empty() && C::created(&s).is_empty(), "{s:?}");
    assert_eq!(s.requeue_after(), Some(FOREIGN_POD_WAIT));
    // A foreign failed pod is no failure of this job.
    pods[1].phase = PodPhase::Failed;
    let s = step::<C>(j.decide(&pods, now()));
    assert!(
        s.restarts() == 0 && s.deletes().is_empty() && C::created(&s).is_empty(),
        "{s:?}"
    );
    // Gone: the pods are created.
    let s = step::<C>(j.decide(&[], now()));
    assert_eq!(C::created(&s).len(), 2);
}

/// The lifecycle's tests above, as `#[test]`s of a kind: its facts type (with `run`
/// and `phase` fields), its step, its pods' role and its phase enum. The test module
/// has `job(n)`, `decide(job, pods, now)`, and the kind's `case_pod(i, phase)`,
/// `case_created(step)` and `case_phase(step)`.
#[macro_export]
macro_rules! lifecycle_tests {
    ($facts:ty, $step:ty, $role:ty, $phase:ident) => {
        impl $crate::controller::testing::Case for $facts {
            type Role = $role;
            type Step = $step;
            fn job(n: i32) -> Self {
                job(n)
            }
            fn run(&mut self) -> &mut $crate::controller::lifecycle::Run {
                &mut self.run
            }
            fn succeeded(&mut self) {
                self.phase = $phase::Succeeded;
            }
            fn resuming(&mut self) {
                self.phase = $phase::Suspended;
            }
            fn pod(i: i32, phase: PodPhase) -> $crate::controller::pods::PodFacts<$role> {
                case_pod(i, phase)
            }
            fn decide(
                &self,
                pods: &[$crate::controller::pods::PodFacts<$role>],
                now: jiff::Timestamp,
            ) -> $crate::controller::Decision<$step> {
                decide(self, pods, now)
            }
            fn created(step: &$step) -> Vec<String> {
                case_created(step)
            }
            fn phase(step: &$step) -> &'static str {
                case_phase(step)
            }
        }

        #[test]
        fn finished_jobs_clean_up_and_expire_after_the_ttl() {
            $crate::controller::testing::finished_jobs_clean_up_and_expire_after_the_ttl::<$facts>();
        }

        #[test]
        fn the_deadline_fails_the_job_and_is_requeued_before() {
            $crate::controller::testing::the_deadline_fails_the_job_and_is_requeued_before::<$facts>();
        }

        #[test]
        fn suspend_deletes_every_pod_and_resume_waits_for_them_to_go() {
            $crate::controller::testing::suspend_deletes_every_pod_and_resume_waits_for_them_to_go::<$facts>();
        }

        #[test]
        fn pods_of_another_owner_are_not_counted_and_block_their_names() {
            $crate::controller::testing::pods_of_another_owner_are_not_counted_and_block_their_names::<$facts>();
        }
    };
}
