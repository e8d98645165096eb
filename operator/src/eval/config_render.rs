//! Renders a `JanusEvalJob` into the evaluation config every pod of it reads: the very
//! `EvalConfig` that `janus eval generate|judge|score` parse (crds `config::eval`),
//! starting from the protocol's defaults. Mounted from the job's ConfigMap at
//! `JANUS_CONFIG`.

use janus_crds::config::eval::{BenchSection, EvalModel};
use janus_crds::config::{DeviceChoice, EvalConfig};
use janus_crds::JanusEvalJob;
use kube::ResourceExt;

use super::gates::{output_url, Resolved};
use crate::error::{Error, Result};

/// The resolved eval config of `job`, validated as `janus eval` validates it (an error
/// names the key).
pub fn eval_config(job: &JanusEvalJob, resolved: &Resolved) -> Result<EvalConfig> {
    let spec = &job.spec;
    let protocol = EvalConfig::janus_bench();
    let mut c = EvalConfig {
        job: job.name_any(),
        model: EvalModel {
            path: resolved
                .model_url
                .clone()
                .ok_or(Error::MissingField("status.modelUrl"))?,
            tokenizer: spec.model.tokenizer_url.as_ref().map(|u| u.to_string()),
            dtype: spec.model.dtype,
            device: if spec.worker.gpus_per_worker > 0 {
                DeviceChoice::Cuda
            } else {
                DeviceChoice::Cpu
            },
            prompt_format: resolved
                .prompt_format
                .unwrap_or(protocol.model.prompt_format),
        },
        bench: BenchSection {
            path: spec.benchmark.url.to_string(),
            limit: spec.benchmark.limit.map(|l| l as usize),
        },
        baseline: resolved.baseline_results_url.clone(),
        output_dir: output_url(job),
        ..protocol
    };
    // The job's sampling and judge settings, each declared once with the config's
    // section (crds `config::eval`); what the job has no field for (best-of-N, the
    // judge's template, the batch poll interval) keeps the protocol's value.
    spec.generation.apply_to(&mut c.generation);
    spec.judge.apply_to(&mut c.judge);
    let origin = format!(
        "JanusEvalJob {}/{}",
        job.namespace().unwrap_or_default(),
        job.name_any()
    );
    let value = serde_json::to_value(&c).expect("the eval config serializes");
    EvalConfig::from_value(value, &origin).map_err(|e| Error::EvalConfig {
        job: job.name_any(),
        message: e.to_string(),
    })
}

