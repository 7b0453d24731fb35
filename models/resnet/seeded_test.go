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

// BenchmarkUnrequestedTaps measures whether ONNX Runtime skips the nodes of
// outputs it is not asked for: a default graph (layer1..3) against a layer1..4
// graph asked for layer1..3 and for all four, batch 8 at 224², 2 threads.
// ONNX Runtime 1.24 does not skip them (the second costs what the third does),
// which is why layer4 is a build option (Options.Taps) and not always present.
//
//	go test ./models/resnet -run '^$' -bench UnrequestedTaps -benchtime 5x
func BenchmarkUnrequestedTaps(b *testing.B) {
	if err := backbone.Init(""); err != nil {
		b.Skipf("ONNX Runtime not available: %v", err)
	}
	const batch, size = 8, 224
	x := make([]float32, batch*3*size*size)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for _, arch := range []string{"resnet18", "resnet50_cbam"} {
		g3, err := resnet.Build(resnet.Options{Arch: arch}, resnet.Random{Seed: 7})
		if err != nil {
			b.Fatal(err)
		}
		g4, err := resnet.Build(resnet.Options{Arch: arch, Taps: resnet.Layers}, resnet.Random{Seed: 7})
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range []struct {
			name  string
			graph []byte
			taps  []string
		}{
			{"layer1-3_graph", g3, nil},
			{"layer1-4_graph_ask_layer1-3", g4, resnet.DefaultTaps},
			{"layer1-4_graph_ask_layer1-4", g4, resnet.Layers},
		} {
			b.Run(arch+"/"+c.name, func(b *testing.B) {
				e, err := backbone.Open(c.graph, arch, backbone.Options{Device: "cpu", Threads: 2, Taps: c.taps})
				if err != nil {
					b.Fatal(err)
				}
				defer e.Close()
				if _, err := e.Extract(x, batch); err != nil { // warm-up
					b.Fatal(err)
				}
				b.ResetTimer()
				for range b.N {
					if _, err := e.Extract(x, batch); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N*batch), "ms/image")
			})
		}
	}
}
