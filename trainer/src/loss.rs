//! SFT and ORPO losses (docs/method.md).
//!
//! Both are written as one micro-batch's share of the optimizer step's loss, so that
//! summing the shares over micro-batches (and, later, ranks) gives the loss of the
//! whole step: token sums are divided by the step's token count, pair sums by the
//! step's pair count.

use tch::{Kind, Reduction, Tensor};

use crate::config::DpoLoss;
use crate::data::{PreferenceBatch, IGNORE};

/// Positions per LM-head + cross-entropy chunk of the training heads (`train::head`),
/// and what the memory plan counts for the loss. Measured, not habit: a chunk streams
/// the head's weight three times and its logits about ten, and at vocab 32k on CPU
/// (fp32, 2 threads) the head took 1.91 / 1.69 / 1.65 / 1.68 s per step at 256 / 512 /
/// 1024 / 2048 positions.
pub const LOSS_CHUNK_TOKENS: usize = 1024;

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

/// DPO's settings as the loss uses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoParams {
    pub beta: f64,
    pub loss_type: DpoLoss,
    pub label_smoothing: f64,
}

/// Sums over one micro-batch, for TRL's DPO metric names once the step is complete.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct DpoSums {
    pub pairs: f64,
    /// beta * (policy - reference) log-probabilities, summed over pairs.
    pub chosen_reward_sum: f64,
    pub rejected_reward_sum: f64,
    pub accurate: f64,
    /// Summed (over response tokens) policy log-probabilities, summed over pairs.
    pub chosen_logp_sum: f64,
    pub rejected_logp_sum: f64,
    /// Mean-over-vocabulary logits summed over the response tokens, and those tokens.
    pub chosen_logits_sum: f64,
    pub chosen_tokens: f64,
    pub rejected_logits_sum: f64,
    pub rejected_tokens: f64,
}

impl DpoSums {
    pub fn add(&mut self, o: &DpoSums) {
        self.pairs += o.pairs;
        self.chosen_reward_sum += o.chosen_reward_sum;
        self.rejected_reward_sum += o.rejected_reward_sum;
        self.accurate += o.accurate;
        self.chosen_logp_sum += o.chosen_logp_sum;
        self.rejected_logp_sum += o.rejected_logp_sum;
        self.chosen_logits_sum += o.chosen_logits_sum;
        self.chosen_tokens += o.chosen_tokens;
        self.rejected_logits_sum += o.rejected_logits_sum;
        self.rejected_tokens += o.rejected_tokens;
    }

    pub fn to_vec(&self) -> Vec<f64> {
        vec![
            self.pairs,
            self.chosen_reward_sum,
            self.rejected_reward_sum,
            self.accurate,
            self.chosen_logp_sum,
            self.rejected_logp_sum,
            self.chosen_logits_sum,
            self.chosen_tokens,
            self.rejected_logits_sum,
            self.rejected_tokens,
        ]
    }

    pub fn from_slice(v: &[f64]) -> Self {
        DpoSums {
            pairs: v[0],
            chosen_reward_sum: v[1],
            rejected_reward_sum: v[2],
            accurate: v[3],
            chosen_logp_sum: v[4],
            rejected_logp_sum: v[5],
            chosen_logits_sum: v[6],
            chosen_tokens: v[7],
            rejected_logits_sum: v[8],
            rejected_tokens: v[9],
        }
    }

    /// Metrics under TRL's DPOTrainer names.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let p = self.pairs.max(1.0);
        let (c, r) = (self.chosen_reward_sum / p, self.rejected_reward_sum / p);
        vec![
            ("rewards/chosen", c),
            ("rewards/rejected", r),
            ("rewards/margins", c - r),
            ("rewards/accuracies", self.accurate / p),
            ("logps/chosen", self.chosen_logp_sum / p),
            ("logps/rejected", self.rejected_logp_sum / p),
            (
                "logits/chosen",
                self.chosen_logits_sum / self.chosen_tokens.max(1.0),
            ),
            (
                "logits/rejected",
                self.rejected_logits_sum / self.rejected_tokens.max(1.0),
            ),
        ]
    }
}