/// The config as the YAML document stored in the ConfigMap.
pub fn render(job: &JanusEvalJob, resolved: &Resolved) -> Result<String> {
    let c = eval_config(job, resolved)?;
    let header = format!(
        "# Eval config of JanusEvalJob {}/{}, rendered by janus-operator.\n",
        job.namespace().unwrap_or_default(),
        job.name_any()
    );
    let yaml = serde_yaml::to_string(&c).map_err(|e| Error::EvalConfig {
        job: job.name_any(),
        message: e.to_string(),
    })?;
    Ok(header + &yaml)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use janus_crds::config::PromptFormat;
    use janus_crds::JanusEvalJobSpec;

    /// The representative job of the golden file (also used by other unit tests).
    pub fn representative_job() -> JanusEvalJob {
        let spec: JanusEvalJobSpec = serde_yaml::from_str(
            r#"
model:
  url: s3://models/janus-7b-orpo
  promptFormat: chatml
benchmark:
  url: s3://data/multifaceted-bench/test.jsonl
  limit: 921
generation:
  temperature: 1.0
  topP: 0.9
  maxNewTokens: 1024
judge:
  endpoint: https://api.openai.com/v1
  model: gpt-4-turbo-2024-04-09
  apiKeySecretRef: {name: openai, key: api-key}
  runs: 3
  requestsPerMinute: 500
output:
  url: s3://eval-results
storageSecretRef:
  name: s3-credentials
worker:
  replicas: 4
  gpusPerWorker: 1
  image: ghcr.io/janus/trainer:0.1.0
"#,
        )
        .unwrap();
        let job = JanusEvalJob::new("janus-7b-orpo-bench", spec);
        crate::controller::testing::stored(job, "7e1c2d7e-0000-4000-8000-000000000002")
    }

    pub fn resolved(job: &JanusEvalJob) -> Resolved {
        super::super::gates::model(job, None).1
    }

    const GOLDEN: &str = "tests/fixtures/eval-config.yaml";

    /// `operator/tests/fixtures/eval-config.yaml` is the renderer's output for the
    /// representative job; `JANUS_UPDATE_GOLDEN=1` rewrites it.
    #[test]
    fn rendered_config_matches_the_golden_file() {
        let job = representative_job();
        let rendered = render(&job, &resolved(&job)).unwrap();
        crate::controller::testing::assert_golden(GOLDEN, &rendered);
    }

    /// What the operator renders, `janus eval` accepts as it is (same type, validated).
    #[test]
    fn the_rendered_document_parses_as_the_eval_config() {
        let job = representative_job();
        let text = render(&job, &resolved(&job)).unwrap();
        let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let parsed = EvalConfig::from_value(v, "rendered").unwrap();
        assert_eq!(parsed, eval_config(&job, &resolved(&job)).unwrap());
        assert_eq!(
            parsed.output_dir,
            "s3://eval-results/research/janus-7b-orpo-bench"
        );
        assert_eq!(parsed.model.prompt_format, PromptFormat::Chatml);
        assert_eq!(parsed.model.device, DeviceChoice::Cuda);
        assert_eq!(
            parsed.judge.api_key_env.as_deref(),
            Some("JANUS_JUDGE_API_KEY")
        );
        assert_eq!(parsed.judge.requests_per_minute, 500);
        assert_eq!(parsed.bench.limit, Some(921));
    }

    /// The config keys a `JanusEvalJob` has no field for: they keep the protocol's value.
    const ONLY_IN_CONFIG: [&str; 4] = [
        "generation.best_of",
        "generation.reward_model",
        "judge.template",
        "judge.batch_poll_seconds",
    ];

    /// The job's `generation` and `judge` and the eval config's sections are one
    /// declaration: a job naming every config field (in the config's own JSON,
    /// camelCased; the judge's endpoint, system-message flag and key under the CRD's
    /// names) renders exactly those sections. A config field added without a CRD
    /// field fails here unless it is listed in `ONLY_IN_CONFIG`.
    #[test]
    fn an_eval_job_can_set_every_config_generation_and_judge_field_and_the_render_carries_each() {
        let protocol = EvalConfig::janus_bench();
        let mut want = protocol.clone();
        let g = &mut want.generation;
        (g.temperature, g.top_p, g.top_k, g.repetition_penalty) = (0.7, 0.8, Some(40), 1.1);
        (g.max_new_tokens, g.seed, g.batch_size) = (512, 7, 4);
        let j = &mut want.judge;
        j.url = "http://judge.eval.svc/v1".into();
        j.model = "judge-7b".into();
        j.api_key_env = Some(janus_crds::env::JUDGE_API_KEY.into());
        (
            j.runs,
            j.concurrency,
            j.requests_per_minute,
            j.timeout_seconds,
        ) = (5, 2, 60, 30);
        (j.max_retries, j.max_parse_retries, j.show_system) = (3, 1, true);
        (j.temperature, j.top_p, j.max_tokens) = (0.0, 0.5, 256);
        j.parser = janus_crds::config::eval::JudgeParser::Original;
        j.mode = janus_crds::config::eval::JudgeMode::Batch;

        let camel = |k: &str| {
            let mut parts = k.split('_');
            let mut out = parts.next().unwrap_or_default().to_string();
            for p in parts {
                let mut cs = p.chars();
                out.extend(cs.next().map(|c| c.to_ascii_uppercase()));
                out.extend(cs);
            }
            out
        };
        let mut sections = serde_json::Map::new();
        for (section, value) in [
            (
                "generation",
                serde_json::to_value(&want.generation).unwrap(),
            ),
            ("judge", serde_json::to_value(&want.judge).unwrap()),
        ] {
            let mut crd = serde_json::Map::new();
            for (k, v) in value.as_object().unwrap() {
                let key = format!("{section}.{k}");
                if ONLY_IN_CONFIG.contains(&key.as_str()) {
                    continue;
                }
                let was = lookup(&protocol, &key);
                assert_ne!(
                    &was, v,
                    "{key}: set it to a value other than the protocol's"
                );
                let (name, value) = match key.as_str() {
                    "judge.url" => ("endpoint".to_string(), v.clone()),
                    "judge.show_system" => ("showSystemMessage".to_string(), v.clone()),
                    // The key is a Secret's; the pod gets it in JANUS_JUDGE_API_KEY.
                    "judge.api_key_env" => (
                        "apiKeySecretRef".to_string(),
                        serde_json::json!({"name": "judge", "key": "api-key"}),
                    ),
                    _ => (camel(k), v.clone()),
                };
                crd.insert(name, value);
            }
            sections.insert(section.to_string(), crd.into());
        }
        let mut job = representative_job();
        job.spec.generation = serde_json::from_value(sections["generation"].clone()).unwrap();
        job.spec.judge = serde_json::from_value(sections["judge"].clone()).unwrap();
        // Every key the job names is a field of the CRD (serde ignores unknown ones).
        for (section, spec) in [
            (
                "generation",
                serde_json::to_value(&job.spec.generation).unwrap(),
            ),
            ("judge", serde_json::to_value(&job.spec.judge).unwrap()),
        ] {
            for k in sections[section].as_object().unwrap().keys() {
                assert!(
                    spec.get(k).is_some(),
                    "{section}.{k}: not a field of the CRD"
                );
            }
        }

        let c = eval_config(&job, &resolved(&job)).unwrap();
        assert_eq!(c.generation, want.generation);
        assert_eq!(c.judge, want.judge);
    }

    /// The value at a dotted key of a config's JSON.
    pub fn lookup(c: &EvalConfig, key: &str) -> serde_json::Value {
        let v = serde_json::to_value(c).unwrap();
        key.split('.').fold(v, |v, k| v[k].clone())
    }

    #[test]
    fn cpu_workers_no_key_and_a_baseline_url() {
        let mut job = representative_job();
        job.spec.worker.gpus_per_worker = 0;
        job.spec.judge.api_key_secret_ref = None;
        let mut r = resolved(&job);
        r.baseline_results_url = Some("s3://eval-results/research/base/results.json".into());
        let c = eval_config(&job, &r).unwrap();
        assert_eq!(c.model.device, DeviceChoice::Cpu);
        assert_eq!(c.judge.api_key_env, None);
        assert_eq!(
            c.baseline.as_deref(),
            Some("s3://eval-results/research/base/results.json")
        );
    }

    #[test]
    fn a_config_janus_eval_would_refuse_is_an_error_naming_the_key() {
        let mut job = representative_job();
        job.spec.judge.endpoint = "ftp://judge".into();
        let e = eval_config(&job, &resolved(&job)).unwrap_err().to_string();
        assert!(
            e.contains("judge.url") && e.contains("janus-7b-orpo-bench"),
            "{e}"
        );
    }
}
