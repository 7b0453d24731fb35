//go:build cuda || cudaemu

package gpu

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// sharedModel returns the path of a file of ../shared/models: from PADIM_MODELS_DIR
// when set (the device bundle carries the files it needs), else beside the checkout.
// It skips when the file is absent, and fails instead under PADIM_REQUIRE_GPU=1,
// where a missing model would make the device check pass without testing anything.
func sharedModel(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("PADIM_MODELS_DIR")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", "shared", "models")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("PADIM_REQUIRE_GPU") == "1" {
			t.Fatalf("%s not present (PADIM_MODELS_DIR=%q)", p, os.Getenv("PADIM_MODELS_DIR"))
		}
		t.Skipf("%s not present", p)
	}
	return p
}
