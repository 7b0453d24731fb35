package serve

import (
	"fmt"
	"net/http"
	"sync/atomic"
)

// The memory a request holds outside the pipeline, in bytes, per unit. The
// pipeline bounds its own decoded images, backbone inputs and maps
// (detector.PipelineOptions.Memory per pipeline call); what a request holds
// besides is its body and what the body expands to, and its answer.
const (
	// costJSONBody: a JSON body is held, tokenised (the decoder buffers a whole
	// string) and its base64 strings decoded into images: 4 bytes per byte.
	costJSONBody = 4
	// costBinaryBody: a binary-extension body is held once; its tensors are
	// slices of it. The JSON header in front is charged as JSON.
	costBinaryBody = 1
	// costRawBody: a v1 body (one encoded image) is held once.
	costRawBody = 1
	// costProtoBody: a gRPC message is held as received and as decoded.
	costProtoBody = 2

	// costMapPixel: a map kept for the answer, float32.
	costMapPixel = 4
	// costProtoMapPixel: a map answered over gRPC is copied into
	// raw_output_contents and marshalled.
	costProtoMapPixel = costMapPixel + 8
	// costNPYPixel: ?map=npy encodes the map as .npy (streamed as base64).
	costNPYPixel = costMapPixel + 4
	// costPNGPixel: ?map=png decodes the image again (RGBA and float32
	// planes), draws a heatmap and an overlay (RGBA each) and encodes a PNG.
	costPNGPixel = costMapPixel + 16 + 4 + 4 + 4
	// costPerImage: the bookkeeping of one image (result, boxes, names).
	costPerImage = 4 << 10
)

// budget is the bytes all requests in flight may hold together (besides the
// pipelines' own bounded memory). Requests take their share before any work
// and give it back when answered.
type budget struct {
	limit      int64 // all requests together
	perRequest int64 // one request
	used       atomic.Int64
}

func newBudget(limit, perRequest int64) *budget {
	return &budget{limit: limit, perRequest: min(perRequest, limit)}
}

// take reserves n bytes; false when the server's budget would be exceeded.
func (b *budget) take(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *budget) give(n int64) { b.used.Add(-n) }

// lease is one request's share of the budget.
type lease struct {
	b    *budget
	held int64
}

func (b *budget) lease() *lease { return &lease{b: b} }

// grow adds n bytes for what (said in the refusal). A request over the
// per-request budget is answered 413 (it can never fit); one that does not fit
// beside the requests in flight, 429 with Retry-After.
func (l *lease) grow(n int64, what string) error {
	if n <= 0 {
		return nil
	}
	if l.held+n > l.b.perRequest || l.held+n < 0 {
		return &apiError{code: http.StatusRequestEntityTooLarge, reason: "request",
			msg: fmt.Sprintf("this request needs %d bytes of memory (%s), over the %d-byte per-request budget (--max-request-memory); send fewer or smaller images, or ask for smaller maps", l.held+n, what, l.b.perRequest)}
	}
	if !l.b.take(n) {
		return &apiError{code: http.StatusTooManyRequests, retry: true, reason: "server",
			msg: fmt.Sprintf("this request needs %d bytes of memory (%s); requests in flight hold %d of the server's %d-byte budget: retry later", l.held+n, what, l.b.used.Load(), l.b.limit)}
	}
	l.held += n
	return nil
}

// shrink gives back n bytes that are no longer held.
func (l *lease) shrink(n int64) {
	n = min(n, l.held)
	if n > 0 {
		l.held -= n
		l.b.give(n)
	}
}

// release gives back everything; the lease may be used again.
func (l *lease) release() { l.shrink(l.held) }
