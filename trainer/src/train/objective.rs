//! The objective of a run, chosen once from the config (`method` and its section):
//! what each step's data becomes (micro-batches of examples, packed rows or pairs) and
//! which loss the step takes. The step only calls it; a method without what it needs
//! (DPO without its reference) or given what it does not read is an error before the
//! first step, not a fall-through into another method's step.

use tch::Device;

use super::feed::StepData;
use super::reference::Reference;
use super::step::{StepResult, Trainer};
use crate::config::{Method, TrainConfig};
use crate::data::{Batch, Example, Pair, PreferenceBatch, RewardBatch};
use crate::error::{Error, Result};
use crate::loss::DpoParams;
use crate::model::ModelConfig;

pub enum Objective {
    /// Response-token cross-entropy (`method: sft`).
    Sft,
    /// ORPO (`method: orpo`): NLL of the chosen response (over the prompt too with
    /// `hyperparameters.orpo_nll_on_prompt`) plus lambda times the odds-ratio term.
    Orpo { lambda: f64, nll_on_prompt: bool },
    /// DPO (`method: dpo`, the `dpo` section) against its reference.
    Dpo {
        params: DpoParams,
        reference: Reference,
    },
    /// The reward model's Bradley-Terry loss (`method: reward`, the `reward` section).
    Reward { center: Option<f64> },
}

/// How a step's data is cut into micro-batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Units per micro-batch (`hyperparameters.micro_batch_size`).
    pub micro: usize,
    /// The tokenizer's padding id.
    pub pad: i64,
    pub device: Device,
}

impl Objective {
    /// The objective `cfg.method` names, with its settings; `reference` is DPO's (built
    /// from `dpo.reference` and `dpo.reference_model` once the model is loaded), and
    /// only DPO takes one.
    pub fn new(cfg: &TrainConfig, reference: Option<Reference>) -> Result<Self> {
        let h = &cfg.hyperparameters;
        match (cfg.method, reference) {
            (Method::Dpo, Some(reference)) => Ok(Objective::Dpo {
                params: DpoParams {
                    beta: cfg.dpo.beta,
                    loss_type: cfg.dpo.loss_type,
                    label_smoothing: cfg.dpo.label_smoothing,
                },
                reference,
            }),
            (Method::Dpo, None) => Err(Error::Config(
                "`method: dpo` needs a reference (`dpo.reference`: precompute or model, of \
                 `dpo.reference_model` or `model.path`), and none was built"
                    .into(),
            )),
            (m, Some(_)) => Err(Error::Config(format!(
                "a DPO reference was built, but `method` is `{}`: only `method: dpo` reads \
                 `dpo.reference`",
                m.as_str()
            ))),
            (Method::Sft, None) => Ok(Objective::Sft),
            (Method::Orpo, None) => Ok(Objective::Orpo {
                lambda: h.orpo_lambda,
                nll_on_prompt: h.orpo_nll_on_prompt,
            }),
            (Method::Reward, None) => Ok(Objective::Reward {
                center: cfg.reward.center_rewards_coefficient,
            }),
        }
    }

    pub fn method(&self) -> Method {
        match self {
            Objective::Sft => Method::Sft,
            Objective::Orpo { .. } => Method::Orpo,
            Objective::Dpo { .. } => Method::Dpo,
            Objective::Reward { .. } => Method::Reward,
        }
    }

    /// The model `method` trains from `base`: a reward model starts from a causal LM
    /// (the SFT model) with the same body and a value head.
    pub fn model_config(method: Method, base: &ModelConfig, pad: i64) -> ModelConfig {
        if method == Method::Reward && !base.is_sequence_classifier() {
            base.as_reward_model(pad)
        } else {
            base.clone()
        }
    }

