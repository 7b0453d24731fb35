package npy

import (
	"math"
	"slices"
	"testing"
)

// Decode never panics, never allocates beyond what the bytes can hold, and
// what it accepts has as many values as its shape says and encodes back to
// the same array.
func FuzzDecode(f *testing.F) {
	for _, c := range []struct {
		v     []float32
		shape []int
	}{{[]float32{1, 2, 3, 4, 5, 6}, []int{2, 3}}, {[]float32{float32(math.NaN()), -0, 7}, []int{3}}, {nil, []int{0, 4}}, {[]float32{9}, nil}} {
		b, err := Encode(c.v, c.shape...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])   // data cut short
		f.Add(b[:len(b)/3+5]) // header cut short
	}
	f.Add([]byte("\x93NUMPY\x02\x00\x10\x00\x00\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n\x00\x00\x80\x3f"))
	f.Add([]byte("\x93NUMPY\x01\x00\x40\x00{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999,), }"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, shape, err := Decode(b)
		if err != nil {
			return
		}
		n := 1
		for _, d := range shape {
			n *= d
		}
		if len(v) != n || 4*len(v) > len(b) {
			t.Fatalf("%d values for shape %v from %d bytes", len(v), shape, len(b))
		}
		again, err := Encode(v, shape...)
		if err != nil {
			t.Fatalf("Encode of a decoded array: %v", err)
		}
		v2, shape2, err := Decode(again)
		if err != nil || !slices.Equal(shape, shape2) || len(v2) != len(v) {
			t.Fatalf("round trip: %v %v vs %v", err, shape2, shape)
		}
		for i := range v {
			if math.Float32bits(v[i]) != math.Float32bits(v2[i]) {
				t.Fatalf("value %d: %x vs %x", i, math.Float32bits(v[i]), math.Float32bits(v2[i]))
			}
		}
	})
}
