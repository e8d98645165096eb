//! From a decision to the evaluation's next status (and the Events of its transitions),
//! plus the extraction of the decision's inputs from Kubernetes objects.

use janus_crds::eval::{
    condition, reason, EvalPhase, EvalScores, HeadToHead, JudgeStatus, PodPhase, ShardStatus,
};
use janus_crds::progress::EvalReport;
use janus_crds::{labels, JanusEvalJob, JanusEvalJobStatus};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::children::{self, STAGE_GENERATE, STAGE_JUDGE};
use super::gates::{output_url, Gates};
use super::stage::{Decision, EvalFacts, Gate, PodFacts, Slot, Termination};
use crate::training::status::{has_condition, owned_by, set_condition, EventSpec};

pub fn eval_facts(job: &JanusEvalJob, gates: &Gates) -> EvalFacts {
    let s = job.status.clone().unwrap_or_default();
    let rp = &job.spec.run_policy;
    let n = job.spec.worker.replicas.max(0) as usize;
    let shard = |i: usize| s.shards.iter().find(|x| x.index == i as i32);
    EvalFacts {
        name: job.name_any(),
        shards: job.spec.worker.replicas,
        backoff_limit: rp.backoff_limit,
        active_deadline_seconds: rp.active_deadline_seconds,
        ttl_seconds_after_finished: rp.ttl_seconds_after_finished,
        suspend: rp.suspend,
        clean_pod_policy: rp.clean_pod_policy,
        phase: s.phase.unwrap_or_default(),
        restarts: s.restarts,
        start_time: s.start_time.as_ref().map(|t| t.0),
        completion_time: s.completion_time.as_ref().map(|t| t.0),
        shard_attempts: (0..n).map(|i| shard(i).map_or(0, |x| x.attempt)).collect(),
        shard_done: (0..n)
            .map(|i| shard(i).is_some_and(|x| x.phase == PodPhase::Succeeded))
            .collect(),
        judge_attempt: s.judge.as_ref().map_or(0, |j| j.attempt),
        model: gates.model.clone(),
        storage_secret: gates.storage_secret.clone(),
        baseline: gates.baseline.clone(),
        judge_secret: gates.judge_secret.clone(),
    }
}

/// The slot a pod's labels name.
pub fn slot_of(pod: &Pod) -> Option<Slot> {
    let l = pod.labels();
    match l.get(labels::STAGE).map(String::as_str) {
        Some(STAGE_GENERATE) => Some(Slot::Generate(l.get(labels::SHARD)?.parse().ok()?)),
        Some(STAGE_JUDGE) => Some(Slot::Judge),
        _ => None,
    }
}

fn terminated(cs: &ContainerStatus) -> Option<Termination> {
    let t = cs.state.as_ref()?.terminated.as_ref()?;
    (t.exit_code != 0).then(|| Termination {
        container: cs.name.clone(),
        exit_code: t.exit_code,
        message: t.message.clone(),
    })
}

/// `job_uid`: the UID of the job the pod is looked at for; a pod whose controller owner
/// reference names another UID is foreign.
pub fn pod_facts(pod: &Pod, job_uid: Option<&str>) -> PodFacts {
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Pending,
    };
    // Init containers ran first: the first non-zero exit is the cause.
    let failure = status.and_then(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .find_map(terminated)
    });
    PodFacts {
        name: pod.name_any(),
        slot: slot_of(pod),
        attempt: pod
            .labels()
            .get(labels::ATTEMPT)
            .and_then(|v| v.parse().ok()),
        phase,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        failure,
        evicted: status.and_then(|s| s.reason.as_deref()) == Some("Evicted"),
        foreign: !owned_by(pod, job_uid),
    }
}

/// The progress reports of the job's current pods (those of each slot's attempt).
pub fn reports(facts: &EvalFacts, job_uid: Option<&str>, pods: &[&Pod]) -> Vec<(Slot, EvalReport)> {
    pods.iter()
        .filter(|p| owned_by(p, job_uid))
        .filter_map(|p| {
            let slot = slot_of(p)?;
            let attempt: i32 = p.labels().get(labels::ATTEMPT)?.parse().ok()?;
            let want = match slot {
                Slot::Generate(i) => *facts.shard_attempts.get(usize::try_from(i).ok()?)?,
                Slot::Judge => facts.judge_attempt,
            };
            let report = EvalReport::from_annotation(children::progress_annotation(p)?)?;
            (attempt == want).then_some((slot, report))
        })
        .collect()
}

