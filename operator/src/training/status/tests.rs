//! Unit tests of `training::status`.

use super::*;
use crate::controller::conditions::set_condition;
use crate::controller::testing;
use crate::controller::testing::cond;
use crate::training::config_render::tests::representative_job;

/// The representative job, its status in `phase`.
fn in_phase(phase: JobPhase) -> JanusTrainingJob {
    testing::with_status(representative_job(), |s| s.phase = Some(phase))
}

fn now() -> Timestamp {
    "2026-01-01T12:00:00Z".parse().unwrap()
}

fn progress(step: u64, at: &str) -> Progress {
    Progress {
        step,
        total_steps: 1000,
        loss: Some(1.5),
        tokens_per_second: Some(1e4),
        last_checkpoint: Some(format!("s3://c/j/step-{step}")),
        updated_at: at.into(),
        fabric: None,
    }
}

fn pending_pod(status: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "j-worker-1", "labels": {"janus.dev/rank": "1", "janus.dev/attempt": "0"}},
        "status": status
    }))
    .unwrap()
}

#[test]
fn a_stuck_pending_gang_is_running_false_with_the_reason_and_one_warning() {
    let job = representative_job();
    let d = Decision::Step(Gang::Progress {
        phase: JobPhase::Pending,
        delete: vec![],
        create: vec![],
        requeue_after: None,
    });
    let p = pending_pod(
        serde_json::json!({"phase": "Pending", "containerStatuses": [
        {"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}),
    );
    let pf = vec![pod_facts(&p, None, |_| NodeState::Ready)];
    let (s, ev) = next_status(&job, &d, &pf, None, now());
    let c = cond(&s.conditions, "Running");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ImagePullBackOff")
    );
    assert!(c.message.contains("j-worker-1") && c.message.contains("Back-off pulling image"));
    let w: Vec<_> = ev.iter().filter(|e| e.warning).collect();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].reason, "ImagePullBackOff");
    // The same state again: no second Event.
    let mut job2 = job.clone();
    job2.status = Some(s);
    let (_, ev) = next_status(&job2, &d, &pf, None, now());
    assert!(ev.iter().all(|e| !e.warning), "{ev:?}");
}

#[test]
fn a_refused_create_holds_until_a_pod_of_the_attempt_exists() {
    let mut job = representative_job();
    let d = Decision::Step(Gang::Progress {
        phase: JobPhase::Pending,
        delete: vec![],
        create: vec![0, 1],
        requeue_after: None,
    });
    let (mut s, _) = next_status(&job, &d, &[], None, now());
    let refused = "creating worker pod j-worker-0 was refused: violates PodSecurity";
    set_condition(
        &mut s.conditions,
        condition::RUNNING,
        false,
        reason::FAILED_CREATE,
        refused,
        now(),
    );
    job.status = Some(s);
    // Retried: the refusal's words stay (no new Event from a reset and repeat).
    let (s, _) = next_status(&job, &d, &[], None, now());
    let c = cond(&s.conditions, "Running");
    assert_eq!(
        (c.reason.as_str(), c.message.as_str()),
        ("FailedCreate", refused)
    );
    // A pod of the attempt exists: the refusal is over.
    let p = pending_pod(serde_json::json!({"phase": "Pending"}));
    let pf = vec![pod_facts(&p, None, |_| NodeState::Ready)];
    let (s, _) = next_status(&job, &d, &pf, None, now());
    let c = cond(&s.conditions, "Running");
    assert_eq!(c.reason, "WorkersPending");
}

#[test]
fn first_status_is_created_and_pending() {
    let job = representative_job();
    let d = Decision::Step(Gang::Progress {
        phase: JobPhase::Pending,
        delete: vec![],
        create: vec![0, 1, 2, 3],
        requeue_after: None,
    });
    let (s, ev) = next_status(&job, &d, &[], None, now());
    assert_eq!(s.phase, Some(JobPhase::Pending));
    assert_eq!(s.conditions[0].type_, "Created");
    assert_eq!(s.start_time, Some(Time(now())));
    assert_eq!(ev[0].reason, "JobCreated");
    assert_eq!(s.workers.unwrap().desired, 4);
}

#[test]
fn restart_counts_and_sets_the_restarting_condition_with_an_event() {
    let job = in_phase(JobPhase::Running);
    let d = Decision::Step(Gang::Restart {
        reason: "WorkerFailed",
        message: "worker x exited with code 75".into(),
        delete: vec![],
        counted: true,
    });
    let (s, ev) = next_status(&job, &d, &[], None, now());
    assert_eq!((s.restarts, s.phase), (1, Some(JobPhase::Restarting)));
    assert_eq!(s.restarts_counted_towards_backoff, 1);
    // A disruption restarts without counting.
    let mut again = job.clone();
    again.status = Some(s.clone());
    let d = Decision::Step(Gang::Restart {
        reason: "WorkerDisrupted",
        message: "worker x was disrupted".into(),
        delete: vec![],
        counted: false,
    });
    let (s2, _) = next_status(&again, &d, &[], None, now());
    assert_eq!((s2.restarts, s2.restarts_counted_towards_backoff), (2, 1));
    let c = cond(&s.conditions, "Restarting");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "WorkerFailed")
    );
    assert!(c.message.contains("attempt 1"));
    assert!(ev.iter().any(|e| e.warning && e.reason == "WorkerFailed"));
}

