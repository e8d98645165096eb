//! What an evaluation waits on, judged from the objects it names: the model (a URL, or
//! a `JanusTrainingJob` that has to succeed first), the baseline (another
//! `JanusEvalJob` that has to succeed first) and the Secrets its pods use. Pure
//! functions of those objects; the controller looks them up.
//!
//! The model and the baseline are resolved once and recorded in the status, so a
//! training job deleted after the evaluation started changes nothing.

use janus_crds::config::{presets, PromptFormat};
use janus_crds::eval::{condition, reason, EvalPhase};
use janus_crds::training::JobPhase;
use janus_crds::{JanusEvalJob, JanusTrainingJob};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::stage::Gate;

/// The model, baseline and prompt format the pods use, once known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    pub model_url: Option<String>,
    pub prompt_format: Option<PromptFormat>,
    pub baseline_results_url: Option<String>,
}

/// Every gate of a job, and what resolving them found.
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    pub model: Gate,
    pub baseline: Gate,
    pub storage_secret: Gate,
    pub judge_secret: Gate,
    pub resolved: Resolved,
}

/// `<spec.output.url>/<namespace>/<name>`: where a job writes (DESIGN.md).
pub fn output_url(job: &JanusEvalJob) -> String {
    format!(
        "{}/{}/{}",
        job.spec.output.url.as_str().trim_end_matches('/'),
        job.namespace().unwrap_or_default(),
        job.name_any()
    )
}

/// The prompt format a training job trained with: its dataset's, else its recipe's.
pub fn training_prompt_format(tj: &JanusTrainingJob) -> PromptFormat {
    tj.spec
        .dataset
        .prompt_format
        .unwrap_or_else(|| presets::for_method(tj.spec.method).data.prompt_format)
}

fn failed_message(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> String {
    conds
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "no reason given".into())
}

/// The model gate; `training` is the job `spec.model.trainingJob` names, if it exists.
pub fn model(job: &JanusEvalJob, training: Option<&JanusTrainingJob>) -> (Gate, Resolved) {
    let spec = &job.spec.model;
    let status = job.status.clone().unwrap_or_default();
    let from_training = spec.training_job.as_deref();
    let ready_reason = if from_training.is_some() {
        reason::TRAINING_JOB_SUCCEEDED
    } else {
        reason::MODEL_URL
    };
    if let Some(url) = status.model_url {
        let pf = status
            .prompt_format
            .or(spec.prompt_format)
            .unwrap_or(PromptFormat::Mistral);
        let gate = Gate::ready(ready_reason, format!("evaluating {url}"));
        return (gate, resolved(url, pf));
    }
    let Some(name) = from_training else {
        let url = spec.url.as_ref().map(|u| u.to_string()).unwrap_or_default();
        let pf = spec.prompt_format.unwrap_or(PromptFormat::Mistral);
        return (
            Gate::ready(ready_reason, format!("evaluating {url}")),
            resolved(url, pf),
        );
    };
    let ns = job.namespace().unwrap_or_default();
    let Some(tj) = training else {
        let gate = Gate::Waiting {
            reason: reason::TRAINING_JOB_NOT_FOUND,
            message: format!(
                "JanusTrainingJob {name} (spec.model.trainingJob) not found in namespace {ns}; waiting for it to be created and to succeed"
            ),
        };
        return (gate, Resolved::default());
    };
    let ts = tj.status.clone().unwrap_or_default();
    match tj.phase() {
        JobPhase::Succeeded => {
            let url = tj.spec.output.url.to_string();
            let pf = spec
                .prompt_format
                .unwrap_or_else(|| training_prompt_format(tj));
            let gate = Gate::ready(
                ready_reason,
                format!("JanusTrainingJob {name} succeeded; evaluating its output {url}"),
            );
            (gate, resolved(url, pf))
        }
        JobPhase::Failed => (
            Gate::Failed {
                reason: reason::TRAINING_JOB_FAILED,
                message: format!(
                    "JanusTrainingJob {name} failed ({}); there is no model to evaluate",
                    failed_message(&ts.conditions)
                ),
            },
            Resolved::default(),
        ),
        phase => {
            let step = ts
                .progress
                .map(|p| format!(", step {}/{}", p.step, p.total_steps))
                .unwrap_or_default();
            (
                Gate::Waiting {
                    reason: reason::WAITING_FOR_TRAINING_JOB,
                    message: format!(
                        "waiting for JanusTrainingJob {name} to succeed (phase {}{step})",
                        phase.as_str()
                    ),
                },
                Resolved::default(),
            )
        }
    }
}

fn resolved(url: String, pf: PromptFormat) -> Resolved {
    Resolved {
        model_url: Some(url),
        prompt_format: Some(pf),
        baseline_results_url: None,
    }
}

