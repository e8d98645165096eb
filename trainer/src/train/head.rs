//! The LM head and the losses, run only on the positions that take part in a loss and
//! in chunks of `LOSS_CHUNK_TOKENS`, so full `[tokens, vocab]` logits (and their
//! softmax and gradient) are never alive at once. Each leaves the gradient of the loss
//! on the detached hidden states (for `BodyPass::backward`) and on the head's weight.

use std::cell::RefCell;

use tch::{Device, Kind, Tensor};

use crate::data::{PreferenceBatch, RewardBatch, IGNORE};
use crate::loss::{
    dpo_objective, orpo_objective, reward_objective, DpoParams, DpoSums, OrpoSums, RewardSums,
    LOSS_CHUNK_TOKENS,
};
use crate::model::Transformer;

/// A chunk's logits, `[LOSS_CHUNK_TOKENS, vocab]` in the model's dtype, and their fp32
/// copy when that dtype is not fp32, reused from chunk to chunk and step to step.
/// Why: at vocab 32k a chunk's logits are 131 MB, above glibc's mmap threshold, so a
/// fresh buffer per chunk is a fresh mapping whose every page the kernel zero-fills
/// on first touch and unmaps on drop: 11% of the head's time on CPU (`make bench-train`).
struct ChunkBuffers {
    raw: Tensor,
    fp32: Option<Tensor>,
}

thread_local! {
    /// CPU only: CUDA's caching allocator already reuses its blocks. Held for the
    /// thread's lifetime, as PyTorch's allocator would hold a cached block.
    static CHUNK_BUFFERS: RefCell<Option<ChunkBuffers>> = const { RefCell::new(None) };
}

/// The head applied to `x` (`[n, h]`, `n <= LOSS_CHUNK_TOKENS`): the fp32 logits to
/// work on in place, and the logits in the model's dtype (the same tensor when that is
/// fp32). On CPU both are views of this thread's `ChunkBuffers`, valid until the next
/// chunk, so a caller keeps nothing of them past its chunk but what it computes anew.
fn chunk_logits(x: &Tensor, w: &Tensor) -> (Tensor, Tensor) {
    let kind = x.kind();
    if x.device() != Device::Cpu {
        let raw = x.mm(&w.tr());
        return (raw.to_kind(Kind::Float), raw);
    }
    let (n, vocab) = (x.size()[0], w.size()[0]);
    CHUNK_BUFFERS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let fits = matches!(&*cell, Some(b) if b.raw.kind() == kind && b.raw.size()[1] == vocab);
        if !fits {
            let rows = LOSS_CHUNK_TOKENS as i64;
            let buffer = |k: Kind| Tensor::empty([rows, vocab], (k, Device::Cpu));
            *cell = Some(ChunkBuffers {
                raw: buffer(kind),
                fp32: (kind != Kind::Float).then(|| buffer(Kind::Float)),
            });
        }
        let buffers = cell.as_ref().expect("just filled");
        let raw = buffers.raw.narrow(0, 0, n);
        let _ = x.mm_out(&raw, &w.tr());
        let z = match &buffers.fp32 {
            Some(f) => {
                let mut z = f.narrow(0, 0, n);
                z.copy_(&raw);
                z
            }
            None => raw.shallow_clone(),
        };
        (z, raw)
    })
}

/// Turns the fp32 logits `z` (`[n, vocab]`) into `exp(z - max)` in place, the one
/// `exp` of a chunk; returns each row's cross-entropy against `tgt` (`[n, 1]`) and
/// the row sums of the exponentials (`[n, 1]`), which normalise `z` into the softmax.
fn exp_shifted(z: &mut Tensor, tgt: &Tensor) -> (Tensor, Tensor) {
    let max = z.amax([1], true);
    let _ = z.g_sub_(&max);
    let picked = z.gather(1, tgt, false);
    let _ = z.exp_();
    let sum = z.sum_dim_intlist(1, true, Kind::Float);
    (sum.log() - picked, sum)
}

/// Chunks of `positions` (a 1-d index tensor).
fn chunks(positions: &Tensor) -> impl Iterator<Item = Tensor> + '_ {
    let n = positions.size()[0];
    (0..n).step_by(LOSS_CHUNK_TOKENS).map(move |start| {
        positions.narrow(0, start, LOSS_CHUNK_TOKENS.min((n - start) as usize) as i64)
    })
}

/// SFT: cross-entropy of the response tokens, divided by the response tokens of the
/// whole step; returns this micro-batch's share of the loss, an f64 scalar on the
/// model's device (read once per step, not once per chunk).
pub fn sft(model: &Transformer, hidden: &Tensor, targets: &Tensor, step_tokens: i64) -> Tensor {
    let h = *hidden.size().last().expect("rank 3");
    let flat = hidden.view([-1, h]);
    let targets = targets.view([-1]);
    let keep = targets.ne(IGNORE).nonzero().view([-1]);
    let scale = 1.0 / step_tokens.max(1) as f64;
    let weight = Tensor::full([keep.size()[0]], scale, (Kind::Float, flat.device()));
    let nll = fused_ce_backward(model, &flat, hidden, &targets, &keep, &weight);
    nll * scale
}

