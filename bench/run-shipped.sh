#!/usr/bin/env bash
# The shipped commands timed as processes, side by side with anomalib-style
# PyTorch PaDiM, in one run on one machine (issue 9's targets): seeded
# Resnet50_CBAM at 224², d=550, 200 training and 101 test images of 512².
#   bench/run-shipped.sh [DATA_DIR]
# BEFORE=path/to/older/padim also times an older build on the same work.
# Raw output (stdout, stderr with /usr/bin/time -v) in bench/results/<date>-shipped/.
# The comparator needs PyTorch and torchvision (Debian: python3-torch python3-torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
data=${1:-bench/.data/wood-200-101}
[ -d "$data" ] || bin/padim -q synth --out "$data" --seed 3 --train 200 --test-good 41 --test-defect 60 --size 512
out=bench/results/$(date -u +%Y-%m-%d)-shipped
mkdir -p "$out"
py=${PADIM_PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin/padim backbone --arch resnet50_cbam --seed 7 --out "$tmp/r50.onnx" --save-weights "$tmp/r50.safetensors" >/dev/null
{ uname -a; grep -m1 "model name" /proc/cpuinfo; nproc; free -g | head -2; go version; uptime
  "$py" -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'; git rev-parse HEAD; } > "$out/machine.txt" 2>&1
run() { local name=$1; shift; echo "== $name: $*"; /usr/bin/time -v "$@" > "$out/$name.out" 2> "$out/$name.err" || { echo "$name failed, see $out/$name.err"; exit 1; }
        grep -E "Elapsed|Maximum resident" "$out/$name.err" | sed 's/^\s*/   /'; }
test="$data/test"
# padim as shipped: the default form (auto: low-rank at N=200 < 275.5) and the full form, no thresholds like the comparator
run train-auto   bin/padim -v train --backbone "$tmp/r50.onnx" --data "$data" --out "$tmp/auto.padim" --calibrate none --device cpu
run score-auto   bin/padim -v score --model "$tmp/auto.padim" --maps none --device cpu "$test"
run train-full   bin/padim -v train --backbone "$tmp/r50.onnx" --data "$data" --out "$tmp/full.padim" --calibrate none --gaussian full --device cpu
run score-full   bin/padim -v score --model "$tmp/full.padim" --maps none --device cpu "$test"
# thresholds from leave-one-out scores of all 200 images (the default)
run train-auto-loo bin/padim -v train --backbone "$tmp/r50.onnx" --data "$data" --out "$tmp/loo.padim" --device cpu
run bench-full   bin/padim -q bench --backbone "$tmp/r50.onnx" --data "$data" --n 200 --score 100 --dim 550 --gaussian full --device cpu --json
run bench-auto   bin/padim -q bench --backbone "$tmp/r50.onnx" --data "$data" --n 200 --score 100 --dim 550 --device cpu --peak=false --json
if [ -n "${BEFORE:-}" ]; then
  run before-train "$BEFORE" train --backbone "$tmp/r50.onnx" --data "$data" --out "$tmp/before.padim" --holdout 0 --device cpu
  run before-score "$BEFORE" score --model "$tmp/before.padim" --maps none --device cpu "$test"
fi
run torch "$py" bench/torch_padim.py --weights "$tmp/r50.safetensors" --data "$data" --n 200 --score 101 --dim 550 --threads "$(nproc)" --json "$out/torch.json"
echo "raw results in $out"
