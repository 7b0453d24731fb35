#!/usr/bin/env bash
# The paper's sample-count sweep (N = 5…200 at d=550, seeded Resnet50_CBAM at
# 224², 512² wood images, 20 scored), full vs low-rank form, with padim bench:
# fit time, model size, scoring time. Raw JSON in bench/results/<date>-samples/.
#   bench/run-samples.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
data=${1:-bench/.data/wood-200-101}
[ -d "$data" ] || bin/padim -q synth --out "$data" --seed 3 --train 200 --test-good 41 --test-defect 60 --size 512
out=bench/results/$(date -u +%Y-%m-%d)-samples
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin/padim backbone --arch resnet50_cbam --seed 7 --out "$tmp/r50.onnx" >/dev/null
{ uname -a; grep -m1 "model name" /proc/cpuinfo; nproc; uptime; git rev-parse HEAD; } > "$out/machine.txt"
for n in 5 10 20 50 100 200; do
  for form in lowrank full; do
    bin/padim -q bench --backbone "$tmp/r50.onnx" --data "$data" --n "$n" --score 20 --dim 550 --gaussian "$form" --device cpu --peak=false --json > "$out/n$n-$form.json"
  done
done
python3 - "$out" <<'PY'
import glob, json, os, sys
print(f"{'N':>4s} {'form':8s} {'fit s':>7s} {'factorise s':>11s} {'train s':>8s} {'model MiB':>10s} {'score ms/img':>13s} {'peak GiB':>9s}")
rows = []
for f in glob.glob(os.path.join(sys.argv[1], "n*.json")):
    r = json.load(open(f)); st = {s["name"]: s for s in r["train_stages"]}; sc = {s["name"]: s for s in r["score_stages"]}
    rows.append((r["n_train"], os.path.basename(f).split("-")[1][:-5], st.get("fit", {}).get("seconds", 0), st["factorize"]["seconds"], r["train_seconds"],
                 r["model_file_bytes"] / 2**20, 1000 * sc["score"]["seconds"] / r["n_score"], r["peak_rss_bytes"] / 2**30))
for n, form, fit, fac, tr, mb, ms, rss in sorted(rows):
    print(f"{n:4d} {form:8s} {fit:7.2f} {fac:11.2f} {tr:8.1f} {mb:10.1f} {ms:13.2f} {rss:9.2f}")
PY
