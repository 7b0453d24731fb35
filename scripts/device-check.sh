#!/usr/bin/env bash
# Runs padim's CUDA checks on a machine with an NVIDIA GPU but no Go: the
# cuda-tagged test binary built beforehand (static cudart; `make device-bundle`),
# then the kernel benchmarks. Raw logs go to ${OUT:-bench/results/run}, a short
# table is printed last.
#   scripts/device-check.sh [bundle-dir]
set -uo pipefail
bundle=${1:-build/device}
out=${OUT:-bench/results/run}
mkdir -p "$out"
export ONNXRUNTIME_LIB=${ONNXRUNTIME_LIB:-$bundle/libonnxruntime.so.1}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv; date -u; } > "$out/device.txt" 2>&1
( cd "$bundle" && ./gpu.test -test.v -test.count=1 ) > "$out/gpu-tests.log" 2>&1
tests_rc=$?
( cd "$bundle" && ./gpu.test -test.run '^$' -test.bench . -test.benchtime 3x ) > "$out/gpu-bench.log" 2>&1
bench_rc=$?
echo "== device"; head -2 "$out/device.txt"
echo "== tests (rc=$tests_rc)"; grep -E "^(--- |ok|PASS|FAIL)" "$out/gpu-tests.log" | head -30
echo "== benchmarks (rc=$bench_rc)"; grep -E "^Benchmark" "$out/gpu-bench.log"
