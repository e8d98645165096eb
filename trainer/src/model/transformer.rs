//! Building blocks: RMSNorm, rotary embedding, attention, SwiGLU MLP, decoder layer,
//! model and LM head. Each block is built from (config, variable path).

use tch::{nn, Kind, Tensor};

use super::config::ModelConfig;
use super::kv_cache::{CachedPass, KvCache};
use super::segments::Segments;

/// How the tokens of a batch may attend to each other.
pub enum AttentionLayout {
    /// Each row is one sequence, causal (right padding is harmless: real tokens never
    /// see later pads).
    Causal,
    /// Rows hold several sequences back to back (packing); a token attends to earlier
    /// tokens of its own sequence only. Kept as segment boundaries, never as a dense
    /// `[t, t]` mask: CUDA runs flash attention's variable-length kernel over them, the
    /// CPU runs causal attention segment by segment (the same arithmetic as a
    /// block-diagonal mask, without materialising it).
    Packed(Segments),
}

/// Explicit `[t, t]` (or `[1, 1, t, t]`) masks built so far by this process: the test
/// that no per-layer (or per-batch, for packing) mask is ever materialised reads it.
static MASKS_BUILT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn masks_built() -> usize {
    MASKS_BUILT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Causal attention of `q` over `k`/`v` that may have fewer (grouped) heads, as
/// transformers' sdpa attention runs without a mask: PyTorch's kernel shares each K/V
/// head across its query group itself, so the `[b, heads, t, d]` copies `repeat_kv`
/// makes (and their gradients' reduction in backward) are never built. The output is
/// bit for bit that of repeating first; the K/V gradients differ only in the order of
/// the group's sum (PyTorch 2.11, fp32 and bf16).
fn causal_gqa(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let gqa = q.size()[1] != k.size()[1];
    Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, true, None, gqa)
}

/// Causal mask limited to the last `window` positions, `[1, 1, t, t]` bool.
fn window_mask(t: i64, window: i64, device: tch::Device) -> Tensor {
    MASKS_BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let idx = Tensor::arange(t, (Kind::Int64, device));
    let dist = idx.unsqueeze(1) - idx.unsqueeze(0);
    dist.lt(window).logical_and(&dist.ge(0)).view([1, 1, t, t])
}

/// What every layer of one forward pass shares: rotary tables and the attention layout.
pub struct LayerContext<'a> {
    cos: Tensor,
    sin: Tensor,
    layout: &'a AttentionLayout,
    /// A sliding window shorter than the rows (causal layout only), once per pass.
    window: Option<Tensor>,
    /// A sliding window for packed segments longer than it.
    window_len: Option<i64>,
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

    fn forward(&self, x: &Tensor, ctx: &LayerContext) -> Tensor {
        let (b, t, _) = x.size3().expect("rank 3");
        let split =
            |p: &Linear, n: i64| p.forward(x).view([b, t, n, self.head_dim]).transpose(1, 2);
        let q = apply_rotary(&split(&self.q_proj, self.heads), &ctx.cos, &ctx.sin);
        let k = apply_rotary(&split(&self.k_proj, self.kv_heads), &ctx.cos, &ctx.sin);
        let v = split(&self.v_proj, self.kv_heads);
        let y = match ctx.layout {
            AttentionLayout::Packed(seg) if x.device().is_cuda() => {
                match super::varlen::flash_attention(&q, &k, &v, seg, ctx.window_len) {
                    Some(y) => y,
                    None => self.segmentwise(&q, k, v, seg, ctx.window_len),
                }
            }
            AttentionLayout::Packed(seg) => self.segmentwise(&q, k, v, seg, ctx.window_len),
            AttentionLayout::Causal => match &ctx.window {
                Some(m) => Tensor::scaled_dot_product_attention(
                    &q,
                    &self.repeat_kv(k),
                    &self.repeat_kv(v),
                    Some(m),
                    0.0,
                    false,
                    None,
                    false,
                ),
                None => causal_gqa(&q, &k, &v),
            },
        };
        self.o_proj.forward(
            &y.transpose(1, 2)
                .reshape([b, t, self.heads * self.head_dim]),
        )
    }

    /// The new tokens' attention over everything in `cache` (their own keys and
    /// values are written into it first).
    fn forward_cached(
        &self,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        layer: usize,
        cache: &mut KvCache,
        pass: &CachedPass,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("rank 3");
        let split =
            |p: &Linear, n: i64| p.forward(x).view([b, t, n, self.head_dim]).transpose(1, 2);
        let q = apply_rotary(&split(&self.q_proj, self.heads), cos, sin);
        let k = apply_rotary(&split(&self.k_proj, self.kv_heads), cos, sin);
        let v = split(&self.v_proj, self.kv_heads);
        let (k, v) = cache.append(layer, pass, &k, &v);
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(&pass.mask),
            0.0,
            false,
            None,
            false,
        );
        self.o_proj.forward(
            &y.transpose(1, 2)
                .reshape([b, t, self.heads * self.head_dim]),
        )
    }

    /// Packed rows without a mask: causal attention over each segment on its own.
    fn segmentwise(
        &self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        seg: &Segments,
        window: Option<i64>,
    ) -> Tensor {
        let rows: Vec<Tensor> = seg
            .rows
            .iter()
            .enumerate()
            .map(|(r, parts)| {
                let pick = |x: &Tensor, s: i64, l: i64| x.narrow(0, r as i64, 1).narrow(2, s, l);
                let outs: Vec<Tensor> = parts
                    .iter()
                    .map(|&(s, l)| {
                        let (qs, ks, vs) = (pick(q, s, l), pick(&k, s, l), pick(&v, s, l));
                        match window.filter(|&w| l > w) {
                            Some(w) => {
                                let m = window_mask(l, w, q.device());
                                Tensor::scaled_dot_product_attention(
                                    &qs,
                                    &self.repeat_kv(ks),
                                    &self.repeat_kv(vs),
                                    Some(&m),
                                    0.0,
                                    false,
                                    None,
                                    false,
                                )
                            }
                            None => causal_gqa(&qs, &ks, &vs),
                        }
                    })
                    .collect();
                Tensor::cat(&outs, 2)
            })
            .collect();
        Tensor::cat(&rows, 0)
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

    fn forward(&self, x: &Tensor, ctx: &LayerContext) -> Tensor {
        let h = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x), ctx);
        let out = self.mlp.forward(&self.post_attention_layernorm.forward(&h));
        h + out
    }
}

