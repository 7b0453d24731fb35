package npy

import (
	"bytes"
	"encoding/binary"
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
