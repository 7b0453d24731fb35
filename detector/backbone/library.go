// Package backbone runs an ONNX feature extractor with ONNX Runtime
// (github.com/yalue/onnxruntime_go): one image input, named tap outputs, dynamic
// batch. It implements detector.Extractor.
package backbone

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// ORTVersion is the ONNX Runtime release onnxruntime_go v1.27.0 is built for.
const ORTVersion = "1.24.1"

// LibraryEnv names the environment variable that points at libonnxruntime.
const LibraryEnv = "ONNXRUNTIME_LIB"

const libName = "libonnxruntime.so.1"

// ErrNoRuntime is wrapped by errors about a missing or unusable ONNX Runtime.
var ErrNoRuntime = errors.New("ONNX Runtime unavailable")

// FindLibrary returns the ONNX Runtime shared library to load: explicit (a flag)
// if set, else $ONNXRUNTIME_LIB, else .cache/onnxruntime/ in the working folder,
// any folder above it, or beside the executable (where scripts/fetch-onnxruntime.sh
// and `make` put it).
func FindLibrary(explicit string) (string, error) {
	var tried []string
	check := func(p string) bool {
		tried = append(tried, p)
		st, err := os.Stat(p)
		return err == nil && !st.IsDir()
	}
	if explicit != "" {
		if check(explicit) {
			return explicit, nil
		}
		return "", fmt.Errorf("%w: the library %s given does not exist", ErrNoRuntime, explicit)
	}
	if env := os.Getenv(LibraryEnv); env != "" {
		if check(env) {
			return env, nil
		}
		return "", fmt.Errorf("%w: %s=%s does not exist", ErrNoRuntime, LibraryEnv, env)
	}
	var dirs []string
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			dirs = append(dirs, filepath.Join(d, ".cache", "onnxruntime"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	if exe, err := os.Executable(); err == nil {
		d := filepath.Dir(exe)
		dirs = append(dirs, d, filepath.Join(d, ".cache", "onnxruntime"), filepath.Join(d, "..", ".cache", "onnxruntime"))
	}
	for _, d := range dirs {
		if p := filepath.Join(d, libName); check(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s (ONNX Runtime %s) not found; looked in %s. Run `make onnxruntime` "+
		"(scripts/fetch-onnxruntime.sh) in the padim checkout, or set %s to the library's path",
		ErrNoRuntime, libName, ORTVersion, strings.Join(tried, ", "), LibraryEnv)
}

var (
	initOnce sync.Once
	initErr  error
	initPath string
)

// Init loads ONNX Runtime once per process from FindLibrary(explicit).
func Init(explicit string) error {
	initOnce.Do(func() {
		p, err := FindLibrary(explicit)
		if err != nil {
			initErr = err
			return
		}
		ort.SetSharedLibraryPath(p)
		if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
			initErr = fmt.Errorf("%w: loading %s: %v (padim needs ONNX Runtime %s: run `make onnxruntime` or point %s at that version)",
				ErrNoRuntime, p, err, ORTVersion, LibraryEnv)
			return
		}
		if v := ort.GetVersion(); !strings.HasPrefix(v, ORTVersion[:strings.LastIndex(ORTVersion, ".")]) {
			initErr = fmt.Errorf("%w: %s is ONNX Runtime %s; padim needs %s (run `make onnxruntime`)", ErrNoRuntime, p, v, ORTVersion)
			return
		}
		initPath = p
	})
	return initErr
}

// LibraryPath is the loaded library (after a successful Init).
func LibraryPath() string { return initPath }
