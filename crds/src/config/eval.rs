//! The evaluation config: one typed document for `janus eval generate|judge|score`
//! (YAML or JSON), rendered by the operator from a `JanusEvalJob` and mounted at
//! `JANUS_CONFIG` in its pods. Defaults are the Janus evaluation protocol
//! (docs/method.md, "Evaluation on Multifaceted Bench").
//!
//! Output layout under `output_dir` (a path or an object-store URL), per DESIGN.md:
//! `answers/shard-<i>.jsonl` (generation, one file per generation worker),
//! `grades.jsonl` (the judge's answers, appended), `summary.json` and `results.json`
//! (scores), `report.md` with its charts.
//!
//! In a cluster (a `JanusEvalJob`; operator/src/eval/), the operator renders this
//! document into ConfigMap `<job>-eval-settings`, mounted at `JANUS_CONFIG`
//! (`/etc/janus/config.yaml`), with `output_dir = <spec.output.url>/<namespace>/<job>`,
//! and runs, each process with `JANUS_JOB`, `JANUS_ATTEMPT`, `JANUS_CONFIG`,
//! `JANUS_POD_NAME` and `JANUS_POD_NAMESPACE` set:
//! - generation: pod `<job>-generate-<i>`, command `janus eval generate`, shard `i` of `N`
//!   given as `JANUS_NODE_RANK=i` / `JANUS_NNODES=N`; its exit 0 means shard `i` is
//!   complete (it is never run again). A failed pod is recreated (`JANUS_ATTEMPT` + 1)
//!   with the same config and must resume from `answers/shard-<i>.jsonl`;
//! - then one judge pod `<job>-judge`, started only when every generation pod exited 0
//!   (so all `N` shard files are complete): init container `janus eval judge` (the API
//!   key in the variable `judge.api_key_env` names, `JANUS_JUDGE_API_KEY`), then
//!   container `janus eval score` in the same pod (no shell in the image, so two
//!   containers rather than one `sh -c`); a restarted judge re-asks nothing in
//!   `grades.jsonl`;
//! - every process sends its [`crate::progress::EvalReport`] to the operator, which
//!   writes it on the process's pod (stage `generate`, `judge` or `score`,
//!   [`crate::progress::publish`]); the operator mirrors it into the job's status and
//!   takes the final `scores` from the judge pod's last report;
//! - exit code 64 (bad input) fails the job at once; any other non-zero exit is retried
//!   (`runPolicy.backoffLimit` over the whole job).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ConfigError;
use super::overrides::{deserialize_at, resolve_layered};
use super::prompt::PromptFormat;
use super::train::{DeviceChoice, Dtype};

type Result<T> = std::result::Result<T, ConfigError>;

/// The eval config: one document for the three stages of `janus eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Name of the evaluation (the JanusEvalJob's name in a cluster).
    pub job: String,
    pub model: EvalModel,
    pub bench: BenchSection,
    pub generation: GenerationSection,
    pub judge: JudgeSection,
    /// Another evaluation's `results.json` (path or URL) to compare with item by item
    /// (win / tie / lose); `null`: none.
    pub baseline: Option<String>,
    /// Where answers, grades and scores go: a path or a URL.
    pub output_dir: String,
}

/// The model evaluated, and how it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EvalModel {
    /// Hugging Face model directory: a path or a URL.
    pub path: String,
    /// `tokenizer.json`; default: the model directory's.
    pub tokenizer: Option<String>,
    pub dtype: Dtype,
    pub device: DeviceChoice,
    /// The format the model was trained with (the system message goes in it).
    pub prompt_format: PromptFormat,
}

/// The benchmark (Multifaceted Bench or a file of its shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BenchSection {
    /// Multifaceted Bench records (JSONL or Parquet; a path or a URL). Item ids are
    /// row indices.
    pub path: String,
    /// Evaluate only the first this many items.
    pub limit: Option<usize>,
}

