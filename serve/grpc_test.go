package serve

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"math"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/padim/padim/serve/oip"
)

// grpcImages is a ModelInferRequest of images as bytes_contents.
func grpcImages(model string, imgs [][]byte, outputs ...string) *oip.ModelInferRequest {
	r := &oip.ModelInferRequest{ModelName: model, Id: "g-1", Inputs: []*oip.ModelInferRequest_InferInputTensor{{
		Name: "image", Datatype: "BYTES", Shape: []int64{int64(len(imgs))}, Contents: &oip.InferTensorContents{BytesContents: imgs}}}}
	for _, o := range outputs {
		r.Outputs = append(r.Outputs, &oip.ModelInferRequest_InferRequestedOutputTensor{Name: o})
	}
	return r
}

// rawOutput finds an output and its raw contents.
func rawOutput(t *testing.T, r *oip.ModelInferResponse, name string) (*oip.ModelInferResponse_InferOutputTensor, []byte) {
	t.Helper()
	if len(r.RawOutputContents) != len(r.Outputs) {
		t.Fatalf("%d raw_output_contents for %d outputs", len(r.RawOutputContents), len(r.Outputs))
	}
	for i, o := range r.Outputs {
		if o.Name == name {
			return o, r.RawOutputContents[i]
		}
	}
	t.Fatalf("no output %s in %v", name, r.Outputs)
	return nil, nil
}

