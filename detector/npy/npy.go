// Package npy writes float32 arrays in NumPy's .npy format (version 1.0), so maps
// open with numpy.load.
package npy

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/padim/padim/detector/atomicfile"
)

// WriteFloat32 writes a C-ordered little-endian float32 array of the given shape.
func WriteFloat32(w io.Writer, data []float32, shape ...int) error {
	n := 1
	dims := make([]string, len(shape))
	for i, d := range shape {
		n *= d
		dims[i] = fmt.Sprint(d)
	}
	if n != len(data) {
		return fmt.Errorf("npy: %d values for shape %v", len(data), shape)
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
	_, err := w.Write(buf)
	return err
}

// Save writes the array to path atomically.
func Save(path string, data []float32, shape ...int) error {
	return atomicfile.Write(path, func(w io.Writer) error { return WriteFloat32(w, data, shape...) })
}
