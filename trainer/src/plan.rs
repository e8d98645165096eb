//! The memory plan of a training run: per-rank bytes of weights, gradients, master
//! weights, Adam moments, activations, the loss chunk and masks, against a device
//! size. `janus plan` prints it; `train` checks it before the first step and fails
//! with the breakdown when the run cannot fit.
//!
//! The activation terms count the tensors our layers keep for the backward pass (see
//! `model/transformer.rs`): per token and layer, the RMSNorm inputs and outputs, the
//! attention's q, k, v (after GQA expansion), output and `o_proj` input, and the
//! MLP's four intermediate tensors. Attention itself keeps O(tokens) state (flash
//! kernels on CUDA and CPU), and packed rows carry segment boundaries, not masks.

use crate::config::{ByteSize, Dtype, Method, TrainConfig};
use crate::error::{Error, Result};
use crate::loss::LOSS_CHUNK_TOKENS;
use crate::model::ModelConfig;

/// One line of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub what: &'static str,
    pub bytes: u64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub items: Vec<Item>,
    /// Activations the same run would keep without gradient checkpointing (for the
    /// comparison line), or with it when it is off.
    pub alternative: Option<(bool, u64)>,
    pub ranks: usize,
    pub parameters: u64,
}

/// What the plan needs to know about where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
    Cuda,
}

/// CUDA context, cuBLAS workspaces and NCCL buffers: what a CUDA process holds before
/// its first tensor (measured ~1 GiB on an H100 with NCCL initialised; rounded up).
const CUDA_RUNTIME_BYTES: u64 = 3 << 29;

impl Plan {
    pub fn total(&self) -> u64 {
        self.items.iter().map(|i| i.bytes).sum()
    }

    /// The plan of `cfg` on `model` with `ranks` data-parallel ranks, each
    /// accumulating `accumulation` micro-batches (activations do not depend on it).
    pub fn new(cfg: &TrainConfig, model: &ModelConfig, ranks: usize, target: Target) -> Self {
        let p = model.num_parameters() as u64;
        let a = cfg.model.dtype.bytes();
        let master = cfg.uses_master_weights();
        let sharded = cfg.shards_optimizer(ranks);
        let share = if sharded { ranks as u64 } else { 1 };
        let state_bytes = if master { 4 } else { a };
        let dtype = cfg.model.dtype.as_str();
        let state_dtype = if master { "float32" } else { dtype };
        let of = if sharded {
            format!(", 1/{ranks} per rank (ZeRO-1)")
        } else {
            String::new()
        };
        let mut items = vec![
            Item {
                what: "weights",
                bytes: p * a,
                detail: format!("{p} parameters x {a} B ({dtype})"),
            },
            Item {
                what: "gradients",
                bytes: p * a,
                detail: format!("{dtype}, accumulated over the micro-batches"),
            },
        ];
        if master {
            items.push(Item {
                what: "master weights",
                bytes: p * 4 / share,
                detail: format!("float32{of}"),
            });
        }
        items.push(Item {
            what: "Adam moments",
            bytes: 2 * p * state_bytes / share,
            detail: format!("2 x {state_dtype}{of}"),
        });
        // A bucket holds whole parameters: at least the largest one, at most all of them.
        let biggest = largest_parameter(model) as u64;
        let bucket = ((cfg.distributed.bucket_mib as u64) << 20)
            .max(biggest * 4)
            .min(p * 4);
        if sharded {
            items.push(Item {
                what: "gradient shard",
                bytes: p * 4 / share,
                detail: format!("float32, 1/{ranks} per rank"),
            });
            items.push(Item {
                what: "optimizer step buffers",
                bytes: 3 * bucket,
                detail: "reduce-scatter / all-gather bucket and update temporaries".into(),
            });
        } else if master || ranks > 1 {
            items.push(Item {
                what: "optimizer step buffers",
                bytes: 2 * biggest * 4 + if ranks > 1 { 2 * bucket } else { 0 },
                detail: "fp32 gradient and update temporaries of the largest parameter".into(),
            });
        }
        let tokens = micro_batch_tokens(cfg) as u64;
        let ckpt = cfg.model.gradient_checkpointing;
        let act = activations(model, cfg.model.dtype, tokens, ckpt);
        items.push(Item {
            what: "activations",
            bytes: act,
            detail: if ckpt {
                format!(
                    "gradient checkpointing: {} layer inputs of {tokens} tokens, one layer recomputed",
                    model.num_hidden_layers
                )
            } else {
                format!(
                    "{} layers x {tokens} tokens, every layer's tensors kept",
                    model.num_hidden_layers
                )
            },
        });
        let chunk = LOSS_CHUNK_TOKENS.min(tokens as usize) as u64;
        items.push(Item {
            what: "loss chunk",
            bytes: chunk * model.vocab_size as u64 * (a + 12),
            detail: format!(
                "{chunk} positions x {} vocabulary: logits, fp32 log-softmax and gradient",
                model.vocab_size
            ),
        });
        let (mask, mask_detail) = masks(cfg, model, target);
        items.push(Item {
            what: "attention masks",
            bytes: mask,
            detail: mask_detail,
        });
        if target == Target::Cuda {
            items.push(Item {
                what: "CUDA runtime",
                bytes: CUDA_RUNTIME_BYTES,
                detail: "context, cuBLAS workspaces, NCCL buffers".into(),
            });
        }
        Self {
            alternative: Some((!ckpt, activations(model, cfg.model.dtype, tokens, !ckpt))),
            items,
            ranks,
            parameters: p,
        }
    }

