//! One optimizer step: forward and backward over this rank's micro-batches, gradient
//! reduction, clipping, AdamW. Losses are normalised by the token (or pair) counts
//! of the whole step summed over all ranks, so the reduced gradient equals the
//! single-process gradient of the combined batch.

use std::cell::Cell;
use std::time::Instant;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::backprop::{BodyPass, Stage};
use super::head;
use super::reference::Reference;
use crate::data::{Batch, PreferenceBatch, RewardBatch};
use crate::dist::{all_reduce_f64, broadcast_params, Collective, Single};
use crate::error::Result;
use crate::loss::{DpoParams, DpoSums, OrpoSums, RewardSums};
use crate::model::{AttentionLayout, ModelConfig, Transformer};
use crate::optim::{AdamWConfig, Optimizer, Reduction};

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
    /// Reduce gradient buckets as the last micro-batch's backward pass finishes them,
    /// and all-gather ZeRO-1 buckets beside the next bucket's update
    /// (`distributed.overlap`; see `optimizer`).
    pub overlap: bool,
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
    /// Gradient reduction and the step's count/loss all-reduces (with ZeRO-1 the
    /// reduce-scatter and all-gather too).
    pub collectives: Cell<f64>,
    /// Synchronise this CUDA device at every phase boundary, so that each phase's time
    /// is the device's and not the time to enqueue its kernels (`janus bench-train
    /// --sync-phases`; the synchronisations cost the overlap of host and device).
    pub sync_device: Option<Device>,
}

impl PhaseTimes {
    fn sync(&self) {
        if let Some(Device::Cuda(i)) = self.sync_device {
            tch::Cuda::synchronize(i as i64);
        }
    }

    /// The start of a phase.
    fn now(&self) -> Instant {
        self.sync();
        Instant::now()
    }

    /// The end of a phase that started `since`.
    fn add(&self, cell: &Cell<f64>, since: Instant) {
        self.sync();
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
    /// This rank's real tokens and the sum of their sequences' squared lengths (for
    /// MFU's attention term, `metrics::ModelFlops`).
    pub attention: (i64, i64),
}

impl StepResult {
    /// With this rank's `(tokens, attention_squares)` of each micro-batch.
    pub fn with_attention(mut self, batches: impl Iterator<Item = (i64, i64)>) -> Self {
        self.attention = batches.fold((0, 0), |(t, q), (bt, bq)| (t + bt, q + bq));
        self
    }
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
            overlap: false,
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

    /// Time the phases (and the optimizer's collectives) on CUDA device `device` by
    /// synchronising it at their boundaries (`PhaseTimes::sync_device`).
    pub fn sync_phases(&mut self, device: Device) {
        self.phases.sync_device = Some(device).filter(|d| d.is_cuda());
        self.opt.sync_device = self.phases.sync_device;
    }

    fn finish_step(&mut self, lr: f64, red: Reduction, mut r: StepResult) -> Result<StepResult> {
        let t = self.phases.now();
        r.grad_norm = self
            .opt
            .step_reduced(self.comm.as_mut(), red, lr, self.max_grad_norm)?;
        self.opt.zero_grad();
        self.phases.sync();
        let reduce = self.opt.take_reduce_seconds();
        let p = &self.phases;
        p.optimizer
            .set(p.optimizer.get() + t.elapsed().as_secs_f64() - reduce);
        p.collectives.set(p.collectives.get() + reduce);
        Ok(r)
    }

    /// What the passes of one micro-batch borrow (the model, not the communicator or
    /// the optimizer that the overlapped reduction uses meanwhile).
    fn passes(&self, staged: bool) -> Passes<'_> {
        Passes {
            model: &self.model,
            checkpointing: self.checkpointing,
            phases: &self.phases,
            staged,
        }
    }

