package serve

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/padim/padim/serve/oip"
)

// grpcService is the Open Inference Protocol's GRPCInferenceService on the
// server's models: the same batcher, limits, budget and metrics as REST.
type grpcService struct {
	oip.UnimplementedGRPCInferenceServiceServer
	s *Server
}

// grpcServiceDesc is the generated service with ModelInfer's handler
// replaced: it checks the token and takes the request's memory before the
// message is read (grpc-go reads it when the handler decodes), and checks
// what the message expands to before it is unmarshalled.
func (g *grpcService) desc() *grpc.ServiceDesc {
	d := oip.GRPCInferenceService_ServiceDesc
	d.Methods = append([]grpc.MethodDesc(nil), d.Methods...)
	for i := range d.Methods {
		if d.Methods[i].MethodName == "ModelInfer" {
			d.Methods[i].Handler = g.modelInferHandler
		}
	}
	return &d
}

// openMethods need no token: liveness and readiness, as REST's health
// endpoints, and the gRPC health service.
func openMethod(full string) bool {
	return full == oip.GRPCInferenceService_ServerLive_FullMethodName || full == oip.GRPCInferenceService_ServerReady_FullMethodName ||
		strings.HasPrefix(full, "/grpc.health.v1.Health/")
}

// unary wraps every call: the token, a recovered panic as Internal, metrics
// and one log line, as REST's ServeHTTP.
func (g *grpcService) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	s := g.s
	start := time.Now()
	ri := &reqInfo{route: info.FullMethod}
	ctx = context.WithValue(ctx, infoKey{}, ri)
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in gRPC call", "method", info.FullMethod, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error while handling the request")
		}
		code := status.Code(err)
		d := time.Since(start)
		s.met.grpcCalls.WithLabelValues(method, code.String()).Inc()
		s.met.grpcTime.WithLabelValues(method).Observe(d.Seconds())
		remote := ""
		if p, ok := peer.FromContext(ctx); ok {
			remote = p.Addr.String()
		}
		attrs := []slog.Attr{slog.String("method", "gRPC"), slog.String("path", info.FullMethod), slog.String("code", code.String()),
			slog.Float64("ms", float64(d.Microseconds())/1000), slog.String("remote", remote)}
		if ri.model != "" {
			attrs = append(attrs, slog.String("model", ri.model), slog.String("version", ri.version))
		}
		if ri.images > 0 {
			attrs = append(attrs, slog.Int("images", ri.images))
		}
		if err != nil {
			attrs = append(attrs, slog.String("err", status.Convert(err).Message()))
		}
		level := slog.LevelInfo
		if code == codes.Internal || code == codes.Unknown {
			level = slog.LevelError
		}
		s.log.LogAttrs(context.Background(), level, "request", attrs...)
	}()
	if !openMethod(info.FullMethod) && !g.authorized(ctx) {
		return nil, status.Error(codes.Unauthenticated, "missing or wrong bearer token (metadata authorization: Bearer TOKEN)")
	}
	resp, err = h(ctx, req)
	if err != nil {
		if _, ok := status.FromError(err); !ok {
			err = grpcError(err)
		}
	}
	return resp, err
}

func (g *grpcService) authorized(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("authorization")
	if len(v) > 1 {
		return false
	}
	h := ""
	if len(v) == 1 {
		h = v[0]
	}
	return g.s.authorized(h)
}

func infoOfCtx(ctx context.Context) *reqInfo {
	if ri, ok := ctx.Value(infoKey{}).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{}
}

// ServerLive answers true while the process runs.
func (g *grpcService) ServerLive(context.Context, *oip.ServerLiveRequest) (*oip.ServerLiveResponse, error) {
	return &oip.ServerLiveResponse{Live: true}, nil
}

// ServerReady answers whether every model is loaded and the server is not draining.
func (g *grpcService) ServerReady(context.Context, *oip.ServerReadyRequest) (*oip.ServerReadyResponse, error) {
	return &oip.ServerReadyResponse{Ready: g.s.Ready()}, nil
}

// ModelReady answers whether the model (and version) is loaded.
func (g *grpcService) ModelReady(ctx context.Context, r *oip.ModelReadyRequest) (*oip.ModelReadyResponse, error) {
	ri := infoOfCtx(ctx)
	ri.model = r.GetName()
	e, err := g.s.engineOf(r.GetName(), r.GetVersion())
	if err != nil {
		return nil, grpcError(err)
	}
	ri.version = e.version
	e.release()
	return &oip.ModelReadyResponse{Ready: true}, nil
}

// ServerMetadata names the server, its version and extensions.
func (g *grpcService) ServerMetadata(context.Context, *oip.ServerMetadataRequest) (*oip.ServerMetadataResponse, error) {
	return &oip.ServerMetadataResponse{Name: "padim", Version: g.s.opt.Version, Extensions: extensions}, nil
}