impl DecoderLayer {
    fn forward_cached(
        &self,
        x: &Tensor,
        rotary: (&Tensor, &Tensor),
        layer: usize,
        cache: &mut KvCache,
        pass: &CachedPass,
    ) -> Tensor {
        let h = x + self.self_attn.forward_cached(
            &self.input_layernorm.forward(x),
            rotary,
            layer,
            cache,
            pass,
        );
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
    /// `None` when the head is tied to the input embedding (or the model is a
    /// sequence classifier).
    lm_head: Option<Tensor>,
    /// A sequence classifier's (reward model's) head, `[labels, hidden]`, HF's `score`.
    score: Option<Tensor>,
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
        let classifier = config.is_sequence_classifier();
        let lm_head = (!config.tie_word_embeddings && !classifier)
            .then(|| weight(&(vs / "lm_head"), "weight", &[v, h]));
        let score =
            classifier.then(|| weight(&(vs / "score"), "weight", &[config.num_labels() as i64, h]));
        Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            score,
            rotary: RotaryEmbedding::new(config, vs.device()),
        }
    }

    /// A reward model's scores of final hidden states `[.., hidden]` -> `[.., labels]`.
    pub fn score(&self, hidden: &Tensor) -> Tensor {
        hidden.linear(
            self.score
                .as_ref()
                .expect("score() on a model that is not a sequence classifier"),
            None::<Tensor>,
        )
    }

    /// Input embeddings `[batch, t, hidden]` of `input_ids` `[batch, t]`.
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false)
    }

    /// What every layer of a pass over `positions` (`[batch, t]`, int64) shares.
    pub fn context<'a>(
        &self,
        positions: &Tensor,
        layout: &'a AttentionLayout,
        kind: Kind,
    ) -> LayerContext<'a> {
        let (cos, sin) = self.rotary.cos_sin(positions, kind);
        let t = positions.size()[1];
        let w = self.config.sliding_window.map(|w| w as i64);
        let window = match (layout, w) {
            (AttentionLayout::Causal, Some(w)) if t > w => {
                Some(window_mask(t, w, positions.device()))
            }
            _ => None,
        };
        LayerContext {
            cos,
            sin,
            layout,
            window,
            window_len: w,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Decoder layer `i` on `x`.
    pub fn layer(&self, i: usize, x: &Tensor, ctx: &LayerContext) -> Tensor {
        self.layers[i].forward(x, ctx)
    }

    /// The final RMSNorm.
    pub fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }

    /// Final hidden states `[batch, t, hidden]` for `input_ids` and `positions`
    /// (both `[batch, t]`, int64).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        layout: &AttentionLayout,
    ) -> Tensor {
        let mut x = self.embed(input_ids);
        let ctx = self.context(positions, layout, x.kind());
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, &ctx);
        }
        self.final_norm(&x)
    }

    /// Logits `[batch, t, vocab]` in the model's dtype.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        layout: &AttentionLayout,
    ) -> Tensor {
        self.lm_head(&self.hidden_states(input_ids, positions, layout))
    }

    /// An empty KV cache for `batch` sequences of this model.
    pub fn new_cache(&self, batch: i64, kind: Kind, device: tch::Device) -> KvCache {
        let c = &self.config;
        KvCache::new(
            self.layers.len(),
            batch,
            c.num_kv_heads() as i64,
            c.head_dim() as i64,
            kind,
            device,
        )
    }

    /// Final hidden states `[batch, t, hidden]` of `t` new tokens per row, attending
    /// to what `cache` holds of each row and appending the new tokens' keys and
    /// values to it: the prefill of a (left-padded) batch of prompts, or a decode
    /// step. `positions` `[batch, t]` are the tokens' positions in their sequences,
    /// `valid` `[batch, t]` (bool) is false for left padding. Runs without autograd.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        valid: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        tch::no_grad(|| {
            let mut x = self.embed(input_ids);
            let (cos, sin) = self.rotary.cos_sin(positions, x.kind());
            let window = self.config.sliding_window.map(|w| w as i64);
            let pass = cache.begin(valid, positions, window);
            for (i, layer) in self.layers.iter().enumerate() {
                x = layer.forward_cached(&x, (&cos, &sin), i, cache, &pass);
            }
            cache.commit(pass);
            self.final_norm(&x)
        })
    }

    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.linear(self.lm_head_weight(), None::<Tensor>)
    }

    /// The LM head's weight `[vocab, hidden]` (the embedding when tied), for the
    /// loss heads that write its gradient themselves.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}
