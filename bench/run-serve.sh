#!/usr/bin/env bash
# padim serve under load (issues 11, 24): throughput and p50/p99 latency at
# concurrency 1, 8 and 32, over REST (v1, raw image) and gRPC (the Open Inference
# Protocol's ModelInfer), with batching (--max-batch 16, --max-delay 5ms) and
# without (--max-batch 1), for Resnet50_CBAM at 224 (d=550) and the shared
# MobileNetV2, against a timed padim score on the same images. Every served
# score is checked against padim score --json (1e-5 relative): 0 mismatches.
#   bench/run-serve.sh [WORK_DIR]
#   SMALL=1 NOWAIT=1 DURATION=2s WARMUP=1s bench/run-serve.sh   # a tiny model, to check the script runs
# NOWAIT=1: measure at once, whatever else runs (no waiting for a quiet machine, no re-measuring).
# Raw output in bench/results/<date>-serve/ (-serve-small with SMALL=1).
# WORK_DIR (default /tmp/padim-serve-bench) holds the data and the 2 GB model.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/$(date -u +%Y-%m-%d)-serve${SMALL:+-small}
# a second run on the same day gets its own folder (the loadtest files are appended to)
[ -e "$out" ] && out=$out-$(date -u +%H%M%S)
mkdir -p "$out"
work=${1:-/tmp/padim-serve-bench}${SMALL:+-small}
mkdir -p "$work"
make -s build
bin=$PWD/bin/padim
export ONNXRUNTIME_LIB=${ONNXRUNTIME_LIB:-$PWD/.cache/onnxruntime/libonnxruntime.so.1}
dur=${DURATION:-20s}
maxother=${NOWAIT:+0}; maxother=${maxother:-0.15}   # loadtest re-measures a level disturbed by more than this many cores
warm=${WARMUP:-4s}

{ date -u; uname -a; grep -m1 "model name" /proc/cpuinfo; nproc; free -g | head -2; go version; git -C . log -1 --format="padim %h %s"; } > "$out/machine.txt" 2>&1

data=$work/wood
if [ -n "${SMALL:-}" ]; then
  # a resnet18 at 64² on 96² images: seconds, not the numbers to publish
  [ -d "$data" ] || "$bin" -q synth --out "$data" --seed 1 --train 10 --test-good 4 --test-defect 6 --size 96
  [ -f "$work/r18.onnx" ] || "$bin" -q backbone --arch resnet18 --seed 3 --size 64 --out "$work/r18.onnx"
  [ -f "$work/small.padim" ] || "$bin" -q train --backbone "$work/r18.onnx" --data "$data" --out "$work/small.padim" --dim 40 --device cpu
  models=(small)
  mnv2=/nonexistent
else
  [ -d "$data" ] || "$bin" -q synth --out "$data" --seed 1 --train 50 --test-good 20 --test-defect 30 --size 512
  [ -f "$work/r50cbam.onnx" ] || "$bin" -q backbone --arch resnet50_cbam --seed 7 --out "$work/r50cbam.onnx"
  [ -f "$work/r50.padim" ] || "$bin" -q train --backbone "$work/r50cbam.onnx" --data "$data" --out "$work/r50.padim" --dim 550 --device cpu
  mnv2=models/mobilenetv2/mobilenet_v2_imagenet.onnx   # the MobileNetV2 shipped in padim
  models=(r50)
fi
if [ -n "${SMALL:-}" ]; then :
elif [ -f "$mnv2" ]; then
  [ -f "$work/mnv2.padim" ] || "$bin" -q train --backbone "$mnv2" --data "$data" --out "$work/mnv2.padim" --device cpu
  models+=(mnv2)
else
  echo "no $mnv2: MobileNetV2 rows skipped" | tee -a "$out/machine.txt"
