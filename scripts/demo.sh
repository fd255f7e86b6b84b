#!/usr/bin/env bash
# The main job end to end, as a user runs it (called by `make demo`):
#   1. `dynalora cluster up`: a single-node Ray cluster bound to 127.0.0.1 only
#   2. `ray job submit ... dynalora train --backend ray --workers 2`: dynamic LoRA on MiniLM +
#      Rotten Tomatoes (real model, real labelled data, both installed offline from PyPI)
#   3. `dynalora export merged` (fp32 and int8), verified against PyTorch before they are written
#   4. `dynalora bench --compare-torch` on both exports
# The cluster is stopped on exit, also on failure. Outputs go to $DEMO_OUT (default demo_out/).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
export PATH="$BIN:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
OUT="$(realpath -m "${DEMO_OUT:-demo_out}")"
STEPS="${DEMO_STEPS:-200}"
mkdir -p "$OUT"

cluster_started=0
cleanup() {
  if [ "$cluster_started" = 1 ]; then
    echo "== stopping the Ray cluster =="
    dynalora cluster down || true
  fi
}
trap cleanup EXIT

echo "== 1/4 starting a loopback Ray cluster =="
dynalora cluster up --num-cpus 2
cluster_started=1
export RAY_AUTH_MODE=token   # ray job submit sends the cluster's token only in token mode

echo "== 2/4 ray job submit: dynamic LoRA, MiniLM on Rotten Tomatoes, 2 workers, $STEPS steps =="
ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
  python -m dynalora train --backend ray --workers 2 \
    --model minilm --task rotten_tomatoes --out "$OUT/run" --overwrite \
    --steps "$STEPS" --batch-size 32 --lr 2e-3 --rank 8 --max-length 64 --checkpoint-every 100

echo "== 3/4 exporting to ONNX (fp32 and int8), verified against PyTorch =="
dynalora export merged --run "$OUT/run" --out "$OUT/export-fp32" --overwrite
dynalora export merged --run "$OUT/run" --out "$OUT/export-int8" --quantize int8 --overwrite

echo "== 4/4 benchmarking on this CPU (onnxruntime vs PyTorch eager) =="
for e in fp32 int8; do
  dynalora bench "$OUT/export-$e" --compare-torch --threads 2 --batch 1,8 --seq 32,128 --repeats 20 \
    --json "$OUT/bench-$e.json" --plot "$OUT/bench-$e.png" --overwrite
done

echo
echo "== done =="
echo "  run:        $OUT/run  (metrics.jsonl, allocation.jsonl, allocation.png, adapter/)"
echo "  exports:    $OUT/export-fp32  $OUT/export-int8"
echo "  benchmarks: $OUT/bench-fp32.json  $OUT/bench-int8.json (+ .png)"
