# padim — two commands on a fresh machine:
#   make demo   build, then run the whole job on an embedded default (synthetic wood)
#   make test   go vet and every test (with the race detector on the concurrent parts)
# Both fetch the pinned ONNX Runtime first (scripts/fetch-onnxruntime.sh, via npm).

SHELL := /bin/bash
GO    ?= go
BIN   := bin/padim

# The CPU Gaussian stages use OpenBLAS when its headers and library are installed
# (apt-get install libopenblas-dev); otherwise pure Go (gonum). TAGS=... overrides.
OPENBLAS := $(shell echo 'int main(void){return 0;}' | $${CC:-gcc} -x c -include cblas.h - -lopenblas -o /dev/null 2>/dev/null && echo openblas)
# JPEG decoding with libjpeg-turbo (--decode turbojpeg-full|turbojpeg-dct) when its
# TurboJPEG headers and library are installed (apt-get install libturbojpeg0-dev).
TURBOJPEG := $(shell echo 'int main(void){return 0;}' | $${CC:-gcc} -x c -include turbojpeg.h - -lturbojpeg -o /dev/null 2>/dev/null && echo turbojpeg)
# PNG pixel data inflated by libdeflate (2.5-3x Go's compress/flate; the same pixels)
# when its headers and library are installed (apt-get install libdeflate-dev).
LIBDEFLATE := $(shell echo 'int main(void){return 0;}' | $${CC:-gcc} -x c -include libdeflate.h - -ldeflate -o /dev/null 2>/dev/null && echo libdeflate)
TAGS      ?= $(strip $(OPENBLAS) $(TURBOJPEG) $(LIBDEFLATE))

.PHONY: build demo test onnxruntime cuda cuda-check cuda-emu device-bundle bench clean

build: onnxruntime
	$(GO) build -tags '$(TAGS)' -o $(BIN) ./cmd/padim

onnxruntime:
	@scripts/fetch-onnxruntime.sh

demo: build
	$(BIN) demo

# step runs one test step ($(2)) under a name ($(1)) and prints its wall time, also
# appended to $(TEST_TIMES) (.ci/run prints the list at the end).
TEST_TIMES := build/test-times.txt
define step
	@echo "==> $(1)"
	@t0=$$(date +%s%N); $(2) || exit $$?; \
	  printf 'make test: %-44s %7.1f s\n' '$(1)' "$$(( ($$(date +%s%N) - t0) / 1000000 ))e-3" | tee -a $(TEST_TIMES)
endef

test: onnxruntime cuda-emu
	@mkdir -p build && : > $(TEST_TIMES)
	$(call step,gofmt,unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "gofmt needed on: $$unformatted" >&2; exit 1; fi)
	$(call step,go vet,$(GO) vet ./...)
	$(call step,go test ./...,$(GO) test -count=1 ./...)
	$(call step,go vet -tags cudaemu ./gpu,$(GO) vet -tags cudaemu ./gpu)
	$(call step,go test -tags cudaemu ./gpu,$(GO) test -count=1 -tags cudaemu ./gpu)
	$(call step,go test -race -tags cudaemu ./gpu,$(GO) test -count=1 -race -tags cudaemu -run 'Close|GC|Concurrent' ./gpu)
ifneq ($(OPENBLAS),)
	$(call step,go vet -tags openblas ./...,$(GO) vet -tags openblas ./...)
	$(call step,go test -tags openblas ./detector/...,$(GO) test -count=1 -tags openblas ./detector/...)
endif
ifneq ($(TURBOJPEG),)
	$(call step,go vet -tags turbojpeg ./...,$(GO) vet -tags turbojpeg ./...)
	$(call step,go test -tags turbojpeg imageio detector,$(GO) test -count=1 -tags turbojpeg ./detector/imageio/... ./detector)
	$(call step,go test -tags turbojpeg -run Decode ./cmd/padim,$(GO) test -count=1 -tags turbojpeg -run 'Decode' ./cmd/padim)
endif
ifneq ($(LIBDEFLATE),)
	$(call step,go vet -tags libdeflate imageio,$(GO) vet -tags libdeflate ./detector/imageio/...)
	$(call step,go test -tags libdeflate imageio,$(GO) test -count=1 -tags libdeflate ./detector/imageio/...)
	$(call step,go test -tags libdeflate -run HostileInputTable cmd,$(GO) test -count=1 -tags libdeflate -run 'HostileInputTable' ./cmd/padim)
endif
	$(call step,go test -race -short detector cmd,$(GO) test -count=1 -race -short ./detector/... ./cmd/...)

