#!/usr/bin/env bash
# Fetches the pinned ONNX Runtime shared library (1.24.1, what onnxruntime_go
# v1.27.0 expects) from the npm package onnxruntime-node, checks the tarball's
# sha256, and extracts libonnxruntime.so.1 into .cache/onnxruntime/ (ignored by
# git). `npm pack` only downloads the tarball; `npm install` would run the
# package's install script, which downloads from the internet and fails here.
set -euo pipefail
VERSION=1.24.1
SHA256=57181cf6e6e711b155c5b942d591fd63ded0b5de5c4922d51fd994e7f6ac2772
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/onnxruntime"
lib="$dest/libonnxruntime.so.1"
stamp="$dest/VERSION"
if [[ -f "$lib" && "$(cat "$stamp" 2>/dev/null)" == "$VERSION" ]]; then
  echo "onnxruntime $VERSION already in $lib"
  exit 0
fi
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) arch=x64 ;;
  Linux/aarch64) arch=arm64 ;;
  *) echo "fetch-onnxruntime: no pinned build for $(uname -s)/$(uname -m); set ONNXRUNTIME_LIB to your own libonnxruntime" >&2; exit 1 ;;
esac
command -v npm >/dev/null || { echo "fetch-onnxruntime: npm is needed (apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "onnxruntime-node@$VERSION" >/dev/null)
tgz="$tmp/onnxruntime-node-$VERSION.tgz"
got=$(sha256sum "$tgz" | cut -d' ' -f1)
if [[ "$got" != "$SHA256" ]]; then
  echo "fetch-onnxruntime: checksum mismatch for onnxruntime-node-$VERSION.tgz: got $got, want $SHA256" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$tmp" "package/bin/napi-v6/linux/$arch/libonnxruntime.so.1"
mkdir -p "$dest"
mv "$tmp/package/bin/napi-v6/linux/$arch/libonnxruntime.so.1" "$lib.tmp"
mv "$lib.tmp" "$lib"
echo "$VERSION" > "$stamp"
echo "onnxruntime $VERSION installed in $lib"
