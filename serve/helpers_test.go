package serve

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/internal/fakebackbone"
)

// fakeConfig steers every fake backbone a test's loader makes.
type fakeConfig struct {
	calls  atomic.Int64
	closed atomic.Int64 // Loaded.Close calls
	loads  atomic.Int64
	// gate, when set, holds every Extract call until it is closed; each call
	// first says so on entered (when set, without blocking).
	gate    atomic.Pointer[chan struct{}]
	entered chan struct{}
}

// hold makes Extract calls wait until the returned function is called.
func (c *fakeConfig) hold() (release func()) {
	g := make(chan struct{})
	c.gate.Store(&g)
	var once sync.Once
	return func() {
		once.Do(func() {
			c.gate.Store(nil)
			close(g)
		})
	}
}

// fakeBackbone is internal/fakebackbone, steered by a fakeConfig. It panics on
// a "poison" image: one whose first pixel is pure magenta.
type fakeBackbone struct {
	*fakebackbone.Backbone
	cfg *fakeConfig
}

const fakeSize = 32

func newFake(cfg *fakeConfig, seed uint64) *fakeBackbone {
	return &fakeBackbone{fakebackbone.New(fakeSize, seed), cfg}
}

// poison's first normalised pixel: R high, G low (never so in the textures).
func isPoison(img []float32, size int) bool {
	return img[0] > 2.0 && img[size*size] < -1.8 && img[2*size*size] > 1.5
}

func (f *fakeBackbone) Extract(batch []float32, n int) ([]embed.Tap, error) {
	if f.cfg != nil {
		f.cfg.calls.Add(1)
		if g := f.cfg.gate.Load(); g != nil {
			select {
			case f.cfg.entered <- struct{}{}:
			default:
			}
			<-*g
		}
	}
	per := 3 * f.Size * f.Size
	for b := 0; b < n; b++ {
		if isPoison(batch[b*per:], f.Size) {
			panic("poison image")
		}
	}
	return f.Backbone.Extract(batch, n)
}

// texture encodes a 48×48 wood-like PNG; defect paints a blue square.
func texture(seed uint64, defect bool) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	img := image.NewNRGBA(image.Rect(0, 0, 48, 48))
	phase := r.Float64() * 6
	for y := 0; y < 48; y++ {
		for x := 0; x < 48; x++ {
			v := 0.5 + 0.2*math.Sin(float64(x)/3+phase) + 0.05*r.NormFloat64()
			c := uint8(math.Max(0, math.Min(255, v*255)))
			img.Set(x, y, color.NRGBA{c, uint8(float64(c) * 0.8), uint8(float64(c) * 0.5), 255})
		}
	}
	if defect {
		x0, y0 := 6+r.IntN(20), 6+r.IntN(20)
		for y := y0; y < y0+12; y++ {
			for x := x0; x < x0+12; x++ {
				img.Set(x, y, color.NRGBA{10, 60, 200, 255})
			}
		}
	}
	return encodePNG(img)
}

func poison() []byte {
	img := image.NewNRGBA(image.Rect(0, 0, 40, 40))
	for i := 0; i < len(img.Pix); i += 4 {
		copy(img.Pix[i:], []uint8{255, 0, 255, 255})
	}
	return encodePNG(img)
}

