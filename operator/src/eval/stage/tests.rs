//! Unit tests of `eval::stage`.

use super::*;
use crate::controller::testing::{self, now};
use janus_crds::training::CleanPodPolicy;

fn ready() -> Gate {
    Gate::ready("Ready", "")
}

fn job(shards: i32) -> EvalFacts {
    EvalFacts {
        name: "e".into(),
        shards,
        run: testing::run(),
        phase: EvalPhase::Pending,
        restarts: 0,
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
    let mut p = testing::pod(slot.pod_name("e"), slot, attempt, phase);
    if phase == PodPhase::Failed {
        p.container = Some("generate".into());
        p.exit_code = Some(75);
        p.message = Some("connection reset".into());
    }
    p
}

// The lifecycle every kind shares, on this kind's decision.
crate::lifecycle_tests!(EvalFacts, Progress, Slot, EvalPhase);

fn case_pod(shard: i32, phase: PodPhase) -> PodFacts {
    pod(Slot::Generate(shard), 0, phase)
}

fn case_created(step: &Progress) -> Vec<String> {
    step.create.iter().map(|s| s.pod_name("e")).collect()
}

fn case_phase(step: &Progress) -> &'static str {
    step.phase.as_str()
}

fn generation(n: i32, phase: PodPhase) -> Vec<PodFacts> {
    (0..n).map(|i| pod(Slot::Generate(i), 0, phase)).collect()
}

