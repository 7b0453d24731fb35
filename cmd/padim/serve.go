package main

import (
	"context"
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
		Usage: "serve models over HTTP and gRPC: KServe v2 / Open Inference Protocol, a raw-image endpoint, Prometheus metrics",
		UsageText: "padim serve --model [NAME=]M.padim [--model ...] [--addr 127.0.0.1:8080] [--grpc-addr 127.0.0.1:8001] [--max-batch 16] [--max-delay 5ms]\n" +
			"   [--queue 64] [--max-body 32MiB] [--max-request-memory 1GiB] [--max-map-pixels 16777216] [--timeout 30s] [--token-file F]\n" +
			"   [--tls-cert F --tls-key F] [--threshold T] [--drift-window 1000] [--log-format text|json]",
		Description: "Endpoints: GET /v2/health/live, /v2/health/ready, /v2, /v2/models/NAME, /v2/models/NAME/ready, /v2/models/NAME/stats, /metrics;\n" +
			"POST /v2/models/NAME/infer (input \"image\": BYTES, base64 encoded images, or Triton's binary tensors), /v1/models/NAME/score (raw image body;\n" +
			"?map=png or ?map=npy; ?map_frame=network for the network input's frame; ?threshold=T), /v2/repository/models/NAME/load (reload the file).\n" +
			"--grpc-addr: the Open Inference Protocol over gRPC (inference.GRPCInferenceService) and grpc.health.v1. SIGHUP reloads every model; SIGTERM drains and exits.\n" +
			"Memory: requests in flight hold at most --max-memory less the models and pipelines (bodies, what they expand to, maps, answers).",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "model", Required: true, Usage: "model to serve, as [NAME=]PATH (NAME defaults to the file's base name); repeat for several"},
			&cli.StringFlag{Name: "addr", Value: "127.0.0.1:8080", Usage: "listen address (port 0 picks one; the log says which)"},
			&cli.StringFlag{Name: "grpc-addr", Usage: "also serve the Open Inference Protocol over gRPC here, like 127.0.0.1:8001 (same models, limits, token and TLS)"},
			&cli.IntFlag{Name: "max-batch", Value: serve.DefaultMaxBatch, Usage: "most images per pipeline call (1: no batching)"},
			&cli.DurationFlag{Name: "max-delay", Value: serve.DefaultMaxDelay, Usage: "longest a request waits for others to batch with"},
			&cli.IntFlag{Name: "pipelines", Value: serve.DefaultPipelines, Usage: "pipeline calls in flight per model"},
			&cli.IntFlag{Name: "queue", Value: serve.DefaultQueue, Usage: "images waiting per model before requests get 429"},
			&cli.StringFlag{Name: "max-body", Value: "32MiB", Usage: "request body (and gRPC message) limit (bytes, or with KiB/MiB/GiB)"},
			&cli.StringFlag{Name: "max-request-memory", Value: "1GiB", Usage: "memory one request may hold: its body, what it expands to, its maps and answer (413 beyond)"},
			&cli.Int64Flag{Name: "max-map-pixels", Value: serve.DefaultMaxMapPixels, Usage: "largest anomaly map per image a request may ask for (400 beyond: ask for map_frame network)"},
			&cli.IntFlag{Name: "drift-window", Value: serve.DefaultDriftWindow, Usage: "recent image scores per model compared with its calibration scores (/metrics, /v2/models/NAME/stats)"},
			&cli.DurationFlag{Name: "timeout", Value: serve.DefaultTimeout, Usage: "per-request limit (503 beyond)"},
			&cli.StringFlag{Name: "token-file", Usage: "file holding a bearer token required on every endpoint except /v2/health/*"},
			&cli.StringFlag{Name: "tls-cert", Usage: "TLS certificate (PEM); with --tls-key, serve HTTPS"},
			&cli.StringFlag{Name: "tls-key", Usage: "TLS private key (PEM)"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "request log on stderr: text or json"},
			&cli.BoolFlag{Name: "snapshot", Value: true, Usage: "serve a private copy of each model file ($TMPDIR), so rewriting the file in place cannot disturb the model being served"},
			&cli.Float64Flag{Name: "threshold", Usage: "default verdict and mask threshold, overriding the calibrated ones (all models; a request's threshold parameter overrides it)"},
			&cli.IntFlag{Name: "open-radius", Value: detector.DefaultOpenRadius, Usage: "radius of the morphological opening that cleans masks"},
			deviceFlag, threadsFlag,
		},
		Action: serveAction,
	}
}

