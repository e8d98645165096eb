//! Unit tests of `eval::status`.

use super::*;
use crate::controller::testing;
use crate::controller::testing::cond;
use crate::eval::config_render::tests::representative_job;
use crate::eval::stage::Restart;
use janus_crds::progress::{EvalScores, HeadToHead};

/// The representative job, its status in `phase`.
fn in_phase(phase: EvalPhase) -> JanusEvalJob {
    testing::with_status(representative_job(), |s| s.phase = Some(phase))
}

fn now() -> Timestamp {
    "2026-01-01T12:00:00Z".parse().unwrap()
}

fn gates(job: &JanusEvalJob) -> Gates {
    let (model, resolved) = super::super::gates::model(job, None);
    let ok = || Gate::ready(reason::SECRETS_FOUND, "");
    Gates {
        model,
        baseline: Gate::ready(reason::BASELINE_SUCCEEDED, ""),
        storage_secret: ok(),
        judge_secret: ok(),
        resolved,
    }
}

fn progress(create: Vec<Slot>) -> Decision {
    Decision::Step(Progress {
        phase: EvalPhase::Pending,
        done: vec![],
        restart: vec![],
        delete: vec![],
        create,
        requeue_after: None,
    })
}

fn report(stage: &str, done: u64, total: u64) -> EvalReport {
    EvalReport {
        stage: stage.into(),
        items_done: done,
        items_total: total,
        updated_at: "2026-01-01T11:59:00Z".into(),
        ..Default::default()
    }
}

#[test]
fn first_status_is_created_pending_with_the_model_and_output() {
    let job = representative_job();
    let (s, ev) = next_status(
        &job,
        &gates(&job),
        &progress(vec![Slot::Generate(0)]),
        &[],
        &[],
        now(),
    );
    assert_eq!(s.phase, Some(EvalPhase::Pending));
    assert_eq!(s.conditions[0].type_, "Created");
    assert_eq!(s.model_url.as_deref(), Some("s3://models/janus-7b-orpo"));
    assert_eq!(
        s.output_url.as_deref(),
        Some("s3://eval-results/research/janus-7b-orpo-bench")
    );
    assert_eq!(s.shards.len(), 4);
    assert_eq!(
        s.start_time,
        Some(Time(now())),
        "the first pod starts the clock"
    );
    let m = cond(&s.conditions, "ModelReady");
    assert_eq!((m.status.as_str(), m.reason.as_str()), ("True", "ModelUrl"));
    assert!(ev.iter().any(|e| e.reason == "JobCreated"));
    // The same look again changes nothing and emits nothing.
    let mut job2 = job.clone();
    job2.status = Some(s.clone());
    let (s2, ev2) = next_status(&job2, &gates(&job2), &progress(vec![]), &[], &[], now());
    assert_eq!(s2, s);
    assert!(ev2.is_empty(), "{ev2:?}");
}