/// Reasons whose Event is a Warning.
fn is_warning(reason: &str) -> bool {
    [
        reason::TRAINING_JOB_NOT_FOUND,
        reason::BASELINE_NOT_FOUND,
        reason::SECRET_NOT_FOUND,
        reason::SECRET_KEY_NOT_FOUND,
        reason::TRAINING_JOB_FAILED,
        reason::BASELINE_FAILED,
        reason::SCORES_MISSING,
    ]
    .contains(&reason)
}

/// Set condition `type_` from a gate, with an Event when its status or reason changes.
fn gate_condition(
    conds: &mut Vec<Condition>,
    events: &mut Vec<EventSpec>,
    type_: &str,
    gate: &Gate,
    now: Timestamp,
) {
    let (ok, why, msg) = match gate {
        Gate::Ready { reason, message } => (true, *reason, message),
        Gate::Waiting { reason, message } | Gate::Failed { reason, message } => {
            (false, *reason, message)
        }
    };
    let status = if ok { "True" } else { "False" };
    let changed = !conds
        .iter()
        .any(|c| c.type_ == type_ && c.status == status && c.reason == why);
    set_condition(conds, type_, ok, why, msg, now);
    // A failed gate's Event comes with the Failed condition.
    if changed && !matches!(gate, Gate::Failed { .. }) {
        events.push(EventSpec {
            warning: is_warning(why),
            reason: why,
            note: msg.clone(),
        });
    }
}

/// The `SecretsReady` gate: the first Secret waited for, else found.
fn secrets_gate(job: &JanusEvalJob, gates: &Gates) -> Option<Gate> {
    let named: Vec<&str> = job
        .spec
        .storage_secret_ref
        .iter()
        .map(|s| s.name.as_str())
        .chain(
            job.spec
                .judge
                .api_key_secret_ref
                .iter()
                .map(|s| s.name.as_str()),
        )
        .collect();
    if named.is_empty() {
        return None;
    }
    for g in [&gates.storage_secret, &gates.judge_secret] {
        if !g.is_ready() {
            return Some(g.clone());
        }
    }
    Some(Gate::ready(
        reason::SECRETS_FOUND,
        format!("found Secret {}", named.join(", ")),
    ))
}

fn shards(old: &[ShardStatus], n: i32) -> Vec<ShardStatus> {
    (0..n)
        .map(|i| {
            old.iter()
                .find(|s| s.index == i)
                .cloned()
                .unwrap_or(ShardStatus {
                    index: i,
                    ..Default::default()
                })
        })
        .collect()
}

fn scores(s: &janus_crds::progress::ScoreSummary) -> EvalScores {
    let versus_baseline = match (s.win, s.tie, s.lose) {
        (Some(win), Some(tie), Some(lose)) => Some(HeadToHead {
            win,
            tie,
            lose,
            win_plus_tie: win + tie,
        }),
        _ => None,
    };
    EvalScores {
        mean: s.mean,
        std: s.std,
        per_dimension: s.per_dimension.clone(),
        versus_baseline,
    }
}

fn scores_note(s: &EvalScores, items: u64) -> String {
    let mut m = format!(
        "mean score {:.3} (std {:.3}) over {items} items",
        s.mean, s.std
    );
    if let Some(h) = &s.versus_baseline {
        m.push_str(&format!(
            "; against the baseline win {:.3}, tie {:.3}, lose {:.3} (win+tie {:.3})",
            h.win, h.tie, h.lose, h.win_plus_tie
        ));
    }
    m
}

