package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/serve"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "serve models over HTTP: KServe v2 / Open Inference Protocol, a raw-image endpoint, Prometheus metrics",
		UsageText: "padim serve --model [NAME=]M.padim [--model ...] [--addr 127.0.0.1:8080] [--max-batch 16] [--max-delay 5ms]\n" +
			"   [--queue 64] [--max-body 32MiB] [--timeout 30s] [--token-file F] [--tls-cert F --tls-key F] [--log-format text|json]",
		Description: "Endpoints: GET /v2/health/live, /v2/health/ready, /v2, /v2/models/NAME, /v2/models/NAME/ready, /metrics;\n" +
			"POST /v2/models/NAME/infer (input \"image\": BYTES, base64 encoded images), /v1/models/NAME/score (raw image body;\n" +
			"?map=png or ?map=npy; ?map_frame=network for the network input's frame), /v2/repository/models/NAME/load (reload the file). SIGHUP reloads every model; SIGTERM drains and exits.",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "model", Required: true, Usage: "model to serve, as [NAME=]PATH (NAME defaults to the file's base name); repeat for several"},
			&cli.StringFlag{Name: "addr", Value: "127.0.0.1:8080", Usage: "listen address (port 0 picks one; the log says which)"},
			&cli.IntFlag{Name: "max-batch", Value: serve.DefaultMaxBatch, Usage: "most images per pipeline call (1: no batching)"},
			&cli.DurationFlag{Name: "max-delay", Value: serve.DefaultMaxDelay, Usage: "longest a request waits for others to batch with"},
			&cli.IntFlag{Name: "pipelines", Value: serve.DefaultPipelines, Usage: "pipeline calls in flight per model"},
			&cli.IntFlag{Name: "queue", Value: serve.DefaultQueue, Usage: "images waiting per model before requests get 429"},
			&cli.StringFlag{Name: "max-body", Value: "32MiB", Usage: "request body limit (bytes, or with KiB/MiB/GiB)"},
			&cli.DurationFlag{Name: "timeout", Value: serve.DefaultTimeout, Usage: "per-request limit (503 beyond)"},
			&cli.StringFlag{Name: "token-file", Usage: "file holding a bearer token required on every endpoint except /v2/health/*"},
			&cli.StringFlag{Name: "tls-cert", Usage: "TLS certificate (PEM); with --tls-key, serve HTTPS"},
			&cli.StringFlag{Name: "tls-key", Usage: "TLS private key (PEM)"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "request log on stderr: text or json"},
			&cli.BoolFlag{Name: "snapshot", Value: true, Usage: "serve a private copy of each model file ($TMPDIR), so rewriting the file in place cannot disturb the model being served"},
			&cli.Float64Flag{Name: "threshold", Usage: "verdict and mask threshold, overriding the calibrated ones (all models)"},
			&cli.IntFlag{Name: "open-radius", Value: detector.DefaultOpenRadius, Usage: "radius of the morphological opening that cleans masks"},
			deviceFlag, threadsFlag,
		},
		Action: serveAction,
	}
}

func serveAction(c *cli.Context) error {
	o := serve.DefaultOptions()
	o.MaxBatch, o.MaxDelay, o.Pipelines = c.Int("max-batch"), c.Duration("max-delay"), c.Int("pipelines")
	o.Queue, o.Timeout, o.Snapshot = c.Int("queue"), c.Duration("timeout"), c.Bool("snapshot")
	var err error
	if o.MaxBody, err = parseBytes(c.String("max-body")); err != nil || o.MaxBody > 1<<30 {
		return usageError("--max-body %s: want a size from 1 byte to 1GiB, like 32MiB", c.String("max-body"))
	}
	if o.MaxDelay < 0 || o.MaxDelay > 10*time.Second {
		return usageError("--max-delay %v: want 0 to 10s", o.MaxDelay)
	}
	if o.Timeout <= 0 || o.Timeout > time.Hour {
		return usageError("--timeout %v: want more than 0 and at most 1h", o.Timeout)
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		o.Version = bi.Main.Version
	}
	var h slog.Handler
	switch f := c.String("log-format"); f {
	case "text":
		h = slog.NewTextHandler(os.Stderr, nil)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, nil)
	default:
		return usageError("--log-format %q: want text or json", f)
	}
	o.Logger = slog.New(h)
	if p := c.String("token-file"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if o.Token = strings.TrimSpace(string(b)); o.Token == "" {
			return usageError("--token-file %s is empty", p)
		}
	}
	var tlsCfg *tls.Config
	if cert, key := c.String("tls-cert"), c.String("tls-key"); cert != "" || key != "" {
		if cert == "" || key == "" {
			return usageError("--tls-cert and --tls-key go together")
		}
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	var specs []serve.ModelSpec
	for _, s := range c.StringSlice("model") {
		sp, err := serve.ParseModelSpec(s)
		if err != nil {
			return usageError("--model %s: %v", s, err)
		}
		specs = append(specs, sp)
	}
	if d := c.String("device"); d != "auto" && d != "cpu" && d != "cuda" {
		return usageError("--device %q: want auto, cpu or cuda", d)
	}
	srv, err := serve.New(specs, serveLoader(c, o.MaxBatch), o)
	if err != nil {
		return withHint(err)
	}
	ln, err := net.Listen("tcp", c.String("addr"))
	if err != nil {
		srv.Close()
		return err
	}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	o.Logger.Info("listening", "addr", ln.Addr().String(), "url", scheme+"://"+ln.Addr().String(), "models", strings.Join(srv.Models(), ","),
		"max_batch", o.MaxBatch, "max_delay", o.MaxDelay.String(), "queue", o.Queue, "token", o.Token != "")

	// The first SIGTERM or SIGINT cancels c.Context (see main): the server
	// drains and exits 0; a second one stops at once.
	ctx := c.Context
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				o.Logger.Info("SIGHUP: reloading every model")
				if err := srv.ReloadAll(); err != nil {
					o.Logger.Error("reload", "err", err)
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return srv.Run(ctx, ln, tlsCfg)
}

// serveLoader opens a model file with its embedded backbone and the backend of
// --device, the backbone guarded against panics.
func serveLoader(c *cli.Context, batch int) serve.Loader {
	return func(path string) (*serve.Loaded, error) {
		m, err := detector.Load(path)
		if err != nil {
			return nil, withHint(err)
		}
		if len(m.BackboneONNX) == 0 {
			return nil, fmt.Errorf("%s has no embedded backbone", path)
		}
		if _, warn, _ := m.DecodeFor(""); warn != "" { // a libjpeg-turbo model on a build without it
			fmt.Fprintf(os.Stderr, "warning: %s: %s\n", path, warn)
		}
		taps := make([]string, len(m.Taps))
		for i, t := range m.Taps {
			taps[i] = t.Name
		}
		ext, err := openBackbone(c, m.BackboneName+" (embedded)", m.BackboneONNX, taps)
		if err != nil {
			return nil, withHint(err)
		}
		be, err := gaussBackend(c)
		if err != nil {
			ext.Close()
			return nil, err
		}
		sc, err := m.NewScorer(serve.Guard(ext), detector.ScoreConfig{Backend: be, Pipeline: detector.PipelineOptions{Batch: batch},
			Thresholds: thresholdFlag(c), OpenRadius: c.Int("open-radius")})
		if err != nil {
			ext.Close()
			be.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return &serve.Loaded{Model: m, Scorer: sc, Close: func() { sc.Close(); ext.Close(); be.Close() }}, nil
	}
}