section_with_overlay! {
    /// How answers are sampled (the paper's protocol by default).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
    #[serde(deny_unknown_fields)]
    pub struct GenerationSection;
    /// Sampling settings (defaults: the Janus evaluation).
    pub struct GenerationSpec = EvalConfig::janus_bench().generation;
    {
        /// 0: greedy.
        temperature: f64
            [schemars(description = "Sampling temperature (0 = greedy; default 1.0).", range(min = 0.0))],
        /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
        top_p: f64
            [
                schemars(description = "Nucleus sampling threshold in (0, 1] (default 0.9)."),
                schemars(extend("x-kubernetes-validations" = [{"rule": "self > 0.0 && self <= 1.0", "message": "spec.generation.topP must be in (0, 1]"}])),
            ],
        /// `null`: no top-k filter.
        top_k: Option<usize> as Option<u32>
            [
                serde(skip_serializing_if = "Option::is_none"),
                schemars(description = "Keep only the k most likely tokens (default: no top-k filter).", range(min = 1, max = 1_000_000)),
            ],
        /// As Hugging Face applies it (1.0: none).
        repetition_penalty: f64
            [schemars(description = "Repetition penalty as Hugging Face applies it (1 = none; default 1.03).", range(min = 1.0))],
        /// Tokens generated per answer at most (EOS ends it sooner).
        max_new_tokens: usize as u32
            [schemars(description = "Most tokens generated per answer (default 1024).", range(min = 1, max = 1048576))],
        /// Seed of the sampling; each item draws from its own stream of it, so an answer
        /// does not depend on the batch, the shard count or a restart.
        seed: u64
            [schemars(description = "Random seed (default 42).", range(min = 0, max = crate::contract::MAX_JSON_INTEGER))],
        /// Sequences decoded together.
        batch_size: usize as u32
            [schemars(description = "Sequences decoded together per generation pod (default 16).", range(min = 1, max = 4096))],
        /// Samples per item; with a reward model, the best by reward is kept (best-of-N).
        config best_of: usize,
        /// A reward model (HF `*ForSequenceClassification` directory, path or URL) that
        /// ranks the `best_of` samples.
        config reward_model: Option<String>,
    }
}

section_with_overlay! {
    /// The judge: an OpenAI-compatible endpoint, its limits and its prompt.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
    #[serde(deny_unknown_fields)]
    pub struct JudgeSection;
    /// The judge's settings a `JanusEvalJob` sets in `spec.judge` (defaults: the Janus
    /// evaluation's); the endpoint, the model and the key are the job's own fields.
    pub struct JudgeSettings = EvalConfig::janus_bench().judge;
    {
        /// Base URL of an OpenAI-compatible API (`.../v1`).
        config url: String,
        /// Model name sent to it.
        config model: String,
        /// Environment variable holding the API key (sent as a bearer token); `null`: none.
        config api_key_env: Option<String>,
        /// Independent grading runs (the paper averages 3).
        runs: usize as u32
            [
                schemars(description = "Independent grading runs to average (the paper averages 3).", range(min = 1, max = 10)),
                schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.judge.runs is immutable"}])),
            ],
        /// Calls in flight at once.
        concurrency: usize as u32
            [schemars(description = "Judge calls in flight at once (default 8).", range(min = 1, max = 1024))],
        /// Calls started per minute at most (0: no limit).
        requests_per_minute: u32
            [schemars(description = "Calls started per minute at most (0: no limit; default 0).", range(min = 0, max = 1_000_000))],
        /// Seconds one call may take.
        timeout_seconds: u64
            [schemars(description = "Seconds one call may take (default 120).", range(min = 1, max = 86400))],
        /// Retries of a call on 429 / 5xx / timeouts (exponential backoff, `Retry-After`).
        max_retries: usize as u32
            [schemars(description = "Retries of a call on 429 / 5xx / timeouts, with exponential backoff and\n`Retry-After` (default 8).", range(min = 0, max = 100))],
        /// Times an answer without a parsable `[RESULT] 1-5` is asked again before it is
        /// counted as a failure.
        max_parse_retries: usize as u32
            [schemars(description = "Times an answer without a parsable `[RESULT] 1-5` is asked again before it is\ncounted as a failure (default 2).", range(min = 0, max = 100))],
        /// Show the judge the system message (off in the paper: the preference reaches it
        /// through the rubric and the reference answer).
        show_system: bool
            [
                serde(rename = "showSystemMessage"),
                schemars(description = "Show the judge the system message too (off in the paper)."),
                schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.judge.showSystemMessage is immutable"}])),
            ],
        /// Replacements for the judge's messages; `null`: the original's
        /// (`ABS_SYSTEM_PROMPT` and `ABS_USER_PROMPT_TEMPLATE` of kaistAI/Janus). A path
        /// replaces the user message template; `{system: path, user: path}` either or both.
        config template: Option<JudgeTemplate>,
        /// Sampling temperature of the judge (the original's 1.0).
        temperature: f64
            [schemars(description = "Sampling temperature of the judge (default 1.0).", range(min = 0.0))],
        /// Nucleus sampling of the judge (the original's 0.9).
        top_p: f64
            [schemars(description = "Nucleus sampling of the judge (default 0.9, the original's).", range(min = 0.0, max = 1.0))],
        /// Tokens the judge may write per call at most (the original's 1024).
        max_tokens: usize as u32
            [schemars(description = "Most tokens of one judge answer (default 1024).", range(min = 1, max = 1048576))],
        /// How a score is read from the judge's answer: `strict` (the last `[RESULT]`,
        /// 1 to 5) or `original` (the published parser, defects included, for comparisons
        /// with published numbers).
        parser: JudgeParser
            [
                schemars(description = "How scores are read: `strict` (default: the last `[RESULT]`, 1 to 5) or\n`original` (the published parser, for comparisons with published numbers)."),
                schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.judge.parser is immutable"}])),
            ],
        /// `online`: one chat completion per call; `batch`: the calls as one OpenAI Batch
        /// API job (`/v1/files`, `/v1/batches`; half the price, results within 24 h).
        mode: JudgeMode
            [schemars(description = "`online` (default: one chat completion per call) or `batch` (the OpenAI Batch\nAPI: half the price, results within 24 hours; the judge pod polls the batch,\nand a restarted judge pod polls the same one).")],
        /// Batch mode: seconds between two looks at the batch's status.
        config batch_poll_seconds: f64,
    }
}