// ModelMetadata describes a model's tensors, as REST's GET /v2/models/NAME.
func (g *grpcService) ModelMetadata(ctx context.Context, r *oip.ModelMetadataRequest) (*oip.ModelMetadataResponse, error) {
	ri := infoOfCtx(ctx)
	ri.model = r.GetName()
	e, err := g.s.engineOf(r.GetName(), r.GetVersion())
	if err != nil {
		return nil, grpcError(err)
	}
	defer e.release()
	ri.version = e.version
	md := e.metadata()
	conv := func(ts []tensorMeta) []*oip.ModelMetadataResponse_TensorMetadata {
		var out []*oip.ModelMetadataResponse_TensorMetadata
		for _, t := range ts {
			shape := make([]int64, len(t.Shape))
			for i, d := range t.Shape {
				shape[i] = int64(d)
			}
			out = append(out, &oip.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: t.Datatype, Shape: shape})
		}
		return out
	}
	return &oip.ModelMetadataResponse{Name: md.Name, Versions: md.Versions, Platform: md.Platform, Inputs: conv(md.Inputs), Outputs: conv(md.Outputs)}, nil
}

// rawMessage is a message kept as received (grpcCodec).
type rawMessage struct{ b []byte }

// grpcCodec is gRPC's proto codec, except that it hands a *rawMessage its
// bytes: ModelInfer checks what they expand to before unmarshalling them.
type grpcCodec struct{ proto encoding.CodecV2 }

func newGRPCCodec() grpcCodec { return grpcCodec{proto: encoding.GetCodecV2("proto")} }

// Name is the content subtype: proto.
func (c grpcCodec) Name() string { return "proto" }

// Marshal is the proto codec's.
func (c grpcCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

// Unmarshal copies the bytes for a *rawMessage, or unmarshals a message.
func (c grpcCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawMessage); ok {
		r.b = data.Materialize()
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (g *grpcService) modelInferHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	h := func(ctx context.Context, _ any) (any, error) { return g.modelInfer(ctx, dec) }
	if interceptor == nil {
		return h(ctx, nil)
	}
	return interceptor(ctx, nil, &grpc.UnaryServerInfo{Server: srv, FullMethod: oip.GRPCInferenceService_ModelInfer_FullMethodName}, h)
}

// modelInfer is ModelInfer: the message's memory is taken (at most
// --max-body, as received) before it is read, then what it expands to
// (protoCost) before it is unmarshalled; then the core, as REST.
func (g *grpcService) modelInfer(ctx context.Context, dec func(any) error) (*oip.ModelInferResponse, error) {
	s := g.s
	ri := infoOfCtx(ctx)
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	l := s.mem.lease()
	defer l.release()
	first := min(s.opt.MaxBody, s.mem.perRequest)
	if err := l.grow(first, fmt.Sprintf("a message of up to %d bytes (--max-body)", s.opt.MaxBody)); err != nil {
		s.countRefusal(asAPI(err))
		return nil, grpcError(err)
	}
	var raw rawMessage
	if err := dec(&raw); err != nil {
		return nil, err
	}
	cost, err := protoCost((&oip.ModelInferRequest{}).ProtoReflect().Descriptor(), raw.b, 0, max(s.opt.Queue, maxParameters))
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "the message is refused before decoding: %v (this server queues at most %d images per model)", err, s.opt.Queue)
	}
	// the message as received and decoded, in place of the first reservation
	if want := int64(len(raw.b)) + cost; want > first {
		if err := l.grow(want-first, fmt.Sprintf("a %d-byte message, %d bytes decoded", len(raw.b), cost)); err != nil {
			s.countRefusal(asAPI(err))
			return nil, grpcError(err)
		}
	} else {
		l.shrink(first - want)
	}
	var pr oip.ModelInferRequest
	if err := proto.Unmarshal(raw.b, &pr); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "the message is not a ModelInferRequest: %v", err)
	}
	raw.b = nil
	ri.model = pr.GetModelName()
	m, err := s.admit(pr.GetModelName(), pr.GetModelVersion())
	if err != nil {
		return nil, g.fail(err)
	}
	req, err := fromProto(&pr, parseLimits{maxImages: s.opt.Queue})
	if err != nil {
		return nil, g.fail(err)
	}
	ri.images = len(req.Images)
	a, err := s.runInfer(ctx, m, pr.GetModelVersion(), req, costProtoMapPixel, l)
	if err != nil {
		return nil, g.fail(err)
	}
	defer a.release()
	ri.version = a.e.version
	return toProto(pr.GetModelName(), req, a)
}

