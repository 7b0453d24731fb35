package serve

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net/http"
	"strconv"
	"strings"
)

// Limits of what a request may hold, checked while it is parsed: nothing in
// it is allocated beyond them.
const (
	maxJSONDepth  = 16 // nesting of any JSON value
	maxDataDepth  = 8  // nesting of an input's data arrays
	maxShapeDims  = 8  // dimensions of an input's shape
	maxParameters = 64 // keys of a parameters object
	maxOutputs    = 8  // outputs asked for
	maxInputs     = 8  // inputs listed (one is used; the others are named in the refusal)
)

// parseLimits are a server's limits on one request.
type parseLimits struct {
	maxImages int // elements of the image input (the queue's size)
}

// parseInfer reads a v2 inference request body: JSON, or, when headerLen ≥ 0
// (the Inference-Header-Content-Length header of Triton's binary tensor
// extension), a JSON header of that many bytes followed by the inputs' binary
// data. It is pure: no I/O, no server state; every count it reads is bounded
// by lim before anything is allocated for it. Images are slices of body
// (binary data) or freshly decoded (base64 in JSON).
func parseInfer(body []byte, headerLen int64, lim parseLimits) (*inferRequest, error) {
	hdr, bin := body, []byte(nil)
	if headerLen >= 0 {
		if headerLen > int64(len(body)) {
			return nil, errorf(http.StatusBadRequest, "Inference-Header-Content-Length %d is more than the %d-byte body", headerLen, len(body))
		}
		hdr, bin = body[:headerLen], body[headerLen:]
	}
	p := &jsonParser{d: json.NewDecoder(bytes.NewReader(hdr)), lim: lim}
	p.d.UseNumber()
	raw, err := p.request()
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			return nil, err
		}
		return nil, errorf(http.StatusBadRequest, "the body is not an inference request: %v", err)
	}
	if _, err := p.d.Token(); err != io.EOF {
		return nil, errorf(http.StatusBadRequest, "the body is not an inference request: more after its JSON object")
	}
	return raw.resolve(bin, headerLen >= 0, lim)
}

// rawInput is one input as the JSON says it.
type rawInput struct {
	name, datatype string
	shape          []int64
	hasShape       bool
	data           []string // base64 elements, flattened
	hasData        bool
	badData        bool  // data is not (nested arrays of) strings
	binarySize     int64 // parameter binary_data_size; -1: none
}

// rawRequest is the JSON of a request before its inputs are resolved.
type rawRequest struct {
	id         string
	params     map[string]any
	inputs     []rawInput
	outputs    []outputSpec
	netFrame   bool
	hasOutputs bool
}

