//! Packed attention through flash attention's variable-length kernel (CUDA, bf16/fp16),
//! called through a small C++ shim (csrc/varlen.cpp) because tch has no binding for
//! `_flash_attention_forward`. Where the kernel refuses the inputs (CPU, fp32, an
//! unsupported head size) the caller falls back to exact segment-by-segment attention.

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use tch::Tensor;

use super::config::ModelConfig;
use super::segments::Segments;

extern "C" {
    fn janus_flash_varlen_forward(
        q: *const torch_sys::C_tensor,
        k: *const torch_sys::C_tensor,
        v: *const torch_sys::C_tensor,
        cu_seqlens: *const torch_sys::C_tensor,
        max_len: i64,
        window_left: i64,
        out: *mut *mut torch_sys::C_tensor,
        err: *mut *mut c_char,
    ) -> i32;
}

/// The varlen kernel on flattened tokens: `q` `[total, heads, d]`, `k`/`v`
/// `[total, kv_heads, d]`, causal within each segment of `cu_seqlens`.
pub fn flash_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_len: i64,
    window: Option<i64>,
) -> Result<Tensor, String> {
    let mut out = std::ptr::null_mut();
    let mut err: *mut c_char = std::ptr::null_mut();
    // Flash's window counts the keys before the query; ours includes the query.
    let left = window.map(|w| w - 1).unwrap_or(-1);
    // SAFETY: the pointers are live tensors for the duration of the call; on success
    // `out` is a new heap `at::Tensor` that `from_ptr` takes ownership of.
    let rc = unsafe {
        janus_flash_varlen_forward(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            cu_seqlens.as_ptr(),
            max_len,
            left,
            &mut out,
            &mut err,
        )
    };
    if rc == 0 {
        // SAFETY: see above.
        return Ok(unsafe { Tensor::from_ptr(out) });
    }
    // SAFETY: on failure `err` is a NUL-terminated string from strdup.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().to_string();
    unsafe { libc::free(err as *mut libc::c_void) };
    Err(msg)
}

static FALLBACK: Once = Once::new();
/// Packed attention calls on CUDA the varlen kernel refused, run segment by segment
/// instead (one per layer and pass): `janus_attention_fallback_total`.
static FALLBACK_CALLS: AtomicU64 = AtomicU64::new(0);

/// Packed attention calls on CUDA that fell back to segment-by-segment attention in this
/// process so far.
pub fn fallback_calls() -> u64 {
    FALLBACK_CALLS.load(Ordering::Relaxed)
}

/// Which attention kernel a model's attention runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Packed rows through flash attention's variable-length kernel.
    FlashVarlen,
    /// Packed rows one segment at a time through `scaled_dot_product_attention`: on CPU
    /// by design; on CUDA because the varlen kernel refused (`why`).
    Segmentwise { why: String },
    /// One sequence per row, causal `scaled_dot_product_attention` (PyTorch picks its
    /// flash, memory-efficient or math backend).
    Sdpa,
}

impl AttentionKernel {
    /// A short stable name (`janus bench-train`'s `attention_kernel`).
    pub fn name(&self) -> &'static str {
        match self {
            AttentionKernel::FlashVarlen => "flash-varlen",
            AttentionKernel::Segmentwise { .. } => "segmentwise-sdpa",
            AttentionKernel::Sdpa => "sdpa",
        }
    }
}

impl std::fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttentionKernel::FlashVarlen => {
                write!(
                    f,
                    "flash attention's varlen kernel over the packed segments"
                )
            }
            AttentionKernel::Segmentwise { why } => {
                write!(f, "scaled_dot_product_attention segment by segment ({why})")
            }
            AttentionKernel::Sdpa => write!(f, "causal scaled_dot_product_attention"),
        }
    }
}

/// The kernel packed (or not) rows of `cfg` in `kind` on `device` will run, found by
/// running the varlen kernel once on a two-segment input of the model's head shape (the
/// same checks the training's calls meet: device, dtype, head size, GQA, window).
pub fn attention_kernel(
    cfg: &ModelConfig,
    kind: tch::Kind,
    device: tch::Device,
    packed: bool,
) -> AttentionKernel {
    if !packed {
        return AttentionKernel::Sdpa;
    }
    if !device.is_cuda() {
        return AttentionKernel::Segmentwise {
            why: "CPU: the varlen kernel is CUDA only".into(),
        };
    }
    let d = cfg.head_dim() as i64;
    let q = Tensor::zeros([4, cfg.num_attention_heads as i64, d], (kind, device));
    let kv = Tensor::zeros([4, cfg.num_kv_heads() as i64, d], (kind, device));
    let cu = Tensor::from_slice(&[0i32, 2, 4]).to_device(device);
    let window = cfg.sliding_window.map(|w| w as i64);
    match tch::no_grad(|| flash_varlen(&q, &kv, &kv, &cu, 2, window)) {
        Ok(_) => AttentionKernel::FlashVarlen,
        Err(e) => AttentionKernel::Segmentwise {
            why: format!(
                "the varlen kernel refused {kind:?} heads of {d}: {}",
                e.lines().next().unwrap_or("")
            ),
        },
    }
}

/// Attention of packed `q` `[b, heads, t, d]`, `k`/`v` `[b, kv_heads, t, d]` through the
/// varlen kernel, as `[b, heads, t, d]`; `None` (counted, and warned once) when the
/// kernel cannot take these inputs.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seg: &Segments,
    window: Option<i64>,
) -> Option<Tensor> {
    let (b, heads, t, d) = q.size4().ok()?;
    let flat = |x: &Tensor| {
        let n = x.size()[1];
        x.transpose(1, 2).reshape([b * t, n, d])
    };
    match flash_varlen(
        &flat(q),
        &flat(k),
        &flat(v),
        &seg.cu_seqlens,
        seg.max_len,
        window,
    ) {
        Ok(y) => Some(y.view([b, t, heads, d]).transpose(1, 2)),
        Err(e) => {
            FALLBACK_CALLS.fetch_add(1, Ordering::Relaxed);
            FALLBACK.call_once(|| {
                tracing::warn!(error = %e.lines().next().unwrap_or(""), "flash varlen attention unavailable for these inputs; packed rows use segment-by-segment attention");
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_named_for_each_layout_and_device() {
        let cfg = super::super::ModelConfig::small("mistral", 64, 32, 64, 1, 4, 2);
        let cpu = tch::Device::Cpu;
        assert_eq!(
            attention_kernel(&cfg, tch::Kind::Float, cpu, false),
            AttentionKernel::Sdpa
        );
        let k = attention_kernel(&cfg, tch::Kind::BFloat16, cpu, true);
        assert_eq!(k.name(), "segmentwise-sdpa");
        assert!(k.to_string().contains("CPU"), "{k}");
    }

    #[test]
    fn the_shim_reports_errors_instead_of_crashing() {
        // No CUDA kernel for CPU tensors: the dispatcher's error comes back as a message.
        let q = Tensor::zeros([4, 2, 8], (tch::Kind::BFloat16, tch::Device::Cpu));
        let cu = Tensor::from_slice(&[0i32, 4]);
        let e = flash_varlen(&q, &q, &q, &cu, 4, None).unwrap_err();
        assert!(
            e.contains("_flash_attention_forward") || e.contains("CPU"),
            "{e}"
        );
    }
}
