"""Generation with a causal LM: prompt -> response training, and greedy decoding for evaluation.

    batch = encode_generation(tokenizer, spec, examples, max_length=256)
    out = GenerationLoss(causal_lm)(**batch)                  # out.loss: response tokens only
    texts = generate_texts(causal_lm, tokenizer, spec, examples, max_new_tokens=64, stop=["\\n\\n"])

Prompt format. With a tokenizer that has a chat template (SmolLM2-Instruct, Qwen2, Llama-3 ...), an example
is the conversation history + [{"role": "user", "content": prompt_text(spec, e)}], rendered by the template
with the generation prompt; the response is whatever the template puts after that for the assistant's
turn (the answer and the template's end-of-turn token). Without a template the plain format is

    PLAIN_PROMPT = "### Instruction:\\n{prompt}\\n\\n### Response:\\n"     response = answer + eos

(earlier messages, if any, come first as "<role>: <content>" lines). `render(tokenizer, spec, e)` gives the
two strings; the prompt is tokenised with the tokenizer's special tokens (BOS), the response without; the
model learns the response tokens exactly as greedy decoding will produce them after the prompt.

Loss. Cross-entropy on the response tokens only (prompt and padding positions are ignored), averaged per
sequence and then over the batch: every example weighs the same whatever its answer's length, and a global
batch split into micro-batches / data-parallel workers gives exactly the single-process gradient (a
token-weighted mean would not). As core/choice.py, the LM head runs only on the positions that predict a
response token, never on the whole (batch x length x vocabulary) tensor.

Length. A prompt that leaves no room for one response token within `max_length` is a data error (one line,
before anything is written: `check_lengths`); a response that does not fit is cut at `max_length` (counted).

Decoding. Greedy, batched, with the KV cache (transformers' `generate`, left padding). It stops at the
tokenizer's eos / the template's end-of-turn token, or after `max_new_tokens`; `stop` strings end an answer
too (the text is cut before the first one). The fused model (dynalora.fusion) routes once per prompt and
keeps those weights for every generated token.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynalora.core.choice import _body_and_head, option_scores, prompt_text
from dynalora.core.task import Example, TaskSpec
from dynalora.errors import ConfigError, DataError

PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"
IGNORE = -100  # label of a position that is not trained on


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_format(tokenizer: Any) -> str:
    """What `render` uses for this tokenizer: "chat template" or "plain" (recorded in run.json)."""
    return "chat template" if has_chat_template(tokenizer) else "plain"


def _messages(spec: TaskSpec, e: Example) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in e.history] + [{"role": "user", "content": prompt_text(spec, e)}]


def render(tokenizer: Any, spec: TaskSpec, e: Example) -> tuple[str, str]:
    """(prompt text, response text) of an example; the response is "" when the example has none."""
    answer = e.response or ""
    if has_chat_template(tokenizer):
        messages = _messages(spec, e)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if e.response is None:
            return prompt, ""
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
        return prompt, answer + (tokenizer.eos_token or "")  # a template whose generation prompt is no prefix
    history = "".join(f"{r}: {c}\n" for r, c in e.history)
    prompt = history + PLAIN_PROMPT.format(prompt=prompt_text(spec, e))
    return prompt, (answer + (tokenizer.eos_token or "")) if e.response is not None else ""


def prompt_ids(tokenizer: Any, spec: TaskSpec, e: Example) -> list[int]:
    """The prompt's tokens as training and decoding see them (special tokens: the template's, or BOS)."""
    prompt, _ = render(tokenizer, spec, e)
    return list(tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])


def _pieces(tokenizer: Any, spec: TaskSpec, e: Example) -> tuple[list[int], list[int]]:
    prompt, response = render(tokenizer, spec, e)
    p = list(tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])
    r = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if not has_chat_template(tokenizer) and tokenizer.eos_token_id is not None and (not r or r[-1] != tokenizer.eos_token_id):
        r.append(int(tokenizer.eos_token_id))  # a tokenizer that splits its eos string: the id itself
    return p, r


def check_lengths(tokenizer: Any, spec: TaskSpec, examples: Sequence[Example], max_length: int,
                  where: str = "training") -> int:
    """Refuse a prompt with no room for a response token; returns how many responses will be cut."""
    cut = 0
    for i, e in enumerate(examples):
        p, r = _pieces(tokenizer, spec, e)
        if len(p) >= max_length:
            raise DataError(f"{where} example {i + 1} ({e.text[:40]!r}...): its prompt is {len(p)} tokens, which "
                            f"leaves no room for the response within --max-length {max_length}; raise --max-length "
                            "or shorten the prompt")
        cut += len(p) + len(r) > max_length
    return cut


def encode_generation(tokenizer: Any, spec: TaskSpec, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask (right-padded to the longest row) and labels (IGNORE outside the response)."""
    rows: list[tuple[list[int], int]] = []
    for e in examples:
        if e.response is None:
            raise ConfigError(f"example {e.text[:40]!r} has no response: generation training needs one")
        p, r = _pieces(tokenizer, spec, e)
        if len(p) >= max_length:
            raise DataError(f"example {e.text[:40]!r}: its prompt ({len(p)} tokens) leaves no room for the response "
                            f"within --max-length {max_length}")
        rows.append(((p + r)[:max_length], len(p)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, n_prompt) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, n_prompt : len(row)] = ids[i, n_prompt : len(row)]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class GenerationOutput:
    loss: torch.Tensor | None
    token_logprob: torch.Tensor  # (B,) mean log-likelihood of each example's response tokens


