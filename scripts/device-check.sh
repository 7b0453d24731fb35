#!/usr/bin/env bash
# device-check.sh — padim's CUDA checks on a machine with an NVIDIA GPU, its driver and
# the bundle from `make device-bundle`; no Go and no CUDA toolkit needed there.
#
#   scripts/device-check.sh run1 [bundle]   correctness, timings, comparator, bench (≤ 330 s)
#   scripts/device-check.sh run2 [bundle]   sanitizers and Nsight Compute, optional (≤ 330 s)
#   scripts/device-check.sh all [bundle]    both, one after the other
#   scripts/device-check.sh plan            the steps, their limits and estimates
#   scripts/device-check.sh --dry-run [bundle]
#       here, without a GPU: run 1 and run 2 for real (every GPU step must fail for want
#       of a GPU, nothing else), then the emulator's per-step estimates of both runs on
#       an H200 (cuda/emu counters: the host's own time plus the kernels' work at the
#       card's rates), checked against the limits; needs Go and `make cuda-emu`.
#
# bundle: build/device-bundle.tar.xz (default) or its unpacked folder. Each run is one
# command of at most 6 minutes on a lent machine, and run 1 is complete on its own:
# every step has a time limit, and a run stops starting steps when its budget
# (PADIM_CHECK_RUN_S, default 330 s) would be exceeded ("not run: out of time").
# Everything goes under one folder, $OUT when set (else bench/results/<date>-device/),
# each step's log as it runs and its line in summary.txt (and steps.tsv) as it ends,
# so a run cut short still returns everything done so far.
#
# Run 1 (required steps fail the check; it cannot pass without a GPU: the tests run
# with PADIM_REQUIRE_GPU=1, where every skip is a failure):
#   device    nvidia-smi, the driver's libcuda.so.1 found by ldconfig          required
#   tests     the cuda-tagged gpu tests, PADIM_CUDA_DEBUG=1 (a synchronise and check
#             after every launch): conformance, production sizes d=550…1792 in both
#             arithmetics against the CPU, precision, limits, lifetimes, MobileNetV2
#             features                                                         required
#   timings   TestDeviceTimings: P=3136, d=550, N=200 fit, both factorisations, 1000
#             images scored (from staging and from Go memory), low-rank N=32; per-kernel
#             CUDA-event times, wall times and bus bytes; 16 sampled patches checked
#             against the CPU, every distance finite                             required
#   torch     bench/torch_batched.py on the same embeddings and card: batched PyTorch
#             (bmm, cholesky, solve_triangular; fp32 and fp64) and anomalib's loop
#                                                required when PyTorch sees a GPU
#   compare   padim (the card's default arithmetic) against both, kernels and wall
#   bench     padim bench --device cuda end to end (backbone on ONNX Runtime: the
#             provider it used is named), with the bus bytes (PADIM_CUDA_TRANSFERS)   required
# Run 2 (informational: a tool that cannot attach — not installed, "Device not
# supported", error 999, no counter permission — is "unavailable", never a failure;
# errors a sanitizer finds in the kernels are failures):
#   memcheck, racecheck, synccheck   compute-sanitizer on the conformance tests
#   ncu       Nsight Compute, the first launch of each kernel (P=256)
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dry=0
if [ "${1:-}" = --dry-run ]; then
  dry=1
  shift
  set -- all "$@"
fi
mode=${1:-all}
bundle=${2:-$here/build/device-bundle.tar.xz}
run_budget=${PADIM_CHECK_RUN_S:-330}
py=${PYTHON:-python3}

# The plan: name, run, required (1) or not, time limit (s), estimated time on an H200 (s,
# from the last dry run's emulator estimates; see bench/results/*/device-check-plan.txt).
plan="device 1 1 15 3
tests 1 1 120 35
timings 1 1 50 14
torch 1 1 60 30
compare 1 0 10 1
bench-data 1 1 15 4
bench 1 1 60 35
memcheck 2 0 90 30
racecheck 2 0 120 60
synccheck 2 0 60 25
ncu 2 0 60 25"
limit_of() { awk -v s="$1" '$1 == s { print $4 }' <<< "$plan"; }
est_of() { awk -v s="$1" '$1 == s { print $5 }' <<< "$plan"; }

