"""Reference side of the conformance tests: Hugging Face transformers models.

  make  --arch mistral|llama --out DIR [--shard-kb N] [--sliding-window W] [--vocab V]
        writes a tiny random HF model (odd sizes, GQA) to DIR plus reference.safetensors
        (input_ids [2, 13] and fp32 logits)
  check --model DIR --reference FILE [--tol 1e-4]
        loads DIR (e.g. written by our trainer) with transformers and compares its
        logits on the reference inputs; exits 1 when they differ by more than tol
"""

import argparse
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM


def tiny_config(arch, sliding_window=None, vocab=101):
    common = dict(
        vocab_size=vocab,
        hidden_size=72,
        intermediate_size=100,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "mistral":
        return MistralConfig(rope_theta=1e6, sliding_window=sliding_window, tie_word_embeddings=False, **common)
    return LlamaConfig(rope_theta=10000.0, tie_word_embeddings=True, **common)


def make(args):
    torch.manual_seed(1234)
    cfg = tiny_config(args.arch, args.sliding_window, args.vocab)
    cfg._attn_implementation = "eager"
    cls = MistralForCausalLM if args.arch == "mistral" else LlamaForCausalLM
    model = cls(cfg).float().eval()
    # Non-trivial norms so RMSNorm weights matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    kwargs = {"max_shard_size": f"{args.shard_kb}KB"} if args.shard_kb else {}
    model.save_pretrained(args.out, safe_serialization=True, **kwargs)
    input_ids = torch.randint(0, cfg.vocab_size, (2, 13), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()
    save_file({"input_ids": input_ids, "logits": logits.contiguous()}, f"{args.out}/reference.safetensors")
    print(json.dumps({"arch": args.arch, "params": sum(p.numel() for p in model.parameters())}))


def check(args):
    ref = load_file(args.reference)
    cfg = json.load(open(f"{args.model}/config.json"))
    cls = MistralForCausalLM if cfg["model_type"] == "mistral" else LlamaForCausalLM
    model = cls.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits.float()
    diff = (logits - ref["logits"]).abs().max().item()
    print(json.dumps({"max_abs_diff": diff}))
    sys.exit(0 if diff <= args.tol else 1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--arch", choices=["mistral", "llama"], required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--shard-kb", type=int, default=0)
    m.add_argument("--sliding-window", type=int, default=None)
    m.add_argument("--vocab", type=int, default=101)
    c = sub.add_parser("check")
    c.add_argument("--model", required=True)
    c.add_argument("--reference", required=True)
    c.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    make(args) if args.cmd == "make" else check(args)


if __name__ == "__main__":
    main()
