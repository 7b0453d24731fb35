package serve

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/padim/padim/detector/fileio/npy"
	"github.com/padim/padim/detector/fileio/readfile"
)

// Every endpoint answers the library's numbers, in the protocol's shapes.
func TestEndpointsMatchLibrary(t *testing.T) {
	f := newFixture(t, 6)
	cfg := &fakeConfig{}
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), testOptions())

	for i, img := range f.imgs {
		want := f.expect[i]
		r, a := ts.scoreV1("wood", img, "")
		if a.code != http.StatusOK || a.err != nil {
			t.Fatalf("v1 image %d: %v", i, a)
		}
		if !relClose(r.Score, want.Score) || r.Defect == nil || *r.Defect != want.Defect || r.Threshold == nil || r.Model != "wood" || r.Version != "1" {
			t.Fatalf("v1 image %d: %s; want score %v defect %v", i, a.body, want.Score, want.Defect)
		}
		if want.Defect != (len(r.Boxes) > 0) || len(r.Boxes) != want.Boxes {
			t.Errorf("v1 image %d: defect %v with %d boxes, want %d", i, want.Defect, len(r.Boxes), want.Boxes)
		}
		if !bytes.Contains(a.body, []byte(`"boxes":[`)) || !bytes.Contains(a.body, []byte(`"elapsed_ms":`)) {
			t.Errorf("v1 answer lacks keys: %s", a.body)
		}
	}

	// ?map=npy is the float32 map; ?map=png an overlay of the map's size.
	r, a := ts.scoreV1("wood", f.imgs[2], "?map=npy")
	if a.code != http.StatusOK {
		t.Fatal(a)
	}
	raw, _ := base64.StdEncoding.DecodeString(r.MapNPY)
	m, shape, err := npy.Decode(raw)
	if err != nil || len(shape) != 2 || shape[0] != f.expect[2].H || shape[1] != f.expect[2].W {
		t.Fatalf("npy map: %v shape %v", err, shape)
	}
	for i := range m {
		if !relClose(m[i], f.expect[2].Map[i]) {
			t.Fatalf("map pixel %d: %v, want %v", i, m[i], f.expect[2].Map[i])
		}
	}
	// ?map_frame=network: the map as the network sees the image
	r, a = ts.scoreV1("wood", f.imgs[2], "?map=npy&map_frame=network")
	raw, _ = base64.StdEncoding.DecodeString(r.MapNPY)
	m, shape, err = npy.Decode(raw)
	if a.code != http.StatusOK || err != nil || len(shape) != 2 || shape[0] != f.expect[2].NH || shape[1] != f.expect[2].NW || r.MapFrame != "network" {
		t.Fatalf("network-frame npy map: %v %v shape %v", a, err, shape)
	}
	for i := range m {
		if !relClose(m[i], f.expect[2].NetMap[i]) {
			t.Fatalf("network-frame map pixel %d: %v, want %v", i, m[i], f.expect[2].NetMap[i])
		}
	}
	if _, a := ts.scoreV1("wood", f.imgs[2], "?map=npy&map_frame=tile"); a.code != http.StatusBadRequest {
		t.Fatalf("map_frame=tile: %v", a)
	}
	r, a = ts.scoreV1("wood", f.imgs[2], "?map=png")
	if a.code != http.StatusOK {
		t.Fatal(a)
	}
	raw, _ = base64.StdEncoding.DecodeString(r.MapPNG)
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil || img.Bounds().Dx() != f.expect[2].W || img.Bounds().Dy() != f.expect[2].H {
		t.Fatalf("png map: %v %v", err, img)
	}
	if _, a := ts.scoreV1("wood", f.imgs[2], "?map=gif"); a.code != http.StatusBadRequest {
		t.Fatalf("map=gif: %v", a)
	}

	// v2: several images in one request come back in order; maps on request.
	v2, a := ts.infer("wood", inferBody("req-7", f.imgs))
	if a.code != http.StatusOK || a.err != nil {
		t.Fatal(a)
	}
	scores, err := v2.scores()
	if err != nil || len(scores) != len(f.imgs) || v2.ID != "req-7" || v2.ModelName != "wood" || v2.ModelVersion != "1" {
		t.Fatalf("v2: %s", a.body)
	}
	var defects []bool
	json.Unmarshal(v2.output("defect").Data, &defects)
	for i := range scores {
		if !relClose(scores[i], f.expect[i].Score) || defects[i] != f.expect[i].Defect {
			t.Fatalf("v2 image %d: %v %v, want %v %v", i, scores[i], defects[i], f.expect[i].Score, f.expect[i].Defect)
		}
	}
	if o := v2.output("defect"); o.Datatype != "BOOL" || fmt.Sprint(o.Shape) != fmt.Sprint([]int{len(f.imgs)}) {
		t.Fatalf("defect output %+v", o)
	}
	if o := v2.output("threshold"); o == nil || o.Datatype != "FP32" || fmt.Sprint(o.Shape) != "[1]" {
		t.Fatalf("threshold output %+v", o)
	}
	if v2.output("anomaly_map") != nil {
		t.Fatal("anomaly_map sent unasked")
	}
	v2, a = ts.infer("wood", inferBody("", f.imgs[:2], "score", "anomaly_map"))
	if a.code != http.StatusOK {
		t.Fatal(a)
	}
	o := v2.output("anomaly_map")
	W, H := f.expect[0].W, f.expect[0].H
	if len(v2.Outputs) != 2 || o == nil || o.Datatype != "FP32" || fmt.Sprint(o.Shape) != fmt.Sprint([]int{2, H, W}) {
		t.Fatalf("anomaly_map: %s", a.body[:min(len(a.body), 300)])
	}
	var mv []float32
	json.Unmarshal(o.Data, &mv)
	for i := 0; i < 2; i++ {
		for k := 0; k < W*H; k++ {
			if !relClose(mv[i*W*H+k], f.expect[i].Map[k]) {
				t.Fatalf("anomaly_map image %d pixel %d: %v, want %v", i, k, mv[i*W*H+k], f.expect[i].Map[k])
			}
		}
	}
	// the output parameter map_frame "network" gives the network's frame
	body := fmt.Sprintf(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[%q]}],"outputs":[{"name":"anomaly_map","parameters":{"map_frame":"network"}}]}`, base64.StdEncoding.EncodeToString(f.imgs[3]))
	v2, a = ts.infer("wood", []byte(body))
	o = v2.output("anomaly_map")
	if a.code != http.StatusOK || o == nil || fmt.Sprint(o.Shape) != fmt.Sprint([]int{1, f.expect[3].NH, f.expect[3].NW}) {
		t.Fatalf("network-frame anomaly_map: %v", a)
	}
	json.Unmarshal(o.Data, &mv)
	for k := range mv {
		if !relClose(mv[k], f.expect[3].NetMap[k]) {
			t.Fatalf("network-frame anomaly_map pixel %d: %v, want %v", k, mv[k], f.expect[3].NetMap[k])
		}
	}
	// nested data in its natural shape [n,1] is accepted too
	nested := fmt.Sprintf(`{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","data":[[%q]]}]}`, base64.StdEncoding.EncodeToString(f.imgs[1]))
	v2, a = ts.infer("wood", []byte(nested))
	if s, _ := v2.scores(); a.code != http.StatusOK || len(s) != 1 || !relClose(s[0], f.expect[1].Score) {
		t.Fatalf("nested: %v", a)
	}

	// metadata and health
	for path, want := range map[string]string{
		"/v2/health/live":       `{"live":true}`,
		"/v2/health/ready":      `{"ready":true}`,
		"/v2/models/wood/ready": `{"name":"wood","ready":true}`,
	} {
		if a := ts.do(http.MethodGet, path, nil); a.code != http.StatusOK || strings.TrimSpace(string(a.body)) != want {
			t.Errorf("%s: %v", path, a)
		}
	}
	var md struct {
		Name     string
		Versions []string
		Platform string
		Inputs   []tensorMeta
		Outputs  []tensorMeta
	}
	a = ts.do(http.MethodGet, "/v2/models/wood", nil)
	if err := json.Unmarshal(a.body, &md); err != nil || md.Name != "wood" || md.Platform != "padim" || fmt.Sprint(md.Versions) != "[1]" ||
		fmt.Sprint(md.Inputs) != fmt.Sprint([]tensorMeta{{"image", "BYTES", []int{-1}}}) || len(md.Outputs) != 4 {
		t.Fatalf("model metadata: %v", a)
	}
	if a := ts.do(http.MethodGet, "/v2/models/wood/versions/1", nil); a.code != http.StatusOK {
		t.Fatalf("versioned metadata: %v", a)
	}
	if a := ts.do(http.MethodGet, "/v2/models/wood/versions/9/ready", nil); a.code != http.StatusNotFound {
		t.Fatalf("unknown version: %v", a)
	}
	a = ts.do(http.MethodGet, "/v2", nil)
	if !bytes.Contains(a.body, []byte(`"name":"padim"`)) || !bytes.Contains(a.body, []byte(`"extensions":["binary_tensor_data"]`)) {
		t.Fatalf("server metadata: %v", a)
	}
	// one log line per request, with the model
	if n := strings.Count(ts.logs.String(), `"msg":"request"`); n < 10 {
		t.Fatalf("%d request log lines", n)
	}
}

