"""The fused model: K task adapters on one base model, mixed per example by a router, in one forward.

    fusion = dynalora.load_fusion("fuse/"); out = fusion.model(**fusion.tokenizer(texts, ...))

The stacked layer. Each adapted layer holds the K adapters' compacted factors stacked on the rank axis,

    A = [A_1; ...; A_K]  (R, in)      B = [s_1 B_1, ..., s_K B_K]  (out, R)      R = sum_k r_k
    y = base(x) + ((x A^T) * w[:, owner]) B^T            w: (B, K) per-example fusion weights

where owner[i] = the adapter that rank component i belongs to and s_k the adapter's scaling. This equals
sum_k w_k s_k B_k A_k x exactly (up to float summation order), costs one A and one B product whatever K
is, and lets every example of a batch have its own routing. Ranks may differ per adapter and per layer
(dynamic training); a layer an adapter pruned to rank 0 simply contributes no components.

Heads. Every task keeps its own classifier: the K heads are one Linear (H -> sum_k C_k), applied to the
representation computed with the fused adapters, so all tasks' logits come out of one matmul (`all_logits`,
task k in `label_slices[k]`). `logits` is the answer of the router's top-1 task: `all_logits` with every
other task's columns set to -1e4, so argmax / softmax over it give that task's label and probabilities
(the export's label names are "task:label"). "Fused accuracy on task t" reads task t's slice.

`build_fused_model(specs, router, top_p)` loads the shared base once and stacks every adapter into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynalora.errors import CheckpointError, DynaloraError
from dynalora.core.inject import HEAD_NAMES
from dynalora.core.layer import base_shape
from dynalora.fusion.adapters import AdapterSpec, FusionError, check_compatible
from dynalora.fusion.config import check_p
from dynalora.fusion.router import Router, sentence_features, top_p_weights

MASKED_LOGIT = -1e4  # logits of tasks other than the top-1 in `logits`


# ---- the stacked layer ----------------------------------------------------------------------------
class FusionContext:
    """Per-forward state shared by all fused layers: the (B, K) fusion weights."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None


