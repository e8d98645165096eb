//! Building blocks: RMSNorm, rotary embedding, attention, SwiGLU MLP, decoder layer,
//! model and LM head. Each block is built from (config, variable path).

use tch::{nn, Kind, Tensor};

use super::ModelConfig;

/// Which positions may attend to which.
pub enum AttentionMask {
    /// Plain causal attention over the whole row (right padding is harmless: real
    /// tokens never see later pads).
    Causal,
    /// Explicit boolean mask `[batch, 1, t, t]`, `true` = may attend; used for packed
    /// rows, where each example only sees itself.
    Explicit(Tensor),
}

impl AttentionMask {
    /// Block-diagonal causal mask from per-token segment ids `[batch, t]`: a token
    /// attends to earlier tokens of its own segment only.
    pub fn packed(segment_ids: &Tensor) -> Self {
        let t = segment_ids.size()[1];
        let same = segment_ids
            .unsqueeze(2)
            .eq_tensor(&segment_ids.unsqueeze(1));
        let causal = Tensor::ones([t, t], (Kind::Bool, segment_ids.device())).tril(0);
        AttentionMask::Explicit((same.logical_and(&causal)).unsqueeze(1))
    }
}

const INIT_STD: f64 = 0.02;

fn weight(vs: &nn::Path, name: &str, dims: &[i64]) -> Tensor {
    vs.var(
        name,
        dims,
        nn::Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        },
    )
}

struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(vs: nn::Path, in_dim: usize, out_dim: usize, bias: bool) -> Self {
        let weight = weight(&vs, "weight", &[out_dim as i64, in_dim as i64]);
        let bias = bias.then(|| vs.var("bias", &[out_dim as i64], nn::Init::Const(0.0)));
        Self { weight, bias }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(vs: nn::Path, dim: usize, eps: f64) -> Self {
        Self {
            weight: vs.var("weight", &[dim as i64], nn::Init::Const(1.0)),
            eps,
        }
    }

    /// As HF: normalise in fp32, cast back, then scale.
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let d = *x.size().last().expect("rank >= 1");
        x.to_kind(Kind::Float)
            .rms_norm([d], None::<Tensor>, self.eps)
            .to_kind(kind)
            * &self.weight
    }
}

struct RotaryEmbedding {
    inv_freq: Tensor,
}

impl RotaryEmbedding {
    fn new(cfg: &ModelConfig, device: tch::Device) -> Self {
        let d = cfg.head_dim();
        let base = cfg.rope_theta() as f32;
        let inv: Vec<f32> = (0..d)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / d as f32))
            .collect();
        Self {
            inv_freq: Tensor::from_slice(&inv).to_device(device),
        }
    }

    /// cos and sin `[batch, 1, t, head_dim]` for integer positions `[batch, t]`.
    fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[x.narrow(3, half, half).neg(), x.narrow(3, 0, half)], 3)
}

fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_kv_heads() * hd);
        let b = cfg.attention_bias;
        Self {
            q_proj: Linear::new(&vs / "q_proj", h, q, b),
            k_proj: Linear::new(&vs / "k_proj", h, kv, b),
            v_proj: Linear::new(&vs / "v_proj", h, kv, b),
            o_proj: Linear::new(&vs / "o_proj", q, h, b),
            heads: cfg.num_attention_heads as i64,
            kv_heads: cfg.num_kv_heads() as i64,
            head_dim: hd as i64,
        }
    }

    /// Repeat K/V heads for grouped-query attention (as HF's `repeat_kv`).
    fn repeat_kv(&self, x: Tensor) -> Tensor {
        let rep = self.heads / self.kv_heads;
        if rep == 1 {
            return x;
        }
        let (b, _, t, d) = x.size4().expect("rank 4");
        x.unsqueeze(2)
            .expand([b, self.kv_heads, rep, t, d], false)
            .reshape([b, self.heads, t, d])
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &AttentionMask) -> Tensor {
        let (b, t, _) = x.size3().expect("rank 3");
        let split =
            |p: &Linear, n: i64| p.forward(x).view([b, t, n, self.head_dim]).transpose(1, 2);
        let q = apply_rotary(&split(&self.q_proj, self.heads), cos, sin);
        let k = self.repeat_kv(apply_rotary(&split(&self.k_proj, self.kv_heads), cos, sin));
        let v = self.repeat_kv(split(&self.v_proj, self.kv_heads));
        let y = match mask {
            AttentionMask::Causal => Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                true,
                None,
                false,
            ),
            AttentionMask::Explicit(m) => {
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(m), 0.0, false, None, false)
            }
        };
        self.o_proj.forward(
            &y.transpose(1, 2)
                .reshape([b, t, self.heads * self.head_dim]),
        )
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Self {
            gate_proj: Linear::new(&vs / "gate_proj", h, i, b),
            up_proj: Linear::new(&vs / "up_proj", h, i, b),
            down_proj: Linear::new(&vs / "down_proj", i, h, b),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        Self {
            input_layernorm: RmsNorm::new(
                &vs / "input_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            self_attn: Attention::new(&vs / "self_attn", cfg),
            post_attention_layernorm: RmsNorm::new(
                &vs / "post_attention_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            mlp: Mlp::new(&vs / "mlp", cfg),
        }
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &AttentionMask) -> Tensor {
        let h = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin, mask);
        let out = self.mlp.forward(&self.post_attention_layernorm.forward(&h));
        h + out
    }
}

/// A Mistral / Llama causal language model.
pub struct Transformer {
    pub config: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when the head is tied to the input embedding.
    lm_head: Option<Tensor>,
    rotary: RotaryEmbedding,
}

impl Transformer {
    /// Create the variables under `vs` (randomly initialised, std 0.02 as HF does).
    pub fn new(vs: &nn::Path, config: &ModelConfig) -> Self {
        let m = vs / "model";
        let (v, h) = (config.vocab_size as i64, config.hidden_size as i64);
        let embed_tokens = weight(&(&m / "embed_tokens"), "weight", &[v, h]);
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::new(&m / "layers" / i, config))
            .collect();
        let norm = RmsNorm::new(&m / "norm", config.hidden_size, config.rms_norm_eps);
        let lm_head =
            (!config.tie_word_embeddings).then(|| weight(&(vs / "lm_head"), "weight", &[v, h]));
        Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: RotaryEmbedding::new(config, vs.device()),
        }
    }

    /// Final hidden states `[batch, t, hidden]` for `input_ids` and `positions`
    /// (both `[batch, t]`, int64).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &AttentionMask,
    ) -> Tensor {
        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        let (cos, sin) = self.rotary.cos_sin(positions, x.kind());
        let windowed = self.sliding_window_mask(input_ids, mask);
        let mask = windowed.as_ref().unwrap_or(mask);
        for layer in &self.layers {
            x = layer.forward(&x, &cos, &sin, mask);
        }
        self.norm.forward(&x)
    }

    /// Logits `[batch, t, vocab]` in the model's dtype.
    pub fn forward(&self, input_ids: &Tensor, positions: &Tensor, mask: &AttentionMask) -> Tensor {
        self.lm_head(&self.hidden_states(input_ids, positions, mask))
    }

    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.linear(
            self.lm_head.as_ref().unwrap_or(&self.embed_tokens),
            None::<Tensor>,
        )
    }

    /// With a sliding window shorter than the row, restrict attention to the window.
    fn sliding_window_mask(
        &self,
        input_ids: &Tensor,
        mask: &AttentionMask,
    ) -> Option<AttentionMask> {
        let w = self.config.sliding_window? as i64;
        let t = input_ids.size()[1];
        if t <= w {
            return None;
        }
        let idx = Tensor::arange(t, (Kind::Int64, input_ids.device()));
        let dist = idx.unsqueeze(1) - idx.unsqueeze(0);
        let window = dist.lt(w).logical_and(&dist.ge(0)).view([1, 1, t, t]);
        Some(AttentionMask::Explicit(match mask {
            AttentionMask::Causal => window,
            AttentionMask::Explicit(m) => m.logical_and(&window),
        }))
    }
}
