#!/usr/bin/env bash
# Regenerates the Go code of the vendored Open Inference Protocol proto.
# Needs protoc (apt-get install protobuf-compiler); installs the two plugins
# at the versions that generated the committed code.
set -euo pipefail
cd "$(dirname "$0")"
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
pkg=github.com/padim/padim/serve/oip
PATH=$(go env GOPATH)/bin:$PATH protoc \
  --go_out=. --go_opt=paths=source_relative --go_opt=Mopen_inference_grpc.proto=$pkg \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative --go-grpc_opt=Mopen_inference_grpc.proto=$pkg \
  open_inference_grpc.proto
