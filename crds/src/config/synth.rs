//! The data synthesis config: one typed document for `janus data synthesize` (YAML or
//! JSON), the Multifaceted Collection's pipeline (docs/data.md, "Synthesizing data"):
//! preference sets per instruction, a system message per set, a gold answer per system
//! message, optionally a rubric per preference (bench items), and preference pairs.
//!
//! Output layout under `output_dir` (a path or an object-store URL): one append-only
//! log per stage ([`layout`]), then the data sets in the published schemas, each as a
//! JSON-lines file and as a sharded dataset (`index.json` + shards) that `janus train`
//! streams: `sft.jsonl` / `sft/`, `pairs.jsonl` / `pairs/`, and `bench.jsonl` (what
//! `janus eval` reads as its bench).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::bytes::ByteSize;
use super::error::ConfigError;
use super::eval::JudgeMode;
use super::overrides::resolve_layered;

type Result<T> = std::result::Result<T, ConfigError>;

/// The synthesis config: instructions in, Multifaceted-Collection-style data out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// Name of the synthesis run (logs and batch names carry it).
    pub job: String,
    pub input: SynthInput,
    pub llm: SynthLlm,
    pub synthesis: SynthSection,
    pub prompts: SynthPrompts,
    /// Where the stage logs and the data sets go: a path or a URL.
    pub output_dir: String,
}

/// The instructions to synthesize data for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SynthInput {
    /// Instruction records (JSONL or Parquet; a path or a URL): `prompt` (or
    /// `instruction`), optional `main_source` and `original_source` (or `source`),
    /// copied into the output. Instruction ids are row indices.
    pub path: String,
    /// Use only the first this many instructions.
    pub limit: Option<usize>,
}

/// The generating model: any OpenAI-compatible endpoint, and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SynthLlm {
    /// Base URL of an OpenAI-compatible API (`.../v1`).
    pub url: String,
    /// Model name sent to it (the paper generated with GPT-4-Turbo).
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token); `null`: none.
    pub api_key_env: Option<String>,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Calls started per minute at most, retries included (0: no limit).
    pub requests_per_minute: u32,
    /// Seconds one call may take.
    pub timeout_seconds: u64,
    /// Retries of a call on 429 / 5xx / timeouts (exponential backoff, `Retry-After`).
    pub max_retries: usize,
    /// Sampling temperature of the generating model.
    pub temperature: f64,
    /// Nucleus sampling of the generating model.
    pub top_p: f64,
    /// Tokens one answer may have at most.
    pub max_tokens: usize,
    /// Seed of the requests: each call's seed derives from it, the stage, the call's
    /// key and its try, so a re-ask is another sample and a rerun asks the same.
    pub seed: u64,
    /// `online`: one chat completion per call, `concurrency` in flight; `batch`: each
    /// stage's calls as OpenAI Batch API jobs (`/v1/files`, `/v1/batches`; half the
    /// price, answered within 24 h), re-asks in later rounds.
    pub mode: JudgeMode,
    /// Batch mode: seconds between two looks at a batch's status.
    pub batch_poll_seconds: f64,
}

/// What is generated, and how invalid and duplicate outputs are handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SynthSection {
    /// Stages to run, in pipeline order: `preferences`, `system`, `answers`,
    /// `rubrics` (bench items), `pairs` (DPO / ORPO). Each reads what the earlier ones
    /// recorded, so a stage can also run alone on a later invocation.
    pub stages: Vec<SynthStage>,
    /// Preference sets (and so system messages and answers) per instruction (the
    /// Multifaceted Collection has 3).
    pub sets_per_instruction: usize,
    /// Times an output that fails validation (not the JSON schema, wrong dimensions,
    /// empty) is asked again before it is counted as failed.
    pub max_invalid_retries: usize,
    /// Pairs: rejected answers per chosen answer, taken from the same instruction's
    /// other system messages in order (the next set first).
    pub rejected_per_chosen: usize,
    /// Shard size of the sharded outputs (compressed bytes, e.g. `64MiB`).
    pub shard_size: ByteSize,
}

/// One stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum SynthStage {
    /// A preference set per (instruction, set): one preference in each dimension.
    Preferences,
    /// A system message per preference set.
    System,
    /// A gold answer per system message.
    Answers,
    /// A scoring rubric per preference (bench items).
    Rubrics,
    /// Preference pairs: chosen = the answer to its own system message.
    Pairs,
}

impl SynthStage {
    pub const ALL: [SynthStage; 5] = [
        SynthStage::Preferences,
        SynthStage::System,
        SynthStage::Answers,
        SynthStage::Rubrics,
        SynthStage::Pairs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SynthStage::Preferences => "preferences",
            SynthStage::System => "system",
            SynthStage::Answers => "answers",
            SynthStage::Rubrics => "rubrics",
            SynthStage::Pairs => "pairs",
        }
    }
}

/// Replacement prompt templates (paths of text files); `null`: the shipped default
/// (`prompts/synth/*.txt`, embedded in the binary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SynthPrompts {
    /// Preference-set generation: `{instruction}`, `{set_index}`, `{sets}`.
    pub preferences: Option<String>,
    /// System-message generation: `{instruction}`, `{preference_set}` (JSON).
    pub system: Option<String>,
    /// The gold answer's user message (the system message is sent as the system
    /// message): `{instruction}`.
    pub answer: Option<String>,
    /// Rubric generation: `{instruction}`, `{system}`, `{dimension}`, `{subdimension}`,
    /// `{preference}`, `{description}`.
    pub rubric: Option<String>,
}

