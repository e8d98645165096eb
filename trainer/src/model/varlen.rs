//! Packed attention through flash attention's variable-length kernel (CUDA, bf16/fp16),
//! called through a small C++ shim (csrc/varlen.cpp) because tch has no binding for
//! `_flash_attention_forward`. Where the kernel refuses the inputs (CPU, fp32, an
//! unsupported head size) the caller falls back to exact segment-by-segment attention.

use std::ffi::{c_char, CStr};
use std::sync::Once;

use tch::Tensor;

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

/// Attention of packed `q` `[b, heads, t, d]`, `k`/`v` `[b, kv_heads, t, d]` through the
/// varlen kernel, as `[b, heads, t, d]`; `None` (warned once) when the kernel cannot
/// take these inputs.
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
