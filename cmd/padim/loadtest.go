package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/job"
	"github.com/padim/padim/serve/loadgen"
)

func loadtestCommand() *cli.Command {
	return &cli.Command{
		Name:  "loadtest",
		Usage: "drive a padim server with concurrent clients: throughput and latency per concurrency",
		UsageText: "padim loadtest --url http://127.0.0.1:8080 --model NAME [--api v1|v2|v2-binary|grpc] [--grpc-addr 127.0.0.1:8001]\n" +
			"   [--concurrency 1,8,32] [--duration 20s] [--expect score.json] IMAGES|DIRS...",
		Description: "Each client sends one image per request, in a loop over the images (each client starting at its own offset),\n" +
			"for --warmup (not counted) and then --duration. With --expect (the output of padim score --json on the same\n" +
			"files), every answer is checked against the CLI's score (1e-5 relative). Every request has --request-timeout\n" +
			"and an answer at most --max-response; requests in flight at a level's end are cancelled; SIGTERM stops it.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "url", Value: "http://127.0.0.1:8080", Usage: "server base URL (REST: readiness, metrics, v1 and v2 requests)"},
			&cli.StringFlag{Name: "grpc-addr", Usage: "with --api grpc: the server's gRPC address (padim serve --grpc-addr)"},
			&cli.StringFlag{Name: "model", Required: true, Usage: "model name on the server"},
			&cli.StringFlag{Name: "api", Value: "v1", Usage: "v1 (POST /v1/models/NAME/score, raw body), v2 (POST /v2/models/NAME/infer, base64 JSON), " +
				"v2-binary (the same with Triton's binary tensors) or grpc (ModelInfer)"},
			&cli.StringFlag{Name: "concurrency", Value: "1,8,32", Usage: "client counts to run, in order"},
			&cli.DurationFlag{Name: "duration", Value: 20 * time.Second, Usage: "measured time per concurrency"},
			&cli.DurationFlag{Name: "warmup", Value: 3 * time.Second, Usage: "unmeasured time before each measurement"},
			&cli.DurationFlag{Name: "request-timeout", Value: loadgen.DefaultRequestTimeout, Usage: "longest wait for one answer (counted as an error beyond)"},
			&cli.StringFlag{Name: "max-response", Value: "8MiB", Usage: "largest answer read (counted as an error beyond)"},
			&cli.StringFlag{Name: "token-file", Usage: "bearer token file"},
			&cli.BoolFlag{Name: "insecure", Usage: "do not verify the server's TLS certificate"},
			&cli.BoolFlag{Name: "grpc-tls", Usage: "gRPC over TLS"},
			&cli.StringFlag{Name: "expect", Usage: "padim score --json output for the same files: check every score"},
			&cli.IntFlag{Name: "server-pid", Usage: "the server's process id (same machine): with it, the CPU time of other processes during each measurement is reported"},
			&cli.Float64Flag{Name: "max-other", Usage: "with --server-pid: measure a level again when other processes used more than this many cores during it (another job on a shared machine)"},
			&cli.IntFlag{Name: "retries", Value: 5, Usage: "most re-measurements of one level under --max-other"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
		},
		Action: loadtestAction,
	}
}

func loadtestAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageError("loadtest needs images or folders")
	}
	cfg := loadgen.Config{URL: c.String("url"), GRPCAddr: c.String("grpc-addr"), Model: c.String("model"), API: c.String("api"),
		Insecure: c.Bool("insecure"), TLS: c.Bool("grpc-tls"), Duration: c.Duration("duration"), Warmup: c.Duration("warmup"),
		RequestTimeout: c.Duration("request-timeout"), ServerPID: c.Int("server-pid"), MaxOther: c.Float64("max-other"), Retries: c.Int("retries"), Log: os.Stderr}
	if !slices.Contains(loadgen.APIs, cfg.API) {
		return usageError("--api %q: want %s", cfg.API, strings.Join(loadgen.APIs, ", "))
	}
	if cfg.API == "grpc" && cfg.GRPCAddr == "" {
		return usageError("--api grpc needs --grpc-addr")
	}
	if cfg.RequestTimeout <= 0 {
		return usageError("--request-timeout %v: want more than 0", cfg.RequestTimeout)
	}
	var err error
	if cfg.MaxResponse, err = parseBytes(c.String("max-response")); err != nil {
		return usageError("--max-response %s: want a size, like 8MiB", c.String("max-response"))
	}
	for _, f := range splitList(c.String("concurrency")) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return usageError("--concurrency %q: want positive integers", c.String("concurrency"))
		}
		cfg.Levels = append(cfg.Levels, n)
	}
	if p := c.String("token-file"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	ts, err := job.Targets(c.Args().Slice())
	if err != nil {
		return err
	}
	expect := map[string]float32{}
	if p := c.String("expect"); p != "" {
		if expect, err = loadgen.ReadExpect(p); err != nil {
			return err
		}
	}
	checked := 0
	for _, t := range ts {
		b, err := os.ReadFile(t.Path)
		if err != nil {
			return err
		}
		im := loadgen.Image{Name: t.Path, Data: b}
		abs, _ := filepath.Abs(t.Path)
		if im.Expect, im.Has = expect[abs]; im.Has {
			checked++
		}
		cfg.Images = append(cfg.Images, im)
	}
	if c.String("expect") != "" && checked == 0 {
		return fmt.Errorf("--expect %s names none of the images", c.String("expect"))
	}
	if !c.Bool("json") {
		cfg.OnResult = printLevel
	}
	results, err := loadgen.Run(c.Context, cfg)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"url": cfg.URL, "grpc": cfg.GRPCAddr, "api": cfg.API, "images": len(cfg.Images), "levels": results})
	}
	for _, r := range results {
		if r.Mismatches > 0 {
			return cli.Exit(fmt.Sprintf("%d answers differ from --expect", r.Mismatches), exitError)
		}
	}
	return nil
}

func printLevel(r loadgen.Result) {
	errs := "0"
	if len(r.Errors) > 0 {
		var parts []string
		for k, v := range r.Errors {
			parts = append(parts, fmt.Sprintf("%s×%d", k, v))
		}
		slices.Sort(parts)
		errs = strings.Join(parts, " ")
	}
	fmt.Printf("c=%-3d %7.2f img/s  p50 %7.1f ms  p90 %7.1f ms  p99 %7.1f ms  max %7.1f ms  ok %d  errors %s  checked %d mismatches %d  mean batch %.2f  load %s → %s  cpu cores: all %.2f server %.2f client %.2f other %.2f%s\n",
		r.Concurrency, r.PerSecond, r.P50ms, r.P90ms, r.P99ms, r.MaxMS, r.OK, errs, r.Checked, r.Mismatches, r.MeanBatch, r.LoadBefore, r.LoadAfter, r.CPUAll, r.CPUServer, r.CPUClient, r.CPUOther, disturbed(r.Disturbed))
}

func disturbed(d []float64) string {
	if len(d) == 0 {
		return ""
	}
	return fmt.Sprintf(" (after %d disturbed measurements: other %v cores)", len(d), d)
}
