#!/usr/bin/env bash
# Per-shard overhead of sharded scoring (issue 13): the same test images scored
# by N = 1, 2 and 4 `padim score --shard i/N` processes running at once on
# this machine (as N pods on one node), then `padim collect`; beside them one
# plain `padim score`. On a machine with few cores this measures overhead
# (each process loads the model and ONNX Runtime, and they share the cores),
# not speed-up. Rounds interleave N. The machine is shared: each run records
# the load average before it and the CPU time that other processes took
# during it (others_cpu_s: the machine's busy time from /proc/stat less the
# runs' own user+system time); compare runs where it is near 0.
#   bench/run-shards.sh [ROUNDS]
# Raw output in bench/results/<date>-shards/.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
rounds=${1:-3}
out=bench/results/$(date -u +%Y-%m-%d)-shards
mkdir -p "$out"
data=bench/.data/shards-wood-256
[ -d "$data" ] || bin/padim -q synth --out "$data" --seed 11 --train 20 --test-good 120 --test-defect 120 --size 256
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin/padim -q train --data "$data" --out "$tmp/m.padim" --device cpu > "$out/train.out"
n_images=$(find "$data/test" -name '*.png' | wc -l)
{ uname -a; grep -m1 "model name" /proc/cpuinfo; nproc; free -g | head -2; go version; git rev-parse HEAD
  echo "images: $n_images of 256² ($data/test); model: $(cat "$out/train.out")"; } > "$out/machine.txt" 2>&1
hz=$(getconf CLK_TCK)
now() { date +%s.%N; }
busyj() { local a; a=($(head -1 /proc/stat)); echo $((a[1] + a[2] + a[3] + a[6] + a[7] + a[8])); }
echo "round,n,load1,others_cpu_s,wall_s,images_per_s,cpu_s,shard_walls_s,collect_s" > "$out/runs.csv"
for r in $(seq 1 "$rounds"); do
  for n in 1 2 4 plain; do
    rm -rf "$tmp/res" "$tmp"/t.*
    load=$(cut -d' ' -f1 /proc/loadavg)
    b0=$(busyj); t0=$(now)
    if [ "$n" = plain ]; then
      /usr/bin/time -f "%e %U %S" -o "$tmp/t.0" bin/padim -q score --model "$tmp/m.padim" --maps none --device cpu "$data/test" > "$out/plain-r$r.out"
      np=1
    else
      pids=()
      for i in $(seq 0 $((n-1))); do
        JOB_COMPLETION_INDEX=$i /usr/bin/time -f "%e %U %S" -o "$tmp/t.$i" bin/padim -q score --model "$tmp/m.padim" --shard "auto/$n" \
          --out "$tmp/res" --maps none --device cpu "$data/test" > "$out/n$n-r$r-shard$i.out" 2>&1 &
        pids+=($!)
      done
      for p in "${pids[@]}"; do wait "$p"; done
      np=$n
    fi
    t1=$(now); b1=$(busyj)
    c=0
    if [ "$n" != plain ]; then
      c0=$(now); bin/padim -q collect "$tmp/res" > "$out/n$n-r$r-collect.out"; c=$(echo "$(now) - $c0" | bc -l)
      cp "$tmp/res/summary.json" "$out/n$n-r$r-summary.json"
    fi
    walls=$(for i in $(seq 0 $((np-1))); do cut -d' ' -f1 "$tmp/t.$i"; done | paste -sd' ')
    own=$(for i in $(seq 0 $((np-1))); do cut -d' ' -f2,3 "$tmp/t.$i" | tr ' ' '+'; done | paste -sd+ | bc -l)
    wall=$(echo "$t1 - $t0" | bc -l)
    others=$(echo "($b1 - $b0) / $hz - $own" | bc -l)
    printf "%s,%s,%s,%.2f,%.3f,%.1f,%.2f,%s,%.3f\n" "$r" "$n" "$load" "$others" "$wall" "$(echo "$n_images / $wall" | bc -l)" "$own" "$walls" "$c" | tee -a "$out/runs.csv"
  done
done
uptime >> "$out/machine.txt"
echo "raw results in $out"
