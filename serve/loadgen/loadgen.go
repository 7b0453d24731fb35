// Package loadgen drives a padim server with concurrent clients and measures
// throughput and latency per concurrency level, checking every answer against
// padim score's: the engine of padim loadtest. It speaks v1 (raw image), v2
// (base64 JSON), v2-binary (Triton's binary tensor extension) and gRPC (the
// Open Inference Protocol).
//
// Every request has a timeout and a response size cap, a level's requests
// still in flight at its end are cancelled, and cancelling Run's context
// (SIGTERM) stops everything at once.
package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/padim/padim/serve/oip"
)

// APIs are the protocols Run speaks.
var APIs = []string{"v1", "v2", "v2-binary", "grpc"}

// Image is one image sent, with padim score's answer when known.
type Image struct {
	Name   string
	Data   []byte // the encoded image
	Expect float32
	Has    bool // Expect is known
}

// Config is one load test.
type Config struct {
	URL      string // the server's REST base URL (readiness, metrics, and v1/v2 requests)
	GRPCAddr string // with API grpc: host:port of the gRPC service
	Model    string
	API      string // one of APIs
	Token    string
	Insecure bool // do not verify the server's TLS certificate
	TLS      bool // gRPC over TLS

	Levels           []int // client counts, in order
	Duration, Warmup time.Duration
	Images           []Image

	RequestTimeout time.Duration // per request (default 60 s)
	MaxResponse    int64         // bytes of one answer at most (default 8 MiB)

	ServerPID int           // the server's process id (same machine): the CPU time of other processes is reported
	MaxOther  float64       // with ServerPID: measure a level again when other processes used more cores than this
	Retries   int           // most re-measurements of one level under MaxOther
	Pause     time.Duration // before a re-measurement (default 30 s)

	Log      io.Writer    // notes (re-measurements); nil: none
	OnResult func(Result) // called after each level
}

// Result is one concurrency level's measurement.
type Result struct {
	Concurrency int            `json:"concurrency"`
	Seconds     float64        `json:"seconds"`
	OK          int            `json:"ok"`
	Errors      map[string]int `json:"errors,omitempty"` // by status code or transport error
	Mismatches  int            `json:"mismatches"`       // answers differing from padim score's
	Checked     int            `json:"checked"`
	PerSecond   float64        `json:"images_per_second"`
	P50ms       float64        `json:"p50_ms"` // latencies of the OK answers; 0 without any
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
	Disturbed []float64 `json:"disturbed,omitempty"` // other processes' cores in the measurements thrown away (MaxOther)
}

// Defaults.
const (
	DefaultRequestTimeout = 60 * time.Second
	DefaultMaxResponse    = 8 << 20
)

