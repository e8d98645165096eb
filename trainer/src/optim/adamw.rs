//! AdamW on plain tensors (so its state can be saved and restored exactly), global
//! gradient-norm clipping, and the cosine schedule with linear warmup.

use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One decoupled-weight-decay Adam update (Loshchilov & Hutter) of `p` from the
/// gradient `g`, with moments `m` and `v` of `p`'s kind: the update of
/// `torch.optim.AdamW`'s single-tensor path, `step` counting from 1.
pub fn adamw_update(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    lr: f64,
    step: u64,
    c: &AdamWConfig,
) {
    adamw_update_scaled(p, g, m, v, lr, step, c, 1.0)
}

/// As `adamw_update` from the gradient `g * grad_scale` (clipping folded in, so the
/// gradient is not rewritten first). Contiguous fp32 CPU tensors take one fused pass
/// over the four arrays; anything else (CUDA, bf16 moments) the tensor ops.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_scaled(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    lr: f64,
    step: u64,
    c: &AdamWConfig,
    grad_scale: f64,
) {
    let bias1 = 1.0 - c.beta1.powi(step as i32);
    let bias2_sqrt = (1.0 - c.beta2.powi(step as i32)).sqrt();
    let step_size = lr / bias1;
    let k = Coefficients {
        scale: grad_scale as f32,
        decay: (1.0 - lr * c.weight_decay) as f32,
        one_minus_beta1: (1.0 - c.beta1) as f32,
        beta2: c.beta2 as f32,
        one_minus_beta2: (1.0 - c.beta2) as f32,
        // p -= step_size * m / (sqrt(v) / bias2_sqrt + eps), folded so that one
        // division does it: the denominator carries -1/step_size.
        denom_mul: (-1.0 / (bias2_sqrt * step_size)) as f32,
        denom_sub: (c.eps / step_size) as f32,
        decays: c.weight_decay != 0.0,
        // Warmup's first step: moments advance, weights stay (as torch).
        moves: step_size != 0.0,
    };
    tch::no_grad(|| {
        if fused_applies(&[&*p, g, &*m, &*v]) {
            return fused_cpu(p, g, m, v, &k);
        }
        let g = if grad_scale == 1.0 {
            g.shallow_clone()
        } else {
            g * grad_scale
        };
        if k.decays {
            let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
        }
        let _ = m.lerp_(&g, 1.0 - c.beta1);
        let _ = v.g_mul_scalar_(c.beta2);
        let _ = v.addcmul_(&g, &(&g * (1.0 - c.beta2)));
        if !k.moves {
            return;
        }
        let denom = v
            .sqrt()
            .g_mul_scalar_(-1.0 / (bias2_sqrt * step_size))
            .g_sub_scalar_(c.eps / step_size);
        let _ = p.addcdiv_(m, &denom);
    });
}

/// The per-element constants of one AdamW update, in the arrays' precision.
struct Coefficients {
    scale: f32,
    decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    denom_mul: f32,
    denom_sub: f32,
    decays: bool,
    moves: bool,
}

/// Whether the fused CPU pass can run: fp32, contiguous, CPU, equal sizes.
fn fused_applies(ts: &[&Tensor]) -> bool {
    let n = ts[0].numel();
    ts.iter().all(|t| {
        t.device() == tch::Device::Cpu
            && t.kind() == Kind::Float
            && t.is_contiguous()
            && t.numel() == n
    })
}

/// One pass over `p`, `g`, `m`, `v` (the same formulas as the tensor-op path, element
/// by element), split across the intra-op threads for large tensors. The tensor ops
/// make about ten passes over parameter-sized memory and allocate three temporaries.
fn fused_cpu(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, k: &Coefficients) {
    let n = p.numel();
    if n == 0 {
        return;
    }
    // SAFETY: all four are contiguous fp32 CPU tensors of `n` elements (checked by
    // `fused_applies`), distinct buffers (a parameter, its gradient and two moments),
    // alive for this call, and not touched by anything else while it runs.
    let (ps, gs, ms, vs) = unsafe {
        (
            std::slice::from_raw_parts_mut(p.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(g.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(m.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(v.data_ptr() as *mut f32, n),
        )
    };
    let threads = (tch::get_num_threads().max(1) as usize).min(n.div_ceil(1 << 16));
    if threads <= 1 {
        return fused_slice(ps, gs, ms, vs, k);
    }
    let len = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (((p, g), m), v) in ps
            .chunks_mut(len)
            .zip(gs.chunks(len))
            .zip(ms.chunks_mut(len))
            .zip(vs.chunks_mut(len))
        {
            s.spawn(move || fused_slice(p, g, m, v, k));
        }
    });
}

fn fused_slice(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Coefficients) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * k.scale;
        if k.decays {
            *p *= k.decay;
        }
        *m += k.one_minus_beta1 * (g - *m);
        *v = *v * k.beta2 + g * (g * k.one_minus_beta2);
        if k.moves {
            *p += *m / (v.sqrt() * k.denom_mul - k.denom_sub);
        }
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
        let mut p = Tensor::from_slice(&[1.0f32, -2.0, 3.0]);
        let g = Tensor::from_slice(&[0.5f32, -1.0, 2.0]);
        let (mut m, mut v) = (p.zeros_like(), p.zeros_like());
        let c = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        adamw_update(&mut p, &g, &mut m, &mut v, 0.01, 1, &c);
        let got = Vec::<f32>::try_from(&p).unwrap();
        let want: Vec<f32> = [(1.0f32, 1.0f32), (-2.0, -1.0), (3.0, 1.0)]
            .iter()
            .map(|(x, s)| x * (1.0 - 0.01 * 0.1) - 0.01 * s)
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// Why master weights: a 5e-6 Adam step (about lr per element) is below half a
    /// bf16 ulp of a typical N(0, 0.02) weight, so updating bf16 weights in place loses
    /// it, while an fp32 master copy keeps it.
    #[test]
    fn bf16_in_place_updates_vanish_and_fp32_master_updates_do_not() {
        tch::manual_seed(3);
        let w = Tensor::randn([4096], (Kind::Float, tch::Device::Cpu)) * 0.02;
        let g = Tensor::randn([4096], (Kind::Float, tch::Device::Cpu));
        let c = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let moved = |mut p: Tensor, g: &Tensor| {
            let before = p.copy();
            let (mut m, mut v) = (p.zeros_like(), p.zeros_like());
            for step in 1..=20 {
                adamw_update(&mut p, g, &mut m, &mut v, 5e-6, step, &c);
            }
            p.ne_tensor(&before)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        };
        let pure_bf16 = moved(w.to_kind(Kind::BFloat16), &g.to_kind(Kind::BFloat16));
        let master = moved(w.copy(), &g);
        assert!(master > 0.999, "fp32 master: {master} of the weights moved");
        assert!(
            pure_bf16 < 0.5,
            "pure bf16: {pure_bf16} of the weights moved"
        );
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