// pngHeader is a valid PNG signature and IHDR chunk claiming w×h pixels, and nothing else.
func pngHeader(w, h uint32) []byte {
	b := []byte("\x89PNG\r\n\x1a\n")
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 6, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ihdr)))
	chunk := append([]byte("IHDR"), ihdr...)
	b = append(b, chunk...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(chunk))
}

// Every bad input gets its status and a JSON error, and the server stays healthy.
func TestBadInputs(t *testing.T) {
	f := newFixture(t, 2)
	o := testOptions()
	o.MaxBody = 256 << 10
	o.Queue = 8
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(&fakeConfig{}), o)
	good := f.imgs[0]
	big := append(bytes.Clone(good), make([]byte, 300<<10)...)
	huge := pngHeader(100000, 100000)
	cases := []struct {
		name, method, path string
		body               []byte
		code               int
		want               string // in the error message
	}{
		{"over max-body", "POST", "/v1/models/wood/score", big, 413, "limit"},
		{"over max-body v2", "POST", "/v2/models/wood/infer", inferBody("", [][]byte{big}), 413, "limit"},
		{"pixels over the limit", "POST", "/v1/models/wood/score", huge, 400, "pixel limit"},
		{"pixels over the limit v2", "POST", "/v2/models/wood/infer", inferBody("", [][]byte{good, huge}), 400, "image[1]"},
		{"not an image", "POST", "/v1/models/wood/score", []byte("hello, I am not a picture"), 400, "header"},
		{"empty", "POST", "/v1/models/wood/score", nil, 400, "empty"},
		{"truncated", "POST", "/v1/models/wood/score", good[:len(good)/2], 400, "image"},
		{"truncated v2", "POST", "/v2/models/wood/infer", inferBody("", [][]byte{good, good[:len(good)/2]}), 400, "image[1]"},
		{"unknown model", "POST", "/v1/models/nope/score", good, 404, "no model"},
		{"unknown model v2", "POST", "/v2/models/nope/infer", inferBody("", [][]byte{good}), 404, "no model"},
		{"unknown model metadata", "GET", "/v2/models/nope", nil, 404, "no model"},
		{"unknown model load", "POST", "/v2/repository/models/nope/load", nil, 404, "no model"},
		{"unknown path", "GET", "/v3/whatever", nil, 404, "no endpoint"},
		{"wrong method score", "GET", "/v1/models/wood/score", nil, 405, "not allowed"},
		{"wrong method infer", "PUT", "/v2/models/wood/infer", good, 405, "not allowed"},
		{"wrong method health", "POST", "/v2/health/live", nil, 405, "not allowed"},
		{"wrong method metadata", "DELETE", "/v2/models/wood", nil, 405, "not allowed"},
		{"v2 not JSON", "POST", "/v2/models/wood/infer", []byte("{"), 400, "not an inference request"},
		{"v2 wrong input", "POST", "/v2/models/wood/infer", []byte(`{"inputs":[{"name":"pixels","shape":[1],"datatype":"BYTES","data":["AA=="]}]}`), 400, "exactly one input"},
		{"v2 wrong datatype", "POST", "/v2/models/wood/infer", []byte(`{"inputs":[{"name":"image","shape":[1],"datatype":"FP32","data":[1.5]}]}`), 400, "BYTES"},
		{"v2 shape mismatch", "POST", "/v2/models/wood/infer", []byte(`{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","data":["AA=="]}]}`), 400, "shape"},
		{"v2 not base64", "POST", "/v2/models/wood/infer", []byte(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["!!!"]}]}`), 400, "base64"},
		{"v2 numbers", "POST", "/v2/models/wood/infer", []byte(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[3]}]}`), 400, "base64 strings"},
		{"v2 unknown output", "POST", "/v2/models/wood/infer", inferBody("", [][]byte{good}, "logits"), 400, "no output"},
		{"v2 more images than the queue", "POST", "/v2/models/wood/infer", inferBody("", [][]byte{good, good, good, good, good, good, good, good, good}), 400, "queues at most"},
	}
	for _, c := range cases {
		a := ts.do(c.method, c.path, c.body)
		var e struct{ Error string }
		if a.err != nil || a.code != c.code || json.Unmarshal(a.body, &e) != nil || !strings.Contains(e.Error, c.want) ||
			!strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
			t.Errorf("%s: got %v, want %d with %q in a JSON error", c.name, a, c.code, c.want)
		}
		if c.code == 405 && a.header.Get("Allow") == "" {
			t.Errorf("%s: 405 without Allow", c.name)
		}
		ts.healthy(t, "wood", good, f.expect[0])
	}
	// the refused requests never reached the pipeline, except the truncated
	// ones, which failed alone: images scored = good requests only
	a := ts.do(http.MethodGet, "/metrics", nil)
	if !regexp.MustCompile(`padim_images_scored_total\{model="wood"\} ` + strconv.Itoa(len(cases)+1) + `\n`).Match(a.body) {
		t.Errorf("images scored: %s", grep(a.body, "padim_images_scored_total"))
	}
	if !regexp.MustCompile(`padim_http_requests_total\{code="413",route="score"\} 1\n`).Match(a.body) {
		t.Errorf("413 count: %s", grep(a.body, "padim_http_requests_total"))
	}
}

