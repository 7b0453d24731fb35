// Package safetensors reads and writes the safetensors format (an 8-byte
// little-endian header length, a JSON header, then raw little-endian tensors), the
// open format of padim's model and statistics files, so that Python's safetensors,
// NumPy or any other reader can open them.
//
// Files written here carry a checksum in the metadata key "padim.checksum": a
// SHA-256 over the whole header (every metadata value and every tensor's name,
// type, shape and place) and a digest of each chunk of the data, so that no byte
// of the file can change unnoticed and large files hash on every core. The chunk
// digests are XXH64 of 16 MiB chunks ("xxh64-chunked:", since padim 0.9: about six
// times faster than SHA-256, so a 1.4 GB model verifies in 0.1 s on 2 cores);
// files with SHA-256 chunk digests of 64 MiB ("sha256-chunked:") still verify.
// The checksum detects damage (truncation, bit rot, a partial copy, an edit that
// did not update it); like any unkeyed checksum it is no defence against someone
// who rewrites the file on purpose. Read and Map verify it when present and can
// demand it. Writes are atomic: a temporary file in the same folder, synced,
// then renamed.
package safetensors

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cespare/xxhash/v2"

	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/detector/fileio/readfile"
)

// ChecksumKey is the metadata key holding the checksum: "xxh64-chunked:" (or,
// in older files, "sha256-chunked:") and 64 hex digits.
const ChecksumKey = "padim.checksum"

// oldChecksumKey held a SHA-256 of the data section only (padim before model
// format 2); such files are refused when a checksum is required.
const oldChecksumKey = "padim.sha256"

// chunkScheme is how a checksum digests the data section: chunks of size
// bytes, each hashed by sum into digest bytes.
type chunkScheme struct {
	prefix string
	size   int64
	sum    func(parts [][]byte) []byte // the digest of one chunk, given as parts
}

var (
	// xxh64Chunks is what Write uses.
	xxh64Chunks = chunkScheme{"xxh64-chunked:", 16 << 20, func(parts [][]byte) []byte {
		h := xxhash.New()
		for _, p := range parts {
			h.Write(p)
		}
		return h.Sum(nil)
	}}
	// sha256Chunks is the scheme of models written before XXH64 chunks.
	sha256Chunks = chunkScheme{"sha256-chunked:", 64 << 20, func(parts [][]byte) []byte {
		h := sha256.New()
		for _, p := range parts {
			h.Write(p)
		}
		return h.Sum(nil)
	}}
	chunkSchemes = []chunkScheme{xxh64Chunks, sha256Chunks}
)

// schemeOf returns the chunk scheme a recorded checksum names.
func schemeOf(sum string) (chunkScheme, bool) {
	for _, s := range chunkSchemes {
		if strings.HasPrefix(sum, s.prefix) {
			return s, true
		}
	}
	return chunkScheme{}, false
}

// MaxHeader bounds the JSON header a reader accepts.
const MaxHeader = 64 << 20

// ErrFormat is wrapped by every error about a malformed or damaged file.
var ErrFormat = errors.New("not a valid safetensors file")

var dtypeSize = map[string]int{"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

// Tensor is one named array of little-endian values.
type Tensor struct {
	Name  string
	DType string
	Shape []int
	Data  []byte
}

// File is a parsed safetensors file: metadata and tensors in data order.
type File struct {
	Metadata map[string]string
	Tensors  []Tensor
	Verified bool // the padim checksum was present and matched
	mapping  *mapping
}

// Tensor returns the named tensor, or nil.
func (f *File) Tensor(name string) *Tensor {
	for i := range f.Tensors {
		if f.Tensors[i].Name == name {
			return &f.Tensors[i]
		}
	}
	return nil
}

// F32 makes a float32 tensor sharing v's memory.
func F32(name string, v []float32, shape ...int) Tensor {
	return Tensor{Name: name, DType: "F32", Shape: shape, Data: bytesOf(v)}
}

// F64 makes a float64 tensor sharing v's memory.
func F64(name string, v []float64, shape ...int) Tensor {
	return Tensor{Name: name, DType: "F64", Shape: shape, Data: bytesOf(v)}
}

// I64 makes an int64 tensor from ints.
func I64(name string, v []int, shape ...int) Tensor {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(int64(x)))
	}
	return Tensor{Name: name, DType: "I64", Shape: shape, Data: b}
}

