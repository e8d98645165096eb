// Flash attention's variable-length kernel for packed batches. tch generates
// bindings for `_flash_attention_backward` but not for the forward, so this calls
// the forward through the ATen dispatcher (autograd included: the op has a derivative,
// so the backward runs the varlen backward kernel).
#include <ATen/core/Tensor.h>
#include <ATen/ops/_flash_attention_forward.h>

#include <cstring>
#include <exception>
#include <optional>

extern "C" {

// q [total, heads, head_dim], k/v [total, kv_heads, head_dim], cu_seqlens int32
// [segments + 1]; causal within each segment; window_left < 0: no sliding window.
// Returns 0 and a new tensor in *out, or 1 and a malloc'd message in *err.
int janus_flash_varlen_forward(const at::Tensor *q, const at::Tensor *k,
                               const at::Tensor *v, const at::Tensor *cu_seqlens,
                               int64_t max_len, int64_t window_left,
                               at::Tensor **out, char **err) {
  try {
    std::optional<int64_t> left, right;
    if (window_left >= 0) {
      left = window_left;
      right = 0;
    }
    auto r = at::_flash_attention_forward(*q, *k, *v, *cu_seqlens, *cu_seqlens,
                                          max_len, max_len, 0.0, true, false,
                                          std::nullopt, left, right);
    *out = new at::Tensor(std::get<0>(r));
    return 0;
  } catch (const std::exception &e) {
    *err = strdup(e.what());
    return 1;
  }
}
}
