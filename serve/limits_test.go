package serve

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/padim/padim/detector"
)

// allocated is the bytes fn allocates.
func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// Bodies of many tiny elements are refused after a bounded read: the
// parser never allocates for more elements than the server takes (the old
// json.Unmarshal took 1.47 GB for 10⁷ empty strings in 30 MB).
func TestParseInferIsBounded(t *testing.T) {
	repeat := func(prefix, el, suffix string, n int) []byte {
		var b bytes.Buffer
		b.WriteString(prefix)
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(el)
		}
		b.WriteString(suffix)
		return b.Bytes()
	}
	lim := parseLimits{maxImages: 64}
	for _, c := range []struct {
		name string
		body []byte
		want string
	}{
		{"10⁷ empty strings", repeat(`{"inputs":[{"name":"image","shape":[10,1000000],"datatype":"BYTES","data":[`, `""`, `]}]}`, 10_000_000), "more than 64 elements"},
		{"10⁷ empty strings, shape last", repeat(`{"inputs":[{"name":"image","datatype":"BYTES","data":[`, `""`, `],"shape":[10,1000000]}]}`, 10_000_000), "more than 64 elements"},
		{"10⁶ nested arrays", repeat(`{"inputs":[{"name":"image","datatype":"BYTES","data":[`, `[""]`, `]}]}`, 1_000_000), "more than 64 elements"},
		{"10⁶ outputs", repeat(`{"outputs":[`, `{"name":"score","x":1}`, `]}`, 1_000_000), "asked for twice"},
		{"10⁶ inputs", repeat(`{"inputs":[`, `{}`, `]}`, 3_000_000), "more than 8 elements"},
		{"10⁶ shape dimensions", repeat(`{"inputs":[{"name":"image","datatype":"BYTES","shape":[`, `1`, `]}]}`, 5_000_000), "more than 8 elements"},
		{"10⁶ parameters", repeat(`{"parameters":{`, `"k":1`, `}}`, 1_000_000), "twice"},
		{"deep nesting", []byte(strings.Repeat(`{"x":[`, 100_000)), "nested too deep"},
	} {
		var err error
		n := allocated(func() { _, err = parseInfer(c.body, -1, lim) })
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if n > 16<<20 {
			t.Errorf("%s: %d MB allocated for a %d MB body", c.name, n>>20, len(c.body)>>20)
		}
	}
	// a shape whose product overflows int64 to 1 (accepted before with one element)
	_, err := parseInfer([]byte(`{"inputs":[{"name":"image","shape":[469411,1006941,647939,3373],"datatype":"BYTES","data":["AA=="]}]}`), -1, lim)
	if err == nil || !strings.Contains(err.Error(), "overflows") {
		t.Fatalf("overflowing shape: %v", err)
	}
}

// The memory budget: a request that can never fit is a 413 with the
// number, one that does not fit beside those in flight a 429, a map over
// --max-map-pixels a 400; each is counted, nothing is scored, and the server
// goes on.
func TestMemoryBudget(t *testing.T) {
	f := newFixture(t, 2)
	cfg := &fakeConfig{entered: make(chan struct{}, 4)}
	o := testOptions()
	o.MaxMapPixels = 2000        // the 48² test images' maps are 2304 pixels; their network frame 32² = 1024
	o.MaxRequestMemory = 1 << 20 // a JSON body of 256 KB takes 1 MiB
	o.MaxMemory = 1<<20 + 64<<10
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), o)
	errOf := func(a answer) string {
		var e struct{ Error string }
		json.Unmarshal(a.body, &e)
		return e.Error
	}
	// over the per-request budget: 413 before the body is read
	big := inferBody("", [][]byte{append(bytes.Clone(f.imgs[0]), make([]byte, 300<<10)...)})
	_, a := ts.infer("wood", big)
	if a.code != http.StatusRequestEntityTooLarge || !regexp.MustCompile(`needs \d+ bytes .*over the 1048576-byte per-request budget`).MatchString(errOf(a)) {
		t.Fatalf("over the per-request budget: %v", a)
	}
	// a map over --max-map-pixels: 400 naming the sizes; the network frame fits
	_, a = ts.scoreV1("wood", f.imgs[0], "?map=npy")
	if a.code != http.StatusBadRequest || !strings.Contains(errOf(a), "48x48 = 2304 pixels, over the 2000-pixel limit") {
		t.Fatalf("map over the limit: %v", a)
	}
	_, a = ts.infer("wood", inferBody("", f.imgs[:1], "anomaly_map"))
	if a.code != http.StatusBadRequest || !strings.Contains(errOf(a), "map_frame network") {
		t.Fatalf("v2 map over the limit: %v", a)
	}
	if _, a = ts.scoreV1("wood", f.imgs[0], "?map=npy&map_frame=network"); a.code != http.StatusOK {
		t.Fatalf("network-frame map: %v", a)
	}
	// beside a request in flight that holds most of the budget: 429
	release := cfg.hold()
	held := make(chan answer, 1)
	heavy := inferBody("", [][]byte{append(bytes.Clone(f.imgs[0]), make([]byte, 150<<10)...)}) // ≈ 800 KB charged
	go func() {
		_, a := ts.infer("wood", heavy)
		held <- a
	}()
	<-cfg.entered
	mid := inferBody("", [][]byte{append(bytes.Clone(f.imgs[0]), make([]byte, 100<<10)...)})
	_, a = ts.infer("wood", mid)
	if a.code != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" || !strings.Contains(errOf(a), "server's") {
		t.Errorf("beside a request in flight: %v", a)
	}
	release()
	if a := <-held; a.code != http.StatusOK {
		t.Fatalf("the request in flight: %v", a)
	}
	m := ts.do(http.MethodGet, "/metrics", nil)
	for _, want := range []string{`padim_memory_refusals_total{reason="request"} 1`, `padim_memory_refusals_total{reason="map"} 2`,
		`padim_memory_refusals_total{reason="server"} 1`, `padim_request_memory_bytes 0`, `padim_request_memory_limit_bytes 1.114112e+06`} {
		if !strings.Contains(string(m.body), want+"\n") {
			t.Errorf("metrics lack %s: %s", want, grep(m.body, "padim_request_memory"))
		}
	}
	ts.healthy(t, "wood", f.imgs[1], f.expect[1])
	if n := ts.mem.used.Load(); n != 0 {
		t.Fatalf("%d bytes still held after the requests", n)
	}
}

