//! Unit tests of `training::gang`.

use super::*;
use crate::controller::nodes::Kubelet;
use crate::controller::testing::{self, now};
use janus_crds::training::CleanPodPolicy;

fn job(replicas: i32) -> JobFacts {
    JobFacts {
        replicas,
        run: testing::run(),
        failure_rules: vec![],
        admitted: true,
        phase: JobPhase::Pending,
        restarts: 0,
        counted_restarts: 0,
        backoff: RestartBackoff::default(),
        consecutive_restarts: 0,
        restart_not_before: None,
        running_since: None,
    }
}

fn pod(rank: i32, attempt: i32, phase: PodPhase) -> PodFacts {
    let mut p = testing::pod(format!("j-worker-{rank}"), rank, attempt, phase);
    p.exit_code = match phase {
        PodPhase::Succeeded => Some(0),
        PodPhase::Failed => Some(75),
        _ => None,
    };
    p
}

// The lifecycle every kind shares, on this kind's decision.
crate::lifecycle_tests!(JobFacts, Gang, i32, JobPhase);

fn case_pod(rank: i32, phase: PodPhase) -> PodFacts {
    pod(rank, 0, phase)
}

fn case_created(step: &Gang) -> Vec<String> {
    match step {
        Gang::Progress { create, .. } => create.iter().map(|r| format!("j-worker-{r}")).collect(),
        Gang::Restart { .. } => vec![],
    }
}

fn case_phase(step: &Gang) -> &'static str {
    match step {
        Gang::Progress { phase, .. } => phase.as_str(),
        Gang::Restart { .. } => "Restarting",
    }
}