// resolve checks the inputs against the binary data and builds the request.
func (r *rawRequest) resolve(bin []byte, binaryExt bool, lim parseLimits) (*inferRequest, error) {
	req := &inferRequest{ID: r.id, Network: r.netFrame}
	if r.hasOutputs {
		req.Outputs = r.outputs
		if req.Outputs == nil {
			req.Outputs = []outputSpec{}
		}
	}
	for k, v := range r.params {
		switch k {
		case paramThreshold, paramPixelThreshold:
			f, ok := v.(float64)
			if !ok {
				return nil, errorf(http.StatusBadRequest, "parameter %s %v: want a number", k, v)
			}
			t, err := checkThreshold(k, f)
			if err != nil {
				return nil, err
			}
			if k == paramThreshold {
				req.Threshold = t
			} else {
				req.PixelThreshold = t
			}
		case "binary_data_output":
			b, ok := v.(bool)
			if !ok {
				return nil, errorf(http.StatusBadRequest, "parameter binary_data_output %v: want true or false", v)
			}
			req.BinaryOutputs = b
		}
	}
	if len(r.inputs) != 1 || r.inputs[0].name != "image" {
		var names []string
		for _, in := range r.inputs {
			names = append(names, strconv.Quote(in.name))
		}
		return nil, errorf(http.StatusBadRequest, "want exactly one input, \"image\"; got [%s]", strings.Join(names, ", "))
	}
	in := r.inputs[0]
	if in.datatype != "BYTES" {
		return nil, errorf(http.StatusBadRequest, "input \"image\" has datatype %q; want BYTES (one encoded image per element: base64 in JSON, or length-prefixed binary data)", in.datatype)
	}
	if !in.hasShape || len(in.shape) == 0 {
		return nil, errorf(http.StatusBadRequest, "input \"image\" has no shape; want [n] for n images")
	}
	n, err := shapeElements(in.shape, lim.maxImages)
	if err != nil {
		return nil, err
	}
	switch {
	case in.binarySize >= 0 && in.hasData:
		return nil, errorf(http.StatusBadRequest, "input \"image\" has both data and the binary_data_size parameter; send one")
	case in.binarySize >= 0:
		if !binaryExt {
			return nil, errorf(http.StatusBadRequest, "input \"image\" has binary_data_size %d but the request has no Inference-Header-Content-Length header (Triton's binary tensor extension)", in.binarySize)
		}
		if in.binarySize != int64(len(bin)) {
			return nil, errorf(http.StatusBadRequest, "input \"image\" says binary_data_size %d, but %d bytes follow the %s-byte JSON header", in.binarySize, len(bin), "Inference-Header-Content-Length")
		}
		imgs, err := splitBytes(bin, n)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "input \"image\" binary data: %v", err)
		}
		req.Images = imgs
	case in.hasData:
		if len(bin) > 0 {
			return nil, errorf(http.StatusBadRequest, "%d bytes of binary data follow the JSON header, but no input has binary_data_size", len(bin))
		}
		if in.badData {
			return nil, errorf(http.StatusBadRequest, "input \"image\" data: want an array of base64 strings")
		}
		if int64(len(in.data)) != n {
			return nil, errorf(http.StatusBadRequest, "input \"image\" has shape %v but %d elements", in.shape, len(in.data))
		}
		for k, el := range in.data {
			b, err := base64.StdEncoding.DecodeString(el)
			if err != nil {
				if b, err = base64.RawStdEncoding.DecodeString(el); err != nil {
					return nil, errorf(http.StatusBadRequest, "image[%d] is not base64: %v", k, err)
				}
			}
			req.Images = append(req.Images, b)
			in.data[k] = "" // the string goes as its image is made
		}
	default:
		return nil, errorf(http.StatusBadRequest, "input \"image\" has no data (and no binary_data_size parameter)")
	}
	return req, nil
}

// shapeElements is the element count of a shape: each dimension ≥ 0, the
// product computed without overflow and at most maxImages.
func shapeElements(shape []int64, maxImages int) (int64, error) {
	n := uint64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, errorf(http.StatusBadRequest, "input \"image\" has shape %v: a dimension below 0", shape)
		}
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, errorf(http.StatusBadRequest, "input \"image\" has shape %v: its element count overflows 64 bits", shape)
		}
		n = lo
	}
	if n == 0 {
		return 0, errorf(http.StatusBadRequest, "input \"image\" has shape %v: no element", shape)
	}
	if n > uint64(maxImages) {
		return 0, errorf(http.StatusBadRequest, "input \"image\" has shape %v: %d images in one request; this server queues at most %d per model", shape, n, maxImages)
	}
	return int64(n), nil
}

// splitBytes reads n BYTES elements of Triton's binary form: each a 4-byte
// little-endian length and that many bytes, exactly filling b. The elements
// are slices of b.
func splitBytes(b []byte, n int64) ([][]byte, error) {
	out := make([][]byte, 0, n)
	for k := int64(0); k < n; k++ {
		if len(b) < 4 {
			return nil, fmt.Errorf("element %d: %d bytes left where a 4-byte length was due", k, len(b))
		}
		size := binary.LittleEndian.Uint32(b)
		b = b[4:]
		if uint64(size) > uint64(len(b)) {
			return nil, fmt.Errorf("element %d says %d bytes, but %d are left", k, size, len(b))
		}
		out = append(out, b[:size:size])
		b = b[size:]
	}
	if len(b) > 0 {
		return nil, fmt.Errorf("%d bytes left after the %d elements of the shape", len(b), n)
	}
	return out, nil
}

// jsonParser walks a request's JSON token by token with bounded counts.
type jsonParser struct {
	d   *json.Decoder
	lim parseLimits
}