/// The head and cross-entropy of `positions` in chunks, with the backward written by
/// hand instead of through autograd: per chunk one matmul for the logits, one `exp`
/// (the softmax is written over the logits in place and becomes their gradient), and
/// the two matmuls of the head's backward, the weight's straight into its `.grad`.
/// Autograd would keep the logits, the log-softmax and its gradient alive at once and
/// run `exp` twice. `weight[i]` is the loss's derivative with respect to position
/// `i`'s cross-entropy (position `i` of `positions`); the gradient with respect to the
/// flattened hidden states is accumulated into `hidden`'s `.grad`. Returns the
/// unweighted sum of the cross-entropies as an f64 scalar on the device: each chunk's
/// fp32 sum added in f64, as a host sum of them would be, without draining the
/// device's queue once per chunk to read it.
fn fused_ce_backward(
    model: &Transformer,
    flat: &Tensor,
    hidden: &Tensor,
    targets: &Tensor,
    positions: &Tensor,
    weight: &Tensor,
) -> Tensor {
    let w = model.lm_head_weight();
    let kind = flat.kind();
    let mut nll = Tensor::zeros([], (Kind::Double, flat.device()));
    let (grad_hidden, grad_w) = tch::no_grad(|| {
        let mut grad_hidden = flat.zeros_like();
        // The weight's gradient exists from the trainer's first touch of every
        // parameter; a model without it (a frozen head) gets a local buffer seeded below.
        let existing = w.grad();
        let (mut grad_w, local) = if existing.defined() {
            (existing, false)
        } else {
            (w.zeros_like(), true)
        };
        let mut start = 0;
        for pos in chunks(positions) {
            let n = pos.size()[0];
            let x = flat.index_select(0, &pos);
            let tgt = targets.index_select(0, &pos).unsqueeze(1);
            let (mut z, mut raw) = chunk_logits(&x, w);
            let (ce, sum) = exp_shifted(&mut z, &tgt);
            let _ = nll.g_add_(&ce.sum(Kind::Float).to_kind(Kind::Double));
            // d ce_i / d z_ij = softmax_ij - [j == target_i], times the row's weight.
            let rw = weight.narrow(0, start, n).unsqueeze(1);
            let _ = z.g_mul_(&(&rw / sum));
            let _ = z.scatter_add_(1, &tgt, &rw.neg());
            // The gradient in the model's dtype goes where its logits were.
            let g = if kind == Kind::Float {
                z
            } else {
                raw.copy_(&z);
                raw
            };
            let _ = grad_hidden.index_copy_(0, &pos, &g.mm(w));
            let _ = grad_w.addmm_(&g.tr(), &x);
            start += n;
        }
        (grad_hidden, local.then_some(grad_w))
    });
    // d/dx of sum(x * g) is g: hands the gradients to the leaves' `.grad`.
    let mut seed = (hidden * grad_hidden.view_as(hidden)).sum(Kind::Float);
    if let Some(g) = grad_w {
        if w.requires_grad() {
            seed += (w * g).sum(Kind::Float);
        }
    }
    seed.backward();
    nll
}

/// The positions of a pair batch whose log-probabilities a loss reads: response
/// targets, and the chosen rows' NLL targets.
fn needed_positions(batch: &PreferenceBatch) -> Tensor {
    (&batch.response_mask + &batch.nll_mask)
        .gt(0.0)
        .logical_and(&batch.targets.ne(IGNORE))
        .view([-1])
        .nonzero()
        .view([-1])
}

/// First pass: the needed tokens' log-probabilities (and each position's mean logit,
/// for metrics) on `[rows, t]` grids, without a graph.
fn logp_grids(
    model: &Transformer,
    flat: &Tensor,
    targets: &Tensor,
    needed: &Tensor,
    shape: [i64; 2],
) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let w = model.lm_head_weight();
        let (mut lps, mut means) = (Vec::new(), Vec::new());
        for pos in chunks(needed) {
            let (mut z, _) = chunk_logits(&flat.index_select(0, &pos), w);
            means.push(z.mean_dim(-1, false, Kind::Float));
            let tgt = targets.index_select(0, &pos).unsqueeze(1);
            let (ce, _) = exp_shifted(&mut z, &tgt);
            lps.push(-ce.view([-1]));
        }
        let device = flat.device();
        let grid = |parts: Vec<Tensor>| {
            let g = Tensor::zeros([shape[0] * shape[1]], (Kind::Float, device));
            if parts.is_empty() {
                g
            } else {
                g.index_copy(0, needed, &Tensor::cat(&parts, 0))
            }
            .view(shape)
        };
        (grid(lps), grid(means))
    })
}