func (g *grpcService) fail(err error) error {
	e := asAPI(err)
	g.s.countRefusal(e)
	return status.Error(grpcCode(e), e.msg)
}

// protoCost estimates the bytes a message's wire form b takes once
// unmarshalled into Go (generously: structs, slice headers and their growth,
// map entries, copied bytes), without unmarshalling it. A message of many
// tiny elements (ten million empty bytes_contents in 30 MB) costs far more
// than its size; this is how ModelInfer knows before the work.
//
// No repeated field may hold more than maxRepeated elements in one message
// (a request has at most --queue images, a handful of inputs, outputs and
// parameters).
func protoCost(md protoreflect.MessageDescriptor, b []byte, depth, maxRepeated int) (int64, error) {
	if depth > 32 {
		return 0, errors.New("nested too deep")
	}
	const structSize, perElement, perMapEntry = 160, 16, 96
	cost := int64(structSize)
	counts := map[protowire.Number]int{}
	count := func(fd protoreflect.FieldDescriptor, n int) error {
		counts[fd.Number()] += n
		if counts[fd.Number()] > maxRepeated {
			return fmt.Errorf("field %s has more than %d elements", fd.FullName(), maxRepeated)
		}
		return nil
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, protowire.ParseError(m)
		}
		val := b[:m]
		b = b[m:]
		fd := md.Fields().ByNumber(num)
		if fd != nil && (fd.IsList() || fd.IsMap()) && typ != protowire.BytesType {
			if err := count(fd, 1); err != nil {
				return 0, err
			}
		}
		if fd == nil || typ != protowire.BytesType {
			cost += int64(m) + perElement // unknown fields are kept as bytes; a scalar costs its slot
			continue
		}
		v, _ := protowire.ConsumeBytes(val)
		switch {
		case fd.IsMap():
			if err := count(fd, 1); err != nil {
				return 0, err
			}
			c, err := protoCost(fd.Message(), v, depth+1, maxRepeated)
			if err != nil {
				return 0, err
			}
			cost += perMapEntry + c
		case fd.Kind() == protoreflect.MessageKind:
			if fd.IsList() {
				if err := count(fd, 1); err != nil {
					return 0, err
				}
			}
			c, err := protoCost(fd.Message(), v, depth+1, maxRepeated)
			if err != nil {
				return 0, err
			}
			cost += perElement + c
		case fd.Kind() == protoreflect.StringKind || fd.Kind() == protoreflect.BytesKind:
			if fd.IsList() {
				if err := count(fd, 1); err != nil {
					return 0, err
				}
			}
			cost += int64(len(v)) + 3*perElement // the slice header, and its share of the slice's growth
		case fd.IsList(): // packed scalars
			var elems int64
			switch fd.Kind() {
			case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
				elems = int64(len(v)) / 4
			case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
				elems = int64(len(v)) / 8
			default:
				for _, c := range v {
					if c < 0x80 {
						elems++
					}
				}
			}
			if err := count(fd, int(min(elems, 1<<30))); err != nil {
				return 0, err
			}
			cost += elems * perElement
		default:
			cost += int64(m) + perElement
		}
	}
	return cost, nil
}

// paramFloat reads a numeric parameter: double, int64, uint64, or a string
// holding a number.
func paramFloat(name string, p *oip.InferParameter) (float64, error) {
	switch v := p.GetParameterChoice().(type) {
	case *oip.InferParameter_DoubleParam:
		return v.DoubleParam, nil
	case *oip.InferParameter_Int64Param:
		return float64(v.Int64Param), nil
	case *oip.InferParameter_Uint64Param:
		return float64(v.Uint64Param), nil
	case *oip.InferParameter_StringParam:
		f, err := strconv.ParseFloat(v.StringParam, 64)
		if err == nil {
			return f, nil
		}
	}
	return 0, errorf(http.StatusBadRequest, "parameter %s %v: want a number", name, p)
}