if [ "$mode" = plan ]; then
  printf '%-11s %4s %9s %8s %11s\n' step run required limit_s estimate_s
  awk '{ printf "%-11s %4s %9s %8s %11s\n", $1, $2, ($3 ? "yes" : "no"), $4, $5; l[$2] += $4; e[$2] += $5 }
       END { for (r = 1; r <= 2; r++) printf "run %d: limits %d s, estimates %d s\n", r, l[r], e[r] }' <<< "$plan"
  echo "each run stops starting steps past its budget of ${run_budget} s"
  exit 0
fi
case $mode in run1 | run2 | all) ;; *) echo "usage: $0 run1|run2|all|plan [bundle] | --dry-run [bundle]" >&2; exit 2 ;; esac

out=${OUT:-$here/bench/results/$(date -u +%Y-%m-%d)-device}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary=$out/summary.txt
say() { echo "$*" | tee -a "$summary"; }
failed=0
declare -A result
run_start=$SECONDS

# step NAME KIND LOG CMD...: runs CMD with the plan's time limit (less, if the run's
# budget is nearly spent; not at all if under 5 s remain), output in LOG under $out.
# KIND: req (a failure fails the check), info (reported only), tool (a sanitizer or
# profiler: "unavailable" when it cannot attach, a failure when it finds errors).
step() {
  local name=$1 kind=$2 log=$3
  shift 3
  local limit left t0=$SECONDS rc why="" verdict
  limit=$(limit_of "$name")
  left=$((run_budget - (SECONDS - run_start)))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 5 ]; then
    result[$name]=skipped
    say "$(printf '%-11s %-30s %8s  %s' "$name" "NOT RUN (out of time)" "" "run budget ${run_budget}s spent")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "not-run" "" 0 "$(limit_of "$name")" "$(est_of "$name")" >> "$out/steps.tsv"
    [ "$kind" = req ] && failed=1
    return 1
  fi
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  result[$name]=$rc
  verdict=PASS
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then why=" (time limit ${limit}s)"; fi
  if [ "$rc" != 0 ] && grep -qiE "no CUDA device|no usable CUDA|no CUDA-capable|CUDA driver|no GPU|NVIDIA-SMI has failed|nvidia-smi: (command )?not found|couldn't communicate with the NVIDIA driver|libcuda.so.1 not found" "$log"; then
    why="$why (no GPU)"
  fi
  if [ "$kind" = tool ] && { [ "$rc" = 126 ] || [ "$rc" = 127 ]; }; then
    verdict=UNAVAILABLE  # not installed (timeout could not run it)
  elif [ "$kind" = tool ] && [ "$rc" != 0 ] && [ "$rc" != 3 ] &&
    grep -qiE "Device not supported|error 999|cudaErrorUnknown|unknown error|ERR_NVGPUCTRPERM|not supported on this (platform|device)|Unable to find injection|Target application returned an error|No kernels were profiled|command not found|not installed|LibraryNotFound|Failed to (initialize|connect)" "$log"; then
    verdict=UNAVAILABLE
  elif [ "$rc" != 0 ]; then
    case $kind in
      req) verdict=FAIL; failed=1 ;;
      tool) if [ "$rc" = 3 ]; then verdict="FAIL (errors found)"; failed=1; else verdict="FAIL (informational)"; fi ;;
      *) verdict="FAIL (informational)" ;;
    esac
  fi
  say "$(printf '%-11s %-30s rc=%-3s %4ss  %s' "$name" "$verdict$why" "$rc" "$((SECONDS - t0))" "${log#$out/}")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$verdict$why" "$rc" "$((SECONDS - t0))" "$(limit_of "$name")" "$(est_of "$name")" >> "$out/steps.tsv"
  [ "$rc" = 0 ]
}

# The bundle, unpacked to an absolute path and checked against its manifest.
open_bundle() {
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
  say "bundle: $b, commit $(head -1 "$b/COMMIT" 2>/dev/null)"
  export ONNXRUNTIME_LIB=$b/libonnxruntime.so.1
  export PADIM_MODELS_DIR=$b/models
  export PADIM_REQUIRE_GPU=1
  unset PADIM_EMU_SM PADIM_CUDA_PRECISION PADIM_EMU_REPORT
  gputest=$b/gpu.test
  padim=$b/padim
}