def response_logprob(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean log-probability of each row's response tokens (labels != IGNORE) under `lm`: the option
    scorer of core/choice.py with the response as the "option" (labels equal input_ids where they count)."""
    return option_scores(lm, input_ids, attention_mask, labels != IGNORE)


class GenerationLoss(nn.Module):
    """Wraps a causal LM (no parameters of its own): forward(**encode_generation(...)) -> GenerationOutput.

    The training loop runs this module (DDP sees one forward); the wrapped LM keeps its parameter names."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        _body_and_head(lm)
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> GenerationOutput:
        per_example = response_logprob(self.lm, input_ids, attention_mask, labels)
        return GenerationOutput(loss=-per_example.mean(), token_logprob=per_example)


def eos_ids(tokenizer: Any, lm: nn.Module) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos, the model's eos (int or list), the template's end of turn."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(lm, "generation_config", None), "eos_token_id", None),
                  getattr(getattr(lm, "config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """`text` up to the first stop string (stripped)."""
    for s in stop or ():
        at = text.find(s)
        if at >= 0:
            text = text[:at]
    return text.strip()


@torch.no_grad()
def generate_ids(lm: nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                 stop: Sequence[str] | None = None, before: Any = None) -> list[list[int]]:
    """Greedy continuations (new token ids, eos dropped) of tokenised prompts, one batch, left padding.

    before(input_ids, attention_mask): called once on the padded prompts before decoding (fusion routes here)."""
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(lm.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every row's next token sits in the last column
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    limit = getattr(getattr(lm, "config", None), "max_position_embeddings", None)
    if limit is not None and width + max_new_tokens > int(limit):
        raise ConfigError(f"a prompt of {width} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                          f"{limit} positions; shorten the prompt or ask for fewer tokens")
    if before is not None:
        before(ids.to(device), mask.to(device))
    eos = eos_ids(tokenizer, lm)
    # the model's own generation config (its bos / special tokens, so transformers has nothing to "fix"), made greedy
    config = copy.deepcopy(getattr(lm, "generation_config", None) or GenerationConfig())
    config.update(max_new_tokens=max_new_tokens, max_length=None, do_sample=False, num_beams=1, use_cache=True,
                  temperature=None, top_p=None, top_k=None, min_p=None, repetition_penalty=None,
                  eos_token_id=eos or None, pad_token_id=pad)
    kwargs: dict[str, Any] = {}
    if stop:
        config.stop_strings = list(stop)
        kwargs["tokenizer"] = tokenizer
    was_training = lm.training
    lm.eval()
    try:
        out = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config, **kwargs)
    finally:
        lm.train(was_training)
    new = out[:, width:].tolist()
    result = []
    for row in new:
        end = next((k for k, t in enumerate(row) if t in eos), len(row))
        result.append(row[:end])
    return result


def generate_texts(lm: nn.Module, tokenizer: Any, spec: TaskSpec, examples: Sequence[Example], max_new_tokens: int,
                   stop: Sequence[str] | None = None, batch_size: int = 16, before: Any = None) -> list[str]:
    """Greedy answers of `examples` (their prompts), batched; each cut at the first stop string and stripped."""
    texts: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = list(examples[i : i + batch_size])
        prompts = [prompt_ids(tokenizer, spec, e) for e in chunk]
        hook = (lambda ids, mask, c=chunk: before(c, ids, mask)) if before is not None else None
        for row in generate_ids(lm, tokenizer, prompts, max_new_tokens, stop, hook):
            texts.append(cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop))
    return texts
