"""Multiple choice with a causal LM: every answer option is scored by its log-likelihood.

    batch = encode_choices(tokenizer, spec, examples, max_length=128)
    out = ChoiceScorer(causal_lm)(**batch)        # out.logits (B, C), out.loss (cross-entropy)

Scoring. For example b with prompt x_b = prefix + text (+ "\\n" + text_pair) + suffix and options
o_1..o_n, the logit of option j is its mean token log-likelihood

    s_bj = (1 / |o_j|) * sum_t log p(o_j,t | x_b, o_j,<t)          (option tokenised as " " + o_j)

and the prediction is argmax_j s_bj (BIG-bench's multiple_choice_grade, with per-token length
normalisation so long options are not penalised for their length). Training minimises the
cross-entropy of softmax_j(s_bj) against the right option: it optimises exactly the score used for
evaluation, and it needs no answer head, so the adapter stays a plain causal-LM adapter (mergeable,
PEFT task type CAUSAL_LM).

Layout. Each (example, option) pair is one row: the prompt's tokens (left-truncated if needed, the
option is never cut) then the option's tokens, right-padded. Only rows that exist are computed (a
2-option example next to a 5-option one costs 2 rows, not 5); `row_example` / `row_choice` put the
row scores back into a (B, C) matrix whose missing options hold MISSING (-1e4). The LM head runs only on
the hidden states that predict option tokens, never on the whole (rows x length x vocabulary) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynalora.core.data import Example, TaskSpec
from dynalora.errors import ConfigError

MISSING = -1e4  # logit of an option an example does not have
OPTION_PREFIX = " "


def prompt_text(spec: TaskSpec, example: Example) -> str:
    prefix, suffix = spec.prompt
    body = example.text.strip() if example.text_pair is None else f"{example.text.strip()}\n{example.text_pair.strip()}"
    return f"{prefix}{body}{suffix}".rstrip()


def encode_choices(tokenizer: Any, spec: TaskSpec, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    """Rows for every (example, option): input_ids, attention_mask, target_mask (option tokens) and the index maps."""
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2 to hold a prompt token and an option token, got {max_length}")
    rows: list[list[int]] = []
    targets: list[int] = []  # number of option tokens at the end of each row
    row_example: list[int] = []
    row_choice: list[int] = []
    for b, e in enumerate(examples):
        if not e.choices:
            raise ConfigError(f"example {e.text[:40]!r} has no answer options: multiple choice needs them")
        prompt = tokenizer(prompt_text(spec, e), add_special_tokens=True)["input_ids"]
        for j, option in enumerate(e.choices):
            opt = tokenizer(OPTION_PREFIX + option.strip(), add_special_tokens=False)["input_ids"][: max_length - 1]
            keep = max_length - len(opt)
            rows.append(prompt[-keep:] + opt)  # the prompt loses its start, never the option
            targets.append(len(opt))
            row_example.append(b)
            row_choice.append(j)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, n) in enumerate(zip(rows, targets, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        target[i, len(r) - n : len(r)] = True
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "target_mask": target,
        "row_example": torch.tensor(row_example),
        "row_choice": torch.tensor(row_choice),
        "labels": torch.tensor([int(e.label) for e in examples]),
        "num_choices": torch.tensor([len(e.choices or ()) for e in examples]),
    }


@dataclass
class ChoiceOutput:
    logits: torch.Tensor  # (B, C) mean option log-likelihoods; MISSING where an example has fewer options
    loss: torch.Tensor | None


def _body_and_head(lm: nn.Module) -> tuple[nn.Module, nn.Module]:
    prefix = getattr(lm, "base_model_prefix", "")
    body = getattr(lm, prefix, None) if prefix else None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if body is None or head is None or body is lm:
        raise ConfigError(f"{type(lm).__name__} is not a causal LM with an output head: multiple-choice scoring and "
                          "generation need one (e.g. --model smollm2-135m); use --objective classifier for an encoder")
    return body, head


def option_scores(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  target_mask: torch.Tensor) -> torch.Tensor:
    """(rows,) mean log-likelihood of each row's option tokens under `lm`."""
    body, head = _body_and_head(lm)
    ctx = getattr(lm, "dynalora_context", None)
    if ctx is not None:  # the adapters' input statistics skip padding (the LM's own pre-hook is bypassed here)
        ctx.attention_mask = attention_mask
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, T, H)
    predict = target_mask[:, 1:]  # position t-1 predicts token t
    h = hidden[:, :-1][predict]  # (n_tokens, H)
    tokens = input_ids[:, 1:][predict]  # (n_tokens,)
    logp = F.log_softmax(head(h).float(), dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1)
    row = predict.nonzero()[:, 0]
    sums = torch.zeros(input_ids.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, row, logp)
    return sums / predict.sum(1).clamp_min(1).to(logp.dtype)


def choice_matrix(row_scores: torch.Tensor, row_example: torch.Tensor, row_choice: torch.Tensor,
                  num_examples: int, num_columns: int) -> torch.Tensor:
    logits = torch.full((num_examples, num_columns), MISSING, dtype=row_scores.dtype, device=row_scores.device)
    return logits.index_put((row_example, row_choice), row_scores)


class ChoiceScorer(nn.Module):
    """Wraps a causal LM (no parameters of its own): forward(**encode_choices(...)) -> ChoiceOutput.

    The training loop runs this module (so DDP sees one forward); checkpoints and adapters are saved
    from the wrapped LM, whose parameter names are untouched.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        _body_and_head(lm)
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor,
                row_example: torch.Tensor, row_choice: torch.Tensor, labels: torch.Tensor | None = None,
                num_choices: torch.Tensor | None = None) -> ChoiceOutput:
        scores = option_scores(self.lm, input_ids, attention_mask, target_mask)
        n = int(labels.shape[0]) if labels is not None else int(row_example.max()) + 1
        width = int(num_choices.max()) if num_choices is not None else int(row_choice.max()) + 1
        logits = choice_matrix(scores, row_example, row_choice, n, width)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ChoiceOutput(logits=logits, loss=loss)
