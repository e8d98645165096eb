"""Reference side of the generation tests: Hugging Face `generate` and its logits
processors.

  generate --model DIR --prompts FILE.json --max-new-tokens N
           greedy `generate(do_sample=False)` of the prompts (a JSON list of token-id
           lists of different lengths) as ONE left-padded batch with an attention
           mask, as a user of transformers batches them; prints {"tokens": [[...]]}:
           each row's new tokens up to and including the first EOS
  process  --input FILE.json
           applies transformers' RepetitionPenalty, Temperature, TopK and TopP
           processors, in the order `generate` builds them, to each case of FILE (a
           list of {"logits": [...], "input_ids": [...], "temperature", "top_k",
           "top_p", "repetition_penalty"}); prints {"scores": [[...], ...]} with
           removed tokens as null
"""

import argparse
import json
import math

import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def generate(args):
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    prompts = json.load(open(args.prompts))
    eos = model.config.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=args.max_new_tokens,
            pad_token_id=eos,
            eos_token_id=eos,
        )
    rows = []
    for row in out[:, width:].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        rows.append(row[:cut])
    print(json.dumps({"tokens": rows}))


def process(args):
    rows = []
    for case in json.load(open(args.input)):
        scores = torch.tensor([case["logits"]], dtype=torch.float32)
        input_ids = torch.tensor([case["input_ids"]])
        procs = LogitsProcessorList()
        if case["repetition_penalty"] != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(case["repetition_penalty"]))
        if case["temperature"] != 1.0:
            procs.append(TemperatureLogitsWarper(case["temperature"]))
        if case.get("top_k"):
            procs.append(TopKLogitsWarper(case["top_k"]))
        if case["top_p"] < 1.0:
            procs.append(TopPLogitsWarper(case["top_p"]))
        out = procs(input_ids, scores)[0]
        rows.append([None if math.isinf(v) else v for v in out.tolist()])
    print(json.dumps({"scores": rows}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--model", required=True)
    g.add_argument("--prompts", required=True)
    g.add_argument("--max-new-tokens", type=int, required=True)
    r = sub.add_parser("process")
    r.add_argument("--input", required=True)
    args = p.parse_args()
    generate(args) if args.cmd == "generate" else process(args)


if __name__ == "__main__":
    main()
