#!/usr/bin/env bash
# Camera frames (issue 20), in one run on one machine:
#  1. decode + resize to 224², per image per core, of 5 MP (2448×2048) frames: JPEG q92
#     RGB and grey, PNG RGB, grey and 16-bit grey, BMP, TIFF RGB, grey and 16-bit grey:
#     PIL's Image.open().convert().resize(BILINEAR, reducing_gap=None) (antialiased
#     over the whole frame; convert("RGB") as anomalib does, and the frame's own mode),
#     PIL with draft() for JPEG, and padim's decode stage as shipped on each decode path
#     (go, turbojpeg-full, turbojpeg-dct; for PNG go in the default build and
#     go-libdeflate in the libdeflate build, and go-image-png / go-x-image-tiff: the go
#     path with Go's own PNG and TIFF decoders instead of padim's readers, as before
#     them): BenchmarkDecodeView in detector/imageio runs Preprocess.DecodeView, the
#     pipeline's decode stage, on one goroutine. TIFF also LZW (RGB) and Deflate (16-bit
#     grey), as libtiff writes them through PIL;
#  2. padim score as a process on NSCORE 5 MP JPEGs against the anomalib-style PyTorch
#     PaDiM (bench/torch_padim.py --loader pil) with the same seeded Resnet50_CBAM at
#     d=550 and the same images: the default build (OpenBLAS when installed) and the
#     turbojpeg build on each of its paths; the shipped MobileNetV2 too (padim only:
#     the PyTorch comparator builds ResNets only);
#  3. padim serve p50 latency at concurrency 1 (padim loadtest), MobileNetV2, for one
#     5 MP JPEG against the same frame at 224², on each decode path;
#  4. peak RSS of padim score on four 8192² JPEGs (/usr/bin/time -v).
# The frames are padim synth textures (wood) at 2048², stretched to 2448×2048 with
# sensor noise added, so that they compress like camera frames rather than flat colour.
#   bench/run-camera.sh [WORK_DIR]
# Env: NTRAIN (50), NSCORE (100), REPS (20, decode repetitions), ROUNDS (2, of part 1),
#      DURATION (20s, serve), SKIP (parts to skip, e.g. "2 4"), PADIM_PYTHON,
#      NAME (camera: the results folder's suffix).
# Raw output in bench/results/<date>-$NAME/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/$(date -u +%Y-%m-%d)-${NAME:-camera}
mkdir -p "$out"
work=${1:-/tmp/padim-camera-bench}
mkdir -p "$work"
py=${PADIM_PYTHON:-/usr/bin/python3}
ntrain=${NTRAIN:-50}
nscore=${NSCORE:-100}
reps=${REPS:-20}
rounds=${ROUNDS:-2}
dur=${DURATION:-20s}
skip=" ${SKIP:-} "
make -s onnxruntime
export ONNXRUNTIME_LIB=${ONNXRUNTIME_LIB:-$PWD/.cache/onnxruntime/libonnxruntime.so.1}

# the two builds: default (OpenBLAS when installed, as make build) and with libjpeg-turbo
openblas=$(echo 'int main(void){return 0;}' | ${CC:-gcc} -x c -include cblas.h - -lopenblas -o /dev/null 2>/dev/null && echo openblas || true)
go build -tags "$openblas" -o "$work/padim" ./cmd/padim
go build -tags "$openblas turbojpeg" -o "$work/padim-turbojpeg" ./cmd/padim
go test -c -o "$work/imageio.test" ./detector/imageio
go test -c -tags "turbojpeg libdeflate" -o "$work/imageio-tagged.test" ./detector/imageio
def=$work/padim tj=$work/padim-turbojpeg

{ date -u; uname -a; grep -m1 "model name" /proc/cpuinfo; nproc; free -g | head -2; go version; uptime
  "$py" -c 'import PIL, torch; print("Pillow", PIL.__version__, "torch", torch.__version__, "threads", torch.get_num_threads())'
  dpkg-query -W libturbojpeg0 libopenblas0 libdeflate0 2>/dev/null || true
  git log -1 --format="padim %h %s"; echo "builds: default tags '$openblas', turbojpeg tags '$openblas turbojpeg'; decode benchmark: no tags, and 'turbojpeg libdeflate'"
  echo "NTRAIN=$ntrain NSCORE=$nscore REPS=$reps ROUNDS=$rounds DURATION=$dur"; } > "$out/machine.txt" 2>&1

