//! One optimizer step: forward and backward over this rank's micro-batches, gradient
//! reduction, clipping, AdamW. Losses are normalised by the token (or pair) counts
//! of the whole step summed over all ranks, so the reduced gradient equals the
//! single-process gradient of the combined batch.

use std::cell::Cell;
use std::time::Instant;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::backprop::BodyPass;
use super::head;
use super::reference::Reference;
use crate::data::{Batch, PreferenceBatch, RewardBatch};
use crate::dist::{all_reduce_f64, broadcast_params, Collective, Single};
use crate::error::Result;
use crate::loss::{DpoParams, DpoSums, OrpoSums, RewardSums};
use crate::model::{ModelConfig, Transformer};
use crate::optim::AdamWConfig;
use crate::optim::Optimizer;

/// Default gradient bucket for the reduction.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// A model with its variables, optimizer and collectives.
pub struct Trainer {
    pub vs: VarStore,
    pub model: Transformer,
    pub opt: Optimizer,
    pub max_grad_norm: f64,
    pub comm: Box<dyn Collective>,
    pub bucket_bytes: usize,
    /// Recompute each decoder layer in the backward pass (activation checkpointing).
    pub checkpointing: bool,
    /// Kind the gradients are summed in across ranks.
    pub reduce_kind: Kind,
    params: Vec<Tensor>,
    /// Where the time of the steps went.
    pub phases: PhaseTimes,
}

/// Seconds spent in each phase of the steps since the last `take`, for profiles
/// (`janus bench-train`). Cells, because the per-micro-batch passes borrow the
/// trainer immutably.
#[derive(Debug, Default)]
pub struct PhaseTimes {
    /// The decoder body's forward pass.
    pub forward: Cell<f64>,
    /// The LM head and the loss, forward and backward (chunked, `head`).
    pub head: Cell<f64>,
    /// The body's backward pass from the head's gradient.
    pub backward: Cell<f64>,
    /// Clipping and AdamW (with the master-weight copies).
    pub optimizer: Cell<f64>,
    /// Gradient reduction and the step's count/loss all-reduces.
    pub collectives: Cell<f64>,
}

impl PhaseTimes {
    fn add(cell: &Cell<f64>, since: Instant) {
        cell.set(cell.get() + since.elapsed().as_secs_f64());
    }

    /// The accumulated seconds by phase name, and reset.
    pub fn take(&self) -> Vec<(&'static str, f64)> {
        [
            ("forward", &self.forward),
            ("head_loss", &self.head),
            ("backward", &self.backward),
            ("optimizer", &self.optimizer),
            ("collectives", &self.collectives),
        ]
        .into_iter()
        .map(|(n, c)| (n, c.take()))
        .collect()
    }
}

/// What one optimizer step did, over all ranks.
#[derive(Debug, Clone, Default)]
pub struct StepResult {
    pub loss: f64,
    pub grad_norm: f64,
    /// Real input tokens processed by all ranks.
    pub tokens: i64,
    /// The method's own metrics over the step, under TRL's names.
    pub metrics: Vec<(&'static str, f64)>,
}

impl Trainer {
    /// A model from `config` with random weights (std 0.02) in `kind` on `device`,
    /// training alone until `set_collective` joins it to a group; a kind other than
    /// fp32 gets fp32 master weights and moments.
    pub fn new(
        config: &ModelConfig,
        kind: Kind,
        device: Device,
        adam: AdamWConfig,
        max_grad_norm: f64,
    ) -> Self {
        Self::with_master_weights(config, kind, device, adam, max_grad_norm, true)
    }

    /// As `new`; `master: false` updates the parameters in their own kind.
    pub fn with_master_weights(
        config: &ModelConfig,
        kind: Kind,
        device: Device,
        adam: AdamWConfig,
        max_grad_norm: f64,
        master: bool,
    ) -> Self {
        let mut vs = VarStore::new(device);
        let model = Transformer::new(&vs.root(), config);
        vs.set_kind(kind);
        let named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let opt = Optimizer::new(named, adam, master);
        let params: Vec<Tensor> = opt.params().map(|p| p.shallow_clone()).collect();
        // Every gradient exists (as zeros) from the start, so a rank without data in a
        // step still contributes a well-formed (zero) gradient to the reduction.
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
            checkpointing: false,
            reduce_kind: Kind::Float,
            params,
            phases: PhaseTimes::default(),
        }
    }