#[test]
fn a_missing_secret_is_a_false_condition_and_one_warning_event() {
    let job = representative_job();
    let mut g = gates(&job);
    g.judge_secret = Gate::Waiting {
        reason: reason::SECRET_NOT_FOUND,
        message: "Secret openai (spec.judge.apiKeySecretRef) not found; the judge pod waits for it"
            .into(),
    };
    let (s, ev) = next_status(&job, &g, &progress(vec![]), &[], &[], now());
    let c = cond(&s.conditions, "SecretsReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(c.message.contains("openai"));
    let w: Vec<_> = ev.iter().filter(|e| e.reason == "SecretNotFound").collect();
    assert_eq!(w.len(), 1);
    assert!(w[0].warning);
    // Still missing next time: no second Event. Created: True, with an Event.
    let mut job2 = job.clone();
    job2.status = Some(s);
    let (s, ev) = next_status(&job2, &g, &progress(vec![]), &[], &[], now());
    assert!(!ev.iter().any(|e| e.reason == "SecretNotFound"), "{ev:?}");
    job2.status = Some(s);
    let (s, ev) = next_status(&job2, &gates(&job2), &progress(vec![]), &[], &[], now());
    let c = cond(&s.conditions, "SecretsReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "SecretsFound")
    );
    assert!(ev.iter().any(|e| e.reason == "SecretsFound" && !e.warning));
}

#[test]
fn a_restart_bumps_the_slot_attempt_and_the_count_with_a_warning() {
    let job = in_phase(EvalPhase::Generating);
    let d = Decision::Step(Progress {
        phase: EvalPhase::Generating,
        done: vec![],
        restart: vec![Restart {
            slot: Slot::Generate(2),
            pod: "p".into(),
            reason: reason::POD_FAILED,
            message: "pod p (container generate) exited with code 75".into(),
            counted: true,
        }],
        delete: vec!["p".into()],
        create: vec![],
        requeue_after: None,
    });
    let (s, ev) = next_status(&job, &gates(&job), &d, &[], &[], now());
    assert_eq!(s.restarts, 1);
    assert_eq!(s.shards[2].attempt, 1);
    assert_eq!(s.shards[2].phase, PodPhase::Failed);
    assert_eq!(s.shards[1].attempt, 0);
    let e = ev.iter().find(|e| e.reason == "PodFailed").unwrap();
    assert!(
        e.warning && e.note.contains("attempt 1") && e.note.contains("backoffLimit 3"),
        "{}",
        e.note
    );
}

#[test]
fn reports_fill_shards_progress_and_the_final_scores() {
    let mut job = representative_job();
    job.spec.worker.replicas = 2;
    job.status = Some(JanusEvalJobStatus {
        phase: Some(EvalPhase::Judging),
        shards: (0..2)
            .map(|i| ShardStatus {
                index: i,
                phase: PodPhase::Succeeded,
                items_done: 5,
                items_total: 5,
                ..Default::default()
            })
            .collect(),
        judge: Some(JudgeStatus::default()),
        ..Default::default()
    });
    let mut judge = report("score", 10, 10);
    judge.calls_done = 90;
    judge.calls_total = 90;
    judge.parse_failures = 2;
    judge.scores = Some(EvalScores {
        mean: 3.8,
        std: 0.1,
        versus_baseline: Some(HeadToHead::from_counts(5, 2, 3)),
        ..Default::default()
    });
    let (s, ev) = next_status(
        &job,
        &gates(&job),
        &Decision::Succeed { delete: vec![] },
        &[],
        &[(Slot::Judge, judge)],
        now(),
    );
    assert_eq!(s.phase, Some(EvalPhase::Succeeded));
    let p = s.progress.clone().unwrap();
    assert_eq!((p.items_generated, p.items_total), (10, 10));
    assert_eq!(
        (p.calls_judged, p.calls_total, p.judge_failures),
        (90, 90, 2)
    );
    let sc = s.scores.clone().unwrap();
    assert_eq!(sc.mean, 3.8);
    let h = sc.versus_baseline.unwrap();
    assert!((h.win_plus_tie - 0.7).abs() < 1e-12);
    let c = cond(&s.conditions, "Succeeded");
    assert_eq!(c.reason, "ScoresReported");
    assert!(
        c.message.contains("3.800") && c.message.contains("win+tie 0.700"),
        "{}",
        c.message
    );
    assert!(s.completion_time.is_some());
    assert!(ev.iter().any(|e| e.reason == "ScoresReported"));
}

#[test]
fn generation_reports_and_pod_phases_are_mirrored_per_shard() {
    let job = representative_job();
    let pods: Vec<PodFacts> = (0..4)
        .map(|i| PodFacts {
            name: format!("g{i}"),
            role: Some(Slot::Generate(i)),
            attempt: Some(0),
            phase: PodPhase::Running,
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
        })
        .collect();
    let reps = vec![
        (Slot::Generate(0), report("generate", 3, 10)),
        (Slot::Generate(1), report("generate", 4, 10)),
    ];
    let d = Decision::Step(Progress {
        phase: EvalPhase::Generating,
        done: vec![],
        restart: vec![],
        delete: vec![],
        create: vec![],
        requeue_after: None,
    });
    let (s, _) = next_status(&job, &gates(&job), &d, &pods, &reps, now());
    assert!(s.shards.iter().all(|x| x.phase == PodPhase::Running));
    assert_eq!(s.shards[1].items_done, 4);
    let p = s.progress.unwrap();
    assert_eq!((p.items_generated, p.items_total), (7, 20));
    assert_eq!(p.updated_at.as_deref(), Some("2026-01-01T11:59:00Z"));
}

#[test]
fn all_shards_done_sets_generated_and_the_judge_start_is_an_event() {
    let mut job = representative_job();
    job.spec.worker.replicas = 1;
    job.status = Some(JanusEvalJobStatus {
        phase: Some(EvalPhase::Generating),
        ..Default::default()
    });
    let d = Decision::Step(Progress {
        phase: EvalPhase::Judging,
        done: vec![Slot::Generate(0)],
        restart: vec![],
        delete: vec![],
        create: vec![Slot::Judge],
        requeue_after: None,
    });
    let (s, ev) = next_status(&job, &gates(&job), &d, &[], &[], now());
    let c = cond(&s.conditions, "Generated");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "AllShardsGenerated")
    );
    assert!(ev.iter().any(|e| e.reason == "AllShardsGenerated"));
    assert!(ev.iter().any(|e| e.reason == "JudgeStarted"));
    assert_eq!(s.judge.unwrap().phase, PodPhase::Pending);
}