/// Mirror the pods' reports into shard, judge, progress and scores.
fn mirror_reports(s: &mut JanusEvalJobStatus, reports: &[(Slot, EvalReport)]) {
    let mut progress = s.progress.clone().unwrap_or_default();
    for (slot, r) in reports {
        match slot {
            Slot::Generate(i) => {
                if let Some(sh) = s.shards.iter_mut().find(|x| x.index == *i) {
                    sh.items_done = r.items_done;
                    sh.items_total = r.items_total;
                }
            }
            Slot::Judge => {
                if let Some(j) = s.judge.as_mut() {
                    j.stage = Some(r.stage.clone());
                }
                progress.calls_judged = r.calls_done;
                progress.calls_total = r.calls_total;
                progress.judge_failures = r.parse_failures;
                if let Some(sc) = &r.scores {
                    s.scores = Some(scores(sc));
                }
            }
        }
        if progress.updated_at.as_deref() < Some(r.updated_at.as_str()) {
            progress.updated_at = Some(r.updated_at.clone());
        }
    }
    progress.items_generated = s.shards.iter().map(|x| x.items_done).sum();
    progress.items_total = s.shards.iter().map(|x| x.items_total).sum();
    if s.progress.is_some() || !reports.is_empty() {
        s.progress = Some(progress);
    }
}

