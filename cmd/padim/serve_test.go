package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/fileio/npy"
	"github.com/padim/padim/serve/loadgen"
	"github.com/padim/padim/serve/oip"
)

// cliScore is one image of padim score --json.
type cliScore struct {
	Path      string   `json:"path"`
	Score     *float32 `json:"score"`
	Defect    *bool    `json:"defect"`
	Threshold *float32 `json:"threshold"`
	Boxes     []struct {
		X, Y, W, H int
		MaxScore   float32 `json:"max_score"`
	} `json:"boxes"`
	Error string `json:"error"`
}

func scoreJSONOf(t *testing.T, out string) map[string]cliScore {
	t.Helper()
	var doc struct{ Images []cliScore }
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("padim score --json: %v\n%s", err, out)
	}
	m := map[string]cliScore{}
	for _, im := range doc.Images {
		if im.Score == nil {
			t.Fatalf("%s: %s", im.Path, im.Error)
		}
		m[filepath.Base(im.Path)] = im
	}
	return m
}

func rel(a, b float32) float64 {
	return math.Abs(float64(a-b)) / math.Max(math.Abs(float64(b)), 1e-12)
}

// serverProc is a running padim serve.
type serverProc struct {
	cmd    *exec.Cmd
	base   string
	client *http.Client
	token  string
	logs   *bytes.Buffer
	logMu  *sync.Mutex
	logged *sync.Cond // signalled at each log line
	exited chan error
	grpc   string // the gRPC address, with --grpc-addr
}

// startServe runs the binary and waits for its "listening" log line.
func startServe(t *testing.T, bin string, client *http.Client, token string, args ...string) *serverProc {
	t.Helper()
	return startServeCmd(t, []string{bin}, client, token, args...)
}

// startServeCmd is startServe with the binary's command line (e.g. under prlimit).
func startServeCmd(t *testing.T, argv []string, client *http.Client, token string, args ...string) *serverProc {
	t.Helper()
	argv = append(slices.Clone(argv), "serve", "--log-format", "json", "--device", "cpu")
	if !slices.Contains(args, "--addr") {
		argv = append(argv, "--addr", "127.0.0.1:0")
	}
	cmd := exec.Command(argv[0], append(argv[1:], args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProc{cmd: cmd, client: client, token: token, logs: &bytes.Buffer{}, logMu: &sync.Mutex{}, exited: make(chan error, 1)}
	p.logged = sync.NewCond(p.logMu)
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.logMu.Lock()
			p.logs.WriteString(line + "\n")
			p.logMu.Unlock()
			p.logged.Broadcast()
			var l struct{ Msg, URL, GRPC string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "listening" {
				p.grpc = l.GRPC
				addr <- l.URL
			}
		}
		p.exited <- cmd.Wait()
	}()
	select {
	case p.base = <-addr:
	case err := <-p.exited:
		t.Fatalf("padim serve exited: %v\n%s", err, p.log())
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("padim serve did not start:\n%s", p.log())
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("server log:\n%s", p.log())
		}
	})
	return p
}

// waitLog blocks until a log line holds every one of parts.
func (p *serverProc) waitLog(parts ...string) {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	for {
		for _, l := range strings.Split(p.logs.String(), "\n") {
			all := true
			for _, s := range parts {
				all = all && strings.Contains(l, s)
			}
			if all {
				return
			}
		}
		p.logged.Wait()
	}
}

func (p *serverProc) log() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.logs.String()
}