fn progress(d: Decision) -> (EvalPhase, Vec<Slot>, Vec<Restart>, Vec<String>, Vec<Slot>) {
    match d {
        Decision::Step(Progress {
            phase,
            done,
            restart,
            delete,
            create,
            ..
        }) => (phase, done, restart, delete, create),
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
    j.run.clean_pod_policy = CleanPodPolicy::All;
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
    judge.container = Some("judge".into());
    let (phase, _, restart, delete, _) = progress(decide(&j, &[judge], now()));
    assert_eq!(phase, EvalPhase::Judging);
    assert_eq!(restart[0].slot, Slot::Judge);
    assert!(restart[0].message.contains("container judge"));
    assert_eq!(delete, &["e-judge".to_string()]);
}

#[test]
fn restarts_beyond_the_backoff_limit_fail_the_job() {
    let mut j = job(2);
    j.run.backoff_limit = 1;
    j.restarts = 1;
    let mut pods = generation(2, PodPhase::Running);
    pods[0] = pod(Slot::Generate(0), 0, PodPhase::Failed);
    let (reason, message, delete) = testing::failure(decide(&j, &pods, now()));
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
    // Two failures at once with room for one: also over the limit.
    j.restarts = 0;
    pods[1] = pod(Slot::Generate(1), 0, PodPhase::Failed);
    testing::fails(decide(&j, &pods, now()), "BackoffLimitExceeded");
}

#[test]
fn exit_code_64_fails_at_once_naming_pod_container_and_message() {
    let mut j = job(1);
    j.shard_done = vec![true];
    let mut judge = pod(Slot::Judge, 0, PodPhase::Failed);
    judge.container = Some("judge".into());
    judge.exit_code = Some(64);
    judge.message = Some("judge.url: no such host".into());
    let (reason, message, _) = testing::failure(decide(&j, &[judge], now()));
    assert_eq!(reason, "NonRetryableExit");
    testing::says(
        &message,
        &["e-judge", "container judge", "64", "no such host"],
    );
}

#[test]
fn an_evicted_pod_is_recreated_with_its_reason() {
    let mut p = pod(Slot::Generate(0), 0, PodPhase::Failed);
    (p.container, p.exit_code, p.message) = (None, None, None);
    p.reason = Some("Evicted".into());
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
    j.run.start_time = None;
    j.run.active_deadline_seconds = Some(1);
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
    testing::fails(decide(&j, &[], now()), "TrainingJobFailed");
    let mut j = job(1);
    j.baseline = Gate::Failed {
        reason: "BaselineFailed",
        message: "m".into(),
    };
    testing::fails(decide(&j, &[], now()), "BaselineFailed");
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
        Decision::Step(Progress {
            phase,
            create,
            requeue_after,
            ..
        }) => {
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
        Decision::Step(Progress {
            create,
            requeue_after,
            ..
        }) => {
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
        Decision::Step(Progress {
            create,
            requeue_after,
            ..
        }) => {
            assert!(create.is_empty());
            assert_eq!(requeue_after, Some(SECRET_RECHECK));
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

fn down_since(secs_ago: i64) -> Option<crate::controller::pods::NodeDown> {
    Some(crate::controller::pods::NodeDown {
        node: "node-7".into(),
        since: now() - jiff::SignedDuration::from_secs(secs_ago),
        why: "Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)".into(),
        kubelet: crate::controller::nodes::Kubelet::Silent,
    })
}

#[test]
fn a_pod_on_a_node_down_past_the_toleration_is_recreated_uncounted_and_force_deleted() {
    let mut j = job(2);
    j.run.backoff_limit = 0;
    let mut pods = generation(2, PodPhase::Running);
    pods[1].node_down = down_since(200);
    // Within the toleration: waited for, looked at again when it ends.
    let (_, _, restart, delete, _) = progress(decide(&j, &pods, now()));
    assert!(restart.is_empty() && delete.is_empty());
    let toleration = j.run.unreachable_node_toleration_seconds;
    assert_eq!(
        crate::controller::stuck::next_toleration_end(toleration, &pods, now()),
        Some(Duration::from_secs(100))
    );
    // Past it: that pod alone goes (force-deleted), uncounted even at backoffLimit 0.
    pods[1].node_down = down_since(301);
    let (_, _, restart, delete, create) = progress(decide(&j, &pods, now()));
    assert_eq!(restart.len(), 1);
    assert_eq!(restart[0].reason, "NodeUnreachable");
    assert!(!restart[0].counted);
    testing::says(
        &restart[0].message,
        &[
            "node node-7 of pod e-generate-1",
            "(300s)",
            "Kubelet stopped posting",
        ],
    );
    assert_eq!(delete, ["e-generate-1".to_string()]);
    assert!(
        create.is_empty(),
        "the new pod reuses the name once the old one is gone"
    );
    assert_eq!(
        crate::controller::stuck::force_delete(toleration, &pods, &delete, now()),
        ["e-generate-1".to_string()]
    );
}

#[test]
fn a_pod_on_a_lost_node_is_recreated_uncounted() {
    let mut j = job(1);
    j.run.backoff_limit = 0;
    let mut pods = generation(1, PodPhase::Running);
    pods[0].node_lost = true;
    let (_, _, restart, delete, _) = progress(decide(&j, &pods, now()));
    assert_eq!((restart[0].reason, restart[0].counted), ("NodeLost", false));
    assert_eq!(delete, ["e-generate-0".to_string()]);
}

#[test]
fn a_pod_not_running_within_the_scheduling_timeout_fails_quoting_the_wait() {
    let mut j = job(2);
    j.run.scheduling_timeout_seconds = Some(300);
    let created = |secs_ago: i64| Some(now() - jiff::SignedDuration::from_secs(secs_ago));
    let mut pods = vec![
        pod(Slot::Generate(0), 0, PodPhase::Running),
        pod(Slot::Generate(1), 0, PodPhase::Pending),
    ];
    pods[0].created_at = created(1000);
    pods[1].created_at = created(200);
    pods[1].waiting = Some((
        "WorkersPending",
        "cannot be scheduled: 0/4 nodes are available".into(),
    ));
    // 100 s left for the pending pod (the running one is past any timeout).
    let d = decide(&j, &pods, now());
    let Decision::Step(Progress { requeue_after, .. }) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(*requeue_after, Some(Duration::from_secs(100)));
    pods[1].created_at = created(301);
    let (reason, message, _) = testing::failure(decide(&j, &pods, now()));
    assert_eq!(reason, "SchedulingTimeout");
    testing::says(&message, &["e-generate-1", "300s", "0/4 nodes"]);
}