func float32s(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// A client generated from the official proto calls every RPC and gets the
// library's numbers.
func TestGRPCMatchesLibrary(t *testing.T) {
	f := newFixture(t, 4)
	ts := startWith(t, []ModelSpec{{"wood", f.path}}, fakeLoader(&fakeConfig{}), testOptions(), true, nil)
	c := oip.NewGRPCInferenceServiceClient(ts.grpc)
	ctx := context.Background()

	if r, err := c.ServerLive(ctx, &oip.ServerLiveRequest{}); err != nil || !r.Live {
		t.Fatalf("ServerLive: %v %v", r, err)
	}
	if r, err := c.ServerReady(ctx, &oip.ServerReadyRequest{}); err != nil || !r.Ready {
		t.Fatalf("ServerReady: %v %v", r, err)
	}
	if r, err := c.ModelReady(ctx, &oip.ModelReadyRequest{Name: "wood"}); err != nil || !r.Ready {
		t.Fatalf("ModelReady: %v %v", r, err)
	}
	v9 := "9"
	if _, err := c.ModelReady(ctx, &oip.ModelReadyRequest{Name: "wood", Version: &v9}); status.Code(err) != codes.NotFound {
		t.Fatalf("ModelReady of version 9: %v", err)
	}
	if _, err := c.ModelReady(ctx, &oip.ModelReadyRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("ModelReady of an unknown model: %v", err)
	}
	if r, err := c.ServerMetadata(ctx, &oip.ServerMetadataRequest{}); err != nil || r.Name != "padim" || len(r.Extensions) == 0 {
		t.Fatalf("ServerMetadata: %v %v", r, err)
	}
	md, err := c.ModelMetadata(ctx, &oip.ModelMetadataRequest{Name: "wood"})
	if err != nil || md.Name != "wood" || md.Platform != "padim" || len(md.Inputs) != 1 || md.Inputs[0].Datatype != "BYTES" || len(md.Outputs) != 4 {
		t.Fatalf("ModelMetadata: %v %v", md, err)
	}

	// bytes_contents, all images in one call, default outputs
	r, err := c.ModelInfer(ctx, grpcImages("wood", f.imgs))
	if err != nil {
		t.Fatal(err)
	}
	if r.ModelName != "wood" || r.ModelVersion != "1" || r.Id != "g-1" || len(r.Outputs) != 3 {
		t.Fatalf("ModelInfer: %v", r)
	}
	o, raw := rawOutput(t, r, "score")
	scores := float32s(raw)
	if o.Datatype != "FP32" || len(o.Shape) != 1 || o.Shape[0] != int64(len(f.imgs)) || len(scores) != len(f.imgs) {
		t.Fatalf("score output %v, %d values", o, len(scores))
	}
	_, defects := rawOutput(t, r, "defect")
	_, th := rawOutput(t, r, "threshold")
	for i := range f.imgs {
		if !relClose(scores[i], f.expect[i].Score) || (defects[i] == 1) != f.expect[i].Defect {
			t.Errorf("image %d: %v %v, want %v %v", i, scores[i], defects[i], f.expect[i].Score, f.expect[i].Defect)
		}
	}
	if len(float32s(th)) != 1 || r.Parameters["threshold_source"].GetStringParam() != "model" || float32(r.Parameters["threshold"].GetDoubleParam()) != float32s(th)[0] {
		t.Fatalf("threshold: %v, parameters %v", float32s(th), r.Parameters)
	}

	// raw_input_contents (Triton's length-prefixed BYTES), and the map in both frames
	var packed []byte
	for _, b := range f.imgs[:2] {
		packed = binary.LittleEndian.AppendUint32(packed, uint32(len(b)))
		packed = append(packed, b...)
	}
	req := &oip.ModelInferRequest{ModelName: "wood", Inputs: []*oip.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{2}}},
		RawInputContents: [][]byte{packed}, Outputs: []*oip.ModelInferRequest_InferRequestedOutputTensor{{Name: "anomaly_map"}, {Name: "score"}}}
	if r, err = c.ModelInfer(ctx, req); err != nil {
		t.Fatal(err)
	}
	o, raw = rawOutput(t, r, "anomaly_map")
	W, H := f.expect[0].W, f.expect[0].H
	m := float32s(raw)
	if r.Outputs[0].Name != "anomaly_map" || len(o.Shape) != 3 || o.Shape[0] != 2 || o.Shape[1] != int64(H) || o.Shape[2] != int64(W) || len(m) != 2*W*H {
		t.Fatalf("anomaly_map %v, %d values", o, len(m))
	}
	for i := 0; i < 2; i++ {
		for k := 0; k < W*H; k++ {
			if !relClose(m[i*W*H+k], f.expect[i].Map[k]) {
				t.Fatalf("map %d pixel %d: %v, want %v", i, k, m[i*W*H+k], f.expect[i].Map[k])
			}
		}
	}
	req.Outputs[0].Parameters = map[string]*oip.InferParameter{"map_frame": {ParameterChoice: &oip.InferParameter_StringParam{StringParam: "network"}}}
	if r, err = c.ModelInfer(ctx, req); err != nil {
		t.Fatal(err)
	}
	if o, raw = rawOutput(t, r, "anomaly_map"); o.Shape[1] != int64(f.expect[0].NH) || !relClose(float32s(raw)[5], f.expect[0].NetMap[5]) {
		t.Fatalf("network-frame map %v", o)
	}

	// a request threshold overrides the model's for that request
	req = grpcImages("wood", f.imgs)
	req.Parameters = map[string]*oip.InferParameter{"threshold": {ParameterChoice: &oip.InferParameter_DoubleParam{DoubleParam: 0}}}
	if r, err = c.ModelInfer(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, d := rawOutput(t, r, "defect"); d[0] != 1 || d[1] != 1 || r.Parameters["threshold_source"].GetStringParam() != "request" {
		t.Fatalf("threshold 0: defects %v, parameters %v", d, r.Parameters)
	}

	// errors carry the codes mapped from REST's
	for _, c2 := range []struct {
		name string
		req  *oip.ModelInferRequest
		code codes.Code
		want string
	}{
		{"unknown model", grpcImages("nope", f.imgs[:1]), codes.NotFound, "no model"},
		{"wrong input", &oip.ModelInferRequest{ModelName: "wood", Inputs: []*oip.ModelInferRequest_InferInputTensor{{Name: "pixels", Datatype: "BYTES", Shape: []int64{1}}}}, codes.InvalidArgument, "exactly one input"},
		{"not an image", grpcImages("wood", [][]byte{[]byte("hello")}), codes.InvalidArgument, "header"},
		{"unknown output", grpcImages("wood", f.imgs[:1], "logits"), codes.InvalidArgument, "no output"},
		{"shape mismatch", func() *oip.ModelInferRequest {
			r := grpcImages("wood", f.imgs[:1])
			r.Inputs[0].Shape = []int64{3}
			return r
		}(), codes.InvalidArgument, "shape"},
		{"shape overflow", func() *oip.ModelInferRequest {
			r := grpcImages("wood", f.imgs[:1])
			r.Inputs[0].Shape = []int64{469411, 1006941, 647939, 3373}
			return r
		}(), codes.InvalidArgument, "overflows"},
		{"too many images", grpcImages("wood", make([][]byte, 65)), codes.InvalidArgument, "queues at most"},
		{"raw lie", &oip.ModelInferRequest{ModelName: "wood", Inputs: []*oip.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
			RawInputContents: [][]byte{{200, 0, 0, 0, 1, 2}}}, codes.InvalidArgument, "says 200 bytes"},
	} {
		_, err := c.ModelInfer(ctx, c2.req)
		if status.Code(err) != c2.code || !strings.Contains(status.Convert(err).Message(), c2.want) {
			t.Errorf("%s: %v, want %v with %q", c2.name, err, c2.code, c2.want)
		}
	}

	// the health service
	h := healthpb.NewHealthClient(ts.grpc)
	if r, err := h.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", r, err)
	}
	// metrics count the calls; the model's counters are REST's
	a := ts.do(http.MethodGet, "/metrics", nil)
	if !regexp.MustCompile(`padim_grpc_requests_total\{code="OK",method="ModelInfer"\} 4\n`).Match(a.body) ||
		!regexp.MustCompile(`padim_grpc_requests_total\{code="NotFound",method="ModelInfer"\} 1\n`).Match(a.body) {
		t.Errorf("gRPC metrics: %s", grep(a.body, "padim_grpc_requests_total"))
	}
	if !strings.Contains(string(a.body), `padim_images_scored_total{model="wood"} 12`) {
		t.Errorf("images scored: %s", grep(a.body, "padim_images_scored_total"))
	}
}