/// The status after `decision`, and the Events of the transitions it makes.
pub fn next_status(
    job: &JanusEvalJob,
    gates: &Gates,
    decision: &Decision,
    pods: &[PodFacts],
    reports: &[(Slot, EvalReport)],
    now: Timestamp,
) -> (JanusEvalJobStatus, Vec<EventSpec>) {
    let old = job.status.clone().unwrap_or_default();
    let mut s = old.clone();
    let mut events = vec![];
    let name = job.name_any();
    let n = job.spec.worker.replicas;
    s.observed_generation = job.metadata.generation;

    if old.phase.is_none() {
        let msg = format!("evaluating with {n} generation pods, then one judge pod");
        set_condition(
            &mut s.conditions,
            condition::CREATED,
            true,
            reason::JOB_CREATED,
            &msg,
            now,
        );
        events.push(EventSpec {
            warning: false,
            reason: reason::JOB_CREATED,
            note: msg,
        });
        s.phase = Some(EvalPhase::Pending);
        s.output_url = Some(output_url(job));
    }
    let old_phase = s.phase.unwrap_or_default();
    if matches!(decision, Decision::Finished { .. }) {
        return (s, events);
    }

    // Gates, and what resolving them found (recorded once).
    gate_condition(
        &mut s.conditions,
        &mut events,
        condition::MODEL_READY,
        &gates.model,
        now,
    );
    if job
        .spec
        .baseline
        .as_ref()
        .is_some_and(|b| b.eval_job.is_some())
    {
        gate_condition(
            &mut s.conditions,
            &mut events,
            condition::BASELINE_READY,
            &gates.baseline,
            now,
        );
    }
    if let Some(g) = secrets_gate(job, gates) {
        gate_condition(
            &mut s.conditions,
            &mut events,
            condition::SECRETS_READY,
            &g,
            now,
        );
    }
    let r = &gates.resolved;
    if s.model_url.is_none() && r.model_url.is_some() {
        s.model_url = r.model_url.clone();
        s.prompt_format = r.prompt_format;
    }
    if s.baseline_results_url.is_none() {
        s.baseline_results_url = r.baseline_results_url.clone();
    }

    // Resume bookkeeping, once (the phase stays Suspended while old pods drain).
    let resumed = has_condition(&old.conditions, condition::SUSPENDED, "False");
    if old_phase == EvalPhase::Suspended && !job.spec.run_policy.suspend && !resumed {
        let msg = "the evaluation resumed; every pod continues from the output";
        set_condition(
            &mut s.conditions,
            condition::SUSPENDED,
            false,
            reason::JOB_RESUMED,
            msg,
            now,
        );
        s.start_time = Some(Time(now));
        events.push(EventSpec {
            warning: false,
            reason: reason::JOB_RESUMED,
            note: msg.into(),
        });
    }

    // Per-slot state: what the pods show now.
    s.shards = shards(&old.shards, n);
    let attempt_of = |s: &JanusEvalJobStatus, slot: Slot| match slot {
        Slot::Generate(i) => s.shards.iter().find(|x| x.index == i).map(|x| x.attempt),
        Slot::Judge => Some(s.judge.as_ref().map_or(0, |j| j.attempt)),
    };
    for p in pods.iter().filter(|p| !p.foreign) {
        let Some(slot) = p.slot else { continue };
        if p.attempt != attempt_of(&s, slot) {
            continue;
        }
        let phase = if p.terminating && p.phase != PodPhase::Succeeded {
            PodPhase::Pending
        } else {
            p.phase
        };
        match slot {
            Slot::Generate(i) => {
                if let Some(sh) = s.shards.iter_mut().find(|x| x.index == i) {
                    if sh.phase != PodPhase::Succeeded {
                        sh.phase = phase;
                    }
                }
            }
            Slot::Judge => {
                s.judge.get_or_insert_with(Default::default).phase = phase;
            }
        }
    }
    mirror_reports(&mut s, reports);

    let finish = |s: &mut JanusEvalJobStatus,
                  phase: EvalPhase,
                  cond: &str,
                  why: &'static str,
                  msg: &str,
                  warning: bool,
                  events: &mut Vec<EventSpec>| {
        s.phase = Some(phase);
        set_condition(&mut s.conditions, cond, true, why, msg, now);
        s.completion_time = Some(Time(now));
        events.push(EventSpec {
            warning,
            reason: why,
            note: msg.to_string(),
        });
    };

    match decision {
        Decision::Progress {
            phase,
            done,
            restart,
            create,
            ..
        } => {
            s.phase = Some(*phase);
            for slot in done {
                if let Slot::Generate(i) = slot {
                    if let Some(sh) = s.shards.iter_mut().find(|x| x.index == *i) {
                        sh.phase = PodPhase::Succeeded;
                    }
                }
            }
            for r in restart {
                s.restarts += 1;
                let attempt = match r.slot {
                    Slot::Generate(i) => {
                        let sh = s.shards.iter_mut().find(|x| x.index == i).expect("shard");
                        sh.attempt += 1;
                        sh.phase = PodPhase::Failed;
                        sh.attempt
                    }
                    Slot::Judge => {
                        let j = s.judge.get_or_insert_with(Default::default);
                        j.attempt += 1;
                        j.phase = PodPhase::Failed;
                        j.attempt
                    }
                };
                events.push(EventSpec {
                    warning: true,
                    reason: r.reason,
                    note: format!(
                        "{}; recreating it (attempt {attempt}, restart {} of backoffLimit {}); it resumes from the output",
                        r.message, s.restarts, job.spec.run_policy.backoff_limit
                    ),
                });
            }
            if !create.is_empty() && s.start_time.is_none() {
                s.start_time = Some(Time(now));
            }
            if create.contains(&Slot::Judge) && old.judge.is_none() {
                let msg = format!(
                    "all {n} shards generated; judging with {} at {}",
                    job.spec.judge.model, job.spec.judge.endpoint
                );
                events.push(EventSpec {
                    warning: false,
                    reason: reason::JUDGE_STARTED,
                    note: msg,
                });
            }
            for slot in create {
                match slot {
                    Slot::Generate(i) => {
                        if let Some(sh) = s.shards.iter_mut().find(|x| x.index == *i) {
                            sh.phase = PodPhase::Pending;
                        }
                    }
                    Slot::Judge => {
                        s.judge.get_or_insert_with(JudgeStatus::default).phase = PodPhase::Pending
                    }
                }
            }
        }
        Decision::Fail {
            reason: why,
            message,
            ..
        } => finish(
            &mut s,
            EvalPhase::Failed,
            condition::FAILED,
            why,
            message,
            true,
            &mut events,
        ),
        Decision::Succeed { .. } => {
            if let Some(j) = s.judge.as_mut() {
                j.phase = PodPhase::Succeeded;
            }
            let items = s.progress.as_ref().map_or(0, |p| p.items_generated);
            let (why, msg, warning) = match &s.scores {
                Some(sc) => (reason::SCORES_REPORTED, scores_note(sc, items), false),
                None => (
                    reason::SCORES_MISSING,
                    format!(
                        "the judge pod of {name} exited 0 but reported no scores on its janus.dev/eval-progress annotation; see {}/summary.json",
                        s.output_url.clone().unwrap_or_default()
                    ),
                    true,
                ),
            };
            finish(
                &mut s,
                EvalPhase::Succeeded,
                condition::SUCCEEDED,
                why,
                &msg,
                warning,
                &mut events,
            );
        }
        Decision::Suspend { .. } => {
            s.phase = Some(EvalPhase::Suspended);
            let msg = "suspended: pods deleted, the output is kept";
            if !has_condition(&old.conditions, condition::SUSPENDED, "True") {
                events.push(EventSpec {
                    warning: false,
                    reason: reason::JOB_SUSPENDED,
                    note: msg.into(),
                });
            }
            set_condition(
                &mut s.conditions,
                condition::SUSPENDED,
                true,
                reason::JOB_SUSPENDED,
                msg,
                now,
            );
        }
        Decision::Finished { .. } => unreachable!("returned above"),
    }

    // All shards generated: a condition, and an Event once.
    let generated = n > 0 && s.shards.iter().all(|x| x.phase == PodPhase::Succeeded);
    if generated && !has_condition(&old.conditions, condition::GENERATED, "True") {
        let items = s.progress.as_ref().map_or(0, |p| p.items_generated);
        let g = Gate::ready(
            reason::ALL_SHARDS_GENERATED,
            format!("all {n} shards generated ({items} items)"),
        );
        gate_condition(
            &mut s.conditions,
            &mut events,
            condition::GENERATED,
            &g,
            now,
        );
    }
    (s, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::config_render::tests::representative_job;
    use crate::eval::stage::Restart;
    use janus_crds::progress::ScoreSummary;

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
        Decision::Progress {
            phase: EvalPhase::Pending,
            done: vec![],
            restart: vec![],
            delete: vec![],
            create,
            requeue_after: None,
        }
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
        let m = s
            .conditions
            .iter()
            .find(|c| c.type_ == "ModelReady")
            .unwrap();
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
            message:
                "Secret openai (spec.judge.apiKeySecretRef) not found; the judge pod waits for it"
                    .into(),
        };
        let (s, ev) = next_status(&job, &g, &progress(vec![]), &[], &[], now());
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "SecretsReady")
            .unwrap();
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
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "SecretsReady")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SecretsFound")
        );
        assert!(ev.iter().any(|e| e.reason == "SecretsFound" && !e.warning));
    }

    #[test]
    fn a_restart_bumps_the_slot_attempt_and_the_count_with_a_warning() {
        let mut job = representative_job();
        job.status = Some(JanusEvalJobStatus {
            phase: Some(EvalPhase::Generating),
            ..Default::default()
        });
        let d = Decision::Progress {
            phase: EvalPhase::Generating,
            done: vec![],
            restart: vec![Restart {
                slot: Slot::Generate(2),
                pod: "p".into(),
                reason: reason::POD_FAILED,
                message: "pod p (container generate) exited with code 75".into(),
            }],
            delete: vec!["p".into()],
            create: vec![],
            requeue_after: None,
        };
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
        judge.scores = Some(ScoreSummary {
            mean: 3.8,
            std: 0.1,
            win: Some(0.5),
            tie: Some(0.2),
            lose: Some(0.3),
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
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Succeeded")
            .unwrap();
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
                slot: Some(Slot::Generate(i)),
                attempt: Some(0),
                phase: PodPhase::Running,
                terminating: false,
                failure: None,
                evicted: false,
                foreign: false,
            })
            .collect();
        let reps = vec![
            (Slot::Generate(0), report("generate", 3, 10)),
            (Slot::Generate(1), report("generate", 4, 10)),
        ];
        let d = Decision::Progress {
            phase: EvalPhase::Generating,
            done: vec![],
            restart: vec![],
            delete: vec![],
            create: vec![],
            requeue_after: None,
        };
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
        let d = Decision::Progress {
            phase: EvalPhase::Judging,
            done: vec![Slot::Generate(0)],
            restart: vec![],
            delete: vec![],
            create: vec![Slot::Judge],
            requeue_after: None,
        };
        let (s, ev) = next_status(&job, &gates(&job), &d, &[], &[], now());
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Generated")
            .unwrap();
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
        let f = pod_facts(&pod, None);
        assert_eq!(
            (f.slot, f.attempt, f.phase),
            (Some(Slot::Judge), Some(2), PodPhase::Failed)
        );
        let t = f.failure.unwrap();
        assert_eq!((t.container.as_str(), t.exit_code), ("judge", 75));
        assert_eq!(t.message.as_deref(), Some("judge endpoint 503"));
        assert!(f.foreign, "no owner reference: not the job's");
    }
}
