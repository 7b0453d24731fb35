package libdeflate

import (
	"bytes"
	"compress/zlib"
	"errors"
	"io"
	"testing"
)

func deflated(t testing.TB, b []byte, level int) []byte {
	var z bytes.Buffer
	zw, err := zlib.NewWriterLevel(&z, level)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(b)
	zw.Close()
	return z.Bytes()
}

// goInflate is Inflate by Go's compress/zlib: the reference.
func goInflate(dst, src []byte) (int, error) {
	br := bytes.NewReader(src)
	zr, err := zlib.NewReader(br)
	if err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(zr, dst); err != nil {
		return 0, err
	}
	var one [1]byte
	if n, err := zr.Read(one[:]); n != 0 || err != io.EOF {
		return 0, errors.New("more data, or a bad checksum")
	}
	return len(src) - br.Len(), nil
}

// Inflate fills dst exactly, says where the stream ends, and refuses a
// stream of the wrong size or a damaged one.
func TestInflate(t *testing.T) {
	if !Available {
		t.Skip("libdeflate is not in this build (go test -tags libdeflate; Debian: libdeflate-dev)")
	}
	want := bytes.Repeat([]byte("padim camera frame "), 5000)
	for _, level := range []int{zlib.NoCompression, zlib.BestSpeed, zlib.DefaultCompression, zlib.BestCompression} {
		z := deflated(t, want, level)
		got := make([]byte, len(want))
		used, err := Inflate(got, append(z, "trailing"...))
		if err != nil || used != len(z) || !bytes.Equal(got, want) {
			t.Fatalf("level %d: used %d of %d, %v", level, used, len(z), err)
		}
		if _, err := Inflate(make([]byte, len(want)-1), z); err != ErrSize {
			t.Fatalf("level %d, one byte short: %v", level, err)
		}
		if _, err := Inflate(make([]byte, len(want)+1), z); err != ErrSize {
			t.Fatalf("level %d, one byte over: %v", level, err)
		}
		bad := append([]byte(nil), z...)
		bad[len(bad)-1] ^= 1 // Adler-32
		if _, err := Inflate(got, bad); err != ErrData {
			t.Fatalf("level %d, bad checksum: %v", level, err)
		}
		if _, err := Inflate(got, z[:len(z)-5]); err == nil {
			t.Fatalf("level %d, truncated: accepted", level)
		}
	}
	if _, err := Inflate(nil, nil); err != ErrData {
		t.Fatalf("empty input: %v", err)
	}
}

// Where libdeflate inflates a stream, Go's compress/zlib inflates it to the
// same bytes, ending at the same place.
func FuzzInflate(f *testing.F) {
	f.Add(deflated(f, []byte("hello, hello, hello camera"), zlib.BestCompression), uint16(26))
	f.Add(deflated(f, bytes.Repeat([]byte{7, 9}, 300), zlib.BestSpeed), uint16(600))
	f.Add(deflated(f, nil, zlib.DefaultCompression), uint16(0))
	f.Fuzz(func(t *testing.T, src []byte, n uint16) {
		if !Available {
			t.Skip("libdeflate is not in this build (go test -tags libdeflate)")
		}
		got := make([]byte, n)
		used, err := Inflate(got, src)
		if err != nil {
			return
		}
		want := make([]byte, n)
		wused, werr := goInflate(want, src)
		if werr != nil {
			t.Fatalf("libdeflate inflated what compress/zlib refuses: %v", werr)
		}
		if used != wused || !bytes.Equal(got, want) {
			t.Fatalf("libdeflate: %d bytes used, compress/zlib %d; same output %v", used, wused, bytes.Equal(got, want))
		}
	})
}