func bytesOf[T float32 | float64](v []T) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), len(v)*int(unsafe.Sizeof(v[0])))
}

func viewAs[T float32 | float64](b []byte) []T {
	var z T
	sz := int(unsafe.Sizeof(z))
	if len(b) == 0 {
		return []T{}
	}
	if uintptr(unsafe.Pointer(&b[0]))%uintptr(sz) == 0 {
		return unsafe.Slice((*T)(unsafe.Pointer(&b[0])), len(b)/sz)
	}
	out := make([]T, len(b)/sz)
	copy(bytesOf(out), b)
	return out
}

// Float32s returns the tensor's values without copying; it must be F32.
func (t *Tensor) Float32s() ([]float32, error) {
	if t.DType != "F32" {
		return nil, fmt.Errorf("safetensors: tensor %q is %s, want F32", t.Name, t.DType)
	}
	return viewAs[float32](t.Data), nil
}

// Float64s returns the tensor's values without copying; it must be F64.
func (t *Tensor) Float64s() ([]float64, error) {
	if t.DType != "F64" {
		return nil, fmt.Errorf("safetensors: tensor %q is %s, want F64", t.Name, t.DType)
	}
	return viewAs[float64](t.Data), nil
}

// Ints returns an I64 or I32 tensor's values.
func (t *Tensor) Ints() ([]int, error) {
	switch t.DType {
	case "I64":
		v := make([]int, len(t.Data)/8)
		for i := range v {
			x := int64(binary.LittleEndian.Uint64(t.Data[8*i:]))
			if x > math.MaxInt32 || x < math.MinInt32 {
				return nil, fmt.Errorf("safetensors: tensor %q value %d out of range", t.Name, x)
			}
			v[i] = int(x)
		}
		return v, nil
	case "I32":
		v := make([]int, len(t.Data)/4)
		for i := range v {
			v[i] = int(int32(binary.LittleEndian.Uint32(t.Data[4*i:])))
		}
		return v, nil
	}
	return nil, fmt.Errorf("safetensors: tensor %q is %s, want an integer type", t.Name, t.DType)
}

// Elements is the product of the shape.
func (t *Tensor) Elements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

