package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func sample(t *testing.T) (string, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.safetensors")
	err := Write(p, map[string]string{"k": "v"}, []Tensor{
		F32("a", []float32{1, 2, 3, 4, 5, 6}, 2, 3),
		I64("c", []int{7, 9}, 2),
		F64("z", []float64{0.5}, 1),
	})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	return p, b
}

func TestRoundTrip(t *testing.T) {
	p, _ := sample(t)
	f, err := Read(p, true)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := f.Tensor("a").Float32s()
	c, _ := f.Tensor("c").Ints()
	z, _ := f.Tensor("z").Float64s()
	if !slices.Equal(a, []float32{1, 2, 3, 4, 5, 6}) || !slices.Equal(c, []int{7, 9}) || z[0] != 0.5 || f.Metadata["k"] != "v" {
		t.Fatalf("%v %v %v %v", a, c, z, f.Metadata)
	}
	if !slices.Equal(f.Tensor("a").Shape, []int{2, 3}) {
		t.Fatal(f.Tensor("a").Shape)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

func TestTruncatedAndFlippedRejected(t *testing.T) {
	_, b := sample(t)
	for _, n := range []int{0, 7, 8, 20, len(b) - 1} {
		if _, err := Parse(bytes.NewReader(b[:n]), int64(n), true); !errors.Is(err, ErrFormat) {
			t.Errorf("truncated to %d: %v", n, err)
		}
	}
	for _, i := range []int{len(b) - 3, len(b) - 30} {
		c := slices.Clone(b)
		c[i] ^= 0x10
		if _, err := Parse(bytes.NewReader(c), int64(len(c)), true); !errors.Is(err, ErrFormat) {
			t.Errorf("bit flip at %d accepted: %v", i, err)
		}
	}
	padded := append(slices.Clone(b), 0)
	if _, err := Parse(bytes.NewReader(padded), int64(len(padded)), true); err == nil {
		t.Error("trailing byte accepted")
	}
}

func TestWriteFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x")
	os.WriteFile(p, []byte("old"), 0o644)
	err := Write(p, nil, []Tensor{{Name: "bad", DType: "F32", Shape: []int{3}, Data: []byte{1}}})
	if err == nil {
		t.Fatal("mis-sized tensor written")
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatal("old file clobbered")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
}

func FuzzParse(f *testing.F) {
	dir := f.TempDir()
	p := filepath.Join(dir, "s")
	Write(p, map[string]string{"a": "b"}, []Tensor{F32("x", []float32{1, 2}, 2), I64("i", []int{3}, 1)})
	b, _ := os.ReadFile(p)
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(bytes.NewReader(data), int64(len(data)), false)
		if err != nil {
			return
		}
		total := 0
		for _, t := range file.Tensors {
			total += len(t.Data)
		}
		if total > len(data) {
			t.Fatalf("read %d data bytes from a %d-byte input", total, len(data))
		}
	})
}

// Every byte of the header is covered: an edited metadata value or tensor
// shape with valid JSON is refused, as are flips in the data; Map agrees with Read.
func TestHeaderCoveredByChecksum(t *testing.T) {
	p, b := sample(t)
	hl := 8 + int(binary.LittleEndian.Uint64(b))
	for _, edit := range [][2]string{{`"k":"v"`, `"k":"w"`}, {`"shape":[2,3]`, `"shape":[3,2]`}} {
		i := bytes.Index(b[:hl], []byte(edit[0]))
		if i < 0 {
			t.Fatalf("%s not in header %s", edit[0], b[:hl])
		}
		c := slices.Clone(b)
		copy(c[i:], edit[1])
		if _, err := Parse(bytes.NewReader(c), int64(len(c)), true); !errors.Is(err, ErrFormat) {
			t.Errorf("header edit %s → %s accepted: %v", edit[0], edit[1], err)
		}
		q := filepath.Join(t.TempDir(), "edited")
		os.WriteFile(q, c, 0o644)
		if _, err := Map(q, true); !errors.Is(err, ErrFormat) {
			t.Errorf("mapped header edit %s accepted: %v", edit[0], err)
		}
	}
	f, err := Map(p, true)
	if err != nil || !f.Verified {
		t.Fatalf("Map: %v verified %v", err, f != nil && f.Verified)
	}
	a, _ := f.Tensor("a").Float32s()
	if !slices.Equal(a, []float32{1, 2, 3, 4, 5, 6}) || f.Keep() == nil {
		t.Fatalf("mapped tensor %v", a)
	}
	c := slices.Clone(b)
	c[len(c)-2] ^= 1
	q := filepath.Join(t.TempDir(), "flipped")
	os.WriteFile(q, c, 0o644)
	if _, err := Map(q, true); !errors.Is(err, ErrFormat) {
		t.Errorf("mapped bit flip accepted: %v", err)
	}
}