    /// Run `pass` over the micro-batches. With `overlap` (and other ranks), the last
    /// one's backward pass starts each gradient bucket as it finishes its parameters,
    /// and whatever it did not start (a rank without micro-batches: all) is started
    /// after it, before any other collective, so that every rank issues the buckets in
    /// the same order. Returns each pass's result and the step's reduction.
    fn backward_passes<B, T>(
        &mut self,
        micro: &[B],
        mut pass: impl FnMut(&Passes, &B, &mut dyn FnMut(Stage)) -> T,
    ) -> Result<(Vec<T>, Reduction)> {
        let overlap = self.overlap && !self.comm.is_noop();
        let layers = self.model.num_layers();
        let stage_of = |name: &str| Stage::of_parameter(name, layers);
        let mut red = self
            .opt
            .reduction(self.reduce_kind, self.bucket_bytes, &stage_of, overlap);
        let Trainer {
            model,
            opt,
            comm,
            phases,
            checkpointing,
            ..
        } = self;
        let passes = Passes {
            model,
            checkpointing: *checkpointing,
            phases,
            staged: overlap,
        };
        let backward_before = phases.backward.get();
        let mut failed = None;
        let mut out = Vec::with_capacity(micro.len());
        for (i, b) in micro.iter().enumerate() {
            let last = overlap && i + 1 == micro.len();
            let mut done = |stage: Stage| {
                if last && failed.is_none() {
                    if let Err(e) = opt.advance(&mut red, comm.as_mut(), stage.index(layers)) {
                        failed = Some(e);
                    }
                }
            };
            out.push(pass(&passes, b, &mut done));
        }
        // The buckets were started inside the backward phase where it is timed (SFT's
        // passes): that time is the collectives', not the backward pass's
        // (finish_step takes the rest of the reduction out of the optimizer's).
        let during = opt.take_reduce_seconds();
        let grown = phases.backward.get() - backward_before;
        phases
            .backward
            .set(backward_before + grown - during.min(grown));
        if let Some(e) = failed {
            return Err(e);
        }
        if overlap {
            opt.advance(&mut red, comm.as_mut(), usize::MAX)?;
        }
        let after = opt.take_reduce_seconds();
        phases
            .collectives
            .set(phases.collectives.get() + during + after);
        Ok((out, red))
    }

