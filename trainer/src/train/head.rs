//! The LM head and the losses, run only on the positions that take part in a loss and
//! in chunks of `LOSS_CHUNK_TOKENS`, so full `[tokens, vocab]` logits (and their
//! softmax and gradient) are never alive at once. Both leave the gradient of the loss
//! on the detached hidden states (for `BodyPass::backward`) and on the head's weight.

use tch::{Kind, Reduction, Tensor};

use crate::data::{PreferenceBatch, IGNORE};
use crate::loss::{orpo_objective, sft_loss, OrpoSums};
use crate::model::Transformer;

/// Positions per LM-head + cross-entropy chunk.
pub const LOSS_CHUNK_TOKENS: usize = 1024;

/// Per-position log-probability of `targets` under the head applied to `rows` of
/// `hidden` (flattened `[n, h]`), fp32, `[len(rows)]`.
fn token_logp(model: &Transformer, hidden: &Tensor, rows: &Tensor, targets: &Tensor) -> Tensor {
    let logits = model.lm_head(&hidden.index_select(0, rows));
    -logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
        targets,
        None,
        Reduction::None,
        IGNORE,
        0.0,
    )
}

/// Chunks of `positions` (a 1-d index tensor).
fn chunks(positions: &Tensor) -> impl Iterator<Item = Tensor> + '_ {
    let n = positions.size()[0];
    (0..n).step_by(LOSS_CHUNK_TOKENS).map(move |start| {
        positions.narrow(0, start, LOSS_CHUNK_TOKENS.min((n - start) as usize) as i64)
    })
}

/// SFT: cross-entropy of the response tokens, divided by the response tokens of the
/// whole step; returns this micro-batch's share of the loss.
pub fn sft(model: &Transformer, hidden: &Tensor, targets: &Tensor, step_tokens: i64) -> f64 {
    let h = *hidden.size().last().expect("rank 3");
    let flat = hidden.view([-1, h]);
    let targets = targets.view([-1]);
    let keep = targets.ne(IGNORE).nonzero().view([-1]);
    let mut loss = 0.0;
    for rows in chunks(&keep) {
        // Each chunk selects its own rows, so each backward has its own graph.
        let logits = model.lm_head(&flat.index_select(0, &rows));
        let part = sft_loss(
            &logits.unsqueeze(0),
            &targets.index_select(0, &rows).unsqueeze(0),
            step_tokens,
        );
        part.backward();
        loss += part.double_value(&[]);
    }
    loss
}

/// ORPO on a micro-batch of pairs. The loss is not a sum over tokens (it compares the
/// rows' mean log-probabilities), so it takes two passes over the chunks: the first
/// computes every needed token's log-probability without a graph; the objective and
/// its gradient with respect to those log-probabilities follow on the small
/// `[rows, t]` grid (the same `orpo_objective` as the full-logits reference); the
/// second pass recomputes each chunk with a graph and backpropagates those
/// coefficients.
pub fn orpo(
    model: &Transformer,
    hidden: &Tensor,
    batch: &PreferenceBatch,
    lambda: f64,
    step_nll_tokens: i64,
    step_pairs: i64,
) -> (f64, OrpoSums) {
    let (rows, t, h) = hidden.size3().expect("rank 3");
    let flat = hidden.view([-1, h]);
    let targets = batch.targets.view([-1]);
    let needed = (&batch.response_mask + &batch.nll_mask)
        .gt(0.0)
        .logical_and(&batch.targets.ne(IGNORE))
        .view([-1])
        .nonzero()
        .view([-1]);
    let values: Vec<Tensor> = tch::no_grad(|| {
        chunks(&needed)
            .map(|pos| token_logp(model, &flat, &pos, &targets.index_select(0, &pos)))
            .collect()
    });
    let device = hidden.device();
    let grid = Tensor::zeros([rows * t], (Kind::Float, device));
    let grid = if values.is_empty() {
        grid
    } else {
        grid.index_copy(0, &needed, &Tensor::cat(&values, 0))
    }
    .view([rows, t])
    .set_requires_grad(true);
    let (loss, sums) = orpo_objective(&grid, batch, lambda, step_nll_tokens, step_pairs);
    loss.backward();
    let coef = grid.grad().view([-1]).index_select(0, &needed);
    let mut start = 0;
    for pos in chunks(&needed) {
        let n = pos.size()[0];
        let lp = token_logp(model, &flat, &pos, &targets.index_select(0, &pos));
        (lp * coef.narrow(0, start, n)).sum(Kind::Float).backward();
        start += n;
    }
    (loss.double_value(&[]), sums)
}
