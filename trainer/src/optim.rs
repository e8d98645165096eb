//! AdamW on plain tensors (so its state can be saved and restored exactly), global
//! gradient-norm clipping, and the cosine schedule with linear warmup.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Decoupled-weight-decay Adam (Loshchilov & Hutter), the update of
/// `torch.optim.AdamW`'s single-tensor path.
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Updates applied so far (bias correction uses it).
    pub step: u64,
}

impl AdamW {
    /// `params` in a fixed order (sorted by name) so saved state lines up.
    pub fn new(mut params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |ps: &[(String, Tensor)]| ps.iter().map(|(_, p)| p.zeros_like()).collect();
        Self {
            config,
            exp_avg: zeros(&params),
            exp_avg_sq: zeros(&params),
            params,
            step: 0,
        }
    }

    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|(_, p)| p)
    }

    /// One update with learning rate `lr` from the accumulated gradients.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias1;
        tch::no_grad(|| {
            for (((_, p), m), v) in self
                .params
                .iter_mut()
                .zip(&mut self.exp_avg)
                .zip(&mut self.exp_avg_sq)
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                if c.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = m.lerp_(&g, 1.0 - c.beta1);
                let _ = v.g_mul_scalar_(c.beta2);
                let _ = v.addcmul_(&g, &(&g * (1.0 - c.beta2)));
                if step_size == 0.0 {
                    // Warmup's first step: moments advance, weights stay (as torch).
                    continue;
                }
                // p -= step_size * m / (sqrt(v) / bias2_sqrt + eps), folded so that one
                // addcdiv does it: the denominator carries -1/step_size.
                let denom = v
                    .sqrt()
                    .g_mul_scalar_(-1.0 / (bias2_sqrt * step_size))
                    .g_sub_scalar_(c.eps / step_size);
                let _ = p.addcdiv_(m, &denom);
            }
        });
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// State tensors named `exp_avg.<param>` / `exp_avg_sq.<param>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (((name, _), m), v) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            out.push((format!("exp_avg.{name}"), m.shallow_clone()));
            out.push((format!("exp_avg_sq.{name}"), v.shallow_clone()));
        }
        out
    }

    /// Restore state saved by `state_tensors` (every parameter must be present).
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, step: u64) -> Result<()> {
        let mut map: HashMap<String, Tensor> = tensors.into_iter().collect();
        for (((name, _), m), v) in self
            .params
            .iter()
            .zip(&mut self.exp_avg)
            .zip(&mut self.exp_avg_sq)
        {
            for (prefix, dst) in [("exp_avg", &mut *m), ("exp_avg_sq", &mut *v)] {
                let key = format!("{prefix}.{name}");
                let src = map
                    .remove(&key)
                    .ok_or_else(|| Error::Checkpoint(format!("optimizer state lacks `{key}`")))?;
                if src.size() != dst.size() {
                    return Err(Error::Checkpoint(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        src.size(),
                        dst.size()
                    )));
                }
                tch::no_grad(|| dst.copy_(&src));
            }
        }
        if let Some(extra) = map.keys().next() {
            return Err(Error::Checkpoint(format!(
                "optimizer state has `{extra}`, which is not a parameter of this model"
            )));
        }
        self.step = step;
        Ok(())
    }
}

/// Global L2 norm of all gradients (computed in fp32); when above `max_norm > 0`,
/// scale them down to it. Returns the norm before clipping.
pub fn clip_grad_norm<'a>(params: impl Iterator<Item = &'a Tensor>, max_norm: f64) -> f64 {
    let grads: Vec<Tensor> = params.map(|p| p.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads
        .iter()
        .map(|g| g.to_kind(Kind::Float).norm())
        .collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    if max_norm > 0.0 && total > max_norm {
        let coef = max_norm / (total + 1e-6);
        tch::no_grad(|| {
            for mut g in grads {
                let _ = g.g_mul_scalar_(coef);
            }
        });
    }
    total
}

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warmup from 0
/// over `warmup` steps, then cosine decay to `base * min_ratio`, as HF's
/// `get_cosine_with_min_lr_schedule_with_warmup`.
pub fn cosine_lr(step: u64, total: u64, warmup: u64, base: f64, min_ratio: f64) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
    base * (min_ratio + (1.0 - min_ratio) * cosine).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| cosine_lr(s, 110, 10, 1e-3, 0.1);
        assert_eq!(lr(0), 0.0);
        assert!((lr(5) - 5e-4).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!((lr(60) - 1e-3 * (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!((lr(110) - 1e-4).abs() < 1e-12);
        assert!((1..110).all(|s| lr(s + 1) <= lr(s) || s < 10));
    }

    #[test]
    fn adamw_matches_the_closed_form_first_step() {
        // After one step from zero state, Adam's update is lr * g / (|g| + eps') = lr * sign(g).
        let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
        let loss = (&p * Tensor::from_slice(&[0.5f32, -1.0, 2.0])).sum(Kind::Float);
        loss.backward();
        let mut opt = AdamW::new(
            vec![("p".into(), p.shallow_clone())],
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
            },
        );
        opt.step(0.01);
        let got = Vec::<f32>::try_from(p.detach()).unwrap();
        let want: Vec<f32> = [(1.0f32, 1.0f32), (-2.0, -1.0), (3.0, 1.0)]
            .iter()
            .map(|(x, s)| x * (1.0 - 0.01 * 0.1) - 0.01 * s)
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        (&p * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let norm = clip_grad_norm(std::iter::once(&p), 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let g = Vec::<f32>::try_from(p.grad()).unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5,
            "{g:?}"
        );
    }
}
