//! The Janus recipe (shared/JANUS.md, "Training recipes"): the value of every
//! hyperparameter a job leaves out, per method.

use crate::training::{Hyperparameters, Method, PromptFormat};

/// Every hyperparameter with a value: the job's own where set, else the recipe's.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedHyperparameters {
    pub learning_rate: f64,
    pub epochs: u32,
    pub max_steps: Option<u64>,
    pub micro_batch_size: u32,
    pub gradient_accumulation_steps: u32,
    pub max_seq_len: u32,
    pub packing: bool,
    pub warmup_steps: u64,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub orpo_lambda: f64,
    pub orpo_nll_on_prompt: bool,
    pub seed: u64,
}

/// The recipe's values for `method`.
pub fn recipe(method: Method) -> ResolvedHyperparameters {
    let sft = ResolvedHyperparameters {
        learning_rate: 5e-6,
        epochs: 4,
        max_steps: None,
        micro_batch_size: 2,
        gradient_accumulation_steps: 4,
        max_seq_len: 8192,
        packing: true,
        warmup_steps: 10,
        min_lr_ratio: 0.0,
        weight_decay: 0.0,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_epsilon: 1e-8,
        max_grad_norm: 1.0,
        orpo_lambda: 0.1,
        orpo_nll_on_prompt: false,
        seed: 42,
    };
    match method {
        Method::Sft => sft,
        Method::Orpo => ResolvedHyperparameters {
            epochs: 2,
            micro_batch_size: 1,
            max_seq_len: 4096,
            packing: false,
            ..sft
        },
    }
}

/// The recipe's prompt format for `method`.
pub fn prompt_format(method: Method) -> PromptFormat {
    match method {
        Method::Sft => PromptFormat::Mistral,
        Method::Orpo => PromptFormat::Chatml,
    }
}

impl Hyperparameters {
    /// Fill every unset field from the recipe of `method`.
    pub fn resolve(&self, method: Method) -> ResolvedHyperparameters {
        let r = recipe(method);
        ResolvedHyperparameters {
            learning_rate: self.learning_rate.unwrap_or(r.learning_rate),
            epochs: self.epochs.unwrap_or(r.epochs),
            max_steps: self.max_steps.or(r.max_steps),
            micro_batch_size: self.micro_batch_size.unwrap_or(r.micro_batch_size),
            gradient_accumulation_steps: self
                .gradient_accumulation_steps
                .unwrap_or(r.gradient_accumulation_steps),
            max_seq_len: self.max_seq_len.unwrap_or(r.max_seq_len),
            packing: self.packing.unwrap_or(r.packing),
            warmup_steps: self.warmup_steps.unwrap_or(r.warmup_steps),
            min_lr_ratio: self.min_lr_ratio.unwrap_or(r.min_lr_ratio),
            weight_decay: self.weight_decay.unwrap_or(r.weight_decay),
            adam_beta1: self.adam_beta1.unwrap_or(r.adam_beta1),
            adam_beta2: self.adam_beta2.unwrap_or(r.adam_beta2),
            adam_epsilon: self.adam_epsilon.unwrap_or(r.adam_epsilon),
            max_grad_norm: self.max_grad_norm.unwrap_or(r.max_grad_norm),
            orpo_lambda: self.orpo_lambda.unwrap_or(r.orpo_lambda),
            orpo_nll_on_prompt: self.orpo_nll_on_prompt.unwrap_or(r.orpo_nll_on_prompt),
            seed: self.seed.unwrap_or(r.seed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sft_recipe_matches_the_paper() {
        let r = Hyperparameters::default().resolve(Method::Sft);
        assert_eq!(r.learning_rate, 5e-6);
        assert_eq!(
            (r.epochs, r.micro_batch_size, r.gradient_accumulation_steps),
            (4, 2, 4)
        );
        assert_eq!((r.max_seq_len, r.packing, r.warmup_steps), (8192, true, 10));
        assert_eq!(r.weight_decay, 0.0);
        assert_eq!(prompt_format(Method::Sft), PromptFormat::Mistral);
    }

    #[test]
    fn orpo_recipe_matches_the_paper() {
        let r = Hyperparameters::default().resolve(Method::Orpo);
        assert_eq!((r.learning_rate, r.orpo_lambda), (5e-6, 0.1));
        assert_eq!(
            (r.epochs, r.micro_batch_size, r.gradient_accumulation_steps),
            (2, 1, 4)
        );
        assert_eq!((r.max_seq_len, r.packing), (4096, false));
        assert_eq!(prompt_format(Method::Orpo), PromptFormat::Chatml);
    }

    #[test]
    fn job_values_win_over_the_recipe() {
        let h = Hyperparameters {
            learning_rate: Some(1e-5),
            epochs: Some(1),
            max_steps: Some(100),
            ..Default::default()
        };
        let r = h.resolve(Method::Orpo);
        assert_eq!(
            (r.learning_rate, r.epochs, r.max_steps),
            (1e-5, 1, Some(100))
        );
        assert_eq!(r.micro_batch_size, 1);
    }
}