func (p *serverProc) post(path string, body []byte) (int, []byte, error) {
	req, _ := http.NewRequest(http.MethodPost, p.base+path, bytes.NewReader(body))
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (p *serverProc) get(path string) (int, []byte) {
	req, _ := http.NewRequest(http.MethodGet, p.base+path, nil)
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

type v1Score struct {
	Version   string   `json:"version"`
	Score     float32  `json:"score"`
	Defect    *bool    `json:"defect"`
	Threshold *float32 `json:"threshold"`
	Boxes     []struct {
		X, Y, W, H int
		Score      float32
	} `json:"boxes"`
	MapNPY string `json:"map_npy"`
}

func writeCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "padim serve test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	leaf, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(leaf)
	return certFile, keyFile, pool
}

// padim serve answers the numbers of padim score on the same files, over TLS
// with a token; SIGHUP reloads; SIGTERM drains the requests in flight and exits 0.
func TestServeMatchesScore(t *testing.T) {
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available (make onnxruntime): %v", err)
	}
	dir := t.TempDir()
	bin := testBinary(t)
	data := filepath.Join(dir, "wood")
	bb := filepath.Join(dir, "r18.onnx")
	modelA, modelB := filepath.Join(dir, "a.padim"), filepath.Join(dir, "b.padim")
	mustOK(t, bin, "-q", "synth", "--out", data, "--seed", "4", "--train", "14", "--test-good", "4", "--test-defect", "6", "--size", "96")
	mustOK(t, bin, "-q", "backbone", "--arch", "resnet18", "--seed", "3", "--size", "64", "--out", bb)
	mustOK(t, bin, "-q", "train", "--backbone", bb, "--data", data, "--out", modelA, "--dim", "60", "--device", "cpu", "--batch", "5")
	mustOK(t, bin, "-q", "train", "--backbone", bb, "--data", data, "--out", modelB, "--dim", "40", "--seed", "9", "--device", "cpu", "--batch", "5")

	// the test images, under distinct names
	in := filepath.Join(dir, "in")
	os.MkdirAll(in, 0o755)
	var names []string
	for _, sub := range []string{"good", "hole", "scratch", "color", "liquid"} {
		files, _ := filepath.Glob(filepath.Join(data, "test", sub, "*.png"))
		for i, f := range files[:min(2, len(files))] {
			name := fmt.Sprintf("%s-%d.png", sub, i)
			b, _ := os.ReadFile(f)
			os.WriteFile(filepath.Join(in, name), b, 0o644)
			names = append(names, name)
		}
	}
	maps := filepath.Join(dir, "maps")
	wantA := scoreJSONOf(t, mustOK(t, bin, "-q", "score", "--model", modelA, "--json", "--device", "cpu", "--out", maps, "--maps", "npy", in))
	wantB := scoreJSONOf(t, mustOK(t, bin, "-q", "score", "--model", modelB, "--json", "--device", "cpu", in))
	defects := 0
	for _, s := range wantA {
		if *s.Defect {
			defects++
		}
	}
	if defects == 0 || defects == len(wantA) {
		t.Fatalf("%d of %d images are defects: the comparison needs both", defects, len(wantA))
	}

	live := filepath.Join(dir, "live.padim")
	b, _ := os.ReadFile(modelA)
	os.WriteFile(live, b, 0o644)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("line-7-token\n"), 0o600)
	certFile, keyFile, pool := writeCert(t, dir)
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	srv := startServe(t, bin, client, "line-7-token", "--model", "wood="+live, "--token-file", tokenFile, "--tls-cert", certFile, "--tls-key", keyFile,
		"--grpc-addr", "127.0.0.1:0")
	if !strings.HasPrefix(srv.base, "https://127.0.0.1:") || srv.grpc == "" {
		t.Fatalf("listening on %s, gRPC %q", srv.base, srv.grpc)
	}
	conn, err := grpc.NewClient(srv.grpc, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gc := oip.NewGRPCInferenceServiceClient(conn)
	if code, _, _ := (&serverProc{base: srv.base, client: client}).post("/v1/models/wood/score", nil); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}

	check := func(want map[string]cliScore, version string, withMaps bool) {
		t.Helper()
		for _, name := range names {
			img, _ := os.ReadFile(filepath.Join(in, name))
			q := ""
			if withMaps {
				q = "?map=npy"
			}
			code, body, err := srv.post("/v1/models/wood/score"+q, img)
			var got v1Score
			if err != nil || code != 200 || json.Unmarshal(body, &got) != nil {
				t.Fatalf("%s: %d %s %v", name, code, body, err)
			}
			w := want[name]
			if got.Version != version || rel(got.Score, *w.Score) > 1e-5 || *got.Defect != *w.Defect || *got.Threshold != *w.Threshold || len(got.Boxes) != len(w.Boxes) {
				t.Fatalf("%s: served %s, padim score says score %v defect %v threshold %v boxes %d", name, body, *w.Score, *w.Defect, *w.Threshold, len(w.Boxes))
			}
			for i, bx := range got.Boxes {
				wb := w.Boxes[i]
				if bx.X != wb.X || bx.Y != wb.Y || bx.W != wb.W || bx.H != wb.H || rel(bx.Score, wb.MaxScore) > 1e-5 {
					t.Fatalf("%s box %d: %+v, padim score %+v", name, i, bx, wb)
				}
			}
			if withMaps {
				raw, _ := base64.StdEncoding.DecodeString(got.MapNPY)
				m, shape, err := npy.Decode(raw)
				if err != nil {
					t.Fatalf("%s map: %v", name, err)
				}
				cli, _ := os.ReadFile(filepath.Join(maps, strings.TrimSuffix(name, ".png")+".npy"))
				wm, wshape, err := npy.Decode(cli)
				if err != nil || fmt.Sprint(shape) != fmt.Sprint(wshape) {
					t.Fatalf("%s map shape %v, padim score's %v (%v)", name, shape, wshape, err)
				}
				for i := range m {
					if math.Abs(float64(m[i]-wm[i])) > 1e-5*float64(*w.Score) {
						t.Fatalf("%s map pixel %d: %v, padim score's %v", name, i, m[i], wm[i])
					}
				}
			}
		}
		// v2: every image in one request, in order
		var data []string
		for _, name := range names {
			img, _ := os.ReadFile(filepath.Join(in, name))
			data = append(data, base64.StdEncoding.EncodeToString(img))
		}
		req, _ := json.Marshal(map[string]any{"id": "all", "inputs": []map[string]any{{"name": "image", "shape": []int{len(data)}, "datatype": "BYTES", "data": data}}})
		code, body, err := srv.post("/v2/models/wood/infer", req)
		var resp struct {
			ModelVersion string `json:"model_version"`
			Outputs      []struct {
				Name string
				Data json.RawMessage
			}
		}
		if err != nil || code != 200 || json.Unmarshal(body, &resp) != nil || resp.ModelVersion != version {
			t.Fatalf("v2: %d %s %v", code, body, err)
		}
		var scores []float32
		var defect []bool
		for _, o := range resp.Outputs {
			switch o.Name {
			case "score":
				json.Unmarshal(o.Data, &scores)
			case "defect":
				json.Unmarshal(o.Data, &defect)
			}
		}
		if len(scores) != len(names) || len(defect) != len(names) {
			t.Fatalf("v2: %s", body)
		}
		for i, name := range names {
			if rel(scores[i], *want[name].Score) > 1e-5 || defect[i] != *want[name].Defect {
				t.Fatalf("v2 %s: %v %v, padim score %v %v", name, scores[i], defect[i], *want[name].Score, *want[name].Defect)
			}
		}
		// gRPC, a client generated from the official proto: every image in one call
		var imgs [][]byte
		for _, name := range names {
			img, _ := os.ReadFile(filepath.Join(in, name))
			imgs = append(imgs, img)
		}
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer line-7-token")
		gr, err := gc.ModelInfer(ctx, &oip.ModelInferRequest{ModelName: "wood", Inputs: []*oip.ModelInferRequest_InferInputTensor{{
			Name: "image", Datatype: "BYTES", Shape: []int64{int64(len(imgs))}, Contents: &oip.InferTensorContents{BytesContents: imgs}}}})
		if err != nil || gr.ModelVersion != version || len(gr.RawOutputContents) != 3 || gr.Outputs[0].Name != "score" || gr.Outputs[1].Name != "defect" {
			t.Fatalf("gRPC: %v %v", gr, err)
		}
		for i, name := range names {
			score := math.Float32frombits(binary.LittleEndian.Uint32(gr.RawOutputContents[0][4*i:]))
			if rel(score, *want[name].Score) > 1e-5 || (gr.RawOutputContents[1][i] == 1) != *want[name].Defect {
				t.Fatalf("gRPC %s: %v %v, padim score %v %v", name, score, gr.RawOutputContents[1][i], *want[name].Score, *want[name].Defect)
			}
		}
		// Triton's binary tensors, as tritonclient.http sends them
		for i, name := range names[:2] {
			body, hl := loadgen.BinaryRequest(name, imgs[i:i+1], "score")
			req, _ := http.NewRequest(http.MethodPost, srv.base+"/v2/models/wood/infer", bytes.NewReader(body))
			req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(hl))
			req.Header.Set("Authorization", "Bearer line-7-token")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			score, err := loadgen.ScoreOfAnswer(resp.Header.Get("Inference-Header-Content-Length"), b)
			if err != nil || resp.StatusCode != 200 || rel(score, *want[name].Score) > 1e-5 {
				t.Fatalf("binary tensors %s: %d %v %v, padim score %v", name, resp.StatusCode, score, err, *want[name].Score)
			}
		}
	}
	check(wantA, "1", true)

	// SIGHUP: the file now holds model B
	os.WriteFile(live+".new", func() []byte { b, _ := os.ReadFile(modelB); return b }(), 0o644)
	os.Rename(live+".new", live)
	srv.cmd.Process.Signal(syscall.SIGHUP)
	srv.waitLog(`"msg":"model loaded"`, `"version":"2"`) // the reload's log line
	if _, body := srv.get("/v2/models/wood"); !strings.Contains(string(body), `"versions":["2"]`) {
		t.Fatalf("after SIGHUP's reload: %s", body)
	}
	check(wantB, "2", false)
	_, metrics := srv.get("/metrics")
	for _, want := range []string{`padim_http_requests_total{code="200",route="score"}`, `padim_stage_duration_seconds_bucket{model="wood",stage="backbone"`,
		`padim_batch_images_count{model="wood"}`, `padim_queue_images{model="wood"} 0`, `padim_defects_total{model="wood"}`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// SIGTERM while requests wait in the batcher: each is answered, exit 0
	img, _ := os.ReadFile(filepath.Join(in, names[0]))
	srv2 := startServe(t, bin, &http.Client{Timeout: time.Minute}, "", "--model", "wood="+modelA, "--max-delay", "10s", "--max-batch", "64")
	var wg sync.WaitGroup
	codes := make([]int, 6)
	scores := make([]float32, 6)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body, _ := srv2.post("/v1/models/wood/score", img)
			var got v1Score
			json.Unmarshal(body, &got)
			codes[i], scores[i] = code, got.Score
		}()
	}
	// all six wait in the batcher (for company, up to 10 s): the queue counter says so
	for {
		_, m := srv2.get("/metrics")
		if strings.Contains(string(m), `padim_queue_images{model="wood"} 6`+"\n") {
			break
		}
	}
	srv2.cmd.Process.Signal(syscall.SIGTERM) // the drain starts their batch at once
	wg.Wait()
	for i := range codes {
		if codes[i] != 200 || rel(scores[i], *wantA[names[0]].Score) > 1e-5 {
			t.Errorf("request %d in flight at SIGTERM: %d score %v", i, codes[i], scores[i])
		}
	}
	select {
	case err := <-srv2.exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Fatalf("padim serve exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("padim serve did not exit after SIGTERM")
	}
	if !strings.Contains(srv2.log(), `"msg":"draining"`) || strings.Count(srv2.log(), `"path":"/v1/models/wood/score","status":200`) != 6 {
		t.Fatalf("drain log:\n%s", srv2.log())
	}
}

