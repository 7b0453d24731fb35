// Package synth generates wood-like board images in the MVTec AD layout, with
// defects of the kinds in ZUO et al. (colour, hole, liquid/oil stain, scratch,
// wrinkle/fold, combined) and their exact pixel masks, so padim can be tried and
// tested without a dataset. Output is deterministic for a seed.
package synth

import (
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/padim/padim/detector/fileio/picture"
)

// DefectKinds are the defect types, in the order test images cycle through them.
var DefectKinds = []string{"color", "hole", "liquid", "scratch", "wrinkle", "combined"}

// Config sizes a data set.
type Config struct {
	Seed                        uint64
	Train, TestGood, TestDefect int
	Size                        int
}

// board holds one image in linear RGB planes plus its defect mask.
type board struct {
	size    int
	r, g, b []float32
	mask    []bool
}

// noise is seeded 2D value noise.
type noise struct{ seed uint64 }

func (n noise) lattice(x, y int) float64 {
	h := uint64(x)*0x9E3779B97F4A7C15 ^ uint64(y)*0xC2B2AE3D27D4EB4F ^ n.seed*0x165667B19E3779F9
	h ^= h >> 31
	h *= 0xBF58476D1CE4E5B9
	h ^= h >> 29
	return float64(h>>11)/float64(1<<53)*2 - 1
}

func (n noise) at(x, y float64) float64 {
	x0, y0 := math.Floor(x), math.Floor(y)
	fx, fy := x-x0, y-y0
	sx, sy := fx*fx*(3-2*fx), fy*fy*(3-2*fy)
	ix, iy := int(x0), int(y0)
	a := n.lattice(ix, iy) + (n.lattice(ix+1, iy)-n.lattice(ix, iy))*sx
	b := n.lattice(ix, iy+1) + (n.lattice(ix+1, iy+1)-n.lattice(ix, iy+1))*sx
	return a + (b-a)*sy
}

func (n noise) fbm(x, y float64, octaves int) float64 {
	s, amp, f := 0.0, 0.5, 1.0
	for i := 0; i < octaves; i++ {
		s += amp * n.at(x*f, y*f)
		amp *= 0.5
		f *= 2.03
	}
	return s
}

type knot struct{ x, y, rx, ry float64 }

// newBoard paints a board: a base colour that varies between boards, growth
// rings warped by low-frequency noise, fine fibres along the grain, and knots
// that the rings bend around.
func newBoard(rng *rand.Rand, size int) *board {
	bd := &board{size: size, r: make([]float32, size*size), g: make([]float32, size*size), b: make([]float32, size*size), mask: make([]bool, size*size)}
	nz := noise{rng.Uint64()}
	fib := noise{rng.Uint64()}
	base := [3]float64{0.62 + 0.12*rng.Float64(), 0.42 + 0.08*rng.Float64(), 0.24 + 0.06*rng.Float64()}
	dark := [3]float64{base[0] * 0.62, base[1] * 0.55, base[2] * 0.5}
	angle := (rng.Float64() - 0.5) * 0.25
	ca, sa := math.Cos(angle), math.Sin(angle)
	freq := 7 + 6*rng.Float64() // rings across the board
	warpAmp := 0.04 + 0.05*rng.Float64()
	var knots []knot
	for k := rng.IntN(3); k > 0; k-- {
		r := 0.03 + 0.05*rng.Float64()
		knots = append(knots, knot{0.15 + 0.7*rng.Float64(), 0.15 + 0.7*rng.Float64(), r * (1.3 + 0.7*rng.Float64()), r})
	}
	s := float64(size)
	for py := 0; py < size; py++ {
		for px := 0; px < size; px++ {
			x, y := float64(px)/s, float64(py)/s
			u := x*ca + y*sa  // along the grain
			v := -x*sa + y*ca // across
			w := v + warpAmp*nz.fbm(u*2.2, v*1.1, 4)
			ring := 0.0
			for _, k := range knots {
				dx, dy := (x-k.x)/k.rx, (y-k.y)/k.ry
				d := math.Sqrt(dx*dx + dy*dy)
				w += 0.06 * k.ry * math.Exp(-d*d/2) * math.Copysign(1, y-k.y)
				if d < 1 {
					ring = math.Max(ring, (1-d)*(0.6+0.4*math.Sin(d*28)))
				}
			}
			t := 0.5 + 0.5*math.Sin(2*math.Pi*freq*w)
			late := math.Pow(t, 6) // thin dark latewood lines
			fibre := fib.fbm(u*3, v*160, 3)
			mix := math.Min(1, 0.55*late+0.12*fibre+0.1+0.9*ring)
			mix = math.Max(0, mix)
			i := py*size + px
			shade := 1 + 0.04*nz.fbm(u*6+9, v*6, 2)
			bd.r[i] = float32((base[0]*(1-mix) + dark[0]*mix) * shade)
			bd.g[i] = float32((base[1]*(1-mix) + dark[1]*mix) * shade)
			bd.b[i] = float32((base[2]*(1-mix) + dark[2]*mix) * shade)
		}
	}
	return bd
}

