package serve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/imageio"
)

// The outputs a model answers.
const (
	outScore     = "score"
	outDefect    = "defect"
	outThreshold = "threshold"
	outMap       = "anomaly_map"
)

// Request parameters (v2 and gRPC) and their v1 query names.
const (
	paramThreshold      = "threshold"       // the image threshold for this request
	paramPixelThreshold = "pixel_threshold" // the mask threshold for this request
	paramMapFrame       = "map_frame"       // anomaly_map output parameter: "image" or "network"
)

// inferRequest is one inference request, parsed, whatever its protocol (REST
// JSON, REST with binary tensors, gRPC): what parseInfer and the gRPC decoder
// produce and the core (Server.runInfer) takes.
type inferRequest struct {
	ID      string
	Images  [][]byte     // encoded images, in order
	Names   []string     // per image, for messages; nil: image[k]
	Outputs []outputSpec // asked for, in order; nil: score, and defect and threshold when the model has thresholds
	// Network: anomaly_map in the network input's frame, not the image's.
	Network bool
	// Threshold and PixelThreshold override the model's for this request.
	Threshold, PixelThreshold *float32
	// BinaryOutputs: answer every output in binary (REST binary extension,
	// binary_data_output), unless its own binary_data says otherwise.
	BinaryOutputs bool
}

// outputSpec is one output asked for.
type outputSpec struct {
	Name   string
	Binary *bool // per-output binary_data (REST binary extension); nil: the request's default
}

// wants reports whether the request asks for output name.
func (r *inferRequest) wants(name string) bool {
	for _, o := range r.Outputs {
		if o.Name == name {
			return true
		}
	}
	return false
}

// binary reports whether output o is answered in binary.
func (r *inferRequest) binary(o outputSpec) bool {
	if o.Binary != nil {
		return *o.Binary
	}
	return r.BinaryOutputs
}

// inferAnswer is a request's outcome, ready to encode: the engine that gave
// it is held until release.
type inferAnswer struct {
	e          *engine
	results    []imageResult
	thresholds *detector.Thresholds // in force for this request; nil: none
	source     string               // where they came from: "request", "server" (--threshold) or "model"
	outputs    []outputSpec         // the outputs to answer, in order
}

func (a *inferAnswer) release() { a.e.release() }

// checkThreshold refuses a threshold that is not a finite number.
func checkThreshold(name string, v float64) (*float32, error) {
	f := float32(v)
	if math.IsNaN(v) || math.IsInf(float64(f), 0) {
		return nil, errorf(http.StatusBadRequest, "parameter %s %v: want a finite number", name, v)
	}
	return &f, nil
}

// thresholdsFor resolves a request's thresholds against the model's: a
// request's threshold replaces the image threshold, its pixel_threshold the
// mask threshold; a model without thresholds takes the image threshold for
// masks too, as padim serve --threshold does.
func thresholdsFor(model *detector.Thresholds, modelSource string, image, pixel *float32) (*detector.Thresholds, string, error) {
	if image == nil && pixel == nil {
		return model, modelSource, nil
	}
	var th detector.Thresholds
	switch {
	case model != nil:
		th = *model
	case image == nil:
		return nil, "", errorf(http.StatusBadRequest, "parameter %s needs an image threshold, and this model has none (trained with --calibrate none): give %s too", paramPixelThreshold, paramThreshold)
	default:
		th = detector.Thresholds{Image: *image, Pixel: *image}
	}
	if image != nil {
		th.Image = *image
	}
	if pixel != nil {
		th.Pixel = *pixel
	}
	return &th, "request", nil
}

// mapPixels is the size of an image's anomaly map: the image's own, or the
// network input's (the image's own when the model tiles).
func mapPixels(pre imageio.Preprocess, h imageio.Header, network bool) (w, ht int) {
	if network && pre.Tile == 0 {
		s := pre.InputSize()
		return s, s
	}
	return h.W, h.H
}

// runInfer is the one core of every inference endpoint: it checks the
// images' headers and the request's memory (maps over MaxMapPixels and the
// budget, before any work), queues the images on the model's batcher, waits
// for their answers and decides them under the request's thresholds.
// mapCost is the bytes per map pixel the protocol's answer holds. The lease
// already holds the body; it is grown here and released by the caller.
func (s *Server) runInfer(ctx context.Context, m *model, version string, req *inferRequest, mapCost int64, l *lease) (*inferAnswer, error) {
	e := m.acquire()
	if e == nil {
		return nil, errorf(http.StatusServiceUnavailable, "model %q is not loaded: the server is closing", m.name)
	}
	a, err := s.runOn(ctx, e, version, req, mapCost, l)
	if err != nil {
		e.release()
		return nil, err
	}
	return a, nil
}