# --- frames --------------------------------------------------------------------
n=$((ntrain + nscore))
src=$work/synth
[ -d "$src/train/good" ] && [ "$(ls "$src/train/good" | wc -l)" -ge "$n" ] || { rm -rf "$src"; "$def" -q synth --out "$src" --seed 1 --train "$n" --test-good 0 --test-defect 0 --size 2048; }
"$py" - "$src/train/good" "$work" "$n" <<'EOF'
import glob, os, sys
import numpy as np
from PIL import Image
srcdir, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(glob.glob(os.path.join(srcdir, "*")))[:n]
frames, jpegs = os.path.join(work, "frames"), os.path.join(work, "jpeg")
os.makedirs(frames, exist_ok=True); os.makedirs(jpegs, exist_ok=True)
rng = np.random.default_rng(5)
def camera(path):
    im = Image.open(path).convert("RGB").resize((2448, 2048), Image.BICUBIC)
    a = np.asarray(im).astype(np.float32) + rng.normal(0, 2.0, (2048, 2448, 1)).astype(np.float32)
    return a
for i, f in enumerate(files):
    dst = os.path.join(jpegs, "%03d.jpg" % i)
    if not os.path.exists(dst):
        Image.fromarray(np.clip(camera(f), 0, 255).astype(np.uint8)).save(dst, quality=92)
a = camera(files[0])
rgb = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
grey = rgb.convert("L")
g16 = Image.fromarray((np.clip(a.mean(2), 0, 255) * 257).astype(np.uint16))  # 16-bit grey (I;16)
rgb.save(os.path.join(frames, "rgb.jpg"), quality=92)
grey.save(os.path.join(frames, "grey.jpg"), quality=92)
rgb.save(os.path.join(frames, "rgb.png")); grey.save(os.path.join(frames, "grey.png")); g16.save(os.path.join(frames, "grey16.png"))
rgb.save(os.path.join(frames, "rgb.bmp"))
rgb.save(os.path.join(frames, "rgb.tif")); grey.save(os.path.join(frames, "grey.tif")); g16.save(os.path.join(frames, "grey16.tif"))
rgb.save(os.path.join(frames, "rgb-lzw.tif"), compression="tiff_lzw")
g16.save(os.path.join(frames, "grey16-deflate.tif"), compression="tiff_adobe_deflate")
# the same frame at 224² (serve's comparison) and four 8192² frames (memory)
rgb.resize((224, 224), Image.BILINEAR, reducing_gap=None).save(os.path.join(work, "frame-224.jpg"), quality=92)
big = os.path.join(work, "big"); os.makedirs(big, exist_ok=True)
b = rgb.resize((8192, 8192), Image.BICUBIC)
for k in range(4):
    b.save(os.path.join(big, "%d.jpg" % k), quality=92)
EOF
ls -l "$work/frames" > "$out/frames.txt"
data=$work/score-data   # NTRAIN training and NSCORE test links to the JPEGs
rm -rf "$data"; mkdir -p "$data/train" "$data/test"
for i in $(seq 0 $((n - 1))); do
  f=$(printf "%03d.jpg" "$i")
  if [ "$i" -lt "$ntrain" ]; then ln -s "$work/jpeg/$f" "$data/train/$f"; else ln -s "$work/jpeg/$f" "$data/test/$f"; fi
done
run() { local name=$1; shift; echo "== $name: $*"; /usr/bin/time -v "$@" > "$out/$name.out" 2> "$out/$name.err" || { echo "$name failed, see $out/$name.err"; exit 1; }
        grep -E "Elapsed|Maximum resident" "$out/$name.err" | sed 's/^\s*/   /'; }

# --- 1. decode + resize per image per core ------------------------------------
if [[ $skip != *" 1 "* ]]; then
pil() {
  "$py" - "$work/frames" "$reps" <<'EOF'
import glob, os, statistics, sys, time
from PIL import Image
d, reps = sys.argv[1], int(sys.argv[2])
def run(p, mode, draft):
    im = Image.open(p)
    if draft and im.format == "JPEG":
        im.draft(im.mode, (224, 224))
    im = im.convert(mode).resize((224, 224), Image.BILINEAR, reducing_gap=None)
    return im
for p in sorted(glob.glob(os.path.join(d, "*"))):
    with Image.open(p) as im:
        own = {"RGB": "RGB", "L": "L"}.get(im.mode, "F")  # 16-bit grey (I;16): float, its 16 bits kept
    for name, mode, draft in [("pil-rgb", "RGB", False), ("pil-own-mode", own, False)] + \
            ([("pil-draft-rgb", "RGB", True), ("pil-draft-own-mode", own, True)] if p.endswith(".jpg") else []):
        run(p, mode, draft)
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); run(p, mode, draft); ts.append(time.perf_counter() - t)
        print("%s\t%s\t%s\t%.2f" % (os.path.basename(p), name, mode, 1e3 * statistics.median(ts)))