/// Second pass: backpropagate `coef`, the loss's gradient with respect to each
/// needed token's log-probability (the negated cross-entropy), through the head.
fn backprop_coefficients(
    model: &Transformer,
    flat: &Tensor,
    hidden: &Tensor,
    targets: &Tensor,
    needed: &Tensor,
    coef: &Tensor,
) {
    // The cross-entropies were summed by the first pass.
    let _ = fused_ce_backward(model, flat, hidden, targets, needed, &coef.neg());
}

/// A loss over a pair batch that is not a sum over tokens (it compares the rows'
/// log-probabilities) in two passes over the chunks: the first computes every needed
/// token's log-probability without a graph; `objective` and its gradient with respect
/// to those log-probabilities follow on the small `[rows, t]` grid; the second pass
/// recomputes each chunk and backpropagates those coefficients (`fused_ce_backward`).
fn two_pass<S>(
    model: &Transformer,
    hidden: &Tensor,
    batch: &PreferenceBatch,
    objective: impl FnOnce(&Tensor, &Tensor) -> (Tensor, S),
) -> (f64, S) {
    let (rows, t, h) = hidden.size3().expect("rank 3");
    let flat = hidden.view([-1, h]);
    let targets = batch.targets.view([-1]);
    let needed = needed_positions(batch);
    let (grid, means) = logp_grids(model, &flat, &targets, &needed, [rows, t]);
    let grid = grid.set_requires_grad(true);
    let (loss, sums) = objective(&grid, &means);
    loss.backward();
    let coef = grid.grad().view([-1]).index_select(0, &needed);
    backprop_coefficients(model, &flat, hidden, &targets, &needed, &coef);
    (loss.double_value(&[]), sums)
}

/// ORPO on a micro-batch of pairs (the same `orpo_objective` as the full-logits
/// reference `loss::orpo_loss`).
pub fn orpo(
    model: &Transformer,
    hidden: &Tensor,
    batch: &PreferenceBatch,
    lambda: f64,
    step_nll_tokens: i64,
    step_pairs: i64,
) -> (f64, OrpoSums) {
    two_pass(model, hidden, batch, |grid, _| {
        orpo_objective(grid, batch, lambda, step_nll_tokens, step_pairs)
    })
}

/// DPO on a micro-batch of pairs, given the reference's summed log-probabilities
/// `[2n]` (chosen rows first).
pub fn dpo(
    model: &Transformer,
    hidden: &Tensor,
    batch: &PreferenceBatch,
    ref_logps: &Tensor,
    params: &DpoParams,
    step_pairs: i64,
) -> (f64, DpoSums) {
    two_pass(model, hidden, batch, |grid, means| {
        dpo_objective(grid, means, ref_logps, batch, params, step_pairs)
    })
}

/// Each row's log-probability of its response, summed over the response tokens,
/// `[rows]` fp32, without a graph: the reference side of DPO.
pub fn sequence_logps(model: &Transformer, hidden: &Tensor, batch: &PreferenceBatch) -> Tensor {
    let (rows, t, h) = hidden.size3().expect("rank 3");
    let flat = hidden.view([-1, h]);
    let targets = batch.targets.view([-1]);
    let needed = needed_positions(batch);
    let (grid, _) = logp_grids(model, &flat, &targets, &needed, [rows, t]);
    (grid * &batch.response_mask).sum_dim_intlist(1, false, Kind::Float)
}

/// The reward model's loss on a micro-batch of pairs: the value head on each row's
/// last token, the Bradley-Terry loss (`loss::reward_objective`).
pub fn reward(
    model: &Transformer,
    hidden: &Tensor,
    batch: &RewardBatch,
    center: Option<f64>,
    step_pairs: i64,
) -> (f64, RewardSums) {
    let h = *hidden.size().last().expect("rank 3");
    let last = hidden.view([-1, h]).index_select(0, &batch.last);
    let rewards = model.score(&last).to_kind(Kind::Float).view([-1]);
    let (loss, sums) = reward_objective(&rewards, &batch.margins, center, step_pairs);
    loss.backward();
    (loss.double_value(&[]), sums)
}

/// Rewards of a batch's rows (chosen first), without a graph.
pub fn rewards(model: &Transformer, hidden: &Tensor, batch: &RewardBatch) -> Tensor {
    let h = *hidden.size().last().expect("rank 3");
    tch::no_grad(|| {
        let last = hidden.view([-1, h]).index_select(0, &batch.last);
        model.score(&last).to_kind(Kind::Float).view([-1])
    })
}
