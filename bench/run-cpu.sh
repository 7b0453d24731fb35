#!/usr/bin/env bash
# The CPU measurements behind BENCHMARKS.md, in one run on one machine: padim and
# anomalib-style PyTorch PaDiM on the same backbone weights and images, then
# padim's fit memory at N=50 and N=400, and d=100. Raw output in bench/results/<date>-cpu/.
#   bench/run-cpu.sh [DATA_DIR]     (default: the demo's synthetic wood set, made if absent)
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
data=${1:-padim-demo/wood-seed1-512}
[ -d "$data" ] || bin/padim synth --out "$data" --seed 1 --train 60 --test-good 20 --test-defect 30 --size 512
out=bench/results/$(date -u +%Y-%m-%d)-cpu
mkdir -p "$out"
py=${PADIM_PYTHON:-/usr/bin/python3}
bin/padim backbone --arch resnet50_cbam --seed 7 --out "$out/../.r50cbam.onnx" --save-weights "$out/../.r50cbam.safetensors" >/dev/null
bb="$out/../.r50cbam.onnx"; w="$out/../.r50cbam.safetensors"
{ uname -a; grep -m1 "model name" /proc/cpuinfo; nproc; free -g | head -2; go version; "$py" -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'; } > "$out/machine.txt" 2>&1
run() { local name=$1; shift; echo "== $name: $*"; /usr/bin/time -v "$@" > "$out/$name.out" 2> "$out/$name.err" || { echo "$name failed, see $out/$name.err"; exit 1; }; }
run padim-n200-d550 bin/padim -q bench --backbone "$bb" --data "$data" --n 200 --score 100 --dim 550 --device cpu --json
run torch-n200-d550 "$py" bench/torch_padim.py --weights "$w" --data "$data" --n 200 --score 100 --dim 550 --threads "$(nproc)" --json "$out/torch-n200-d550.json"
run padim-n50-d550  bin/padim -q bench --backbone "$bb" --data "$data" --n 50 --score 10 --dim 550 --device cpu --peak=false --json
run padim-n400-d550 bin/padim -q bench --backbone "$bb" --data "$data" --n 400 --score 10 --dim 550 --device cpu --peak=false --json
run padim-n200-d100 bin/padim -q bench --backbone "$bb" --data "$data" --n 200 --score 100 --dim 100 --device cpu --peak=false --json
run torch-n200-d100 "$py" bench/torch_padim.py --weights "$w" --data "$data" --n 200 --score 100 --dim 100 --threads "$(nproc)" --json "$out/torch-n200-d100.json"
rm -f "$bb" "$w"
echo "raw results in $out"
