package resnet_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/models/resnet"
)

// TestSeededLayer4Healthy runs every architecture's seeded graph with layer1..4 in
// ONNX Runtime: the right shapes, finite activations of a sane spread in every
// tap, layer4 included (the deep nets' long layer3 must not blow the stream up).
func TestSeededLayer4Healthy(t *testing.T) {
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	const size = 64
	r := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, 2*3*size*size)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for _, arch := range resnet.Arches {
		t.Run(arch, func(t *testing.T) {
			g, err := resnet.Build(resnet.Options{Arch: arch, InputSize: size, Taps: resnet.Layers}, resnet.Random{Seed: 7})
			if err != nil {
				t.Fatal(err)
			}
			e, err := backbone.Open(g, arch, backbone.Options{Device: "cpu", Threads: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			taps, err := e.Extract(x, 2)
			if err != nil {
				t.Fatal(err)
			}
			chans, _ := resnet.TapChannels(arch)
			if len(taps) != 4 {
				t.Fatalf("%d taps", len(taps))
			}
			for i, tp := range taps {
				if tp.C != chans[i] || tp.H != size/(4<<i) {
					t.Fatalf("%s: %+v", tp.Name, tp.TapShape)
				}
				var s, s2 float64
				for _, v := range tp.Data {
					if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
						t.Fatalf("%s: non-finite activation", tp.Name)
					}
					s += float64(v)
					s2 += float64(v) * float64(v)
				}
				n := float64(len(tp.Data))
				std := math.Sqrt(s2/n - s*s/n/n)
				t.Logf("%s: std %.3g", tp.Name, std)
				if std < 0.05 || std > 50 {
					t.Errorf("%s: activation std %.3g outside [0.05, 50]", tp.Name, std)
				}
			}
		})
	}
}