    /// The plan as a table, against `limit` when known.
    pub fn render(&self, limit: Option<u64>) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let mut s = String::new();
        for i in &self.items {
            s += &format!(
                "  {:<24} {:>10.2} GiB  {}\n",
                i.what,
                gib(i.bytes),
                i.detail
            );
        }
        let total = self.total();
        s += &format!("  {:<24} {:>10.2} GiB per rank\n", "total", gib(total));
        if let Some(l) = limit {
            if total <= l {
                s += &format!(
                    "  fits in {:.2} GiB with {:.2} GiB ({:.0}%) to spare\n",
                    gib(l),
                    gib(l - total),
                    100.0 * (l - total) as f64 / l as f64
                );
            } else {
                s += &format!(
                    "  does NOT fit in {:.2} GiB: {:.2} GiB over\n",
                    gib(l),
                    gib(total - l)
                );
            }
        }
        if let Some((ckpt, act)) = self.alternative {
            let now = self
                .items
                .iter()
                .find(|i| i.what == "activations")
                .map(|i| i.bytes)
                .unwrap_or(0);
            let other = total - now + act;
            let fits = limit.map(|l| if other <= l { "fits" } else { "does not fit" });
            s += &format!(
                "  {} gradient checkpointing: activations {:.2} GiB, total {:.2} GiB{}\n",
                if ckpt { "with" } else { "without" },
                gib(act),
                gib(other),
                fits.map(|f| format!(" ({f})")).unwrap_or_default()
            );
        }
        s
    }
}

fn largest_parameter(m: &ModelConfig) -> usize {
    let (h, i, v) = (m.hidden_size, m.intermediate_size, m.vocab_size);
    (v * h).max(h * i)
}

/// Tokens of the largest micro-batch: every row at `max_seq_len` (two rows per pair
/// for preference methods).
pub fn micro_batch_tokens(cfg: &TrainConfig) -> usize {
    let rows = match cfg.method {
        Method::Sft => cfg.hyperparameters.micro_batch_size,
        _ => 2 * cfg.hyperparameters.micro_batch_size,
    };
    rows * cfg.data.max_seq_len
}

/// Bytes one decoder layer keeps per token for its backward pass.
pub fn layer_bytes_per_token(m: &ModelConfig, dtype: Dtype) -> u64 {
    let a = dtype.bytes();
    let h = m.hidden_size as u64;
    let q = (m.num_attention_heads * m.head_dim()) as u64;
    let i = m.intermediate_size as u64;
    // RMSNorm: its fp32 input, the normalised fp32 result cast to the model dtype, and
    // the scaled output (for fp32 the cast is the same tensor; the input then is the
    // layer's input or the residual).
    let norm = match dtype {
        Dtype::Float32 => 3 * 4 * h,
        Dtype::Bfloat16 => 4 * h + 2 * a * h,
    };
    // q, k and v after GQA expansion, the attention output and o_proj's input.
    let attention = 5 * a * q;
    // gate output, its SiLU, up output, their product.
    let mlp = 4 * a * i;
    2 * norm + attention + mlp
}

/// Activation bytes of one micro-batch of `tokens` tokens.
pub fn activations(m: &ModelConfig, dtype: Dtype, tokens: u64, checkpointing: bool) -> u64 {
    let a = dtype.bytes();
    let h = m.hidden_size as u64;
    let i = m.intermediate_size as u64;
    let layers = m.num_hidden_layers as u64;
    let per_layer = layer_bytes_per_token(m, dtype) * tokens;
    // Final norm, the detached hidden states the head reads, and their gradient.
    let head_in = (3 * 4 * h + 2 * a * h) * tokens;
    // The gradient flowing back through a layer: a few hidden- and intermediate-sized
    // tensors alive at once while its backward runs.
    let backward = (3 * a * h + 2 * a * i) * tokens;
    if checkpointing {
        layers * a * h * tokens + a * h * tokens + per_layer + backward + head_in
    } else {
        layers * per_layer + backward + head_in
    }
}

