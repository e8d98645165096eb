//! Named starting points of a trainer config. The `janus-7b-*` presets are the recipe
//! table of docs/method.md (per GPU: the global batch also multiplies by the ranks);
//! `tiny` is the local CPU default. The operator renders a `JanusTrainingJob` on top
//! of the recipe preset of its method, so the recipe numbers are written only here.

use std::path::PathBuf;

use super::error::{ConfigError, Result};
use super::prompt::PromptFormat;
use super::train::*;

/// Every preset name, for `--preset` and error messages.
pub const PRESETS: &[&str] = &[
    "tiny",
    "janus-7b-sft",
    "janus-7b-orpo",
    "janus-7b-dpo",
    "janus-rm-7b",
    "janus-rm-7b-helpful",
];

/// The preset called `name`.
pub fn preset(name: &str) -> Result<TrainConfig> {
    match name {
        "janus-7b-sft" => Ok(janus_7b_sft()),
        "janus-7b-orpo" => Ok(janus_7b_orpo()),
        "janus-7b-dpo" => Ok(janus_7b_dpo()),
        "janus-rm-7b" => Ok(janus_rm_7b()),
        "janus-rm-7b-helpful" => Ok(janus_rm_7b_helpful()),
        "tiny" => Ok(tiny()),
        other => Err(ConfigError(format!(
            "unknown preset `{other}` (known: {})",
            PRESETS.join(", ")
        ))),
    }
}

/// The recipe preset of `method` (what a job leaves out comes from here).
pub fn for_method(method: Method) -> TrainConfig {
    match method {
        Method::Sft => janus_7b_sft(),
        Method::Orpo => janus_7b_orpo(),
        Method::Dpo => janus_7b_dpo(),
        Method::Reward => janus_rm_7b(),
    }
}

/// Janus 7B SFT on the Multifaceted Collection: lr 5e-6, 4 epochs, seq 8192 packed,
/// micro batch 2 x accumulation 4 per GPU, cosine with 10 warm-up steps, no weight
/// decay, bf16 with gradient checkpointing, Mistral `[INST]` format.
pub fn janus_7b_sft() -> TrainConfig {
    TrainConfig {
        job: "local".into(),
        method: Method::Sft,
        model: ModelSection {
            path: PathBuf::from("models/mistral-7b-v0.2"),
            tokenizer: None,
            dtype: Dtype::Bfloat16,
            device: DeviceChoice::Auto,
            gradient_checkpointing: true,
        },
        data: DataSection {
            train: vec![PathBuf::from("data/multifaceted-collection.parquet").into()],
            mixture_samples: None,
            prompt_format: PromptFormat::Mistral,
            max_seq_len: 8192,
            packing: true,
            truncation: Truncation::TruncateResponse,
            min_response_tokens: 16,
            skip_bad_records: false,
            streaming: StreamingSection {
                window_blocks: 4,
                prefetch_windows: 2,
            },
        },
        hyperparameters: Hyperparameters {
            learning_rate: 5e-6,
            epochs: 4,
            max_steps: None,
            micro_batch_size: 2,
            gradient_accumulation_steps: 4,
            warmup_steps: 10,
            warmup_ratio: None,
            min_lr_ratio: 0.0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            orpo_lambda: 0.1,
            orpo_nll_on_prompt: false,
            seed: 42,
        },
        dpo: DpoSection {
            beta: 0.1,
            loss_type: DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            reference: DpoReference::Precompute,
            reference_model: None,
        },
        reward: RewardSection {
            center_rewards_coefficient: None,
        },
        optimizer: OptimizerSection {
            master_weights: true,
        },
        checkpoint: CheckpointSection {
            dir: "checkpoints".into(),
            every_steps: 500,
            keep: 3,
            resume: true,
            retry_timeout_seconds: 180,
            owner: None,
            resume_from: None,
            asynchronous: false,
        },
        distributed: DistributedSection {
            backend: Backend::Auto,
            bucket_mib: 25,
            timeout_seconds: 1800,
            shard_optimizer: None,
            reduce_dtype: ReduceDtype::Float32,
            overlap: false,
            fabric_check: None,
        },
        memory: MemorySection {
            limit: None,
            check: true,
        },
        output_dir: PathBuf::from("output"),
        log_every_steps: 10,
    }
}