/// Replacement judge messages (paths of text files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum JudgeTemplate {
    /// The user message template only.
    User(String),
    /// Either message or both; a missing one stays the original's.
    Messages(JudgeMessages),
}

/// `judge.template` as a mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JudgeMessages {
    /// The system message (the file's text as it is).
    #[serde(default)]
    pub system: Option<String>,
    /// The user message template.
    #[serde(default)]
    pub user: Option<String>,
}

/// How the judge's score is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum JudgeParser {
    /// The integer after the last `[RESULT]`, 1 to 5; anything else is re-asked and
    /// finally counted as a failure.
    Strict,
    /// kaistAI/Janus `parse_judgment_abs`: the first match of its pattern anywhere, no
    /// range check.
    Original,
}

/// How the judge is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum JudgeMode {
    /// A chat completion per call, `judge.concurrency` in flight.
    Online,
    /// One OpenAI Batch API job per round of calls (re-asks go in the next round).
    Batch,
}

impl EvalConfig {
    /// The Janus evaluation protocol (defaults of every key).
    pub fn janus_bench() -> Self {
        EvalConfig {
            job: "eval".into(),
            model: EvalModel {
                path: "output".into(),
                tokenizer: None,
                dtype: Dtype::Bfloat16,
                device: DeviceChoice::Auto,
                prompt_format: PromptFormat::Mistral,
            },
            bench: BenchSection {
                path: "data/multifaceted-bench.parquet".into(),
                limit: None,
            },
            generation: GenerationSection {
                temperature: 1.0,
                top_p: 0.9,
                top_k: None,
                repetition_penalty: 1.03,
                max_new_tokens: 1024,
                seed: 42,
                batch_size: 16,
                best_of: 1,
                reward_model: None,
            },
            judge: JudgeSection {
                url: "https://api.openai.com/v1".into(),
                // The paper's judge (kaistAI/Janus `Makefile`, `run_eval_janus`).
                model: "gpt-4-0125-preview".into(),
                api_key_env: Some("OPENAI_API_KEY".into()),
                runs: 3,
                concurrency: 8,
                requests_per_minute: 0,
                timeout_seconds: 120,
                max_retries: 8,
                max_parse_retries: 2,
                show_system: false,
                template: None,
                // `SAMPLING_PARAMS_OPENAI` of kaistAI/Janus `utils/prompts.py`.
                temperature: 1.0,
                top_p: 0.9,
                max_tokens: 1024,
                parser: JudgeParser::Strict,
                mode: JudgeMode::Online,
                batch_poll_seconds: 30.0,
            },
            baseline: None,
            output_dir: "eval-output".into(),
        }
    }

    /// Resolve: the protocol's defaults, then the file, then `key=value` overrides.
    pub fn resolve(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let defaults = serde_json::to_value(Self::janus_bench()).expect("serializes");
        let (cfg, origin): (Self, String) =
            resolve_layered(defaults, file, overrides, "the resolved eval config")?;
        cfg.validated(&origin)
    }

    pub fn from_value(value: Value, origin: &str) -> Result<Self> {
        deserialize_at::<Self>(value, origin)?.validated(origin)
    }

