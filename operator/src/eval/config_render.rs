//! Renders a `JanusEvalJob` into the evaluation config every pod of it reads: the very
//! `EvalConfig` that `janus eval generate|judge|score` parse (crds `config::eval`),
//! starting from the protocol's defaults. Mounted from the job's ConfigMap at
//! `JANUS_CONFIG`.

use janus_crds::config::eval::{BenchSection, EvalModel, GenerationSection, JudgeSection};
use janus_crds::config::{DeviceChoice, EvalConfig};
use janus_crds::{env, JanusEvalJob};
use kube::ResourceExt;

use super::gates::{output_url, Resolved};
use crate::error::{Error, Result};

/// The resolved eval config of `job`, validated as `janus eval` validates it (an error
/// names the key).
pub fn eval_config(job: &JanusEvalJob, resolved: &Resolved) -> Result<EvalConfig> {
    let spec = &job.spec;
    let protocol = EvalConfig::janus_bench();
    let (g, j) = (&spec.generation, &spec.judge);
    let c = EvalConfig {
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
        generation: GenerationSection {
            temperature: g.temperature,
            top_p: g.top_p,
            top_k: g.top_k.map(|k| k as usize),
            repetition_penalty: g.repetition_penalty,
            max_new_tokens: g.max_new_tokens as usize,
            seed: g.seed,
            batch_size: g.batch_size as usize,
            // Best-of-N with a reward model is for a later version of the resource.
            best_of: 1,
            reward_model: None,
        },
        judge: JudgeSection {
            url: j.endpoint.clone(),
            model: j.model.clone(),
            api_key_env: j
                .api_key_secret_ref
                .as_ref()
                .map(|_| env::JUDGE_API_KEY.to_string()),
            runs: j.runs as usize,
            concurrency: j.concurrency as usize,
            requests_per_minute: j.requests_per_minute,
            timeout_seconds: j.timeout_seconds,
            max_retries: j.max_retries as usize,
            max_parse_retries: j.max_parse_retries as usize,
            show_system: j.show_system_message,
            template: protocol.judge.template,
            temperature: j.temperature,
            top_p: j.top_p,
            max_tokens: j.max_tokens as usize,
            parser: j.parser,
            mode: j.mode,
            batch_poll_seconds: protocol.judge.batch_poll_seconds,
        },
        baseline: resolved.baseline_results_url.clone(),
        output_dir: output_url(job),
    };
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
