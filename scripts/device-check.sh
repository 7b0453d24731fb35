#!/usr/bin/env bash
# device-check.sh — padim's CUDA checks on a machine with an NVIDIA GPU, its driver and
# the bundle from `make device-bundle`; no Go and no CUDA toolkit needed there.
#
#   scripts/device-check.sh [build/device-bundle.tar.xz | bundle-dir]
#
# It cannot pass without a GPU: the tests run with PADIM_REQUIRE_GPU=1, so a missing
# device (or a missing model file) fails them instead of skipping them, and the exit
# status is that of the checks (0 only when every required step passed). All paths
# are absolute. Everything goes under one folder: $OUT when set, else
# bench/results/<date>-device/ beside this script's checkout; with PADIM_CHECK_PACK=1
# only summary.txt and device-check.tar.gz (all the logs) are written there.
#
# Steps, each under a time limit (about 5 minutes in all on one GPU):
#   device    nvidia-smi                                                   required
#   tests     the cuda-tagged gpu tests with PADIM_CUDA_DEBUG=1: conformance, parity at
#             d=550/700/1024/1792 against the CPU, precision, limits, lifetimes,
#             MobileNetV2 features                                          required
#   timings   per-kernel CUDA-event times: P=3136, d=550, N=200, 1000 images scored
#             in calls of 64, both factorisation arithmetics                required
#   bench     padim bench --device cuda, end to end (backbone on ONNX Runtime's CPU)
#                                                                           required
#   torch     bench/torch_padim.py --device cuda on the same images and weights
#                                                    required when PyTorch sees a GPU
#   sanitize  compute-sanitizer memcheck, racecheck, synccheck on the conformance
#             tests                                             required when installed
#   ncu       Nsight Compute on one launch of each kernel (P=256)   informational
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:-$here/build/device-bundle.tar.xz}
out=${OUT:-$here/bench/results/$(date -u +%Y-%m-%d)-device}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$out
if [ "${PADIM_CHECK_PACK:-0}" = 1 ]; then work=$(mktemp -d); fi
summary=$out/summary.txt
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
failed=0
declare -A result

