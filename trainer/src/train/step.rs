//! One optimizer step: forward and backward over this rank's micro-batches, gradient
//! all-reduce, clipping, AdamW. Losses are normalised by the token (or pair) counts
//! of the whole step summed over all ranks, so the all-reduced gradient equals the
//! single-process gradient of the combined batch.

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::data::{Batch, PreferenceBatch, IGNORE};
use crate::dist::{all_reduce_f64, all_reduce_grads, broadcast_params, Collective, Single};
use crate::error::Result;
use crate::loss::{orpo_loss, sft_loss, OrpoSums};
use crate::model::{AttentionMask, ModelConfig, Transformer};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};

/// Positions per LM-head + cross-entropy chunk (see `Trainer::sft_backward`).
pub const LOSS_CHUNK_TOKENS: usize = 1024;

/// Default gradient bucket for the all-reduce.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// A model with its variables, optimizer and collectives.
pub struct Trainer {
    pub vs: VarStore,
    pub model: Transformer,
    pub opt: AdamW,
    pub max_grad_norm: f64,
    pub comm: Box<dyn Collective>,
    pub bucket_bytes: usize,
    params: Vec<Tensor>,
}

/// What one optimizer step did, over all ranks.
#[derive(Debug, Clone, Default)]
pub struct StepResult {
    pub loss: f64,
    pub grad_norm: f64,
    /// Real input tokens processed by all ranks.
    pub tokens: i64,
    pub orpo: Option<OrpoSums>,
}

impl Trainer {
    /// A model from `config` with random weights (std 0.02) in `kind` on `device`,
    /// training alone until `set_collective` joins it to a group.
    pub fn new(
        config: &ModelConfig,
        kind: Kind,
        device: Device,
        adam: AdamWConfig,
        max_grad_norm: f64,
    ) -> Self {
        let mut vs = VarStore::new(device);
        let model = Transformer::new(&vs.root(), config);
        vs.set_kind(kind);
        let named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let opt = AdamW::new(named, adam);
        let params: Vec<Tensor> = opt.params().map(|p| p.shallow_clone()).collect();
        // Every gradient exists (as zeros) from the start, so a rank without data in a
        // step still contributes a well-formed (zero) gradient to the all-reduce.
        let touch = params
            .iter()
            .map(|p| (p * 0.0).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, device)), |a, b| a + b);
        touch.backward();
        Self {
            vs,
            model,
            opt,
            max_grad_norm,
            comm: Box::new(Single),
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            params,
        }
    }

    pub fn set_collective(&mut self, comm: Box<dyn Collective>) {
        self.comm = comm;
    }

    /// Make every rank's weights rank 0's.
    pub fn broadcast_weights(&mut self) -> Result<()> {
        broadcast_params(self.comm.as_mut(), &self.params, 0)
    }

    fn finish_step(&mut self, lr: f64, mut r: StepResult) -> Result<StepResult> {
        all_reduce_grads(self.comm.as_mut(), &self.params, self.bucket_bytes)?;
        r.grad_norm = clip_grad_norm(self.params.iter(), self.max_grad_norm);
        self.opt.step(lr);
        self.opt.zero_grad();
        Ok(r)
    }

    /// SFT step over this rank's micro-batches (possibly none).
    pub fn sft_step(&mut self, micro: &[Batch], lr: f64) -> Result<StepResult> {
        let local = micro.iter().map(|b| b.loss_tokens).sum::<i64>() as f64;
        let step_tokens = all_reduce_f64(self.comm.as_mut(), &[local])?[0] as i64;
        let (mut loss, mut tokens) = (0.0, 0i64);
        for b in micro {
            loss += self.sft_backward(b, step_tokens);
            tokens += b.tokens;
        }
        let sums = all_reduce_f64(self.comm.as_mut(), &[loss, tokens as f64])?;
        self.finish_step(
            lr,
            StepResult {
                loss: sums[0],
                tokens: sums[1] as i64,
                ..Default::default()
            },
        )
    }

    /// Forward and backward of one SFT micro-batch; returns its share of the loss.
    ///
    /// The LM head and cross-entropy run only on positions that take loss (prompt and
    /// padding are skipped), in chunks of `LOSS_CHUNK_TOKENS`, with the gradient
    /// flowing back into the hidden states once at the end. Full `[tokens, vocab]`
    /// logits (and their softmax and gradient) are never alive at once, which is most
    /// of the activation memory of a small model with a 32k vocabulary.
    pub fn sft_backward(&self, b: &Batch, step_tokens: i64) -> f64 {
        let hidden = self
            .model
            .hidden_states(&b.input_ids, &b.positions, &b.mask);
        let detached = hidden.detach().set_requires_grad(true);
        let h = *hidden.size().last().expect("rank 3");
        let targets = b.targets.view([-1]);
        let keep = targets.ne(IGNORE).nonzero().view([-1]);
        let flat = detached.view([-1, h]);
        let n = keep.size()[0];
        let mut loss = 0.0;
        for start in (0..n).step_by(LOSS_CHUNK_TOKENS) {
            let len = LOSS_CHUNK_TOKENS.min((n - start) as usize) as i64;
            // Each chunk selects its own rows, so each backward has its own graph.
            let rows = keep.narrow(0, start, len);
            let logits = self.model.lm_head(&flat.index_select(0, &rows));
            let part = sft_loss(
                &logits.unsqueeze(0),
                &targets.index_select(0, &rows).unsqueeze(0),
                step_tokens,
            );
            part.backward();
            loss += part.double_value(&[]);
        }
        let grad = detached.grad();
        if grad.defined() {
            // d/d(hidden) of sum(hidden * grad) is grad: one backward through the body.
            (hidden * grad).sum(Kind::Float).backward();
        }
        loss
    }

    /// ORPO step over this rank's micro-batches of pairs (possibly none).
    pub fn orpo_step(
        &mut self,
        micro: &[PreferenceBatch],
        lambda: f64,
        lr: f64,
    ) -> Result<StepResult> {
        let local = [
            micro.iter().map(|b| b.nll_tokens).sum::<i64>() as f64,
            micro.iter().map(|b| b.pairs).sum::<i64>() as f64,
        ];
        let counts = all_reduce_f64(self.comm.as_mut(), &local)?;
        let (nll_tokens, pairs) = (counts[0] as i64, counts[1] as i64);
        let (mut loss, mut tokens) = (0.0, 0i64);
        let mut sums = OrpoSums::default();
        for b in micro {
            let logits = self
                .model
                .forward(&b.input_ids, &b.positions, &AttentionMask::Causal);
            let (l, s) = orpo_loss(&logits, b, lambda, nll_tokens, pairs);
            l.backward();
            loss += l.double_value(&[]);
            tokens += b.tokens;
            sums.add(&s);
        }
        let v = all_reduce_f64(
            self.comm.as_mut(),
            &[
                loss,
                tokens as f64,
                sums.pairs,
                sums.nll_sum,
                sums.nll_tokens,
                sums.log_odds_ratio_sum,
                sums.log_odds_sum,
                sums.chosen_logp_sum,
                sums.rejected_logp_sum,
                sums.accurate,
            ],
        )?;
        let orpo = OrpoSums {
            pairs: v[2],
            nll_sum: v[3],
            nll_tokens: v[4],
            log_odds_ratio_sum: v[5],
            log_odds_sum: v[6],
            chosen_logp_sum: v[7],
            rejected_logp_sum: v[8],
            accurate: v[9],
        };
        self.finish_step(
            lr,
            StepResult {
                loss: v[0],
                tokens: v[1] as i64,
                grad_norm: 0.0,
                orpo: Some(orpo),
            },
        )
    }
}