func grep(b []byte, prefix string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A broken image batched with good ones fails alone.
func TestBadImageInBatchDoesNotHurtOthers(t *testing.T) {
	f := newFixture(t, 6)
	cfg := &fakeConfig{entered: make(chan struct{}, 1)}
	o, tr := traced(testOptions())
	o.Pipelines = 1
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), o)
	truncated := f.imgs[0][:len(f.imgs[0])*2/3]
	answers := make([]answer, len(f.imgs)+1)
	scores := make([]float32, len(f.imgs)+1)
	var wg sync.WaitGroup
	send := func(i int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := truncated
			if i < len(f.imgs) {
				body = f.imgs[i]
			}
			var r v1Answer
			r, answers[i] = ts.scoreV1("wood", body, "")
			scores[i] = r.Score
		}()
	}
	// the first image holds the pipeline; the others queue behind it and
	// then go as one batch, the truncated image among them
	release := cfg.hold()
	send(0)
	<-cfg.entered
	for i := 1; i < len(answers); i++ {
		send(i)
	}
	tr.waitQueued(len(answers))
	release()
	wg.Wait()
	for i := range f.imgs {
		if answers[i].code != http.StatusOK || !relClose(scores[i], f.expect[i].Score) {
			t.Errorf("good image %d: %v score %v want %v", i, answers[i], scores[i], f.expect[i].Score)
		}
	}
	if a := answers[len(f.imgs)]; a.code != http.StatusBadRequest {
		t.Errorf("truncated image: %v", a)
	}
	a := ts.do(http.MethodGet, "/metrics", nil)
	if sum, n := histogram(t, a.body, "padim_batch_images", `model="wood"`); n != 2 || sum != float64(len(answers)) {
		t.Errorf("want the first request alone, then the other %d in one batch: %s", len(answers)-1, grep(a.body, "padim_batch_images"))
	}
}