func (s *Server) runOn(ctx context.Context, e *engine, version string, req *inferRequest, mapCost int64, l *lease) (*inferAnswer, error) {
	m := e.m
	if version != "" && version != e.version {
		return nil, errorf(http.StatusNotFound, "model %q has no version %q (serving version %s)", m.name, version, e.version)
	}
	th, source, err := thresholdsFor(e.info.thresholds, e.info.source, req.Threshold, req.PixelThreshold)
	if err != nil {
		return nil, err
	}
	outs := req.Outputs
	if outs == nil {
		outs = []outputSpec{{Name: outScore}}
		if th != nil {
			outs = append(outs, outputSpec{Name: outDefect}, outputSpec{Name: outThreshold})
		}
	} else if th == nil && (req.wants(outDefect) || req.wants(outThreshold)) {
		return nil, errorf(http.StatusBadRequest, "model %q has no thresholds (trained with --calibrate none): no defect or threshold output; ask for score only, give a %s parameter, or retrain with calibration", m.name, paramThreshold)
	}
	n := len(req.Images)
	if n == 0 {
		return nil, errorf(http.StatusBadRequest, "no image in the request")
	}
	if int64(n) > int64(s.opt.Queue) {
		return nil, errorf(http.StatusBadRequest, "%d images in one request; this server queues at most %d per model", n, s.opt.Queue)
	}
	wantMap := req.wants(outMap)
	names := make([]string, n)
	var mapPx int64
	var w0, h0 int
	pre := e.l.Model.Preprocess
	for k, b := range req.Images {
		names[k] = fmt.Sprintf("image[%d]", k)
		if req.Names != nil {
			names[k] = req.Names[k]
		}
		if len(b) == 0 {
			return nil, errorf(http.StatusBadRequest, "%s is empty", names[k])
		}
		hd, err := imageio.ReadHeader(bytes.NewReader(b))
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%s: %v", names[k], err)
		}
		if !wantMap {
			continue
		}
		w, h := mapPixels(pre, hd, req.Network)
		if px := int64(w) * int64(h); px > s.opt.MaxMapPixels {
			hint := "ask for the map in the network's frame (map_frame network), or send a smaller image"
			if req.Network {
				hint = "send a smaller image"
			}
			return nil, &apiError{code: http.StatusBadRequest, reason: "map",
				msg: fmt.Sprintf("%s: its anomaly_map would be %dx%d = %d pixels, over the %d-pixel limit (--max-map-pixels): %s", names[k], w, h, px, s.opt.MaxMapPixels, hint)}
		}
		if k == 0 {
			w0, h0 = w, h
		} else if n > 1 && (w != w0 || h != h0) {
			return nil, errorf(http.StatusBadRequest, "anomaly_map: %s's map is %dx%d, image[0]'s %dx%d; send images of one size, or one per request", names[k], w, h, w0, h0)
		}
		mapPx += int64(w) * int64(h)
	}
	what := fmt.Sprintf("%d images", n)
	if wantMap {
		what += fmt.Sprintf(", maps of %d pixels at %d bytes each", mapPx, mapCost)
	}
	if err := l.grow(mapPx*mapCost+int64(n)*costPerImage, what); err != nil {
		return nil, err
	}
	j := &job{ctx: ctx, names: names, images: req.Images, wantMap: wantMap, netFrame: req.Network}
	if source == "request" {
		j.thresholds = th
	}
	if err := e.submit(j); err != nil {
		switch {
		case errors.Is(err, errQueueFull):
			return nil, &apiError{code: http.StatusTooManyRequests, retry: true, msg: fmt.Sprintf("model %q has %d images queued (the limit): retry later", m.name, s.opt.Queue)}
		default:
			return nil, errorf(http.StatusServiceUnavailable, "%v", err)
		}
	}
	timeout := func() error {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return &apiError{code: http.StatusServiceUnavailable, deadline: true, msg: fmt.Sprintf("no answer within the request's time (the server's --timeout is %v)", s.opt.Timeout)}
		}
		return &apiError{code: http.StatusServiceUnavailable, deadline: true, grpc: codes.Canceled, msg: "the request was cancelled"}
	}
	select {
	case <-j.done:
	case <-ctx.Done():
		return nil, timeout()
	}
	if j.err != nil {
		if ctx.Err() != nil {
			return nil, timeout()
		}
		return nil, errorf(http.StatusInternalServerError, "scoring failed: %v", j.err)
	}
	for _, r := range j.results {
		if r.Err != nil {
			return nil, errorf(http.StatusBadRequest, "%v", r.Err)
		}
	}
	return &inferAnswer{e: e, results: j.results, thresholds: th, source: source, outputs: outs}, nil
}