class FusedLoRALayer(nn.Module):
    """A frozen base layer plus K adapters stacked along the rank axis (see the module docstring)."""

    def __init__(self, base: nn.Module, a: list[torch.Tensor], b: list[torch.Tensor], context: FusionContext,
                 name: str = "") -> None:
        super().__init__()
        self.in_features, self.out_features, _ = base_shape(base)
        self.base, self.context, self.name = base, context, name
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.ranks = [int(x.shape[0]) for x in a]
        for k, (ak, bk) in enumerate(zip(a, b, strict=True)):
            if ak.shape != (self.ranks[k], self.in_features) or bk.shape != (self.out_features, self.ranks[k]):
                raise FusionError(f"adapter {k} at {name} has A {tuple(ak.shape)} / B {tuple(bk.shape)}, which do not "
                                  f"fit the base layer ({self.in_features} -> {self.out_features})")
        w = base.weight
        self.register_buffer("lora_A", torch.cat(a, 0).to(w.dtype))  # (R, in)
        self.register_buffer("lora_B", torch.cat(b, 1).to(w.dtype))  # (out, R), scaling folded in
        owner = torch.cat([torch.full((r,), k, dtype=torch.long) for k, r in enumerate(self.ranks)])
        self.register_buffer("owner", owner)  # (R,) adapter index of each rank component
        self.loop = False  # True: the naive per-adapter reference (benchmarks, tests)
        self._wc_cache: tuple | None = None  # (key, weights tensor, component weights): see _component_weights

    @property
    def num_adapters(self) -> int:
        return len(self.ranks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if sum(self.ranks) == 0:
            return y
        w = self.context.weights  # (B, K)
        if w is None:
            if self.num_adapters != 1:
                raise RuntimeError("FusedLoRALayer needs fusion weights: call it through FusedModel")
            return y + F.linear(F.linear(x, self.lora_A), self.lora_B)  # one plain adapter (the baseline)
        if self.loop:
            return y + self.loop_delta(x, w)
        wc = self._component_weights(w, x.dim())
        h = F.linear(x, self.lora_A) * wc  # (B, T, R)
        return y + F.linear(h, self.lora_B)  # (B, T, out)

    def _component_weights(self, w: torch.Tensor, dims: int) -> torch.Tensor:
        """(B, [1,] R): each rank component's adapter weight. Generation holds one weights tensor for every
        decoding step, so it is computed once per tensor (and version) and reused; traced / exported graphs
        recompute it (the cache is eager-mode only)."""
        key = (id(w), w._version, dims)
        if self._wc_cache is not None and self._wc_cache[0] == key and self._wc_cache[1] is w \
                and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            return self._wc_cache[2]
        wc = w.index_select(1, self.owner)  # (B, R): each component scaled by its adapter's weight
        for _ in range(dims - 2):
            wc = wc.unsqueeze(1)  # (B, 1, R): unsqueeze, not view, keeps the exported graph to one node
        self._wc_cache = (key, w, wc)
        return wc

    def loop_delta(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_k w_k * B_k A_k x, adapter by adapter (DLP-LoRA's loop): the reference the stack must equal."""
        out = torch.zeros(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
        start = 0
        for k, r in enumerate(self.ranks):
            a, b = self.lora_A[start : start + r], self.lora_B[:, start : start + r]
            wk = w[:, k].view(w.shape[0], *([1] * (x.dim() - 1)))  # (B, 1, 1)
            out = out + wk * F.linear(F.linear(x, a), b)
            start += r
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, ranks={self.ranks}"



# ---- the fused model ------------------------------------------------------------------------------
@dataclass
class FusedOutput:
    logits: torch.Tensor  # (B, sum C): top-1 task's columns, others MASKED_LOGIT
    all_logits: torch.Tensor  # (B, sum C): every task's head on the fused representation
    router_probs: torch.Tensor  # (B, K)
    fusion_weights: torch.Tensor  # (B, K) top-p, renormalised


class FusedModel(nn.Module):
    """Base model with stacked adapters, a concatenated multi-task head, and (optionally) a router."""

    def __init__(self, model: nn.Module, context: FusionContext, router: Router | None, top_p: float,
                 task_names: list[str], label_names: list[list[str]]) -> None:
        super().__init__()
        self.model, self.context, self.router = model, context, router
        self.top_p = check_p(top_p)
        self.task_names = list(task_names)
        self.label_names = [list(n) for n in label_names]
        sizes = [len(n) for n in self.label_names]
        self.label_slices = [(sum(sizes[:k]), sum(sizes[: k + 1])) for k in range(len(sizes))]
        owner = torch.cat([torch.full((c,), k, dtype=torch.long) for k, c in enumerate(sizes)])
        self.register_buffer("label_owner", owner, persistent=False)  # (sum C,) task of each output column
        self.problem = "classification" if sum(sizes) else "multiple_choice"  # causal LM, no heads (set_problem)

    def set_problem(self, problems: list[str]) -> None:
        """A causal-LM fusion's kind from its tasks': multiple_choice, generation, or mixed (both)."""
        kinds = set(problems)
        self.problem = problems[0] if len(kinds) == 1 else "mixed"

    @property
    def causal(self) -> bool:
        """True when a causal LM answers (multiple-choice scores or generation) rather than task heads."""
        return self.problem != "classification"

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def layers(self) -> dict[str, FusedLoRALayer]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, FusedLoRALayer)}

    def set_loop(self, loop: bool) -> None:
        for layer in self.layers().values():
            layer.loop = loop

    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.router is None:
            raise FusionError("this fused model has no router: pass fusion_weights explicitly")
        return self.router(sentence_features(self.model, input_ids, attention_mask)).softmax(-1)  # (B, K)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, fusion_weights: torch.Tensor | None = None) -> FusedOutput:
        """Route (unless `fusion_weights` (B, K) is given: e.g. one-hot = the oracle adapter) and run."""
        if self.causal:
            raise FusionError("this fusion answers with a causal LM: call score_choices(...) or generate(...)")
        single = fusion_weights is None and self.router is None and self.num_tasks == 1
        if single:  # one plain adapter, no router: the benchmarks' baseline
            probs = weights = torch.ones(input_ids.shape[0], 1)
        else:
            probs, weights = self._weights(input_ids, attention_mask, fusion_weights)
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        self.context.weights = None if single else weights
        try:
            all_logits = self.model(**kwargs).logits  # (B, sum C)
        finally:
            self.context.weights = None
        top1 = probs.argmax(-1)  # (B,)
        selected = self.label_owner.unsqueeze(0) == top1.unsqueeze(1)  # (B, sum C)
        logits = all_logits.masked_fill(~selected, MASKED_LOGIT)
        return FusedOutput(logits=logits, all_logits=all_logits, router_probs=probs, fusion_weights=weights)

    def _weights(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 fusion_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if fusion_weights is None:
            probs = self.route(input_ids, attention_mask)
            return probs, top_p_weights(probs, self.top_p)
        if fusion_weights.shape != (input_ids.shape[0], self.num_tasks):
            raise FusionError(f"fusion_weights must be (batch, {self.num_tasks}) for tasks {self.task_names}, got "
                              f"{tuple(fusion_weights.shape)}: a router routes only to the adapters it was trained with")
        w = fusion_weights.to(torch.float32)
        return w, w

    def score_choices(self, choices: dict[str, torch.Tensor], route_ids: torch.Tensor,
                      route_mask: torch.Tensor | None = None, fusion_weights: torch.Tensor | None = None) -> FusedOutput:
        """Multiple choice (core/choice.py): route each example on its input text, then score all its options.

        `choices` is encode_choices(...) of the examples; route_ids / route_mask their input texts. Every
        option row of example b runs with example b's fusion weights, so one batch mixes tasks freely.
        `logits` and `all_logits` are the (B, C) option scores.
        """
        from dynalora.core.choice import ChoiceScorer

        single = fusion_weights is None and self.router is None and self.num_tasks == 1
        if single:  # one plain adapter, no router: the benchmarks' baseline
            probs = weights = torch.ones(route_ids.shape[0], 1)
        else:
            probs, weights = self._weights(route_ids, route_mask, fusion_weights)
        self.context.weights = None if single else weights.index_select(0, choices["row_example"])  # (rows, K)
        try:
            out = ChoiceScorer(self.model)(**{k: v for k, v in choices.items() if k != "labels"})
        finally:
            self.context.weights = None
        return FusedOutput(logits=out.logits, all_logits=out.logits, router_probs=probs, fusion_weights=weights)

    def generate(self, tokenizer: Any, prompts: list[list[int]], route_ids: torch.Tensor,
                 route_mask: torch.Tensor | None = None, fusion_weights: torch.Tensor | None = None, *,
                 max_new_tokens: int = 64, stop: list[str] | None = None) -> tuple[list[list[int]], torch.Tensor]:
        """Greedy generation with the fused adapters: route each prompt once (on its input text, route_ids /
        route_mask), then keep its (top-p, renormalised) weights for every generated token.

        prompts: the tokenised prompts (core/generate.py prompt_ids); returns (new token ids per prompt, (B, K)
        fusion weights). One-hot weights give the oracle adapter, zeros the base model."""
        from dynalora.core.generate import generate_ids

        single = fusion_weights is None and self.router is None and self.num_tasks == 1
        with torch.no_grad():  # routing is inference: the returned weights carry no autograd graph
            weights = torch.ones(len(prompts), 1) if single else self._weights(route_ids, route_mask, fusion_weights)[1]

        def set_weights(ids: torch.Tensor, mask: torch.Tensor) -> None:
            self.context.weights = None if single else weights.to(ids.device)

        try:
            new = generate_ids(self.model, tokenizer, prompts, max_new_tokens, stop, before=set_weights)
        finally:
            self.context.weights = None
        return new, weights

    def task_logits(self, out: FusedOutput, task: int) -> torch.Tensor:
        if self.causal:
            return out.logits
        lo, hi = self.label_slices[task]
        return out.all_logits[:, lo:hi]


class FusedGraph(nn.Module):
    """Keyword-free wrapper of a FusedModel returning the graph outputs as a tuple (for export)."""

    def __init__(self, fused: FusedModel) -> None:
        super().__init__()
        self.fused = fused

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        out = self.fused(input_ids, attention_mask, token_type_ids)
        return out.logits, out.all_logits, out.router_probs, out.fusion_weights


def _head_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    for head in HEAD_NAMES:
        module = getattr(model, head, None)
        if isinstance(module, nn.Linear):
            return head, module
        if module is not None:
            raise FusionError(f"task head {head} is a {type(module).__name__}; fusion supports single-Linear heads "
                              "(BERT classifier, Llama/Qwen/GPT-2 score)")
    raise FusionError(f"{type(model).__name__} has no task head ({', '.join(HEAD_NAMES)})")


def build_fused_model(specs: list[AdapterSpec], router: Router | None, top_p: float, *, seed: int = 0) -> FusedModel:
    """Load the shared base once, stack every adapter into it and concatenate the heads."""
    from dynalora.core.models import load_task_model

    if len(specs) > 1:  # a single adapter (K = 1) is the benchmarks' baseline
        check_compatible(specs)
    choice = specs[0].problem in ("multiple_choice", "generation")  # a causal LM: no task heads
    total = sum(len(s.label_names) for s in specs)
    try:  # head_restored: the heads are copied in below
        model = load_task_model(str(specs[0].info["base_model"]), total, specs[0].problem, seed=seed,
                                head_restored=True)
    except DynaloraError as exc:
        raise FusionError(f"cannot load the base model of {specs[0].path}: {exc}") from None
    context = FusionContext()
    for module in specs[0].ranks:
        parent_name, _, leaf = module.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, leaf)
        in_f, out_f, _ = base_shape(base)
        a, b = [], []
        for s in specs:
            ak, bk = s.factors(module)
            a.append(ak if ak.numel() else torch.zeros(0, in_f))
            b.append(bk if bk.numel() else torch.zeros(out_f, 0))
        setattr(parent, leaf, FusedLoRALayer(base, a, b, context, name=module))
    if choice:  # causal-LM multiple choice: no task heads, the LM head scores the options
        for prm in model.parameters():
            prm.requires_grad_(False)
        fused = FusedModel(model.eval(), context, router, top_p, [s.name for s in specs], [[] for _ in specs])
        fused.set_problem([s.problem for s in specs])
        return fused.eval()
    head_name, head = _head_linear(model)
    with torch.no_grad():
        parts = [s.head(head_name) for s in specs]
        for s, part in zip(specs, parts, strict=True):
            if part.get("weight") is None or part["weight"].shape != (len(s.label_names), head.in_features):
                raise CheckpointError(f"adapter {s.path} has no {head_name} head of shape ({len(s.label_names)}, "
                                      f"{head.in_features})")
        head.weight.copy_(torch.cat([part["weight"] for part in parts], 0))
        if head.bias is not None:
            head.bias.copy_(torch.cat([part.get("bias", torch.zeros(len(s.label_names)))
                                       for s, part in zip(specs, parts, strict=True)]))
    for prm in model.parameters():
        prm.requires_grad_(False)
    fused = FusedModel(model.eval(), context, router, top_p, [s.name for s in specs], [s.label_names for s in specs])
    return fused.eval()