// apply changes the pixels where in() holds and marks them in the mask.
func (bd *board) apply(in func(x, y float64) bool, f func(i int, x, y float64)) {
	s := float64(bd.size)
	for py := 0; py < bd.size; py++ {
		for px := 0; px < bd.size; px++ {
			x, y := (float64(px)+0.5)/s, (float64(py)+0.5)/s
			if in(x, y) {
				i := py*bd.size + px
				bd.mask[i] = true
				f(i, x, y)
			}
		}
	}
}

// blob is an ellipse with a noisy edge, at least a few pixels across.
func blob(rng *rand.Rand, rmin, rmax float64) func(x, y float64) bool {
	cx, cy := 0.2+0.6*rng.Float64(), 0.2+0.6*rng.Float64()
	rx := rmin + (rmax-rmin)*rng.Float64()
	ry := rx * (0.5 + 0.8*rng.Float64())
	n := noise{rng.Uint64()}
	return func(x, y float64) bool {
		dx, dy := (x-cx)/rx, (y-cy)/ry
		return dx*dx+dy*dy < 1+0.45*n.fbm(x*18, y*18, 3)
	}
}

func (bd *board) defect(kind string, rng *rand.Rand) {
	px := 1 / float64(bd.size)
	switch kind {
	case "color":
		dr, dg, db := 0.15*(rng.Float64()-0.3), 0.12*(rng.Float64()-0.2), 0.15*rng.Float64()
		bd.apply(blob(rng, 0.06, 0.14), func(i int, _, _ float64) {
			bd.r[i] += float32(dr) - 0.12
			bd.g[i] += float32(dg) - 0.02
			bd.b[i] += float32(db) + 0.05
		})
	case "hole":
		cx, cy := 0.2+0.6*rng.Float64(), 0.2+0.6*rng.Float64()
		r := math.Max(0.015+0.025*rng.Float64(), 4*px)
		bd.apply(func(x, y float64) bool { return math.Hypot(x-cx, y-cy) < r }, func(i int, x, y float64) {
			d := math.Hypot(x-cx, y-cy) / r
			v := float32(0.05 + 0.15*d*d)
			bd.r[i], bd.g[i], bd.b[i] = v*1.1, v*0.9, v*0.7
		})
	case "liquid":
		k := float32(0.55 + 0.15*rng.Float64())
		bd.apply(blob(rng, 0.05, 0.12), func(i int, _, _ float64) {
			bd.r[i] *= k
			bd.g[i] *= k * 0.97
			bd.b[i] *= k * 0.9
		})
	case "scratch":
		x0, y0 := 0.1+0.8*rng.Float64(), 0.1+0.8*rng.Float64()
		a := rng.Float64() * math.Pi
		l := 0.2 + 0.3*rng.Float64()
		x2, y2 := x0+l*math.Cos(a), y0+l*math.Sin(a)
		bend := 0.05 * (rng.Float64() - 0.5)
		x1, y1 := (x0+x2)/2-bend*math.Sin(a), (y0+y2)/2+bend*math.Cos(a)
		half := math.Max(1.5*px, 0.002+0.002*rng.Float64())
		var pts [][2]float64
		for t := 0.0; t <= 1; t += px / l / 2 {
			u := 1 - t
			pts = append(pts, [2]float64{u*u*x0 + 2*u*t*x1 + t*t*x2, u*u*y0 + 2*u*t*y1 + t*t*y2})
		}
		lo, hi := [2]float64{math.Min(x0, x2) - 0.1, math.Min(y0, y2) - 0.1}, [2]float64{math.Max(x0, x2) + 0.1, math.Max(y0, y2) + 0.1}
		bd.apply(func(x, y float64) bool {
			if x < lo[0] || y < lo[1] || x > hi[0] || y > hi[1] {
				return false
			}
			for _, p := range pts {
				if math.Abs(x-p[0]) < half && math.Abs(y-p[1]) < half && math.Hypot(x-p[0], y-p[1]) < half {
					return true
				}
			}
			return false
		}, func(i int, _, _ float64) {
			bd.r[i] = bd.r[i]*0.4 + 0.55
			bd.g[i] = bd.g[i]*0.4 + 0.5
			bd.b[i] = bd.b[i]*0.4 + 0.42
		})
	case "wrinkle":
		cx, cy := 0.25+0.5*rng.Float64(), 0.25+0.5*rng.Float64()
		a := rng.Float64() * math.Pi
		l, wd := 0.15+0.25*rng.Float64(), math.Max(0.015+0.015*rng.Float64(), 3*px)
		ca, sa := math.Cos(a), math.Sin(a)
		bd.apply(func(x, y float64) bool {
			u, v := (x-cx)*ca+(y-cy)*sa, -(x-cx)*sa+(y-cy)*ca
			return math.Abs(u) < l/2 && math.Abs(v) < wd
		}, func(i int, x, y float64) {
			v := (-(x-cx)*sa + (y-cy)*ca) / wd
			s := float32(1 + 0.45*math.Sin(v*math.Pi))
			bd.r[i] *= s
			bd.g[i] *= s
			bd.b[i] *= s
		})
	case "combined":
		kinds := DefectKinds[:5]
		i := rng.IntN(len(kinds))
		j := (i + 1 + rng.IntN(len(kinds)-1)) % len(kinds)
		bd.defect(kinds[i], rng)
		bd.defect(kinds[j], rng)
	}
}

