#!/usr/bin/env bash
# Cost of the paper's experiments on this machine with `padim bench` (CPU, seeded
# Resnet50_CBAM, 224²): the d sweep 250…650 and sample counts 5…50 (fit + score 10),
# and the layer sweep. Raw JSON in bench/results/<date>-sweeps/, a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
data=${1:-padim-demo/wood-seed1-512}
[ -d "$data" ] || bin/padim synth --out "$data" --seed 1 --train 60 --test-good 20 --test-defect 30 --size 512
out=bench/results/$(date -u +%Y-%m-%d)-sweeps
mkdir -p "$out"
b() { bin/padim -q bench --data "$data" --device cpu --peak=false --score 10 --json "$@"; }
for d in 250 350 450 550 650; do b --n 50 --dim "$d" > "$out/d$d-n50.json"; done
for n in 5 10 20 50; do b --n "$n" --dim 550 > "$out/d550-n$n.json"; done
for l in layer1,layer2,layer3 layer1,layer2 layer2,layer3 layer1; do b --n 50 --dim 550 --layers "$l" > "$out/layers-${l//,/+}-n50.json"; done
python3 - "$out" <<'PY'
import glob, json, os, sys
print(f"{'run':28s} {'N':>4s} {'d':>4s} {'P':>5s} {'fit s':>7s} {'factor s':>9s} {'score s/img':>12s} {'train s':>8s} {'RSS GiB':>8s}")
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    r = json.load(open(f)); st = {s["name"]: s for s in r["stages"]}
    print(f"{os.path.basename(f)[:-5]:28s} {r['n_train']:4d} {r['dim']:4d} {r['patches']:5d} {st['fit']['seconds']:7.2f} {st['factorize']['seconds']:9.2f} "
          f"{st['score']['seconds'] / max(1, r['n_score']):12.4f} {r['train_seconds']:8.1f} {r['peak_rss_bytes'] / 2**30:8.2f}")
PY
