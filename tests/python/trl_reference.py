"""TRL's own DPO, reward and ORPO losses, for the preference-loss tests: the loss and
metric code of TRL 1.16's `DPOTrainer._compute_loss` and `RewardTrainer.compute_loss`,
run unchanged on a stand-in for the trainer object (only the attributes that code
reads) and a stand-in model that returns the given per-token log-probabilities (DPO) or
rewards (reward model); and `trl.experimental.orpo.ORPOTrainer.get_batch_loss_metrics`
(its `concatenated_forward`, `get_batch_logps` and `odds_ratio_loss`) on a real
transformers model.

  dpo    FILE CASES   FILE (safetensors): per_token_logps [2n, t] (0 off the completion),
                      completion_mask [2n, t + 1], mean_logits [2n, t], ref_chosen_logps
                      [n], ref_rejected_logps [n]; CASES: a JSON list of
                      {"loss_type": sigmoid|ipo|hinge|robust, "beta": B, "label_smoothing": L}
  reward CASES        a JSON list of {"file": F, "center": C or null}; F: rewards [2n],
                      optional margin [n]
  orpo MODEL PAIRS CASES
                      MODEL: a MistralForCausalLM directory; PAIRS (JSON): {"pad": id,
                      "pairs": [{"chosen": ids, "rejected": ids, "prompt_len": k}]}, each
                      sequence BOS .. EOS with the shared prompt first; CASES: a JSON list
                      of {"beta", "nll_on_prompt", "lr", "max_grad_norm"}. With
                      nll_on_prompt false (TRL has no such option) the NLL term is the
                      original ORPO code's `disable_prompt_loss`: the same cross-entropy
                      over the chosen response tokens only. Each case also takes one
                      step (clip_grad_norm_ and torch.optim.AdamW, betas (0.9, 0.999),
                      eps 1e-8, no weight decay, as transformers' Trainer) and reports
                      the loss after it.
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
from trl.experimental.orpo import ORPOTrainer


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


def orpo(a):
    from transformers import MistralForCausalLM

    spec = json.load(open(a.pairs))
    pad = spec["pad"]

    def side(name):
        # DPODataCollatorWithPadding: right padding, ids with the pad id, mask 0, labels -100.
        rows = [p[name] for p in spec["pairs"]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (r, p) in enumerate(zip(rows, spec["pairs"])):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            labels[i, p["prompt_len"] : len(r)] = torch.tensor(r[p["prompt_len"] :])
        return {f"{name}_input_ids": ids, f"{name}_attention_mask": mask, f"{name}_labels": labels}

    batch = {**side("chosen"), **side("rejected")}
    out = []
    for case in json.loads(a.cases):
        model = MistralForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
        model.train()
        trainer = ORPOTrainer.__new__(ORPOTrainer)
        trainer.__dict__.update(
            accelerator=Accelerator(),
            is_encoder_decoder=False,
            padding_value=pad,
            aux_loss_enabled=False,
            beta=case["beta"],
        )

        if not case["nll_on_prompt"]:
            # TRL's forward, its NLL term taken over the chosen responses' labels only.
            def response_nll_forward(model, batch):
                out = list(ORPOTrainer.concatenated_forward(trainer, model, batch))
                n = batch["chosen_labels"].shape[0]
                labels = ORPOTrainer.concatenated_inputs(batch, padding_value=pad)["concatenated_labels"][:n, 1:]
                logits = out[2]
                out[4] = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
                return tuple(out)

            trainer.concatenated_forward = response_nll_forward

        def loss_and_metrics():
            return ORPOTrainer.get_batch_loss_metrics(trainer, model, batch)

        loss, metrics = loss_and_metrics()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), case["max_grad_norm"])
        opt = torch.optim.AdamW(model.parameters(), lr=case["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        opt.step()
        with torch.no_grad():
            after, _ = loss_and_metrics()
        out.append({"loss": loss.item(), **metrics, "grad_norm": norm.item(), "loss_after_step": after.item()})
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dpo")
    d.add_argument("file")
    d.add_argument("cases")
    r = sub.add_parser("reward")
    r.add_argument("cases")
    o = sub.add_parser("orpo")
    o.add_argument("model")
    o.add_argument("pairs")
    o.add_argument("cases")
    a = p.parse_args()
    {"dpo": dpo, "reward": reward, "orpo": orpo}[a.cmd](a)


if __name__ == "__main__":
    main()