/// The baseline gate and the baseline's `results.json`; `other` is the job
/// `spec.baseline.evalJob` names, if it exists.
pub fn baseline(job: &JanusEvalJob, other: Option<&JanusEvalJob>) -> (Gate, Option<String>) {
    let none = Gate::ready(reason::BASELINE_SUCCEEDED, "");
    let Some(b) = &job.spec.baseline else {
        return (none, None);
    };
    if let Some(url) = &b.results_url {
        return (none, Some(url.to_string()));
    }
    if let Some(url) = job
        .status
        .as_ref()
        .and_then(|s| s.baseline_results_url.clone())
    {
        return (
            Gate::ready(reason::BASELINE_SUCCEEDED, format!("comparing with {url}")),
            Some(url),
        );
    }
    let name = b.eval_job.clone().unwrap_or_default();
    let ns = job.namespace().unwrap_or_default();
    let Some(other) = other else {
        return (
            Gate::Waiting {
                reason: reason::BASELINE_NOT_FOUND,
                message: format!(
                    "JanusEvalJob {name} (spec.baseline.evalJob) not found in namespace {ns}; the judge waits for it to be created and to succeed"
                ),
            },
            None,
        );
    };
    let os = other.status.clone().unwrap_or_default();
    match other.phase() {
        EvalPhase::Succeeded => {
            let dir = os.output_url.clone().unwrap_or_else(|| output_url(other));
            let url = janus_crds::config::eval::output_path(&dir, janus_crds::config::eval::layout::RESULTS);
            (
                Gate::ready(
                    reason::BASELINE_SUCCEEDED,
                    format!("JanusEvalJob {name} succeeded; comparing with {url}"),
                ),
                Some(url),
            )
        }
        EvalPhase::Failed => (
            Gate::Failed {
                reason: reason::BASELINE_FAILED,
                message: format!(
                    "the baseline JanusEvalJob {name} failed ({}); there is nothing to compare with",
                    failed_message(&os.conditions)
                ),
            },
            None,
        ),
        phase => (
            Gate::Waiting {
                reason: reason::WAITING_FOR_BASELINE,
                message: format!(
                    "the judge waits for the baseline JanusEvalJob {name} to succeed (phase {})",
                    phase.as_str()
                ),
            },
            None,
        ),
    }
}

/// The gate of Secret `name` (the job's `field`), needing `key` in it when given.
/// `what` says which pods wait for it.
pub fn secret(
    name: &str,
    key: Option<&str>,
    found: Option<&Secret>,
    field: &str,
    what: &str,
) -> Gate {
    let Some(s) = found else {
        return Gate::Waiting {
            reason: reason::SECRET_NOT_FOUND,
            message: format!("Secret {name} ({field}) not found; {what} wait for it"),
        };
    };
    if let Some(key) = key {
        let has = s.data.as_ref().is_some_and(|d| d.contains_key(key))
            || s.string_data.as_ref().is_some_and(|d| d.contains_key(key));
        if !has {
            return Gate::Waiting {
                reason: reason::SECRET_KEY_NOT_FOUND,
                message: format!("Secret {name} ({field}) has no key {key}; {what} wait for it"),
            };
        }
    }
    Gate::ready(reason::SECRETS_FOUND, format!("Secret {name} found"))
}

