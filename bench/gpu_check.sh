#!/usr/bin/env bash
# GPU checks in one go, for a machine with an NVIDIA GPU, PyTorch 2.11 (CUDA 13) and the
# NCCL wheel, but no Rust toolchain: `make gpu-bundle` elsewhere writes target/gpu/
# (`janus` and the CUDA test binary of trainer/tests/gpu.rs, stripped and gzipped, ~25 MB
# together; the device tool carries at most 64 MiB of working tree). Under 5 minutes on
# an H100.
#
#   bench/gpu_check.sh [bundle dir]            # default target/gpu
#
# 0. the device tests (gpu-tests --ignored): NCCL loaded by its soname, every datatype
#    through each collective, device timing by events, the watchdog ending a stalled
#    collective and an init whose peer never joins (exit 75); flash varlen attention
#    against segment-by-segment outputs and gradients; ZeRO-1 over NCCL against
#    replicated steps. Any failure stops the script;
# 1. NCCL for real at world size 1: reduce-scatter and all-gather checked against their
#    definitions, all-reduce timed (algorithm bandwidth; bus bandwidth needs 2+ GPUs);
# 2. the recipe's shape: 4 layers of Mistral-7B (hidden 4096, 14336, 32/8 heads, vocab
#    32000), bf16 + fp32 master weights + gradient checkpointing + packed rows through
#    flash attention's varlen kernel + ZeRO-1 through a real NCCL communicator, seq 8192
#    x micro batch 2: tokens/s, MFU and peak device memory next to the memory plan.
#    Fails when the varlen kernel did not run (another kernel, or any fallback call);
#    then the same with the collectives overlapped, and once with the device
#    synchronised at each phase boundary for the phases' device times;
# 3. a ~1.1B Llama-style model at seq 2048 in bf16, ours and PyTorch eager (transformers)
#    side by side, both synchronising at phase boundaries: tokens/s, MFU (one formula,
#    trainer/src/metrics.rs), peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-target/gpu}
PY=${PYTHON:-python3}
PEAK=${PEAK_TFLOPS:-989}   # H100 / H200 SXM dense bf16
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
BIN=$(mktemp -d)
for b in janus gpu-tests; do
  if [ -f "$BUNDLE/$b.gz" ]; then gunzip -c "$BUNDLE/$b.gz" > "$BIN/$b"; else cp "$BUNDLE/$b" "$BIN/$b"; fi
  chmod +x "$BIN/$b"
done
JANUS=$BIN/janus
# libtorch from this machine's PyTorch; libtorch_cuda finds the NCCL wheel's
# libnccl.so.2 through its own RPATH, and the trainer opens it by that name.
TORCH_LIB=$($PY -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# Peak device memory of a command: nvidia-smi sampled every 100 ms while it runs.
peak_mem() {
  local log=$OUT/mem-$1.log; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log" &
  local smi=$!
  "$@"; local rc=$?
  kill "$smi" 2>/dev/null || true; wait "$smi" 2>/dev/null || true
  echo "peak_device_memory_mib=$(sort -n "$log" | tail -1)"
  return $rc
}

echo "== 0. device tests: NCCL, watchdog, device timing, varlen attention, ZeRO-1"
"$BIN/gpu-tests" --ignored --test-threads 1 2>&1 | tee "$OUT/gpu-tests.log"

echo "== 1. NCCL at world size 1: reduce-scatter / all-gather checked, all-reduce timed"
"$JANUS" launch --nproc 1 -- bench-allreduce --nccl --sizes-mib 16,64,256 | tee "$OUT/nccl.jsonl"

RECIPE=(--layers 4 --hidden 4096 --intermediate 14336 --heads 32 --kv-heads 8 --vocab 32000
        --seq 8192 --batch 2 --packed 4 --dtype bfloat16 --checkpointing)
echo "== 2. recipe shape: 4 Mistral-7B layers, bf16 + fp32 master + checkpointing + varlen packing + ZeRO-1 over NCCL"
peak_mem recipe "$JANUS" bench-train --nccl --zero "${RECIPE[@]}" --steps 5 --warmup 2 --peak-tflops "$PEAK" \
  | tee "$OUT/recipe.json"
$PY - "$OUT/recipe.json" <<'EOF'
import json, sys
r = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
if r["attention_kernel"] != "flash-varlen" or r["attention_fallback_calls"] != 0:
    sys.exit(f"FAIL: packed rows ran {r['attention_kernel']} with {r['attention_fallback_calls']} fallback calls, not flash varlen")
print(f"varlen attention ran: {r['attention_kernel']}, no fallback")
EOF

echo "== 2b. the same with the collectives overlapped (distributed.overlap)"
peak_mem recipe-overlap "$JANUS" bench-train --nccl --zero --overlap "${RECIPE[@]}" --steps 5 --warmup 2 --peak-tflops "$PEAK" \
  | tee "$OUT/recipe-overlap.json"

echo "== 2c. recipe shape, the device synchronised at each phase boundary: the phases' device time"
"$JANUS" bench-train --nccl --zero --sync-phases "${RECIPE[@]}" --steps 3 --warmup 1 --peak-tflops "$PEAK" \
  | tee "$OUT/recipe-phases.json"

SHAPE=(--layers 22 --hidden 2048 --intermediate 5632 --heads 32 --kv-heads 4 --vocab 32000 --seq 2048 --batch 4)
echo "== 3a. ~1.1B Llama-style, seq 2048, bf16 + fp32 master: janus"
peak_mem janus1b "$JANUS" bench-train --nccl --sync-phases --dtype bfloat16 "${SHAPE[@]}" --steps 10 --warmup 3 --peak-tflops "$PEAK" \
  | tee "$OUT/janus-1b.json"
echo "== 3b. same shape: PyTorch eager (transformers, bf16 weights, torch.optim.AdamW)"
peak_mem torch1b $PY bench/train_bench.py --torch-worker --device cuda --bf16 "${SHAPE[@]}" --steps 10 --warmup 3 --peak-tflops "$PEAK" \
  | tee "$OUT/torch-1b.json"
echo "results in $OUT"
