package serve

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// tritonBody builds a binary-extension request byte by byte as
// tritonclient.http does (InferInput.set_data_from_numpy(binary_data=True)
// on a BYTES tensor, json.dumps of the header with its separators, the
// tensors' bytes after it): each element a 4-byte little-endian length and its
// bytes; outputs nil: request parameter binary_data_output.
func tritonBody(imgs [][]byte, outputs string, sizeLie int) ([]byte, int) {
	var data []byte
	for _, b := range imgs {
		var n [4]byte
		binary.LittleEndian.PutUint32(n[:], uint32(len(b)))
		data = append(data, n[:]...)
		data = append(data, b...)
	}
	hdr := `{"inputs": [{"name": "image", "shape": [` + strconv.Itoa(len(imgs)) + `], "datatype": "BYTES", "parameters": {"binary_data_size": ` +
		strconv.Itoa(len(data)+sizeLie) + `}}]`
	if outputs == "" {
		hdr += `, "parameters": {"binary_data_output": true}}`
	} else {
		hdr += `, "outputs": [` + outputs + `]}`
	}
	return append([]byte(hdr), data...), len(hdr)
}

// tritonAnswer reads an answer as tritonclient's InferResult does: the JSON
// header's length from Inference-Header-Content-Length, then each binary
// output's binary_data_size bytes, in output order.
type tritonOutput struct {
	Name       string          `json:"name"`
	Datatype   string          `json:"datatype"`
	Shape      []int           `json:"shape"`
	Data       json.RawMessage `json:"data"`
	Parameters struct {
		BinaryDataSize *int `json:"binary_data_size"`
	} `json:"parameters"`
	raw []byte
}

func tritonAnswer(t *testing.T, a answer) []tritonOutput {
	t.Helper()
	if a.code != http.StatusOK {
		t.Fatalf("binary request: %v", a)
	}
	hdr, bin := a.body, []byte(nil)
	if h := a.header.Get("Inference-Header-Content-Length"); h != "" {
		n, err := strconv.Atoi(h)
		if err != nil || n > len(a.body) {
			t.Fatalf("Inference-Header-Content-Length %q for %d bytes", h, len(a.body))
		}
		hdr, bin = a.body[:n], a.body[n:]
	}
	var r struct{ Outputs []tritonOutput }
	if err := json.Unmarshal(hdr, &r); err != nil {
		t.Fatalf("answer header %q: %v", hdr, err)
	}
	for i, o := range r.Outputs {
		if o.Parameters.BinaryDataSize != nil {
			n := *o.Parameters.BinaryDataSize
			if n > len(bin) {
				t.Fatalf("output %s: binary_data_size %d, %d bytes left", o.Name, n, len(bin))
			}
			r.Outputs[i].raw, bin = bin[:n], bin[n:]
		}
	}
	if len(bin) != 0 {
		t.Fatalf("%d bytes after the outputs", len(bin))
	}
	return r.Outputs
}

// values decodes an output, binary (little-endian FP32, one byte per BOOL) or JSON.
func (o tritonOutput) values(t *testing.T) []float64 {
	t.Helper()
	var v []float64
	if o.raw == nil {
		if o.Datatype == "BOOL" {
			var b []bool
			json.Unmarshal(o.Data, &b)
			for _, x := range b {
				v = append(v, map[bool]float64{false: 0, true: 1}[x])
			}
			return v
		}
		json.Unmarshal(o.Data, &v)
		return v
	}
	switch o.Datatype {
	case "FP32":
		for i := 0; i+4 <= len(o.raw); i += 4 {
			v = append(v, float64(math.Float32frombits(binary.LittleEndian.Uint32(o.raw[i:]))))
		}
	case "BOOL":
		for _, b := range o.raw {
			v = append(v, float64(b))
		}
	default:
		t.Fatalf("datatype %s", o.Datatype)
	}
	return v
}