/// The Secret gates as the status last recorded them (the `SecretsReady` condition),
/// for a reconcile that does not read the Secrets: a False condition keeps what it
/// waits on, anything else counts as ready.
pub fn secrets_from_status(job: &JanusEvalJob) -> (Gate, Gate) {
    let ready = || Gate::ready(reason::SECRETS_FOUND, "");
    let cond = job.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::SECRETS_READY)
    });
    match cond {
        Some(c) if c.status == "False" => {
            let why = if c.reason == reason::SECRET_KEY_NOT_FOUND {
                reason::SECRET_KEY_NOT_FOUND
            } else {
                reason::SECRET_NOT_FOUND
            };
            let waiting = Gate::Waiting {
                reason: why,
                message: c.message.clone(),
            };
            // Which Secret it was is in the message; holding every pod is the safe side
            // until the next reconcile reads the Secrets.
            (waiting.clone(), waiting)
        }
        _ => (ready(), ready()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::config_render::tests::representative_job;
    use janus_crds::JanusTrainingJobStatus;

    fn training_job(phase: JobPhase) -> JanusTrainingJob {
        let spec = serde_json::from_value(serde_json::json!({
            "method": "orpo",
            "model": {"url": "s3://models/base"},
            "dataset": {"urls": ["s3://d/x.parquet"]},
            "workers": {"image": "i"},
            "checkpoint": {"url": "s3://c"},
            "output": {"url": "s3://models/janus-orpo"}
        }))
        .unwrap();
        let mut tj = JanusTrainingJob::new("orpo", spec);
        tj.status = Some(JanusTrainingJobStatus {
            phase: Some(phase),
            ..Default::default()
        });
        tj
    }

    fn from_training() -> JanusEvalJob {
        let mut job = representative_job();
        job.spec.model.url = None;
        job.spec.model.training_job = Some("orpo".into());
        job.spec.model.prompt_format = None;
        job
    }

    #[test]
    fn a_url_model_is_ready_with_mistral_by_default() {
        let mut job = representative_job();
        job.spec.model.prompt_format = None;
        let (g, r) = model(&job, None);
        assert!(g.is_ready());
        assert_eq!(r.model_url.as_deref(), Some("s3://models/janus-7b-orpo"));
        assert_eq!(r.prompt_format, Some(PromptFormat::Mistral));
    }

    #[test]
    fn a_training_job_model_waits_until_it_succeeds_and_takes_its_prompt_format() {
        let job = from_training();
        match model(&job, None).0 {
            Gate::Waiting { reason, message } => {
                assert_eq!(reason, "TrainingJobNotFound");
                assert!(
                    message.contains("orpo") && message.contains("research"),
                    "{message}"
                );
            }
            g => panic!("{g:?}"),
        }
        match model(&job, Some(&training_job(JobPhase::Running))).0 {
            Gate::Waiting { reason, message } => {
                assert_eq!(reason, "WaitingForTrainingJob");
                assert!(message.contains("phase Running"), "{message}");
            }
            g => panic!("{g:?}"),
        }
        let (g, r) = model(&job, Some(&training_job(JobPhase::Succeeded)));
        assert!(g.is_ready());
        assert_eq!(r.model_url.as_deref(), Some("s3://models/janus-orpo"));
        assert_eq!(r.prompt_format, Some(PromptFormat::Chatml), "orpo's recipe");
        assert!(matches!(
            model(&job, Some(&training_job(JobPhase::Failed))).0,
            Gate::Failed {
                reason: "TrainingJobFailed",
                ..
            }
        ));
    }

    #[test]
    fn a_resolved_model_stays_resolved_without_its_training_job() {
        let mut job = from_training();
        job.status = Some(janus_crds::JanusEvalJobStatus {
            model_url: Some("s3://models/janus-orpo".into()),
            prompt_format: Some(PromptFormat::Chatml),
            ..Default::default()
        });
        let (g, r) = model(&job, None);
        assert!(g.is_ready());
        assert_eq!(r.prompt_format, Some(PromptFormat::Chatml));
    }

    #[test]
    fn a_baseline_job_is_waited_for_and_its_results_used() {
        let mut job = representative_job();
        job.spec.baseline = Some(janus_crds::eval::BaselineSpec {
            eval_job: Some("base".into()),
            results_url: None,
        });
        assert!(matches!(
            baseline(&job, None).0,
            Gate::Waiting {
                reason: "BaselineNotFound",
                ..
            }
        ));
        let mut other = representative_job();
        other.metadata.name = Some("base".into());
        other.status = Some(janus_crds::JanusEvalJobStatus {
            phase: Some(EvalPhase::Judging),
            ..Default::default()
        });
        assert!(matches!(
            baseline(&job, Some(&other)).0,
            Gate::Waiting {
                reason: "WaitingForBaseline",
                ..
            }
        ));
        other.status.as_mut().unwrap().phase = Some(EvalPhase::Succeeded);
        let (g, url) = baseline(&job, Some(&other));
        assert!(g.is_ready());
        assert_eq!(
            url.as_deref(),
            Some("s3://eval-results/research/base/results.json")
        );
        other.status.as_mut().unwrap().phase = Some(EvalPhase::Failed);
        assert!(matches!(
            baseline(&job, Some(&other)).0,
            Gate::Failed {
                reason: "BaselineFailed",
                ..
            }
        ));
    }

    #[test]
    fn a_missing_secret_or_key_waits_naming_it() {
        match secret(
            "judge-key",
            Some("api-key"),
            None,
            "spec.judge.apiKeySecretRef",
            "the judge pod",
        ) {
            Gate::Waiting { reason, message } => {
                assert_eq!(reason, "SecretNotFound");
                assert!(
                    message.contains("judge-key") && message.contains("spec.judge.apiKeySecretRef"),
                    "{message}"
                );
            }
            g => panic!("{g:?}"),
        }
        let s: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "judge-key"}, "data": {"other": "eA=="}
        }))
        .unwrap();
        assert!(matches!(
            secret("judge-key", Some("api-key"), Some(&s), "f", "w"),
            Gate::Waiting {
                reason: "SecretKeyNotFound",
                ..
            }
        ));
        assert!(secret("judge-key", Some("other"), Some(&s), "f", "w").is_ready());
        assert!(secret("judge-key", None, Some(&s), "f", "w").is_ready());
    }
}
