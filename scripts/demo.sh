#!/usr/bin/env bash
# The main job end to end, as a user runs it (called by `make demo`):
#   1. `dynalora cluster up`: a single-node Ray cluster bound to 127.0.0.1 only
#   2. `ray job submit ... dynalora train --backend ray --workers 2`: dynamic LoRA on MiniLM +
#      Rotten Tomatoes (real model, real labelled data, both installed offline from PyPI)
#   3. `dynalora export merged` (fp32 and int8), verified against PyTorch before they are written; the int8
#      export also gets an Android package (--target android: .ort model, reduced-op config, fixed-shape graph,
#      NNAPI / CoreML coverage report)
#   4. `dynalora bench --compare-torch` on both exports, and the Android package's .ort model under the
#      phone-class profile (--profile mobile-cpu: 1-2 threads, no arena, peak-RSS cap)
#   5. fusion (DLP-style): a second adapter (BBC news topics), a router over both, `fuse eval`,
#      `export fused` (router + top-p + stacked adapters in one verified ONNX graph) and its bench.
#      DEMO_FUSION=0 skips this stage.
#   6. generation: SmolLM2-135M fine-tuned to answer each Rotten Tomatoes review with its label as text
#      (`--objective generate`: response-token loss, chat template, greedy evaluation with exact match /
#      ROUGE-L / BLEU), exported as an onnxruntime-genai folder in int8 (`--runtime genai`: loads in
#      onnxruntime-genai and in dynalora's runtime; greedy generations and next-token agreement checked)
#      and benchmarked (decode: our runtime, PyTorch eager and onnxruntime-genai side by side). DEMO_GEN=0 skips
#      this stage.
# The cluster is stopped on exit, also on failure. Outputs go to $DEMO_OUT (default demo_out/).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
export PATH="$BIN:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
OUT="$(realpath -m "${DEMO_OUT:-demo_out}")"
STEPS="${DEMO_STEPS:-200}"
GCS_PORT="${DEMO_RAY_PORT:-6379}"
mkdir -p "$OUT"

cluster_started=0
cleanup() {
  if [ "$cluster_started" = 1 ]; then
    echo "== stopping the Ray cluster =="
    dynalora cluster down --port "$GCS_PORT" || true
  fi
}
trap cleanup EXIT

echo "== 1/6 starting a loopback Ray cluster =="
dynalora cluster up --num-cpus 2 --port "$GCS_PORT"
cluster_started=1
export RAY_AUTH_MODE=token   # ray job submit sends the cluster's token only in token mode

echo "== 2/6 ray job submit: dynamic LoRA, MiniLM on Rotten Tomatoes, 2 workers, $STEPS steps =="
ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
  python -m dynalora train --backend ray --workers 2 \
    --model minilm --task rotten_tomatoes --out "$OUT/run" --overwrite \
    --steps "$STEPS" --batch-size 32 --lr 2e-3 --rank 8 --max-length 64 --checkpoint-every 100

echo "== 3/6 exporting to ONNX (fp32 and int8), verified against PyTorch =="
dynalora export merged --run "$OUT/run" --out "$OUT/export-fp32" --overwrite
dynalora export merged --run "$OUT/run" --out "$OUT/export-int8" --quantize int8 --target android --overwrite

echo "== 4/6 benchmarking on this CPU (onnxruntime vs PyTorch eager) =="
for e in fp32 int8; do
  dynalora bench "$OUT/export-$e" --compare-torch --threads 2 --batch 1,8 --seq 32,128 --repeats 20 \
    --json "$OUT/bench-$e.json" --plot "$OUT/bench-$e.png" --overwrite
done
dynalora bench "$OUT/export-int8" --variant ort --profile mobile-cpu --seq 64 --repeats 20 \
  --json "$OUT/bench-int8-mobile.json" --overwrite

if [ "${DEMO_FUSION:-1}" = 1 ]; then
  echo "== 5/6 fusion: a BBC-news adapter, a router over both tasks, one fused ONNX graph =="
  dynalora cluster down --port "$GCS_PORT" && cluster_started=0   # the rest runs in this process; free the cores
  dynalora train --model minilm --task bbc_news --out "$OUT/run-bbc" --overwrite \
    --steps "${DEMO_FUSION_STEPS:-80}" --batch-size 16 --lr 2e-3 --rank 8 --max-length 64 --no-progress
  dynalora fuse train --runs "$OUT/run" "$OUT/run-bbc" --out "$OUT/fuse" --overwrite
  dynalora fuse eval "$OUT/fuse" --max-eval 300 --json "$OUT/fuse-eval.json" --overwrite
  dynalora export fused --fuse "$OUT/fuse" --out "$OUT/export-fused" --overwrite
  dynalora bench "$OUT/export-fused" --threads 2 --batch 1,8 --seq 64 --repeats 20 \
    --json "$OUT/bench-fused.json" --plot "$OUT/bench-fused.png" --overwrite
fi

if [ "${DEMO_GEN:-1}" = 1 ]; then
  echo "== 6/6 generation: SmolLM2-135M answers reviews, exported for onnxruntime-genai (int8) =="
  dynalora cluster down --port "$GCS_PORT" >/dev/null 2>&1 && cluster_started=0 || true
  dynalora train --model smollm2-135m --task rotten_tomatoes --objective generate --out "$OUT/run-gen" --overwrite \
    --steps "${DEMO_GEN_STEPS:-40}" --batch-size 8 --lr 2e-3 --max-length 192 --max-new-tokens 4 --max-eval 200 \
    --no-progress
  dynalora export merged --run "$OUT/run-gen" --runtime genai --quantize int8 --out "$OUT/export-gen-int8" --overwrite
  dynalora bench "$OUT/export-gen-int8" --compare-torch --genai --threads 2 --batch 1 --seq 64 --repeats 5 \
    --json "$OUT/bench-gen-int8.json" --overwrite
fi

echo
echo "== done =="
echo "  run:        $OUT/run  (metrics.jsonl, allocation.jsonl, allocation.png, adapter/)"
echo "  exports:    $OUT/export-fp32  $OUT/export-int8 (+ mobile/: Android package, mobile_report.md)"
echo "  benchmarks: $OUT/bench-fp32.json  $OUT/bench-int8.json (+ .png)  $OUT/bench-int8-mobile.json"
if [ "${DEMO_FUSION:-1}" = 1 ]; then
  echo "  fusion:     $OUT/fuse (fuse-eval.json)  $OUT/export-fused  $OUT/bench-fused.json"
fi
if [ "${DEMO_GEN:-1}" = 1 ]; then
  echo "  generation: $OUT/run-gen  $OUT/export-gen-int8 (og.Model loads it)  $OUT/bench-gen-int8.json"
fi