// The token guards every RPC but liveness, readiness and health; over TLS
// only clients that trust the certificate connect; a message over
// --max-body is refused; a client's deadline ends its call.
func TestGRPCTokenTLSLimits(t *testing.T) {
	f := newFixture(t, 1)
	cert, pool := selfSigned(t)
	cfg := &fakeConfig{entered: make(chan struct{}, 4)}
	o := testOptions()
	o.Token = "grpc-token"
	o.MaxBody = 200 << 10
	ts := startWith(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), o, true, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	conn := dialTest(t, ts.grpcAddr, pool)
	defer conn.Close()
	c := oip.NewGRPCInferenceServiceClient(conn)
	ctx := context.Background()
	auth := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer grpc-token")
	wrong := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer grpc-token-and-more")

	if _, err := c.ServerLive(ctx, &oip.ServerLiveRequest{}); err != nil {
		t.Fatalf("ServerLive without a token: %v", err)
	}
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health without a token: %v", err)
	}
	for _, cx := range []context.Context{ctx, wrong} {
		for name, call := range map[string]func(context.Context) error{
			"ModelReady": func(c2 context.Context) error {
				_, err := c.ModelReady(c2, &oip.ModelReadyRequest{Name: "wood"})
				return err
			},
			"ServerMetadata": func(c2 context.Context) error {
				_, err := c.ServerMetadata(c2, &oip.ServerMetadataRequest{})
				return err
			},
			"ModelMetadata": func(c2 context.Context) error {
				_, err := c.ModelMetadata(c2, &oip.ModelMetadataRequest{Name: "nope"})
				return err
			},
			"ModelInfer": func(c2 context.Context) error { _, err := c.ModelInfer(c2, grpcImages("wood", f.imgs)); return err },
		} {
			if err := call(cx); status.Code(err) != codes.Unauthenticated {
				t.Errorf("%s without the right token: %v", name, err)
			}
		}
	}
	r, err := c.ModelInfer(auth, grpcImages("wood", f.imgs))
	if err != nil {
		t.Fatal(err)
	}
	if _, raw := rawOutput(t, r, "score"); !relClose(float32s(raw)[0], f.expect[0].Score) {
		t.Fatalf("score over TLS: %v", float32s(raw))
	}
	// a plain-text client does not get through
	plain := dialTest(t, ts.grpcAddr, nil)
	defer plain.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := oip.NewGRPCInferenceServiceClient(plain).ServerLive(pctx, &oip.ServerLiveRequest{}); err == nil {
		t.Fatal("a plain-text client got an answer from the TLS port")
	}
	// over --max-body
	if _, err := c.ModelInfer(auth, grpcImages("wood", [][]byte{make([]byte, 300<<10)})); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a message over --max-body: %v", err)
	}
	// the client's deadline: the call ends with DeadlineExceeded while the
	// backbone is held, and the server goes on
	release := cfg.hold()
	dctx, dcancel := context.WithCancel(auth)
	errc := make(chan error, 1)
	go func() {
		_, err := c.ModelInfer(dctx, grpcImages("wood", f.imgs), grpc.WaitForReady(true))
		errc <- err
	}()
	<-cfg.entered // the call is in the backbone
	dl, dlcancel := context.WithDeadline(auth, time.Now())
	defer dlcancel()
	if _, err := c.ModelInfer(dl, grpcImages("wood", f.imgs)); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("a call past its deadline: %v", err)
	}
	dcancel()
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Errorf("a cancelled call: %v", err)
	}
	release()
	if _, err := c.ModelInfer(auth, grpcImages("wood", f.imgs)); err != nil {
		t.Fatalf("after the deadline: %v", err)
	}
}

