#!/usr/bin/env bash
# GPU checks in one go, for a machine with an NVIDIA GPU, PyTorch 2.11 (CUDA 13) and the
# NCCL wheel, but no Rust toolchain: build `janus` elsewhere and bring it along.
#
#   bench/gpu_check.sh [path/to/janus]
#
# 1. a real NCCL communicator at world size 1 (unique id, init, all-reduce of the
#    gradient buckets) driving bf16 training steps on CUDA;
# 2. tokens/s and MFU (6 x params x tokens / peak bf16 FLOP/s) of a ~1.1B-parameter
#    Llama-style model at seq 2048, ours and PyTorch eager (transformers) side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
JANUS=${1:-target/release/janus}
PY=${PYTHON:-python3}
PEAK=${PEAK_TFLOPS:-989}   # H100 / H200 SXM dense bf16
TORCH_LIB=$($PY -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
NCCL_LIB=$($PY -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))')
# cudarc loads `libnccl.so`; the wheel ships only the soname `libnccl.so.2`.
SHIM=$(mktemp -d)
ln -sf "$NCCL_LIB/libnccl.so.2" "$SHIM/libnccl.so"
export LD_LIBRARY_PATH="$SHIM:$TORCH_LIB:$NCCL_LIB:${LD_LIBRARY_PATH:-}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== NCCL (world size 1) + bf16 steps, tiny benchmark model"
"$JANUS" bench-train --nccl --dtype bfloat16 --steps 5 --warmup 2 --peak-tflops "$PEAK"

SHAPE=(--layers 22 --hidden 2048 --intermediate 5632 --heads 32 --kv-heads 4 --vocab 32000 --seq 2048 --batch 4)
echo "== ~1.1B Llama-style, seq 2048, bf16: janus (NCCL all-reduce of every gradient bucket)"
"$JANUS" bench-train --nccl --dtype bfloat16 "${SHAPE[@]}" --steps 10 --warmup 3 --peak-tflops "$PEAK"
echo "== same shape: PyTorch eager (transformers, torch.optim.AdamW)"
$PY bench/train_bench.py --torch-worker --device cuda --bf16 "${SHAPE[@]}" --steps 10 --warmup 3 --peak-tflops "$PEAK"
