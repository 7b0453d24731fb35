package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// FuzzParseTriple: --mean/--std parse exactly the strings of three
// comma-separated numbers, and what they parse prints back to the same values.
func FuzzParseTriple(f *testing.F) {
	for _, s := range []string{"0.485,0.456,0.406", " 1, 2 ,3 ", "1,2", "1,2,3,4", "a,b,c", "NaN,1,1", "1e40,0,0", ",,", "0x1p-2,1,1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseTriple(s)
		if strings.Count(s, ",") != 2 {
			if err == nil {
				t.Fatalf("%q: accepted without three parts", s)
			}
			return
		}
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", s)) {
				t.Fatalf("%q: the error does not name the value: %v", s, err)
			}
			return
		}
		back, err := parseTriple(fmt.Sprintf("%v,%v,%v", v[0], v[1], v[2]))
		if err != nil {
			t.Fatalf("%q parsed to %v, which does not parse back: %v", s, v, err)
		}
		for i := range v {
			if back[i] != v[i] && !(math.IsNaN(float64(v[i])) && math.IsNaN(float64(back[i]))) {
				t.Fatalf("%q: %v, printed and parsed again %v", s, v, back)
			}
		}
	})
}
