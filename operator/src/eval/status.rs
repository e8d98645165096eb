//! From a decision to the evaluation's next status (and the Events of its transitions),
//! plus the extraction of the decision's inputs from Kubernetes objects.

use janus_crds::eval::{
    condition, reason, EvalPhase, EvalScores, JudgeStatus, PodPhase, ShardStatus,
};
use janus_crds::progress::EvalReport;
use janus_crds::{labels, JanusEvalJob, JanusEvalJobStatus};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::children::{self, STAGE_GENERATE, STAGE_JUDGE};
use super::gates::{output_url, Gates};
use super::stage::{Decision, EvalFacts, Gate, PodFacts, Progress, Restart, Slot};
use crate::controller::conditions::{self, Cond, EventSpec, Transitions, When};
use crate::controller::nodes::NodeState;
use crate::controller::pods::{self, owned_by, Containers};
use crate::controller::stuck;

/// The containers of an evaluation's pods the decisions read: all of them (the judge
/// pod judges in an init container, then scores).
pub const CONTAINERS: Containers = Containers::All;

pub fn eval_facts(job: &JanusEvalJob, gates: &Gates) -> EvalFacts {
    let s = job.status.clone().unwrap_or_default();
    let rp = &job.spec.run_policy;
    let n = job.spec.worker.replicas.max(0) as usize;
    let shard = |i: usize| s.shards.iter().find(|x| x.index == i as i32);
    EvalFacts {
        name: job.name_any(),
        shards: job.spec.worker.replicas,
        run: crate::run_facts!(rp, s),
        phase: s.phase.unwrap_or_default(),
        restarts: s.restarts,
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

/// `job_uid`: the UID of the job the pod is looked at for; a pod whose controller owner
/// reference names another UID is foreign. `node(name)`: the state of the pod's node.
pub fn pod_facts(pod: &Pod, job_uid: Option<&str>, node: impl Fn(&str) -> NodeState) -> PodFacts {
    pods::pod_facts(pod, job_uid, slot_of(pod), CONTAINERS, node)
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
fn gate_condition(conds: &mut Vec<Condition>, t: &mut Transitions, type_: &str, gate: &Gate) {
    let (ok, why, msg) = match gate {
        Gate::Ready { reason, message } => (true, *reason, message),
        Gate::Waiting { reason, message } | Gate::Failed { reason, message } => {
            (false, *reason, message)
        }
    };
    let c = Cond::new(type_, ok, why, msg);
    // A failed gate's Event comes with the Failed condition.
    if matches!(gate, Gate::Failed { .. }) {
        t.set(conds, c);
    } else {
        t.announce(conds, c, When::OnReason, is_warning(why));
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
                    s.scores = Some(sc.clone());
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
    let (old, mut s, mut t) = conditions::begin(job, now);
    if old.phase.is_none() {
        created(job, &mut s, &mut t);
    }
    let old_phase = s.phase.unwrap_or_default();
    if matches!(decision, Decision::Finished { .. }) {
        return (s, t.events);
    }
    gate_conditions(job, gates, &mut s, &mut t);
    // Resume bookkeeping, once (the phase stays Suspended while old pods drain).
    if old_phase == EvalPhase::Suspended
        && !job.spec.run_policy.suspend
        && !t.had(condition::SUSPENDED, "False")
    {
        let msg = "the evaluation resumed; every pod continues from the output";
        let resumed = Cond::new(condition::SUSPENDED, false, reason::JOB_RESUMED, msg);
        t.announce(&mut s.conditions, resumed, When::Always, false);
        s.start_time = Some(Time(now));
    }
    s.shards = shards(&old.shards, job.spec.worker.replicas);
    slot_phases(&mut s, pods);
    mirror_reports(&mut s, reports);
    transition(job, decision, &old, &mut s, &mut t);
    generated(job, &mut s, &mut t);
    if matches!(decision, Decision::Step(Progress { .. })) {
        running(&mut s, &mut t, pods);
    }
    (s, t.events)
}

/// A new job: Created, Pending, and where it writes.
fn created(job: &JanusEvalJob, s: &mut JanusEvalJobStatus, t: &mut Transitions) {
    let n = job.spec.worker.replicas;
    let msg = format!("evaluating with {n} generation pods, then one judge pod");
    let c = Cond::new(condition::CREATED, true, reason::JOB_CREATED, &msg);
    t.announce(&mut s.conditions, c, When::Always, false);
    s.phase = Some(EvalPhase::Pending);
    s.output_url = Some(output_url(job));
}

/// The gates' conditions, and what resolving them found (recorded once).
fn gate_conditions(
    job: &JanusEvalJob,
    gates: &Gates,
    s: &mut JanusEvalJobStatus,
    t: &mut Transitions,
) {
    let conds = &mut s.conditions;
    gate_condition(conds, t, condition::MODEL_READY, &gates.model);
    if job
        .spec
        .baseline
        .as_ref()
        .is_some_and(|b| b.eval_job.is_some())
    {
        gate_condition(conds, t, condition::BASELINE_READY, &gates.baseline);
    }
    if let Some(g) = secrets_gate(job, gates) {
        gate_condition(conds, t, condition::SECRETS_READY, &g);
    }
    let r = &gates.resolved;
    if s.model_url.is_none() && r.model_url.is_some() {
        s.model_url = r.model_url.clone();
        s.prompt_format = r.prompt_format;
    }
    if s.baseline_results_url.is_none() {
        s.baseline_results_url = r.baseline_results_url.clone();
    }
}

/// The attempt of `slot` in `s`.
fn attempt_of(s: &JanusEvalJobStatus, slot: Slot) -> Option<i32> {
    match slot {
        Slot::Generate(i) => s.shards.iter().find(|x| x.index == i).map(|x| x.attempt),
        Slot::Judge => Some(s.judge.as_ref().map_or(0, |j| j.attempt)),
    }
}

/// The pods of each slot's attempt, in `s`.
fn current<'a>(s: &JanusEvalJobStatus, pods: &'a [PodFacts]) -> Vec<&'a PodFacts> {
    pods.iter()
        .filter(|p| !p.foreign)
        .filter(|p| p.role.is_some_and(|slot| p.attempt == attempt_of(s, slot)))
        .collect()
}

/// Per-slot state: what the pods show now.
fn slot_phases(s: &mut JanusEvalJobStatus, pods: &[PodFacts]) {
    for p in current(s, pods) {
        let Some(slot) = p.role else { continue };
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
}

/// The conditions that hold while the job runs: False once it stops.
const RUNNING_CONDITIONS: &[&str] = &[condition::RUNNING];

/// The phase, conditions and Events of `decision`.
fn transition(
    job: &JanusEvalJob,
    decision: &Decision,
    old: &JanusEvalJobStatus,
    s: &mut JanusEvalJobStatus,
    t: &mut Transitions,
) {
    match decision {
        Decision::Step(Progress {
            phase,
            done,
            restart,
            create,
            ..
        }) => {
            s.phase = Some(*phase);
            progress(job, old, s, t, done, restart, create);
        }
        Decision::Fail {
            reason: why,
            message,
            ..
        } => {
            s.phase = Some(EvalPhase::Failed);
            let failed = Cond::new(condition::FAILED, true, why, message);
            t.finish(&mut s.conditions, failed, true, RUNNING_CONDITIONS);
            s.completion_time = Some(Time(t.now()));
        }
        Decision::Succeed { .. } => succeed(job, s, t),
        Decision::Suspend { .. } => {
            s.phase = Some(EvalPhase::Suspended);
            let msg = "suspended: pods deleted, the output is kept";
            let suspended = Cond::new(condition::SUSPENDED, true, reason::JOB_SUSPENDED, msg);
            t.announce(&mut s.conditions, suspended, When::OnStatus, false);
            t.clear(
                &mut s.conditions,
                condition::RUNNING,
                reason::JOB_SUSPENDED,
                msg,
            );
        }
        Decision::Finished { .. } => unreachable!("next_status returns before"),
    }
}

/// Slots done, restarts counted (each with a Warning), slots created.
fn progress(
    job: &JanusEvalJob,
    old: &JanusEvalJobStatus,
    s: &mut JanusEvalJobStatus,
    t: &mut Transitions,
    done: &[Slot],
    restart: &[Restart],
    create: &[Slot],
) {
    for slot in done {
        if let Slot::Generate(i) = slot {
            if let Some(sh) = s.shards.iter_mut().find(|x| x.index == *i) {
                sh.phase = PodPhase::Succeeded;
            }
        }
    }
    for r in restart {
        restarted(job, s, t, r);
    }
    if !create.is_empty() && s.start_time.is_none() {
        s.start_time = Some(Time(t.now()));
    }
    if create.contains(&Slot::Judge) && old.judge.is_none() {
        let n = job.spec.worker.replicas;
        let msg = format!(
            "all {n} shards generated; judging with {} at {}",
            job.spec.judge.model, job.spec.judge.endpoint
        );
        t.event(false, reason::JUDGE_STARTED, msg);
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

/// One pod recreated: its slot's attempt + 1, the restart counted where it counts, and
/// a Warning.
fn restarted(job: &JanusEvalJob, s: &mut JanusEvalJobStatus, t: &mut Transitions, r: &Restart) {
    if r.counted {
        s.restarts += 1;
    }
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
    let limit = job.spec.run_policy.backoff_limit;
    let counted = if r.counted {
        format!("restart {} of backoffLimit {limit}", s.restarts)
    } else {
        format!("not counted towards backoffLimit {limit}")
    };
    t.event(
        true,
        r.reason,
        format!(
            "{}; recreating it (attempt {attempt}, {counted}); it resumes from the output",
            r.message
        ),
    );
}

/// The judge pod exited 0: the scores it reported, or a Warning that it reported none.
fn succeed(job: &JanusEvalJob, s: &mut JanusEvalJobStatus, t: &mut Transitions) {
    s.phase = Some(EvalPhase::Succeeded);
    if let Some(j) = s.judge.as_mut() {
        j.phase = PodPhase::Succeeded;
    }
    let items = s.progress.as_ref().map_or(0, |p| p.items_generated);
    let (why, msg, warning) = match &s.scores {
        Some(sc) => (reason::SCORES_REPORTED, scores_note(sc, items), false),
        None => (
            reason::SCORES_MISSING,
            format!(
                "the judge pod of {} exited 0 but reported no scores on its janus.dev/eval-progress annotation; see {}",
                job.name_any(),
                janus_crds::config::eval::output_path(
                    s.output_url.as_deref().unwrap_or_default(),
                    janus_crds::config::eval::layout::SUMMARY
                )
            ),
            true,
        ),
    };
    let done = Cond::new(condition::SUCCEEDED, true, why, &msg);
    t.finish(&mut s.conditions, done, warning, RUNNING_CONDITIONS);
    s.completion_time = Some(Time(t.now()));
}

/// All shards generated: a condition, and an Event once.
fn generated(job: &JanusEvalJob, s: &mut JanusEvalJobStatus, t: &mut Transitions) {
    let n = job.spec.worker.replicas;
    let all = n > 0 && s.shards.iter().all(|x| x.phase == PodPhase::Succeeded);
    if all && !t.had(condition::GENERATED, "True") {
        let items = s.progress.as_ref().map_or(0, |p| p.items_generated);
        let g = Gate::ready(
            reason::ALL_SHARDS_GENERATED,
            format!("all {n} shards generated ({items} items)"),
        );
        gate_condition(&mut s.conditions, t, condition::GENERATED, &g);
    }
}

/// A current pod that cannot start makes Running=False with its reason (as a training
/// worker's); once every current pod runs again, Running=True. Absent while no pod was
/// ever stuck.
fn running(s: &mut JanusEvalJobStatus, t: &mut Transitions, pods: &[PodFacts]) {
    let current = current(s, pods);
    stuck::running(t, &mut s.conditions, &current, "pod");
    let up: Vec<&&PodFacts> = current.iter().filter(|p| !p.terminating).collect();
    let all_up = !up.is_empty()
        && up
            .iter()
            .all(|p| matches!(p.phase, PodPhase::Running | PodPhase::Succeeded));
    let pending = s.conditions.iter().any(|c| {
        c.type_ == condition::RUNNING && c.status == "False" && c.reason == reason::WORKERS_PENDING
    });
    if all_up && pending {
        let msg = "the pods of the current stage are running";
        let c = Cond::new(condition::RUNNING, true, reason::PODS_RUNNING, msg);
        t.announce(&mut s.conditions, c, When::OnStatus, false);
    }
}

#[cfg(test)]
mod tests;