// fromProto reads a ModelInferRequest: one BYTES input "image", in
// bytes_contents or raw_input_contents (Triton's length-prefixed elements).
// It is pure, as parseInfer.
func fromProto(pr *oip.ModelInferRequest, lim parseLimits) (*inferRequest, error) {
	req := &inferRequest{ID: pr.GetId()}
	for k, p := range pr.GetParameters() {
		if k != paramThreshold && k != paramPixelThreshold {
			continue
		}
		f, err := paramFloat(k, p)
		if err != nil {
			return nil, err
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
	}
	ins := pr.GetInputs()
	if len(ins) != 1 || ins[0].GetName() != "image" {
		var names []string
		for _, in := range ins {
			names = append(names, strconv.Quote(in.GetName()))
		}
		return nil, errorf(http.StatusBadRequest, "want exactly one input, \"image\"; got [%s]", strings.Join(names, ", "))
	}
	in := ins[0]
	if in.GetDatatype() != "BYTES" {
		return nil, errorf(http.StatusBadRequest, "input \"image\" has datatype %q; want BYTES (one encoded image per element)", in.GetDatatype())
	}
	if len(in.GetShape()) == 0 || len(in.GetShape()) > maxShapeDims {
		return nil, errorf(http.StatusBadRequest, "input \"image\" has shape %v; want [n] for n images", in.GetShape())
	}
	n, err := shapeElements(in.GetShape(), lim.maxImages)
	if err != nil {
		return nil, err
	}
	c := in.GetContents()
	if c != nil && (len(c.BoolContents) > 0 || len(c.IntContents) > 0 || len(c.Int64Contents) > 0 || len(c.UintContents) > 0 ||
		len(c.Uint64Contents) > 0 || len(c.Fp32Contents) > 0 || len(c.Fp64Contents) > 0) {
		return nil, errorf(http.StatusBadRequest, "input \"image\" is BYTES but has numeric contents")
	}
	raw := pr.GetRawInputContents()
	switch {
	case len(raw) > 0 && len(c.GetBytesContents()) > 0:
		return nil, errorf(http.StatusBadRequest, "input \"image\" has both contents and raw_input_contents; send one")
	case len(raw) > 0:
		if len(raw) != 1 {
			return nil, errorf(http.StatusBadRequest, "%d raw_input_contents for 1 input", len(raw))
		}
		imgs, err := splitBytes(raw[0], n)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "input \"image\" raw_input_contents: %v", err)
		}
		req.Images = imgs
	case int64(len(c.GetBytesContents())) == n:
		req.Images = c.GetBytesContents()
	default:
		return nil, errorf(http.StatusBadRequest, "input \"image\" has shape %v but %d elements in bytes_contents (and no raw_input_contents)", in.GetShape(), len(c.GetBytesContents()))
	}
	if pr.Outputs != nil {
		if len(pr.Outputs) > maxOutputs {
			return nil, errorf(http.StatusBadRequest, "%d outputs asked for; there are 4", len(pr.Outputs))
		}
		req.Outputs = []outputSpec{}
		for _, o := range pr.Outputs {
			switch o.GetName() {
			case outScore, outDefect, outThreshold, outMap:
			default:
				return nil, errorf(http.StatusBadRequest, "no output %q (outputs: score, defect, threshold, anomaly_map)", o.GetName())
			}
			if req.wants(o.GetName()) {
				return nil, errorf(http.StatusBadRequest, "output %q is asked for twice", o.GetName())
			}
			if p, ok := o.GetParameters()[paramMapFrame]; ok && o.GetName() == outMap {
				switch p.GetStringParam() {
				case "image":
				case "network":
					req.Network = true
				default:
					return nil, errorf(http.StatusBadRequest, "anomaly_map's map_frame %v: want \"image\" (the input image's size, the default) or \"network\"", p)
				}
			}
			req.Outputs = append(req.Outputs, outputSpec{Name: o.GetName()})
		}
	}
	return req, nil
}

// toProto encodes an answer: every output in raw_output_contents (FP32 and
// BOOL little-endian, as Triton's clients read them).
func toProto(name string, req *inferRequest, a *inferAnswer) (*oip.ModelInferResponse, error) {
	outs, err := a.tensors(req)
	if err != nil {
		return nil, err
	}
	resp := &oip.ModelInferResponse{ModelName: name, ModelVersion: a.e.version, Id: req.ID}
	if th := a.thresholds; th != nil {
		resp.Parameters = map[string]*oip.InferParameter{
			paramThreshold:      {ParameterChoice: &oip.InferParameter_DoubleParam{DoubleParam: float64(th.Image)}},
			paramPixelThreshold: {ParameterChoice: &oip.InferParameter_DoubleParam{DoubleParam: float64(th.Pixel)}},
			"threshold_source":  {ParameterChoice: &oip.InferParameter_StringParam{StringParam: a.source}},
		}
	}
	for _, t := range outs {
		resp.Outputs = append(resp.Outputs, &oip.ModelInferResponse_InferOutputTensor{Name: t.name, Datatype: t.datatype, Shape: t.shape})
		b := make([]byte, 0, t.binarySize())
		if t.datatype == "BOOL" {
			for _, v := range t.bools {
				if v {
					b = append(b, 1)
				} else {
					b = append(b, 0)
				}
			}
		} else {
			for _, c := range t.f32 {
				for _, v := range c {
					b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
				}
			}
		}
		resp.RawOutputContents = append(resp.RawOutputContents, b)
	}
	return resp, nil
}