# CUDA: the static kernel library (cmake) and the cuda-tagged binary.
CUDA_BUILD := build/cuda
cuda: onnxruntime
	cmake -S . -B $(CUDA_BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CUDA_BUILD) -j
	$(GO) build -tags 'cuda $(TAGS)' -o $(BIN) ./cmd/padim

# Compile-only checks of the CUDA side (what CI runs on machines without a GPU), and
# ptxas's report of every kernel on every architecture (build/cuda/ptxas.txt): register
# spills fail the check. PTXAS_ARCHS: CUDA 13 no longer compiles sm_60/sm_70.
NVCC        ?= nvcc
PTXAS_ARCHS ?= 60 61 70 75 80 86 89 90
cuda-check: cuda
	$(GO) vet -tags cuda ./...
	$(GO) test -c -tags cuda -o $(CUDA_BUILD)/gpu.test ./gpu
	$(NVCC) -std=c++14 -O3 --expt-relaxed-constexpr $(foreach a,$(PTXAS_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
	  -Xptxas -v -c cuda/padim_cuda.cu -o $(CUDA_BUILD)/ptxas-check.o 2> $(CUDA_BUILD)/ptxas.txt
	@kernels=$$(grep -c "Compiling entry" $(CUDA_BUILD)/ptxas.txt); \
	  if grep -E " [1-9][0-9]* bytes spill (stores|loads)" $(CUDA_BUILD)/ptxas.txt >/dev/null; then \
	    grep -B2 -E " [1-9][0-9]* bytes spill (stores|loads)" $(CUDA_BUILD)/ptxas.txt >&2; \
	    echo "ptxas: register spills (all of it in $(CUDA_BUILD)/ptxas.txt)" >&2; exit 1; fi; \
	  echo "ptxas: $$kernels kernel compilations for sm $(PTXAS_ARCHS), no register spills"

# Everything a GPU machine with only the NVIDIA driver needs for scripts/device-check.sh,
# in one compressed file to carry there (at most 64 MiB): the cuda-tagged test binary and
# padim (static cudart; pure-Go CPU kernels, so no OpenBLAS needed there), ONNX Runtime,
# the model files the tests read (the embedded MobileNetV2: no ../shared needed), the
# PyTorch comparators, the script itself, a manifest of checksums.
DEVICE := build/device
device-bundle: onnxruntime
	cmake -S . -B $(CUDA_BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CUDA_BUILD) -j
	rm -rf $(DEVICE) build/device-bundle.tar.xz
	mkdir -p $(DEVICE)/models $(DEVICE)/bench $(DEVICE)/scripts
	$(GO) test -c -tags cuda -o $(DEVICE)/gpu.test ./gpu
	$(GO) build -tags cuda -o $(DEVICE)/padim ./cmd/padim
	cp .cache/onnxruntime/libonnxruntime.so.1 $(DEVICE)/
	cp models/mobilenetv2/mobilenet_v2_imagenet.onnx models/export.py $(DEVICE)/models/
	cp bench/torch_padim.py bench/torch_batched.py $(DEVICE)/bench/
	cp scripts/device-check.sh $(DEVICE)/scripts/
	{ git rev-parse HEAD; git status --porcelain --untracked-files=no | sed 's/^/modified: /'; } > $(DEVICE)/COMMIT
	cd $(DEVICE) && find . -type f ! -name MANIFEST.sha256 | sort | xargs sha256sum > MANIFEST.sha256
	tar -C build -cf - device | xz -T0 -6 > build/device-bundle.tar.xz
	@size=$$(stat -c %s build/device-bundle.tar.xz); echo "build/device-bundle.tar.xz: $$size bytes"; \
	  test $$size -le 67108864 || { echo "device bundle over 64 MiB" >&2; exit 1; }

# The same kernel source on the host emulator (cuda/emu): the CUDA backend's tests
# without a GPU, run by make test; and the emulator's own self-test (run by go test).
# -march=native: the library is built where its tests run (6x faster emulation).
EMU_BUILD := build/emu
EMU_CXXFLAGS ?= -std=c++20 -O3 -march=native -pthread -Wall -Wno-unknown-pragmas
cuda-emu:
	mkdir -p $(EMU_BUILD)
	$${CXX:-g++} $(EMU_CXXFLAGS) -x c++ -include cuda/emu/cuda_emu.h -Icuda -c cuda/padim_cuda.cu -o $(EMU_BUILD)/padim_cuda.o
	ar rcs $(EMU_BUILD)/libpadim_cuda_emu.a $(EMU_BUILD)/padim_cuda.o
	$${CXX:-g++} $(EMU_CXXFLAGS) -x c++ -include cuda/emu/cuda_emu.h cuda/emu/selftest.cu -o $(EMU_BUILD)/emu_selftest

bench: build
	$(BIN) bench

clean:
	rm -rf bin build padim-demo
