package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"
)

func loadtestCommand() *cli.Command {
	return &cli.Command{
		Name:      "loadtest",
		Usage:     "drive a padim server with concurrent clients: throughput and latency per concurrency",
		UsageText: "padim loadtest --url http://127.0.0.1:8080 --model NAME [--api v1|v2] [--concurrency 1,8,32] [--duration 20s] [--expect score.json] IMAGES|DIRS...",
		Description: "Each client sends one image per request, in a loop over the images (each client starting at its own offset),\n" +
			"for --warmup (not counted) and then --duration. With --expect (the output of padim score --json on the same\n" +
			"files), every answer is checked against the CLI's score (1e-5 relative).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "url", Value: "http://127.0.0.1:8080", Usage: "server base URL"},
			&cli.StringFlag{Name: "model", Required: true, Usage: "model name on the server"},
			&cli.StringFlag{Name: "api", Value: "v1", Usage: "v1 (POST /v1/models/NAME/score, raw body) or v2 (POST /v2/models/NAME/infer, base64 JSON)"},
			&cli.StringFlag{Name: "concurrency", Value: "1,8,32", Usage: "client counts to run, in order"},
			&cli.DurationFlag{Name: "duration", Value: 20 * time.Second, Usage: "measured time per concurrency"},
			&cli.DurationFlag{Name: "warmup", Value: 3 * time.Second, Usage: "unmeasured time before each measurement"},
			&cli.StringFlag{Name: "token-file", Usage: "bearer token file"},
			&cli.BoolFlag{Name: "insecure", Usage: "do not verify the server's TLS certificate"},
			&cli.StringFlag{Name: "expect", Usage: "padim score --json output for the same files: check every score"},
			&cli.IntFlag{Name: "server-pid", Usage: "the server's process id (same machine): with it, the CPU time of other processes during each measurement is reported"},
			&cli.Float64Flag{Name: "max-other", Usage: "with --server-pid: measure a level again when other processes used more than this many cores during it (another job on a shared machine)"},
			&cli.IntFlag{Name: "retries", Value: 5, Usage: "most re-measurements of one level under --max-other"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
		},
		Action: loadtestAction,
	}
}

type ltImage struct {
	name   string
	body   []byte // what is sent
	expect float32
	has    bool
}

// LoadResult is one concurrency level's measurement.
type LoadResult struct {
	Concurrency int            `json:"concurrency"`
	Seconds     float64        `json:"seconds"`
	OK          int            `json:"ok"`
	Errors      map[string]int `json:"errors,omitempty"` // by status code or transport error
	Mismatches  int            `json:"mismatches"`       // answers differing from --expect
	Checked     int            `json:"checked"`
	PerSecond   float64        `json:"images_per_second"`
	P50ms       float64        `json:"p50_ms"`
	P90ms       float64        `json:"p90_ms"`
	P99ms       float64        `json:"p99_ms"`
	MaxMS       float64        `json:"max_ms"`
	MeanBatch   float64        `json:"mean_batch,omitempty"` // from the server's padim_batch_images
	LoadBefore  string         `json:"loadavg_before"`
	LoadAfter   string         `json:"loadavg_after"`
	// CPU use during the measurement, in cores (from /proc): the whole machine,
	// the server and this load generator, and what is left: other processes.
	CPUAll    float64   `json:"cpu_all"`
	CPUServer float64   `json:"cpu_server,omitempty"`
	CPUClient float64   `json:"cpu_client"`
	CPUOther  float64   `json:"cpu_other,omitempty"`
	Disturbed []float64 `json:"disturbed,omitempty"` // other processes' cores in the measurements thrown away (--max-other)
}

// cpuTicks is a snapshot of CPU time in clock ticks.
type cpuTicks struct {
	all, idle, server, client float64
	at                        time.Time
}

const clockTicks = 100 // USER_HZ on Linux

