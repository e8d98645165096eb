"""Independent computation of the SFT and ORPO losses from fixed tensors.

Reads a safetensors file written by the Rust test (logits, targets, masks) and prints
the losses and TRL-style metrics as JSON, computed in float64 straight from the
formulas in docs/method.md (log_softmax + gather, no code shared with the trainer).
"""

import json
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

IGNORE = -100


def token_logps(logits, targets):
    logp = F.log_softmax(logits.double(), dim=-1)
    safe = targets.clamp(min=0)
    out = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(targets == IGNORE, torch.zeros_like(out), out)


def main():
    t = load_file(sys.argv[1])
    lam = float(sys.argv[2])
    # SFT: summed response-token CE over every micro-batch / response tokens of the step.
    ce_sum, n = 0.0, 0
    for k in sorted(key for key in t if key.startswith("sft_logits_")):
        i = k.rsplit("_", 1)[1]
        targets = t[f"sft_targets_{i}"]
        ce_sum += -token_logps(t[k], targets).sum().item()
        n += int((targets != IGNORE).sum())
    sft = ce_sum / n
    # ORPO (Hong et al. 2024), as TRL's ORPOTrainer: rows 0..P chosen, P..2P rejected.
    lp = token_logps(t["orpo_logits"], t["orpo_targets"])
    resp = t["orpo_response_mask"].double()
    nll_mask = t["orpo_nll_mask"].double()
    mean = (lp * resp).sum(1) / resp.sum(1)
    p = mean.shape[0] // 2
    lw, lr = mean[:p], mean[p:]
    log_odds = (lw - lr) - (torch.log1p(-torch.exp(lw)) - torch.log1p(-torch.exp(lr)))
    ratio = F.logsigmoid(log_odds)
    nll = -(lp * nll_mask).sum() / nll_mask.sum()
    loss = nll - lam * ratio.mean()
    print(json.dumps({
        "sft_loss": sft,
        "orpo_loss": loss.item(),
        "nll_loss": nll.item(),
        "log_odds_ratio": ratio.mean().item(),
        "log_odds_chosen": log_odds.mean().item(),
        "rewards/chosen": lam * lw.mean().item(),
        "rewards/rejected": lam * lr.mean().item(),
        "rewards/accuracies": (lw > lr).double().mean().item(),
    }))


if __name__ == "__main__":
    main()