func serveAction(c *cli.Context) error {
	o, tlsCfg, err := serveOptions(c)
	if err != nil {
		return err
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
	pipeMem, err := serveMemory(c, &o, specs)
	if err != nil {
		return err
	}
	srv, err := serve.New(specs, serveLoader(c, pipeMem), o)
	if err != nil {
		return withHint(err)
	}
	ls, err := serveListen(c, o)
	if err != nil {
		srv.Close()
		return err
	}
	scheme, grpcAddr := "http", ""
	if tlsCfg != nil {
		scheme = "https"
	}
	if ls.GRPC != nil {
		grpcAddr = ls.GRPC.Addr().String()
	}
	o.Logger.Info("listening", "addr", ls.HTTP.Addr().String(), "url", scheme+"://"+ls.HTTP.Addr().String(), "grpc", grpcAddr, "models", strings.Join(srv.Models(), ","),
		"max_batch", o.MaxBatch, "max_delay", o.MaxDelay.String(), "queue", o.Queue, "token", o.Token != "",
		"request_memory", o.MaxMemory, "max_request_memory", o.MaxRequestMemory)
	// The first SIGTERM or SIGINT cancels c.Context (see main): the server
	// drains and exits 0; a second one stops at once.
	defer reloadOnHUP(c.Context, srv, o.Logger)()
	return srv.Serve(c.Context, ls, tlsCfg)
}

// serveOptions reads serve's flags into options (the memory budget aside:
// serveMemory) and the TLS configuration.
func serveOptions(c *cli.Context) (serve.Options, *tls.Config, error) {
	o := serve.DefaultOptions()
	o.MaxBatch, o.MaxDelay, o.Pipelines = c.Int("max-batch"), c.Duration("max-delay"), c.Int("pipelines")
	o.Queue, o.Timeout, o.Snapshot = c.Int("queue"), c.Duration("timeout"), c.Bool("snapshot")
	var err error
	if o.MaxBody, err = parseBytes(c.String("max-body")); err != nil || o.MaxBody > 1<<30 {
		return o, nil, usageError("--max-body %s: want a size from 1 byte to 1GiB, like 32MiB", c.String("max-body"))
	}
	if o.MaxDelay < 0 || o.MaxDelay > 10*time.Second {
		return o, nil, usageError("--max-delay %v: want 0 to 10s", o.MaxDelay)
	}
	if o.Timeout <= 0 || o.Timeout > time.Hour {
		return o, nil, usageError("--timeout %v: want more than 0 and at most 1h", o.Timeout)
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		o.Version = bi.Main.Version
	}
	switch f := c.String("log-format"); f {
	case "text":
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	case "json":
		o.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	default:
		return o, nil, usageError("--log-format %q: want text or json", f)
	}
	if p := c.String("token-file"); p != "" {
		if o.Token, err = readToken(p, o.Logger); err != nil {
			return o, nil, err
		}
	}
	cert, key := c.String("tls-cert"), c.String("tls-key")
	if cert == "" && key == "" {
		return o, nil, nil
	}
	if cert == "" || key == "" {
		return o, nil, usageError("--tls-cert and --tls-key go together")
	}
	warnReadable(o.Logger, "--tls-key", key)
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return o, nil, fmt.Errorf("TLS: %w", err)
	}
	return o, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// serveListen opens --addr and --grpc-addr, warning of every interface
// without a token.
func serveListen(c *cli.Context, o serve.Options) (serve.Listeners, error) {
	var ls serve.Listeners
	var err error
	if ls.HTTP, err = net.Listen("tcp", c.String("addr")); err != nil {
		return ls, err
	}
	if a := c.String("grpc-addr"); a != "" {
		if ls.GRPC, err = net.Listen("tcp", a); err != nil {
			ls.HTTP.Close()
			return ls, fmt.Errorf("--grpc-addr: %w", err)
		}
	}
	if o.Token == "" {
		for _, a := range []string{c.String("addr"), c.String("grpc-addr")} {
			if a != "" && openToAll(a) {
				o.Logger.Warn("listening on every interface without a token: anyone who reaches the port can score images and reload models; give --token-file, or listen on 127.0.0.1", "addr", a)
			}
		}
	}
	return ls, nil
}

// reloadOnHUP reloads every model on SIGHUP until ctx ends; call the
// returned function to stop listening for it.
func reloadOnHUP(ctx context.Context, srv *serve.Server, log *slog.Logger) func() {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for {
			select {
			case <-hup:
				log.Info("SIGHUP: reloading every model")
				if err := srv.ReloadAll(); err != nil {
					log.Error("reload", "err", err)
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() { signal.Stop(hup) }
}

// readToken reads a bearer token file: one line (a trailing newline is
// fine), refused when empty or of several lines; a file others may read is
// warned about.
func readToken(path string, log *slog.Logger) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	switch {
	case tok == "":
		return "", usageError("--token-file %s is empty", path)
	case strings.ContainsAny(tok, "\r\n"):
		return "", usageError("--token-file %s holds %d lines; want the token alone on one line", path, strings.Count(tok, "\n")+1)
	case strings.ContainsAny(tok, " \t"):
		return "", usageError("--token-file %s: the token holds a space or tab; want one word", path)
	}
	warnReadable(log, "--token-file", path)
	return tok, nil
}

// warnReadable warns when a secret file may be read by other users.
func warnReadable(log *slog.Logger, flag, path string) {
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o004 != 0 {
		log.Warn(flag+" is readable by other users: chmod 600 it", "path", path, "mode", fmt.Sprintf("%04o", st.Mode().Perm()))
	}
}

// openToAll reports whether a listen address takes every interface.
func openToAll(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "" || (ip != nil && ip.IsUnspecified())
}

// serveMemory sets the server's request budget: --max-memory less the
// models (their files, mapped) and the pipelines' own bounded memory, and
// the per-request share, --max-request-memory; it returns the memory bound
// of each pipeline call.
func serveMemory(c *cli.Context, o *serve.Options, specs []serve.ModelSpec) (int64, error) {
	total, err := memoryBudget(c)
	if err != nil {
		return 0, err
	}
	pipeMem := min(detector.DefaultMemory, total/8)
	var models int64
	for _, sp := range specs {
		if st, err := os.Stat(sp.Path); err == nil {
			models += st.Size()
		}
	}
	pipes := int64(len(specs)) * int64(o.Pipelines) * pipeMem
	o.MaxMemory = total - models - pipes
	if o.MaxMemory < 64<<20 {
		return 0, usageError("--max-memory %d bytes leaves %d for requests after the models (%d bytes) and their pipelines (%d): raise --max-memory, or serve fewer models or --pipelines", total, o.MaxMemory, models, pipes)
	}
	per, err := parseBytes(c.String("max-request-memory"))
	if err != nil || per < 1<<20 {
		return 0, usageError("--max-request-memory %s: want a size of at least 1MiB, like 1GiB", c.String("max-request-memory"))
	}
	o.MaxRequestMemory = min(per, o.MaxMemory)
	if o.MaxMapPixels = c.Int64("max-map-pixels"); o.MaxMapPixels < 1 {
		return 0, usageError("--max-map-pixels %d: want at least 1", o.MaxMapPixels)
	}
	if o.DriftWindow = c.Int("drift-window"); o.DriftWindow < 1 || o.DriftWindow > 1<<20 {
		return 0, usageError("--drift-window %d: want 1 to 1048576 images", o.DriftWindow)
	}
	return pipeMem, nil
}

// serveLoader opens a model file with its embedded backbone and the backend of
// --device, the backbone guarded against panics.
func serveLoader(c *cli.Context, pipeMem int64) serve.Loader {
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
		ext, be, err := openScoring(c, m.BackboneName+" (embedded)", m.BackboneONNX, m.TapNames())
		if err != nil {
			return nil, withHint(err)
		}
		sc, err := m.NewScorer(serve.Guard(ext), detector.ScoreConfig{Backend: be, Pipeline: detector.PipelineOptions{Memory: pipeMem},
			Thresholds: thresholdFlag(c), OpenRadius: c.Int("open-radius")})
		if err != nil {
			ext.Close()
			be.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return &serve.Loaded{Model: m, Scorer: sc, Close: func() { sc.Close(); ext.Close(); be.Close() }}, nil
	}
}