#[test]
fn a_gang_not_running_within_the_scheduling_timeout_fails_quoting_the_wait() {
    let mut j = job(2);
    j.run.scheduling_timeout_seconds = Some(300);
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
        Decision::Step(Gang::Progress {
            requeue_after,
            create,
            ..
        }) => {
            assert!(create.is_empty());
            assert_eq!(requeue_after, Some(Duration::from_secs(100)));
        }
        d => panic!("{d:?}"),
    }
    pods[0].created_at = created(301);
    let (reason, message, _) = testing::failure(decide(&j, &pods, now()));
    assert_eq!(reason, "SchedulingTimeout");
    assert!(
        message.contains("300s") && message.contains("j-worker-1") && message.contains("0/4 nodes"),
        "{message}"
    );
    // A running gang is past it.
    pods[1] = pod(1, 0, PodPhase::Running);
    pods[1].created_at = created(400);
    assert!(matches!(
        decide(&j, &pods, now()),
        Decision::Step(Gang::Progress {
            phase: JobPhase::Running,
            ..
        })
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
        Decision::Step(Gang::Restart {
            reason,
            message,
            counted,
            ..
        }) => {
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
    testing::fails(decide(&j, &[failed, peer], now()), "BackoffLimitExceeded");
    // The kubelet's eviction and a lost node do not count either.
    let mut evicted = pod(0, 5, PodPhase::Failed);
    evicted.reason = Some("Evicted".into());
    assert!(matches!(
        decide(&j, &[evicted, pod(1, 5, PodPhase::Running)], now()),
        Decision::Step(Gang::Restart { counted: false, .. })
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
        Decision::Step(Gang::Progress {
            phase: JobPhase::Pending,
            delete: vec![],
            create: vec![0, 1, 2],
            requeue_after: None
        })
    );
}

#[test]
fn only_missing_ranks_are_created_before_the_gang_starts() {
    let pods = vec![pod(0, 0, PodPhase::Pending), pod(2, 0, PodPhase::Pending)];
    match decide(&job(3), &pods, now()) {
        Decision::Step(Gang::Progress { create, phase, .. }) => {
            assert_eq!(create, vec![1]);
            assert_eq!(phase, JobPhase::Pending);
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn all_workers_running_is_running() {
    match decide(&job(2), &gang(2, 0, PodPhase::Running), now()) {
        Decision::Step(Gang::Progress {
            phase,
            create,
            delete,
            ..
        }) => {
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
        Decision::Step(Gang::Restart {
            reason,
            message,
            delete,
            counted,
        }) => {
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
        Decision::Step(Gang::Restart {
            reason: "WorkerEvicted",
            ..
        })
    ));
}

#[test]
fn a_lost_node_restarts_the_gang() {
    let mut pods = gang(2, 0, PodPhase::Running);
    pods[1].node_lost = true;
    assert!(matches!(
        decide(&job(2), &pods, now()),
        Decision::Step(Gang::Restart {
            reason: "NodeLost",
            ..
        })
    ));
}

fn down_since(secs_ago: i64) -> Option<NodeDown> {
    Some(NodeDown {
        node: "node-7".into(),
        since: now() - jiff::SignedDuration::from_secs(secs_ago),
        why: "Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)".into(),
        kubelet: Kubelet::Silent,
    })
}

/// A node whose kubelet reports NotReady (its containers may still run).
fn not_ready_since(secs_ago: i64) -> Option<NodeDown> {
    Some(NodeDown {
        node: "node-7".into(),
        since: now() - jiff::SignedDuration::from_secs(secs_ago),
        why: "Ready=False (KubeletNotReady: container runtime network not ready)".into(),
        kubelet: Kubelet::Alive,
    })
}

#[test]
fn a_node_down_within_the_toleration_is_waited_for() {
    let mut pods = gang(2, 0, PodPhase::Running);
    pods[1].node_down = down_since(100);
    let j = job(2);
    assert!(matches!(
        decide(&j, &pods, now()),
        Decision::Step(Gang::Progress {
            phase: JobPhase::Running,
            ..
        })
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
        Decision::Step(Gang::Progress { .. })
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
    j.run.backoff_limit = 0;
    match decide(&j, &pods, now()) {
        Decision::Step(Gang::Restart {
            reason,
            message,
            delete,
            counted,
        }) => {
            assert_eq!(reason, "NodeUnreachable");
            assert!(!counted, "a lost node is a disruption");
            testing::says(
                &message,
                &[
                    "node node-7 of worker j-worker-1",
                    "301s",
                    "(300s)",
                    "Kubelet stopped posting node status.",
                ],
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
        matches!(&d, Decision::Step(Gang::Progress { create, .. }) if create.is_empty()),
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

#[test]
fn a_not_ready_node_past_the_toleration_restarts_uncounted_and_never_force_deletes() {
    let mut pods = gang(2, 0, PodPhase::Running);
    pods[1].node_down = not_ready_since(100);
    let mut j = job(2);
    j.run.backoff_limit = 0;
    assert!(matches!(
        decide(&j, &pods, now()),
        Decision::Step(Gang::Progress { .. })
    ));
    pods[1].node_down = not_ready_since(301);
    match decide(&j, &pods, now()) {
        Decision::Step(Gang::Restart {
            reason,
            message,
            delete,
            counted,
        }) => {
            assert_eq!(reason, "NodeNotReady");
            assert!(!counted);
            testing::says(
                &message,
                &[
                    "node node-7 of worker j-worker-1",
                    "NotReady for 301s",
                    "(300s)",
                    "container runtime network not ready",
                    "grace period, never forced",
                ],
            );
            assert_eq!(delete, names(&pods), "deleted with their grace period");
            assert!(force_delete(&j, &pods, &delete, now()).is_empty());
        }
        d => panic!("{d:?}"),
    }
    // Attempt 1 waits for the old pods to go, however long the kubelet takes.
    j.restarts = 1;
    j.phase = JobPhase::Restarting;
    for p in &mut pods {
        p.terminating = true;
    }
    pods[1].node_down = not_ready_since(4000);
    let d = decide(&j, &pods, now());
    assert!(
        matches!(&d, Decision::Step(Gang::Progress { create, .. }) if create.is_empty()),
        "{d:?}"
    );
    assert!(force_delete(&j, &pods, &[], now()).is_empty());
}

#[test]
fn an_out_of_service_node_restarts_at_once_and_force_deletes_its_pods() {
    let mut pods = gang(2, 0, PodPhase::Running);
    pods[1].node_down = Some(NodeDown {
        node: "node-7".into(),
        since: now(),
        why: "taint node.kubernetes.io/out-of-service:NoExecute".into(),
        kubelet: Kubelet::OutOfService,
    });
    let j = job(2);
    match decide(&j, &pods, now()) {
        Decision::Step(Gang::Restart {
            reason,
            message,
            delete,
            counted,
        }) => {
            assert_eq!(reason, "NodeUnreachable");
            assert!(!counted);
            testing::says(
                &message,
                &["node node-7 of worker j-worker-1 is out of service"],
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
    let (reason, message, _) = testing::failure(decide(&j, &failed_with(3), now()));
    assert_eq!(reason, "PodFailurePolicy");
    assert_eq!(
        message,
        "worker j-worker-1 exited with code 3, matching runPolicy.failurePolicy.rules[0] (FailJob)"
    );
    // Other codes keep the defaults.
    assert!(matches!(
        decide(&j, &failed_with(1), now()),
        Decision::Step(Gang::Restart { counted: true, .. })
    ));
    testing::fails(decide(&j, &failed_with(64), now()), "NonRetryableExit");
}

#[test]
fn the_first_matching_rule_wins_and_rules_override_the_defaults() {
    let mut j = job(2);
    j.run.backoff_limit = 0;
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
        Decision::Step(Gang::Restart {
            counted, message, ..
        }) => {
            assert!(!counted);
            assert!(
                message.ends_with("(runPolicy.failurePolicy.rules[0]: RestartJobAndIgnoreBackoff)"),
                "{message}"
            );
        }
        d => panic!("{d:?}"),
    }
    // 64 restarts (and counts: backoffLimit 0 fails) instead of failing at once.
    testing::fails(decide(&j, &failed_with(64), now()), "BackoffLimitExceeded");
    // No rule for 75: the default counts it.
    testing::fails(decide(&j, &failed_with(75), now()), "BackoffLimitExceeded");
}

#[test]
fn a_rule_on_the_disruption_target_condition_can_count_disruptions() {
    let mut j = job(2);
    j.run.backoff_limit = 0;
    let mut pods = gang(2, 0, PodPhase::Running);
    pods[0].disrupted = Some(("PreemptionByScheduler".into(), "preempted".into()));
    assert!(matches!(
        decide(&j, &pods, now()),
        Decision::Step(Gang::Restart { counted: false, .. })
    ));
    j.failure_rules = vec![rule(
        "RestartJob",
        serde_json::json!({"onPodConditions": [{"type": "DisruptionTarget"}]}),
    )];
    testing::fails(decide(&j, &pods, now()), "BackoffLimitExceeded");
    // A lost node is a disruption too; so is a node down past the toleration.
    let mut lost = gang(2, 0, PodPhase::Running);
    lost[1].node_lost = true;
    j.failure_rules[0].action = FailurePolicyAction::FailJob;
    testing::fails(decide(&j, &lost, now()), "PodFailurePolicy");
}

#[test]
fn the_first_failure_by_time_is_judged_and_a_later_fail_job_match_does_not_fail_the_job() {
    // Issue 30: rules are JobSet's, in order for the gang's first failure; a peer
    // failing later with a FailJob code does not fail the job (this replaces the
    // earlier "FailJob of any failed worker wins" rule).
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
        Decision::Step(Gang::Restart {
            message, counted, ..
        }) => {
            assert!(counted);
            assert!(
                message.contains("j-worker-0") && message.contains("137"),
                "{message}"
            );
        }
        d => panic!("{d:?}"),
    }
    // The FailJob code first: the job fails, naming the rule.
    pods[2].finished_at = at("2026-01-01T11:58:00Z");
    let (reason, message, _) = testing::failure(decide(&j, &pods, now()));
    assert_eq!(reason, "PodFailurePolicy");
    assert!(message.contains("j-worker-2"), "{message}");
}

#[test]
fn a_peer_exiting_after_a_disruption_does_not_turn_a_restart_into_fail_job() {
    // Rank 0 is preempted; rank 1 then loses it (an NCCL error, exit 1) and exits
    // before rank 0 has finished terminating. A FailJob rule on exit code 1 is not
    // the judge of a disruption.
    let mut j = job(2);
    j.run.backoff_limit = 0;
    j.failure_rules = vec![rule(
        "FailJob",
        serde_json::json!({"onExitCodes": {"operator": "In", "values": [1]}}),
    )];
    let mut pods = gang(2, 0, PodPhase::Running);
    pods[0].disrupted = Some(("PreemptionByScheduler".into(), "preempted".into()));
    pods[0].terminating = true;
    pods[1].phase = PodPhase::Failed;
    pods[1].exit_code = Some(1);
    pods[1].finished_at = Some(now() - jiff::SignedDuration::from_secs(5));
    match decide(&j, &pods, now()) {
        Decision::Step(Gang::Restart {
            reason, counted, ..
        }) => {
            assert_eq!(reason, "WorkerDisrupted");
            assert!(!counted, "a disruption, uncounted even at backoffLimit 0");
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn restarts_in_a_row_back_off_exponentially_to_the_cap_and_reset_after_a_healthy_run() {
    let mut j = job(2);
    let waits: Vec<(i32, u64)> = (0..8)
        .map(|n| {
            j.consecutive_restarts = n;
            let (streak, wait) = restart_wait(&j, true, now());
            (streak, wait.as_secs())
        })
        .collect();
    assert_eq!(
        waits,
        [
            (1, 0),
            (2, 10),
            (3, 20),
            (4, 40),
            (5, 80),
            (6, 160),
            (7, 300),
            (8, 300)
        ]
    );
    // Uncounted (RestartJobAndIgnoreBackoff, disruptions): never doubled, never hot.
    j.consecutive_restarts = 5;
    assert_eq!(restart_wait(&j, false, now()), (6, Duration::from_secs(10)));
    j.consecutive_restarts = 0;
    assert_eq!(restart_wait(&j, false, now()), (1, Duration::ZERO));
    // Every worker running 600 s: the streak starts again.
    j.consecutive_restarts = 6;
    j.running_since = Some(now() - jiff::SignedDuration::from_secs(599));
    assert_eq!(restart_wait(&j, true, now()).0, 7);
    j.running_since = Some(now() - jiff::SignedDuration::from_secs(600));
    assert_eq!(restart_wait(&j, true, now()), (1, Duration::ZERO));
    // Its own numbers.
    j.running_since = None;
    j.backoff = RestartBackoff {
        initial_seconds: 2,
        max_seconds: 5,
        reset_after_seconds: 60,
    };
    j.consecutive_restarts = 3;
    assert_eq!(restart_wait(&j, true, now()), (4, Duration::from_secs(5)));
}

#[test]
fn a_restarted_gang_waits_out_its_backoff_before_any_pod_is_made() {
    let mut j = job(2);
    j.restarts = 2;
    j.phase = JobPhase::Restarting;
    j.restart_not_before = Some(now() + jiff::SignedDuration::from_secs(20));
    match decide(&j, &[], now()) {
        Decision::Step(Gang::Progress {
            phase,
            create,
            requeue_after,
            ..
        }) => {
            assert_eq!(phase, JobPhase::Restarting);
            assert!(create.is_empty());
            assert_eq!(requeue_after, Some(Duration::from_secs(20)));
        }
        d => panic!("{d:?}"),
    }
    j.restart_not_before = Some(now() - jiff::SignedDuration::from_secs(1));
    assert_eq!(testing_created(&decide(&j, &[], now())), 2);
}

fn testing_created(d: &Decision) -> usize {
    match d {
        Decision::Step(Gang::Progress { create, .. }) => create.len(),
        d => panic!("{d:?}"),
    }
}

#[test]
fn a_worker_deleted_by_someone_else_restarts_the_gang() {
    let mut pods = gang(2, 0, PodPhase::Running);
    pods[1].terminating = true;
    match decide(&job(2), &pods, now()) {
        Decision::Step(Gang::Restart { reason, delete, .. }) => {
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
        Decision::Step(Gang::Restart {
            reason: "WorkerLost",
            ..
        })
    ));
}

#[test]
fn restarts_beyond_the_backoff_limit_fail_the_job() {
    let mut j = job(2);
    j.run.backoff_limit = 1;
    j.restarts = 1;
    j.counted_restarts = 1;
    j.phase = JobPhase::Running;
    let mut pods = gang(2, 1, PodPhase::Running);
    pods[0] = pod(0, 1, PodPhase::Failed);
    let (reason, message, delete) = testing::failure(decide(&j, &pods, now()));
    assert_eq!(reason, "BackoffLimitExceeded");
    assert!(message.contains("backoffLimit 1"), "{message}");
    assert_eq!(
        delete,
        vec!["j-worker-1".to_string()],
        "cleanPodPolicy Running"
    );
    j.run.backoff_limit = 0;
    j.restarts = 0;
    let mut pods = gang(2, 0, PodPhase::Running);
    pods[1] = pod(1, 0, PodPhase::Failed);
    testing::fails(decide(&j, &pods, now()), "BackoffLimitExceeded");
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
        Decision::Step(Gang::Restart { message, .. }) => {
            assert_eq!(message, "worker j-worker-2 exited with code 137")
        }
        other => panic!("{other:?}"),
    }
    // An earlier failure wins whatever its code.
    pods[1].finished_at = at("2026-01-01T12:00:04Z");
    match decide(&job(3), &pods, now()) {
        Decision::Step(Gang::Restart { message, .. }) => {
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
    let (reason, message, _) = testing::failure(decide(&job(2), &pods, now()));
    assert_eq!(reason, "NonRetryableExit");
    assert!(
        message.contains("j-worker-1") && message.contains("64"),
        "{message}"
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
        Decision::Step(Gang::Progress { create, phase, .. }) => {
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
        Decision::Step(Gang::Progress {
            phase: JobPhase::Suspended,
            delete: vec!["j-worker-1".into()],
            create: vec![],
            requeue_after: None
        })
    );
    // Every old pod terminating: wait, still no restart and nothing created.
    pods[1].terminating = true;
    assert_eq!(
        decide(&j, &pods, now()),
        Decision::Step(Gang::Progress {
            phase: JobPhase::Suspended,
            delete: vec![],
            create: vec![],
            requeue_after: None
        })
    );
    // Even failed or lost old pods are no gang failure.
    let mut pods = gang(2, 0, PodPhase::Failed);
    pods[1].node_lost = true;
    assert!(matches!(
        decide(&j, &pods, now()),
        Decision::Step(Gang::Progress {
            phase: JobPhase::Suspended,
            ..
        })
    ));
}

#[test]
fn a_resumed_job_counts_the_deadline_from_the_resume() {
    let mut j = job(2);
    j.phase = JobPhase::Suspended;
    // Started an hour before the resume: the whole deadline is left.
    j.run.active_deadline_seconds = Some(3600);
    match decide(&j, &[], now()) {
        Decision::Step(Gang::Progress {
            create,
            requeue_after,
            ..
        }) => {
            assert_eq!(create, vec![0, 1]);
            assert_eq!(requeue_after, Some(Duration::from_secs(3600)));
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn all_ranks_exiting_zero_succeed() {
    let mut j = job(2);
    j.run.clean_pod_policy = CleanPodPolicy::All;
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
        Decision::Step(Gang::Progress {
            phase: JobPhase::Running,
            ..
        })
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
        Decision::Step(Gang::Progress {
            phase,
            delete,
            create,
            ..
        }) => {
            assert_eq!(phase, JobPhase::Restarting);
            assert_eq!(delete, vec!["j-worker-1".to_string()]);
            assert!(create.is_empty(), "names are reused: wait for the old pods");
        }
        d => panic!("{d:?}"),
    }
    match decide(&j, &[], now()) {
        Decision::Step(Gang::Progress { phase, create, .. }) => {
            assert_eq!(phase, JobPhase::Restarting);
            assert_eq!(create, vec![0, 1]);
        }
        d => panic!("{d:?}"),
    }
    match decide(&j, &gang(2, 1, PodPhase::Running), now()) {
        Decision::Step(Gang::Progress { phase, .. }) => assert_eq!(phase, JobPhase::Running),
        d => panic!("{d:?}"),
    }
}

#[test]
fn pods_with_unexpected_rank_are_stale() {
    let mut p = pod(5, 0, PodPhase::Running);
    p.name = "j-worker-5".into();
    match decide(&job(2), &[p], now()) {
        Decision::Step(Gang::Progress { delete, create, .. }) => {
            assert_eq!(delete, vec!["j-worker-5".to_string()]);
            assert!(create.is_empty());
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn exit_code_65_fails_at_once_as_fabric_check_failed_quoting_the_figures() {
    let mut pods = failed_with(65);
    pods[1].message = Some(
        "fabric check failed: all-reduce bus bandwidth 0.412 GB/s over 2 ranks (ring, 67108864 bytes, median of 10) is below the required 1000 GB/s".into(),
    );
    let (reason, message, _) = testing::failure(decide(&job(2), &pods, now()));
    assert_eq!(reason, "FabricCheckFailed");
    assert!(
        message.contains("exited with code 65 (the fabric check failed, not retried)")
            && message.contains("0.412 GB/s")
            && message.contains("required 1000 GB/s"),
        "{message}"
    );
    // A user's rule still comes first.
    let mut j = job(2);
    j.failure_rules = vec![rule(
        "RestartJob",
        serde_json::json!({"onExitCodes": {"operator": "In", "values": [65]}}),
    )];
    assert!(matches!(
        decide(&j, &failed_with(65), now()),
        Decision::Step(Gang::Restart { .. })
    ));
}