    /// SFT step over this rank's micro-batches (possibly none).
    pub fn sft_step(&mut self, micro: &[Batch], lr: f64) -> Result<StepResult> {
        let local = micro.iter().map(|b| b.loss_tokens).sum::<i64>() as f64;
        let t = self.phases.now();
        let step_tokens = all_reduce_f64(self.comm.as_mut(), &[local])?[0] as i64;
        self.phases.add(&self.phases.collectives, t);
        let (losses, red) =
            self.backward_passes(micro, |p, b, done| p.sft(b, step_tokens, done))?;
        // The micro-batches' shares, read from the device once, summed in order.
        let shares: Vec<f64> = if losses.is_empty() {
            vec![]
        } else {
            Vec::try_from(Tensor::stack(&losses, 0).to_device(Device::Cpu)).expect("f64 losses")
        };
        let loss = shares.iter().fold(0.0, |a, l| a + l);
        let tokens: i64 = micro.iter().map(|b| b.tokens).sum();
        let t = self.phases.now();
        let sums = all_reduce_f64(self.comm.as_mut(), &[loss, tokens as f64])?;
        self.phases.add(&self.phases.collectives, t);
        self.finish_step(
            lr,
            red,
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
        self.passes(false)
            .sft(b, step_tokens, &mut |_| {})
            .double_value(&[])
    }

    /// Forward and backward of one micro-batch of pairs; its share of the ORPO loss.
    pub fn orpo_backward(
        &self,
        b: &PreferenceBatch,
        lambda: f64,
        step_nll_tokens: i64,
        step_pairs: i64,
    ) -> (f64, OrpoSums) {
        self.passes(false)
            .orpo(b, lambda, step_nll_tokens, step_pairs, &mut |_| {})
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
        let (outs, red) = self.backward_passes(micro, |p, b, done| {
            p.orpo(b, lambda, nll_tokens, pairs, done)
        })?;
        let (mut loss, mut tokens) = (0.0, 0i64);
        let mut sums = OrpoSums::default();
        for (b, (l, s)) in micro.iter().zip(&outs) {
            loss += l;
            tokens += b.tokens;
            sums.add(s);
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
            red,
            StepResult {
                loss: v[0],
                tokens: v[1] as i64,
                grad_norm: 0.0,
                metrics: orpo.metrics(lambda),
                ..Default::default()
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
        self.passes(false)
            .dpo(b, ref_logps, params, step_pairs, &mut |_| {})
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
        let (outs, red) = self.backward_passes(micro, |p, b, done| {
            let refs = reference.logps(b);
            p.dpo(b, &refs, params, pairs, done)
        })?;
        let (mut loss, mut tokens) = (0.0, 0i64);
        let mut sums = DpoSums::default();
        for (b, (l, s)) in micro.iter().zip(&outs) {
            loss += l;
            tokens += b.tokens;
            sums.add(s);
        }
        let mut v = vec![loss, tokens as f64];
        v.extend(sums.to_vec());
        let v = all_reduce_f64(self.comm.as_mut(), &v)?;
        let sums = DpoSums::from_slice(&v[2..]);
        self.finish_step(
            lr,
            red,
            StepResult {
                loss: v[0],
                tokens: v[1] as i64,
                grad_norm: 0.0,
                metrics: sums.metrics(),
                ..Default::default()
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
        self.passes(false)
            .reward(b, center, step_pairs, &mut |_| {})
    }

    /// Reward-model step over this rank's micro-batches of pairs (possibly none).
    pub fn reward_step(
        &mut self,
        micro: &[RewardBatch],
        center: Option<f64>,
        lr: f64,
    ) -> Result<StepResult> {
        let pairs = self.step_pairs(micro.iter().map(|b| b.pairs).sum())?;
        let (outs, red) =
            self.backward_passes(micro, |p, b, done| p.reward(b, center, pairs, done))?;
        let (mut loss, mut tokens) = (0.0, 0i64);
        let mut s = RewardSums::default();
        for (b, (l, part)) in micro.iter().zip(&outs) {
            loss += l;
            tokens += b.tokens;
            s.add(part);
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
            red,
            StepResult {
                loss: v[0],
                tokens: v[1] as i64,
                grad_norm: 0.0,
                metrics: sums.metrics(),
                ..Default::default()
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

/// The forward and backward passes of one micro-batch (see `Trainer::passes`): the
/// body, the method's head, and the body's backward pass, which tells `done` each stage
/// it finished (staged: layer by layer, for the overlapped reduction).
pub(crate) struct Passes<'a> {
    model: &'a Transformer,
    checkpointing: bool,
    phases: &'a PhaseTimes,
    staged: bool,
}

impl Passes<'_> {
    fn body<'l>(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        layout: &'l AttentionLayout,
    ) -> BodyPass<'l> {
        BodyPass::forward_staged(
            self.model,
            ids,
            positions,
            layout,
            self.checkpointing,
            self.staged,
        )
    }

    /// SFT: the share of the loss, an f64 scalar on the device.
    fn sft(&self, b: &Batch, step_tokens: i64, done: &mut dyn FnMut(Stage)) -> Tensor {
        let p = self.phases;
        let t = p.now();
        let body = self.body(&b.input_ids, &b.positions, &b.layout);
        p.add(&p.forward, t);
        let t = p.now();
        let loss = head::sft(self.model, &body.hidden, &b.targets, step_tokens);
        p.add(&p.head, t);
        let t = p.now();
        body.backward_staged(self.model, done);
        p.add(&p.backward, t);
        loss
    }

    fn orpo(
        &self,
        b: &PreferenceBatch,
        lambda: f64,
        step_nll_tokens: i64,
        step_pairs: i64,
        done: &mut dyn FnMut(Stage),
    ) -> (f64, OrpoSums) {
        let causal = AttentionLayout::Causal;
        let body = self.body(&b.input_ids, &b.positions, &causal);
        let out = head::orpo(
            self.model,
            &body.hidden,
            b,
            lambda,
            step_nll_tokens,
            step_pairs,
        );
        body.backward_staged(self.model, done);
        out
    }

    fn dpo(
        &self,
        b: &PreferenceBatch,
        ref_logps: &Tensor,
        params: &DpoParams,
        step_pairs: i64,
        done: &mut dyn FnMut(Stage),
    ) -> (f64, DpoSums) {
        let causal = AttentionLayout::Causal;
        let body = self.body(&b.input_ids, &b.positions, &causal);
        let out = head::dpo(self.model, &body.hidden, b, ref_logps, params, step_pairs);
        body.backward_staged(self.model, done);
        out
    }

    fn reward(
        &self,
        b: &RewardBatch,
        center: Option<f64>,
        step_pairs: i64,
        done: &mut dyn FnMut(Stage),
    ) -> (f64, RewardSums) {
        let causal = AttentionLayout::Causal;
        let body = self.body(&b.input_ids, &b.positions, &causal);
        let out = head::reward(self.model, &body.hidden, b, center, step_pairs);
        body.backward_staged(self.model, done);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::data::Example;
    use crate::dist::Op;

    /// Rank 0 of two whose peer contributes zeros: every collective is the identity.
    /// For each gradient bucket (fp32; the step's counts are f64) it notes whether it
    /// was started (`Collective::start`) and whether the embedding, the last parameter
    /// the backward pass reaches, had its gradient by then.
    struct Recorder {
        embedding: Tensor,
        log: Log,
    }

    /// Per gradient bucket: (started, the embedding's gradient there).
    type Log = Arc<Mutex<Vec<(bool, bool)>>>;

    impl Recorder {
        fn note(&self, started: bool, t: &Tensor) {
            if t.kind() == Kind::Float {
                let g = self.embedding.grad();
                let ready = g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0;
                self.log.lock().unwrap().push((started, ready));
            }
        }
    }

    impl Collective for Recorder {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
            self.note(false, t);
            Ok(())
        }
        fn broadcast(&mut self, _: &mut Tensor, _: usize) -> Result<()> {
            Ok(())
        }
        fn reduce_scatter_sum(&mut self, t: &mut Tensor) -> Result<()> {
            self.note(false, t);
            Ok(())
        }
        fn all_gather(&mut self, _: &mut Tensor) -> Result<()> {
            Ok(())
        }
        fn start(&mut self, _: Op, t: &Tensor) -> Result<()> {
            self.note(true, t);
            Ok(())
        }
    }

    fn trainer(overlap: bool, checkpointing: bool) -> (Trainer, Log) {
        tch::manual_seed(7);
        let cfg = ModelConfig::small("mistral", 512, 64, 136, 2, 4, 2);
        let adam = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut t = Trainer::new(&cfg, Kind::Float, Device::Cpu, adam, 1.0);
        // About 150 kB a layer: several buckets per layer.
        t.bucket_bytes = 64 << 10;
        t.overlap = overlap;
        t.checkpointing = checkpointing;
        let log = Arc::new(Mutex::new(Vec::new()));
        let embedding = t.vs.variables()["model.embed_tokens.weight"].shallow_clone();
        t.set_collective(Box::new(Recorder {
            embedding,
            log: log.clone(),
        }));
        (t, log)
    }

    fn batches(n: usize) -> Vec<Batch> {
        (0..n)
            .map(|i| {
                let examples: Vec<Example> = [9usize, 14, 6]
                    .iter()
                    .map(|&len| Example {
                        tokens: (0..len as i64)
                            .map(|j| (j * 37 + i as i64 * 11) % 500 + 3)
                            .collect(),
                        prompt_len: 2,
                    })
                    .collect();
                let refs: Vec<&Example> = examples.iter().collect();
                Batch::unpacked(&refs, 0, Device::Cpu)
            })
            .collect()
    }

    #[test]
    fn overlap_starts_gradient_buckets_before_the_backward_pass_ends() {
        for checkpointing in [false, true] {
            let micro = batches(1);
            let (mut plain, plain_log) = trainer(false, checkpointing);
            plain.sft_step(&micro, 1e-3).unwrap();
            let log = plain_log.lock().unwrap().clone();
            assert!(log.len() > 4, "{log:?}");
            assert!(log.iter().all(|&(started, ready)| !started && ready));

            let (mut overlapped, log) = trainer(true, checkpointing);
            overlapped.sft_step(&micro, 1e-3).unwrap();
            let log = log.lock().unwrap().clone();
            // The same buckets, all started, the first ones (the head's, the last
            // layer's) before the backward pass reached the embedding.
            assert_eq!(log.len(), plain_log.lock().unwrap().len());
            assert!(log.iter().all(|&(started, _)| started), "{log:?}");
            let early = log.iter().filter(|&&(_, ready)| !ready).count();
            assert!(early >= log.len() / 2, "ckpt {checkpointing}: {log:?}");
            assert!(log.last().unwrap().1, "the embedding's bucket comes last");
        }
    }

    #[test]
    fn overlapped_steps_take_the_plain_steps_bit_for_bit() {
        for checkpointing in [false, true] {
            let micro = batches(2);
            let (mut plain, _) = trainer(false, checkpointing);
            let (mut overlapped, _) = trainer(true, checkpointing);
            for step in 0..3 {
                let a = plain.sft_step(&micro, 1e-3).unwrap();
                let b = overlapped.sft_step(&micro, 1e-3).unwrap();
                assert_eq!(a.loss, b.loss, "step {step}");
                assert_eq!(a.grad_norm, b.grad_norm, "step {step}");
                // The buckets started inside the backward pass count as collectives.
                for (phase, secs) in overlapped.phases.take() {
                    assert!(secs >= 0.0, "step {step}: {phase} took {secs} s");
                }
            }
            let (a, b) = (plain.vs.variables(), overlapped.vs.variables());
            for (name, w) in &a {
                assert!(w.equal(&b[name]), "ckpt {checkpointing}: {name} differs");
            }
        }
    }
}