    fn validated(self, origin: &str) -> Result<Self> {
        self.validate()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        Ok(self)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let g = &self.generation;
        let j = &self.judge;
        let checks: [(bool, &str, String); 11] = [
            (
                g.temperature >= 0.0 && g.temperature.is_finite(),
                "generation.temperature",
                format!("must be >= 0, found {}", g.temperature),
            ),
            (
                g.top_p > 0.0 && g.top_p <= 1.0,
                "generation.top_p",
                format!("must be in (0, 1], found {}", g.top_p),
            ),
            (
                g.top_k != Some(0),
                "generation.top_k",
                "must be >= 1 when set".into(),
            ),
            (
                g.repetition_penalty > 0.0,
                "generation.repetition_penalty",
                format!("must be > 0, found {}", g.repetition_penalty),
            ),
            (
                g.max_new_tokens >= 1 && g.batch_size >= 1,
                "generation.max_new_tokens/batch_size",
                "must be >= 1".into(),
            ),
            (g.best_of >= 1, "generation.best_of", "must be >= 1".into()),
            (
                j.runs >= 1 && j.concurrency >= 1,
                "judge.runs/concurrency",
                "must be >= 1".into(),
            ),
            (
                j.url.starts_with("http://") || j.url.starts_with("https://"),
                "judge.url",
                format!("must be an http(s) URL, found `{}`", j.url),
            ),
            (
                j.timeout_seconds >= 1,
                "judge.timeout_seconds",
                "must be >= 1".into(),
            ),
            (
                j.top_p > 0.0 && j.top_p <= 1.0 && j.temperature >= 0.0,
                "judge.top_p/temperature",
                format!(
                    "top_p must be in (0, 1] and temperature >= 0, found {} and {}",
                    j.top_p, j.temperature
                ),
            ),
            (
                j.batch_poll_seconds > 0.0 && j.batch_poll_seconds.is_finite(),
                "judge.batch_poll_seconds",
                format!("must be > 0, found {}", j.batch_poll_seconds),
            ),
        ];
        for (ok, key, msg) in checks {
            if !ok {
                return Err(format!("`{key}` {msg}"));
            }
        }
        if g.best_of > 1 && g.reward_model.is_none() {
            return Err(
                "`generation.best_of` > 1 needs `generation.reward_model` to rank the samples"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The output layout under `output_dir`, one spelling for the trainer's stages and the
/// operator (which reads a baseline's results and points users at the summary).
pub mod layout {
    /// The judge's answers, appended.
    pub const GRADES: &str = "grades.jsonl";
    /// Generation shards' directory.
    pub const ANSWERS_DIR: &str = "answers";
    /// Everything `score` computed.
    pub const RESULTS: &str = "results.json";
    /// The scores (what the operator mirrors into the job's status).
    pub const SUMMARY: &str = "summary.json";
    /// The human-readable report and its charts.
    pub const REPORT: &str = "report.md";
}

/// Where a file of the output layout lives under `output_dir`.
pub fn output_path(output_dir: &str, name: &str) -> String {
    format!("{}/{name}", output_dir.trim_end_matches('/'))
}

/// `answers/shard-<i>.jsonl`: generation worker `i`'s answers.
pub fn answers_file(shard: usize) -> PathBuf {
    PathBuf::from(format!("{}/shard-{shard:05}.jsonl", layout::ANSWERS_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_janus_protocol_and_unknown_keys_are_refused() {
        let c = EvalConfig::resolve(None, &[]).unwrap();
        let g = &c.generation;
        assert_eq!(
            (
                g.temperature,
                g.top_p,
                g.repetition_penalty,
                g.max_new_tokens
            ),
            (1.0, 0.9, 1.03, 1024)
        );
        assert_eq!(c.judge.runs, 3);
        assert!(!c.judge.show_system);
        // The original judge: model and `SAMPLING_PARAMS_OPENAI`.
        let j = &c.judge;
        assert_eq!(
            (j.model.as_str(), j.max_tokens, j.temperature, j.top_p),
            ("gpt-4-0125-preview", 1024, 1.0, 0.9)
        );
        assert_eq!((j.parser, j.mode), (JudgeParser::Strict, JudgeMode::Online));
        // A template path replaces the user message; a mapping either message.
        let c = EvalConfig::resolve(None, &["judge.template=u.txt".into()]).unwrap();
        assert_eq!(c.judge.template, Some(JudgeTemplate::User("u.txt".into())));
        let c = EvalConfig::resolve(None, &["judge.template={system: s.txt}".into()]).unwrap();
        assert_eq!(
            c.judge.template,
            Some(JudgeTemplate::Messages(JudgeMessages {
                system: Some("s.txt".into()),
                user: None
            }))
        );
        let e = EvalConfig::resolve(None, &["judge.rpm=3".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rpm"), "{e}");
        assert!(EvalConfig::resolve(None, &["judge.template={sytem: s.txt}".into()]).is_err());
        let e = EvalConfig::resolve(None, &["generation.best_of=4".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("reward_model"), "{e}");
    }
}
