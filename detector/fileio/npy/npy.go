// Package npy writes float32 arrays in NumPy's .npy format (version 1.0), so maps
// open with numpy.load, and reads them back.
package npy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/padim/padim/detector/fileio/atomicfile"
)

// WriteFloat32 writes a C-ordered little-endian float32 array of the given shape.
func WriteFloat32(w io.Writer, data []float32, shape ...int) error {
	buf, err := Encode(data, shape...)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

// Encode returns the .npy file of a C-ordered little-endian float32 array of
// the given shape.
func Encode(data []float32, shape ...int) ([]byte, error) {
	n := 1
	dims := make([]string, len(shape))
	for i, d := range shape {
		n *= d
		dims[i] = fmt.Sprint(d)
	}
	if n != len(data) {
		return nil, fmt.Errorf("npy: %d values for shape %v", len(data), shape)
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	header := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", tuple)
	// magic(6) + version(2) + len(2) + header + '\n' padded to a multiple of 64
	pad := 64 - (10+len(header)+1)%64
	header += strings.Repeat(" ", pad%64) + "\n"
	buf := make([]byte, 0, 10+len(header)+4*len(data))
	buf = append(buf, "\x93NUMPY\x01\x00"...)
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(header)))
	buf = append(buf, header...)
	for _, v := range data {
		buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
	}
	return buf, nil
}

var shapeRE = regexp.MustCompile(`'shape':\s*\(([0-9,\s]*)\)`)

// Decode reads a .npy file holding a C-ordered little-endian float32 array
// (format version 1.0 or 2.0) and returns its values and shape.
func Decode(b []byte) ([]float32, []int, error) {
	bad := func(msg string) ([]float32, []int, error) { return nil, nil, errors.New("npy: " + msg) }
	if len(b) < 10 || string(b[:6]) != "\x93NUMPY" {
		return bad("not a .npy file")
	}
	var hl, off int
	switch b[6] {
	case 1:
		hl, off = int(binary.LittleEndian.Uint16(b[8:])), 10
	case 2, 3:
		if len(b) < 12 {
			return bad("truncated header")
		}
		hl, off = int(binary.LittleEndian.Uint32(b[8:])), 12
	default:
		return bad(fmt.Sprintf("format version %d", b[6]))
	}
	if hl > len(b)-off {
		return bad("truncated header")
	}
	header := string(b[off : off+hl])
	if !strings.Contains(header, "'descr': '<f4'") || !strings.Contains(header, "'fortran_order': False") {
		return bad(fmt.Sprintf("want a C-ordered little-endian float32 array, header %q", header))
	}
	m := shapeRE.FindStringSubmatch(header)
	if m == nil {
		return bad(fmt.Sprintf("no shape in header %q", header))
	}
	shape := []int{}
	n := int64(1)
	for _, f := range strings.Split(m[1], ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		d, err := strconv.Atoi(f)
		if err != nil || d < 0 || d > len(b) {
			return bad(fmt.Sprintf("shape %q", m[1]))
		}
		shape = append(shape, d)
		if n *= int64(d); n > int64(len(b)) {
			return bad(fmt.Sprintf("shape %v does not fit the file", shape))
		}
	}
	data := b[off+hl:]
	if int64(len(data)) != 4*n {
		return bad(fmt.Sprintf("%d data bytes for shape %v (want %d)", len(data), shape, 4*n))
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
	}
	return v, shape, nil
}

// Save writes the array to path atomically.
func Save(path string, data []float32, shape ...int) error {
	return atomicfile.Write(path, func(w io.Writer) error { return WriteFloat32(w, data, shape...) })
}
