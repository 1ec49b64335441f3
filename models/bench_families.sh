#!/usr/bin/env bash
# The model families of issue 12 run across 3 local agents on both executors, each output
# compared with onnxruntime's, then the GPU executor's speed against tract per model.
#
#   bash models/bench_families.sh [OUT_DIR]      (default /tmp/moirai-families)
#
# Exports the torchvision models with random weights into OUT_DIR (models/export_torchvision.py:
# torch, torchvision, onnx, onnxruntime), takes the transformer and CNN fixtures from
# tests/fixtures/onnx, and prints one Markdown row per model:
#   model | tract rel. error | GPU executor rel. error | GPU groups on tract | GPU/tract p50
# The relative error is max|got - want| / max|want| against onnxruntime; the last column is
# `moirai-agent bench-share` on the whole model as one share (p50 of 5 runs each, the GPU
# kernels checked against tract first, as when serving). Needs the debug build
# (cargo build -p moirai-orchestrator -p moirai-agent).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-/tmp/moirai-families}
bin=target/debug
torchvision=(efficientnet_b0 regnet_y_400mf mobilenet_v3_small resnext50_32x4d convnext_tiny vit_b_16)
fixtures=(tiny-bert tiny-gpt2 tiny-t5 tiny-esm tiny-effnet tiny-regnet tiny-mobilenetv3 tiny-convnext tiny-vit)
mkdir -p "$out"
need=()
for m in "${torchvision[@]}"; do
    [ -f "$out/$m/model.onnx" ] || need+=("$m")
done
if [ "${#need[@]}" -gt 0 ]; then
    python3 models/export_torchvision.py "$out" "${need[@]}" 2>&1 | grep -v -i warning >&2 || true
fi

# `moirai run` across 3 agents; prints the largest relative difference over the outputs.
run_error() {
    local dir=$1 backend=$2 args=() worst=0
    for f in "$dir"/test_data_set_0/input_*.pb; do args+=(--input "$f"); done
    for f in "$dir"/test_data_set_0/output_*.pb; do args+=(--reference "$f"); done
    local log
    log=$("$bin/moirai" run --model "$dir/model.onnx" "${args[@]}" --agents 3 \
        --agent-backend "$backend" --timeout-s 1500 2>&1) || { echo "failed"; return; }
    echo "$log" | sed -n 's/.*largest relative difference to .*: \([0-9.e+-]*\)$/\1/p' |
        sort -g | tail -1
}

# bench-share: groups on tract and the GPU/tract p50 ratio.
bench() {
    local dir=$1 log
    log=$("$bin/moirai-agent" bench-share --model "$dir/model.onnx" --warmups 1 --runs 5 2>&1) ||
        { echo "failed | failed"; return; }
    local placed ratio
    placed=$(echo "$log" | sed -n 's/^GPU executor: \(.*\)$/\1/p' | head -1 |
        sed -n 's/^\([0-9]*\) groups: .*, \([0-9]*\) on the CPU.*/\2 of \1/p')
    [ -n "$placed" ] || placed="0"
    ratio=$(echo "$log" | sed -n 's/^GPU\/tract p50 latency \([0-9.]*\)x.*/\1/p')
    echo "$placed | ${ratio:-?}x"
}

echo "| model | tract rel. error | GPU executor rel. error | GPU groups on tract | GPU/tract p50 |"
echo "|---|---|---|---|---|"
for m in "${torchvision[@]}" "${fixtures[@]}"; do
    if [ -d "$out/$m" ]; then dir="$out/$m"; else dir="tests/fixtures/onnx/$m"; fi
    echo "| $m | $(run_error "$dir" cpu) | $(run_error "$dir" wgpu) | $(bench "$dir") |"
done
