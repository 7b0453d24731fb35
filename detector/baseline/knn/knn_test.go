package knn

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

func randPoints(seed uint64, n, d int) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	x := make([]float32, n*d)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	return x
}

// The blocked SGEMM search finds the brute-force neighbours, in order, with
// groups left out when asked; past the number of points, +Inf and −1.
func TestNearestEqualsBruteForce(t *testing.T) {
	const n, d, m, k = 2600, 7, 300, 4 // more points than one block, more queries than one block
	x, q := randPoints(1, n, d), randPoints(2, m, d)
	group := make([]int32, n)
	skip := make([]int32, m)
	for i := range group {
		group[i] = int32(i % 13)
	}
	for i := range skip {
		skip[i] = int32(i % 13)
	}
	s, err := NewSet(x, n, d, group)
	if err != nil {
		t.Fatal(err)
	}
	for _, sk := range [][]int32{nil, skip} {
		dist, idx := make([]float32, m*k), make([]int32, m*k)
		if err := s.Nearest(q, m, k, sk, dist, idx); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < m; i++ {
			type pd struct {
				j int
				d float64
			}
			var all []pd
			for j := 0; j < n; j++ {
				if sk != nil && group[j] == sk[i] {
					continue
				}
				var v float64
				for c := 0; c < d; c++ {
					t := float64(q[i*d+c] - x[j*d+c])
					v += t * t
				}
				all = append(all, pd{j, math.Sqrt(v)})
			}
			sort.Slice(all, func(a, b int) bool { return all[a].d < all[b].d })
			for r := 0; r < k; r++ {
				if int(idx[i*k+r]) != all[r].j || math.Abs(float64(dist[i*k+r])-all[r].d) > 1e-4*math.Max(1, all[r].d) {
					t.Fatalf("query %d, neighbour %d: got %d at %v, want %d at %v", i, r, idx[i*k+r], dist[i*k+r], all[r].j, all[r].d)
				}
			}
		}
	}
	dist, idx := make([]float32, 5), make([]int32, 5)
	s3, _ := NewSet(x, 3, d, nil)
	s3.Nearest(q, 1, 5, nil, dist, idx)
	if idx[3] != -1 || !math.IsInf(float64(dist[4]), 1) {
		t.Fatalf("fewer points than k: %v %v", idx, dist)
	}
}

// The greedy coreset is a subset whose covering radius is no worse than a
// random subset of the same size (here on clustered data, where random
// subsets miss small clusters).
func TestCoresetCoversBetterThanRandom(t *testing.T) {
	const n, d, size = 1200, 16, 60
	r := rand.New(rand.NewPCG(3, 3))
	x := make([]float32, n*d)
	for i := 0; i < n; i++ {
		c := 0
		if i%40 == 0 {
			c = 1 + i%7 // rare far clusters
		}
		for j := 0; j < d; j++ {
			x[i*d+j] = float32(r.NormFloat64()*0.3 + float64(c*5*((j+c)%2)))
		}
	}
	for _, proj := range []int{0, 8} {
		picked, err := Coreset(x, n, d, size, proj, 7)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[int]bool{}
		for _, p := range picked {
			if p < 0 || p >= n || seen[p] {
				t.Fatalf("coreset index %d repeated or out of range", p)
			}
			seen[p] = true
		}
		greedy := CoveringRadius(x, n, d, picked)
		worseRandom := 0
		for trial := 0; trial < 5; trial++ {
			rr := rand.New(rand.NewPCG(uint64(10+trial), 9))
			random := rr.Perm(n)[:size]
			if CoveringRadius(x, n, d, random) >= greedy {
				worseRandom++
			}
		}
		t.Logf("projection %d: greedy covering radius %.3f; random subsets no better in %d of 5", proj, greedy, worseRandom)
		if worseRandom < 5 {
			t.Fatalf("projection %d: a random subset covers better than the greedy coreset", proj)
		}
	}
	if _, err := Coreset(x, n, d, 0, 0, 1); err == nil {
		t.Fatal("empty coreset accepted")
	}
}

// Distances do not depend on where the points lie in memory (a model's
// arrays lie wherever its file puts them): the same set at 16 offsets gives
// the same distances, bit for bit.
func TestNearestIndependentOfAlignment(t *testing.T) {
	const n, d, m, k = 37, 23, 5, 3
	r := rand.New(rand.NewPCG(8, 9))
	x := make([]float32, n*d)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	q := make([]float32, m*d)
	for i := range q {
		q[i] = float32(r.NormFloat64())
	}
	var want []float32
	for off := 0; off < 16; off++ {
		buf := make([]float32, n*d+16)
		xs := buf[off : off+n*d]
		copy(xs, x)
		qb := make([]float32, m*d+16)
		qs := qb[15-off : 15-off+m*d]
		copy(qs, q)
		s, err := NewSet(xs, n, d, nil)
		if err != nil {
			t.Fatal(err)
		}
		dist, idx := make([]float32, m*k), make([]int32, m*k)
		if err := s.Nearest(qs, m, k, nil, dist, idx); err != nil {
			t.Fatal(err)
		}
		if off == 0 {
			want = dist
			continue
		}
		for i := range dist {
			if dist[i] != want[i] {
				t.Fatalf("points at offset %d: distance %d is %v, at offset 0 %v", off, i, dist[i], want[i])
			}
		}
	}
}
