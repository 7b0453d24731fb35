package baseline

import (
	"math"
	"math/rand/v2"
	"testing"
)

func points(seed uint64, n, p, d int, shift float64) []float32 {
	r := rand.New(rand.NewPCG(seed, 5))
	x := make([]float32, n*p*d)
	for i := range x {
		x[i] = float32(r.NormFloat64() + shift)
	}
	return x
}

func brute(a, b []float32) float64 {
	var s float64
	for i := range a {
		t := float64(a[i] - b[i])
		s += t * t
	}
	return math.Sqrt(s)
}

// SPADE's distances are the brute-force ones: the image score the mean
// distance to the K nearest pooled features, each patch's distance its
// nearest patch among those K images; leaving an image out never uses it.
func TestSPADEMatchesBruteForce(t *testing.T) {
	const n, p, d, k = 9, 6, 5, 3
	x := points(1, n, p, d, 0)
	m, err := FitSPADE(x, n, p, d, k)
	if err != nil {
		t.Fatal(err)
	}
	sc, _ := m.NewScorer()
	q := points(2, 2, p, d, 0.3)
	dist, img := make([]float32, 2*p), make([]float32, 2)
	if err := sc.ScoreSamples(q, 2, nil, dist, img); err != nil {
		t.Fatal(err)
	}
	for b := 0; b < 2; b++ {
		pq := make([]float32, d)
		pool(q[b*p*d:(b+1)*p*d], p, d, pq)
		type nd struct {
			i int
			d float64
		}
		var all []nd
		for i := 0; i < n; i++ {
			all = append(all, nd{i, brute(pq, m.Pooled[i*d:(i+1)*d])})
		}
		for i := range all { // selection sort, small
			for j := i + 1; j < len(all); j++ {
				if all[j].d < all[i].d {
					all[i], all[j] = all[j], all[i]
				}
			}
		}
		var mean float64
		for _, a := range all[:k] {
			mean += a.d / k
		}
		if math.Abs(float64(img[b])-mean) > 1e-4*mean {
			t.Fatalf("image %d: score %v, brute force %v", b, img[b], mean)
		}
		for qi := 0; qi < p; qi++ {
			best := math.Inf(1)
			for _, a := range all[:k] {
				for j := 0; j < p; j++ {
					best = math.Min(best, brute(q[(b*p+qi)*d:(b*p+qi+1)*d], x[(a.i*p+j)*d:(a.i*p+j+1)*d]))
				}
			}
			if math.Abs(float64(dist[b*p+qi])-best) > 1e-4*math.Max(best, 1) {
				t.Fatalf("image %d patch %d: %v, brute force %v", b, qi, dist[b*p+qi], best)
			}
		}
	}
	// a training image scored leaving itself out is not at distance 0
	self := make([]float32, p)
	sc.ScoreSamples(x[:p*d], 1, []int32{0}, self, img[:1])
	if img[0] == 0 || self[0] == 0 {
		t.Fatalf("left-out image still sees itself: %v %v", img[0], self[0])
	}
}

// PatchCore's patch distances are the brute-force nearest bank feature's; the
// image score is the largest, reweighted into (0, s*]; without reweighting it
// is s* itself.
func TestPatchCoreScores(t *testing.T) {
	const n, p, d = 10, 8, 6
	x := points(3, n, p, d, 0)
	group := make([]int32, n)
	for i := range group {
		group[i] = int32(i)
	}
	m, err := FitPatchCore(x, n, p, d, 0.25, DefaultReweightB, 1, group)
	if err != nil {
		t.Fatal(err)
	}
	if m.M != 20 {
		t.Fatalf("bank of %d, want 20", m.M)
	}
	sc, _ := m.NewScorer()
	q := points(4, 3, p, d, 0.5)
	dist, img := make([]float32, 3*p), make([]float32, 3)
	if err := sc.ScoreSamples(q, 3, nil, dist, img); err != nil {
		t.Fatal(err)
	}
	for b := 0; b < 3; b++ {
		star := 0.0
		for qi := 0; qi < p; qi++ {
			best := math.Inf(1)
			for j := 0; j < m.M; j++ {
				best = math.Min(best, brute(q[(b*p+qi)*d:(b*p+qi+1)*d], m.Bank[j*d:(j+1)*d]))
			}
			if math.Abs(float64(dist[b*p+qi])-best) > 1e-4*math.Max(best, 1) {
				t.Fatalf("patch %d/%d: %v, brute force %v", b, qi, dist[b*p+qi], best)
			}
			star = math.Max(star, best)
		}
		if !(img[b] > 0 && float64(img[b]) < star) {
			t.Fatalf("image %d: reweighted score %v outside (0, %v)", b, img[b], star)
		}
	}
	m.Reweight = 0
	sc0, _ := m.NewScorer()
	sc0.ScoreSamples(q, 3, nil, dist, img)
	for b := 0; b < 3; b++ {
		star := float32(0)
		for _, v := range dist[b*p : (b+1)*p] {
			star = max(star, v)
		}
		if img[b] != star {
			t.Fatalf("no reweighting: %v, max %v", img[b], star)
		}
	}
}
