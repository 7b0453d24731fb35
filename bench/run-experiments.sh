#!/usr/bin/env bash
# The paper's five tables (padim experiment) on the demo's synthetic wood set,
# with the seeded Resnet50_CBAM (the paper's architecture, random weights) and
# the shipped ImageNet MobileNetV2. Raw JSON, CSV and HTML in
# bench/results/<date>-experiments/.
#   bench/run-experiments.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
data=${1:-padim-demo/wood-seed1-512}
[ -d "$data" ] || bin/padim -q synth --out "$data" --seed 1 --train 60 --test-good 20 --test-defect 30 --size 512
out=bench/results/$(date -u +%Y-%m-%d)-experiments
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin/padim backbone --arch mobilenet_v2 --out "$tmp/mobilenet_v2.onnx" >/dev/null
{ uname -a; grep -m1 "model name" /proc/cpuinfo; nproc; uptime; git rev-parse HEAD; } > "$out/machine.txt"
ex() { local name=$1; shift; echo "== $name"; /usr/bin/time -f "%e s, %M KB" bin/padim -q experiment "$@" --data "$data" --device cpu \
         --json --csv "$out/$name.csv" --report "$out/$name" > "$out/$name.json" 2> "$out/$name.err"; tail -1 "$out/$name.err"; }
for sweep in layers dim samples methods; do
  rep=1
  case $sweep in dim|samples) rep=3 ;; esac   # the seed sensitivity of channel subsets and samples
  ex "$sweep-resnet50_cbam" "$sweep" --repeats $rep
  ex "$sweep-mobilenet_v2" "$sweep" --repeats $rep --backbone "$tmp/mobilenet_v2.onnx"
done
ex backbones backbones
