package serve

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/padim/padim/detector/fileio/npy"
	"github.com/padim/padim/detector/fileio/picture"
	"github.com/padim/padim/detector/imageio"
)

// reqInfo is what the request log line says beyond the HTTP basics.
type reqInfo struct {
	route   string
	model   string
	version string
	images  int
	err     string
}

type infoKey struct{}

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

// ServeHTTP routes a request (Server.routes), with a recovered panic as 500,
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
	if r.ProtoMajor == 1 && s.draining.Load() {
		rec.Header().Set("Connection", "close")
	}
	s.mux.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), infoKey{}, info)))
}

// handler is an endpoint: it answers, or returns the error to answer.
type handler func(w http.ResponseWriter, r *http.Request, info *reqInfo) error

// routes builds the router. Endpoints:
//
//	GET  /v2/health/live, /v2/health/ready       (no token needed)
//	GET  /v2, /metrics
//	GET  /v2/models/NAME[/versions/V], /v2/models/NAME[/versions/V]/ready, /v2/models/NAME/stats
//	POST /v2/models/NAME[/versions/V]/infer
//	POST /v2/repository/models/NAME/load
//	POST /v1/models/NAME/score
//
// Another method on one of these paths is answered 405 with Allow; any other
// path 404; both as JSON errors, after the token check.
func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	metrics := promhttp.HandlerFor(s.met.reg, promhttp.HandlerOpts{})
	public, private := false, true
	s.handle(mux, "GET /v2/health/live", "health_live", public, func(w http.ResponseWriter, _ *http.Request, _ *reqInfo) error {
		writeJSON(w, http.StatusOK, map[string]bool{"live": true})
		return nil
	})
	s.handle(mux, "GET /v2/health/ready", "health_ready", public, func(w http.ResponseWriter, _ *http.Request, _ *reqInfo) error {
		code := http.StatusOK
		if !s.Ready() {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]bool{"ready": code == http.StatusOK})
		return nil
	})
	s.handle(mux, "GET /metrics", "metrics", private, func(w http.ResponseWriter, r *http.Request, _ *reqInfo) error {
		metrics.ServeHTTP(w, r)
		return nil
	})
	s.handle(mux, "GET /v2", "server_metadata", private, func(w http.ResponseWriter, _ *http.Request, _ *reqInfo) error {
		writeJSON(w, http.StatusOK, s.serverMetadata())
		return nil
	})
	for _, p := range []string{"/v2/models/{name}", "/v2/models/{name}/versions/{version}"} {
		s.handle(mux, "GET "+p, "model_metadata", private, func(w http.ResponseWriter, r *http.Request, info *reqInfo) error {
			return s.withModel(w, r, info, func(e *engine) { writeJSON(w, http.StatusOK, e.metadata()) })
		})
		s.handle(mux, "GET "+p+"/ready", "model_ready", private, func(w http.ResponseWriter, r *http.Request, info *reqInfo) error {
			return s.withModel(w, r, info, func(e *engine) {
				writeJSON(w, http.StatusOK, map[string]any{"name": e.m.name, "ready": true})
			})
		})
		s.handle(mux, "POST "+p+"/infer", "infer", private, s.inferREST)
	}
	s.handle(mux, "GET /v2/models/{name}/stats", "model_stats", private, func(w http.ResponseWriter, r *http.Request, info *reqInfo) error {
		return s.withModel(w, r, info, func(e *engine) { writeJSON(w, http.StatusOK, e.stats()) })
	})
	s.handle(mux, "POST /v2/repository/models/{name}/load", "repository_load", private, s.repositoryLoad)
	s.handle(mux, "POST /v1/models/{name}/score", "score", private, s.score)
	mux.HandleFunc("/", s.endpoint("unknown", private, func(_ http.ResponseWriter, r *http.Request, _ *reqInfo) error {
		return errorf(http.StatusNotFound, "no endpoint %s", r.URL.Path)
	}))
	return mux
}

