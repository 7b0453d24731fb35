#!/usr/bin/env bash
# padim score at 224² as shipped, timed as a process, against anomalib-style
# PaDiM in PyTorch (its test path, in-process timer), in one run (issue 20 item 6):
# seeded Resnet50_CBAM, d=550, 200 training and 101 test boards of 512².
# Each padim variant runs ROUNDS times (default 3), interleaved, so that a
# slower stretch of the machine hits every variant alike; the medians are
# printed at the end. Variants: the default, and the backbone batch and ONNX
# Runtime thread settings that the defaults were chosen from.
#   bench/run-score224.sh [DATA_DIR]
# Raw output (stdout, stderr with /usr/bin/time -v and -v stage times) in
# bench/results/<date>-score224/.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
data=${1:-bench/.data/wood-200-101}
[ -d "$data" ] || bin/padim -q synth --out "$data" --seed 3 --train 200 --test-good 41 --test-defect 60 --size 512
out=bench/results/$(date -u +%Y-%m-%d)-${NAME:-score224}
mkdir -p "$out"
py=${PADIM_PYTHON:-/usr/bin/python3}
rounds=${ROUNDS:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin/padim backbone --arch resnet50_cbam --seed 7 --out "$tmp/r50.onnx" --save-weights "$tmp/r50.safetensors" >/dev/null
{ uname -a; grep -m1 "model name" /proc/cpuinfo; nproc; free -g | head -2; go version; uptime
  "$py" -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'; git rev-parse HEAD; } > "$out/machine.txt" 2>&1
bin/padim -q train --backbone "$tmp/r50.onnx" --data "$data" --out "$tmp/auto.padim" --calibrate none --device cpu
test="$data/test"
declare -A variant=(
  [default]=""
  [batch16]="--batch 16"
  [batch8]="--batch 8"
  [batch4]="--batch 4"
  [batch2]="--batch 2"
  [threads1]="--threads 1"
)
order=(default batch16 batch8 batch4 batch2 threads1)
for r in $(seq 1 "$rounds"); do
  for v in "${order[@]}"; do
    # shellcheck disable=SC2086
    /usr/bin/time -v bin/padim -v score --model "$tmp/auto.padim" --maps none --device cpu ${variant[$v]} "$test" \
      > "$out/score-$v-$r.out" 2> "$out/score-$v-$r.err"
    printf '%-9s round %d: %s s\n' "$v" "$r" "$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): 0:\(.*\)/\1/p' "$out/score-$v-$r.err")"
  done
done
"$py" bench/torch_padim.py --weights "$tmp/r50.safetensors" --data "$data" --n 200 --score 101 --dim 550 \
  --threads "$(nproc)" --json "$out/torch.json" > "$out/torch.out" 2> "$out/torch.err"
"$py" - "$out" "$rounds" "${order[@]}" <<'EOF' | tee "$out/summary.txt"
import json, re, statistics, sys
out, rounds, order = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
torch = json.load(open(f"{out}/torch.json"))["score_seconds"]
def field(text, name):
    return re.search(name + r": (.*)", text).group(1)
print(f"PyTorch test path (anomalib-style, in-process timer): {torch:.2f} s for 101 images")
print(f"{'variant':10s} {'median s':>9s} {'CPU s':>7s} {'vs PyTorch':>10s}   rounds")
for v in order:
    walls, cpus = [], []
    for r in range(1, rounds + 1):
        t = open(f"{out}/score-{v}-{r}.err").read()
        m, s = field(t, r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)").split(":")
        walls.append(60 * float(m) + float(s))
        cpus.append(float(field(t, r"User time \(seconds\)")) + float(field(t, r"System time \(seconds\)")))
    w = statistics.median(walls)
    print(f"{v:10s} {w:9.2f} {statistics.median(cpus):7.2f} {torch / w:9.2f}x   {' '.join(f'{x:.2f}' for x in walls)}")
EOF
echo "raw results in $out"
