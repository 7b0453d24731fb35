#!/usr/bin/env bash
# Per-shard overhead of sharded scoring (issue 13): the same test images scored
# by N = 1, 2 and 4 `padim score --shard i/N` processes running at once on
# this machine (as N pods on one node), then `padim collect`; beside them one
# plain `padim score`. On a machine with few cores this measures overhead
# (each process loads the model and ONNX Runtime, and they share the cores),
# not speed-up. Rounds interleave N, and the load average is recorded before
# each run (other work on the machine shows there).
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
now() { date +%s.%N; }
echo "round,n,load1,wall_s,images_per_s,shard_walls_s,collect_s" > "$out/runs.csv"
for r in $(seq 1 "$rounds"); do
  for n in 1 2 4 plain; do
    rm -rf "$tmp/res"
    load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(now)
    if [ "$n" = plain ]; then
      /usr/bin/time -f "%e" -o "$tmp/t.plain" bin/padim -q score --model "$tmp/m.padim" --maps none --device cpu "$data/test" > "$out/plain-r$r.out"
      t1=$(now); walls=$(cat "$tmp/t.plain"); c=0
    else
      pids=()
      for i in $(seq 0 $((n-1))); do
        JOB_COMPLETION_INDEX=$i /usr/bin/time -f "%e" -o "$tmp/t.$i" bin/padim -q score --model "$tmp/m.padim" --shard "auto/$n" \
          --out "$tmp/res" --maps none --device cpu "$data/test" > "$out/n$n-r$r-shard$i.out" 2>&1 &
        pids+=($!)
      done
      for p in "${pids[@]}"; do wait "$p"; done
      t1=$(now)
      walls=$(for i in $(seq 0 $((n-1))); do cat "$tmp/t.$i"; done | paste -sd' ')
      c0=$(now); bin/padim -q collect "$tmp/res" > "$out/n$n-r$r-collect.out"; c=$(echo "$(now) - $c0" | bc -l)
      cp "$tmp/res/summary.json" "$out/n$n-r$r-summary.json"
    fi
    wall=$(echo "$t1 - $t0" | bc -l)
    printf "%s,%s,%s,%.3f,%.1f,%s,%.3f\n" "$r" "$n" "$load" "$wall" "$(echo "$n_images / $wall" | bc -l)" "$walls" "$c" | tee -a "$out/runs.csv"
  done
done
uptime >> "$out/machine.txt"
echo "raw results in $out"
