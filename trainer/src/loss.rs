//! SFT and ORPO losses (shared/JANUS.md).
//!
//! Both are written as one micro-batch's share of the optimizer step's loss, so that
//! summing the shares over micro-batches (and, later, ranks) gives the loss of the
//! whole step: token sums are divided by the step's token count, pair sums by the
//! step's pair count.

use tch::{Kind, Reduction, Tensor};

use crate::data::{PreferenceBatch, IGNORE};

/// Summed next-token cross-entropy of `logits` `[b, t, V]` against `targets` `[b, t]`
/// (IGNORE masked), computed in fp32.
pub fn token_ce_sum(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = *logits.size().last().expect("rank 3");
    logits
        .to_kind(Kind::Float)
        .view([-1, v])
        .cross_entropy_loss::<Tensor>(&targets.view([-1]), None, Reduction::Sum, IGNORE, 0.0)
}

/// SFT: response-token cross-entropy divided by the response tokens of the whole step.
pub fn sft_loss(logits: &Tensor, targets: &Tensor, step_loss_tokens: i64) -> Tensor {
    token_ce_sum(logits, targets) / step_loss_tokens.max(1) as f64
}

/// `log(1 - exp(x))` for `x < 0`, stable at both ends (Maechler 2012): `log(-expm1(x))`
/// near 0, `log1p(-exp(x))` far from it. `x` is clamped just below 0 so that a
/// probability of exactly 1 gives a large finite value instead of `-inf`.
pub fn log1mexp(x: &Tensor) -> Tensor {
    let x = x.clamp_max(-1e-7);
    let near = x.expm1().neg().log();
    let far = x.exp().neg().log1p();
    near.where_self(&x.gt(-std::f64::consts::LN_2), &far)
}

/// ORPO's log odds ratio of mean per-token log-probabilities `lw` (chosen) and `lr`
/// (rejected): `(lw - lr) - (log(1 - e^lw) - log(1 - e^lr))`.
pub fn log_odds(lw: &Tensor, lr: &Tensor) -> Tensor {
    (lw - lr) - (log1mexp(lw) - log1mexp(lr))
}

/// Sums over one micro-batch, for TRL-named metrics once the step is complete.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct OrpoSums {
    pub pairs: f64,
    pub nll_sum: f64,
    pub nll_tokens: f64,
    pub log_odds_ratio_sum: f64,
    pub log_odds_sum: f64,
    pub chosen_logp_sum: f64,
    pub rejected_logp_sum: f64,
    pub accurate: f64,
}

impl OrpoSums {
    pub fn add(&mut self, o: &OrpoSums) {
        self.pairs += o.pairs;
        self.nll_sum += o.nll_sum;
        self.nll_tokens += o.nll_tokens;
        self.log_odds_ratio_sum += o.log_odds_ratio_sum;
        self.log_odds_sum += o.log_odds_sum;
        self.chosen_logp_sum += o.chosen_logp_sum;
        self.rejected_logp_sum += o.rejected_logp_sum;
        self.accurate += o.accurate;
    }

    /// Metrics under TRL's ORPOTrainer names (`rewards/*` are lambda times the mean
    /// log-probabilities).
    pub fn metrics(&self, lambda: f64) -> Vec<(&'static str, f64)> {
        let p = self.pairs.max(1.0);
        let (c, r) = (self.chosen_logp_sum / p, self.rejected_logp_sum / p);
        vec![
            ("rewards/chosen", lambda * c),
            ("rewards/rejected", lambda * r),
            ("rewards/margins", lambda * (c - r)),
            ("rewards/accuracies", self.accurate / p),
            ("logps/chosen", c),
            ("logps/rejected", r),
            ("log_odds_ratio", self.log_odds_ratio_sum / p),
            ("log_odds_chosen", self.log_odds_sum / p),
            ("nll_loss", self.nll_sum / self.nll_tokens.max(1.0)),
        ]
    }
}