// handle registers an endpoint for "METHOD PATH", and a 405 for the other
// methods on PATH.
func (s *Server) handle(mux *http.ServeMux, pattern, route string, needsToken bool, h handler) {
	method, path, _ := strings.Cut(pattern, " ")
	mux.HandleFunc(pattern, s.endpoint(route, needsToken, h))
	allow := method
	if method == http.MethodGet {
		allow = "GET, HEAD"
	}
	if !s.patterns[path] {
		s.patterns[path] = true
		mux.HandleFunc(path, s.endpoint(route, needsToken, func(w http.ResponseWriter, r *http.Request, _ *reqInfo) error {
			w.Header().Set("Allow", allow)
			return errorf(http.StatusMethodNotAllowed, "%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, allow)
		}))
	}
}

// endpoint wraps a handler with its route name, the token check and the
// error answer.
func (s *Server) endpoint(route string, needsToken bool, h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		info, _ := r.Context().Value(infoKey{}).(*reqInfo)
		if info == nil {
			info = &reqInfo{}
		}
		info.route = route
		if needsToken && !s.authorized(r.Header.Get("Authorization")) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="padim"`)
			writeError(w, info, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		if err := h(w, r, info); err != nil {
			s.fail(w, info, err)
		}
	}
}

// fail answers an error: its status, a JSON {"error": …}, Retry-After on
// temporary refusals; memory refusals are counted.
func (s *Server) fail(w http.ResponseWriter, info *reqInfo, err error) {
	e := asAPI(err)
	s.countRefusal(e)
	if e.retry {
		w.Header().Set("Retry-After", "1")
	}
	writeError(w, info, e.code, "%s", e.msg)
}

func (s *Server) countRefusal(e *apiError) {
	if e.reason != "" {
		s.met.refusals.WithLabelValues(e.reason).Inc()
	}
}

// authorized checks an Authorization value against the token, when one is set.
func (s *Server) authorized(header string) bool {
	if s.opt.Token == "" {
		return true
	}
	got, ok := strings.CutPrefix(header, "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.opt.Token)) == 1
}

// model finds a served model.
func (s *Server) model(name string) (*model, error) {
	m, ok := s.models[name]
	if !ok {
		return nil, errorf(http.StatusNotFound, "no model %q (serving %s)", name, strings.Join(s.names, ", "))
	}
	return m, nil
}

// withModel finds the request's model (and checks the version asked for) and
// holds its engine while fn runs.
func (s *Server) withModel(_ http.ResponseWriter, r *http.Request, info *reqInfo, fn func(*engine)) error {
	name, version := r.PathValue("name"), r.PathValue("version")
	info.model = name
	e, err := s.engineOf(name, version)
	if err != nil {
		return err
	}
	defer e.release()
	info.version = e.version
	fn(e)
	return nil
}

// engineOf holds the engine of a model (and version, when one is given).
func (s *Server) engineOf(name, version string) (*engine, error) {
	m, err := s.model(name)
	if err != nil {
		return nil, err
	}
	e := m.acquire()
	if e == nil {
		return nil, errorf(http.StatusServiceUnavailable, "model %q is not loaded: the server is closing", name)
	}
	if version != "" && version != e.version {
		e.release()
		return nil, errorf(http.StatusNotFound, "model %q has no version %q (serving version %s)", name, version, e.version)
	}
	return e, nil
}

type tensorMeta struct {
	Name     string `json:"name"`
	Datatype string `json:"datatype"`
	Shape    []int  `json:"shape"`
}

type modelMetadata struct {
	Name     string       `json:"name"`
	Versions []string     `json:"versions"`
	Platform string       `json:"platform"`
	Inputs   []tensorMeta `json:"inputs"`
	Outputs  []tensorMeta `json:"outputs"`
}

// metadata describes the model's tensors: anomaly_map has the input images'
// size (or, with the output parameter map_frame "network", the network
// input's; each image's size for tiled models).
func (e *engine) metadata() modelMetadata {
	outs := []tensorMeta{{outScore, "FP32", []int{-1}}}
	if e.info.thresholds != nil {
		outs = append(outs, tensorMeta{outDefect, "BOOL", []int{-1}}, tensorMeta{outThreshold, "FP32", []int{1}})
	}
	outs = append(outs, tensorMeta{outMap, "FP32", []int{-1, -1, -1}})
	return modelMetadata{Name: e.m.name, Versions: []string{e.version}, Platform: "padim",
		Inputs: []tensorMeta{{"image", "BYTES", []int{-1}}}, Outputs: outs}
}

// extensions are the protocol extensions the server speaks.
var extensions = []string{"binary_tensor_data"}

func (s *Server) serverMetadata() map[string]any {
	return map[string]any{"name": "padim", "version": s.opt.Version, "extensions": extensions}
}

// repositoryLoad is POST /v2/repository/models/NAME/load. A refused load is
// answered without its reason (which names server paths and may quote the
// file); the log has it.
func (s *Server) repositoryLoad(w http.ResponseWriter, r *http.Request, info *reqInfo) error {
	name := r.PathValue("name")
	info.model = name
	if _, ok := s.models[name]; !ok {
		return errorf(http.StatusNotFound, "no model %q (serving %s; this server loads only the models it was started with)", name, strings.Join(s.names, ", "))
	}
	v, err := s.Reload(name)
	if err != nil {
		info.err = err.Error()
		return errorf(http.StatusBadRequest, "model %q not reloaded, the previous version keeps serving: its file could not be loaded (the server's log says why)", name)
	}
	info.version = v
	writeJSON(w, http.StatusOK, map[string]string{"name": name, "version": v})
	return nil
}

// readBody reads a request body into memory charged to the lease: perByte
// bytes of memory for each byte of the body (what parsing expands it to),
// taken before it is read, from Content-Length or, without one, --max-body.
func (s *Server) readBody(r *http.Request, w http.ResponseWriter, l *lease, cost func(n int64) int64) ([]byte, error) {
	if r.ContentLength > s.opt.MaxBody {
		return nil, errorf(http.StatusRequestEntityTooLarge, "body of %d bytes is over the %d-byte limit (--max-body)", r.ContentLength, s.opt.MaxBody)
	}
	n := r.ContentLength
	if n < 0 {
		n = s.opt.MaxBody
	}
	charged := cost(n)
	if err := l.grow(charged, fmt.Sprintf("a %d-byte body and what it expands to", n)); err != nil {
		return nil, err
	}
	body := http.MaxBytesReader(w, r.Body, s.opt.MaxBody)
	var b []byte
	var err error
	if r.ContentLength >= 0 {
		b = make([]byte, r.ContentLength)
		_, err = io.ReadFull(body, b)
	} else {
		b, err = io.ReadAll(body)
		l.shrink(charged - cost(int64(len(b))))
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "body is over the %d-byte limit (--max-body)", s.opt.MaxBody)
		}
		return nil, errorf(http.StatusBadRequest, "reading the body: %v", err)
	}
	return b, nil
}

// queueFull answers 429 before the body is read when the model's queue is full.
func (s *Server) queueFull(m *model) error {
	if m.queued.Load() < int64(s.opt.Queue) {
		return nil
	}
	return &apiError{code: http.StatusTooManyRequests, retry: true, msg: fmt.Sprintf("model %q has %d images queued (the limit): retry later", m.name, s.opt.Queue)}
}

// admit finds the model of an inference request and checks, before its body
// is read, the version asked for and the model's queue.
func (s *Server) admit(name, version string) (*model, error) {
	m, err := s.model(name)
	if err != nil {
		return nil, err
	}
	if version != "" {
		if e := m.cur.Load(); e == nil || e.version != version {
			return nil, errorf(http.StatusNotFound, "model %q has no version %q", name, version)
		}
	}
	return m, s.queueFull(m)
}

// inferREST is POST /v2/models/NAME[/versions/V]/infer: JSON, or Triton's
// binary tensor extension (Inference-Header-Content-Length).
func (s *Server) inferREST(w http.ResponseWriter, r *http.Request, info *reqInfo) error {
	name, version := r.PathValue("name"), r.PathValue("version")
	info.model = name
	ctx, cancel := context.WithTimeout(r.Context(), s.opt.Timeout)
	defer cancel()
	m, err := s.admit(name, version)
	if err != nil {
		return err
	}
	headerLen := int64(-1)
	if v := r.Header.Get(headerLength); v != "" {
		if headerLen, err = strconv.ParseInt(v, 10, 64); err != nil || headerLen < 0 {
			return errorf(http.StatusBadRequest, "%s %q: want a byte count", headerLength, v)
		}
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		return errorf(http.StatusUnsupportedMediaType, "Content-Encoding %q: this server takes uncompressed bodies", ce)
	}
	l := s.mem.lease()
	defer l.release()
	body, err := s.readBody(r, w, l, func(n int64) int64 {
		if headerLen < 0 {
			return n * costJSONBody
		}
		h := min(headerLen, n)
		return h*costJSONBody + (n-h)*costBinaryBody
	})
	if err != nil {
		return err
	}
	req, err := parseInfer(body, headerLen, parseLimits{maxImages: s.opt.Queue})
	if err != nil {
		return err
	}
	info.images = len(req.Images)
	a, err := s.runInfer(ctx, m, version, req, costMapPixel, l)
	if err != nil {
		return err
	}
	defer a.release()
	info.version = a.e.version
	return s.encodeInfer(w, name, req, a)
}

// score is POST /v1/models/NAME/score: the body is one encoded image;
// ?map=png|npy adds the map, ?map_frame=network in the network's frame,
// ?threshold= and ?pixel_threshold= override the model's thresholds.
func (s *Server) score(w http.ResponseWriter, r *http.Request, info *reqInfo) error {
	start := time.Now()
	name := r.PathValue("name")
	info.model = name
	ctx, cancel := context.WithTimeout(r.Context(), s.opt.Timeout)
	defer cancel()
	m, err := s.model(name)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	mapKind := q.Get("map")
	if mapKind != "" && mapKind != "png" && mapKind != "npy" {
		return errorf(http.StatusBadRequest, "map=%q: want png or npy", mapKind)
	}
	mapFrame := q.Get("map_frame")
	if mapFrame == "" {
		mapFrame = "image"
	}
	if mapFrame != "image" && mapFrame != "network" {
		return errorf(http.StatusBadRequest, "map_frame=%q: want image (the input image's size, the default) or network", mapFrame)
	}
	req := &inferRequest{Names: []string{"image"}, Outputs: []outputSpec{{Name: outScore}}, Network: mapFrame == "network"}
	for _, k := range []string{paramThreshold, paramPixelThreshold} {
		v := q.Get(k)
		if v == "" {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return errorf(http.StatusBadRequest, "%s=%q: want a number", k, v)
		}
		t, err := checkThreshold(k, f)
		if err != nil {
			return err
		}
		if k == paramThreshold {
			req.Threshold = t
		} else {
			req.PixelThreshold = t
		}
	}
	mapCost := int64(0)
	if mapKind != "" {
		req.Outputs = append(req.Outputs, outputSpec{Name: outMap})
		mapCost = costNPYPixel
		if mapKind == "png" {
			mapCost = costPNGPixel
		}
	}
	if err := s.queueFull(m); err != nil {
		return err
	}
	l := s.mem.lease()
	defer l.release()
	body, err := s.readBody(r, w, l, func(n int64) int64 { return n * costRawBody })
	if err != nil {
		return err
	}
	req.Images = [][]byte{body}
	info.images = 1
	a, err := s.runInfer(ctx, m, "", req, mapCost, l)
	if err != nil {
		return err
	}
	defer a.release()
	info.version = a.e.version
	return s.writeScore(w, name, body, req, a, mapKind, start)
}

type boxJSON struct {
	X     int     `json:"x"`
	Y     int     `json:"y"`
	W     int     `json:"w"`
	H     int     `json:"h"`
	Score float32 `json:"score"`
}

type scoreJSON struct {
	Model           string        `json:"model"`
	Version         string        `json:"version"`
	Score           float32       `json:"score"`
	Defect          *bool         `json:"defect,omitempty"`
	Threshold       *float32      `json:"threshold,omitempty"`
	PixelThreshold  *float32      `json:"pixel_threshold,omitempty"`
	ThresholdSource string        `json:"threshold_source,omitempty"` // "request", "server" (--threshold) or "model"
	Boxes           []boxJSON     `json:"boxes"`                      // in the input image's pixels
	Frame           imageio.Frame `json:"frame"`                      // how the map lies on the input image
	MapFrame        string        `json:"map_frame,omitempty"`        // with a map: "image" (the input image's size) or "network"
	ElapsedMS       float64       `json:"elapsed_ms"`
	// map_png (base64 PNG: the heatmap over the image) or map_npy (base64
	// .npy: the float32 map, H×W) follows, streamed.
}

// writeScore answers a v1 score, the map streamed as base64 after the rest.
func (s *Server) writeScore(w http.ResponseWriter, name string, body []byte, req *inferRequest, a *inferAnswer, mapKind string, start time.Time) error {
	res := a.results[0]
	if err := finite("score", []float32{res.Score}); err != nil {
		return err
	}
	out := scoreJSON{Model: name, Version: a.e.version, Score: res.Score, Boxes: []boxJSON{}, Frame: res.Frame}
	if mapKind != "" {
		out.MapFrame = "image"
		if req.Network {
			out.MapFrame = "network"
		}
	}
	if th := a.thresholds; th != nil {
		out.Defect, out.Threshold, out.PixelThreshold, out.ThresholdSource = &res.Defect, &th.Image, &th.Pixel, a.source
	}
	for _, b := range res.Boxes {
		out.Boxes = append(out.Boxes, boxJSON{b.X, b.Y, b.W, b.H, b.MaxScore})
	}
	var mapBytes []byte
	var err error
	switch mapKind {
	case "npy":
		if mapBytes, err = npy.Encode(res.Map, res.H, res.W); err != nil {
			return fmt.Errorf("encoding the map: %w", err)
		}
	case "png":
		if mapBytes, err = overlayPNG(a.e, body, res, req.Network); err != nil {
			return fmt.Errorf("drawing the map: %w", err)
		}
	}
	out.ElapsedMS = float64(time.Since(start).Microseconds()) / 1000
	head, err := json.Marshal(out)
	if err != nil {
		return err
	}
	if mapBytes == nil {
		writeRaw(w, http.StatusOK, "application/json", append(head, '\n'))
		return nil
	}
	tail := []byte(`"}` + "\n")
	key := []byte(`,"map_` + mapKind + `":"`)
	size := len(head) - 1 + len(key) + base64.StdEncoding.EncodedLen(len(mapBytes)) + len(tail)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(size))
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.Write(head[:len(head)-1])
	bw.Write(key)
	enc := base64.NewEncoder(base64.StdEncoding, bw)
	enc.Write(mapBytes)
	enc.Close()
	bw.Write(tail)
	return flushed(bw)
}

// flushed flushes an answer under way: an error now cannot be answered, so
// the connection is cut.
func flushed(bw *bufio.Writer) error {
	if err := bw.Flush(); err != nil {
		panic(http.ErrAbortHandler)
	}
	return nil
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

func writeRaw(w http.ResponseWriter, code int, contentType string, b []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	w.Write(b)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = json.Marshal(map[string]string{"error": "encoding the answer: " + err.Error()})
	}
	writeRaw(w, code, "application/json", append(b, '\n'))
}

// writeError answers {"error": message}, the protocol's error object.
func writeError(w http.ResponseWriter, info *reqInfo, code int, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	info.err = msg
	writeJSON(w, code, map[string]string{"error": msg})
}