// 32 clients × 20 requests: every request answered once, with its own image's answer.
func TestConcurrentClientsGetTheirOwnAnswers(t *testing.T) {
	f := newFixture(t, 20)
	cfg := &fakeConfig{entered: make(chan struct{}, 1)}
	o, tr := traced(testOptions())
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), o)
	const clients, each = 32, 20
	type result struct {
		client, k, img int
		code           int
		score          float32
		id             string
		err            error
	}
	results := make(chan result, clients*each)
	// the backbone is held until every client's first request is queued:
	// batching is then certain, not a matter of timing
	release := cfg.hold()
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < each; k++ {
				img := (c*7 + k*3) % len(f.imgs)
				res := result{client: c, k: k, img: img}
				if (c+k)%2 == 0 {
					r, a := ts.scoreV1("wood", f.imgs[img], "")
					res.code, res.score, res.err = a.code, r.Score, a.err
				} else {
					id := fmt.Sprintf("c%d-k%d", c, k)
					r, a := ts.infer("wood", inferBody(id, [][]byte{f.imgs[img]}))
					res.code, res.err, res.id = a.code, a.err, r.ID
					if s, err := r.scores(); err == nil && len(s) == 1 {
						res.score = s[0]
					} else if a.code == http.StatusOK {
						res.err = fmt.Errorf("scores %v %v", s, err)
					}
					if a.code == http.StatusOK && r.ID != id {
						res.err = fmt.Errorf("answer id %q for request %q", r.ID, id)
					}
				}
				results <- res
			}
		}()
	}
	tr.waitQueued(clients)
	release()
	wg.Wait()
	close(results)
	seen := map[[2]int]bool{}
	for r := range results {
		key := [2]int{r.client, r.k}
		if seen[key] {
			t.Fatalf("request %v answered twice", key)
		}
		seen[key] = true
		if r.err != nil || r.code != http.StatusOK {
			t.Fatalf("client %d request %d: %d %v", r.client, r.k, r.code, r.err)
		}
		if !relClose(r.score, f.expect[r.img].Score) {
			t.Fatalf("client %d request %d (image %d): score %v, want %v: answers swapped?", r.client, r.k, r.img, r.score, f.expect[r.img].Score)
		}
	}
	if len(seen) != clients*each {
		t.Fatalf("%d answers for %d requests", len(seen), clients*each)
	}
	a := ts.do(http.MethodGet, "/metrics", nil)
	if !strings.Contains(string(a.body), fmt.Sprintf("padim_images_scored_total{model=\"wood\"} %d\n", clients*each)) {
		t.Errorf("images scored (each exactly once): %s", grep(a.body, "padim_images_scored_total"))
	}
	sum, count := histogram(t, a.body, "padim_batch_images", `model="wood"`)
	if sum != clients*each || count >= sum || tr.count(traceBatch, DefaultMaxBatch) == 0 {
		t.Errorf("batches: %v images in %v pipeline calls, %d full: want all images, batched", sum, count, tr.count(traceBatch, DefaultMaxBatch))
	}
	t.Logf("%v images in %v pipeline calls (mean %.1f)", sum, count, sum/count)
}

// histogram returns a Prometheus histogram's _sum and _count.
func histogram(t *testing.T, body []byte, name, labels string) (sum, count float64) {
	t.Helper()
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+"_sum{"+labels+"} "); ok {
			sum, _ = strconv.ParseFloat(v, 64)
		}
		if v, ok := strings.CutPrefix(l, name+"_count{"+labels+"} "); ok {
			count, _ = strconv.ParseFloat(v, 64)
		}
	}
	return
}