EOF
}
padimdec() {  # the default build's paths, then the tagged build's own (turbojpeg-*, go-libdeflate)
  { PADIM_BENCH_FRAMES=$work/frames "$work/imageio.test" -test.run NONE -test.bench DecodeView -test.benchtime "${reps}x" -test.cpu 1
    PADIM_BENCH_FRAMES=$work/frames "$work/imageio-tagged.test" -test.run NONE -test.bench 'DecodeView/.*/(turbojpeg|go-libdeflate)' -test.benchtime "${reps}x" -test.cpu 1; } |
    awk '/^BenchmarkDecodeView/ { split($1, a, "/"); sub(/-1$/, "", a[3]); printf "%s\tpadim-%s\t\t%.2f\n", a[2], a[3], $3/1e6 }'
}
: > "$out/decode.tsv"
for r in $(seq "$rounds"); do
  echo "# round $r, load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/decode.tsv"
  pil >> "$out/decode.tsv"
  padimdec >> "$out/decode.tsv"
done
echo "== decode + resize to 224², ms per image on one core (median of $reps; file, method, PIL mode, ms)"
cat "$out/decode.tsv"
fi

# --- 2. padim score vs PyTorch on 5 MP JPEGs -----------------------------------
if [[ $skip != *" 2 "* ]]; then
[ -f "$work/r50.onnx" ] || "$def" -q backbone --arch resnet50_cbam --seed 7 --out "$work/r50.onnx" --save-weights "$work/r50.safetensors"
for bb in r50 mnv2; do
  bbflag=(--backbone "$work/r50.onnx" --dim 550); [ $bb = mnv2 ] && bbflag=()
  run "train-$bb-go"  "$def" -q train "${bbflag[@]}" --data "$data/train" --out "$work/$bb-go.padim" --calibrate none --device cpu
  run "score-$bb-go-default-build" "$def" -v score --model "$work/$bb-go.padim" --maps none --device cpu "$data/test"
  run "score-$bb-go-turbojpeg-build" "$tj" -v score --model "$work/$bb-go.padim" --maps none --device cpu "$data/test"
  for d in turbojpeg-full turbojpeg-dct; do
    run "train-$bb-$d" "$tj" -q train "${bbflag[@]}" --data "$data/train" --out "$work/$bb-$d.padim" --calibrate none --device cpu --decode "$d"
    run "score-$bb-$d" "$tj" -v score --model "$work/$bb-$d.padim" --maps none --device cpu "$data/test"
  done
done
# the PyTorch comparator sees train/ then test/ in one sorted list: 000…(NTRAIN-1) train, the rest test
run torch-r50-pil "$py" bench/torch_padim.py --weights "$work/r50.safetensors" --data "$work/jpeg" --n "$ntrain" --score "$nscore" --dim 550 --threads "$(nproc)" --loader pil --json "$out/torch-r50-pil.json"
fi

# --- 3. serve p50 at concurrency 1, MobileNetV2: one 5 MP JPEG vs the same at 224² ---
if [[ $skip != *" 3 "* ]]; then
one=$work/serve-5mp; small=$work/serve-224
mkdir -p "$one" "$small"; ln -sf "$work/frames/rgb.jpg" "$one/frame.jpg"; ln -sf "$work/frame-224.jpg" "$small/frame.jpg"
for d in go turbojpeg-full turbojpeg-dct; do
  bin=$tj; [ $d = go ] && bin=$def
  [ -f "$work/mnv2-$d.padim" ] || "$tj" -q train --data "$data/train" --out "$work/mnv2-$d.padim" --calibrate none --device cpu --decode "$d"
  "$bin" serve --model "m=$work/mnv2-$d.padim" --addr 127.0.0.1:18231 --device cpu --log-format json 2> "$out/serve-$d.log" &
  pid=$!
  for _ in $(seq 120); do curl -sf http://127.0.0.1:18231/v2/health/ready >/dev/null && break; sleep 1; done
  for f in 5mp 224; do
    dir=$one; [ $f = 224 ] && dir=$small
    echo "== serve $d, $f: $("$bin" loadtest --url http://127.0.0.1:18231 --model m --concurrency 1 --duration "$dur" --warmup 3s --server-pid "$pid" "$dir" | tee "$out/serve-$d-$f.txt")"
  done
  kill -TERM "$pid"; wait "$pid" || true
done
fi

# --- 4. four 8192² JPEGs: peak RSS of padim score ------------------------------
if [[ $skip != *" 4 "* ]]; then
[ -f "$work/mnv2-go.padim" ] || "$def" -q train --data "$data/train" --out "$work/mnv2-go.padim" --calibrate none --device cpu
run big-8192-go "$def" -q score --model "$work/mnv2-go.padim" --maps none --device cpu "$work/big"
[ -f "$work/mnv2-turbojpeg-dct.padim" ] && run big-8192-turbojpeg-dct "$tj" -q score --model "$work/mnv2-turbojpeg-dct.padim" --maps none --device cpu "$work/big"
fi
echo "raw results in $out"