impl SynthConfig {
    /// The defaults of every key: the Multifaceted Collection's shape.
    pub fn defaults() -> Self {
        SynthConfig {
            job: "synth".into(),
            input: SynthInput {
                path: "data/instructions.jsonl".into(),
                limit: None,
            },
            llm: SynthLlm {
                url: "https://api.openai.com/v1".into(),
                model: "gpt-4-0125-preview".into(),
                api_key_env: Some("OPENAI_API_KEY".into()),
                concurrency: 8,
                requests_per_minute: 0,
                timeout_seconds: 300,
                max_retries: 8,
                temperature: 1.0,
                top_p: 0.9,
                max_tokens: 2048,
                seed: 42,
                mode: JudgeMode::Online,
                batch_poll_seconds: 30.0,
            },
            synthesis: SynthSection {
                stages: vec![
                    SynthStage::Preferences,
                    SynthStage::System,
                    SynthStage::Answers,
                    SynthStage::Pairs,
                ],
                sets_per_instruction: 3,
                max_invalid_retries: 2,
                rejected_per_chosen: 1,
                shard_size: ByteSize(64 << 20),
            },
            prompts: SynthPrompts {
                preferences: None,
                system: None,
                answer: None,
                rubric: None,
            },
            output_dir: "synth-output".into(),
        }
    }

    /// Resolve: the defaults, then the file, then `key=value` overrides.
    pub fn resolve(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let defaults = serde_json::to_value(Self::defaults()).expect("serializes");
        let (cfg, origin): (Self, String) =
            resolve_layered(defaults, file, overrides, "the resolved synthesis config")?;
        cfg.validate()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let l = &self.llm;
        let s = &self.synthesis;
        let checks: [(bool, &str, String); 7] = [
            (
                l.url.starts_with("http://") || l.url.starts_with("https://"),
                "llm.url",
                format!("must be an http(s) URL, found `{}`", l.url),
            ),
            (
                l.concurrency >= 1 && l.timeout_seconds >= 1 && l.max_tokens >= 1,
                "llm.concurrency/timeout_seconds/max_tokens",
                "must be >= 1".into(),
            ),
            (
                l.top_p > 0.0 && l.top_p <= 1.0 && l.temperature >= 0.0,
                "llm.top_p/temperature",
                format!(
                    "top_p must be in (0, 1] and temperature >= 0, found {} and {}",
                    l.top_p, l.temperature
                ),
            ),
            (
                l.batch_poll_seconds > 0.0 && l.batch_poll_seconds.is_finite(),
                "llm.batch_poll_seconds",
                format!("must be > 0, found {}", l.batch_poll_seconds),
            ),
            (
                s.sets_per_instruction >= 1,
                "synthesis.sets_per_instruction",
                "must be >= 1".into(),
            ),
            (
                !s.stages.is_empty() && s.stages.windows(2).all(|w| w[0] < w[1]),
                "synthesis.stages",
                format!(
                    "must name stages once each, in pipeline order (preferences, system, \
                     answers, rubrics, pairs), found {:?}",
                    s.stages
                ),
            ),
            (
                s.shard_size.0 > 0,
                "synthesis.shard_size",
                "must be > 0".into(),
            ),
        ];
        for (ok, key, msg) in checks {
            if !ok {
                return Err(format!("`{key}` {msg}"));
            }
        }
        Ok(())
    }
}

/// The output layout under `output_dir`.
pub mod layout {
    /// The stage logs (one record per call key, appended as answers arrive).
    pub const PREFERENCES_LOG: &str = "stages/preferences.jsonl";
    pub const SYSTEM_LOG: &str = "stages/system.jsonl";
    pub const ANSWERS_LOG: &str = "stages/answers.jsonl";
    pub const RUBRICS_LOG: &str = "stages/rubrics.jsonl";
    /// Batch mode: the batches of each stage, recorded when created and when their
    /// answers are recorded (`stages/<stage>-batches.jsonl`).
    pub fn batches_log(stage: crate::config::synth::SynthStage) -> String {
        format!("stages/{}-batches.jsonl", stage.name())
    }
    /// The SFT set (Multifaceted Collection schema) and its sharded dataset.
    pub const SFT: &str = "sft.jsonl";
    pub const SFT_SHARDS: &str = "sft";
    /// The preference pairs (the DPO / ORPO sets' schema) and their sharded dataset.
    pub const PAIRS: &str = "pairs.jsonl";
    pub const PAIRS_SHARDS: &str = "pairs";
    /// Bench items (Multifaceted Bench schema) with their rubrics.
    pub const BENCH: &str = "bench.jsonl";
    /// The last run's summary.
    pub const SUMMARY: &str = "summary.json";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve_and_bad_keys_are_refused() {
        let c = SynthConfig::resolve(None, &[]).unwrap();
        assert_eq!(c.synthesis.sets_per_instruction, 3);
        let c = SynthConfig::resolve(None, &["synthesis.stages=[preferences, rubrics]".into()])
            .unwrap();
        assert_eq!(
            c.synthesis.stages,
            vec![SynthStage::Preferences, SynthStage::Rubrics]
        );
        for bad in [
            "llm.rpm=3",
            "synthesis.stages=[answers, system]",
            "synthesis.stages=[prefs]",
            "llm.url=localhost",
            "prompts.sytem=x.txt",
        ] {
            assert!(SynthConfig::resolve(None, &[bad.into()]).is_err(), "{bad}");
        }
    }
}