type entry struct {
	DType       string   `json:"dtype"`
	Shape       []int    `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// located is a tensor's header entry with its name.
type located struct {
	name string
	e    entry
}

// checksum computes the file checksum in scheme sc from the metadata (without
// the checksum key), the tensor table in data order, and the data section given
// as pieces.
func checksum(sc chunkScheme, md map[string]string, ents []located, data [][]byte) string {
	meta := map[string]string{}
	for k, v := range md {
		if k != ChecksumKey {
			meta[k] = v
		}
	}
	h := sha256.New()
	h.Write([]byte("padim safetensors checksum 2\n"))
	js, _ := json.Marshal(meta) // map keys are sorted: canonical
	h.Write(js)
	for _, e := range ents {
		js, _ := json.Marshal([]any{e.name, e.e.DType, e.e.Shape, e.e.DataOffsets})
		h.Write(js)
	}
	for _, c := range chunkHashes(sc, data) {
		h.Write(c)
	}
	return sc.prefix + hex.EncodeToString(h.Sum(nil))
}

// chunkHashes digests the concatenation of pieces in sc.size chunks, in parallel.
func chunkHashes(sc chunkScheme, pieces [][]byte) [][]byte {
	var total int64
	for _, p := range pieces {
		total += int64(len(p))
	}
	n := int((total + sc.size - 1) / sc.size)
	out := make([][]byte, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var parts [][]byte
			for {
				c := int(next.Add(1) - 1)
				if c >= n {
					return
				}
				lo, hi := int64(c)*sc.size, min(int64(c+1)*sc.size, total)
				parts = parts[:0]
				var off int64
				for _, p := range pieces {
					plo, phi := off, off+int64(len(p))
					off = phi
					if phi <= lo || plo >= hi {
						continue
					}
					parts = append(parts, p[max(lo, plo)-plo:min(hi, phi)-plo])
				}
				out[c] = sc.sum(parts)
			}
		}()
	}
	wg.Wait()
	return out
}

// Write stores the tensors (in the given order) and metadata at path atomically,
// adding the checksum key.
func Write(path string, meta map[string]string, tensors []Tensor) (err error) {
	md := map[string]string{}
	for k, v := range meta {
		if k != ChecksumKey && k != oldChecksumKey {
			md[k] = v
		}
	}
	seen := map[string]bool{}
	var ents []located
	var data [][]byte
	var off int64
	for _, t := range tensors {
		sz, ok := dtypeSize[t.DType]
		if !ok {
			return fmt.Errorf("safetensors: tensor %q has unknown dtype %q", t.Name, t.DType)
		}
		if t.Elements()*sz != len(t.Data) {
			return fmt.Errorf("safetensors: tensor %q holds %d bytes, shape %v of %s needs %d", t.Name, len(t.Data), t.Shape, t.DType, t.Elements()*sz)
		}
		if t.Name == "__metadata__" || seen[t.Name] {
			return fmt.Errorf("safetensors: duplicate or reserved tensor name %q", t.Name)
		}
		seen[t.Name] = true
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		ents = append(ents, located{t.Name, entry{t.DType, shape, [2]int64{off, off + int64(len(t.Data))}}})
		off += int64(len(t.Data))
		data = append(data, t.Data)
	}
	md[ChecksumKey] = checksum(xxh64Chunks, md, ents, data)
	header := map[string]any{"__metadata__": md}
	for _, e := range ents {
		header[e.name] = e.e
	}
	js, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(js)%8 != 0 {
		js = append(js, ' ')
	}
	return atomicfile.Write(path, func(w io.Writer) error {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(js)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		if _, err := w.Write(js); err != nil {
			return err
		}
		for _, d := range data {
			if _, err := w.Write(d); err != nil {
				return err
			}
		}
		return nil
	})
}

// Read opens and parses path into memory; requireChecksum rejects files
// without padim's checksum. The tensors' data is ordinary memory: callers may
// modify it.
func Read(path string, requireChecksum bool) (*File, error) {
	f, err := readfile.Open(path) // a FIFO or a folder is refused, not waited on
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	file, err := Parse(f, st.Size(), requireChecksum)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return file, nil
}

// Parse reads a safetensors stream of exactly size bytes. It never allocates more
// than size bytes for data, whatever the header claims.
func Parse(r io.Reader, size int64, requireChecksum bool) (*File, error) {
	if size < 8 {
		return nil, bad("file is %d bytes, shorter than the 8-byte header length (truncated?)", size)
	}
	var nb [8]byte
	if _, err := io.ReadFull(r, nb[:]); err != nil {
		return nil, bad("reading header length: %v", err)
	}
	hl := binary.LittleEndian.Uint64(nb[:])
	if err := checkHeaderLength(hl, size); err != nil {
		return nil, err
	}
	hj := make([]byte, hl)
	if _, err := io.ReadFull(r, hj); err != nil {
		return nil, bad("reading header: %v", err)
	}
	ents, md, err := parseHeader(hj, size-8-int64(hl))
	if err != nil {
		return nil, err
	}
	data := make([]byte, size-8-int64(hl))
	if n, err := io.ReadFull(r, data); err != nil {
		return nil, bad("reading %d data bytes: %v after %d (truncated?)", len(data), err, n)
	}
	return assemble(md, ents, data, requireChecksum)
}

// checkHeaderLength refuses a header length over MaxHeader, or longer than
// the file, each with its own reason.
func checkHeaderLength(hl uint64, size int64) error {
	switch {
	case hl > MaxHeader:
		return bad("header of %d bytes is over the %d MiB a padim file's header may have (not a padim file, or damaged)", hl, MaxHeader>>20)
	case int64(hl) > size-8:
		return bad("header length %d does not fit a %d-byte file (truncated or not safetensors)", hl, size)
	}
	return nil
}

func bad(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, a...))
}

// parseHeader checks the JSON header against a data section of dataSize bytes.
func parseHeader(hj []byte, dataSize int64) ([]located, map[string]string, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(hj, &raw); err != nil {
		return nil, nil, bad("header is not JSON: %v", err)
	}
	md := map[string]string{}
	if m, ok := raw["__metadata__"]; ok {
		if err := json.Unmarshal(m, &md); err != nil {
			return nil, nil, bad("metadata is not a string map: %v", err)
		}
		delete(raw, "__metadata__")
	}
	var ents []located
	for name, msg := range raw {
		var e entry
		dec := json.NewDecoder(bytes.NewReader(msg))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return nil, nil, bad("tensor %q: %v", name, err)
		}
		sz, ok := dtypeSize[e.DType]
		if !ok {
			return nil, nil, bad("tensor %q has unknown dtype %q", name, e.DType)
		}
		n := uint64(sz)
		for _, d := range e.Shape {
			if d < 0 {
				return nil, nil, bad("tensor %q has negative dimension %d", name, d)
			}
			hi, lo := bits.Mul64(n, uint64(d))
			if hi != 0 || lo > uint64(dataSize) {
				return nil, nil, bad("tensor %q shape %v is larger than the file", name, e.Shape)
			}
			n = lo
		}
		b, en := e.DataOffsets[0], e.DataOffsets[1]
		if b < 0 || en < b || en > dataSize || uint64(en-b) != n {
			return nil, nil, bad("tensor %q data offsets %v do not match shape %v of %s in %d data bytes (truncated?)", name, e.DataOffsets, e.Shape, e.DType, dataSize)
		}
		ents = append(ents, located{name, e})
	}
	slices.SortFunc(ents, func(a, b located) int {
		if c := cmp.Compare(a.e.DataOffsets[0], b.e.DataOffsets[0]); c != 0 {
			return c
		}
		return cmp.Compare(a.e.DataOffsets[1], b.e.DataOffsets[1])
	})
	var pos int64
	for _, e := range ents {
		if e.e.DataOffsets[0] != pos {
			return nil, nil, bad("tensor %q starts at %d, expected %d (overlap or hole)", e.name, e.e.DataOffsets[0], pos)
		}
		pos = e.e.DataOffsets[1]
	}
	if pos != dataSize {
		return nil, nil, bad("tensors cover %d bytes but the file holds %d after the header (truncated or padded)", pos, dataSize)
	}
	return ents, md, nil
}

// assemble verifies the checksum and slices the data section into tensors.
func assemble(md map[string]string, ents []located, data []byte, requireChecksum bool) (*File, error) {
	file := &File{Metadata: md}
	want, hasSum := md[ChecksumKey]
	if !hasSum && requireChecksum {
		if _, old := md[oldChecksumKey]; old {
			return nil, bad("its checksum covers only the data, not the header (written by a padim before model format 2)")
		}
		return nil, bad("no %s checksum in the metadata", ChecksumKey)
	}
	if hasSum {
		sc, ok := schemeOf(want)
		if !ok {
			return nil, bad("its checksum %.24q… is of a kind this padim does not know (written by a newer padim? update padim)", want)
		}
		if got := checksum(sc, md, ents, [][]byte{data}); got != want {
			return nil, bad("checksum %s does not match the recorded %s (file damaged or edited)", strings.TrimPrefix(got, sc.prefix)[:16], strings.TrimPrefix(want, sc.prefix)[:min(16, len(strings.TrimPrefix(want, sc.prefix)))])
		}
		file.Verified = true
	}
	for _, e := range ents {
		file.Tensors = append(file.Tensors, Tensor{Name: e.name, DType: e.e.DType, Shape: e.e.Shape, Data: data[e.e.DataOffsets[0]:e.e.DataOffsets[1]:e.e.DataOffsets[1]]})
	}
	return file, nil
}