#[test]
fn running_again_clears_restarting_and_emits_once() {
    let mut job = representative_job();
    let mut conds = vec![];
    set_condition(&mut conds, "Restarting", true, "WorkerFailed", "m", now());
    job.status = Some(JanusTrainingJobStatus {
        phase: Some(JobPhase::Restarting),
        restarts: 1,
        conditions: conds,
        ..Default::default()
    });
    let d = Decision::Step(Gang::Progress {
        phase: JobPhase::Running,
        delete: vec![],
        create: vec![],
        requeue_after: None,
    });
    let (s, ev) = next_status(&job, &d, &[], None, now());
    let r = cond(&s.conditions, "Restarting");
    assert_eq!(r.status, "False");
    assert_eq!(ev.len(), 1);
    job.status = Some(s.clone());
    let (s2, ev2) = next_status(&job, &d, &[], None, now());
    assert_eq!(s2, s, "a steady state produces the same status");
    assert!(ev2.is_empty());
}

#[test]
fn failure_sets_phase_condition_and_completion_time() {
    let job = in_phase(JobPhase::Running);
    let d = Decision::Fail {
        reason: "NonRetryableExit",
        message: "worker w exited with code 64".into(),
        delete: vec![],
    };
    let (s, ev) = next_status(&job, &d, &[], None, now());
    assert_eq!(s.phase, Some(JobPhase::Failed));
    assert_eq!(s.completion_time, Some(Time(now())));
    let f = cond(&s.conditions, "Failed");
    assert_eq!(f.reason, "NonRetryableExit");
    assert!(ev[0].warning);
}

#[test]
fn suspend_and_resume_toggle_the_condition_and_reset_the_start_time() {
    let mut job = representative_job();
    job.status = Some(JanusTrainingJobStatus {
        phase: Some(JobPhase::Running),
        start_time: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
        ..Default::default()
    });
    let (s, ev) = next_status(
        &job,
        &Decision::Suspend { delete: vec![] },
        &[],
        None,
        now(),
    );
    assert_eq!(s.phase, Some(JobPhase::Suspended));
    assert_eq!(ev[0].reason, "JobSuspended");
    job.status = Some(s);
    let d = Decision::Step(Gang::Progress {
        phase: JobPhase::Pending,
        delete: vec![],
        create: vec![0],
        requeue_after: None,
    });
    let (s, ev) = next_status(&job, &d, &[], None, now());
    let c = cond(&s.conditions, "Suspended");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "JobResumed")
    );
    assert_eq!(s.start_time, Some(Time(now())));
    assert_eq!(ev[0].reason, "JobResumed");
}

fn suspended_job() -> JanusTrainingJob {
    let mut job = representative_job();
    let mut conds = vec![];
    set_condition(&mut conds, "Suspended", true, "JobSuspended", "m", now());
    job.status = Some(JanusTrainingJobStatus {
        phase: Some(JobPhase::Suspended),
        start_time: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
        conditions: conds,
        ..Default::default()
    });
    job
}

