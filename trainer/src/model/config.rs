//! `config.json` of a Hugging Face Mistral or Llama model.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Field names are exactly those of HF `config.json`; keys we do not use are kept in
/// `extra` so a saved config round-trips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Older configs (and Mistral's own) give `rope_theta` at the top level;
    /// transformers 5 writes it inside `rope_parameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    4096
}
fn default_eps() -> f64 {
    1e-6
}
const DEFAULT_ROPE_THETA: f64 = 10000.0;

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            Error::Model(format!("{}: `{}`: {}", path.display(), e.path(), e.inner()))
        })?;
        cfg.validate()
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !matches!(self.model_type.as_str(), "mistral" | "llama") {
            return Err(format!(
                "`model_type` must be `mistral` or `llama`, found `{}`",
                self.model_type
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "`hidden_act` must be `silu`, found `{}`",
                self.hidden_act
            ));
        }
        for (key, v) in [
            ("rope_scaling", &self.rope_scaling),
            ("rope_parameters", &self.rope_parameters),
        ] {
            let Some(v) = v.as_ref().filter(|v| !v.is_null()) else {
                continue;
            };
            let kind = v
                .get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(format!(
                    "`{key}` of type `{kind}` is not supported yet (only `default`)"
                ));
            }
        }
        let kv = self.num_kv_heads();
        if self.num_attention_heads == 0 || kv == 0 || !self.num_attention_heads.is_multiple_of(kv)
        {
            return Err(format!(
                "`num_attention_heads` ({}) must be a positive multiple of `num_key_value_heads` ({kv})",
                self.num_attention_heads
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` ({}) must be divisible by `num_attention_heads` ({}) when `head_dim` is not set",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head dimension {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        Ok(())
    }

    /// Rotary base, wherever the config puts it.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (
            self.num_attention_heads * self.head_dim(),
            self.num_kv_heads() * self.head_dim(),
        );
        let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
        let head = if self.is_sequence_classifier() {
            self.num_labels() * h
        } else if self.tie_word_embeddings {
            0
        } else {
            v * h
        };
        v * h + self.num_hidden_layers * layer + h + head
    }

    /// Whether this is a reward model: a `*ForSequenceClassification` (a `score` head
    /// instead of the LM head), or an OpenRLHF reward checkpoint.
    pub fn is_sequence_classifier(&self) -> bool {
        self.is_openrlhf_reward()
            || self
                .architectures
                .iter()
                .any(|a| a.ends_with("ForSequenceClassification"))
    }

    /// An OpenRLHF reward model (`LLMForSequenceRegression`, what its `save_model`
    /// writes for the class `get_llm_for_sequence_regression` builds, as Janus-RM is
    /// released): the body's tensors named as HF's, the linear head `value_head.weight`
    /// (`[1, hidden]`, no bias), loaded as our `score.weight`.
    pub fn is_openrlhf_reward(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceRegression"))
    }

    /// OpenRLHF's reward normalisation, `(reward - mean) / std`, when config.json has
    /// `mean` and `std` (its `--normalize_reward` writes them; the original best-of-N
    /// applies them).
    pub fn reward_normalization(&self) -> Option<(f64, f64)> {
        let get = |k: &str| self.extra.get(k).and_then(Value::as_f64);
        let on = self
            .extra
            .get("normalize_reward")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        match (on, get("mean"), get("std")) {
            (true, Some(m), Some(s)) if s > 0.0 => Some((m, s)),
            _ => None,
        }
    }

    /// Outputs of a sequence classifier, counted as transformers does (`id2label`).
    pub fn num_labels(&self) -> usize {
        if self.is_openrlhf_reward() {
            return 1;
        }
        self.extra
            .get("id2label")
            .and_then(Value::as_object)
            .map(|m| m.len())
            .or_else(|| {
                self.extra
                    .get("num_labels")
                    .and_then(Value::as_u64)
                    .map(|n| n as usize)
            })
            .unwrap_or(1)
    }

    /// This model as a reward model: `MistralForSequenceClassification` (or Llama's)
    /// with one label. `pad_token_id` is what transformers skips to find each row's
    /// last token.
    pub fn as_reward_model(&self, pad_token_id: i64) -> Self {
        let mut c = self.clone();
        let family = if c.model_type == "llama" {
            "Llama"
        } else {
            "Mistral"
        };
        c.architectures = vec![format!("{family}ForSequenceClassification")];
        c.extra
            .insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
        c.extra
            .insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
        c.extra.remove("num_labels");
        c.extra
            .insert("pad_token_id".into(), Value::from(pad_token_id));
        c.tie_word_embeddings = false;
        c
    }

    /// A small Mistral- or Llama-shaped config for tests, the demo and benchmarks.
    pub fn small(
        model_type: &str,
        vocab: usize,
        hidden: usize,
        inter: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        let arch = if model_type == "llama" {
            "LlamaForCausalLM"
        } else {
            "MistralForCausalLM"
        };
        Self {
            architectures: vec![arch.into()],
            model_type: model_type.into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            hidden_act: "silu".into(),
            max_position_embeddings: 32768,
            rms_norm_eps: 1e-5,
            rope_theta: Some(1e6),
            rope_parameters: None,
            rope_scaling: None,
            tie_word_embeddings: false,
            sliding_window: None,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1),
            eos_token_id: Some(Value::from(2)),
            extra: BTreeMap::new(),
        }
    }

    /// Mistral-7B-v0.2's architecture (docs/method.md).
    pub fn mistral_7b_v02() -> Self {
        let mut c = Self::small("mistral", 32000, 4096, 14336, 32, 32, 8);
        c.extra
            .insert("torch_dtype".into(), Value::from("bfloat16"));
        c
    }
}