/// Janus ORPO: lambda 0.1, 2 epochs, seq 4096 unpacked, micro batch 1 x accumulation
/// 4 per GPU, ChatML format; the rest as SFT.
///
/// The NLL term covers prompt + response (`orpo_nll_on_prompt`), as the code the Janus
/// ORPO run trained with computes it: its config (`train/axolotl/config/janus-7b-orpo.yml`:
/// `rl: orpo`, `orpo_alpha`, dataset type `orpo.chat_template`) runs on axolotl 0.4.0
/// as of 2024-03-18 .. 2024-04-19 (commits 2ea70ebbd .. 0e8f34094; the next, 7d1d22f72,
/// moved ORPO to TRL's trainer with other dataset types), whose
/// `AxolotlTrainer.orpo_compute_loss` takes the NLL as `orpo_compute_custom_loss(logits,
/// labels=input_ids of the chosen rows)`: every token of the chosen sequence is a label,
/// prompt included (TRL's `ORPOTrainer` does the same with its attention mask).
pub fn janus_7b_orpo() -> TrainConfig {
    let mut c = janus_7b_sft();
    c.method = Method::Orpo;
    c.data.train = vec![PathBuf::from("data/multifaceted-collection-orpo.parquet").into()];
    c.data.prompt_format = PromptFormat::Chatml;
    c.data.max_seq_len = 4096;
    c.data.packing = false;
    c.hyperparameters.epochs = 2;
    c.hyperparameters.micro_batch_size = 1;
    c.hyperparameters.orpo_nll_on_prompt = true;
    c
}

/// Janus DPO, from the Janus* SFT model (65k): lr 5e-7, 2 epochs, seq 2048 unpacked,
/// micro batch 1 x accumulation 4 per GPU, beta 0.1, ChatML; reference log-probs
/// precomputed.
pub fn janus_7b_dpo() -> TrainConfig {
    let mut c = janus_7b_orpo();
    c.method = Method::Dpo;
    c.model.path = PathBuf::from("models/janus-star-7b-sft");
    c.data.train = vec![PathBuf::from("data/multifaceted-collection-dpo.parquet").into()];
    c.data.max_seq_len = 2048;
    // ORPO's NLL term does not exist in DPO.
    c.hyperparameters.orpo_nll_on_prompt = false;
    c.hyperparameters.learning_rate = 5e-7;
    c.hyperparameters.epochs = 2;
    c
}

/// Janus-RM, stage 1 (kaistAI/Janus `train/openrlhf/scripts/train_rm.sh` and
/// `train_rm.py`): from 1 epoch of SFT, a linear value head read at the EOS ending
/// prompt + response, the Bradley-Terry loss, lr 9e-6, Adam betas (0.9, 0.95), warm-up
/// 3% of the steps, batch 128 (micro batch 4 x accumulation 8 x 4 GPUs), max length
/// 2048, 1 epoch, on the Multifaceted Collection RM pairs, Mistral format (the SFT
/// model's).
pub fn janus_rm_7b() -> TrainConfig {
    let mut c = janus_7b_sft();
    c.method = Method::Reward;
    c.model.path = PathBuf::from("models/janus-7b-sft-epoch1");
    c.data.train = vec![PathBuf::from("data/multifaceted-collection-rm.parquet").into()];
    c.data.max_seq_len = 2048;
    c.data.packing = false;
    c.output_dir = PathBuf::from("output/janus-rm-7b");
    let h = &mut c.hyperparameters;
    h.learning_rate = 9e-6;
    h.epochs = 1;
    h.micro_batch_size = 4;
    h.gradient_accumulation_steps = 8;
    h.adam_beta2 = 0.95;
    h.warmup_ratio = Some(0.03);
    c
}

/// Janus-RM, stage 2 (`train_rm_helpful.sh`): the same recipe from stage 1's model
/// (`janus-rm-7b`'s `output_dir`) on a helpfulness mixture, hh-rlhf / oasst1 / webgpt
/// weighted 0.72 / 0.14 / 0.14, 66,000 pairs (`--max_samples 66000`). The three sets
/// go in as preference records (`prompt`, `chosen`, `rejected`); point `data.train`'s
/// paths at your converted copies.
pub fn janus_rm_7b_helpful() -> TrainConfig {
    let mut c = janus_rm_7b();
    c.model.path = PathBuf::from("output/janus-rm-7b");
    c.output_dir = PathBuf::from("output/janus-rm-7b-helpful");
    let source = |path: &str, weight: f64| {
        DataSource::Weighted(WeightedSource {
            path: PathBuf::from(path),
            weight,
        })
    };
    c.data.train = vec![
        source("data/hh-rlhf.parquet", 0.72),
        source("data/oasst1-pairwise.parquet", 0.14),
        source("data/webgpt-comparisons.parquet", 0.14),
    ];
    c.data.mixture_samples = Some(66_000);
    c
}

