package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/npy"
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
	exited chan error
}

// startServe runs the binary and waits for its "listening" log line.
func startServe(t *testing.T, bin string, client *http.Client, token string, args ...string) *serverProc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--log-format", "json", "--device", "cpu"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProc{cmd: cmd, client: client, token: token, logs: &bytes.Buffer{}, logMu: &sync.Mutex{}, exited: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.logMu.Lock()
			p.logs.WriteString(line + "\n")
			p.logMu.Unlock()
			var l struct{ Msg, URL string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "listening" {
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
	bin := filepath.Join(dir, "padim")
	if b, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
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
	srv := startServe(t, bin, client, "line-7-token", "--model", "wood="+live, "--token-file", tokenFile, "--tls-cert", certFile, "--tls-key", keyFile)
	if !strings.HasPrefix(srv.base, "https://127.0.0.1:") {
		t.Fatalf("listening on %s", srv.base)
	}
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
	}
	check(wantA, "1", true)

	// SIGHUP: the file now holds model B
	os.WriteFile(live+".new", func() []byte { b, _ := os.ReadFile(modelB); return b }(), 0o644)
	os.Rename(live+".new", live)
	srv.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, body := srv.get("/v2/models/wood")
		if strings.Contains(string(body), `"versions":["2"]`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP: %s", body)
		}
		time.Sleep(50 * time.Millisecond)
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
	srv2 := startServe(t, bin, &http.Client{Timeout: time.Minute}, "", "--model", "wood="+modelA, "--max-delay", "1500ms", "--max-batch", "64")
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
	time.Sleep(500 * time.Millisecond)
	srv2.cmd.Process.Signal(syscall.SIGTERM)
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
	if !strings.Contains(srv2.log(), `"msg":"draining"`) || strings.Count(srv2.log(), `"msg":"request"`) != 6 {
		t.Fatalf("drain log:\n%s", srv2.log())
	}
}
