// Package knn finds nearest neighbours by brute force on the CPU, in blocks
// with SGEMM: ‖q − x‖² = ‖q‖² + ‖x‖² − 2·q·x, the distance SPADE and PatchCore
// use; and the greedy k-centre coreset PatchCore subsamples its memory bank with.
package knn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"unsafe"

	"github.com/padim/padim/detector/internal/kernels"
)

// Set is a set of points to search, [N][D], with an optional group per point
// (the image it came from) so that a query can leave its own group out.
type Set struct {
	X     []float32
	N, D  int
	Group []int32 // nil: no groups
	norms []float32
}

// NewSet prepares x ([n][d]) for search.
func NewSet(x []float32, n, d int, group []int32) (*Set, error) {
	if n <= 0 || d <= 0 || len(x) < n*d {
		return nil, fmt.Errorf("knn: %d values for %d points of dimension %d", len(x), n, d)
	}
	if group != nil && len(group) != n {
		return nil, fmt.Errorf("knn: %d groups for %d points", len(group), n)
	}
	s := &Set{X: x[:n*d], N: n, D: d, Group: group, norms: make([]float32, n)}
	for i := range s.norms {
		s.norms[i] = sqNorm(x[i*d : (i+1)*d])
	}
	return s, nil
}

func sqNorm(v []float32) float32 {
	var s float64
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return float32(s)
}

// Block sizes: a block of queries against a block of points is one SGEMM.
const (
	queryBlock = 256
	pointBlock = 2048
)

// Nearest finds, for each of the m queries q ([m][D]), its k nearest points:
// dist ([m][k]) gets their distances (not squared), ascending, idx their
// indices. skip, when not nil, gives per query a group whose points it must
// not see (−1: none). Fewer than k points leave +Inf and −1.
func (s *Set) Nearest(q []float32, m, k int, skip []int32, dist []float32, idx []int32) error {
	D := s.D
	if len(q) < m*D || len(dist) < m*k || len(idx) < m*k || k <= 0 {
		return fmt.Errorf("knn: %d query values, %d/%d result slots for %d queries of dimension %d, k=%d", len(q), len(dist), len(idx), m, D, k)
	}
	if skip != nil && (len(skip) < m || s.Group == nil) {
		return fmt.Errorf("knn: skipping groups needs a group per query and per point")
	}
	blocks := (m + queryBlock - 1) / queryBlock
	workers := min(runtime.GOMAXPROCS(0), blocks)
	var wg sync.WaitGroup
	next := make(chan int, blocks)
	for b := 0; b < blocks; b++ {
		next <- b
	}
	close(next)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := make([]float32, queryBlock*pointBlock)
			qa, pa := aligned(queryBlock*D), aligned(min(pointBlock, s.N)*D)
			for b := range next {
				lo, hi := b*queryBlock, min((b+1)*queryBlock, m)
				s.nearestBlock(q, lo, hi, k, skip, dist, idx, g, qa, pa)
			}
		}()
	}
	wg.Wait()
	return nil
}

// aligned returns n float32s starting on a 64-byte boundary.
func aligned(n int) []float32 {
	b := make([]float32, n+16)
	off := int((64-uintptr(unsafe.Pointer(&b[0]))%64)%64) / 4
	return b[off : off+n : off+n]
}