func encodePNG(img image.Image) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// trainModel trains a calibrated model on the fake backbone and saves it.
func trainModel(t testing.TB, path string, seed uint64, dim int) {
	t.Helper()
	dir := t.TempDir()
	var files []string
	for i := 0; i < 24; i++ {
		p := filepath.Join(dir, fmt.Sprintf("%02d.png", i))
		if err := os.WriteFile(p, texture(seed*1000+uint64(i), false), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	pre := imageio.Preprocess{Resize: fakeSize, Mean: imageio.ImageNetMean, Std: imageio.ImageNetStd}
	cfg := detector.TrainConfig{Preprocess: pre, Pipeline: detector.PipelineOptions{Batch: 8}, Dim: dim, Seed: seed, Eps: 0.01,
		Holdout: 0.25, Sigma: 2, BackboneName: "fake", BackboneONNX: []byte("fake graph")}
	m, _, err := detector.Train(context.Background(), newFake(nil, 1), files, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Calibration == nil {
		t.Fatal("no calibration")
	}
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
}

// fakeLoader loads models onto fake backbones steered by cfg.
func fakeLoader(cfg *fakeConfig) Loader {
	return func(path string) (*Loaded, error) {
		m, err := detector.Load(path)
		if err != nil {
			return nil, err
		}
		sc, err := m.NewScorer(Guard(newFake(cfg, 1)), detector.ScoreConfig{Pipeline: detector.PipelineOptions{Batch: 8, Workers: 2}})
		if err != nil {
			return nil, err
		}
		cfg.loads.Add(1)
		return &Loaded{Model: m, Scorer: sc, Close: func() { cfg.closed.Add(1); sc.Close() }}, nil
	}
}

// expected is one image's answer from the library, scored alone.
type expected struct {
	Score  float32
	Defect bool
	Map    []float32 // in the input image's frame (the server's default)
	W, H   int
	NetMap []float32 // in the network's frame
	NW, NH int
	Boxes  int // in the input image's pixels
}

// libraryScores scores each image alone through the library, as padim score does.
func libraryScores(t testing.TB, path string, imgs [][]byte) []expected {
	t.Helper()
	m, err := detector.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := m.NewScorer(newFake(nil, 1), detector.ScoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	var in []detector.Input
	for i, b := range imgs {
		in = append(in, detector.Input{Name: fmt.Sprint(i), Data: b})
	}
	out := make([]expected, len(imgs))
	err = sc.Score(context.Background(), in, func(r *detector.Result) error {
		if r.Err != nil {
			return r.Err
		}
		m, w, h := r.ImageMap()
		out[r.Index] = expected{r.Score, r.Defect, m, w, h, r.Map, r.W, r.H, len(r.ImageBoxes)}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testServer is a server on the loopback.
type testServer struct {
	*Server
	url    string
	client *http.Client
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer

	grpcAddr string
	grpc     *grpc.ClientConn // with startWith(…, true, nil)
}

// dialTest connects a gRPC client (over TLS trusting pool when set).
func dialTest(t testing.TB, addr string, pool *x509.CertPool) *grpc.ClientConn {
	t.Helper()
	creds := insecure.NewCredentials()
	if pool != nil {
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool})
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t testing.TB, specs []ModelSpec, load Loader, o Options) *testServer {
	return startWith(t, specs, load, o, false, nil)
}

// startWith starts a server on the loopback: REST, and gRPC when withGRPC
// (ts.grpc is a client connection to it); over TLS when cfg is set.
func startWith(t testing.TB, specs []ModelSpec, load Loader, o Options, withGRPC bool, cfg *tls.Config) *testServer {
	t.Helper()
	logs := &syncBuffer{}
	o.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	srv, err := New(specs, load, o)
	if err != nil {
		t.Fatal(err)
	}
	var ls Listeners
	if ls.HTTP, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	scheme := "http://"
	if cfg != nil {
		scheme = "https://"
	}
	ts := &testServer{Server: srv, url: scheme + ls.HTTP.Addr().String(), cancel: cancel, done: make(chan error, 1), logs: logs,
		client: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	if withGRPC {
		if ls.GRPC, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		ts.grpcAddr = ls.GRPC.Addr().String()
		if cfg == nil {
			ts.grpc = dialTest(t, ts.grpcAddr, nil)
		}
	}
	go func() { ts.done <- srv.Serve(ctx, ls, cfg) }()
	t.Cleanup(func() {
		// connections the client dialled but never used count as busy for 5 s
		// in http.Server.Shutdown: close them first
		ts.client.CloseIdleConnections()
		if ts.grpc != nil {
			ts.grpc.Close()
		}
		cancel()
		select {
		case err := <-ts.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(time.Minute):
			t.Error("the server did not stop")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return ts
}

// answer is a decoded HTTP answer.
type answer struct {
	code   int
	header http.Header
	body   []byte
	err    error
}

func (a answer) String() string {
	return fmt.Sprintf("%d %s %v", a.code, bytes.TrimSpace(a.body), a.err)
}

func (ts *testServer) do(method, path string, body []byte, hdr ...string) answer {
	req, err := http.NewRequest(method, ts.url+path, bytes.NewReader(body))
	if err != nil {
		return answer{err: err}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, header: resp.Header, body: b, err: err}
}

type v1Answer struct {
	Model     string   `json:"model"`
	Version   string   `json:"version"`
	Score     float32  `json:"score"`
	Defect    *bool    `json:"defect"`
	Threshold *float32 `json:"threshold"`
	Boxes     []struct {
		X, Y, W, H int
		Score      float32
	} `json:"boxes"`
	ElapsedMS float64 `json:"elapsed_ms"`
	MapFrame  string  `json:"map_frame"`
	MapPNG    string  `json:"map_png"`
	MapNPY    string  `json:"map_npy"`
}

func (ts *testServer) scoreV1(model string, img []byte, query string) (v1Answer, answer) {
	a := ts.do(http.MethodPost, "/v1/models/"+model+"/score"+query, img)
	var r v1Answer
	if a.err == nil && a.code == http.StatusOK {
		if err := json.Unmarshal(a.body, &r); err != nil {
			a.err = err
		}
	}
	return r, a
}

type v2Output struct {
	Name     string          `json:"name"`
	Shape    []int           `json:"shape"`
	Datatype string          `json:"datatype"`
	Data     json.RawMessage `json:"data"`
}

type v2Answer struct {
	ModelName    string     `json:"model_name"`
	ModelVersion string     `json:"model_version"`
	ID           string     `json:"id"`
	Outputs      []v2Output `json:"outputs"`
}

func (r v2Answer) output(name string) *v2Output {
	for i := range r.Outputs {
		if r.Outputs[i].Name == name {
			return &r.Outputs[i]
		}
	}
	return nil
}

func (r v2Answer) scores() ([]float32, error) {
	o := r.output("score")
	if o == nil {
		return nil, errors.New("no score output")
	}
	var v []float32
	return v, json.Unmarshal(o.Data, &v)
}

func inferBody(id string, imgs [][]byte, outputs ...string) []byte {
	var data []string
	for _, b := range imgs {
		data = append(data, base64.StdEncoding.EncodeToString(b))
	}
	req := map[string]any{"id": id, "inputs": []map[string]any{{"name": "image", "shape": []int{len(imgs)}, "datatype": "BYTES", "data": data}}}
	if len(outputs) > 0 {
		var outs []map[string]string
		for _, o := range outputs {
			outs = append(outs, map[string]string{"name": o})
		}
		req["outputs"] = outs
	}
	b, _ := json.Marshal(req)
	return b
}

func (ts *testServer) infer(model string, body []byte) (v2Answer, answer) {
	a := ts.do(http.MethodPost, "/v2/models/"+model+"/infer", body, "Content-Type", "application/json")
	var r v2Answer
	if a.err == nil && a.code == http.StatusOK {
		if err := json.Unmarshal(a.body, &r); err != nil {
			a.err = err
		}
	}
	return r, a
}

func relClose(a, b float32) bool {
	return math.Abs(float64(a-b)) <= 1e-5*math.Max(math.Abs(float64(b)), 1e-12)
}

// healthy checks that the server answers health and a good request correctly.
func (ts *testServer) healthy(t testing.TB, model string, img []byte, want expected) {
	t.Helper()
	for _, p := range []string{"/v2/health/live", "/v2/health/ready"} {
		if a := ts.do(http.MethodGet, p, nil); a.code != http.StatusOK {
			t.Fatalf("%s: %v", p, a)
		}
	}
	r, a := ts.scoreV1(model, img, "")
	if a.code != http.StatusOK || a.err != nil || !relClose(r.Score, want.Score) {
		t.Fatalf("good request after: %v (score %v, want %v)", a, r.Score, want.Score)
	}
}

// fixture is a trained model and images with their known answers.
type fixture struct {
	dir    string
	path   string
	imgs   [][]byte
	expect []expected
}

func newFixture(t testing.TB, n int) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir()}
	f.path = filepath.Join(f.dir, "wood.padim")
	trainModel(t, f.path, 1, 12)
	for i := 0; i < n; i++ {
		f.imgs = append(f.imgs, texture(uint64(5000+i), i%3 == 2))
	}
	f.expect = libraryScores(t, f.path, f.imgs)
	// answers must tell images apart
	for i := range f.expect {
		for j := 0; j < i; j++ {
			if relClose(f.expect[i].Score, f.expect[j].Score) {
				t.Fatalf("images %d and %d score alike (%v)", i, j, f.expect[i].Score)
			}
		}
	}
	return f
}

func testOptions() Options {
	o := DefaultOptions()
	o.Timeout = 20 * time.Second
	return o
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// tracer records the batcher's events (Options.trace) for tests to wait on,
// instead of sleeping.
type tracer struct {
	mu     sync.Mutex
	cond   *sync.Cond
	events []traceEvent
}

// traced returns the options with a tracer attached.
func traced(o Options) (Options, *tracer) {
	tr := &tracer{}
	tr.cond = sync.NewCond(&tr.mu)
	o.trace = func(ev traceEvent) {
		tr.mu.Lock()
		tr.events = append(tr.events, ev)
		tr.mu.Unlock()
		tr.cond.Broadcast()
	}
	return o, tr
}

// count is the number of events of a kind (and, when images ≥ 0, of that
// many images).
func (tr *tracer) count(kind traceKind, images int) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.countLocked(kind, images)
}

func (tr *tracer) countLocked(kind traceKind, images int) int {
	n := 0
	for _, ev := range tr.events {
		if ev.kind == kind && (images < 0 || ev.images == images) {
			n++
		}
	}
	return n
}

// images is the sum of the images of a kind's events.
func (tr *tracer) imagesLocked(kind traceKind) int {
	n := 0
	for _, ev := range tr.events {
		if ev.kind == kind {
			n += ev.images
		}
	}
	return n
}

// waitFor blocks until cond (called with the events locked) holds. A test
// that never sees it ends by its own timeout; no wall-clock decides.
func (tr *tracer) waitFor(cond func(tr *tracer) bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for !cond(tr) {
		tr.cond.Wait()
	}
}

// wake re-checks waiters' conditions that depend on state outside the events.
func (tr *tracer) wake() { tr.cond.Broadcast() }

// waitEvents blocks until n events of a kind (and images, when ≥ 0) were seen.
func (tr *tracer) waitEvents(kind traceKind, images, n int) {
	tr.waitFor(func(tr *tracer) bool { return tr.countLocked(kind, images) >= n })
}

// waitQueued blocks until n images were queued in all.
func (tr *tracer) waitQueued(n int) {
	tr.waitFor(func(tr *tracer) bool { return tr.imagesLocked(traceQueued) >= n })
}