/// Log-probability of each target token, `[rows, t]` fp32 (0 where the target is
/// IGNORE), from logits `[rows, t, V]`.
pub fn token_logps(logits: &Tensor, targets: &Tensor) -> Tensor {
    let (rows, t, v) = logits.size3().expect("rank 3");
    -logits
        .to_kind(Kind::Float)
        .view([-1, v])
        .cross_entropy_loss::<Tensor>(&targets.view([-1]), None, Reduction::None, IGNORE, 0.0)
        .view([rows, t])
}

/// ORPO for one micro-batch: `NLL(chosen) - lambda * log sigmoid(log_odds)`, the NLL
/// summed over the chosen tokens in `batch.nll_mask` and divided by the step's NLL
/// tokens, the odds term summed over pairs and divided by the step's pairs.
pub fn orpo_loss(
    logits: &Tensor,
    batch: &PreferenceBatch,
    lambda: f64,
    step_nll_tokens: i64,
    step_pairs: i64,
) -> (Tensor, OrpoSums) {
    orpo_objective(
        &token_logps(logits, &batch.targets),
        batch,
        lambda,
        step_nll_tokens,
        step_pairs,
    )
}

/// The ORPO loss of `orpo_loss` from the per-token log-probabilities `[rows, t]`
/// (only the positions in the batch's masks are read).
pub fn orpo_objective(
    token_logp: &Tensor,
    batch: &PreferenceBatch,
    lambda: f64,
    step_nll_tokens: i64,
    step_pairs: i64,
) -> (Tensor, OrpoSums) {
    let mean_logp = (token_logp * &batch.response_mask).sum_dim_intlist(1, false, Kind::Float)
        / batch
            .response_mask
            .sum_dim_intlist(1, false, Kind::Float)
            .clamp_min(1.0);
    let n = batch.pairs;
    let (lw, lr) = (mean_logp.narrow(0, 0, n), mean_logp.narrow(0, n, n));
    let odds = log_odds(&lw, &lr);
    let ratio = odds.log_sigmoid();
    let nll_sum = -(token_logp * &batch.nll_mask).sum(Kind::Float);
    let loss = &nll_sum / step_nll_tokens.max(1) as f64
        - ratio.sum(Kind::Float) * (lambda / step_pairs.max(1) as f64);
    let f = |x: &Tensor| x.double_value(&[]);
    let sums = tch::no_grad(|| OrpoSums {
        pairs: n as f64,
        nll_sum: f(&nll_sum),
        nll_tokens: batch.nll_tokens as f64,
        log_odds_ratio_sum: f(&ratio.sum(Kind::Double)),
        log_odds_sum: f(&odds.sum(Kind::Double)),
        chosen_logp_sum: f(&lw.sum(Kind::Double)),
        rejected_logp_sum: f(&lr.sum(Kind::Double)),
        accurate: f(&lw.gt_tensor(&lr).sum(Kind::Double)),
    });
    (loss, sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log1mexp_is_accurate_at_both_ends() {
        let x = Tensor::from_slice(&[-1e-6f64, -0.5, -0.7, -1.0, -30.0, -800.0]);
        let got = Vec::<f64>::try_from(log1mexp(&x)).unwrap();
        for (xi, g) in [-1e-6f64, -0.5, -0.7, -1.0, -30.0, -800.0].iter().zip(got) {
            let want = (-xi.exp_m1()).ln();
            assert!(
                (g - want).abs() <= 1e-12 * want.abs().max(1.0),
                "x={xi}: {g} vs {want}"
            );
        }
    }

    #[test]
    fn equal_answers_give_log_sigmoid_zero() {
        let lw = Tensor::from_slice(&[-2.5f32, -0.1]);
        let ratio = log_odds(&lw, &lw).log_sigmoid();
        for r in Vec::<f32>::try_from(ratio).unwrap() {
            assert!((r + std::f32::consts::LN_2).abs() < 1e-6);
        }
    }
}
