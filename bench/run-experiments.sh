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
# SPADE and PatchCore at N=200 (issue 12: time and memory for 200 training images),
# with padim bench on its synthetic wood (train, save, load, score as shipped);
# PaDiM beside them. SPADE scores 20 images (each is a kNN over 50 training maps).
for bb in resnet50_cbam mobilenet_v2; do
  bbflag=(--arch resnet50_cbam); [ $bb = mobilenet_v2 ] && bbflag=(--backbone "$tmp/mobilenet_v2.onnx")
  for m in padim patchcore spade; do
    n=100; [ $m = spade ] && n=20
    echo "== bench $m $bb"
    /usr/bin/time -f "%e s, %M KB" bin/padim -q bench "${bbflag[@]}" --method $m --n 200 --score $n --device cpu --peak=false --json \
      > "$out/bench-$m-$bb.json" 2> "$out/bench-$m-$bb.err"; tail -1 "$out/bench-$m-$bb.err"
  done
done