// flatPNG is a w×h gray PNG of one value: tiny encoded, huge decoded.
func flatPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = 128
	}
	var b bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestCompression}).Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Hostile requests against the real binary under an address-space limit
// (prlimit --as): each is refused before its memory is taken, the server
// stays ready and answers good requests. On the server before the budget,
// the first row alone killed it ("fatal error: out of memory").
func TestServeHostileRequestsUnderMemoryLimit(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("no prlimit (util-linux)")
	}
	if testing.Short() {
		t.Skip("-short: builds 67-megapixel images")
	}
	fx := setup(t)
	client := &http.Client{Timeout: 2 * time.Minute}
	srv := startServeCmd(t, []string{"prlimit", "--as=" + strconv.Itoa(3<<30), fx.bin, "--max-memory", "1G"}, client, "",
		"--model", "m="+fx.mdl, "--max-request-memory", "200MiB", "--grpc-addr", "127.0.0.1:0")
	good, _ := filepath.Glob(filepath.Join(fx.data, "test", "good", "*.png"))
	goodImg, _ := os.ReadFile(good[0])
	healthy := func(row string) {
		t.Helper()
		if code, _ := srv.get("/v2/health/ready"); code != http.StatusOK {
			t.Fatalf("after %s: not ready (%d)\n%s", row, code, srv.log())
		}
		if code, body, err := srv.post("/v1/models/m/score", goodImg); code != http.StatusOK {
			t.Fatalf("after %s: a good image: %d %s %v", row, code, body, err)
		}
	}
	errOf := func(b []byte) string {
		var e struct{ Error string }
		json.Unmarshal(b, &e)
		return e.Error
	}
	// six at once: 10⁷ empty strings in a 30 MB body
	var empty bytes.Buffer
	empty.WriteString(`{"inputs":[{"name":"image","shape":[10,1000000],"datatype":"BYTES","data":[""`)
	for i := 1; i < 10_000_000; i++ {
		empty.WriteString(`,""`)
	}
	empty.WriteString(`]}]}`)
	var wg sync.WaitGroup
	codes := make([]int, 6)
	msgs := make([]string, 6)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body, _ := srv.post("/v2/models/m/infer", empty.Bytes())
			codes[i], msgs[i] = code, errOf(body)
		}()
	}
	wg.Wait()
	for i := range codes {
		if codes[i] != http.StatusBadRequest || !strings.Contains(msgs[i], "queues at most") {
			t.Errorf("10⁷ empty strings, request %d: %d %s", i, codes[i], msgs[i])
		}
	}
	healthy("10⁷ empty strings ×6")

	// four 8192² flat PNGs asking for maps; one asking for a v1 map
	big := flatPNG(t, 8192, 8192)
	var data []string
	for i := 0; i < 4; i++ {
		data = append(data, base64.StdEncoding.EncodeToString(big))
	}
	req, _ := json.Marshal(map[string]any{"inputs": []map[string]any{{"name": "image", "shape": []int{4}, "datatype": "BYTES", "data": data}},
		"outputs": []map[string]any{{"name": "anomaly_map"}}})
	code, body, _ := srv.post("/v2/models/m/infer", req)
	if code != http.StatusBadRequest || !strings.Contains(errOf(body), "8192x8192 = 67108864 pixels, over the 16777216-pixel limit") {
		t.Errorf("four 8192² maps: %d %s", code, body)
	}
	healthy("four 8192² maps")
	code, body, _ = srv.post("/v1/models/m/score?map=npy", big)
	if code != http.StatusBadRequest || !strings.Contains(errOf(body), "--max-map-pixels") {
		t.Errorf("an 8192² v1 map: %d %s", code, body)
	}
	// the same image without a map, and with the map in the network's frame, is scored
	for _, q := range []string{"", "?map=npy&map_frame=network"} {
		if code, body, _ = srv.post("/v1/models/m/score"+q, big); code != http.StatusOK {
			t.Errorf("an 8192² image%s: %d %s", q, code, body)
		}
	}
	healthy("8192² images")

	// a PNG overlay of a 4096² image needs more than --max-request-memory: 413 with the number
	mid := flatPNG(t, 4096, 4096)
	code, body, _ = srv.post("/v1/models/m/score?map=png", mid)
	if code != http.StatusRequestEntityTooLarge || !regexp.MustCompile(`needs \d+ bytes of memory .*over the 209715200-byte per-request budget`).MatchString(errOf(body)) {
		t.Errorf("a 4096² overlay: %d %s", code, body)
	}
	healthy("a 4096² overlay")

	// a shape whose element count overflows int64 to 1
	code, body, _ = srv.post("/v2/models/m/infer", []byte(`{"inputs":[{"name":"image","shape":[469411,1006941,647939,3373],"datatype":"BYTES","data":["`+
		base64.StdEncoding.EncodeToString(goodImg)+`"]}]}`))
	if code != http.StatusBadRequest || !strings.Contains(errOf(body), "overflows") {
		t.Errorf("an overflowing shape: %d %s", code, body)
	}

	// gRPC: 10⁷ empty bytes_contents in one message
	conn, err := grpc.NewClient(srv.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = oip.NewGRPCInferenceServiceClient(conn).ModelInfer(context.Background(), &oip.ModelInferRequest{ModelName: "m",
		Inputs: []*oip.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{10, 1000000}, Contents: &oip.InferTensorContents{BytesContents: make([][]byte, 10_000_000)}}}})
	if status.Code(err) != grpccodes.InvalidArgument || !strings.Contains(err.Error(), "more than") {
		t.Errorf("gRPC, 10⁷ empty elements: %v", err)
	}
	healthy("gRPC 10⁷ empty elements")

	_, m := srv.get("/metrics")
	for _, want := range []string{`padim_memory_refusals_total{reason="map"} 2`, `padim_memory_refusals_total{reason="request"} 1`} {
		if !strings.Contains(string(m), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	select {
	case err := <-srv.exited:
		t.Fatalf("the server died: %v\n%s", err, srv.log())
	default:
	}
}

// serve's flags refuse what would surprise an operator and warn of what
// may be unsafe.
func TestServeFlagChecks(t *testing.T) {
	fx := setup(t)
	dir := t.TempDir()
	multi := filepath.Join(dir, "multi")
	os.WriteFile(multi, []byte("first\nsecond\n"), 0o600)
	_, stderr, code, _ := runBin(t, nil, "serve", "--model", "m="+fx.mdl, "--token-file", multi, "--addr", "127.0.0.1:0")
	if code != exitUsage || !strings.Contains(stderr, "holds 2 lines") {
		t.Errorf("a two-line token file: exit %d, %s", code, stderr)
	}
	// a world-readable token, a world-readable key, every interface without a token: warned
	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte("tok\n"), 0o644)
	client := &http.Client{Timeout: time.Minute}
	p := startServe(t, fx.bin, client, "tok", "--model", "m="+fx.mdl, "--token-file", open)
	if !strings.Contains(p.log(), "--token-file is readable by other users") {
		t.Errorf("no warning of a world-readable token file:\n%s", p.log())
	}
	certFile, keyFile, _ := writeCert(t, dir)
	os.Chmod(keyFile, 0o644)
	p = startServe(t, fx.bin, client, "", "--addr", "0.0.0.0:0", "--model", "m="+fx.mdl, "--tls-cert", certFile, "--tls-key", keyFile)
	logs := p.log()
	for _, want := range []string{"--tls-key is readable by other users", "listening on every interface without a token"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no warning %q:\n%s", want, logs)
		}
	}
	// a model file named line=3.padim
	odd := filepath.Join(dir, "line=3.padim")
	copyFile(t, fx.mdl, odd)
	p = startServe(t, fx.bin, client, "", "--model", odd)
	if code, body := p.get("/v2/models/line=3/ready"); code != http.StatusOK {
		t.Errorf("the model in line=3.padim: %d %s", code, body)
	}
}

