// Command padim trains PaDiM defect detectors on good images, scores images into
// anomaly maps, verdicts and defect boxes, evaluates on MVTec-layout data, and
// builds backbones, synthetic data and benchmarks. Flags and wiring only: the
// method lives in package detector.
//
// Exit codes: 0 ok; 1 error; 2 usage; 3 `score --fail-on-defect` found a defect;
// 4 the run finished but some input files could not be read (they are reported);
// 130/143 stopped by SIGINT/SIGTERM. A signal beats the rest, and 3 beats 4.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/fileio/atomicfile"
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
	// An interrupt or termination cancels the command's context: it stops
	// (serve drains, a shard flushes what it has, a write in progress is
	// abandoned and its temporary file removed) and padim exits with the
	// shell's code for the signal. A second signal stops at once, removing the
	// files being written (models, maps and reports go to a temporary file,
	// then are renamed).
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		stoppedBy.Store(s)
		// no output is replaced from now on (a rename in progress finishes
		// first: then the run had finished its outputs and says so)
		atomicfile.Stop()
		cancel()
		fmt.Fprintf(os.Stderr, "padim: %v: stopping (a second signal stops at once)\n", s)
		<-sigs
		atomicfile.RemoveTemps()
		fmt.Fprintf(os.Stderr, "padim: stopped, nothing half-written left\n")
		os.Exit(signalCode(s))
	}()
	os.Exit(run(ctx, os.Args))
}

// stoppedBy is the signal that cancelled the run, if any.
var stoppedBy atomic.Value

// commandName is the command being run.
var commandName atomic.Value

func signalCode(s os.Signal) int {
	if s == syscall.SIGTERM {
		return 143
	}
	return 130
}

func run(ctx context.Context, args []string) int {
	app := newApp()
	err := app.RunContext(ctx, flagsFirst(app, args))
	atomicfile.RemoveTemps()
	if err == nil {
		// Finished, a signal notwithstanding (a server that drained, a
		// command whose outputs were complete before the signal came).
		if s, ok := stoppedBy.Load().(os.Signal); ok && commandName.Load() != "serve" {
			fmt.Fprintf(os.Stderr, "padim: %v came after the run had finished its work: its outputs are complete\n", s)
		}
		return exitOK
	}
	if s, ok := stoppedBy.Load().(os.Signal); ok {
		if !errors.Is(err, context.Canceled) && !errors.Is(err, atomicfile.ErrStopped) {
			fmt.Fprintln(os.Stderr, "padim:", err)
		}
		fmt.Fprintf(os.Stderr, "padim: %v: stopped, nothing half-written left\n", s)
		return signalCode(s)
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "padim:", msg)
		}
		return ec.ExitCode()
	}
	fmt.Fprintln(os.Stderr, "padim:", withHint(err))
	if strings.HasPrefix(err.Error(), "Required flag") || strings.HasPrefix(err.Error(), "flag provided but not defined") {
		return exitUsage // urfave/cli reports missing required flags as plain errors
	}
	return exitError
}

func newApp() *cli.App {
	app := &cli.App{
		Name:  "padim",
		Usage: "learn good product surfaces from a few images, find and locate defects (PaDiM)",
		Description: "Train on good images, score new ones into anomaly maps, verdicts and defect boxes.\n" +
			"Exit codes: 0 ok, 1 error, 2 usage, 3 defect found (score --fail-on-defect; it outranks 4), 4 unreadable inputs skipped, 130/143 interrupted.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress bars or notes on stderr"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print each pipeline stage's busy time on stderr (train, score, eval)"},
			&cli.StringFlag{Name: "onnxruntime", Usage: "path to libonnxruntime.so.1 (else $ONNXRUNTIME_LIB, else .cache/onnxruntime)"},
			&cli.StringFlag{Name: "max-memory", Usage: "memory padim may plan to use, like 8G (default: 80% of this machine's or its cgroup's)"},
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
			backboneCommand(), demoCommand(), benchCommand(), mergeCommand(), experimentCommand(),
			collectCommand(), calibrateCommand(), serveCommand(), loadtestCommand(),
		},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return cli.Exit(fmt.Sprintf("%v (see padim --help)", err), exitUsage)
		},
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(os.Stderr, "padim: no command %q (see padim --help)\n", name)
			os.Exit(exitUsage)
		},
		HideHelpCommand: true,
	}
	app.ExitErrHandler = func(*cli.Context, error) {} // run prints errors and picks exit codes
	var setup func(cmds []*cli.Command)
	setup = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			setupCommand(cmd)
			setup(cmd.Subcommands)
		}
	}
	setup(app.Commands)
	return app
}

// setupCommand gives a command padim's usage handling: no help sub-command,
// exit 2 for usage errors, required flags and numeric ranges checked first.
func setupCommand(cmd *cli.Command) {
	cmd.HideHelpCommand = true // arguments are never sub-command names
	cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error {
		return cli.Exit(fmt.Sprintf("%v (see padim %s --help)", err, c.Command.FullName()), exitUsage)
	}
	// Required flags are checked here: urfave/cli's own check prints help
	// and reads the first argument as a command name.
	var required []string
	for _, f := range cmd.Flags {
		if sf, ok := f.(*cli.StringFlag); ok && sf.Required {
			sf.Required = false
			required = append(required, sf.Name)
		}
	}
	if action := cmd.Action; action != nil {
		cmd.Action = func(c *cli.Context) error {
			commandName.Store(c.Command.Name)
			for _, name := range required {
				if !c.IsSet(name) {
					return usageError("--%s is required (see padim %s --help)", name, c.Command.FullName())
				}
			}
			if err := checkFlags(c); err != nil {
				return err
			}
			return action(c)
		}
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
	case errors.Is(err, detector.ErrMemory):
		return fmt.Errorf("%w (lower --dim, or raise --max-memory)", err)
	}
	return err
}

// usageError reports a bad flag combination with exit code 2.
func usageError(format string, a ...any) error {
	return cli.Exit(fmt.Sprintf(format, a...), exitUsage)
}