func readCPU(serverPID int) cpuTicks {
	t := cpuTicks{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		for i := 1; i < len(f) && i <= 8; i++ {
			v, _ := strconv.ParseFloat(f[i], 64)
			t.all += v
			if i == 4 || i == 5 { // idle, iowait
				t.idle += v
			}
		}
	}
	proc := func(path string) float64 {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // after the command name
		if len(f) < 13 {
			return 0
		}
		u, _ := strconv.ParseFloat(f[11], 64) // utime, field 14
		k, _ := strconv.ParseFloat(f[12], 64) // stime, field 15
		return u + k
	}
	t.client = proc("/proc/self/stat")
	if serverPID > 0 {
		t.server = proc(fmt.Sprintf("/proc/%d/stat", serverPID))
	}
	return t
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func loadtestAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageError("loadtest needs images or folders")
	}
	api := c.String("api")
	if api != "v1" && api != "v2" {
		return usageError("--api %q: want v1 or v2", api)
	}
	var levels []int
	for _, f := range splitList(c.String("concurrency")) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return usageError("--concurrency %q: want positive integers", c.String("concurrency"))
		}
		levels = append(levels, n)
	}
	ts, err := targets(c.Args().Slice())
	if err != nil {
		return err
	}
	expect := map[string]float32{}
	if p := c.String("expect"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var doc struct {
			Images []struct {
				Path  string   `json:"path"`
				Score *float32 `json:"score"`
			} `json:"images"`
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, im := range doc.Images {
			if im.Score != nil {
				abs, _ := filepath.Abs(im.Path)
				expect[abs] = *im.Score
			}
		}
	}
	var imgs []ltImage
	for _, t := range ts {
		b, err := os.ReadFile(t.path)
		if err != nil {
			return err
		}
		im := ltImage{name: t.path, body: b}
		abs, _ := filepath.Abs(t.path)
		im.expect, im.has = expect[abs]
		if api == "v2" {
			req := map[string]any{"id": t.path, "inputs": []map[string]any{{"name": "image", "shape": []int{1}, "datatype": "BYTES", "data": []string{base64.StdEncoding.EncodeToString(b)}}}}
			if im.body, err = json.Marshal(req); err != nil {
				return err
			}
		}
		imgs = append(imgs, im)
	}
	if c.String("expect") != "" {
		n := 0
		for _, im := range imgs {
			if im.has {
				n++
			}
		}
		if n == 0 {
			return fmt.Errorf("--expect %s names none of the images", c.String("expect"))
		}
	}
	token := ""
	if p := c.String("token-file"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		token = strings.TrimSpace(string(b))
	}
	base := strings.TrimSuffix(c.String("url"), "/")
	url := base + "/v1/models/" + c.String("model") + "/score"
	if api == "v2" {
		url = base + "/v2/models/" + c.String("model") + "/infer"
	}
	maxC := slices.Max(levels)
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		MaxIdleConns: maxC, MaxIdleConnsPerHost: maxC, IdleConnTimeout: time.Minute,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: c.Bool("insecure")},
	}}
	batchStats := func() (sum, count float64) {
		req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return math.NaN(), math.NaN()
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		label := `{model="` + c.String("model") + `"}`
		for sc.Scan() {
			l := sc.Text()
			if v, ok := strings.CutPrefix(l, "padim_batch_images_sum"+label+" "); ok {
				sum, _ = strconv.ParseFloat(v, 64)
			} else if v, ok := strings.CutPrefix(l, "padim_batch_images_count"+label+" "); ok {
				count, _ = strconv.ParseFloat(v, 64)
			}
		}
		return sum, count
	}
	// the server must be up and hold the model before any load is sent
	req, _ := http.NewRequest(http.MethodGet, base+"/v2/models/"+c.String("model")+"/ready", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("the server is not reachable: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: model %q is not ready (%s)", base, c.String("model"), resp.Status)
	}
	var results []LoadResult
	for _, conc := range levels {
		r := runLevel(c.Context, client, url, api, token, imgs, conc, c.Duration("warmup"), c.Duration("duration"), batchStats, c.Int("server-pid"))
		for try := 0; c.Float64("max-other") > 0 && c.Int("server-pid") > 0 && r.CPUOther > c.Float64("max-other") && try < c.Int("retries"); try++ {
			fmt.Fprintf(os.Stderr, "c=%d disturbed: other processes used %.2f cores (%.2f img/s); measuring again in 30 s\n", conc, r.CPUOther, r.PerSecond)
			r.Disturbed = append(r.Disturbed, r.CPUOther)
			prev := r.Disturbed
			time.Sleep(30 * time.Second)
			r = runLevel(c.Context, client, url, api, token, imgs, conc, c.Duration("warmup"), c.Duration("duration"), batchStats, c.Int("server-pid"))
			r.Disturbed = prev
		}
		results = append(results, r)
		if !c.Bool("json") {
			printLevel(r)
		}
	}
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"url": url, "api": api, "images": len(imgs), "levels": results})
	}
	for _, r := range results {
		if r.Mismatches > 0 {
			return cli.Exit(fmt.Sprintf("%d answers differ from --expect", r.Mismatches), exitError)
		}
	}
	return nil
}