/// DPO for one micro-batch of `n` pairs: from the policy's per-token log-probabilities
/// `[2n, t]` (read where `batch.response_mask` is set), the reference's summed
/// log-probabilities `[2n]` and the per-token mean-over-vocabulary logits `[2n, t]`
/// (metrics only), the loss summed over the pairs and divided by the step's pairs, as
/// TRL's `DPOTrainer` defines each loss type on token-summed log-probabilities.
pub fn dpo_objective(
    token_logp: &Tensor,
    mean_logits: &Tensor,
    ref_logps: &Tensor,
    batch: &PreferenceBatch,
    p: &DpoParams,
    step_pairs: i64,
) -> (Tensor, DpoSums) {
    let mask = &batch.response_mask;
    let logps = (token_logp * mask).sum_dim_intlist(1, false, Kind::Float);
    let n = batch.pairs;
    let ratios = &logps - ref_logps.to_kind(Kind::Float);
    let (cw, rw) = (ratios.narrow(0, 0, n), ratios.narrow(0, n, n));
    let delta = &cw - &rw;
    let (b, ls) = (p.beta, p.label_smoothing);
    let per_pair = match p.loss_type {
        DpoLoss::Sigmoid => {
            -(&delta * b).log_sigmoid() * (1.0 - ls) - (&delta * -b).log_sigmoid() * ls
        }
        DpoLoss::Hinge => (-(&delta * b) + 1.0).relu(),
        DpoLoss::Ipo => {
            let lens = mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
            let avg = &ratios / lens;
            let d = avg.narrow(0, 0, n) - avg.narrow(0, n, n);
            (d - 1.0 / (2.0 * b)).square()
        }
        DpoLoss::Robust => {
            ((&delta * b).log_sigmoid() * -(1.0 - ls) + (&delta * -b).log_sigmoid() * ls)
                / (1.0 - 2.0 * ls)
        }
    };
    let loss = per_pair.sum(Kind::Float) / step_pairs.max(1) as f64;
    let f = |x: &Tensor| x.double_value(&[]);
    let sums = tch::no_grad(|| {
        let logit_sums = (mean_logits * mask).sum_dim_intlist(1, false, Kind::Double);
        let tokens = mask.sum_dim_intlist(1, false, Kind::Double);
        DpoSums {
            pairs: n as f64,
            chosen_reward_sum: f(&(&cw * b).sum(Kind::Double)),
            rejected_reward_sum: f(&(&rw * b).sum(Kind::Double)),
            accurate: f(&cw.gt_tensor(&rw).sum(Kind::Double)),
            chosen_logp_sum: f(&logps.narrow(0, 0, n).sum(Kind::Double)),
            rejected_logp_sum: f(&logps.narrow(0, n, n).sum(Kind::Double)),
            chosen_logits_sum: f(&logit_sums.narrow(0, 0, n).sum(Kind::Double)),
            chosen_tokens: f(&tokens.narrow(0, 0, n).sum(Kind::Double)),
            rejected_logits_sum: f(&logit_sums.narrow(0, n, n).sum(Kind::Double)),
            rejected_tokens: f(&tokens.narrow(0, n, n).sum(Kind::Double)),
        }
    });
    (loss, sums)
}

/// Sums over one micro-batch, for the reward model's metrics (TRL's names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardSums {
    pub pairs: f64,
    pub accurate: f64,
    pub margin_sum: f64,
    pub reward_sum: f64,
    pub rewards: f64,
    pub min: f64,
    pub max: f64,
}

impl Default for RewardSums {
    fn default() -> Self {
        RewardSums {
            pairs: 0.0,
            accurate: 0.0,
            margin_sum: 0.0,
            reward_sum: 0.0,
            rewards: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl RewardSums {
    pub fn add(&mut self, o: &RewardSums) {
        self.pairs += o.pairs;
        self.accurate += o.accurate;
        self.margin_sum += o.margin_sum;
        self.reward_sum += o.reward_sum;
        self.rewards += o.rewards;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let p = self.pairs.max(1.0);
        vec![
            ("accuracy", self.accurate / p),
            ("margin", self.margin_sum / p),
            ("mean_reward", self.reward_sum / self.rewards.max(1.0)),
            ("min_reward", self.min),
            ("max_reward", self.max),
        ]
    }
}

/// The reward model's Bradley-Terry loss for one micro-batch: rewards `[2n]` (chosen
/// rows first), `-log sigmoid(r_chosen - r_rejected - margin)` and, with
/// `center`, TRL's `center * (r_chosen + r_rejected)^2`, summed over pairs and divided
/// by the step's pairs.
pub fn reward_objective(
    rewards: &Tensor,
    margins: &Tensor,
    center: Option<f64>,
    step_pairs: i64,
) -> (Tensor, RewardSums) {
    let n = margins.size()[0];
    let (c, r) = (rewards.narrow(0, 0, n), rewards.narrow(0, n, n));
    let mut per_pair = -(&c - &r - margins).log_sigmoid();
    if let Some(k) = center {
        per_pair += (&c + &r).square() * k;
    }
    let loss = per_pair.sum(Kind::Float) / step_pairs.max(1) as f64;
    let f = |x: &Tensor| x.double_value(&[]);
    let sums = tch::no_grad(|| RewardSums {
        pairs: n as f64,
        accurate: f(&c.gt_tensor(&r).sum(Kind::Double)),
        margin_sum: f(&(&c - &r).sum(Kind::Double)),
        reward_sum: f(&rewards.sum(Kind::Double)),
        rewards: 2.0 * n as f64,
        min: if n > 0 {
            f(&rewards.min())
        } else {
            f64::INFINITY
        },
        max: if n > 0 {
            f(&rewards.max())
        } else {
            f64::NEG_INFINITY
        },
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
