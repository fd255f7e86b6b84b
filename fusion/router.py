"""The task router of a fusion: sentence features -> a small MLP -> task probabilities -> top-p weights.

    from dynalora.fusion.router import Router, sentence_features, top_p_weights, train_router
    feats = sentence_features(model, input_ids, attention_mask)      # (B, H), frozen base, no adapters
    probs = router(feats).softmax(-1)                                  # (B, K)
    weights = top_p_weights(probs, p=0.6)                              # (B, K), rows sum to 1

Features. The router reads the mean (over unpadded tokens) of the frozen base model's *input token
embeddings*. That costs one embedding gather and a masked mean, nothing else: any deeper feature
(an early layer's hidden state) runs that layer twice (once without adapters for the router, once
with the fused adapters), which on a 6-layer MiniLM is +17% per layer, above the 1.05x latency target.
benchmarks/fusion.py measures router accuracy for embedding vs layer-1/2 hidden-state features.

Top-p (as DLP-LoRA). Sort tasks by probability; keep the smallest prefix whose mass reaches p (the top
task is always kept); weights are the kept probabilities renormalised to sum to 1. DLP-LoRA's code
(`dlp_lora` inference) instead applies a softmax to the kept *probabilities*, i.e. exp(p_k) / sum exp(p_j):
because probabilities lie in [0, 1] that squashes the weights towards uniform (0.9 / 0.1 becomes
0.69 / 0.31) and gives a task the router is unsure about far more weight than its probability. We
renormalise instead, so a confident router yields (close to) the oracle adapter. The kept set is computed
without a sort (pairwise comparisons, K <= a few dozen), so it exports to ONNX as plain tensor ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dynalora.fusion.config import RouterConfig


def top_p_weights(probs: torch.Tensor, p: float) -> torch.Tensor:
    """(B, K) probabilities -> (B, K) fusion weights: smallest top set with mass >= p, renormalised.

    Task j ranks above task k when p_j > p_k, or p_j == p_k and j < k (ties go to the lower index).
    Task k is kept when the mass strictly above it is < p: the top task (mass above = 0) always is.
    """
    pj, pk = probs.unsqueeze(1), probs.unsqueeze(2)  # (B, 1, K) as j, (B, K, 1) as k
    k_idx = torch.arange(probs.shape[-1], device=probs.device)
    earlier = (k_idx.unsqueeze(0) < k_idx.unsqueeze(1)).unsqueeze(0)  # (1, K, K): [k, j] = j < k
    above = (pj > pk) | ((pj == pk) & earlier)  # (B, K, K): [b, k, j] = j ranks above k
    mass_above = (above.to(probs.dtype) * pj).sum(-1)  # (B, K)
    kept = (mass_above < p).to(probs.dtype)
    w = probs * kept
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


def dlp_lora_weights(probs: torch.Tensor, p: float) -> torch.Tensor:
    """DLP-LoRA's variant, for comparison only: same kept set, then a softmax over the kept probabilities."""
    kept = top_p_weights(probs, p) > 0
    return torch.softmax(probs.masked_fill(~kept, float("-inf")), dim=-1)


def sentence_features(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the base model's input token embeddings over unpadded tokens: (B, H)."""
    return masked_mean(model.get_input_embeddings()(input_ids), attention_mask)


def masked_mean(emb: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, H) token embeddings -> (B, H) mean over the tokens the mask keeps (all, without a mask)."""
    if attention_mask is None:
        return emb.mean(dim=1)
    m = attention_mask.to(emb.dtype).unsqueeze(-1)  # (B, T, 1)
    return (emb * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class Router(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear: features (B, H) -> task logits (B, K)."""

    def __init__(self, in_features: int, num_tasks: int, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_tasks)

    @property
    def num_tasks(self) -> int:
        return self.fc2.out_features

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(self.norm(feats)))))


def train_router(feats: torch.Tensor, labels: torch.Tensor, num_tasks: int, cfg: RouterConfig) -> tuple[Router, list[float]]:
    """Fit a Router on precomputed features (N, H) and task ids (N,); returns (router in eval mode, epoch losses)."""
    cfg.validate()
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # callable from inside no_grad code
        torch.manual_seed(cfg.seed)
        router = Router(feats.shape[-1], num_tasks, cfg.hidden, cfg.dropout)
        opt = torch.optim.AdamW(router.parameters(), lr=cfg.lr, weight_decay=0.01)
        steps = cfg.epochs * max(1, math.ceil(len(feats) / cfg.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        losses = []
        router.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(feats), generator=gen)
            total = 0.0
            for i in range(0, len(feats), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                loss = F.cross_entropy(router(feats[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(feats))
    return router.eval(), losses
