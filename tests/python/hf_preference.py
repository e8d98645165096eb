"""transformers' side of the preference tests.

  seqlogps --model DIR --file F    F: input_ids [rows, t], targets [rows, t] (-100: none),
                                   response_mask [rows, t]; prints each row's response
                                   log-probability summed over its tokens (a full forward
                                   of MistralForCausalLM / LlamaForCausalLM, fp32)
  rewards  --model DIR --file F    F: input_ids [rows, t] right-padded with the config's
                                   pad_token_id; prints the rewards of
                                   *ForSequenceClassification loaded from DIR
"""

import argparse
import json

import torch
from safetensors.torch import load_file
from transformers import (
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    MistralForCausalLM,
    MistralForSequenceClassification,
)


def family(model_dir):
    return json.load(open(f"{model_dir}/config.json"))["model_type"]


def seqlogps(a):
    t = load_file(a.file)
    cls = MistralForCausalLM if family(a.model) == "mistral" else LlamaForCausalLM
    model = cls.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(input_ids=t["input_ids"]).logits.double()
    logp = torch.log_softmax(logits, dim=-1)
    targets = t["targets"].clamp(min=0)
    tok = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = (tok * t["response_mask"].double()).sum(dim=1)
    print(json.dumps(out.tolist()))


def rewards(a):
    t = load_file(a.file)
    cls = MistralForSequenceClassification if family(a.model) == "mistral" else LlamaForSequenceClassification
    model = cls.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=t["input_ids"]).logits.view(-1)
    print(json.dumps(out.tolist()))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ["seqlogps", "rewards"]:
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--file", required=True)
    a = p.parse_args()
    {"seqlogps": seqlogps, "rewards": rewards}[a.cmd](a)


if __name__ == "__main__":
    main()
