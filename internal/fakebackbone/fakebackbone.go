// Package fakebackbone is a small deterministic feature extractor for tests
// that need a backbone without ONNX Runtime: random 1×1 mixes of the input
// channels, average-pooled by 4 (layer1, 10 channels) and by 8 (layer2, 6
// channels), through tanh. Each image's taps depend on that image alone, so
// batching cannot change them.
package fakebackbone

import (
	"math"
	"math/rand/v2"

	"github.com/padim/padim/detector/embed"
)

// Backbone implements detector.Extractor.
type Backbone struct {
	Size   int          // input side
	W1, W2 [][3]float32 // per output channel of layer1 and layer2, its weights on R, G, B
}

// New returns a backbone for Size×Size inputs with weights drawn from seed.
func New(size int, seed uint64) *Backbone {
	r := rand.New(rand.NewPCG(seed, 9))
	f := &Backbone{Size: size}
	for i := 0; i < 10; i++ {
		f.W1 = append(f.W1, [3]float32{float32(r.NormFloat64()), float32(r.NormFloat64()), float32(r.NormFloat64())})
	}
	for i := 0; i < 6; i++ {
		f.W2 = append(f.W2, [3]float32{float32(r.NormFloat64()), float32(r.NormFloat64()), float32(r.NormFloat64())})
	}
	return f
}

// InputSize is the network input's side.
func (f *Backbone) InputSize() int { return f.Size }

// Taps are layer1 at Size/4 and layer2 at Size/8.
func (f *Backbone) Taps() []embed.TapShape {
	return []embed.TapShape{{Name: "layer1", C: len(f.W1), H: f.Size / 4, W: f.Size / 4}, {Name: "layer2", C: len(f.W2), H: f.Size / 8, W: f.Size / 8}}
}

// Extract computes the taps of n normalised CHW images.
func (f *Backbone) Extract(batch []float32, n int) ([]embed.Tap, error) {
	taps := f.Taps()
	out := make([]embed.Tap, 2)
	for ti, w := range [][][3]float32{f.W1, f.W2} {
		sh := taps[ti]
		t := embed.Tap{TapShape: sh, N: n, Data: make([]float32, n*sh.C*sh.H*sh.W)}
		k := f.Size / sh.H
		for b := 0; b < n; b++ {
			img := batch[b*3*f.Size*f.Size:]
			for c := 0; c < sh.C; c++ {
				for y := 0; y < sh.H; y++ {
					for x := 0; x < sh.W; x++ {
						var s float32
						for yy := y * k; yy < (y+1)*k; yy++ {
							for xx := x * k; xx < (x+1)*k; xx++ {
								for ch := 0; ch < 3; ch++ {
									s += w[c][ch] * img[ch*f.Size*f.Size+yy*f.Size+xx]
								}
							}
						}
						t.Data[((b*sh.C+c)*sh.H+y)*sh.W+x] = float32(math.Tanh(float64(s) / float64(k*k)))
					}
				}
			}
		}
		out[ti] = t
	}
	return out, nil
}
