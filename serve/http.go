package serve

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/npy"
	"github.com/padim/padim/detector/picture"
)

// reqInfo is what the request log line says beyond the HTTP basics.
type reqInfo struct {
	route   string
	model   string
	version string
	images  int
	err     string
}

// recorder remembers the status and size of a response.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// ServeHTTP routes a request, with authentication, a recovered panic as 500,
// metrics and one log line.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	info := &reqInfo{route: "unknown"}
	s.met.inflight.Inc()
	defer func() {
		p := recover()
		if p != nil {
			info.err = fmt.Sprintf("panic: %v", p)
			s.log.Error("panic in request", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			if rec.status == 0 {
				writeError(rec, info, http.StatusInternalServerError, "internal error while handling the request")
			}
		}
		s.met.inflight.Dec()
		d := time.Since(start)
		s.met.requests.WithLabelValues(info.route, strconv.Itoa(rec.status)).Inc()
		s.met.duration.WithLabelValues(info.route).Observe(d.Seconds())
		attrs := []slog.Attr{
			slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", rec.status),
			slog.Float64("ms", float64(d.Microseconds())/1000), slog.Int64("bytes", rec.bytes), slog.String("remote", r.RemoteAddr),
		}
		if info.model != "" {
			attrs = append(attrs, slog.String("model", info.model), slog.String("version", info.version))
		}
		if info.images > 0 {
			attrs = append(attrs, slog.Int("images", info.images))
		}
		if info.err != "" {
			attrs = append(attrs, slog.String("err", info.err))
		}
		level := slog.LevelInfo
		if rec.status >= 500 {
			level = slog.LevelError
		}
		s.log.LogAttrs(context.Background(), level, "request", attrs...)
		if p != nil && rec.status != http.StatusInternalServerError {
			panic(http.ErrAbortHandler) // the answer was under way: cut the connection
		}
	}()
	if rec.status == 0 && r.ProtoMajor == 1 && s.draining.Load() {
		rec.Header().Set("Connection", "close")
	}
	if requestHook != nil {
		requestHook(r)
	}
	s.route(rec, r, info)
}

// requestHook, when set (tests), sees every request before it is routed.
var requestHook func(*http.Request)

