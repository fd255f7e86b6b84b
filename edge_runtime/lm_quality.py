"""What a quantised language model promises, measured against its fp32 reference on the same tokens.

    q = lm_quality(reference_logits, quantised_logits, input_ids, attention_mask)
    # {"tokens": N, "perplexity_reference": ..., "perplexity": ..., "perplexity_change_pct": ...,
    #  "top1_agreement": ...}

Both logits arrays are (B, T, V) for the same teacher-forced input. Position t predicts token t+1, so the
last position of each row and padded positions are not scored. Perplexity is exp(mean negative
log-likelihood of the next tokens); top-1 agreement is the share of scored positions whose argmax token is
the same. A quantised LM is judged by these (`export base|merged --quantize`, `bench --compare-torch`), not
by a float logit tolerance: block-wise int4 / int8 weights move full-vocabulary logits by tenths to units
while the next-token choice and the perplexity barely move. numpy only (the edge runtime's install).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# A quantised causal LM whose next-token argmax agrees with fp32 on fewer scored positions than this is broken
# (a wrong scale, a dropped layer, scrambled logits agree on almost none): the export refuses it and the bench
# will not time it. Above it the agreement and perplexity change are recorded, not judged: they are what a user
# weighs. Measured (benchmarks/results/edge_llm.md, SmolLM2-135M): block-wise int8 (MatMulNBits, block 32)
# agrees on 92-94% of positions of held-out text; the genai builder's int4 (RTN, block 32) on 52-62% (k-quant
# mixed 71%), and yet with the sentence_negation adapter it answers all 50 evaluation prompts exactly as fp32.
QUANT_TOP1_FLOOR = 0.25


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def scored_positions(input_ids: np.ndarray, attention_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(mask (B, T-1) of positions that predict a real next token, next tokens (B, T-1))."""
    mask = np.ones_like(input_ids, dtype=bool) if attention_mask is None else attention_mask.astype(bool)
    return mask[:, :-1] & mask[:, 1:], input_ids[:, 1:]


def perplexity(logits: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> float:
    scored, nxt = scored_positions(input_ids, attention_mask)
    logp = np.take_along_axis(_log_softmax(logits[:, :-1]), nxt[..., None], axis=-1)[..., 0]
    return float(np.exp(-logp[scored].mean()))


def top1_agreement(reference: np.ndarray, other: np.ndarray, input_ids: np.ndarray,
                   attention_mask: np.ndarray | None = None) -> float:
    scored, _ = scored_positions(input_ids, attention_mask)
    same = reference[:, :-1].argmax(-1) == other[:, :-1].argmax(-1)
    return float(same[scored].mean())


def lm_quality(reference: np.ndarray, quantised: np.ndarray, input_ids: np.ndarray,
               attention_mask: np.ndarray | None = None) -> dict[str, Any]:
    if reference.shape != quantised.shape or reference.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {reference.shape} / {quantised.shape} and input_ids {input_ids.shape} do not match")
    scored, _ = scored_positions(input_ids, attention_mask)
    if not scored.any():
        raise ValueError("no position predicts a real next token: pass at least two tokens per row")
    ppl_ref = perplexity(reference, input_ids, attention_mask)
    ppl = perplexity(quantised, input_ids, attention_mask)
    return {"tokens": int(scored.sum()), "perplexity_reference": ppl_ref, "perplexity": ppl,
            "perplexity_change_pct": 100.0 * (ppl / ppl_ref - 1.0),
            "top1_agreement": top1_agreement(reference, quantised, input_ids, attention_mask)}