#[test]
fn resume_is_recorded_once_while_the_old_pods_drain() {
    let mut job = suspended_job();
    let drain = Decision::Step(Gang::Progress {
        phase: JobPhase::Suspended,
        delete: vec!["j-worker-0".into()],
        create: vec![],
        requeue_after: None,
    });
    let (s, ev) = next_status(&job, &drain, &[], None, now());
    let c = cond(&s.conditions, "Suspended");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "JobResumed")
    );
    assert_eq!(s.start_time, Some(Time(now())));
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].reason, "JobResumed");
    assert_eq!(s.restarts, 0);

    // Later reconciles of the same resume neither move the start time nor repeat the
    // event, whether the old pods are still draining or the new gang is created.
    job.status = Some(s);
    let later: Timestamp = "2026-01-01T12:00:30Z".parse().unwrap();
    let (s, ev) = next_status(&job, &drain, &[], None, later);
    assert_eq!(s.start_time, Some(Time(now())));
    assert!(ev.is_empty(), "{ev:?}");
    let create = Decision::Step(Gang::Progress {
        phase: JobPhase::Pending,
        delete: vec![],
        create: vec![0, 1, 2, 3],
        requeue_after: None,
    });
    job.status = Some(s);
    let (s, ev) = next_status(&job, &create, &[], None, later);
    assert_eq!(s.phase, Some(JobPhase::Pending));
    assert_eq!(s.start_time, Some(Time(now())));
    assert!(ev.is_empty(), "{ev:?}");
}

#[test]
fn resume_is_recorded_whatever_the_decision() {
    let job = suspended_job();
    let d = Decision::Fail {
        reason: "InvalidPodTemplate",
        message: "bad template".into(),
        delete: vec![],
    };
    let (s, ev) = next_status(&job, &d, &[], None, now());
    let c = cond(&s.conditions, "Suspended");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "JobResumed")
    );
    assert_eq!(s.start_time, Some(Time(now())));
    assert_eq!(s.phase, Some(JobPhase::Failed));
    assert!(ev.iter().any(|e| e.reason == "JobResumed"), "{ev:?}");
}

#[test]
fn suspending_again_while_draining_emits_the_event() {
    let mut job = suspended_job();
    let drain = Decision::Step(Gang::Progress {
        phase: JobPhase::Suspended,
        delete: vec![],
        create: vec![],
        requeue_after: None,
    });
    job.status = Some(next_status(&job, &drain, &[], None, now()).0);
    job.spec.run_policy.suspend = true;
    let (s, ev) = next_status(
        &job,
        &Decision::Suspend { delete: vec![] },
        &[],
        None,
        now(),
    );
    let c = cond(&s.conditions, "Suspended");
    assert_eq!(c.status, "True");
    assert!(ev.iter().any(|e| e.reason == "JobSuspended"), "{ev:?}");
}

#[test]
fn progress_is_mirrored_with_an_eta() {
    let mut job = in_phase(JobPhase::Running);
    let d = Decision::Step(Gang::Progress {
        phase: JobPhase::Running,
        delete: vec![],
        create: vec![],
        requeue_after: None,
    });
    let (s, _) = next_status(
        &job,
        &d,
        &[],
        Some(progress(100, "2026-01-01T11:00:00Z")),
        now(),
    );
    assert_eq!(s.progress.as_ref().unwrap().step, 100);
    assert_eq!(s.last_checkpoint.as_deref(), Some("s3://c/j/step-100"));
    job.status = Some(s);
    let (s, _) = next_status(
        &job,
        &d,
        &[],
        Some(progress(200, "2026-01-01T11:01:40Z")),
        now(),
    );
    // 100 steps in 100 s, 800 to go.
    assert_eq!(s.progress.unwrap().eta_seconds, Some(800));
}

#[test]
fn pod_facts_read_rank_attempt_exit_code_and_lost_nodes() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "j-worker-1", "labels": {"janus.dev/rank": "1", "janus.dev/attempt": "2"}},
        "spec": {"nodeName": "gone", "containers": [{"name": "trainer"}]},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 64}}}]}
    }))
    .unwrap();
    let f = pod_facts(&pod, None, |n| {
        if n == "gone" {
            NodeState::Missing
        } else {
            NodeState::Ready
        }
    });
    assert_eq!(
        (f.role, f.attempt, f.exit_code),
        (Some(1), Some(2), Some(64))
    );
    assert_eq!(f.phase, PodPhase::Failed);
    assert!(f.node_lost);
    assert!(f.foreign, "no owner reference: not the job's");
}