// Overload: a full queue answers 429 with Retry-After; everything admitted is
// answered correctly and the server recovers.
func TestOverloadGives429(t *testing.T) {
	f := newFixture(t, 4)
	cfg := &fakeConfig{}
	o, tr := traced(testOptions())
	o.Queue, o.MaxBatch, o.Pipelines = 4, 2, 1
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), o)
	const n = 48
	release := cfg.hold() // nothing leaves the queue until every request was admitted or refused
	var refused atomic.Int64
	var wg sync.WaitGroup
	answers := make([]answer, n)
	scores := make([]float32, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r v1Answer
			r, answers[i] = ts.scoreV1("wood", f.imgs[i%4], "")
			scores[i] = r.Score
			if answers[i].code == http.StatusTooManyRequests {
				refused.Add(1)
				tr.wake()
			}
		}()
	}
	tr.waitFor(func(tr *tracer) bool { return tr.imagesLocked(traceQueued)+int(refused.Load()) == n })
	release()
	wg.Wait()
	ok, busy := 0, 0
	for i, a := range answers {
		switch a.code {
		case http.StatusOK:
			ok++
			if !relClose(scores[i], f.expect[i%4].Score) {
				t.Errorf("request %d: score %v want %v", i, scores[i], f.expect[i%4].Score)
			}
		case http.StatusTooManyRequests:
			busy++
			if a.header.Get("Retry-After") == "" || !bytes.Contains(a.body, []byte(`"error"`)) {
				t.Errorf("429 without Retry-After or JSON error: %v %v", a.header, a)
			}
		default:
			t.Errorf("request %d: %v", i, a)
		}
	}
	// the first batch (2) holds the backbone, the queue (4) is full: the
	// others are refused
	if ok > 2+o.Queue || busy < n-2-o.Queue || ok == 0 {
		t.Fatalf("%d ok, %d refused: want at most %d admitted, the rest refused", ok, busy, 2+o.Queue)
	}
	t.Logf("%d answered, %d refused with 429", ok, busy)
	ts.healthy(t, "wood", f.imgs[1], f.expect[1])
	if q := ts.models["wood"].queued.Load(); q != 0 {
		t.Fatalf("queue holds %d images after the storm", q)
	}
}

// A request past the timeout gets 503; the server goes on.
func TestTimeoutGives503(t *testing.T) {
	f := newFixture(t, 2)
	cfg := &fakeConfig{}
	o, tr := traced(testOptions())
	o.Timeout = 300 * time.Millisecond
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), o)
	release := cfg.hold() // the backbone never answers in time
	_, a := ts.scoreV1("wood", f.imgs[0], "")
	if a.code != http.StatusServiceUnavailable || !bytes.Contains(a.body, []byte("timeout")) {
		t.Fatalf("slow request: %v", a)
	}
	release()
	tr.waitEvents(traceDone, -1, 1) // the abandoned batch finishes
	ts.healthy(t, "wood", f.imgs[1], f.expect[1])
}

// A panic while scoring one request fails that request alone (500); a panic
// in a handler is answered 500; the server goes on.
func TestPanicFailsOneRequest(t *testing.T) {
	f := newFixture(t, 5)
	cfg := &fakeConfig{entered: make(chan struct{}, 1)}
	o, tr := traced(testOptions())
	o.Pipelines = 1
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), o)
	var wg sync.WaitGroup
	answers := make([]answer, len(f.imgs)+1)
	scores := make([]float32, len(f.imgs)+1)
	send := func(i int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := poison()
			if i < len(f.imgs) {
				body = f.imgs[i]
			}
			var r v1Answer
			r, answers[i] = ts.scoreV1("wood", body, "")
			scores[i] = r.Score
		}()
	}
	// as in TestBadImageInBatchDoesNotHurtOthers: the poison image is
	// batched with four good ones
	release := cfg.hold()
	send(0)
	<-cfg.entered
	for i := 1; i < len(answers); i++ {
		send(i)
	}
	tr.waitQueued(len(answers))
	release()
	wg.Wait()
	for i := range f.imgs {
		if answers[i].code != http.StatusOK || !relClose(scores[i], f.expect[i].Score) {
			t.Errorf("good image %d batched with a poison one: %v", i, answers[i])
		}
	}
	if a := answers[len(f.imgs)]; a.code != http.StatusInternalServerError || !bytes.Contains(a.body, []byte("panicked")) {
		t.Errorf("poison image: %v", a)
	}
	if n := tr.count(traceBatch, len(answers)-1); n != 1 {
		t.Errorf("%d batches of the poison image and the four good ones", n)
	}
	ts.healthy(t, "wood", f.imgs[0], f.expect[0])

	// a handler that panics, on this server's router
	ts.handle(ts.mux, "GET /boom", "boom", false, func(http.ResponseWriter, *http.Request, *reqInfo) error { panic("boom") })
	if a := ts.do(http.MethodGet, "/boom", nil); a.code != http.StatusInternalServerError || !bytes.Contains(a.body, []byte(`"error"`)) {
		t.Errorf("handler panic: %v", a)
	}
	ts.healthy(t, "wood", f.imgs[0], f.expect[0])
	if !strings.Contains(ts.logs.String(), "panic") {
		t.Error("the panics were not logged")
	}
}