func (p *jsonParser) delim(want json.Delim) error {
	t, err := p.d.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != want {
		return fmt.Errorf("want %q, got %v", want, t)
	}
	return nil
}

func (p *jsonParser) str(what string) (string, error) {
	t, err := p.d.Token()
	if err != nil {
		return "", err
	}
	s, ok := t.(string)
	if !ok {
		return "", fmt.Errorf("%s: want a string, got %v", what, t)
	}
	return s, nil
}

// object calls field for each key of an object, refusing a key twice and
// more than max keys.
func (p *jsonParser) object(what string, max int, field func(key string) error) error {
	if err := p.delim('{'); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	seen := map[string]bool{}
	for p.d.More() {
		k, err := p.str(what + " key")
		if err != nil {
			return err
		}
		if seen[k] {
			return fmt.Errorf("%s has the key %q twice", what, k)
		}
		if len(seen) >= max {
			return fmt.Errorf("%s has more than %d keys", what, max)
		}
		seen[k] = true
		if err := field(k); err != nil {
			return err
		}
	}
	return p.delim('}')
}

// array calls elem for each element, refusing more than max.
func (p *jsonParser) array(what string, max int, elem func(i int) error) error {
	if err := p.delim('['); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	for i := 0; p.d.More(); i++ {
		if i >= max {
			return &apiError{code: http.StatusBadRequest, msg: fmt.Sprintf("%s has more than %d elements", what, max)}
		}
		if err := elem(i); err != nil {
			return err
		}
	}
	return p.delim(']')
}

// skip reads one value of any kind, nested at most maxJSONDepth deep.
func (p *jsonParser) skip(depth int) error {
	t, err := p.d.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); ok {
		if d != '[' && d != '{' {
			return fmt.Errorf("unexpected %v", d)
		}
		return p.skipRest(depth + 1)
	}
	return nil
}

// skipRest reads the rest of an array or object whose opening was read.
func (p *jsonParser) skipRest(depth int) error {
	if depth > maxJSONDepth {
		return errors.New("nested too deep")
	}
	for p.d.More() {
		t, err := p.d.Token()
		if err != nil {
			return err
		}
		if d, ok := t.(json.Delim); ok {
			if d != '[' && d != '{' {
				return fmt.Errorf("unexpected %v", d)
			}
			if err := p.skipRest(depth + 1); err != nil {
				return err
			}
		}
	}
	_, err := p.d.Token()
	return err
}

// scalar reads a parameter value: a string, number (as float64) or bool.
func (p *jsonParser) scalar(what string) (any, error) {
	t, err := p.d.Token()
	if err != nil {
		return nil, err
	}
	switch v := t.(type) {
	case string, bool:
		return v, nil
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return nil, fmt.Errorf("%s %s: %v", what, v, err)
		}
		return f, nil
	}
	return nil, fmt.Errorf("%s: want a string, number or boolean, got %v", what, t)
}

func (p *jsonParser) params(what string) (map[string]any, error) {
	out := map[string]any{}
	err := p.object(what, maxParameters, func(k string) error {
		v, err := p.scalar(what + " " + strconv.Quote(k))
		out[k] = v
		return err
	})
	return out, err
}

func (p *jsonParser) request() (*rawRequest, error) {
	r := &rawRequest{}
	err := p.object("the request", maxParameters, func(k string) error {
		var err error
		switch k {
		case "id":
			r.id, err = p.str("id")
		case "parameters":
			r.params, err = p.params("parameters")
		case "inputs":
			err = p.array("inputs", maxInputs, func(int) error {
				in, err := p.input()
				r.inputs = append(r.inputs, in)
				return err
			})
		case "outputs":
			r.hasOutputs = true
			err = p.array("outputs", maxOutputs, func(int) error { return p.output(r) })
		default:
			err = p.skip(0)
		}
		return err
	})
	return r, err
}