run1() {
  run_start=$SECONDS
  say "== run 1: correctness, timings, PyTorch on the same card, bench (budget ${run_budget}s)"
  step device req "$out/device.txt" bash -c '
    nvidia-smi || exit 1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,pcie.link.gen.max,pcie.link.width.max --format=csv
    ldconfig -p | grep -E "libcuda\.so\.1 " || { echo "libcuda.so.1 not found by ldconfig: the NVIDIA driver library is missing"; exit 1; }
    uname -a; nproc; free -g | head -2'
  head -3 "$out/device.txt" 2>/dev/null | sed 's/^/  /' >> "$summary"

  # Correctness first, with a synchronise and an error check after every launch; every
  # skip fails under PADIM_REQUIRE_GPU=1, and a skip line in the log fails the step too.
  step tests req "$out/gpu-tests.log" bash -c '
    PADIM_CUDA_DEBUG=1 "$0" -test.v -test.count=1 -test.timeout=110s -test.skip "^TestDeviceTimings$"; rc=$?
    if grep -q -- "--- SKIP" "$1"; then echo "a test skipped under PADIM_REQUIRE_GPU=1"; exit 1; fi
    exit $rc' "$gputest" "$out/gpu-tests.log"
  grep -E "^(--- |ok|PASS|FAIL)|    --- (FAIL|SKIP)" "$out/gpu-tests.log" | grep -v "^--- PASS" | head -30 | sed 's/^/  /' | tee -a "$summary"
  grep -E "distances vs CPU|L⁻¹ .* distances|MobileNetV2 features|shared per block" "$out/gpu-tests.log" | sed 's/^ */  /' | tee -a "$summary"

  data=$(mktemp -d)
  step timings req "$out/timings.log" env PADIM_DEVICE_TIMINGS=1 PADIM_TIMINGS_OUT="$out/timings.json" PADIM_TIMINGS_DATA="$data" \
    "$gputest" -test.run '^TestDeviceTimings$' -test.v -test.count=1 -test.timeout=45s
  grep -E "device_test.go" "$out/timings.log" | sed 's/^ *device_test.go:[0-9]*: /  /' | tee -a "$summary"

  if [ ! -s "$data/train.f32" ]; then
    say "torch       not run: no embeddings from the timings step"
  elif "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' > /dev/null 2>&1; then
    step torch req "$out/torch.log" "$py" "$b/bench/torch_batched.py" --data "$data" --P 3136 --D 550 --N 200 --score 1000 --batch 64 \
      --json "$out/torch.json"
    step compare info "$out/compare.txt" "$py" - "$out/timings.json" "$out/torch.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
q = json.load(open(sys.argv[2]))
k = {r["Name"]: r["MS"] / 1e3 for r in t["Kernels"]}
w = {s["Name"]: s["Seconds"] for s in t["Wall"]}
d = t["Default"].upper().replace("DF32", "DF32").replace("FP64", "F64")
pick = lambda pre: sum(v for n, v in k.items() if n.startswith(pre))
ww = lambda sub: sum(v for n, v in w.items() if sub in n)
scale = t["Scored"] / (2 * t["Scored"] + t["ScoreBatch"])  # k_score ran 2×1000 + 64 images
ours = {
    "fit": (k.get("k_stage_mean", 0) + k.get("k_syrk_fold", 0), ww("fit (")),
    "factorize": (pick("k_factor<" + d), ww("factorise " + t["Default"])),
    "score": (pick("k_score<") * scale, ww("from staging memory")),
}
print(f"padim on {t['Device']}, default arithmetic {t['Default']}; PyTorch {q['tool']} on {q['device']}")
print(f"{'stage':10s} {'padim kernels':>14s} {'padim wall':>11s}  " + "  ".join(f"{f + ' kern/wall':>26s}" for f in q["forms"]))
for s in ("fit", "factorize", "score"):
    pk, pw = ours[s]
    cells = []
    for f, r in q["forms"].items():
        st = r["stages"][s]
        cells.append(f"{st['kernel_seconds']:8.4f}/{st['wall_seconds']:8.4f} ({st['kernel_seconds'] / max(pk, 1e-9):5.1f}x)")
    print(f"{s:10s} {pk:14.4f} {pw:11.4f}  " + "  ".join(f"{c:>26s}" for c in cells))
print("(x: PyTorch kernel time over padim's; padim wall includes its transfers, PyTorch wall its copies from pageable memory)")
for f, r in q["forms"].items():
    print(f"{f}: distances vs padim's {r.get('distances_vs_padim')}")
PY
    sed 's/^/  /' "$out/compare.txt" | tee -a "$summary"
  else
    say "torch       PyTorch with CUDA not present: skipped (compare against the roofline only)"
  fi
  rm -rf "$data"

  # End to end through the shipped command: the backbone runs on ONNX Runtime (its CUDA
  # provider if the library has one, else the CPU, named from padim's note).
  bdata=$(mktemp -d)
  step bench-data req "$out/bench-data.log" bash -c "
    '$padim' synth --out '$bdata/wood' --seed 1 --train 64 --test-good 0 --test-defect 0 --size 256 &&
    '$padim' backbone --arch resnet50_cbam --seed 7 --out '$bdata/r50cbam.onnx'"
  step bench req "$out/padim-bench.log" bash -c "PADIM_CUDA_TRANSFERS=1 '$padim' bench --device cuda --backbone '$bdata/r50cbam.onnx' \
    --data '$bdata/wood' --n 200 --score 200 --dim 550 --batch 16 --peak=false --json > '$out/padim-bench.json'"
  grep -iE "backbone|onnx|provider|device|gpu transfers" "$out/padim-bench.log" | head -8 | sed 's/^/  /' | tee -a "$summary"
  rm -rf "$bdata"
}