// A lone request waits for company until its batch is full; the deadline
// starts a partial batch.
func TestMaxDelay(t *testing.T) {
	f := newFixture(t, 4)
	o, tr := traced(testOptions())
	o.MaxDelay, o.MaxBatch = time.Hour, 4
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(&fakeConfig{}), o)
	lone := make(chan answer, 1)
	go func() {
		_, a := ts.scoreV1("wood", f.imgs[0], "")
		lone <- a
	}()
	tr.waitEvents(traceGathered, 1, 1) // the batcher holds it, gathering
	if n := tr.count(traceBatch, -1); n != 0 {
		t.Fatalf("a lone request started a batch %d times within an hour's max-delay", n)
	}
	// three more images fill the batch: it starts without the deadline
	v2, a2 := ts.infer("wood", inferBody("", f.imgs[1:]))
	if a2.code != http.StatusOK || len(v2.Outputs) == 0 {
		t.Fatal(a2)
	}
	if a := <-lone; a.code != http.StatusOK {
		t.Fatal(a)
	}
	if tr.count(traceBatch, 4) != 1 || tr.count(traceBatch, -1) != 1 {
		t.Fatalf("batches: %+v", tr.events)
	}
	// a short max-delay starts the lone request's batch alone
	o2, tr2 := traced(testOptions())
	o2.MaxDelay, o2.MaxBatch = time.Millisecond, 4
	ts2 := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(&fakeConfig{}), o2)
	if _, a := ts2.scoreV1("wood", f.imgs[0], ""); a.code != http.StatusOK || tr2.count(traceBatch, 1) != 1 {
		t.Fatalf("a lone request with max-delay 1ms: %v, %d batches of 1", a, tr2.count(traceBatch, 1))
	}
}

// Reloading under load loses no request: each answer is right for the version
// that gave it; old versions are released; a corrupt file is refused and the
// old model keeps serving.
func TestReloadUnderLoad(t *testing.T) {
	f := newFixture(t, 6)
	dir := f.dir
	pathB := filepath.Join(dir, "b.padim")
	trainModel(t, pathB, 2, 10)
	expectB := libraryScores(t, pathB, f.imgs)
	fileA, _ := os.ReadFile(f.path)
	fileB, _ := os.ReadFile(pathB)
	live := filepath.Join(dir, "live.padim")
	os.WriteFile(live, fileA, 0o644)
	cfg := &fakeConfig{}
	o, tr := traced(testOptions())
	ts := start(t, []ModelSpec{{"wood", live}}, fakeLoader(cfg), o)

	// version v serves file A when odd, B when even
	want := func(version string, img int) float32 {
		v, _ := strconv.Atoi(version)
		if v%2 == 1 {
			return f.expect[img].Score
		}
		return expectB[img].Score
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	answered := sync.NewCond(&mu)
	var total int
	versions := map[string]int{}
	failed := false
	for c := 0; c < 12; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				img := (c + k) % len(f.imgs)
				r, a := ts.scoreV1("wood", f.imgs[img], "")
				ok := a.code == http.StatusOK && relClose(r.Score, want(r.Version, img))
				if a.code != http.StatusOK {
					t.Errorf("during reloads: %v", a)
				} else if !ok {
					t.Errorf("version %s image %d: score %v, want %v", r.Version, img, r.Score, want(r.Version, img))
				}
				mu.Lock()
				total++
				versions[r.Version]++
				failed = failed || !ok
				mu.Unlock()
				answered.Broadcast()
				if !ok {
					return
				}
			}
		}()
	}
	// waitAnswers waits until version v has given n answers
	waitAnswers := func(v string, n int) {
		mu.Lock()
		defer mu.Unlock()
		for versions[v] < n && !failed {
			answered.Wait()
		}
	}
	for v := 2; v <= 5; v++ {
		waitAnswers(strconv.Itoa(v-1), 10)
		next := fileB
		if v%2 == 1 {
			next = fileA
		}
		os.WriteFile(live+".tmp", next, 0o644)
		os.Rename(live+".tmp", live)
		a := ts.do(http.MethodPost, "/v2/repository/models/wood/load", nil)
		if a.code != http.StatusOK || !strings.Contains(string(a.body), fmt.Sprintf(`"version":"%d"`, v)) {
			t.Fatalf("load %d: %v", v, a)
		}
	}
	waitAnswers("5", 10)

	// a corrupt file, written in place over the one being served: refused
	os.WriteFile(live, fileA[:len(fileA)/2], 0o644)
	a := ts.do(http.MethodPost, "/v2/repository/models/wood/load", nil)
	if a.code != http.StatusBadRequest || !strings.Contains(string(a.body), "keeps serving") {
		t.Fatalf("corrupt reload: %v", a)
	}
	os.WriteFile(live, []byte("garbage"), 0o644)
	if err := ts.ReloadAll(); err == nil {
		t.Fatal("SIGHUP-style reload of garbage succeeded")
	}
	mu.Lock()
	n5 := versions["5"]
	mu.Unlock()
	waitAnswers("5", n5+10)
	close(stop)
	wg.Wait()
	t.Logf("%d requests across versions %v", total, versions)
	if len(versions) != 5 {
		t.Errorf("versions seen %v: the reloads did not happen under load", versions)
	}
	r, a2 := ts.scoreV1("wood", f.imgs[0], "")
	if a2.code != http.StatusOK || r.Version != "5" || !relClose(r.Score, f.expect[0].Score) {
		t.Fatalf("after the refused reloads: %v", a2)
	}
	if a := ts.do(http.MethodGet, "/v2/models/wood/ready", nil); a.code != http.StatusOK {
		t.Fatal(a)
	}
	// every replaced version was released once its requests were done
	tr.waitEvents(traceReleased, -1, 4)
	if c := cfg.closed.Load(); c != 4 || cfg.loads.Load() != 5 {
		t.Fatalf("%d loads, %d closed; want 5 and 4", cfg.loads.Load(), c)
	}
	a = ts.do(http.MethodGet, "/metrics", nil)
	if !strings.Contains(string(a.body), `padim_model_loads_total{model="wood",result="error"} 2`) {
		t.Errorf("load errors: %s", grep(a.body, "padim_model_loads_total"))
	}
}