func (bd *board) photo() *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, bd.size, bd.size))
	c := func(v float32) uint8 { return uint8(math.Max(0, math.Min(255, float64(v)*255+0.5))) }
	for i := range bd.r {
		img.Pix[4*i], img.Pix[4*i+1], img.Pix[4*i+2], img.Pix[4*i+3] = c(bd.r[i]), c(bd.g[i]), c(bd.b[i]), 255
	}
	return img
}

func (bd *board) maskImage() *image.Gray {
	img := image.NewGray(image.Rect(0, 0, bd.size, bd.size))
	for i, m := range bd.mask {
		if m {
			img.Pix[i] = 255
		}
	}
	return img
}

type job struct {
	path, maskPath string
	seed           uint64
	kind           string
}

// Generate writes the data set under dir: train/good, test/good, test/<kind>,
// ground_truth/<kind>/<stem>_mask.png. progress, if set, is told of each image.
func Generate(dir string, c Config, progress func(done, total int)) error {
	if c.Size < 32 {
		return fmt.Errorf("synth: size %d is too small (at least 32)", c.Size)
	}
	if c.Train < 0 || c.TestGood < 0 || c.TestDefect < 0 {
		return fmt.Errorf("synth: negative image counts")
	}
	var jobs []job
	seq := rand.New(rand.NewPCG(c.Seed, 77))
	add := func(sub string, n int, kind func(i int) string) {
		for i := 0; i < n; i++ {
			k := kind(i)
			name := fmt.Sprintf("%03d.png", i)
			j := job{seed: seq.Uint64(), kind: k}
			if k == "" {
				j.path = filepath.Join(dir, sub, "good", name)
			} else {
				j.path = filepath.Join(dir, "test", k, name)
				j.maskPath = filepath.Join(dir, "ground_truth", k, fmt.Sprintf("%03d_mask.png", i))
			}
			jobs = append(jobs, j)
		}
	}
	add("train", c.Train, func(int) string { return "" })
	add("test", c.TestGood, func(int) string { return "" })
	counts := map[string]int{}
	for i := 0; i < c.TestDefect; i++ {
		k := DefectKinds[i%len(DefectKinds)]
		name := fmt.Sprintf("%03d", counts[k])
		counts[k]++
		jobs = append(jobs, job{seed: seq.Uint64(), kind: k,
			path:     filepath.Join(dir, "test", k, name+".png"),
			maskPath: filepath.Join(dir, "ground_truth", k, name+"_mask.png")})
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		err  error
		done int
		next = make(chan job)
	)
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				e := j.write(c.Size)
				mu.Lock()
				if e != nil && err == nil {
					err = e
				}
				done++
				if progress != nil {
					progress(done, len(jobs))
				}
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	return err
}

func (j job) write(size int) error {
	rng := rand.New(rand.NewPCG(j.seed, 1))
	bd := newBoard(rng, size)
	if j.maskPath != "" {
		// retry until the defect has pixels (a blob can fall below one pixel)
		for tries := 0; ; tries++ {
			bd.defect(j.kind, rng)
			if hasAny(bd.mask) || tries > 5 {
				break
			}
		}
	}
	for _, p := range []string{j.path, j.maskPath} {
		if p != "" {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
		}
	}
	if err := picture.SavePNG(j.path, bd.photo()); err != nil {
		return err
	}
	if j.maskPath != "" {
		return picture.SavePNG(j.maskPath, bd.maskImage())
	}
	return nil
}

func hasAny(m []bool) bool {
	for _, v := range m {
		if v {
			return true
		}
	}
	return false
}