// Thresholds at run time: v1's ?threshold= and v2's parameters override the
// model's for one request, and the answer says which were used.
func TestRequestThresholds(t *testing.T) {
	f := newFixture(t, 3)
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(&fakeConfig{}), testOptions())
	good := -1
	for i, e := range f.expect {
		if !e.Defect {
			good = i
			break
		}
	}
	if good < 0 {
		t.Fatal("no good image in the fixture")
	}
	r, a := ts.scoreV1("wood", f.imgs[good], "")
	var plain struct {
		ThresholdSource string   `json:"threshold_source"`
		PixelThreshold  *float32 `json:"pixel_threshold"`
	}
	json.Unmarshal(a.body, &plain)
	if a.code != http.StatusOK || *r.Defect || plain.ThresholdSource != "model" || plain.PixelThreshold == nil {
		t.Fatalf("the model's threshold: %v", a)
	}
	// a threshold just below the image's score makes it a defect, with boxes
	low := r.Score * 0.999
	r2, a := ts.scoreV1("wood", f.imgs[good], fmt.Sprintf("?threshold=%v&pixel_threshold=%v", low, r.Score*0.5))
	json.Unmarshal(a.body, &plain)
	if a.code != http.StatusOK || !*r2.Defect || *r2.Threshold != low || plain.ThresholdSource != "request" || *plain.PixelThreshold != r.Score*0.5 || len(r2.Boxes) == 0 {
		t.Fatalf("?threshold=%v: %v", low, a)
	}
	// the next request without one is back on the model's
	if r3, _ := ts.scoreV1("wood", f.imgs[good], ""); *r3.Defect {
		t.Fatal("a request threshold outlived its request")
	}
	// v2: parameters threshold
	body := fmt.Sprintf(`{"parameters":{"threshold":%v},"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[%q]}]}`, low, b64(f.imgs[good]))
	v2, a := ts.infer("wood", []byte(body))
	var d []bool
	var th []float32
	json.Unmarshal(v2.output("defect").Data, &d)
	json.Unmarshal(v2.output("threshold").Data, &th)
	var resp struct{ Parameters map[string]any }
	json.Unmarshal(a.body, &resp)
	if a.code != http.StatusOK || !d[0] || th[0] != low || resp.Parameters["threshold_source"] != "request" {
		t.Fatalf("v2 threshold: %v", a)
	}
	// the metrics count defects under the server's thresholds, not the request's
	m := ts.do(http.MethodGet, "/metrics", nil)
	if want := fmt.Sprintf(`padim_defects_total{model="wood"} 0`); !strings.Contains(string(m.body), want) {
		t.Errorf("defects: %s", grep(m.body, "padim_defects_total"))
	}
	for _, q := range []string{"?threshold=abc", "?threshold=NaN", "?pixel_threshold=1e999"} {
		if _, a := ts.scoreV1("wood", f.imgs[good], q); a.code != http.StatusBadRequest {
			t.Errorf("%s: %v", q, a)
		}
	}
	if _, a := ts.infer("wood", []byte(`{"parameters":{"threshold":"high"},"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["AA=="]}]}`)); a.code != http.StatusBadRequest {
		t.Errorf("a threshold string: %v", a)
	}
}

// preferring is a backbone that asks for its own batch size.
type preferring struct {
	*fakeBackbone
	n int
}

func (p preferring) PreferredBatch() int { return p.n }

// The guard keeps the backbone's preferred batch (a served model runs the
// backbone in the batches padim score does, not in --max-batch's), and a
// backbone without one leaves the choice to the pipeline.
func TestGuardKeepsThePreferredBatch(t *testing.T) {
	g, ok := Guard(preferring{newFake(&fakeConfig{}, 1), 2}).(detector.BatchPreferrer)
	if !ok || g.PreferredBatch() != 2 {
		t.Fatalf("guarded backbone: preferred batch lost (%v)", ok)
	}
	if b := Guard(newFake(&fakeConfig{}, 1)).(detector.BatchPreferrer).PreferredBatch(); b != 0 {
		t.Fatalf("a backbone without a preferred batch got %d", b)
	}
}