// A refused reload tells the client nothing of the server's files: no path,
// no bytes of what the file holds; the log has the detail.
func TestReloadErrorIsGeneric(t *testing.T) {
	f := newFixture(t, 1)
	live := filepath.Join(f.dir, "live.padim")
	b, _ := os.ReadFile(f.path)
	os.WriteFile(live, b, 0o644)
	ts := start(t, []ModelSpec{{"wood", live}}, fakeLoader(&fakeConfig{}), testOptions())
	secret := filepath.Join(f.dir, "secret.txt")
	os.WriteFile(secret, []byte("root:x:0:0:root:/root:/bin/bash\n"), 0o644)
	os.Remove(live)
	if err := os.Symlink(secret, live); err != nil {
		t.Fatal(err)
	}
	a := ts.do(http.MethodPost, "/v2/repository/models/wood/load", nil)
	if a.code != http.StatusBadRequest || !strings.Contains(string(a.body), "keeps serving") {
		t.Fatalf("reload of a link to a text file: %v", a)
	}
	for _, leak := range []string{f.dir, "secret", "live.padim", "root", "8243113893085442162" /* "root:x:0" as a little-endian uint64 */, "header"} {
		if strings.Contains(string(a.body), leak) {
			t.Errorf("the client's error shows %q: %s", leak, a.body)
		}
	}
	if !strings.Contains(ts.logs.String(), "live.padim") {
		t.Errorf("the log lacks the detail: %s", ts.logs.String())
	}
}

// Draining answers the requests in flight, then stops.
func TestDrainAnswersInFlight(t *testing.T) {
	f := newFixture(t, 4)
	cfg := &fakeConfig{}
	o, tr := traced(testOptions())
	o.MaxDelay, o.MaxBatch = time.Hour, 64 // requests sit in the batcher when the drain starts
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), o)
	var wg sync.WaitGroup
	answers := make([]answer, 6)
	scores := make([]float32, 6)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r v1Answer
			r, answers[i] = ts.scoreV1("wood", f.imgs[i%4], "")
			scores[i] = r.Score
		}()
	}
	tr.waitQueued(len(answers))
	if !ts.Ready() || tr.count(traceBatch, -1) != 0 {
		t.Fatal("not ready, or a batch started, before the drain")
	}
	ts.cancel() // what SIGTERM does
	tr.waitEvents(traceDraining, -1, 1)
	if ts.Ready() {
		t.Error("still ready while draining")
	}
	wg.Wait()
	for i, a := range answers {
		if a.code != http.StatusOK || !relClose(scores[i], f.expect[i%4].Score) {
			t.Errorf("in-flight request %d: %v", i, a)
		}
	}
	if err := <-ts.done; err != nil {
		t.Fatal(err)
	}
	ts.done <- nil // for the cleanup
	if a := ts.do(http.MethodGet, "/v2/health/live", nil); a.err == nil {
		t.Fatalf("answered after the drain: %v", a)
	}
	if cfg.closed.Load() != 1 {
		t.Fatalf("model released %d times", cfg.closed.Load())
	}
}