/// The demo's CPU run on the tiny model `janus demo` writes.
pub fn tiny() -> TrainConfig {
    let mut c = janus_7b_sft();
    c.job = "tiny".into();
    c.model.path = PathBuf::from("target/janus-demo/tiny-model");
    c.model.dtype = Dtype::Float32;
    c.model.device = DeviceChoice::Cpu;
    c.model.gradient_checkpointing = false;
    c.data.train = vec![PathBuf::from("target/janus-demo/data/sft.parquet").into()];
    c.data.max_seq_len = 256;
    let h = &mut c.hyperparameters;
    h.learning_rate = 1e-3;
    h.epochs = 1;
    h.max_steps = Some(40);
    h.micro_batch_size = 4;
    h.gradient_accumulation_steps = 2;
    h.warmup_steps = 4;
    h.min_lr_ratio = 0.1;
    c.checkpoint.dir = "target/janus-demo/checkpoints".into();
    c.checkpoint.every_steps = 20;
    c.checkpoint.keep = 2;
    c.output_dir = PathBuf::from("target/janus-demo/output");
    c.log_every_steps = 5;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_presets_match_the_paper() {
        let sft = janus_7b_sft();
        let h = &sft.hyperparameters;
        assert_eq!(
            (
                h.learning_rate,
                h.epochs,
                h.micro_batch_size,
                h.gradient_accumulation_steps
            ),
            (5e-6, 4, 2, 4)
        );
        assert_eq!(
            (sft.data.max_seq_len, sft.data.packing, h.warmup_steps),
            (8192, true, 10)
        );
        assert_eq!(
            (h.weight_decay, sft.data.prompt_format),
            (0.0, PromptFormat::Mistral)
        );
        assert!(sft.model.gradient_checkpointing && sft.optimizer.master_weights);
        assert_eq!(sft.model.dtype, Dtype::Bfloat16);
        let orpo = janus_7b_orpo();
        assert_eq!(orpo.method, Method::Orpo);
        assert_eq!(
            (
                orpo.hyperparameters.epochs,
                orpo.data.max_seq_len,
                orpo.data.packing,
                orpo.hyperparameters.micro_batch_size,
                orpo.hyperparameters.gradient_accumulation_steps,
            ),
            (2, 4096, false, 1, 4)
        );
        assert_eq!(orpo.hyperparameters.orpo_lambda, 0.1);
        // axolotl 0.4.0's ORPO NLL: every token of the chosen sequence.
        assert!(orpo.hyperparameters.orpo_nll_on_prompt);
        assert_eq!(orpo.hyperparameters.learning_rate, 5e-6);
        assert_eq!(orpo.data.prompt_format, PromptFormat::Chatml);
    }

    #[test]
    fn dpo_and_reward_presets_match_the_paper() {
        let d = janus_7b_dpo();
        let h = &d.hyperparameters;
        assert_eq!(d.method, Method::Dpo);
        assert_eq!(
            (
                h.learning_rate,
                h.epochs,
                d.data.max_seq_len,
                d.data.packing
            ),
            (5e-7, 2, 2048, false)
        );
        assert_eq!(
            (
                h.micro_batch_size,
                h.gradient_accumulation_steps,
                d.dpo.beta
            ),
            (1, 4, 0.1)
        );
        let r = janus_rm_7b();
        let h = &r.hyperparameters;
        assert_eq!(r.method, Method::Reward);
        assert_eq!(
            (h.learning_rate, h.epochs, r.data.max_seq_len),
            (9e-6, 1, 2048)
        );
        // Batch 128 on the recipe's 4 GPUs.
        assert_eq!(h.micro_batch_size * h.gradient_accumulation_steps * 4, 128);
        // train_rm.py: Adam betas (0.9, 0.95), warm-up ceil(3% of the steps).
        assert_eq!(
            (h.adam_beta1, h.adam_beta2, h.warmup_ratio),
            (0.9, 0.95, Some(0.03))
        );
        assert_eq!((h.warmup_steps_of(505), h.warmup_steps_of(100)), (16, 3));
        // Stage 2: stage 1's model on the helpfulness mixture.
        let s2 = janus_rm_7b_helpful();
        assert_eq!(s2.model.path, r.output_dir);
        let mix: Vec<(String, Option<f64>)> = s2
            .data
            .train
            .iter()
            .map(|s| (s.path().display().to_string(), s.weight()))
            .collect();
        assert_eq!(
            mix.iter().map(|m| m.1).collect::<Vec<_>>(),
            [Some(0.72), Some(0.14), Some(0.14)]
        );
        assert!(mix[0].0.contains("hh-rlhf") && mix[2].0.contains("webgpt"));
        assert_eq!(s2.data.mixture_samples, Some(66_000));
        assert_eq!(s2.hyperparameters, r.hyperparameters);
    }

    #[test]
    fn each_method_has_its_recipe() {
        assert_eq!(for_method(Method::Sft), janus_7b_sft());
        assert_eq!(for_method(Method::Orpo), janus_7b_orpo());
        assert_eq!(for_method(Method::Dpo), janus_7b_dpo());
        assert_eq!(for_method(Method::Reward), janus_rm_7b());
    }
}