fi
images=$data/test   # 50 images, 512², resized to 224 by the models
one=$(ls "$images"/good/*.png | head -1)
# the same 50 images four times over, so that padim score's model load is small
# beside its scoring time: copies, not links (padim scores a file given twice,
# through a link or another path, once)
x4=$work/test-x4-copies
if [ ! -d "$x4" ]; then
  mkdir -p "$x4.tmp"
  for k in 1 2 3 4; do for f in "$images"/*/*.png; do
    cp "$f" "$x4.tmp/$k-$(basename "$(dirname "$f")")-$(basename "$f")"
  done; done
  mv "$x4.tmp" "$x4"
fi
nx4=$(ls "$x4" | wc -l)
[ "$nx4" = $((4 * $(ls "$images"/*/*.png | wc -l))) ] || { echo "$x4: want 4 copies of each of $images's images" >&2; exit 1; }

# timed CMD...: runs CMD; sets wall (s) and other (cores used meanwhile by
# processes other than CMD, from /proc/stat and CMD's own CPU time)
timed() {
  local a b t0 t1 own ticks i
  a=($(head -1 /proc/stat)); t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$work/.time" "$@" > /dev/null
  t1=$(date +%s.%N); b=($(head -1 /proc/stat))
  ticks=0; for i in 1 2 3 6 7 8; do ticks=$(( ticks + b[i] - a[i] )); done   # busy: all but idle and iowait
  own=$(awk '{print $1 + $2}' "$work/.time")
  wall=$(echo "$t1 - $t0" | bc)
  other=$(echo "scale=3; ($ticks / 100 - $own) / $wall" | bc)
}

# cli_rate MODEL: padim score's images/s on the nx4 copies (200; 40 with SMALL):
# nx4 − 1 images over the difference between scoring nx4 and scoring 1 (the model load cancels out);
# measured again (at most 5 times) when other processes used over 0.15 cores
cli_rate() {
  local w1 o1 try
  for try in 1 2 3 4 5 6; do
    timed "$bin" -q score --model "$work/$1.padim" --device cpu --json "$one"; w1=$wall; o1=$other
    timed "$bin" -q score --model "$work/$1.padim" --device cpu --json "$x4"
    if [ -n "${NOWAIT:-}" ] || [ "$(echo "$o1 < 0.15 && $other < 0.15" | bc)" = 1 ] || [ $try = 6 ]; then break; fi
    echo "padim score disturbed (other cores $o1, $other): again in 30 s" >&2
    sleep 30
  done
  echo "one $w1 s (other $o1 cores), $nx4 images $wall s (other $other cores), rate $(echo "($nx4-1)/($wall-$w1)" | bc -l | cut -c1-6) img/s, load $(cut -d' ' -f1-3 /proc/loadavg)"
}

# busy: the fraction of CPU time used over 5 s (by anything: nothing of this
# script runs while it is measured)
busy() {
  local a b
  a=($(head -1 /proc/stat)); sleep 5; b=($(head -1 /proc/stat))
  local idle=$(( (b[4]+b[5]) - (a[4]+a[5]) )) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo "scale=2; 1 - $idle / $total" | bc
}
# wait_quiet: the machine idle (under 15 % busy: another engineer's job would
# show) for 5 s, at most 10 minutes; the load average is noted with each result
wait_quiet() {
  [ -n "${NOWAIT:-}" ] && return 0
  local b
  for _ in $(seq 100); do
    b=$(busy)
    if [ "$(echo "$b < 0.15" | bc)" = 1 ]; then return 0; fi
    echo "waiting: the machine is $b busy: $(ps -eo pcpu,comm --sort=-pcpu | sed -n 2,3p | tr -s ' ' | tr '\n' ';')" >&2
  done
  echo "warning: still busy ($b) after 10 minutes; measuring anyway" >&2
}

[ -n "${ONLY:-}" ] && models=($ONLY)   # e.g. ONLY=mnv2 to rerun one model's rows
for m in "${models[@]}"; do
  # padim score: the reference answers
  "$bin" -q score --model "$work/$m.padim" --device cpu --json "$images" > "$out/$m-score.json"
  for mb in 16 1; do
    wait_quiet
    log=$out/$m-serve-b$mb.log
    "$bin" serve --model "$m=$work/$m.padim" --addr 127.0.0.1:18211 --grpc-addr 127.0.0.1:18212 --device cpu --max-batch "$mb" --log-format json 2> "$log" &
    pid=$!
    for _ in $(seq 120); do curl -sf http://127.0.0.1:18211/v2/health/ready >/dev/null && break; sleep 1; done
    # REST (v1: the raw image) and gRPC (ModelInfer, bytes_contents), one after the other on one server
    for api in v1 grpc; do
      echo "api $api" | tee -a "$out/$m-loadtest-b$mb.txt"
      "$bin" loadtest --url http://127.0.0.1:18211 --grpc-addr 127.0.0.1:18212 --api "$api" --model "$m" --concurrency 1,8,32 --duration "$dur" --warmup "$warm" \
        --server-pid "$pid" --max-other "$maxother" --expect "$out/$m-score.json" "$images" | tee -a "$out/$m-loadtest-b$mb.txt"
      wait_quiet
    done
    curl -s http://127.0.0.1:18211/metrics > "$out/$m-metrics-b$mb.txt"
    kill -TERM "$pid"
    wait "$pid"
    gzip -f "$log"
  done
  # concurrency 32 against padim score in the same window, three times over
  : > "$out/$m-c32-vs-score.txt"
  for rep in 1 2 3; do
    wait_quiet
    echo "rep $rep padim score: $(cli_rate "$m")" >> "$out/$m-c32-vs-score.txt"
    "$bin" serve --model "$m=$work/$m.padim" --addr 127.0.0.1:18211 --device cpu --log-format json 2> /dev/null &
    pid=$!
    for _ in $(seq 120); do curl -sf http://127.0.0.1:18211/v2/health/ready >/dev/null && break; sleep 1; done
    echo "rep $rep serve: $("$bin" loadtest --url http://127.0.0.1:18211 --model "$m" --concurrency 32 --duration "$dur" --warmup "$warm" --server-pid "$pid" --max-other "$maxother" \
      --expect "$out/$m-score.json" "$images")" >> "$out/$m-c32-vs-score.txt"
    kill -TERM "$pid"
    wait "$pid"
  done
  cat "$out/$m-c32-vs-score.txt"
done
echo "raw results in $out"
