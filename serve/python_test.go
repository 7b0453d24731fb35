package serve

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// python finds a Python 3 that has grpcio and grpc_tools (Debian's
// python3-grpcio and python3-grpc-tools install into /usr/bin/python3's).
func python(t *testing.T) string {
	t.Helper()
	var tried []string
	for _, p := range []string{os.Getenv("PADIM_PYTHON"), "/usr/bin/python3", "python3"} {
		if p == "" {
			continue
		}
		if out, err := exec.Command(p, "-c", "import grpc, grpc_tools.protoc").CombinedOutput(); err == nil {
			return p
		} else {
			tried = append(tried, fmt.Sprintf("%s: %v %s", p, err, out))
		}
	}
	t.Skipf("no Python with grpcio and grpc_tools (apt-get install python3-grpcio python3-grpc-tools): %v", tried)
	return ""
}

// A Python client with stubs compiled from the official proto by grpc_tools
// calls every RPC and gets the library's numbers.
func TestPythonGRPCClient(t *testing.T) {
	py := python(t)
	if _, err := exec.LookPath("protoc"); err != nil {
		t.Skip("no protoc (apt-get install protobuf-compiler)")
	}
	f := newFixture(t, 3)
	ts := startWith(t, []ModelSpec{{"wood", f.path}}, fakeLoader(&fakeConfig{}), testOptions(), true, nil)
	dir := t.TempDir()
	args := []string{"testdata/oip_client.py", "oip", dir, ts.grpcAddr, "wood"}
	for i, b := range f.imgs {
		p := filepath.Join(dir, fmt.Sprintf("%d.png", i))
		os.WriteFile(p, b, 0o644)
		args = append(args, p)
	}
	out, err := exec.Command(py, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("the Python client: %v\n%s", err, stderr)
	}
	var r struct {
		Notes       []string
		Live, Ready bool
		ModelReady  bool `json:"model_ready"`
		Server      struct{ Name string }
		Model       struct {
			Name, Platform  string
			Inputs, Outputs [][]string
		}
		Infer struct {
			ID, Version     string
			Score           []float32
			Defect          []int
			ThresholdSource string `json:"threshold_source"`
		}
		Raw struct {
			Score    []float32
			MapShape []int     `json:"map_shape"`
			MapHead  []float32 `json:"map_head"`
		}
		Error string
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("notes: %v", r.Notes)
	if !r.Live || !r.Ready || !r.ModelReady || r.Server.Name != "padim" || r.Model.Name != "wood" || len(r.Model.Outputs) != 4 || r.Model.Inputs[0][1] != "BYTES" {
		t.Fatalf("metadata: %s", out)
	}
	if r.Infer.ID != "py-1" || r.Infer.Version != "1" || len(r.Infer.Score) != len(f.imgs) || r.Infer.ThresholdSource != "model" {
		t.Fatalf("ModelInfer: %s", out)
	}
	for i := range f.imgs {
		if !relClose(r.Infer.Score[i], f.expect[i].Score) || (r.Infer.Defect[i] == 1) != f.expect[i].Defect {
			t.Errorf("image %d: %v %v, want %v %v", i, r.Infer.Score[i], r.Infer.Defect[i], f.expect[i].Score, f.expect[i].Defect)
		}
	}
	if !relClose(r.Raw.Score[0], f.expect[0].Score) || fmt.Sprint(r.Raw.MapShape) != fmt.Sprint([]int{1, f.expect[0].H, f.expect[0].W}) {
		t.Fatalf("raw_input_contents: %s", out)
	}
	for k, v := range r.Raw.MapHead {
		if !relClose(v, f.expect[0].Map[k]) {
			t.Fatalf("map pixel %d: %v, want %v", k, v, f.expect[0].Map[k])
		}
	}
	if r.Error != "NOT_FOUND" {
		t.Fatalf("an unknown model: %s", r.Error)
	}
}