// nearestBlock runs queries lo…hi−1 against every point. The SGEMM reads copies
// of the queries and points in 64-byte-aligned scratch (qa, pa): the gonum
// kernels' sums depend on where their operands lie, and a model's arrays lie
// wherever its file puts them (a header one byte longer moved SPADE's scores
// in the sixth digit).
func (s *Set) nearestBlock(q []float32, lo, hi, k int, skip []int32, dist []float32, idx []int32, g, qa, pa []float32) {
	D, nq := s.D, hi-lo
	qn := make([]float32, nq)
	for i := range qn {
		qn[i] = sqNorm(q[(lo+i)*D : (lo+i+1)*D])
	}
	for i := lo * k; i < hi*k; i++ {
		dist[i], idx[i] = float32(math.Inf(1)), -1
	}
	for p0 := 0; p0 < s.N; p0 += pointBlock {
		np := min(pointBlock, s.N-p0)
		copy(qa, q[lo*D:hi*D])
		copy(pa, s.X[p0*D:(p0+np)*D])
		kernels.SgemmNT(nq, np, D, qa, D, pa, D, g, np)
		for i := 0; i < nq; i++ {
			row := g[i*np : (i+1)*np]
			d := dist[(lo+i)*k : (lo+i+1)*k]
			ix := idx[(lo+i)*k : (lo+i+1)*k]
			worst := d[k-1]
			sk := int32(-1)
			if skip != nil {
				sk = skip[lo+i]
			}
			for j, dot := range row {
				v := qn[i] + s.norms[p0+j] - 2*dot
				if v >= worst {
					continue
				}
				if sk >= 0 && s.Group[p0+j] == sk {
					continue
				}
				// insert into the sorted k best
				pos := k - 1
				for pos > 0 && d[pos-1] > v {
					d[pos], ix[pos] = d[pos-1], ix[pos-1]
					pos--
				}
				d[pos], ix[pos] = v, int32(p0+j)
				worst = d[k-1]
			}
		}
	}
	for i := lo * k; i < hi*k; i++ {
		if idx[i] >= 0 {
			dist[i] = float32(math.Sqrt(math.Max(float64(dist[i]), 0)))
		}
	}
}

// Coreset picks size of the n points of x ([n][d]) by greedy k-centre
// selection — each pick the point farthest from those picked — in a seeded
// random projection to proj dimensions (PatchCore: 128), starting from a
// seeded random point. It returns the picked indices, in pick order.
func Coreset(x []float32, n, d, size, proj int, seed uint64) ([]int, error) {
	if size <= 0 || size > n {
		return nil, fmt.Errorf("knn: a coreset of %d out of %d points", size, n)
	}
	r := rand.New(rand.NewPCG(seed, 0xc0e5e7))
	y := x[:n*d]
	dim := d
	if proj > 0 && proj < d {
		// Gaussian random projection: y = x·Rᵀ/√proj
		rm := make([]float32, proj*d)
		sc := 1 / math.Sqrt(float64(proj))
		for i := range rm {
			rm[i] = float32(r.NormFloat64() * sc)
		}
		y = make([]float32, n*proj)
		for lo := 0; lo < n; lo += pointBlock {
			hi := min(lo+pointBlock, n)
			kernels.SgemmNT(hi-lo, proj, d, x[lo*d:], d, rm, d, y[lo*proj:], proj)
		}
		dim = proj
	}
	minD := make([]float32, n)
	for i := range minD {
		minD[i] = float32(math.Inf(1))
	}
	picked := make([]int, 0, size)
	cur := r.IntN(n)
	workers := runtime.GOMAXPROCS(0)
	for len(picked) < size {
		picked = append(picked, cur)
		c := y[cur*dim : (cur+1)*dim]
		// update every point's distance to the picked set, and find the farthest
		bestI := make([]int, workers)
		bestV := make([]float32, workers)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lo, hi := n*w/workers, n*(w+1)/workers
				bi, bv := -1, float32(-1)
				for i := lo; i < hi; i++ {
					var s float32
					row := y[i*dim : (i+1)*dim]
					for j, v := range row {
						t := v - c[j]
						s += t * t
					}
					if s < minD[i] {
						minD[i] = s
					}
					if minD[i] > bv {
						bi, bv = i, minD[i]
					}
				}
				bestI[w], bestV[w] = bi, bv
			}()
		}
		wg.Wait()
		next, v := -1, float32(-1)
		for w := range bestI {
			if bestI[w] >= 0 && (bestV[w] > v || bestV[w] == v && bestI[w] < next) {
				next, v = bestI[w], bestV[w]
			}
		}
		if next < 0 || v <= 0 {
			break // every point is already picked (duplicates)
		}
		cur = next
	}
	return picked, nil
}

// CoveringRadius is the largest distance from a point of x to its nearest
// point among the picked ones (in the original space).
func CoveringRadius(x []float32, n, d int, picked []int) float64 {
	worst := 0.0
	for i := 0; i < n; i++ {
		best := math.Inf(1)
		for _, p := range picked {
			var s float64
			for j := 0; j < d; j++ {
				t := float64(x[i*d+j] - x[p*d+j])
				s += t * t
			}
			best = math.Min(best, s)
		}
		worst = math.Max(worst, best)
	}
	return math.Sqrt(worst)
}
