//go:build cuda || cudaemu

package gpu

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// modelFile returns the path of a model file the tests read: from PADIM_MODELS_DIR
// when set (the device bundle carries the files it needs), else the checkout's embedded
// models/mobilenetv2. It skips when the file is absent, and fails instead under
// PADIM_REQUIRE_GPU=1, where a missing model would make the device check pass without
// testing anything.
func modelFile(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("PADIM_MODELS_DIR")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "models", "mobilenetv2")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		skipOrFail(t, "%s not present (PADIM_MODELS_DIR=%q)", p, os.Getenv("PADIM_MODELS_DIR"))
	}
	return p
}

// requireGPU: PADIM_REQUIRE_GPU=1 (scripts/device-check.sh), where every test must
// run on a real GPU: a skip would let the check pass without testing anything.
func requireGPU() bool { return os.Getenv("PADIM_REQUIRE_GPU") == "1" }

// skipOrFail skips the test, or fails it under PADIM_REQUIRE_GPU=1.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if requireGPU() {
		t.Fatalf("PADIM_REQUIRE_GPU=1, and the test would skip: "+format, args...)
	}
	t.Skipf(format, args...)
}