// Requests shaped like tritonclient's get the JSON path's answers, in
// binary; a binary_data_size that lies is a 400.
func TestBinaryTensorExtension(t *testing.T) {
	f := newFixture(t, 3)
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(&fakeConfig{}), testOptions())
	post := func(body []byte, hdrLen int) answer {
		return ts.do(http.MethodPost, "/v2/models/wood/infer", body, "Content-Type", "application/octet-stream", "Inference-Header-Content-Length", strconv.Itoa(hdrLen))
	}
	// the JSON path's answer to the same images
	jr, ja := ts.infer("wood", inferBody("", f.imgs, "score", "defect", "threshold", "anomaly_map"))
	if ja.code != http.StatusOK {
		t.Fatal(ja)
	}
	jsonVals := map[string][]float64{}
	for _, o := range jr.Outputs {
		jsonVals[o.Name] = tritonOutput{Name: o.Name, Datatype: o.Datatype, Data: o.Data}.values(t)
	}

	all := `{"name": "score", "parameters": {"binary_data": true}}, {"name": "defect", "parameters": {"binary_data": true}}, ` +
		`{"name": "threshold", "parameters": {"binary_data": true}}, {"name": "anomaly_map", "parameters": {"binary_data": true}}`
	body, n := tritonBody(f.imgs, all, 0)
	a := post(body, n)
	if ct := a.header.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("Content-Type %q", ct)
	}
	outs := tritonAnswer(t, a)
	if len(outs) != 4 {
		t.Fatalf("%d outputs", len(outs))
	}
	for _, o := range outs {
		if o.raw == nil {
			t.Fatalf("output %s not in binary", o.Name)
		}
		got, want := o.values(t), jsonVals[o.Name]
		if len(got) != len(want) || len(got) == 0 {
			t.Fatalf("%s: %d values, JSON %d", o.Name, len(got), len(want))
		}
		for i := range got {
			if float32(got[i]) != float32(want[i]) { // JSON holds the float32's shortest form
				t.Fatalf("%s[%d]: binary %v, JSON %v", o.Name, i, got[i], want[i])
			}
		}
	}
	for i, s := range outs[0].values(t) {
		if !relClose(float32(s), f.expect[i].Score) {
			t.Fatalf("score %d: %v, library %v", i, s, f.expect[i].Score)
		}
	}

	// no outputs named: binary_data_output answers the defaults in binary
	body, n = tritonBody(f.imgs[:1], "", 0)
	outs = tritonAnswer(t, post(body, n))
	if len(outs) != 3 || outs[0].Name != "score" || outs[0].raw == nil || outs[1].raw == nil {
		t.Fatalf("binary_data_output: %+v", outs)
	}
	// per-output choice: score in binary, defect in JSON
	body, n = tritonBody(f.imgs, `{"name": "score", "parameters": {"binary_data": true}}, {"name": "defect"}`, 0)
	outs = tritonAnswer(t, post(body, n))
	if outs[0].raw == nil || outs[1].raw != nil || fmt.Sprint(outs[1].values(t)) != fmt.Sprint(jsonVals["defect"]) {
		t.Fatalf("mixed outputs: %+v", outs)
	}
	// a JSON request asking for binary outputs gets them too
	jb := `{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[` + strconv.Quote(b64(f.imgs[0])) + `]}],"outputs":[{"name":"score","parameters":{"binary_data":true}}]}`
	outs = tritonAnswer(t, ts.do(http.MethodPost, "/v2/models/wood/infer", []byte(jb), "Content-Type", "application/json"))
	if outs[0].raw == nil || float32(outs[0].values(t)[0]) != float32(jsonVals["score"][0]) {
		t.Fatalf("binary output of a JSON request: %+v", outs)
	}

	// lies and mistakes: 400 with a reason
	good, gn := tritonBody(f.imgs[:1], `{"name": "score"}`, 0)
	long, ln := tritonBody(f.imgs[:1], `{"name": "score"}`, 10)
	short, sn := tritonBody(f.imgs[:1], `{"name": "score"}`, -10)
	elemLie := bytes.Clone(good)
	binary.LittleEndian.PutUint32(elemLie[gn:], uint32(len(f.imgs[0])+1))
	two, tn := tritonBody(f.imgs[:2], `{"name": "score"}`, 0)
	twoAsOne := bytes.Replace(two[:tn], []byte(`"shape": [2]`), []byte(`"shape": [1]`), 1)
	for _, c := range []struct {
		name   string
		body   []byte
		hdrLen string
		want   string
	}{
		{"binary_data_size too large", long, strconv.Itoa(ln), "binary_data_size"},
		{"binary_data_size too small", short, strconv.Itoa(sn), "binary_data_size"},
		{"an element's length lies", elemLie, strconv.Itoa(gn), "says"},
		{"more elements than the shape", append(twoAsOne, two[tn:]...), strconv.Itoa(len(twoAsOne)), "left after"},
		{"header length past the body", good, strconv.Itoa(len(good) + 1), "more than"},
		{"header length not a number", good, "twelve", "byte count"},
		{"header length cuts the JSON", good, strconv.Itoa(gn - 3), "not an inference request"},
		{"binary_data_size without the header", good[:gn], "", "Inference-Header-Content-Length"},
		{"binary data without binary_data_size", append([]byte(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["AA=="]}]}`), 1, 2, 3), "76", "no input has binary_data_size"},
	} {
		hdr := []string{"Content-Type", "application/octet-stream"}
		if c.hdrLen != "" {
			hdr = append(hdr, "Inference-Header-Content-Length", c.hdrLen)
		}
		a := ts.do(http.MethodPost, "/v2/models/wood/infer", c.body, hdr...)
		var e struct{ Error string }
		if a.code != http.StatusBadRequest || json.Unmarshal(a.body, &e) != nil || !strings.Contains(e.Error, c.want) {
			t.Errorf("%s: %v, want 400 with %q", c.name, a, c.want)
		}
	}
	ts.healthy(t, "wood", f.imgs[0], f.expect[0])
}
