package npy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"testing"
)

func TestHeaderAlignedAndData(t *testing.T) {
	var b bytes.Buffer
	if err := WriteFloat32(&b, []float32{1, 2, 3, 4, 5, 6}, 2, 3); err != nil {
		t.Fatal(err)
	}
	raw := b.Bytes()
	if string(raw[:8]) != "\x93NUMPY\x01\x00" {
		t.Fatal("magic")
	}
	hl := int(binary.LittleEndian.Uint16(raw[8:]))
	if (10+hl)%64 != 0 || raw[10+hl-1] != '\n' {
		t.Fatalf("header length %d not aligned", hl)
	}
	if !bytes.Contains(raw[:10+hl], []byte("'shape': (2, 3)")) {
		t.Fatalf("header %q", raw[10:10+hl])
	}
	if math.Float32frombits(binary.LittleEndian.Uint32(raw[10+hl+20:])) != 6 {
		t.Fatal("data")
	}
	if err := WriteFloat32(&b, []float32{1}, 2); err == nil {
		t.Fatal("shape mismatch accepted")
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, shape := range [][]int{{5}, {2, 3}, {2, 1, 3}} {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(i)*0.25 - 1
		}
		v[0] = float32(math.Inf(1))
		b, err := Encode(v, shape...)
		if err != nil {
			t.Fatal(err)
		}
		got, gs, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(gs) != fmt.Sprint(shape) || fmt.Sprint(got) != fmt.Sprint(v) {
			t.Fatalf("shape %v → %v, values %v → %v", shape, gs, v, got)
		}
	}
}

func TestDecodeRefusesBadFiles(t *testing.T) {
	good, _ := Encode([]float32{1, 2, 3, 4}, 2, 2)
	cases := map[string][]byte{
		"empty":     nil,
		"magic":     append([]byte("\x93NUMPX"), good[6:]...),
		"truncated": good[:len(good)-1],
		"long":      append(append([]byte{}, good...), 0),
		"dtype":     bytes.Replace(good, []byte("<f4"), []byte("<f8"), 1),
		"header":    good[:20],
	}
	for name, b := range cases {
		if _, _, err := Decode(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
