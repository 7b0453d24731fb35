package safetensors

import (
	"encoding/binary"
	"fmt"
	"runtime"

	"github.com/padim/padim/detector/fileio/readfile"
)

// mapping is a file mapped read-only into memory; it is unmapped when the last
// File (or anything holding Keep) that refers to it becomes unreachable.
type mapping struct {
	data []byte
}

// Keep returns a value that keeps the file's memory alive: whoever keeps
// tensor data beyond the File must keep this too (nil for files read into Go
// memory).
func (f *File) Keep() any {
	if f.mapping == nil {
		return nil
	}
	return f.mapping
}

// Map opens path like Read, but maps the file into memory instead of copying
// it: loading a large model costs no more than hashing it. The tensors' data is
// read-only (writing to it crashes the process) and stays valid while the File
// or its Keep value is reachable. The file must not be truncated or rewritten
// in place while mapped (padim replaces files atomically, by rename, which is
// safe). Where mapping is not possible it falls back to Read.
func Map(path string, requireChecksum bool) (*File, error) {
	f, err := readfile.Open(path) // a FIFO or a folder is refused, not waited on
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < 8 || !st.Mode().IsRegular() || int64(int(size)) != size {
		return Read(path, requireChecksum)
	}
	data, err := mmap(f, size)
	if err != nil {
		return Read(path, requireChecksum)
	}
	m := &mapping{data: data}
	runtime.AddCleanup(m, func(d []byte) { munmap(d) }, data)
	file, err := parseMapped(m, requireChecksum)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return file, nil
}

func parseMapped(m *mapping, requireChecksum bool) (*File, error) {
	b := m.data
	size := int64(len(b))
	hl := binary.LittleEndian.Uint64(b[:8])
	if err := checkHeaderLength(hl, size); err != nil {
		return nil, err
	}
	ents, md, err := parseHeader(b[8:8+hl], size-8-int64(hl))
	if err != nil {
		return nil, err
	}
	file, err := assemble(md, ents, b[8+hl:], requireChecksum)
	if err != nil {
		return nil, err
	}
	file.mapping = m
	return file, nil
}