run2() {
  run_start=$SECONDS
  say "== run 2: sanitizers and Nsight Compute (informational unless they find errors; budget ${run_budget}s)"
  for tool in memcheck racecheck synccheck; do
    step "$tool" tool "$out/sanitize-$tool.log" compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$gputest" -test.run '^TestConformance$' -test.count=1
  done
  step ncu tool "$out/ncu.csv" env PADIM_DEVICE_TIMINGS=1 PADIM_TIMINGS_P=256 ncu --csv --target-processes all \
    --kernel-id '::regex:^k_:1' --section SpeedOfLight --section Occupancy --section LaunchStats \
    "$gputest" -test.run '^TestDeviceTimings$' -test.count=1
}

say "padim device check ($mode), $(date -u +%FT%TZ), host $(hostname)"
open_bundle
case $mode in
  run1) run1 ;;
  run2) run2 ;;
  all) run1; run2 ;;
esac
if [ $failed = 0 ]; then say "device check ($mode): PASS"; else say "device check ($mode): FAIL"; fi

# --dry-run: the emulator's estimates of every step on an H200 (and an RTX 4090), from
# the same tests on the host emulator (cuda/emu) with its counters on.
if [ $dry = 1 ]; then
  est=$out/estimates
  mkdir -p "$est"
  (cd "$here" && make -s cuda-emu && go test -c -tags cudaemu -o build/emu/gpu-emu.test ./gpu) > "$est/build.log" 2>&1 ||
    { say "dry run: cannot build the emulator's tests (see $est/build.log)"; exit $failed; }
  emu=$here/build/emu/gpu-emu.test
  unset PADIM_REQUIRE_GPU
  rm -f "$est"/*.report
  (cd "$here/gpu" && PADIM_EMU_REPORT="$est/tests.report" nice "$emu" -test.count=1 -test.timeout=60m -test.skip '^TestDeviceTimings$' > "$est/tests.log" 2>&1)
  for p in 16 256; do
    (cd "$here/gpu" && PADIM_EMU_REPORT="$est/timings-P$p.report" PADIM_DEVICE_TIMINGS=1 PADIM_TIMINGS_P=$p nice "$emu" -test.run '^TestDeviceTimings$' \
      -test.count=1 > "$est/timings-P$p.log" 2>&1)
  done
  "$py" - "$est" "$out/steps.tsv" <<'PY' | tee "$out/device-check-plan.txt" | tee -a "$summary"
import os, sys
est, steps = sys.argv[1], sys.argv[2]
# Card rates (datasheets) and the assumptions of the estimate, stated:
cards = {
    "H200": dict(fp32=67e12, fp64=34e12, mem=4.8e12, bus=50e9, cores=16),
    "RTX 4090": dict(fp32=82.6e12, fp64=1.29e12, mem=1.0e12, bus=25e9, cores=16),
}
EFF = 0.25         # kernels at a quarter of their roofline (the issue's "2-5x off")
DF32_COST = 10     # float32 operations per double-float multiply-add counted as 2 flops
LAUNCH = 30e-6     # per launch: launch + the debug synchronise of the tests step
HOST_CORES = os.cpu_count() or 2

def read(path):
    ks, t = [], None
    for line in open(path):
        f = line.split()
        if f[0] == "K":
            ks.append((f[1], *map(int, f[2:])))
        elif f[0] == "T":
            t = list(map(int, f[1:]))
    return ks, t

def gpu_seconds(ks, h2d, d2h, card, scale=1.0):
    c = cards[card]
    s = 0.0
    for name, launches, blocks, threads, rb, wb, rs, ws, flops, fp64 in ks:
        w = DF32_COST if "DF32" in name else 1
        f32 = max(flops - fp64, 0) * w
        tc = f32 / (EFF * c["fp32"]) + fp64 / (EFF * c["fp64"])
        tm = (rs + ws) / (EFF * c["mem"])
        s += scale * max(tc, tm) + launches * LAUNCH
    return s + scale * (h2d + d2h) / c["bus"]

def host_seconds(t):  # the process's time while no emulated stream was busy
    return max(t[0] - t[1], 0) / 1e9

print("Dry-run estimates on the host emulator (cuda/emu counters), seconds on the card:")
print(f"  kernels at {EFF:.2f} of roofline, double-float {DF32_COST} float32 ops per multiply-add, {LAUNCH * 1e6:.0f} us per launch,")
print(f"  the host's own time measured here on {HOST_CORES} cores (taken as is: the device host has more)")
rows = {}
# tests: the emulated sizes; the GPU sizes are ~20x the patches (gpu tests' !Emulated cases)
ks, t = read(os.path.join(est, "tests.report"))
SIZE = 20
for card in cards:
    rows.setdefault("tests", {})[card] = host_seconds(t) * SIZE / (cards[card]["cores"] / HOST_CORES) + gpu_seconds(ks, t[2], t[3], card, SIZE)
rows["tests"]["note"] = f"emulated suite: host {host_seconds(t):.1f} s here; GPU cases ~{SIZE}x the patches, on {cards['H200']['cores']} cores"
# timings: affine in P, from P=16 and P=64, extrapolated to P=3136
k16, t16 = read(os.path.join(est, "timings-P16.report"))
k64, t64 = read(os.path.join(est, "timings-P256.report"))
h16, h64 = host_seconds(t16), host_seconds(t64)
# affine in P (data, downloads and copies grow with P; the CPU reference does not): the
# slope from the two runs, never below 0 (the two are noisy on a shared machine)
host3136 = max(h16, h64) + max(h64 - h16, 0) / 240 * (3136 - 256)
for card in cards:
    g = gpu_seconds(k64, t64[2], t64[3], card, 3136 / 256)
    rows.setdefault("timings", {})[card] = host3136 + g
rows["timings"]["note"] = f"host {h16:.2f} s at P=16, {h64:.2f} s at P=256 -> {host3136:.1f} s at P=3136 (affine); kernels scaled x12.25 from P=256"
plan = {}
for line in open(steps):
    f = line.rstrip("\n").split("\t")
    plan[f[0]] = (int(f[4]), float(f[5]))
print(f"{'step':11s} {'limit':>6s} {'plan est':>9s} {'H200 est':>9s} {'4090 est':>9s}  basis")
tot = {1: [0, 0, 0], 2: [0, 0, 0]}
run_of = {s: (2 if s in ("memcheck", "racecheck", "synccheck", "ncu") else 1) for s in plan}
ok = True
for s, (limit, pe) in plan.items():
    r = rows.get(s)
    h = r["H200"] if r else pe
    g = r["RTX 4090"] if r else float("nan")
    basis = r["note"] if r else "plan's estimate (no kernels worth counting, or no emulation of the tool)"
    flag = "" if h <= limit else "  OVER THE LIMIT"
    ok = ok and h <= limit
    print(f"{s:11s} {limit:6d} {pe:9.1f} {h:9.1f} {g:9.1f}  {basis}{flag}")
    tot[run_of[s]][0] += limit
    tot[run_of[s]][1] += h
for r in (1, 2):
    print(f"run {r}: limits {tot[r][0]} s, estimated {tot[r][1]:.0f} s on the H200 (budget 330 s a run, 360 s a command)")
print("the plan fits" if ok and all(tot[r][1] <= 330 for r in tot) else "THE PLAN DOES NOT FIT")
PY
fi
exit $failed