// Files whose checksum covers only the data (padim before format 2) are
// refused when a checksum is required, with the reason.
func TestOldChecksumRefused(t *testing.T) {
	var b bytes.Buffer
	js := []byte(`{"__metadata__":{"padim.sha256":"00"},"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`)
	var n [8]byte
	n[0] = byte(len(js))
	b.Write(n[:])
	b.Write(js)
	b.WriteByte(7)
	_, err := Parse(bytes.NewReader(b.Bytes()), int64(b.Len()), true)
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "before model format 2") {
		t.Fatalf("got %v", err)
	}
}

// A checksum over several chunks matches one computed over one piece, in
// every chunk scheme, and the schemes differ.
func TestChunkedChecksumIndependentOfPieces(t *testing.T) {
	seen := map[string]bool{}
	for _, sc := range chunkSchemes {
		size := int(sc.size)
		data := make([]byte, 2*size+12345)
		for i := range data {
			data[i] = byte(i * 31)
		}
		ents := []located{{"x", entry{"U8", []int{len(data)}, [2]int64{0, int64(len(data))}}}}
		one := checksum(sc, map[string]string{"a": "b"}, ents, [][]byte{data})
		split := checksum(sc, map[string]string{"a": "b"}, ents, [][]byte{data[:100], data[100 : size+7], data[size+7:]})
		if one != split || !strings.HasPrefix(one, sc.prefix) {
			t.Fatalf("%s: %s vs %s", sc.prefix, one, split)
		}
		data[size+1] ^= 1
		if checksum(sc, map[string]string{"a": "b"}, ents, [][]byte{data}) == one {
			t.Fatalf("%s: a flipped bit in the second chunk kept the checksum", sc.prefix)
		}
		seen[strings.TrimPrefix(one, sc.prefix)] = true
	}
	if len(seen) != len(chunkSchemes) {
		t.Fatal("two chunk schemes gave one checksum")
	}
}

// New files use XXH64 chunks; files written with SHA-256 chunks (padim
// before XXH64) still verify, and a flip in their data is still refused; an
// unknown scheme is refused with a message saying so.
func TestChecksumSchemes(t *testing.T) {
	p, b := sample(t)
	f, err := Map(p, true)
	if err != nil || !strings.HasPrefix(f.Metadata[ChecksumKey], "xxh64-chunked:") {
		t.Fatalf("new file: %v, checksum %q", err, f.Metadata[ChecksumKey])
	}
	// rewrite the same file's header with a SHA-256 checksum, as older padim wrote it
	hl := 8 + int(binary.LittleEndian.Uint64(b))
	file, err := Parse(bytes.NewReader(b), int64(len(b)), true)
	if err != nil {
		t.Fatal(err)
	}
	old := file.Metadata[ChecksumKey]
	ents, md, err := parseHeader(b[8:hl], int64(len(b)-hl))
	if err != nil {
		t.Fatal(err)
	}
	sum := checksum(sha256Chunks, md, ents, [][]byte{b[hl:]})
	if len(sum) != len(old)+1 { // "sha256-" is one byte longer than "xxh64-"
		t.Fatalf("checksum lengths %q %q", sum, old)
	}
	withHeader := func(sum string) []byte {
		h := bytes.Replace(b[8:hl], []byte(old), []byte(sum), 1)
		for len(h)%8 != 0 {
			h = append(h, ' ')
		}
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(h)))
		return slices.Concat(n[:], h, b[hl:])
	}
	c := withHeader(sum)
	if g, err := Parse(bytes.NewReader(c), int64(len(c)), true); err != nil || !g.Verified {
		t.Fatalf("a SHA-256-chunked file: %v", err)
	}
	c[len(c)-1] ^= 1
	if _, err := Parse(bytes.NewReader(c), int64(len(c)), true); !errors.Is(err, ErrFormat) {
		t.Fatalf("a flip in a SHA-256-chunked file: %v", err)
	}
	c = withHeader(strings.Replace(old, "xxh64-chunked:", "blake9-chunked:", 1))
	if _, err := Parse(bytes.NewReader(c), int64(len(c)), true); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "newer padim") {
		t.Fatalf("an unknown scheme: %v", err)
	}
}

// A header over MaxHeader is named as such, whatever the file's size (it
// was "header length X does not fit a X+8-byte file" for a file of exactly
// that size), and a header longer than the file is called truncated.
func TestHeaderLengthMessages(t *testing.T) {
	var nb [8]byte
	binary.LittleEndian.PutUint64(nb[:], MaxHeader+1)
	_, err := Parse(bytes.NewReader(nb[:]), MaxHeader+1+8, false)
	if err == nil || !strings.Contains(err.Error(), "over the 64 MiB") || strings.Contains(err.Error(), "does not fit") {
		t.Errorf("oversized header: %v", err)
	}
	binary.LittleEndian.PutUint64(nb[:], 100)
	_, err = Parse(bytes.NewReader(nb[:]), 50, false)
	if err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("header longer than the file: %v", err)
	}
}
