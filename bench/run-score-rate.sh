#!/usr/bin/env bash
# padim score's images/s as a process against padim bench's scoring rate, as the
# number of scored images grows (issue 9's 90 % target): the process pays the
# model's open (sha256, first touch of its pages) and ONNX Runtime's start once,
# which bench times apart. Seeded Resnet50_CBAM at 224², d=550, default form,
# 200 training boards; 101 test boards, and the same copied 4 times (404).
#   bench/run-score-rate.sh [DATA_DIR]
# Raw output in bench/results/<date>-score-rate/.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
data=${1:-bench/.data/wood-200-101}
[ -d "$data" ] || bin/padim -q synth --out "$data" --seed 3 --train 200 --test-good 41 --test-defect 60 --size 512
out=bench/results/$(date -u +%Y-%m-%d)-score-rate
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin/padim backbone --arch resnet50_cbam --seed 7 --out "$tmp/r50.onnx" >/dev/null
{ uname -a; grep -m1 "model name" /proc/cpuinfo; nproc; uptime; git rev-parse HEAD; } > "$out/machine.txt"
mkdir -p "$tmp/x4"
# copies, not links: padim scores a file given twice (a link, another path) once
for k in 1 2 3 4; do for f in "$data"/test/*/*.png; do cp "$f" "$tmp/x4/$k-$(basename "$(dirname "$f")")-$(basename "$f")"; done; done
run() { local name=$1; shift; echo "== $name: $*"; /usr/bin/time -v "$@" > "$out/$name.out" 2> "$out/$name.err"
        grep -E "Elapsed" "$out/$name.err" | sed 's/^\s*/   /'; }
run train bin/padim -v train --backbone "$tmp/r50.onnx" --data "$data" --out "$tmp/m.padim" --calibrate none --device cpu
run bench bin/padim -q bench --backbone "$tmp/r50.onnx" --data "$data" --n 200 --score 100 --dim 550 --device cpu --peak=false --json
for rep in 1 2; do
  run score-101-r$rep bin/padim -v score --model "$tmp/m.padim" --maps none --device cpu "$data/test"
  run score-404-r$rep bin/padim -v score --model "$tmp/m.padim" --maps none --device cpu "$tmp/x4"
done
python3 - "$out" <<'PY'
import json, re, sys, os
d = sys.argv[1]
b = json.load(open(os.path.join(d, "bench.out")))
def wall(n):
    t = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\d+):([\d.]+)", open(os.path.join(d, n + ".err")).read())
    return 60 * int(t.group(1)) + float(t.group(2))
print(f"padim bench: {b['score_images_per_s']:.2f} images/s after the load, {b['score_images_per_s_with_load']:.2f} with it")
for n, k in [("score-101-r1", 101), ("score-101-r2", 101), ("score-404-r1", 404), ("score-404-r2", 404)]:
    w = wall(n)
    print(f"{n}: {w:.2f} s, {k / w:.2f} images/s = {k / w / b['score_images_per_s']:.0%} of bench's rate after the load")
PY