#[test]
fn only_pods_controlled_by_the_job_uid_are_the_jobs() {
    let pod = |uid: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j-worker-0", "labels": {"janus.dev/rank": "0", "janus.dev/attempt": "0"},
                         "ownerReferences": [{"apiVersion": "janus.dev/v1alpha1", "kind": "JanusTrainingJob",
                                              "name": "j", "uid": uid, "controller": true}]},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    };
    assert!(!pod_facts(&pod("new"), Some("new"), |_| NodeState::Ready).foreign);
    assert!(pod_facts(&pod("old"), Some("new"), |_| NodeState::Ready).foreign);
}

fn fabric(gbps: f64) -> janus_crds::progress::Fabric {
    janus_crds::progress::Fabric {
        bus_bandwidth_gbps: gbps,
        algorithm_bandwidth_gbps: gbps / 1.5,
        size_bytes: 64 << 20,
        ranks: 4,
        backend: "nccl".into(),
        seconds: 0.01,
        measured_at: "2026-01-01T11:00:00Z".into(),
    }
}

fn running() -> Decision {
    Decision::Step(Gang::Progress {
        phase: JobPhase::Running,
        delete: vec![],
        create: vec![],
        requeue_after: None,
    })
}

/// The status after rank 0 reports `gbps` under `check`, and its Events.
fn after_fabric(
    check: Option<&str>,
    gbps: f64,
) -> (
    JanusTrainingJobStatus,
    Vec<crate::controller::conditions::EventSpec>,
) {
    let mut job = in_phase(JobPhase::Running);
    job.spec.fabric_check = check.map(|c| serde_yaml::from_str(c).unwrap());
    let mut p = progress(0, "2026-01-01T11:00:00Z");
    p.fabric = Some(fabric(gbps));
    next_status(&job, &running(), &[], Some(p), now())
}

#[test]
fn the_reported_fabric_figure_lands_in_status_fabric_with_or_without_a_check() {
    let (s, ev) = after_fabric(None, 180.5);
    assert_eq!(s.fabric, Some(fabric(180.5)));
    assert!(s
        .conditions
        .iter()
        .all(|c| c.type_ != condition::FABRIC_CHECK));
    assert!(ev.is_empty(), "{ev:?}");
    let (s, ev) = after_fabric(Some("{}"), 180.5);
    let c = cond(&s.conditions, condition::FABRIC_CHECK);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "FabricMeasured")
    );
    assert!(
        c.message.contains("180.500 GB/s over 4 ranks (nccl"),
        "{}",
        c.message
    );
    assert_eq!(ev.len(), 1);
    assert!(!ev[0].warning);
}

#[test]
fn a_fabric_below_a_warn_threshold_is_a_false_condition_and_one_warning_naming_both_figures() {
    let check = "{minBusBandwidthGBps: 200, action: Warn}";
    let (s, ev) = after_fabric(Some(check), 180.5);
    let c = cond(&s.conditions, condition::FABRIC_CHECK);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "FabricBelowThreshold")
    );
    assert!(
        c.message.contains("180.500 GB/s")
            && c.message.contains("minBusBandwidthGBps 200 GB/s")
            && c.message.contains("training goes on"),
        "{}",
        c.message
    );
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        ev[0].warning && ev[0].reason == "FabricBelowThreshold" && ev[0].note.contains("180.500")
    );
    assert_eq!(s.phase, Some(JobPhase::Running), "training goes on");
    // The same report again (every report carries it) is no news.
    let mut job = in_phase(JobPhase::Running);
    job.spec.fabric_check = Some(serde_yaml::from_str(check).unwrap());
    job.status.as_mut().unwrap().conditions = s.conditions.clone();
    let mut p = progress(5, "2026-01-01T11:00:10Z");
    p.fabric = Some(fabric(180.5));
    let (_, again) = next_status(&job, &running(), &[], Some(p), now());
    assert!(again.is_empty(), "{again:?}");
    // At or above: passed.
    let (s, ev) = after_fabric(Some(check), 200.0);
    let c = cond(&s.conditions, condition::FABRIC_CHECK);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "FabricCheckPassed")
    );
    assert!(!ev[0].warning);
}

#[test]
fn a_fabric_below_a_fail_threshold_leaves_the_event_to_the_failed_condition() {
    let (s, ev) = after_fabric(Some("{minBusBandwidthGBps: 200}"), 1.0);
    let c = cond(&s.conditions, condition::FABRIC_CHECK);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "FabricCheckFailed")
    );
    assert!(c.message.contains("the job fails"), "{}", c.message);
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(s.fabric.unwrap().bus_bandwidth_gbps, 1.0);
}
