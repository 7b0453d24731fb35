//go:build cudaemu

package gpu

import (
	"os"
	"testing"
)

// TestMain writes the emulator's report for scripts/device-check.sh --dry-run
// (PADIM_EMU_REPORT) once the tests have run.
func TestMain(m *testing.M) {
	code := m.Run()
	emuReport()
	os.Exit(code)
}