func TestParseModelSpec(t *testing.T) {
	for in, want := range map[string]ModelSpec{
		"models/wood.padim":         {"wood", "models/wood.padim"},
		"line3=models/wood.padim":   {"line3", "models/wood.padim"},
		"/data/a=b/wood.v2.padim":   {"wood.v2", "/data/a=b/wood.v2.padim"},
		"cam_1=/srv/m/x=y.padim":    {"cam_1", "/srv/m/x=y.padim"},
		"plain":                     {"plain", "plain"},
		"ok-name=relative/dir/m.pd": {"ok-name", "relative/dir/m.pd"},
	} {
		got, err := ParseModelSpec(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
	}
	if _, err := ParseModelSpec("bad name=x.padim"); err == nil {
		t.Error("a name with a space accepted")
	}
	// a file named line=3.padim: it is the path, unless 3.padim exists too
	dir := t.TempDir()
	t.Chdir(dir)
	os.WriteFile("line=3.padim", []byte("x"), 0o644)
	if got, err := ParseModelSpec("line=3.padim"); err != nil || got != (ModelSpec{"line=3", "line=3.padim"}) {
		t.Errorf("the file line=3.padim: %+v %v", got, err)
	}
	os.WriteFile("3.padim", []byte("x"), 0o644)
	if _, err := ParseModelSpec("line=3.padim"); err == nil || !strings.Contains(err.Error(), "ambiguous") || !strings.Contains(err.Error(), "./line=3.padim") {
		t.Errorf("line=3.padim with 3.padim beside it: %v", err)
	}
	if got, err := ParseModelSpec("./line=3.padim"); err != nil || got.Path != "./line=3.padim" {
		t.Errorf("./line=3.padim: %+v %v", got, err)
	}
	if got, err := ParseModelSpec("cam=line=3.padim"); err != nil || got != (ModelSpec{"cam", "line=3.padim"}) {
		t.Errorf("cam=line=3.padim: %+v %v", got, err)
	}
}

func TestNewRefuses(t *testing.T) {
	f := newFixture(t, 1)
	load := fakeLoader(&fakeConfig{})
	if _, err := New([]ModelSpec{{"a", f.path}, {"a", f.path}}, load, testOptions()); err == nil {
		t.Error("two models named alike")
	}
	if _, err := New([]ModelSpec{{"a", filepath.Join(f.dir, "missing.padim")}}, load, testOptions()); err == nil {
		t.Error("a missing file")
	}
	bad := filepath.Join(f.dir, "bad.padim")
	os.WriteFile(bad, []byte("not a model"), 0o644)
	if _, err := New([]ModelSpec{{"a", bad}}, load, testOptions()); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("a corrupt file: %v (the error must name the file, not its snapshot)", err)
	}
	o := testOptions()
	o.MaxBatch = 0
	if _, err := New([]ModelSpec{{"a", f.path}}, load, o); err == nil {
		t.Error("max batch 0")
	}
	// A named pipe or a folder as the model is refused at once, naming it; a
	// FIFO used to block the snapshot copy forever (no writer ever came).
	fifo := filepath.Join(f.dir, "pipe.padim")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := New([]ModelSpec{{"a", fifo}}, load, testOptions()); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, readfile.ErrNotRegular) || !strings.Contains(err.Error(), fifo) {
			t.Errorf("a FIFO as the model: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a FIFO as the model blocked the server's start")
	}
	if _, err := New([]ModelSpec{{"a", f.dir}}, load, testOptions()); !errors.Is(err, readfile.ErrNotRegular) || !strings.Contains(err.Error(), "a folder") {
		t.Errorf("a folder as the model: %v", err)
	}
}

// With two pipelines, a partial batch waits for the running one to finish
// (gathering meanwhile), while a full batch starts beside it at once.
func TestSecondPipelineTakesOnlyFullBatches(t *testing.T) {
	f := newFixture(t, 4)
	cfg := &fakeConfig{entered: make(chan struct{}, 4)}
	o, tr := traced(testOptions())
	o.MaxBatch, o.Pipelines = 3, 2
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), o)
	var wg sync.WaitGroup
	send := func(imgs ...int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [][]byte
			for _, i := range imgs {
				b = append(b, f.imgs[i])
			}
			r, a := ts.infer("wood", inferBody("", b))
			s, _ := r.scores()
			if a.code != http.StatusOK || len(s) != len(imgs) {
				t.Errorf("images %v: %v", imgs, a)
				return
			}
			for k, i := range imgs {
				if !relClose(s[k], f.expect[i].Score) {
					t.Errorf("image %d: %v, want %v", i, s[k], f.expect[i].Score)
				}
			}
		}()
	}
	release := cfg.hold()
	send(0) // runs alone, held in the backbone
	<-cfg.entered
	send(1)                               // partial: waits for the first, gathering
	tr.waitEvents(traceWaitRunning, 1, 1) // past its deadline, waiting for the running batch
	send(2)                               // joins it
	tr.waitEvents(traceGathered, 2, 1)    //
	if n := tr.count(traceBatch, -1); n != 1 {
		t.Fatalf("%d batches while the first runs: the partial batch must wait and gather", n)
	}
	release()
	wg.Wait()
	if tr.count(traceBatch, 1) != 1 || tr.count(traceBatch, 2) != 1 {
		t.Fatalf("batches %+v: want 1 image, then 2", tr.events)
	}
	// a full batch starts beside a running one
	release = cfg.hold()
	send(3)
	<-cfg.entered
	send(0, 1, 2)
	tr.waitFor(func(tr *tracer) bool {
		for _, ev := range tr.events {
			if ev.kind == traceBatch && ev.images == 3 && ev.running == 2 {
				return true
			}
		}
		return false
	})
	release()
	wg.Wait()
}
