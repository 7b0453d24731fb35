package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"testing"
)

// runCmd runs a prepared command of the binary and returns its stdout,
// stderr, exit code and peak RSS; a command that could not run fails the test.
func runCmd(t *testing.T, cmd *exec.Cmd) (string, string, int, int64) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss << 10
	}
	return out.String(), errb.String(), code, rss
}

// The padim binary the tests run, built once per test binary.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// buildTags are the build tags this test binary was built with: the padim
// it runs is built with the same (a -tags turbojpeg run tests that build).
func buildTags() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-tags" {
				return s.Value
			}
		}
	}
	return ""
}

// testBinary returns the padim binary: built from this package once, with
// this test binary's tags, or a copy of $PADIM_TEST_BIN (another build, an
// older one: to check that a test fails without the fix it is for).
func testBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "padim-bin-"); binErr != nil {
			return
		}
		os.Chmod(binDir, 0o755) // rows run as nobody exec it too
		binPath = filepath.Join(binDir, "padim")
		var out []byte
		if bin := os.Getenv("PADIM_TEST_BIN"); bin != "" {
			out, binErr = exec.Command("cp", bin, binPath).CombinedOutput()
		} else {
			out, binErr = exec.Command("go", "build", "-tags", buildTags(), "-o", binPath, ".").CombinedOutput()
		}
		if binErr != nil {
			binErr = errors.New(string(out))
		}
	})
	if binErr != nil {
		t.Fatalf("building padim: %v", binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if fix.dir != "" {
		os.RemoveAll(fix.dir)
	}
	os.Exit(code)
}