// route dispatches on the path. Paths:
//
//	GET  /v2/health/live, /v2/health/ready, /v2
//	GET  /v2/models/NAME[/versions/V], /v2/models/NAME[/versions/V]/ready
//	POST /v2/models/NAME[/versions/V]/infer
//	POST /v2/repository/models/NAME/load
//	POST /v1/models/NAME/score
//	GET  /metrics
func (s *Server) route(w http.ResponseWriter, r *http.Request, info *reqInfo) {
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	get := []string{http.MethodGet, http.MethodHead}
	post := []string{http.MethodPost}
	// allow answers 405 unless the method is one of ms.
	allow := func(ms []string) bool {
		for _, m := range ms {
			if r.Method == m {
				return true
			}
		}
		w.Header().Set("Allow", strings.Join(ms, ", "))
		writeError(w, info, http.StatusMethodNotAllowed, "%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(ms, ", "))
		return false
	}
	if len(seg) == 3 && seg[0] == "v2" && seg[1] == "health" && (seg[2] == "live" || seg[2] == "ready") {
		info.route = "health_" + seg[2]
		if !allow(get) {
			return
		}
		if seg[2] == "live" {
			writeJSON(w, http.StatusOK, map[string]bool{"live": true})
			return
		}
		code := http.StatusOK
		if !s.Ready() {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]bool{"ready": code == http.StatusOK})
		return
	}
	if !s.authorized(w, r, info) {
		return
	}
	switch {
	case len(seg) == 1 && seg[0] == "metrics":
		info.route = "metrics"
		if allow(get) {
			promhttp.HandlerFor(s.met.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
		}
	case len(seg) == 1 && seg[0] == "v2":
		info.route = "server_metadata"
		if allow(get) {
			writeJSON(w, http.StatusOK, map[string]any{"name": "padim", "version": s.opt.Version, "extensions": []string{}})
		}
	case len(seg) >= 3 && seg[0] == "v2" && seg[1] == "models":
		rest := seg[3:]
		version := ""
		if len(rest) >= 2 && rest[0] == "versions" {
			version, rest = rest[1], rest[2:]
		}
		action := ""
		if len(rest) == 1 {
			action = rest[0]
		} else if len(rest) > 1 {
			s.notFound(w, r, info)
			return
		}
		switch action {
		case "":
			info.route = "model_metadata"
			if allow(get) {
				s.withModel(w, seg[2], version, info, s.modelMetadata)
			}
		case "ready":
			info.route = "model_ready"
			if allow(get) {
				s.withModel(w, seg[2], version, info, func(w http.ResponseWriter, e *engine) {
					writeJSON(w, http.StatusOK, map[string]any{"name": e.m.name, "ready": true})
				})
			}
		case "infer":
			info.route = "infer"
			if allow(post) {
				s.infer(w, r, seg[2], version, info)
			}
		default:
			s.notFound(w, r, info)
		}
	case len(seg) == 5 && seg[0] == "v2" && seg[1] == "repository" && seg[2] == "models" && seg[4] == "load":
		info.route = "repository_load"
		if allow(post) {
			s.repositoryLoad(w, seg[3], info)
		}
	case len(seg) == 4 && seg[0] == "v1" && seg[1] == "models" && seg[3] == "score":
		info.route = "score"
		if allow(post) {
			s.score(w, r, seg[2], info)
		}
	default:
		s.notFound(w, r, info)
	}
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request, info *reqInfo) {
	writeError(w, info, http.StatusNotFound, "no endpoint %s", r.URL.Path)
}

// authorized checks the bearer token, when one is set.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request, info *reqInfo) bool {
	if s.opt.Token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.opt.Token)) == 1 {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="padim"`)
	writeError(w, info, http.StatusUnauthorized, "missing or wrong bearer token")
	return false
}

// withModel finds a model (and checks the version asked for) and holds its
// engine while fn runs.
func (s *Server) withModel(w http.ResponseWriter, name, version string, info *reqInfo, fn func(http.ResponseWriter, *engine)) {
	m, ok := s.models[name]
	info.model = name
	if !ok {
		writeError(w, info, http.StatusNotFound, "no model %q (serving %s)", name, strings.Join(s.names, ", "))
		return
	}
	e := m.acquire()
	if e == nil {
		writeError(w, info, http.StatusServiceUnavailable, "model %q is not loaded: the server is closing", name)
		return
	}
	defer e.release()
	info.version = e.version
	if version != "" && version != e.version {
		writeError(w, info, http.StatusNotFound, "model %q has no version %q (serving version %s)", name, version, e.version)
		return
	}
	fn(w, e)
}

type tensorMeta struct {
	Name     string `json:"name"`
	Datatype string `json:"datatype"`
	Shape    []int  `json:"shape"`
}

func (s *Server) modelMetadata(w http.ResponseWriter, e *engine) {
	outs := []tensorMeta{{"score", "FP32", []int{-1}}}
	if e.info.thresholds != nil {
		outs = append(outs, tensorMeta{"defect", "BOOL", []int{-1}}, tensorMeta{"threshold", "FP32", []int{1}})
	}
	// anomaly_map has the input images' size (or, with the output parameter
	// map_frame "network", the network input's; each image's size for tiled
	// models)
	outs = append(outs, tensorMeta{"anomaly_map", "FP32", []int{-1, -1, -1}})
	writeJSON(w, http.StatusOK, map[string]any{
		"name":     e.m.name,
		"versions": []string{e.version},
		"platform": "padim",
		"inputs":   []tensorMeta{{"image", "BYTES", []int{-1}}},
		"outputs":  outs,
	})
}

func (s *Server) repositoryLoad(w http.ResponseWriter, name string, info *reqInfo) {
	info.model = name
	if _, ok := s.models[name]; !ok {
		writeError(w, info, http.StatusNotFound, "no model %q (serving %s; this server loads only the models it was started with)", name, strings.Join(s.names, ", "))
		return
	}
	v, err := s.Reload(name)
	if err != nil {
		writeError(w, info, http.StatusBadRequest, "model %q not reloaded, the previous version keeps serving: %v", name, err)
		return
	}
	info.version = v
	writeJSON(w, http.StatusOK, map[string]string{"name": name, "version": v})
}

// readBody reads a request body up to the limit; false when it answered an error.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, info *reqInfo) ([]byte, bool) {
	if r.ContentLength > s.opt.MaxBody {
		writeError(w, info, http.StatusRequestEntityTooLarge, "body of %d bytes is over the %d-byte limit", r.ContentLength, s.opt.MaxBody)
		return nil, false
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opt.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, info, http.StatusRequestEntityTooLarge, "body is over the %d-byte limit", s.opt.MaxBody)
		} else {
			writeError(w, info, http.StatusBadRequest, "reading the body: %v", err)
		}
		return nil, false
	}
	return b, true
}

// run checks, queues and waits for a job; it answers errors itself and returns
// the finished job, or nil.
func (s *Server) run(ctx context.Context, w http.ResponseWriter, m *model, j *job, info *reqInfo) (*job, *engine) {
	for k, b := range j.images {
		if len(b) == 0 {
			writeError(w, info, http.StatusBadRequest, "%s is empty", j.names[k])
			return nil, nil
		}
		if _, err := imageio.ReadHeader(bytes.NewReader(b)); err != nil {
			writeError(w, info, http.StatusBadRequest, "%s: %v", j.names[k], err)
			return nil, nil
		}
	}
	j.ctx = ctx
	e, err := m.submit(j)
	switch {
	case errors.Is(err, errQueueFull):
		w.Header().Set("Retry-After", "1")
		writeError(w, info, http.StatusTooManyRequests, "model %q has %d images queued (the limit): retry later", m.name, s.opt.Queue)
		return nil, nil
	case errors.Is(err, errTooMany):
		writeError(w, info, http.StatusBadRequest, "%d images in one request; this server queues at most %d per model", len(j.images), s.opt.Queue)
		return nil, nil
	case err != nil:
		writeError(w, info, http.StatusServiceUnavailable, "%v", err)
		return nil, nil
	}
	info.version = e.version
	select {
	case <-j.done:
	case <-ctx.Done():
		e.release()
		writeError(w, info, http.StatusServiceUnavailable, "no answer within the %v timeout", s.opt.Timeout)
		return nil, nil
	}
	if j.err != nil {
		e.release()
		if ctx.Err() != nil {
			writeError(w, info, http.StatusServiceUnavailable, "no answer within the %v timeout", s.opt.Timeout)
		} else {
			writeError(w, info, http.StatusInternalServerError, "scoring failed: %v", j.err)
		}
		return nil, nil
	}
	for _, r := range j.results {
		if r.Err != nil {
			e.release()
			writeError(w, info, http.StatusBadRequest, "%v", r.Err)
			return nil, nil
		}
	}
	return j, e // the caller releases e after using its info
}

type boxJSON struct {
	X     int     `json:"x"`
	Y     int     `json:"y"`
	W     int     `json:"w"`
	H     int     `json:"h"`
	Score float32 `json:"score"`
}

type scoreJSON struct {
	Model     string        `json:"model"`
	Version   string        `json:"version"`
	Score     float32       `json:"score"`
	Defect    *bool         `json:"defect,omitempty"`
	Threshold *float32      `json:"threshold,omitempty"`
	Boxes     []boxJSON     `json:"boxes"`               // in the input image's pixels
	Frame     imageio.Frame `json:"frame"`               // how the map lies on the input image
	MapFrame  string        `json:"map_frame,omitempty"` // with a map: "image" (the input image's size) or "network"
	ElapsedMS float64       `json:"elapsed_ms"`
	MapPNG    string        `json:"map_png,omitempty"` // base64 PNG: the heatmap over the image
	MapNPY    string        `json:"map_npy,omitempty"` // base64 .npy: the float32 map, H×W
}

// score is POST /v1/models/NAME/score: the body is one encoded image.
func (s *Server) score(w http.ResponseWriter, r *http.Request, name string, info *reqInfo) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), s.opt.Timeout)
	defer cancel()
	info.model = name
	m, ok := s.models[name]
	if !ok {
		writeError(w, info, http.StatusNotFound, "no model %q (serving %s)", name, strings.Join(s.names, ", "))
		return
	}
	mapKind := r.URL.Query().Get("map")
	if mapKind != "" && mapKind != "png" && mapKind != "npy" {
		writeError(w, info, http.StatusBadRequest, "map=%q: want png or npy", mapKind)
		return
	}
	mapFrame := r.URL.Query().Get("map_frame")
	if mapFrame == "" {
		mapFrame = "image"
	}
	if mapFrame != "image" && mapFrame != "network" {
		writeError(w, info, http.StatusBadRequest, "map_frame=%q: want image (the input image's size, the default) or network", mapFrame)
		return
	}
	if s.queueFull(w, m, info) {
		return
	}
	body, ok := s.readBody(w, r, info)
	if !ok {
		return
	}
	info.images = 1
	j, e := s.run(ctx, w, m, &job{names: []string{"image"}, images: [][]byte{body}, wantMap: mapKind != "", netFrame: mapFrame == "network"}, info)
	if j == nil {
		return
	}
	defer e.release()
	res := j.results[0]
	out := scoreJSON{Model: name, Version: e.version, Score: res.Score, Boxes: []boxJSON{}, Frame: res.Frame}
	if mapKind != "" {
		out.MapFrame = mapFrame
	}
	if th := e.info.thresholds; th != nil {
		out.Defect, out.Threshold = &res.Defect, &th.Image
	}
	for _, b := range res.Boxes {
		out.Boxes = append(out.Boxes, boxJSON{b.X, b.Y, b.W, b.H, b.MaxScore})
	}
	switch mapKind {
	case "npy":
		b, err := npy.Encode(res.Map, res.H, res.W)
		if err != nil {
			writeError(w, info, http.StatusInternalServerError, "encoding the map: %v", err)
			return
		}
		out.MapNPY = base64.StdEncoding.EncodeToString(b)
	case "png":
		b, err := overlayPNG(e, body, res, mapFrame == "network")
		if err != nil {
			writeError(w, info, http.StatusInternalServerError, "drawing the map: %v", err)
			return
		}
		out.MapPNG = base64.StdEncoding.EncodeToString(b)
	}
	out.ElapsedMS = float64(time.Since(start).Microseconds()) / 1000
	writeJSON(w, http.StatusOK, out)
}

// overlayPNG draws the heatmap over the image, as padim score --maps png does:
// the whole image in the image frame, or the image as the network sees it
// (resized and cropped like the backbone input) in the network frame.
func overlayPNG(e *engine, body []byte, res imageResult, network bool) ([]byte, error) {
	view, err := imageio.DecodeReader(bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if network {
		if view, _, _, err = e.l.Model.Preprocess.View(view); err != nil {
			return nil, err
		}
	}
	if view.W != res.W || view.H != res.H {
		return nil, fmt.Errorf("image view %dx%d differs from the map %dx%d", view.W, view.H, res.W, res.H)
	}
	rg := e.info.heat.For(res.Map)
	heat := picture.Heatmap(res.Map, res.W, res.H, rg)
	var buf bytes.Buffer
	if err := png.Encode(&buf, picture.Overlay(picture.Photo(view), heat, res.Map, rg)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// queueFull answers 429 before the body is read when the model's queue is full.
func (s *Server) queueFull(w http.ResponseWriter, m *model, info *reqInfo) bool {
	if m.queued.Load() < int64(s.opt.Queue) {
		return false
	}
	w.Header().Set("Retry-After", "1")
	writeError(w, info, http.StatusTooManyRequests, "model %q has %d images queued (the limit): retry later", m.name, s.opt.Queue)
	return true
}

// The Open Inference Protocol's inference request and response (REST).
type inferRequest struct {
	ID         string         `json:"id,omitempty"`
	Parameters map[string]any `json:"parameters,omitempty"`
	Inputs     []struct {
		Name       string          `json:"name"`
		Shape      []int64         `json:"shape"`
		Datatype   string          `json:"datatype"`
		Parameters map[string]any  `json:"parameters,omitempty"`
		Data       json.RawMessage `json:"data"`
	} `json:"inputs"`
	Outputs []struct {
		Name       string         `json:"name"`
		Parameters map[string]any `json:"parameters,omitempty"`
	} `json:"outputs,omitempty"`
}

type outputTensor struct {
	Name     string `json:"name"`
	Shape    []int  `json:"shape"`
	Datatype string `json:"datatype"`
	Data     any    `json:"data"`
}

type inferResponse struct {
	ModelName    string         `json:"model_name"`
	ModelVersion string         `json:"model_version"`
	ID           string         `json:"id,omitempty"`
	Outputs      []outputTensor `json:"outputs"`
}

// infer is POST /v2/models/NAME[/versions/V]/infer.
func (s *Server) infer(w http.ResponseWriter, r *http.Request, name, version string, info *reqInfo) {
	ctx, cancel := context.WithTimeout(r.Context(), s.opt.Timeout)
	defer cancel()
	info.model = name
	m, ok := s.models[name]
	if !ok {
		writeError(w, info, http.StatusNotFound, "no model %q (serving %s)", name, strings.Join(s.names, ", "))
		return
	}
	if version != "" {
		if e := m.cur.Load(); e == nil || e.version != version {
			writeError(w, info, http.StatusNotFound, "model %q has no version %q", name, version)
			return
		}
	}
	if s.queueFull(w, m, info) {
		return
	}
	body, ok := s.readBody(w, r, info)
	if !ok {
		return
	}
	var req inferRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, info, http.StatusBadRequest, "the body is not an inference request: %v", err)
		return
	}
	body = nil
	if len(req.Inputs) != 1 || req.Inputs[0].Name != "image" {
		var names []string
		for _, in := range req.Inputs {
			names = append(names, strconv.Quote(in.Name))
		}
		writeError(w, info, http.StatusBadRequest, "want exactly one input, \"image\"; got [%s]", strings.Join(names, ", "))
		return
	}
	in := req.Inputs[0]
	if in.Datatype != "BYTES" {
		writeError(w, info, http.StatusBadRequest, "input \"image\" has datatype %q; want BYTES (one encoded image per element, base64 in JSON)", in.Datatype)
		return
	}
	var elems []string
	if err := flattenStrings(in.Data, &elems, 0); err != nil {
		writeError(w, info, http.StatusBadRequest, "input \"image\" data: %v", err)
		return
	}
	n := int64(1)
	for _, d := range in.Shape {
		if d < 0 || d > 1<<20 {
			n = -1
			break
		}
		n *= d
	}
	if len(in.Shape) == 0 || n != int64(len(elems)) || len(elems) == 0 {
		writeError(w, info, http.StatusBadRequest, "input \"image\" has shape %v but %d elements", in.Shape, len(elems))
		return
	}
	want := map[string]bool{"score": true, "defect": true, "threshold": true}
	netFrame := false
	if req.Outputs != nil {
		want = map[string]bool{}
		for _, o := range req.Outputs {
			switch o.Name {
			case "score", "defect", "threshold", "anomaly_map":
				want[o.Name] = true
				if f, ok := o.Parameters["map_frame"]; ok && o.Name == "anomaly_map" {
					switch f {
					case "image":
					case "network":
						netFrame = true
					default:
						writeError(w, info, http.StatusBadRequest, "anomaly_map's map_frame %v: want \"image\" (the input image's size, the default) or \"network\"", f)
						return
					}
				}
			default:
				writeError(w, info, http.StatusBadRequest, "no output %q (outputs: score, defect, threshold, anomaly_map)", o.Name)
				return
			}
		}
	}
	j := &job{wantMap: want["anomaly_map"], netFrame: netFrame}
	for k, el := range elems {
		b, err := base64.StdEncoding.DecodeString(el)
		if err != nil {
			if b, err = base64.RawStdEncoding.DecodeString(el); err != nil {
				writeError(w, info, http.StatusBadRequest, "image[%d] is not base64: %v", k, err)
				return
			}
		}
		j.images = append(j.images, b)
		j.names = append(j.names, fmt.Sprintf("image[%d]", k))
	}
	elems = nil
	info.images = len(j.images)
	j, e := s.run(ctx, w, m, j, info)
	if j == nil {
		return
	}
	defer e.release()
	th := e.info.thresholds
	if th == nil && req.Outputs != nil && (want["defect"] || want["threshold"]) {
		writeError(w, info, http.StatusBadRequest, "model %q has no thresholds (trained with --calibrate none): no defect or threshold output; ask for score only, or retrain with calibration", name)
		return
	}
	nimg := len(j.results)
	resp := inferResponse{ModelName: name, ModelVersion: e.version, ID: req.ID}
	if want["score"] {
		v := make([]float32, nimg)
		for i, r := range j.results {
			v[i] = r.Score
		}
		resp.Outputs = append(resp.Outputs, outputTensor{"score", []int{nimg}, "FP32", v})
	}
	if want["defect"] && th != nil {
		v := make([]bool, nimg)
		for i, r := range j.results {
			v[i] = r.Defect
		}
		resp.Outputs = append(resp.Outputs, outputTensor{"defect", []int{nimg}, "BOOL", v})
	}
	if want["threshold"] && th != nil {
		resp.Outputs = append(resp.Outputs, outputTensor{"threshold", []int{1}, "FP32", []float32{th.Image}})
	}
	if want["anomaly_map"] {
		W, H := j.results[0].W, j.results[0].H
		v := make([]float32, 0, nimg*W*H)
		for i, r := range j.results {
			if r.W != W || r.H != H {
				writeError(w, info, http.StatusBadRequest, "anomaly_map: image[%d]'s map is %dx%d, image[0]'s %dx%d; send images of one size, or one per request", i, r.W, r.H, W, H)
				return
			}
			v = append(v, r.Map...)
		}
		resp.Outputs = append(resp.Outputs, outputTensor{"anomaly_map", []int{nimg, H, W}, "FP32", v})
	}
	writeJSON(w, http.StatusOK, resp)
}

// flattenStrings appends the strings of a (possibly nested) JSON array.
func flattenStrings(raw json.RawMessage, out *[]string, depth int) error {
	if depth > 8 {
		return errors.New("nested too deep")
	}
	var arr []json.RawMessage
	if err := json.Unmarshal(raw, &arr); err != nil {
		return errors.New("want an array of base64 strings")
	}
	for _, el := range arr {
		el = bytes.TrimSpace(el)
		if len(el) > 0 && el[0] == '[' {
			if err := flattenStrings(el, out, depth+1); err != nil {
				return err
			}
			continue
		}
		var s string
		if err := json.Unmarshal(el, &s); err != nil {
			return errors.New("want an array of base64 strings")
		}
		*out = append(*out, s)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = json.Marshal(map[string]string{"error": "encoding the answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// writeError answers {"error": message}, the protocol's error object.
func writeError(w http.ResponseWriter, info *reqInfo, code int, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	info.err = msg
	writeJSON(w, code, map[string]string{"error": msg})
}

// Run serves on ln (over TLS when cfg is set) until ctx is cancelled, then
// stops accepting connections, answers the requests in flight (for at most the
// request timeout plus 5 s), stops the batchers and releases the models.
func (s *Server) Run(ctx context.Context, ln net.Listener, cfg *tls.Config) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       s.opt.Timeout,
		WriteTimeout:      s.opt.Timeout + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		TLSConfig:         cfg,
	}
	errc := make(chan error, 1)
	go func() {
		if cfg != nil {
			errc <- hs.ServeTLS(ln, "", "")
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		s.Close()
		return err
	case <-ctx.Done():
	}
	s.log.Info("draining", "timeout", (s.opt.Timeout + 5*time.Second).String())
	s.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), s.opt.Timeout+5*time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	<-errc
	s.Close()
	if err != nil {
		return fmt.Errorf("draining: %w", err)
	}
	s.log.Info("stopped")
	return nil
}
