"""Every numeric tolerance an export or a benchmark checks, in one place, named for what it compares.

All are bounds on the max absolute difference of logits (or of every graph output for `export fused`).
The export checks (dynalora.export) compare a graph with the PyTorch model it was made from, in the same
process, on the run's evaluation texts; the bench check (`dynalora bench --compare-torch`) reloads
EXPORT/torch later, on the bench's synthetic batch. This module is torch-free: the exporters import it,
edge_runtime never imports the exporters.
"""

from __future__ import annotations

# fp32 ONNX graph vs its PyTorch model (`export merged` classifiers, `export adapters`, `export fused`).
# Same weights and inputs, only operator order and fusions differ, so the gap is float rounding; 1e-4 is
# loose enough for that and tight enough to catch a wrong operator or a mis-folded adapter.
EXPORT_PARITY_ATOL_FP32 = 1e-4

# fp32 causal-LM graph vs PyTorch (`export base`, and `export merged` of a multiple-choice run), on a fixed
# prompt: full-vocabulary logits of a deep decoder stack are larger and accumulate more rounding than a
# classifier's few logits, hence 10x the classifier bound.
BASE_LM_PARITY_ATOL_FP32 = 1e-3

# fp16 graph (fp32 inputs / outputs) vs PyTorch fp32: fp16 keeps about 3 significant digits.
EXPORT_PARITY_ATOL_FP16 = 2e-2

# int8 graph: recorded in the manifest only. int8 is judged by accuracy on the evaluation split (its logits
# legitimately move by tenths); this bound only marks a graph that is broken outright.
EXPORT_INT8_LOGIT_ATOL = 0.5

# What `export merged` records as manifest.verification.tolerance, by the final graph's precision.
EXPORT_RECORDED_ATOL = {"fp32": EXPORT_PARITY_ATOL_FP32, "fp16": EXPORT_PARITY_ATOL_FP16, "int8": EXPORT_INT8_LOGIT_ATOL}

# Merged PyTorch model vs the adapted one ((W + s B diag(g) A) x vs W x + s B diag(g) A x): both fp32 PyTorch,
# one process; only the order of the sums differs.
MERGE_ATOL = 1e-5

# `dynalora bench`: the tolerance assumed when a manifest records none, and with --compare-torch (onnxruntime
# vs EXPORT/torch reloaded, on the bench's synthetic batch) a floor under the recorded one (the larger applies).
# It guards against benchmarking the wrong or a broken model, not a repeat of the export's precision check:
# its fp32 value is the loosest fp32 export check (BASE_LM_PARITY_ATOL_FP32), so the bench is never stricter
# than the check an fp32 export already passed.
BENCH_PARITY_ATOL = {"fp32": 1e-3, "fp16": 5e-2, "int8": 5e-1}
