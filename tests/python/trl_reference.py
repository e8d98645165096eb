"""TRL's own DPO and reward losses on tensors our tests computed, for the
preference-loss tests: the loss and metric code of TRL 1.16's `DPOTrainer._compute_loss`
and `RewardTrainer.compute_loss`, run unchanged on a stand-in for the trainer object
(only the attributes that code reads) and a stand-in model that returns the given
per-token log-probabilities (DPO) or rewards (reward model).

  dpo    FILE CASES   FILE (safetensors): per_token_logps [2n, t] (0 off the completion),
                      completion_mask [2n, t + 1], mean_logits [2n, t], ref_chosen_logps
                      [n], ref_rejected_logps [n]; CASES: a JSON list of
                      {"loss_type": sigmoid|ipo|hinge|robust, "beta": B, "label_smoothing": L}
  reward CASES        a JSON list of {"file": F, "center": C or null}; F: rewards [2n],
                      optional margin [n]
Prints a JSON list of {"loss": ..., metric: ...}, one per case (one process: importing
TRL takes seconds).
"""

import argparse
import json
from collections import defaultdict
from types import SimpleNamespace

import torch
from safetensors.torch import load_file
from trl import DPOTrainer, RewardTrainer


class Accelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x


def stub(**attrs):
    base = dict(
        model=SimpleNamespace(training=True),
        accelerator=Accelerator(),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    base.update(attrs)
    return SimpleNamespace(**base)


def dpo(a):
    print(json.dumps([dpo_case(a.file, c) for c in json.loads(a.cases)]))


def dpo_case(file, case):
    t = load_file(file)
    logps = t["per_token_logps"].double()
    mask = t["completion_mask"].long()
    rows, width = mask.shape
    outputs = SimpleNamespace(
        log_probs=logps,
        entropy=torch.zeros_like(logps),
        mean_logits=t["mean_logits"].double(),
        is_top1=torch.zeros_like(logps, dtype=torch.bool),
        aux_loss=None,
    )
    self = stub(
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[case["loss_type"]],
        loss_weights=[1.0],
        beta=case["beta"],
        label_smoothing=case["label_smoothing"],
        use_weighting=False,
    )
    inputs = {
        "input_ids": torch.zeros((rows, width), dtype=torch.long),
        "attention_mask": torch.ones((rows, width), dtype=torch.long),
        "completion_mask": mask,
        "ref_chosen_logps": t["ref_chosen_logps"].double(),
        "ref_rejected_logps": t["ref_rejected_logps"].double(),
    }
    loss = DPOTrainer._compute_loss(self, lambda **kw: outputs, inputs, False)
    out = {"loss": float(loss)}
    out.update({k: v[-1] for k, v in self._metrics["train"].items() if k.startswith(("rewards/", "logps/", "logits/"))})
    return out


def reward(a):
    print(json.dumps([reward_case(c) for c in json.loads(a.cases)]))


def reward_case(case):
    t = load_file(case["file"])
    rewards = t["rewards"].double().view(-1, 1)
    rows = rewards.shape[0]
    self = stub(args=SimpleNamespace(center_rewards_coefficient=case["center"]))
    inputs = {"input_ids": torch.zeros((rows, 1), dtype=torch.long), "attention_mask": torch.ones((rows, 1), dtype=torch.long)}
    if "margin" in t:
        inputs["margin"] = t["margin"].double()
    loss = RewardTrainer.compute_loss(self, lambda **kw: SimpleNamespace(logits=rewards), inputs)
    out = {"loss": float(loss)}
    out.update({k: v[-1] for k, v in self._metrics["train"].items() if k != "num_tokens"})
    return out


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dpo")
    d.add_argument("file")
    d.add_argument("cases")
    r = sub.add_parser("reward")
    r.add_argument("cases")
    a = p.parse_args()
    {"dpo": dpo, "reward": reward}[a.cmd](a)


if __name__ == "__main__":
    main()