#[test]
fn pod_facts_read_slot_attempt_and_the_failing_init_container() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "e-judge", "labels": {"janus.dev/stage": "judge", "janus.dev/attempt": "2"}},
        "status": {"phase": "Failed",
            "initContainerStatuses": [{"name": "judge", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 75, "message": "judge endpoint 503"}}}],
            "containerStatuses": [{"name": "score", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}}]}
    }))
    .unwrap();
    let f = pod_facts(&pod, None, |_| NodeState::Ready);
    assert_eq!(
        (f.role, f.attempt, f.phase),
        (Some(Slot::Judge), Some(2), PodPhase::Failed)
    );
    assert_eq!(
        (f.container.as_deref(), f.exit_code),
        (Some("judge"), Some(75))
    );
    assert_eq!(f.message.as_deref(), Some("judge endpoint 503"));
    assert!(f.foreign, "no owner reference: not the job's");
}

fn running_pods(n: i32) -> Vec<PodFacts> {
    (0..n)
        .map(|i| {
            let slot = Slot::Generate(i);
            testing::pod(slot.pod_name("e"), slot, 0, PodPhase::Running)
        })
        .collect()
}

#[test]
fn a_pod_that_cannot_start_is_running_false_with_the_kubelets_reason_and_one_warning() {
    let job = in_phase(EvalPhase::Generating);
    let d = Decision::Step(Progress {
        phase: EvalPhase::Generating,
        done: vec![],
        restart: vec![],
        delete: vec![],
        create: vec![],
        requeue_after: None,
    });
    let mut pods = running_pods(2);
    pods[1].phase = PodPhase::Pending;
    pods[1].waiting = Some(("ImagePullBackOff", "Back-off pulling image".into()));
    let (s, ev) = next_status(&job, &gates(&job), &d, &pods, &[], now());
    let c = cond(&s.conditions, "Running");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ImagePullBackOff")
    );
    testing::says(
        &c.message,
        &["pod e-generate-1 cannot start (ImagePullBackOff): Back-off pulling image"],
    );
    let w: Vec<_> = ev.iter().filter(|e| e.warning).collect();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].reason, "ImagePullBackOff");
    // The same state again: no second Event.
    let mut again = job.clone();
    again.status = Some(s);
    let (s, ev) = next_status(&again, &gates(&job), &d, &pods, &[], now());
    assert!(ev.iter().all(|e| !e.warning), "{ev:?}");
    // Started after all: Running=True, with an Event.
    again.status = Some(s);
    let (s, ev) = next_status(&again, &gates(&job), &d, &running_pods(2), &[], now());
    let c = cond(&s.conditions, "Running");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "PodsRunning")
    );
    assert!(ev.iter().any(|e| e.reason == "PodsRunning" && !e.warning));
    // A job whose pods never got stuck has no Running condition at all.
    let (s, _) = next_status(&job, &gates(&job), &d, &running_pods(2), &[], now());
    assert!(!s.conditions.iter().any(|c| c.type_ == "Running"));
}

#[test]
fn an_uncounted_restart_bumps_the_attempt_not_the_count() {
    let job = in_phase(EvalPhase::Generating);
    let d = Decision::Step(Progress {
        phase: EvalPhase::Generating,
        done: vec![],
        restart: vec![Restart {
            slot: Slot::Generate(1),
            pod: "e-generate-1".into(),
            reason: "NodeUnreachable",
            message: "node node-7 of pod e-generate-1 has been unavailable".into(),
            counted: false,
        }],
        delete: vec!["e-generate-1".into()],
        create: vec![],
        requeue_after: None,
    });
    let (s, ev) = next_status(&job, &gates(&job), &d, &[], &[], now());
    assert_eq!((s.restarts, s.shards[1].attempt), (0, 1));
    let w = ev.iter().find(|e| e.reason == "NodeUnreachable").unwrap();
    assert!(w.warning);
    testing::says(
        &w.note,
        &["node-7", "attempt 1", "not counted towards backoffLimit"],
    );
}

#[test]
fn a_failed_job_with_a_stuck_pod_is_failed_and_not_running() {
    let mut job = in_phase(EvalPhase::Generating);
    let mut conds = vec![];
    crate::controller::conditions::set_condition(
        &mut conds,
        "Running",
        false,
        "FailedCreate",
        "creating pod e-generate-0 was refused: quota",
        now(),
    );
    job.status.as_mut().unwrap().conditions = conds;
    let d = Decision::Fail {
        reason: "SchedulingTimeout",
        message: "late".into(),
        delete: vec![],
    };
    let (s, _) = next_status(&job, &gates(&job), &d, &[], &[], now());
    // Running stays False (its words are the last cause seen), as a training job's.
    assert_eq!(cond(&s.conditions, "Running").status, "False");
    let f = cond(&s.conditions, "Failed");
    assert_eq!(
        (f.status.as_str(), f.reason.as_str()),
        ("True", "SchedulingTimeout")
    );
}