# step NAME REQUIRED LIMIT_S LOG CMD...: runs CMD with a time limit, output in LOG.
step() {
  local name=$1 required=$2 limit=$3 log=$4
  shift 4
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local why=""
  [ $rc = 124 ] && why=" (time limit ${limit}s)"
  if [ $rc != 0 ] && grep -qiE "no CUDA device|no usable CUDA|CUDA driver|no GPU|NVIDIA-SMI has failed|nvidia-smi: (command )?not found|couldn't communicate with the NVIDIA driver" "$log"; then
    why="$why (no GPU)"
  fi
  result[$name]=$rc
  local verdict=PASS
  if [ $rc != 0 ]; then
    verdict=FAIL
    if [ "$required" = 1 ]; then failed=1; else verdict="FAIL (informational)"; fi
  fi
  say "$(printf '%-9s %-22s rc=%-3s %4ss  %s' "$name" "$verdict$why" "$rc" "$((SECONDS - t0))" "${log#$work/}")"
  return $rc
}

say "padim device check, $(date -u +%FT%TZ), host $(hostname)"

# The bundle, unpacked to an absolute path and checked against its manifest.
if [ -f "$bundle" ]; then
  b=$(mktemp -d)
  if ! tar -xJf "$bundle" -C "$b"; then say "bundle: cannot unpack $bundle"; exit 2; fi
  b=$b/device
elif [ -d "$bundle" ]; then
  b=$(cd "$bundle" && pwd)
else
  say "bundle: $bundle not found (make device-bundle)"
  exit 2
fi
if ! (cd "$b" && sha256sum --quiet -c MANIFEST.sha256) >> "$summary" 2>&1; then say "bundle: files do not match MANIFEST.sha256"; exit 2; fi
say "bundle: $b, commit $(cat "$b/COMMIT" 2>/dev/null)"
export ONNXRUNTIME_LIB=$b/libonnxruntime.so.1
export PADIM_MODELS_DIR=$b/models
export PADIM_REQUIRE_GPU=1
unset PADIM_EMU_SM PADIM_CUDA_PRECISION
gputest=$b/gpu.test
padim=$b/padim

step device 1 30 "$work/device.txt" bash -c '
  nvidia-smi || exit 1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  uname -a; nproc; free -g | head -2'

# Correctness first, with a synchronise and error check after every launch.
step tests 1 200 "$work/gpu-tests.log" env PADIM_CUDA_DEBUG=1 "$gputest" -test.v -test.count=1 -test.timeout=180s
grep -E "^(--- |ok|PASS|FAIL)|    --- (PASS|FAIL)" "$work/gpu-tests.log" | grep -v "^    --- PASS" | head -40 | tee -a "$summary"
grep -E "distances vs CPU|L⁻¹ .* distances|MobileNetV2 features|shared per block" "$work/gpu-tests.log" | sed 's/^ */  /' | tee -a "$summary"

step timings 1 120 "$work/timings.log" env PADIM_DEVICE_TIMINGS=1 PADIM_TIMINGS_OUT="$work/timings.json" \
  "$gputest" -test.run '^TestDeviceTimings$' -test.v -test.count=1 -test.timeout=110s
grep -E "device_test.go" "$work/timings.log" | sed 's/^ *device_test.go:[0-9]*: /  /' | tee -a "$summary"

# The sanitizers: errors they find (rc 3) and tests failing under them (rc 1) fail the
# check; a sanitizer that cannot run at all (its own errors) is reported, not counted.
if [ "${result[device]}" != 0 ]; then
  say "sanitize  skipped: no GPU"
elif command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck synccheck; do
    step "$tool" 0 90 "$work/sanitize-$tool.log" compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$gputest" -test.run '^TestConformance$' -test.count=1
    rc=${result[$tool]}
    if [ "$rc" = 3 ] || [ "$rc" = 1 ]; then
      failed=1
      say "          $tool: $([ "$rc" = 3 ] && echo "found errors" || echo "the tests failed under it") (counts)"
    fi
  done
else
  say "sanitize  compute-sanitizer not installed: skipped"
fi

if [ "${result[device]}" != 0 ]; then
  say "ncu       skipped: no GPU"
elif command -v ncu > /dev/null && [ "${PADIM_CHECK_NCU:-1}" = 1 ]; then
  step ncu 0 120 "$work/ncu.csv" env PADIM_DEVICE_TIMINGS=1 PADIM_TIMINGS_P=256 ncu --csv --target-processes all \
    --kernel-name regex:'^k_(stage_mean|syrk_fold|factor|score)' --launch-count 6 --section SpeedOfLight \
    "$gputest" -test.run '^TestDeviceTimings$' -test.count=1
else
  say "ncu       not installed or PADIM_CHECK_NCU=0: skipped"
fi

# End to end, and the PyTorch comparator on the same images and weights.
data=$(mktemp -d)
step bench-data 1 120 "$work/bench-data.log" bash -c "
  '$padim' synth --out '$data/wood' --seed 1 --train 64 --test-good 0 --test-defect 0 --size 256 &&
  '$padim' backbone --arch resnet50_cbam --seed 7 --out '$data/r50cbam.onnx' --save-weights '$data/r50cbam.safetensors'"
step bench 1 150 "$work/padim-bench.log" "$padim" -q bench --device cuda --backbone "$data/r50cbam.onnx" --data "$data/wood" \
  --n 200 --score 1000 --dim 550 --batch 64 --json
if python3 -c 'import sys, torch, torchvision; sys.exit(0 if torch.cuda.is_available() else 1)' > /dev/null 2>&1; then
  step torch 1 200 "$work/torch.log" python3 "$b/bench/torch_padim.py" --device cuda --weights "$data/r50cbam.safetensors" \
    --data "$data/wood" --n 200 --score 1000 --dim 550 --batch 64 --json "$work/torch.json"
  python3 - "$work/torch.json" "$work/timings.json" <<'PY' 2>/dev/null | tee -a "$summary"
import json, sys
t = json.load(open(sys.argv[1]))["stages_seconds"]
k = {r["Name"]: r["MS"] / 1e3 for r in json.load(open(sys.argv[2]))["Kernels"]}
fac = min(v for n, v in k.items() if n.startswith("k_factor"))
ours = {"fit": k.get("k_stage_mean", 0) + k.get("k_syrk_fold", 0), "factorize": fac, "score": sum(v for n, v in k.items() if n.startswith("k_score<"))}
for s in ("fit", "factorize", "score"):
    print(f"  {s:10s} torch {t[s]:8.3f} s   padim kernels {ours[s]:8.3f} s   ratio {t[s] / max(ours[s], 1e-9):6.1f}x")
PY
else
  say "torch     PyTorch with CUDA not present: skipped (compare against the roofline only)"
fi
rm -rf "$data"

if [ "$work" != "$out" ]; then
  tar -C "$work" -czf "$out/device-check.tar.gz" .
  say "logs packed in $out/device-check.tar.gz"
fi
if [ $failed = 0 ]; then say "device check: PASS"; else say "device check: FAIL"; fi
exit $failed
