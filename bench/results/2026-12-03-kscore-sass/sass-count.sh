#!/usr/bin/env bash
# usage: sass-count.sh TREE ARCH OUTDIR ; per-kernel SASS instruction mix of k_score
set -euo pipefail
tree=$1; arch=$2; out=$3; mkdir -p "$out"
nvcc -std=c++14 -O3 --expt-relaxed-constexpr -arch=sm_$arch -cubin -Xptxas -v -o "$out/k.cubin" "$tree/cuda/padim_cuda.cu" 2> "$out/ptxas.txt"
cuobjdump -sass "$out/k.cubin" > "$out/sass.txt"
awk '/Function :/{f=$3} f ~ /k_score/ {print f"\t"$0}' "$out/sass.txt" > "$out/kscore.sass"
for f in $(cut -f1 "$out/kscore.sass" | sort -u); do
  printf '%s' "$f"
  for op in 'LDS ' 'LDS.64' 'LDS.128' 'STS' 'FFMA' 'LDG' 'BAR'; do
    n=$(grep -F "$f" "$out/kscore.sass" | cut -f2 | grep -c " ${op}" || true); printf '\t%s=%s' "$op" "$n"
  done; echo
done
