#!/usr/bin/env bash
# run.sh — counts the global-memory traffic and flops of each stage on the emulator,
# for the kernels of before issue 15 (legacy_v1.cu) and now (cuda/padim_cuda.cu), on
# the issue's workload (d=550, N=200, 1000 images scored) with P patches (default 4;
# every count is linear in P and is scaled to P=3136 in the table).
#   cuda/emu/traffic/run.sh [OUT_DIR] [P]
# Writes OUT_DIR/traffic-before.txt, traffic-after.txt (raw) and traffic.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
out=${1:-$root/bench/results/$(date -u +%Y-%m-%d)-cuda-emu}
P=${2:-4}
mkdir -p "$out"
b=$root/build/emu/traffic
mkdir -p "$b"
cxx=${CXX:-g++}
flags="-std=c++20 -O3 -march=native -pthread -Wno-unknown-pragmas"
t=$root/cuda/emu/traffic
$cxx $flags -x c++ -include "$root/cuda/emu/cuda_emu.h" -I"$root/cuda" -c "$root/cuda/padim_cuda.cu" -o "$b/after.o"
$cxx $flags -I"$root/cuda" -c "$t/driver.cpp" -o "$b/driver-after.o"
$cxx -pthread "$b/after.o" "$b/driver-after.o" -o "$b/after"
$cxx $flags -DPADIM_EMU_STATIC_SHARED -x c++ -include "$root/cuda/emu/cuda_emu.h" -I"$t" -c "$t/legacy_v1.cu" -o "$b/before.o"
$cxx $flags -DLEGACY -I"$t" -c "$t/driver.cpp" -o "$b/driver-before.o"
$cxx -pthread "$b/before.o" "$b/driver-before.o" -o "$b/before"
{ echo "# emulated ($(uname -m), $(nproc) cores), P=$P, d=550, N=200, 1000 scored; commit $(git -C "$root" rev-parse --short HEAD)"; "$b/before" "$P"; } > "$out/traffic-before.txt"
{ echo "# emulated ($(uname -m), $(nproc) cores), P=$P, d=550, N=200, 1000 scored; commit $(git -C "$root" rev-parse --short HEAD)"; "$b/after" "$P"; } > "$out/traffic-after.txt"
python3 "$t/table.py" "$P" "$out/traffic-before.txt" "$out/traffic-after.txt" > "$out/traffic.md"
cat "$out/traffic.md"
