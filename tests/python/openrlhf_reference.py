"""An OpenRLHF reward checkpoint, and its rewards as the original best-of-N computes them.

The model class is OpenRLHF's `_get_reward_model` as Janus-RM was trained with it
(OpenRLHF of 2024-05, `openrlhf/models/model.py`, `LLMForSequenceRegression`, copied in
kaistAI/Janus `utils/models/reward_model.py`): the base model under its
`base_model_prefix` (`model`), a linear `value_head` (`[1, hidden]`, no bias), the value
read at each row's last attended position, and in eval mode with `normalize_reward`
`(reward - mean) / std` from config.json.

  save    --base DIR --out DIR --mean M --std S
          DIR: a causal LM (its body becomes the reward model's); writes what OpenRLHF's
          `strategy.save_model` writes after `get_llm_for_sequence_regression(...,
          init_value_head=True)` and the reward trainer's evaluation: `save_pretrained`
          (safetensors `model.*` + `value_head.weight`), config.json with
          `normalize_reward` false (the training default), `mean` and `std`; the
          tokenizer files copied
  rewards --model DIR --file F
          F (JSON): a list of token-id lists; left-padded with the pad id and attention
          mask as `run_inference.py`'s `CandidateCompletions.collate_fn` does, scored as
          `run_inference.py` loads the model (`normalize_reward=True`); prints the rewards
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModel


def reward_model_class(config):
    base_llm_model = AutoModel._model_mapping[type(config)]
    base_pretrained_model = base_llm_model.__base__

    class LLMForSequenceRegression(base_pretrained_model):
        supports_gradient_checkpointing = True

        def __init__(self, config):
            super().__init__(config)
            setattr(self, self.base_model_prefix, base_llm_model(config))
            self.value_head = nn.Linear(config.hidden_size, 1, bias=False)
            self.normalize_reward = config.normalize_reward
            self.register_buffer("mean", torch.zeros(1), persistent=False)
            self.register_buffer("std", torch.ones(1), persistent=False)
            if hasattr(config, "mean"):
                self.mean[0] = config.mean
                self.std[0] = config.std
            # transformers 5 needs it before from_pretrained finishes loading (OpenRLHF
            # added the same call).
            self.post_init()

        def forward(self, input_ids, attention_mask):
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            outputs = getattr(self, self.base_model_prefix)(
                input_ids, attention_mask=attention_mask, position_ids=position_ids
            )
            values = self.value_head(outputs["last_hidden_state"]).squeeze(-1)
            if self.training:
                reward = values[:, -1]
            else:
                eos_indices = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
                reward = values.gather(dim=1, index=eos_indices).squeeze(1)
                if self.normalize_reward:
                    reward = (reward - self.mean) / self.std
            return reward

    return LLMForSequenceRegression


def save(a):
    config = AutoConfig.from_pretrained(a.base)
    config.normalize_reward = False
    cls = reward_model_class(config)
    model = cls.from_pretrained(a.base, config=config, dtype=torch.float32)
    torch.manual_seed(0)
    # init_value_head: normal(0, 1 / (hidden + 1)).
    model.value_head.weight.data.normal_(mean=0.0, std=1 / (config.hidden_size + 1))
    model.config.mean = a.mean
    model.config.std = a.std
    out = Path(a.out)
    model.save_pretrained(out)
    model.config.to_json_file(out / "config.json")
    for f in Path(a.base).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)


def rewards(a):
    config = AutoConfig.from_pretrained(a.model)
    config.normalize_reward = True
    model = reward_model_class(config).from_pretrained(a.model, config=config, dtype=torch.float32).eval()
    # transformers 5 builds the model on the meta device, so the non-persistent
    # buffers __init__ filled come back uninitialised: set them again from config.json.
    model.mean.fill_(config.mean)
    model.std.fill_(config.std)
    rows = json.load(open(a.file))
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    with torch.no_grad():
        out = model(ids, mask)
    print(json.dumps(out.double().tolist()))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("--base", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--mean", type=float, required=True)
    s.add_argument("--std", type=float, required=True)
    r = sub.add_parser("rewards")
    r.add_argument("--model", required=True)
    r.add_argument("--file", required=True)
    a = p.parse_args()
    {"save": save, "rewards": rewards}[a.cmd](a)


if __name__ == "__main__":
    main()