// The gRPC server stops with the REST one: health turns NOT_SERVING, calls
// in flight are answered.
func TestGRPCDrain(t *testing.T) {
	f := newFixture(t, 2)
	cfg := &fakeConfig{entered: make(chan struct{}, 4)}
	ts := startWith(t, []ModelSpec{{"wood", f.path}}, fakeLoader(cfg), testOptions(), true, nil)
	c := oip.NewGRPCInferenceServiceClient(ts.grpc)
	release := cfg.hold()
	type result struct {
		r   *oip.ModelInferResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := c.ModelInfer(context.Background(), grpcImages("wood", f.imgs))
		done <- result{r, err}
	}()
	<-cfg.entered
	wctx, wcancel := context.WithCancel(context.Background())
	watch, err := healthpb.NewHealthClient(ts.grpc).Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before the drain: %v %v", st, err)
	}
	ts.cancel() // SIGTERM
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health at the drain: %v %v", st, err)
	}
	wcancel()
	release()
	res := <-done
	if res.err != nil {
		t.Fatalf("the call in flight at the drain: %v", res.err)
	}
	if _, raw := rawOutput(t, res.r, "score"); !relClose(float32s(raw)[1], f.expect[1].Score) {
		t.Fatalf("the call in flight: %v", float32s(raw))
	}
	if err := <-ts.done; err != nil {
		t.Fatal(err)
	}
	ts.done <- nil
	if cfg.closed.Load() != 1 {
		t.Fatalf("model released %d times", cfg.closed.Load())
	}
}

// protoCost sees what a message of tiny elements expands to, and accepts
// every valid message.
func TestProtoCost(t *testing.T) {
	desc := (&oip.ModelInferRequest{}).ProtoReflect().Descriptor()
	empty := make([][]byte, 1_000_000)
	b, _ := proto.Marshal(grpcImages("wood", empty))
	cost, err := protoCost(desc, b, 0, 1<<30)
	if err != nil || cost < 16*int64(len(empty)) {
		t.Fatalf("a million empty elements in %d bytes: cost %d %v", len(b), cost, err)
	}
	if _, err := protoCost(desc, b, 0, 64); err == nil || !strings.Contains(err.Error(), "bytes_contents has more than 64 elements") {
		t.Fatalf("a million empty elements, 64 allowed: %v", err)
	}
	if _, err := protoCost(desc, []byte{0x2a, 0x05, 0x0a}, 0, 64); err == nil {
		t.Fatal("a truncated message accepted")
	}
}
