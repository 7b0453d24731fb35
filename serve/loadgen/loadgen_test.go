package loadgen

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

func TestBinaryRequestAndAnswer(t *testing.T) {
	body, n := BinaryRequest("id-1", [][]byte{{1, 2, 3}, {4}}, "score")
	var hdr struct {
		ID     string
		Inputs []struct {
			Shape      []int
			Parameters struct {
				BinaryDataSize int `json:"binary_data_size"`
			}
		}
	}
	if err := json.Unmarshal(body[:n], &hdr); err != nil || hdr.ID != "id-1" || hdr.Inputs[0].Shape[0] != 2 || hdr.Inputs[0].Parameters.BinaryDataSize != len(body)-n {
		t.Fatalf("header %s: %v", body[:n], err)
	}
	if want := []byte{3, 0, 0, 0, 1, 2, 3, 1, 0, 0, 0, 4}; string(body[n:]) != string(want) {
		t.Fatalf("binary part %v, want %v", body[n:], want)
	}
	// an answer with the score in binary after another binary output
	ans := []byte(`{"outputs":[{"name":"defect","datatype":"BOOL","shape":[1],"parameters":{"binary_data_size":1}},{"name":"score","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}]}`)
	hl := len(ans)
	ans = append(ans, 1)
	ans = binary.LittleEndian.AppendUint32(ans, math.Float32bits(2.5))
	if v, err := ScoreOfAnswer(strconv.Itoa(hl), ans); err != nil || v != 2.5 {
		t.Fatalf("binary answer: %v %v", v, err)
	}
	if v, err := ScoreOfAnswer("", []byte(`{"outputs":[{"name":"score","data":[1.25]}]}`)); err != nil || v != 1.25 {
		t.Fatalf("JSON answer: %v %v", v, err)
	}
	for _, bad := range []struct{ hl, body string }{{"999", "{}"}, {"", `{"outputs":[]}`}, {"2", `{}`}} {
		if _, err := ScoreOfAnswer(bad.hl, []byte(bad.body)); err == nil {
			t.Errorf("answer %q (header %q) accepted", bad.body, bad.hl)
		}
	}
}

func TestParsePIDStat(t *testing.T) {
	// a command name with spaces and a parenthesis
	line := "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0"
	if v := parsePIDStat([]byte(line)); v != 300 {
		t.Fatalf("utime+stime %v, want 300", v)
	}
	all, idle := parseProcStat([]byte("cpu  10 20 30 40 50 0 0 0 0 0\ncpu0 1 2 3 4\n"))
	if all != 150 || idle != 90 {
		t.Fatalf("/proc/stat: all %v idle %v", all, idle)
	}
}

// Run counts answers, mismatches against padim score's and errors.
func TestRunCountsAndChecks(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/models/m/ready", func(w http.ResponseWriter, _ *http.Request) {})
	mux.HandleFunc("POST /v1/models/m/score", func(w http.ResponseWriter, r *http.Request) {
		b := make([]byte, 1)
		r.Body.Read(b)
		if b[0] == 9 {
			http.Error(w, "no", http.StatusTooManyRequests)
			return
		}
		w.Write([]byte(`{"score":` + strconv.Itoa(int(b[0])) + `}`))
	})
	hs := httptest.NewServer(mux)
	defer hs.Close()
	cfg := Config{URL: hs.URL, Model: "m", API: "v1", Levels: []int{2}, Duration: 300 * time.Millisecond,
		Images: []Image{{Name: "a", Data: []byte{1}, Expect: 1, Has: true}, {Name: "b", Data: []byte{2}, Expect: 3, Has: true}, {Name: "c", Data: []byte{9}}}}
	res, err := Run(context.Background(), cfg)
	if err != nil || len(res) != 1 {
		t.Fatal(res, err)
	}
	r := res[0]
	if r.OK == 0 || r.Checked != r.OK || r.Mismatches == 0 || r.Mismatches == r.Checked || r.Errors["429"] == 0 {
		t.Fatalf("result %+v", r)
	}
	if _, err := json.Marshal(r); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), Config{URL: hs.URL, Model: "nope", API: "v1", Levels: []int{1}, Images: cfg.Images}); err == nil {
		t.Fatal("a model that is not ready")
	}
}
