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
# The same check for a causal LM (generation / multiple-choice runs), per position: at most
# MERGE_CAUSAL_LM_OUTLIERS of the real positions may exceed the bound (none by more than 100x), and the top-1
# token must be the same everywhere: full-vocabulary logits of a deep decoder (SmolLM2-135M:
# 30 layers, logits up to ~37) accumulate more rounding, and a few positions of the random check tokens are
# ill-conditioned. Measured on two SmolLM2 generation runs: 7.3e-5 at every position of one; 4e-5..1.4e-4 at 63
# of 64 positions of the other and 0.018 at one, where the adapted fp32 model itself is 0.016 off its float64
# evaluation (so the merge is not the cause). The decoder bound of the ONNX checks (BASE_LM_PARITY_ATOL_FP32)
# applies per position; a wrong merge (scaling, transposition, a missed layer) moves every position.
MERGE_ATOL_CAUSAL_LM = 1e-3
MERGE_CAUSAL_LM_OUTLIERS = 0.05

# `dynalora bench`: the tolerance assumed when a manifest records none, and with --compare-torch (onnxruntime
# vs EXPORT/torch reloaded, on the bench's synthetic batch) a floor under the recorded one (the larger applies).
# It guards against benchmarking the wrong or a broken model, not a repeat of the export's precision check:
# its fp32 value is the loosest fp32 export check (BASE_LM_PARITY_ATOL_FP32), so the bench is never stricter
# than the check an fp32 export already passed.
BENCH_PARITY_ATOL = {"fp32": 1e-3, "fp16": 5e-2, "int8": 5e-1, "int4": 5e-1}

# `export ... --target`: each graph of the mobile package (ORT format, fixed shapes + rewrites) vs the export's
# model.onnx, on the CPU EP, same inputs. The ORT-format model is the same graph serialised differently, and
# the rewrites compute the same functions (Erf's polynomial is within 1.5e-7), so fp32 differences are float
# rounding of re-ordered sums: the fp32 export bound applies. int8 graphs: the Runtime-style conversion for
# android / ios keeps only BASIC optimisations, so the int8 kernels that run can differ from model.onnx's
# (e.g. a fused vs an unfused dynamic quantisation of the activations); their logits may move by a few
# hundredths, as between two int8 schedules, and the int8 export bound marks a broken graph only.
MOBILE_PARITY_ATOL = {"fp32": EXPORT_PARITY_ATOL_FP32, "fp16": EXPORT_PARITY_ATOL_FP16, "int8": EXPORT_INT8_LOGIT_ATOL}

# `export merged --quantize qdq-int8`: the QDQ graph run by the CPU EP's int8 kernels (ORT_ENABLE_ALL fuses
# QuantizeLinear / DequantizeLinear into them) vs the same graph with ORT_DISABLE_ALL, which executes every
# Q / DQ literally in float (its own fake-quant reference), on the run's evaluation texts. Both use the same
# scales, but the fused kernels round their int32 sums and requantise in a different order, so a value on a
# rounding boundary lands one step away and the step propagates through the layers. Measured max abs logit
# differences: MiniLM rotten_tomatoes 0.21 over its 2000 evaluation texts (99.6% equal predictions; 0.32 when
# the MatMul outputs are quantised too); the tiny test BERT 1e-8. What it is there to catch: int8 kernels that
# compute something other than the graph says (u8s8 saturation on CPUs without VNNI, the reason onnxruntime
# offers reduce_range; a fusion bug). The bound is the int8 export's bound for a broken graph
# (EXPORT_INT8_LOGIT_ATOL), 2.4x the largest rounding difference measured.
QDQ_FAKE_QUANT_ATOL = EXPORT_INT8_LOGIT_ATOL

# Accuracy points, not logits: an int8 export stores the vocabulary embedding table in int8 only if that
# costs at most this much accuracy on the evaluation split against the same int8 graph with the fp32 table.
# Compared with that graph, not with fp32, because on its own the int8 table changes nothing: on the MiniLM
# rotten_tomatoes run (2000 texts) fp32 + int8 table flips no prediction (max logit change 0.03); in an int8
# graph the same table moves a few near-tie predictions either way (dynamic int8: 47 texts differ from fp32
# with it, 31 without), which is the int8 graph's noise, charged to the MatMuls' accuracy change.
EMBEDDING_ACCURACY_LIMIT_POINTS = 0.5

# `dynalora bench` on an int8 classifier export: the export records its accuracy change against fp32 on the run's
# evaluation split, and the bench refuses to time a graph that lost more than this. Working int8 graphs of the
# project's classifiers move by tenths of a point (MiniLM rotten_tomatoes: dynamic int8 -0.55, qdq-int8 -0.85,
# benchmarks/results/edge_mobile.md); several points means a broken quantisation, not a noisy one.
INT8_BROKEN_ACCURACY_DROP_POINTS = 5.0