func (p *jsonParser) input() (rawInput, error) {
	in := rawInput{binarySize: -1}
	err := p.object("an input", maxParameters, func(k string) error {
		switch k {
		case "name":
			s, err := p.str("input name")
			in.name = s
			return err
		case "datatype":
			s, err := p.str("input datatype")
			in.datatype = s
			return err
		case "shape":
			in.hasShape = true
			return p.array("input \"image\"'s shape", maxShapeDims, func(int) error {
				t, err := p.d.Token()
				if err != nil {
					return err
				}
				num, ok := t.(json.Number)
				if !ok {
					return fmt.Errorf("shape: want integers, got %v", t)
				}
				d, err := strconv.ParseInt(string(num), 10, 64)
				if err != nil {
					return errorf(http.StatusBadRequest, "input shape dimension %s: want an integer from 0 to 2⁶³−1", num)
				}
				in.shape = append(in.shape, d)
				return nil
			})
		case "parameters":
			ps, err := p.params("input parameters")
			if err != nil {
				return err
			}
			if v, ok := ps["binary_data_size"]; ok {
				f, ok := v.(float64)
				if !ok || f < 0 || f != math.Trunc(f) || f > 1<<53 {
					return errorf(http.StatusBadRequest, "input parameter binary_data_size %v: want a byte count", v)
				}
				in.binarySize = int64(f)
			}
			return nil
		case "data":
			in.hasData = true
			return p.data(&in)
		}
		return p.skip(0)
	})
	return in, err
}

// data reads a (possibly nested) array of strings, at most maxImages of them.
func (p *jsonParser) data(in *rawInput) error {
	t, err := p.d.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '[' {
		in.badData = true
		if ok {
			return p.skipRest(1)
		}
		return nil
	}
	return p.dataRest(&in.data, &in.badData, 0)
}

// dataRest is data after its opening bracket was read. An element that is
// not a string is noted in bad (the datatype's check comes first) and
// skipped; every element counts against maxImages.
func (p *jsonParser) dataRest(out *[]string, bad *bool, depth int) error {
	if depth > maxDataDepth {
		return errorf(http.StatusBadRequest, "input \"image\" data: nested too deep")
	}
	count := func() error {
		if len(*out) >= p.lim.maxImages {
			return errorf(http.StatusBadRequest, "input \"image\" has more than %d elements: this server queues at most %d images per model", p.lim.maxImages, p.lim.maxImages)
		}
		return nil
	}
	for p.d.More() {
		t, err := p.d.Token()
		if err != nil {
			return err
		}
		switch v := t.(type) {
		case json.Delim:
			if v == '{' {
				*bad = true
				if err := p.skipRest(depth + 1); err != nil {
					return err
				}
				continue
			}
			if err := p.dataRest(out, bad, depth+1); err != nil {
				return err
			}
		case string:
			if err := count(); err != nil {
				return err
			}
			*out = append(*out, v)
		default:
			if err := count(); err != nil {
				return err
			}
			*bad = true
			*out = append(*out, "")
		}
	}
	return p.delim(']')
}

func (p *jsonParser) output(r *rawRequest) error {
	o := outputSpec{}
	var frame any
	err := p.object("an output", maxParameters, func(k string) error {
		switch k {
		case "name":
			s, err := p.str("output name")
			o.Name = s
			return err
		case "parameters":
			ps, err := p.params("output parameters")
			if err != nil {
				return err
			}
			if v, ok := ps["binary_data"]; ok {
				b, ok := v.(bool)
				if !ok {
					return errorf(http.StatusBadRequest, "output parameter binary_data %v: want true or false", v)
				}
				o.Binary = &b
			}
			frame = ps[paramMapFrame]
			return nil
		}
		return p.skip(0)
	})
	if err != nil {
		return err
	}
	switch o.Name {
	case outScore, outDefect, outThreshold, outMap:
	default:
		return errorf(http.StatusBadRequest, "no output %q (outputs: score, defect, threshold, anomaly_map)", o.Name)
	}
	for _, prev := range r.outputs {
		if prev.Name == o.Name {
			return errorf(http.StatusBadRequest, "output %q is asked for twice", o.Name)
		}
	}
	if frame != nil && o.Name == outMap {
		switch frame {
		case "image":
		case "network":
			r.netFrame = true
		default:
			return errorf(http.StatusBadRequest, "anomaly_map's map_frame %v: want \"image\" (the input image's size, the default) or \"network\"", frame)
		}
	}
	r.outputs = append(r.outputs, o)
	return nil
}