// loadtest bounds what a server can do to it: an endless answer is cut at
// --max-response, a silent server at --request-timeout and at the level's
// end, and SIGTERM stops it at once.
func TestLoadtestBoundsHostileServers(t *testing.T) {
	fx := setup(t)
	arrived := make(chan struct{}, 100)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/models/{name}/ready", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"ready":true}`)) })
	mux.HandleFunc("POST /v1/models/endless/score", func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("POST /v1/models/silent/score", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // the request's context ends with its connection only once the body is read
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	})
	hs := httptest.NewServer(mux)
	defer hs.Close()
	img, _ := filepath.Glob(filepath.Join(fx.data, "test", "good", "*.png"))
	args := []string{"loadtest", "--url", hs.URL, "--concurrency", "2", "--warmup", "0s", "--json"}

	// (its own peak RSS: runPeakOut starts it from a small helper process,
	// since Linux carries the exec'ing process's peak over, and this test
	// process is large under the race detector)
	code, rss, out, stderr := runPeakOut(t, nil, append(args, "--model", "endless", "--duration", "2s", "--max-response", "1MiB", img[0])...)
	// (the cap bounds each answer; the peak RSS bound is loose because a
	// loaded machine's GC may lag the garbage of hundreds of cut answers)
	if code != 0 || !strings.Contains(out, "answer over 1048576 bytes") || rss > 1536<<20 {
		t.Errorf("an endless answer: exit %d, peak RSS %d MB\n%s\n%s", code, rss>>20, out, stderr)
	}
	out, stderr, code, _ = runBin(t, nil, append(args, "--model", "silent", "--duration", "1s", "--request-timeout", "300ms", img[0])...)
	if code != 0 || !strings.Contains(out, "deadline exceeded") {
		t.Errorf("a silent server: exit %d\n%s\n%s", code, out, stderr)
	}
	// SIGTERM while requests wait on a silent server
	for len(arrived) > 0 {
		<-arrived
	}
	cmd := exec.Command(fx.bin, append(args, "--model", "silent", "--duration", "1h", "--request-timeout", "1h", img[0])...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	<-arrived
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 143 {
		t.Errorf("loadtest after SIGTERM: %v, want exit 143", err)
	}
}

// parseBytes reads what it prints and never panics.
func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"32MiB", "1G", "1500M", "123456", "8gib", " 2k ", "0", "-1M", "1e30T", "NaN", "Inf", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseBytes(s)
		if err != nil {
			return
		}
		if v < 0 || v > 1<<60 {
			t.Fatalf("parseBytes(%q) = %d", s, v)
		}
	})
}
