package detector

import (
	"fmt"
	"os"
	"unsafe"
)

// DefaultSampleMemory bounds the training embeddings a fit keeps in memory: all
// of them for the low-rank form (N·P·D float32) and for cross-fitting. Past it
// the low-rank form gives way to the full form, and cross-fitting keeps the
// embeddings in an unlinked temporary file.
const DefaultSampleMemory = 4 << 30

// sampleStore keeps a fit's embeddings [N][P][D], in memory up to a budget,
// then in an unlinked temporary file (removed by the system however the process ends).
type sampleStore struct {
	pd     int // floats per sample
	n      int
	mem    []float32
	budget int64
	file   *os.File
}

func newSampleStore(pd int, budget int64, expect int) *sampleStore {
	s := &sampleStore{pd: pd, budget: budget}
	if c := int64(expect) * int64(pd) * 4; expect > 0 && c <= budget {
		s.mem = make([]float32, 0, expect*pd)
	}
	return s
}

// bytes is what n samples take.
func (s *sampleStore) bytes(n int) int64 { return int64(n) * int64(s.pd) * 4 }

func (s *sampleStore) inMemory() bool { return s.file == nil }

// add appends n embeddings.
func (s *sampleStore) add(emb []float32, n int) error {
	emb = emb[:n*s.pd]
	if s.file == nil && s.bytes(s.n+n) <= s.budget {
		s.mem = append(s.mem, emb...)
		s.n += n
		return nil
	}
	if s.file == nil {
		f, err := os.CreateTemp("", "padim-samples-*")
		if err != nil {
			return fmt.Errorf("keeping %d training embeddings (%.1f GiB) needs a temporary file: %w", s.n+n, float64(s.bytes(s.n+n))/(1<<30), err)
		}
		os.Remove(f.Name()) // unlinked: gone when closed or when the process ends
		s.file = f
		if _, err := f.Write(f32bytes(s.mem)); err != nil {
			return fmt.Errorf("writing training embeddings to a temporary file: %w", err)
		}
		s.mem = nil
	}
	if _, err := s.file.Write(f32bytes(emb)); err != nil {
		return fmt.Errorf("writing training embeddings to a temporary file: %w", err)
	}
	s.n += n
	return nil
}

// all returns every sample, [N][P][D], when they are in memory.
func (s *sampleStore) all() []float32 { return s.mem[:s.n*s.pd] }

// gather copies the listed samples into dst, [len(idx)][P][D].
func (s *sampleStore) gather(idx []int, dst []float32) error {
	for k, i := range idx {
		out := dst[k*s.pd : (k+1)*s.pd]
		if s.file == nil {
			copy(out, s.mem[i*s.pd:(i+1)*s.pd])
			continue
		}
		if _, err := s.file.ReadAt(f32bytes(out), s.bytes(i)); err != nil {
			return fmt.Errorf("reading training embeddings back: %w", err)
		}
	}
	return nil
}

func (s *sampleStore) close() {
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
	s.mem = nil
}

func f32bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}