fn masks(cfg: &TrainConfig, m: &ModelConfig, target: Target) -> (u64, String) {
    let t = cfg.data.max_seq_len as u64;
    match m.sliding_window {
        Some(w) if (w as u64) < t && !(cfg.data.packing && target == Target::Cuda) => (
            t * t,
            format!("one {t} x {t} sliding-window mask per batch (window {w})"),
        ),
        _ if cfg.data.packing => (
            0,
            match target {
                Target::Cuda => "none: packed rows use flash attention's varlen kernel".into(),
                Target::Cpu => "none: packed rows are attended segment by segment".into(),
            },
        ),
        _ => (0, "none: causal attention".into()),
    }
}

/// Memory one rank may use: the config's limit, else the device's own.
pub fn device_limit(cfg: &TrainConfig, device: tch::Device) -> Option<u64> {
    if let Some(ByteSize(b)) = cfg.memory.limit {
        return Some(b);
    }
    match device {
        tch::Device::Cuda(i) => cuda_memory(i).map(|(_, total)| total),
        _ => cpu_available_memory(),
    }
}

/// Free and total memory of CUDA device `i`. cudarc's loader panics without the CUDA
/// runtime library, so it is only touched once libtorch saw CUDA and the library loads.
pub fn cuda_memory(i: usize) -> Option<(u64, u64)> {
    // SAFETY: a plain dlopen probe.
    if !tch::Cuda::is_available() || !unsafe { cudarc::runtime::sys::is_culib_present() } {
        return None;
    }
    cudarc::runtime::result::device::set(i as i32).ok()?;
    cudarc::runtime::result::get_mem_info()
        .ok()
        .map(|(free, total)| (free as u64, total as u64))
}

/// Memory this process can still take on the host: `MemAvailable`, capped by the
/// cgroup's limit (a pod's memory limit) minus what the cgroup already uses.
pub fn cpu_available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let avail = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kb| kb * 1024)?;
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .zip(read("/sys/fs/cgroup/memory.current"))
        .or_else(|| {
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
                .zip(read("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
        })
        .filter(|(limit, _)| *limit < (1 << 60))
        .map(|(limit, used)| limit.saturating_sub(used));
    Some(cgroup.map_or(avail, |c| c.min(avail)))
}

/// The check `train` makes before its first step.
pub fn check_before_training(
    cfg: &TrainConfig,
    model: &ModelConfig,
    ranks: usize,
    accumulation: usize,
    device: tch::Device,
) -> Result<()> {
    let target = if device.is_cuda() {
        Target::Cuda
    } else {
        Target::Cpu
    };
    let plan = Plan::new(cfg, model, ranks, target);
    let limit = device_limit(cfg, device);
    tracing::info!(
        per_rank_gib = plan.total() as f64 / (1u64 << 30) as f64,
        limit_gib = limit.map(|l| l as f64 / (1u64 << 30) as f64),
        ranks,
        gradient_accumulation_steps = accumulation,
        "memory plan"
    );
    match limit {
        Some(l) if cfg.memory.check && plan.total() > l => Err(Error::Config(format!(
            "the run needs {} per rank but {} is available on {device:?} (memory.limit, or the device's own); \
             the plan:\n{}\
             lower data.max_seq_len or hyperparameters.micro_batch_size, turn on model.gradient_checkpointing, \
             use more ranks with distributed.shard_optimizer, or set memory.check=false to try anyway",
            ByteSize(plan.total()),
            ByteSize(l),
            plan.render(Some(l))
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::presets;

    fn gib(b: u64) -> f64 {
        b as f64 / (1u64 << 30) as f64
    }

    #[test]
    fn the_7b_recipes_fit_80_gib_on_4_ranks() {
        let m = ModelConfig::mistral_7b_v02();
        for cfg in [presets::janus_7b_sft(), presets::janus_7b_orpo()] {
            let plan = Plan::new(&cfg, &m, 4, Target::Cuda);
            let total = plan.total();
            assert!(
                gib(total) < 80.0,
                "{:?}: {}",
                cfg.method,
                plan.render(Some(80 << 30))
            );
            // Without checkpointing the SFT recipe's activations alone exceed 100 GB.
            let (_, without) = plan.alternative.unwrap();
            if cfg.method == Method::Sft {
                assert!(without > 100_000_000_000, "{}", gib(without));
            }
        }
    }

    #[test]
    fn sharding_divides_the_optimizer_state() {
        let m = ModelConfig::mistral_7b_v02();
        let cfg = presets::janus_7b_sft();
        let one = Plan::new(&cfg, &m, 1, Target::Cuda);
        let four = Plan::new(&cfg, &m, 4, Target::Cuda);
        let get = |p: &Plan, w| p.items.iter().find(|i| i.what == w).unwrap().bytes;
        assert_eq!(get(&one, "Adam moments"), 4 * get(&four, "Adam moments"));
        assert_eq!(
            get(&one, "master weights"),
            4 * get(&four, "master weights")
        );
        assert_eq!(get(&one, "weights"), get(&four, "weights"));
    }
}