    pub fn set_collective(&mut self, comm: Box<dyn Collective>) {
        self.comm = comm;
    }

    /// Partition the optimizer state across the ranks of the collective (ZeRO-1).
    pub fn shard_optimizer(&mut self) {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        self.opt.shard(rank, world, self.bucket_bytes);
    }

    /// Make every rank's weights rank 0's (and the master weights equal to them).
    pub fn broadcast_weights(&mut self) -> Result<()> {
        broadcast_params(self.comm.as_mut(), &self.params, 0)?;
        self.opt.sync_master_from_params();
        Ok(())
    }

    fn finish_step(&mut self, lr: f64, mut r: StepResult) -> Result<StepResult> {
        let t = Instant::now();
        r.grad_norm = self.opt.step(
            self.comm.as_mut(),
            lr,
            self.max_grad_norm,
            self.reduce_kind,
            self.bucket_bytes,
        )?;
        self.opt.zero_grad();
        let reduce = self.opt.take_reduce_seconds();
        let p = &self.phases;
        p.optimizer
            .set(p.optimizer.get() + t.elapsed().as_secs_f64() - reduce);
        p.collectives.set(p.collectives.get() + reduce);
        Ok(r)
    }

    /// SFT step over this rank's micro-batches (possibly none).
    pub fn sft_step(&mut self, micro: &[Batch], lr: f64) -> Result<StepResult> {
        let local = micro.iter().map(|b| b.loss_tokens).sum::<i64>() as f64;
        let t = Instant::now();
        let step_tokens = all_reduce_f64(self.comm.as_mut(), &[local])?[0] as i64;
        PhaseTimes::add(&self.phases.collectives, t);
        let (mut loss, mut tokens) = (0.0, 0i64);
        for b in micro {
            loss += self.sft_backward(b, step_tokens);
            tokens += b.tokens;
        }
        let t = Instant::now();
        let sums = all_reduce_f64(self.comm.as_mut(), &[loss, tokens as f64])?;
        PhaseTimes::add(&self.phases.collectives, t);
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
    /// The head runs on loss positions only, in chunks (`head::sft`).
    pub fn sft_backward(&self, b: &Batch, step_tokens: i64) -> f64 {
        let t = Instant::now();
        let body = BodyPass::forward(
            &self.model,
            &b.input_ids,
            &b.positions,
            &b.layout,
            self.checkpointing,
        );
        PhaseTimes::add(&self.phases.forward, t);
        let t = Instant::now();
        let loss = head::sft(&self.model, &body.hidden, &b.targets, step_tokens);
        PhaseTimes::add(&self.phases.head, t);
        let t = Instant::now();
        body.backward(&self.model);
        PhaseTimes::add(&self.phases.backward, t);
        loss
    }

    /// Forward and backward of one micro-batch of pairs; its share of the ORPO loss.
    pub fn orpo_backward(
        &self,
        b: &PreferenceBatch,
        lambda: f64,
        step_nll_tokens: i64,
        step_pairs: i64,
    ) -> (f64, OrpoSums) {
        let causal = crate::model::AttentionLayout::Causal;
        let body = BodyPass::forward(
            &self.model,
            &b.input_ids,
            &b.positions,
            &causal,
            self.checkpointing,
        );
        let out = head::orpo(
            &self.model,
            &body.hidden,
            b,
            lambda,
            step_nll_tokens,
            step_pairs,
        );
        body.backward(&self.model);
        out
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
            let (l, s) = self.orpo_backward(b, lambda, nll_tokens, pairs);
            loss += l;
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
                metrics: orpo.metrics(lambda),
            },
        )
    }

    /// Pairs in this step over all ranks.
    fn step_pairs(&mut self, local: i64) -> Result<i64> {
        Ok(all_reduce_f64(self.comm.as_mut(), &[local as f64])?[0] as i64)
    }

    /// Forward and backward of one micro-batch of pairs; its share of the DPO loss.
    pub fn dpo_backward(
        &self,
        b: &PreferenceBatch,
        ref_logps: &Tensor,
        params: &DpoParams,
        step_pairs: i64,
    ) -> (f64, DpoSums) {
        let causal = crate::model::AttentionLayout::Causal;
        let body = BodyPass::forward(
            &self.model,
            &b.input_ids,
            &b.positions,
            &causal,
            self.checkpointing,
        );
        let out = head::dpo(&self.model, &body.hidden, b, ref_logps, params, step_pairs);
        body.backward(&self.model);
        out
    }

    /// DPO step over this rank's micro-batches of pairs (possibly none).
    pub fn dpo_step(
        &mut self,
        micro: &[PreferenceBatch],
        reference: &Reference,
        params: &DpoParams,
        lr: f64,
    ) -> Result<StepResult> {
        let pairs = self.step_pairs(micro.iter().map(|b| b.pairs).sum())?;
        let (mut loss, mut tokens) = (0.0, 0i64);
        let mut sums = DpoSums::default();
        for b in micro {
            let refs = reference.logps(b);
            let (l, s) = self.dpo_backward(b, &refs, params, pairs);
            loss += l;
            tokens += b.tokens;
            sums.add(&s);
        }
        let mut v = vec![loss, tokens as f64];
        v.extend(sums.to_vec());
        let v = all_reduce_f64(self.comm.as_mut(), &v)?;
        let sums = DpoSums::from_slice(&v[2..]);
        self.finish_step(
            lr,
            StepResult {
                loss: v[0],
                tokens: v[1] as i64,
                grad_norm: 0.0,
                metrics: sums.metrics(),
            },
        )
    }

    /// Forward and backward of one reward-model micro-batch; its share of the loss.
    pub fn reward_backward(
        &self,
        b: &RewardBatch,
        center: Option<f64>,
        step_pairs: i64,
    ) -> (f64, RewardSums) {
        let causal = crate::model::AttentionLayout::Causal;
        let body = BodyPass::forward(
            &self.model,
            &b.input_ids,
            &b.positions,
            &causal,
            self.checkpointing,
        );
        let out = head::reward(&self.model, &body.hidden, b, center, step_pairs);
        body.backward(&self.model);
        out
    }

    /// Reward-model step over this rank's micro-batches of pairs (possibly none).
    pub fn reward_step(
        &mut self,
        micro: &[RewardBatch],
        center: Option<f64>,
        lr: f64,
    ) -> Result<StepResult> {
        let pairs = self.step_pairs(micro.iter().map(|b| b.pairs).sum())?;
        let (mut loss, mut tokens) = (0.0, 0i64);
        let mut s = RewardSums::default();
        for b in micro {
            let (l, part) = self.reward_backward(b, center, pairs);
            loss += l;
            tokens += b.tokens;
            s.add(&part);
        }
        let v = all_reduce_f64(
            self.comm.as_mut(),
            &[
                loss,
                tokens as f64,
                s.pairs,
                s.accurate,
                s.margin_sum,
                s.reward_sum,
                s.rewards,
            ],
        )?;
        let (min, max) = self.all_min_max(s.min, s.max)?;
        let sums = RewardSums {
            pairs: v[2],
            accurate: v[3],
            margin_sum: v[4],
            reward_sum: v[5],
            rewards: v[6],
            min,
            max,
        };
        self.finish_step(
            lr,
            StepResult {
                loss: v[0],
                tokens: v[1] as i64,
                grad_norm: 0.0,
                metrics: sums.metrics(),
            },
        )
    }

    /// The smallest `min` and largest `max` over the ranks (a sum of one-hot slots:
    /// the collectives only sum).
    fn all_min_max(&mut self, min: f64, max: f64) -> Result<(f64, f64)> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let mut slots = vec![0f64; 2 * world];
        slots[2 * rank] = if min.is_finite() { min } else { f64::MAX };
        slots[2 * rank + 1] = if max.is_finite() { max } else { f64::MIN };
        let all = all_reduce_f64(self.comm.as_mut(), &slots)?;
        let mins = all.iter().step_by(2).copied().fold(f64::INFINITY, f64::min);
        let maxs = all
            .iter()
            .skip(1)
            .step_by(2)
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        Ok((mins, maxs))
    }
}