    /// One optimizer step over this rank's data of the step (possibly none), with the
    /// sequences it trained (`StepResult::attention`).
    pub fn step(
        &self,
        trainer: &mut Trainer,
        data: StepData,
        b: Batching,
        lr: f64,
    ) -> Result<StepResult> {
        match (self, data) {
            (Objective::Sft, StepData::Examples(ex)) => {
                let micro: Vec<Batch> = ex
                    .chunks(b.micro)
                    .map(|c| Batch::unpacked(&c.iter().collect::<Vec<_>>(), b.pad, b.device))
                    .collect();
                trainer.sft_step(&micro, lr).map(|r| {
                    r.with_attention(micro.iter().map(|b| (b.tokens, b.attention_squares)))
                })
            }
            (Objective::Sft, StepData::Rows(rows)) => {
                let micro: Vec<Batch> = rows
                    .chunks(b.micro)
                    .map(|c| {
                        let rs: Vec<Vec<&Example>> = c.iter().map(|r| r.iter().collect()).collect();
                        Batch::packed(&rs, b.pad, b.device)
                    })
                    .collect();
                trainer.sft_step(&micro, lr).map(|r| {
                    r.with_attention(micro.iter().map(|b| (b.tokens, b.attention_squares)))
                })
            }
            (
                Objective::Orpo {
                    lambda,
                    nll_on_prompt,
                },
                StepData::Pairs(pairs),
            ) => {
                let micro = preference_batches(&pairs, b, *nll_on_prompt);
                trainer.orpo_step(&micro, *lambda, lr).map(|r| {
                    r.with_attention(micro.iter().map(|b| (b.tokens, b.attention_squares)))
                })
            }
            // DPO reads the responses only.
            (Objective::Dpo { params, reference }, StepData::Pairs(pairs)) => {
                let micro = preference_batches(&pairs, b, false);
                trainer.dpo_step(&micro, reference, params, lr).map(|r| {
                    r.with_attention(micro.iter().map(|b| (b.tokens, b.attention_squares)))
                })
            }
            (Objective::Reward { center }, StepData::Pairs(pairs)) => {
                let micro: Vec<RewardBatch> = pairs
                    .chunks(b.micro)
                    .map(|c| RewardBatch::new(&c.iter().collect::<Vec<_>>(), b.pad, b.device))
                    .collect();
                trainer.reward_step(&micro, *center, lr).map(|r| {
                    r.with_attention(micro.iter().map(|b| (b.tokens, b.attention_squares)))
                })
            }
            (o, data) => Err(Error::Data(format!(
                "a step of `method: {}` was given {}: the data does not match the method",
                o.method().as_str(),
                match data {
                    StepData::Examples(_) => "SFT examples",
                    StepData::Rows(_) => "packed SFT rows",
                    StepData::Pairs(_) => "preference pairs",
                }
            ))),
        }
    }
}

fn preference_batches(pairs: &[Pair], b: Batching, nll_on_prompt: bool) -> Vec<PreferenceBatch> {
    pairs
        .chunks(b.micro)
        .map(|c| {
            PreferenceBatch::new(
                &c.iter().collect::<Vec<_>>(),
                b.pad,
                nll_on_prompt,
                b.device,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamWConfig;

    fn cfg(method: &str) -> TrainConfig {
        TrainConfig::resolve(
            Some("tiny"),
            None,
            &[format!("method={method}"), "data.packing=false".into()],
        )
        .unwrap()
    }

    #[test]
    fn the_config_chooses_the_objective_once() {
        assert!(matches!(
            Objective::new(&cfg("sft"), None).unwrap(),
            Objective::Sft
        ));
        let mut c = cfg("orpo");
        c.hyperparameters.orpo_lambda = 0.25;
        c.hyperparameters.orpo_nll_on_prompt = true;
        assert!(matches!(
            Objective::new(&c, None).unwrap(),
            Objective::Orpo { lambda, nll_on_prompt: true } if lambda == 0.25
        ));
        let mut c = cfg("reward");
        c.reward.center_rewards_coefficient = Some(0.01);
        assert!(matches!(
            Objective::new(&c, None).unwrap(),
            Objective::Reward { center: Some(c) } if c == 0.01
        ));
        let mut c = cfg("dpo");
        c.dpo.beta = 0.3;
        let o = Objective::new(&c, Some(Reference::Precomputed(vec![]))).unwrap();
        assert!(matches!(o, Objective::Dpo { params, .. } if params.beta == 0.3));
        assert_eq!(o.method(), Method::Dpo);
    }

    fn refused(r: Result<Objective>) -> Error {
        match r {
            Err(e) => e,
            Ok(o) => panic!("`method: {}` was accepted", o.method().as_str()),
        }
    }

    #[test]
    fn dpo_without_a_reference_is_an_error_at_start_naming_the_config_field() {
        let e = refused(Objective::new(&cfg("dpo"), None));
        assert!(e.to_string().contains("`dpo.reference`"), "{e}");
        assert_eq!(e.exit_code(), janus_crds::exit_code::BAD_INPUT);
        for m in ["sft", "orpo", "reward"] {
            let e = refused(Objective::new(
                &cfg(m),
                Some(Reference::Precomputed(vec![])),
            ));
            assert!(e.to_string().contains(&format!("`method` is `{m}`")), "{e}");
        }
    }

    #[test]
    fn a_step_given_another_methods_data_is_an_error_not_another_step() {
        let model = ModelConfig::small("mistral", 64, 16, 32, 1, 2, 1);
        let adam = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut t = Trainer::new(&model, tch::Kind::Float, Device::Cpu, adam, 1.0);
        let b = Batching {
            micro: 1,
            pad: 0,
            device: Device::Cpu,
        };
        let before = t.opt.step;
        let e = Objective::new(&cfg("orpo"), None)
            .unwrap()
            .step(&mut t, StepData::Examples(vec![]), b, 1e-3)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("`method: orpo` was given SFT examples"),
            "{e}"
        );
        let e = Objective::Sft
            .step(&mut t, StepData::Pairs(vec![]), b, 1e-3)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("`method: sft` was given preference pairs"),
            "{e}"
        );
        assert_eq!(t.opt.step, before, "no optimizer step was taken");
    }
}