// ReadExpect reads padim score --json output: the score of each image, by
// absolute path.
func ReadExpect(path string) (map[string]float32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Images []struct {
			Path  string   `json:"path"`
			Score *float32 `json:"score"`
		} `json:"images"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]float32{}
	for _, im := range doc.Images {
		if im.Score != nil {
			abs, _ := filepath.Abs(im.Path)
			out[abs] = *im.Score
		}
	}
	return out, nil
}

// sender sends one image and returns the HTTP status (or 200 for a gRPC
// OK) and the score answered.
type sender interface {
	send(ctx context.Context, im *Image) (code int, score float32, err error)
	close()
}

// Run checks that the model is ready, then measures each level.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if len(cfg.Images) == 0 {
		return nil, errors.New("no images")
	}
	if len(cfg.Levels) == 0 {
		return nil, errors.New("no concurrency level")
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxResponse <= 0 {
		cfg.MaxResponse = DefaultMaxResponse
	}
	if cfg.Pause <= 0 {
		cfg.Pause = 30 * time.Second
	}
	base := strings.TrimSuffix(cfg.URL, "/")
	maxC := slices.Max(cfg.Levels)
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConns: maxC, MaxIdleConnsPerHost: maxC, IdleConnTimeout: time.Minute,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: cfg.Insecure},
	}}
	defer client.CloseIdleConnections()
	h := &httpClient{c: client, base: base, model: cfg.Model, token: cfg.Token, max: cfg.MaxResponse, timeout: cfg.RequestTimeout}
	if err := h.ready(ctx); err != nil {
		return nil, err
	}
	var snd sender
	switch cfg.API {
	case "v1", "v2", "v2-binary":
		snd = &httpSender{h: h, api: cfg.API}
	case "grpc":
		g, err := dialGRPC(cfg)
		if err != nil {
			return nil, err
		}
		snd = g
	default:
		return nil, fmt.Errorf("API %q: want one of %s", cfg.API, strings.Join(APIs, ", "))
	}
	defer snd.close()
	var results []Result
	for _, conc := range cfg.Levels {
		r := runLevel(ctx, cfg, snd, h, conc)
		for try := 0; cfg.MaxOther > 0 && cfg.ServerPID > 0 && r.CPUOther > cfg.MaxOther && try < cfg.Retries && ctx.Err() == nil; try++ {
			if cfg.Log != nil {
				fmt.Fprintf(cfg.Log, "c=%d disturbed: other processes used %.2f cores (%.2f img/s); measuring again in %v\n", conc, r.CPUOther, r.PerSecond, cfg.Pause)
			}
			prev := append(r.Disturbed, r.CPUOther)
			select {
			case <-ctx.Done():
			case <-time.After(cfg.Pause):
			}
			r = runLevel(ctx, cfg, snd, h, conc)
			r.Disturbed = prev
		}
		if err := ctx.Err(); err != nil {
			return results, err
		}
		results = append(results, r)
		if cfg.OnResult != nil {
			cfg.OnResult(r)
		}
	}
	return results, nil
}

// runLevel runs conc clients for warmup + duration and measures the second
// part; requests still in flight at its end are cancelled.
func runLevel(ctx context.Context, cfg Config, snd sender, h *httpClient, conc int) Result {
	res := Result{Concurrency: conc, Errors: map[string]int{}, LoadBefore: loadavg()}
	var mu sync.Mutex
	var lat []float64
	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	end := measureFrom.Add(cfg.Duration)
	lctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	var bs0, bc0 float64
	var cpu0 cpuTicks
	var once sync.Once
	markStart := func() { once.Do(func() { bs0, bc0 = h.batchStats(ctx); cpu0 = readCPU(cfg.ServerPID) }) }
	var wg sync.WaitGroup
	imgs := cfg.Images
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w * max(1, len(imgs)/conc); ; i++ {
				if lctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if !t0.Before(measureFrom) {
					markStart()
				}
				im := &imgs[i%len(imgs)]
				rctx, rcancel := context.WithTimeout(lctx, cfg.RequestTimeout)
				code, score, err := snd.send(rctx, im)
				rcancel()
				t1 := time.Now()
				if t0.Before(measureFrom) || t1.After(end) || lctx.Err() != nil {
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
					if im.Has {
						res.Checked++
						if math.Abs(float64(score-im.Expect)) > 1e-5*math.Max(math.Abs(float64(im.Expect)), 1e-12) {
							res.Mismatches++
						}
					}
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	cpu1 := readCPU(cfg.ServerPID)
	if secs := cpu1.at.Sub(cpu0.at).Seconds(); secs > 0 && !cpu0.at.IsZero() {
		res.CPUAll, res.CPUServer, res.CPUClient, res.CPUOther = cpuCores(cpu0, cpu1, cfg.ServerPID > 0)
	}
	bs1, bc1 := h.batchStats(ctx)
	if bc1 > bc0 {
		res.MeanBatch = (bs1 - bs0) / (bc1 - bc0)
	}
	res.Seconds = cfg.Duration.Seconds()
	res.PerSecond = float64(res.OK) / res.Seconds
	slices.Sort(lat)
	res.P50ms, res.P90ms, res.P99ms = quantile(lat, 0.5), quantile(lat, 0.9), quantile(lat, 0.99)
	if len(lat) > 0 {
		res.MaxMS = lat[len(lat)-1]
	}
	res.LoadAfter = loadavg()
	return res
}

// quantile of sorted values (nearest rank); 0 without any (JSON has no NaN).
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
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

// httpClient is the REST side: readiness, metrics and v1/v2 requests.
type httpClient struct {
	c                  *http.Client
	base, model, token string
	max                int64
	timeout            time.Duration
}

// do sends a request and reads at most max bytes of its answer.
func (h *httpClient) do(ctx context.Context, method, path string, body []byte, hdr ...string) (int, http.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, h.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, h.max+1))
	if err != nil {
		return 0, nil, nil, err
	}
	if int64(len(b)) > h.max {
		return 0, nil, nil, fmt.Errorf("answer over %d bytes", h.max)
	}
	return resp.StatusCode, resp.Header, b, nil
}

// ready checks that the server is up and holds the model.
func (h *httpClient) ready(ctx context.Context) error {
	code, _, _, err := h.do(ctx, http.MethodGet, "/v2/models/"+h.model+"/ready", nil)
	if err != nil {
		return fmt.Errorf("the server is not reachable: %w", err)
	}
	if code != http.StatusOK {
		return fmt.Errorf("%s: model %q is not ready (%d)", h.base, h.model, code)
	}
	return nil
}

// batchStats reads padim_batch_images' sum and count from /metrics.
func (h *httpClient) batchStats(ctx context.Context) (sum, count float64) {
	code, _, b, err := h.do(ctx, http.MethodGet, "/metrics", nil)
	if err != nil || code != http.StatusOK {
		return math.NaN(), math.NaN()
	}
	label := `{model="` + h.model + `"}`
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
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

// httpSender sends v1, v2 (base64 JSON) or v2-binary requests.
type httpSender struct {
	h      *httpClient
	api    string
	mu     sync.Mutex
	bodies map[*Image]body
}

type body struct {
	b         []byte
	headerLen int // v2-binary: the JSON header's length
}

func (s *httpSender) close() {}

// body is the request body of an image, made once.
func (s *httpSender) body(im *Image) body {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bodies == nil {
		s.bodies = map[*Image]body{}
	}
	if b, ok := s.bodies[im]; ok {
		return b
	}
	var b body
	switch s.api {
	case "v1":
		b.b = im.Data
	case "v2":
		b.b, _ = json.Marshal(map[string]any{"id": im.Name, "inputs": []map[string]any{{"name": "image", "shape": []int{1}, "datatype": "BYTES",
			"data": []string{base64.StdEncoding.EncodeToString(im.Data)}}}, "outputs": []map[string]any{{"name": "score"}}})
	case "v2-binary":
		b.b, b.headerLen = BinaryRequest(im.Name, [][]byte{im.Data}, "score")
	}
	s.bodies[im] = b
	return b
}

func (s *httpSender) send(ctx context.Context, im *Image) (int, float32, error) {
	b := s.body(im)
	if s.api == "v1" {
		code, _, ans, err := s.h.do(ctx, http.MethodPost, "/v1/models/"+s.h.model+"/score", b.b, "Content-Type", "application/octet-stream")
		if err != nil || code != http.StatusOK {
			return code, 0, err
		}
		var r struct{ Score float32 }
		if err := json.Unmarshal(ans, &r); err != nil {
			return 0, 0, err
		}
		return code, r.Score, nil
	}
	hdr := []string{"Content-Type", "application/json"}
	if s.api == "v2-binary" {
		hdr = []string{"Content-Type", "application/octet-stream", "Inference-Header-Content-Length", strconv.Itoa(b.headerLen)}
	}
	code, h, ans, err := s.h.do(ctx, http.MethodPost, "/v2/models/"+s.h.model+"/infer", b.b, hdr...)
	if err != nil || code != http.StatusOK {
		return code, 0, err
	}
	v, err := ScoreOfAnswer(h.Get("Inference-Header-Content-Length"), ans)
	return code, v, err
}

// BinaryRequest is a v2 inference request in Triton's binary tensor form,
// as tritonclient.http builds it: a JSON header whose input "image" has
// binary_data_size and no data, then the BYTES elements, each a 4-byte
// little-endian length and the bytes; the outputs asked for in binary. It
// returns the body and the header's length (Inference-Header-Content-Length).
func BinaryRequest(id string, imgs [][]byte, outputs ...string) ([]byte, int) {
	var data []byte
	for _, b := range imgs {
		data = binary.LittleEndian.AppendUint32(data, uint32(len(b)))
		data = append(data, b...)
	}
	req := map[string]any{"inputs": []map[string]any{{"name": "image", "shape": []int{len(imgs)}, "datatype": "BYTES",
		"parameters": map[string]any{"binary_data_size": len(data)}}}}
	if id != "" {
		req["id"] = id
	}
	var outs []map[string]any
	for _, o := range outputs {
		outs = append(outs, map[string]any{"name": o, "parameters": map[string]any{"binary_data": true}})
	}
	if outs != nil {
		req["outputs"] = outs
	} else {
		req["parameters"] = map[string]any{"binary_data_output": true}
	}
	hdr, _ := json.Marshal(req)
	return append(hdr, data...), len(hdr)
}

// ScoreOfAnswer reads the first score of a v2 answer, JSON or binary
// (headerLen: its Inference-Header-Content-Length, "" for none).
func ScoreOfAnswer(headerLen string, b []byte) (float32, error) {
	hdr, bin := b, []byte(nil)
	if headerLen != "" {
		n, err := strconv.Atoi(headerLen)
		if err != nil || n < 0 || n > len(b) {
			return 0, fmt.Errorf("Inference-Header-Content-Length %q of a %d-byte answer", headerLen, len(b))
		}
		hdr, bin = b[:n], b[n:]
	}
	var r struct {
		Outputs []struct {
			Name       string
			Data       []float32
			Parameters struct {
				BinaryDataSize *int `json:"binary_data_size"`
			}
		}
	}
	if err := json.Unmarshal(hdr, &r); err != nil {
		return 0, err
	}
	for _, o := range r.Outputs {
		size := 0
		if o.Parameters.BinaryDataSize != nil {
			size = *o.Parameters.BinaryDataSize
			if size < 0 || size > len(bin) {
				return 0, fmt.Errorf("output %s: binary_data_size %d, %d bytes left", o.Name, size, len(bin))
			}
		}
		if o.Name == "score" {
			if o.Parameters.BinaryDataSize != nil {
				if size < 4 {
					return 0, fmt.Errorf("score: %d binary bytes", size)
				}
				return math.Float32frombits(binary.LittleEndian.Uint32(bin)), nil
			}
			if len(o.Data) > 0 {
				return o.Data[0], nil
			}
		}
		bin = bin[size:]
	}
	return 0, errors.New("no score in the answer")
}

// grpcSender sends ModelInfer calls on one connection.
type grpcSender struct {
	conn  *grpc.ClientConn
	c     oip.GRPCInferenceServiceClient
	model string
	token string
	max   int
}

func dialGRPC(cfg Config) (*grpcSender, error) {
	if cfg.GRPCAddr == "" {
		return nil, errors.New("API grpc needs the server's gRPC address (Config.GRPCAddr)")
	}
	creds := insecure.NewCredentials()
	if cfg.TLS {
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: cfg.Insecure})
	}
	conn, err := grpc.NewClient(cfg.GRPCAddr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(int(min(cfg.MaxResponse, 1<<31-1)))))
	if err != nil {
		return nil, err
	}
	return &grpcSender{conn: conn, c: oip.NewGRPCInferenceServiceClient(conn), model: cfg.Model, token: cfg.Token}, nil
}

func (g *grpcSender) close() { g.conn.Close() }

func (g *grpcSender) send(ctx context.Context, im *Image) (int, float32, error) {
	if g.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+g.token)
	}
	resp, err := g.c.ModelInfer(ctx, &oip.ModelInferRequest{ModelName: g.model, Id: im.Name,
		Inputs:  []*oip.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}, Contents: &oip.InferTensorContents{BytesContents: [][]byte{im.Data}}}},
		Outputs: []*oip.ModelInferRequest_InferRequestedOutputTensor{{Name: "score"}}})
	if err != nil {
		return 0, 0, err
	}
	for i, o := range resp.Outputs {
		if o.Name == "score" && i < len(resp.RawOutputContents) && len(resp.RawOutputContents[i]) >= 4 {
			return http.StatusOK, math.Float32frombits(binary.LittleEndian.Uint32(resp.RawOutputContents[i])), nil
		}
	}
	return 0, 0, errors.New("no score in the answer")
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
		t.all, t.idle = parseProcStat(b)
	}
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		t.client = parsePIDStat(b)
	}
	if serverPID > 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", serverPID)); err == nil {
			t.server = parsePIDStat(b)
		}
	}
	return t
}

// parseProcStat reads the machine's total and idle (with iowait) ticks from
// /proc/stat's first line.
func parseProcStat(b []byte) (all, idle float64) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	for i := 1; i < len(f) && i <= 8; i++ {
		v, _ := strconv.ParseFloat(f[i], 64)
		all += v
		if i == 4 || i == 5 { // idle, iowait
			idle += v
		}
	}
	return all, idle
}

// parsePIDStat reads a process's user + system ticks from /proc/PID/stat.
func parsePIDStat(b []byte) float64 {
	s := string(b)
	i := strings.LastIndexByte(s, ')') // after the command name, which may hold spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64) // utime, field 14
	k, _ := strconv.ParseFloat(f[12], 64) // stime, field 15
	return u + k
}

// cpuCores turns two snapshots into cores used: all, server, client, other.
func cpuCores(a, b cpuTicks, hasServer bool) (all, server, client, other float64) {
	secs := b.at.Sub(a.at).Seconds()
	if d := b.all - a.all; d > 0 {
		all = (1 - (b.idle-a.idle)/d) * float64(runtime.NumCPU())
	}
	client = (b.client - a.client) / clockTicks / secs
	if hasServer {
		server = (b.server - a.server) / clockTicks / secs
		other = max(0, all-server-client)
	}
	return
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
