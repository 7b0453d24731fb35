// Command padim trains PaDiM defect detectors on good images, scores images into
// anomaly maps, verdicts and defect boxes, evaluates on MVTec-layout data, and
// builds backbones, synthetic data and benchmarks. Flags and wiring only: the
// method lives in package detector.
//
// Exit codes: 0 ok; 1 error; 2 usage; 3 `score --fail-on-defect` found a defect;
// 4 the run finished but some input files could not be read (they are reported).
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/gauss"
)

// Exit codes.
const (
	exitOK      = 0
	exitError   = 1
	exitUsage   = 2
	exitDefect  = 3
	exitSkipped = 4
)

func main() {
	if os.Getenv("GOGC") == "" {
		// padim's big buffers (statistics, models, maps) hold no pointers, so a
		// collection costs little; collecting early keeps decode garbage from
		// doubling the resident size on top of gigabytes of statistics.
		debug.SetGCPercent(25)
	}
	os.Exit(run(os.Args))
}

func run(args []string) int {
	app := newApp()
	err := app.Run(args)
	if err == nil {
		return exitOK
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "padim:", msg)
		}
		return ec.ExitCode()
	}
	fmt.Fprintln(os.Stderr, "padim:", withHint(err))
	if strings.HasPrefix(err.Error(), "Required flag") {
		return exitUsage // urfave/cli reports missing required flags as plain errors
	}
	return exitError
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "padim",
		Usage: "learn good product surfaces from a few images, find and locate defects (PaDiM)",
		Description: "Train on good images, score new ones into anomaly maps, verdicts and defect boxes.\n" +
			"Exit codes: 0 ok, 1 error, 2 usage, 3 defect found (score --fail-on-defect), 4 unreadable inputs skipped.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress bars or notes on stderr"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print each pipeline stage's busy time on stderr (train, score, eval)"},
			&cli.StringFlag{Name: "onnxruntime", Usage: "path to libonnxruntime.so.1 (else $ONNXRUNTIME_LIB, else .cache/onnxruntime)"},
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a Go CPU profile of the run to this file", Hidden: true},
		},
		Before: func(c *cli.Context) error {
			if p := c.String("cpuprofile"); p != "" {
				f, err := os.Create(p)
				if err != nil {
					return err
				}
				return pprof.StartCPUProfile(f)
			}
			return nil
		},
		After: func(c *cli.Context) error {
			if c.String("cpuprofile") != "" {
				pprof.StopCPUProfile()
			}
			return nil
		},
		Commands: []*cli.Command{
			trainCommand(), scoreCommand(), evalCommand(), infoCommand(), synthCommand(),
			backboneCommand(), demoCommand(), benchCommand(), mergeCommand(),
			serveCommand(), loadtestCommand(),
		},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return cli.Exit(fmt.Sprintf("%v (see padim %s --help)", err, c.Command.Name), exitUsage)
		},
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(os.Stderr, "padim: no command %q (see padim --help)\n", name)
			os.Exit(exitUsage)
		},
		HideHelpCommand: true,
	}
}

// withHint adds to a library error the flag or setting that changes it.
func withHint(err error) error {
	var npd *gauss.NotPositiveDefiniteError
	switch {
	case errors.As(err, &npd):
		return fmt.Errorf("%w (train --eps)", err)
	case errors.Is(err, backbone.ErrUnknownTap):
		return fmt.Errorf("%w; choose the backbone outputs with --layers", err)
	case errors.Is(err, backbone.ErrNoRuntime):
		return fmt.Errorf("%w (give the library with --onnxruntime or $%s)", err, backbone.LibraryEnv)
	case errors.Is(err, detector.ErrModel):
		return fmt.Errorf("%w (retrain it with padim train)", err)
	}
	return err
}

// usageError reports a bad flag combination with exit code 2.
func usageError(format string, a ...any) error {
	return cli.Exit(fmt.Sprintf(format, a...), exitUsage)
}