func printLevel(r LoadResult) {
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

// runLevel runs conc clients for warmup + dur and measures the second part.
func runLevel(ctx context.Context, client *http.Client, url, api, token string, imgs []ltImage, conc int, warmup, dur time.Duration, batchStats func() (float64, float64), serverPID int) LoadResult {
	res := LoadResult{Concurrency: conc, Errors: map[string]int{}, LoadBefore: loadavg()}
	var mu sync.Mutex
	var lat []float64
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(dur)
	var bs0, bc0 float64
	var cpu0 cpuTicks
	var once sync.Once
	markStart := func() { once.Do(func() { bs0, bc0 = batchStats(); cpu0 = readCPU(serverPID) }) }
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w * max(1, len(imgs)/conc); ; i++ {
				if ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if t0.After(end) {
					return
				}
				if !t0.Before(measureFrom) {
					markStart()
				}
				im := imgs[i%len(imgs)]
				code, score, err := send(ctx, client, url, api, token, im.body)
				t1 := time.Now()
				if t0.Before(measureFrom) || t1.After(end) {
					continue // not wholly inside the measured window
				}
				mu.Lock()
				switch {
				case err != nil:
					res.Errors[shortErr(err)]++
				case code != http.StatusOK:
					res.Errors[strconv.Itoa(code)]++
				default:
					res.OK++
					lat = append(lat, float64(t1.Sub(t0).Microseconds())/1000)
					if im.has {
						res.Checked++
						if math.Abs(float64(score-im.expect)) > 1e-5*math.Max(math.Abs(float64(im.expect)), 1e-12) {
							res.Mismatches++
						}
					}
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	cpu1 := readCPU(serverPID)
	if secs := cpu1.at.Sub(cpu0.at).Seconds(); secs > 0 && !cpu0.at.IsZero() {
		ncpu := float64(runtime.NumCPU())
		res.CPUAll = (1 - (cpu1.idle-cpu0.idle)/(cpu1.all-cpu0.all)) * ncpu
		res.CPUClient = (cpu1.client - cpu0.client) / clockTicks / secs
		if serverPID > 0 {
			res.CPUServer = (cpu1.server - cpu0.server) / clockTicks / secs
			res.CPUOther = max(0, res.CPUAll-res.CPUServer-res.CPUClient)
		}
	}
	bs1, bc1 := batchStats()
	if bc1 > bc0 {
		res.MeanBatch = (bs1 - bs0) / (bc1 - bc0)
	}
	res.Seconds = dur.Seconds()
	res.PerSecond = float64(res.OK) / res.Seconds
	slices.Sort(lat)
	res.P50ms, res.P90ms, res.P99ms = quantile(lat, 0.5), quantile(lat, 0.9), quantile(lat, 0.99)
	if len(lat) > 0 {
		res.MaxMS = lat[len(lat)-1]
	}
	res.LoadAfter = loadavg()
	return res
}

// quantile of sorted values (nearest rank).
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(v)))) - 1
	return v[min(max(i, 0), len(v)-1)]
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// send posts one request and returns the status and, on success, the first score.
func send(ctx context.Context, client *http.Client, url, api, token string, body []byte) (int, float32, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	if api == "v2" {
		req.Header.Set("Content-Type", "application/json")
	} else {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, 0, nil
	}
	if api == "v1" {
		var r struct{ Score float32 }
		if err := json.Unmarshal(b, &r); err != nil {
			return 0, 0, err
		}
		return resp.StatusCode, r.Score, nil
	}
	var r struct {
		Outputs []struct {
			Name string
			Data []float32
		}
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, 0, err
	}
	for _, o := range r.Outputs {
		if o.Name == "score" && len(o.Data) == 1 {
			return resp.StatusCode, o.Data[0], nil
		}
	}
	return 0, 0, fmt.Errorf("no score in the answer")
}
