package serve

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
)

// headerLength is the header of Triton's binary tensor extension: the JSON
// part's length, binary data after it.
const headerLength = "Inference-Header-Content-Length"

// outTensor is one output of an answer, protocol-neutral: REST JSON, REST
// binary and gRPC encode it.
type outTensor struct {
	name, datatype string
	shape          []int64
	f32            [][]float32 // FP32 data, in chunks (a map per image)
	bools          []bool      // BOOL data
	binary         bool        // REST: answered in binary
}

// elements is the tensor's element count.
func (t *outTensor) elements() int64 {
	if t.datatype == "BOOL" {
		return int64(len(t.bools))
	}
	var n int64
	for _, c := range t.f32 {
		n += int64(len(c))
	}
	return n
}

// binarySize is the tensor's size in binary: 4 bytes an FP32, 1 a BOOL.
func (t *outTensor) binarySize() int64 {
	if t.datatype == "BOOL" {
		return int64(len(t.bools))
	}
	return 4 * t.elements()
}

// writeBinary writes the tensor's raw little-endian data.
func (t *outTensor) writeBinary(w io.Writer) error {
	if t.datatype == "BOOL" {
		b := make([]byte, len(t.bools))
		for i, v := range t.bools {
			if v {
				b[i] = 1
			}
		}
		_, err := w.Write(b)
		return err
	}
	buf := make([]byte, 0, 16<<10)
	for _, c := range t.f32 {
		for _, v := range c {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			if len(buf) == cap(buf) {
				if _, err := w.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
	}
	_, err := w.Write(buf)
	return err
}

// writeJSONData writes the tensor's data as a flat JSON array.
func (t *outTensor) writeJSONData(w io.Writer) error {
	buf := make([]byte, 0, 16<<10)
	buf = append(buf, '[')
	first := true
	sep := func() {
		if !first {
			buf = append(buf, ',')
		}
		first = false
	}
	flush := func() error {
		if len(buf) > cap(buf)-32 {
			if _, err := w.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		return nil
	}
	if t.datatype == "BOOL" {
		for _, v := range t.bools {
			sep()
			buf = strconv.AppendBool(buf, v)
			if err := flush(); err != nil {
				return err
			}
		}
	} else {
		for _, c := range t.f32 {
			for _, v := range c {
				sep()
				buf = appendFloat32(buf, v)
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	buf = append(buf, ']')
	_, err := w.Write(buf)
	return err
}

// appendFloat32 formats a float32 as encoding/json does.
func appendFloat32(b []byte, f float32) []byte {
	abs := math.Abs(float64(f))
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, float64(f), format, -1, 32)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// finite refuses non-finite values (JSON has no NaN; a NaN score means a
// broken backbone, not an answer).
func finite(what string, v []float32) error {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return errorf(http.StatusInternalServerError, "the model produced a non-finite %s (%v): its backbone or statistics are broken", what, x)
		}
	}
	return nil
}

// tensors builds the answer's outputs, in the order asked for.
func (a *inferAnswer) tensors(req *inferRequest) ([]outTensor, error) {
	n := len(a.results)
	var outs []outTensor
	for _, o := range a.outputs {
		t := outTensor{name: o.Name, binary: req.binary(o)}
		switch o.Name {
		case outScore:
			v := make([]float32, n)
			for i, r := range a.results {
				v[i] = r.Score
			}
			if err := finite("score", v); err != nil {
				return nil, err
			}
			t.datatype, t.shape, t.f32 = "FP32", []int64{int64(n)}, [][]float32{v}
		case outDefect:
			t.datatype, t.shape, t.bools = "BOOL", []int64{int64(n)}, make([]bool, n)
			for i, r := range a.results {
				t.bools[i] = r.Defect
			}
		case outThreshold:
			t.datatype, t.shape, t.f32 = "FP32", []int64{1}, [][]float32{{a.thresholds.Image}}
		case outMap:
			W, H := a.results[0].W, a.results[0].H
			t.datatype, t.shape = "FP32", []int64{int64(n), int64(H), int64(W)}
			for i, r := range a.results {
				if r.W != W || r.H != H {
					return nil, errorf(http.StatusBadRequest, "anomaly_map: image[%d]'s map is %dx%d, image[0]'s %dx%d; send images of one size, or one per request", i, r.W, r.H, W, H)
				}
				if err := finite("anomaly map value", r.Map); err != nil {
					return nil, err
				}
				t.f32 = append(t.f32, r.Map)
			}
		}
		outs = append(outs, t)
	}
	return outs, nil
}

// parameters are the answer's parameters: the thresholds used and where
// they came from.
func (a *inferAnswer) parameters() map[string]any {
	if a.thresholds == nil {
		return nil
	}
	return map[string]any{paramThreshold: a.thresholds.Image, paramPixelThreshold: a.thresholds.Pixel, "threshold_source": a.source}
}

// encodeInfer answers a v2 inference: JSON, with the outputs asked for in
// binary after the JSON header (Triton's binary tensor extension). Data are
// streamed, never held as text.
func (s *Server) encodeInfer(w http.ResponseWriter, name string, req *inferRequest, a *inferAnswer) error {
	outs, err := a.tensors(req)
	if err != nil {
		return err
	}
	anyBinary := false
	var binSize int64
	for _, t := range outs {
		if t.binary {
			anyBinary = true
			binSize += t.binarySize()
		}
	}
	header := func(w io.Writer) error { return writeInferHeader(w, name, a.e.version, req.ID, a.parameters(), outs) }
	if !anyBinary {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		bw := bufio.NewWriterSize(w, 64<<10)
		header(bw)
		bw.WriteByte('\n')
		return flushed(bw)
	}
	var cw countWriter
	if err := header(&cw); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(headerLength, strconv.FormatInt(cw.n, 10))
	w.Header().Set("Content-Length", strconv.FormatInt(cw.n+binSize, 10))
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	header(bw)
	for _, t := range outs {
		if t.binary {
			t.writeBinary(bw)
		}
	}
	return flushed(bw)
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// writeInferHeader writes the JSON of an answer: the data of JSON outputs
// inline, binary_data_size for binary ones.
func writeInferHeader(w io.Writer, name, version, id string, params map[string]any, outs []outTensor) error {
	str := func(s string) []byte { b, _ := json.Marshal(s); return b }
	bw := &errWriter{w: w}
	bw.printf(`{"model_name":%s,"model_version":%s`, str(name), str(version))
	if id != "" {
		bw.printf(`,"id":%s`, str(id))
	}
	if params != nil {
		p, err := json.Marshal(params)
		if err != nil {
			return err
		}
		bw.printf(`,"parameters":%s`, p)
	}
	bw.printf(`,"outputs":[`)
	for i, t := range outs {
		if i > 0 {
			bw.printf(",")
		}
		shape, _ := json.Marshal(t.shape)
		bw.printf(`{"name":%s,"datatype":%s,"shape":%s`, str(t.name), str(t.datatype), shape)
		if t.binary {
			bw.printf(`,"parameters":{"binary_data_size":%d}}`, t.binarySize())
			continue
		}
		bw.printf(`,"data":`)
		if bw.err == nil {
			bw.err = t.writeJSONData(w)
		}
		bw.printf("}")
	}
	bw.printf("]}")
	return bw.err
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, a ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, a...)
	}
}
