// Package shard splits padim's work across machines and puts it back
// together: a stable split of inputs by a hash of their path (Spec, Of), the
// shard index from a batch system's environment (Parse), explicit input lists
// (ReadManifest), resumable per-shard result files (Results), their merge
// (Collect) and the calibration of a sharded fit (calib.go).
package shard

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// MaxCount bounds the number of shards.
const MaxCount = 1 << 16

// IndexEnv are the environment variables that carry a shard's index, in the
// order they are read by --shard auto/N: Kubernetes Indexed Jobs, AWS Batch
// array jobs, Slurm job arrays.
var IndexEnv = []string{"JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX", "SLURM_ARRAY_TASK_ID"}

// Spec is one shard of a split: Index of Count, 0 ≤ Index < Count.
type Spec struct {
	Index, Count int
	From         string // where the index came from: "flag" or an environment variable
}

// String is "I/N".
func (s Spec) String() string { return fmt.Sprintf("%d/%d", s.Index, s.Count) }

// Name is "I-of-N", the shard's part of file names.
func (s Spec) Name() string { return fmt.Sprintf("%d-of-%d", s.Index, s.Count) }

// UsageError is a bad shard value ("I/N", "auto/N") or index environment:
// the caller's input is wrong, not the machine.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, a ...any) error { return &UsageError{fmt.Sprintf(format, a...)} }

// Parse reads "I/N", or "auto/N" with the index from the first of IndexEnv
// that is set (getenv is os.Getenv in the command).
func Parse(s string, getenv func(string) string) (Spec, error) {
	i, n, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Spec{}, usagef("%q: want I/N (0 ≤ I < N) or auto/N", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count < 1 || count > MaxCount {
		return Spec{}, usagef("%q: the shard count N must be a whole number in [1, %d]", s, MaxCount)
	}
	if i == "auto" {
		for _, name := range IndexEnv {
			v := strings.TrimSpace(getenv(name))
			if v == "" {
				continue
			}
			idx, err := strconv.Atoi(v)
			if err != nil {
				return Spec{}, usagef("auto/%d: $%s=%q is not a whole number", count, name, v)
			}
			if idx < 0 || idx >= count {
				hint := ""
				if name == "SLURM_ARRAY_TASK_ID" {
					hint = fmt.Sprintf(" (submit the array as --array=0-%d)", count-1)
				}
				return Spec{}, usagef("auto/%d: $%s=%d is outside [0, %d]: the job's index range and N disagree%s", count, name, idx, count-1, hint)
			}
			return Spec{Index: idx, Count: count, From: name}, nil
		}
		return Spec{}, usagef("auto/%d: none of $%s is set (run it as an indexed job, or give the index: I/%d)", count, strings.Join(IndexEnv, ", $"), count)
	}
	idx, err := strconv.Atoi(i)
	if err != nil || idx < 0 || idx >= count {
		return Spec{}, usagef("%q: the index I must be a whole number in [0, %d]", s, count-1)
	}
	return Spec{Index: idx, Count: count, From: "flag"}, nil
}

// Of returns the shard, of n, that holds the input with this key (its path
// relative to the data root, with forward slashes): a jump consistent hash
// (Lamping & Veach) of the key's SHA-256. An input's shard depends only on
// its own key and n, so adding or removing inputs never moves another one;
// going from n to n+1 shards moves about 1/(n+1) of them.
func Of(key string, n int) int {
	sum := sha256.Sum256([]byte(key))
	return jump(binary.LittleEndian.Uint64(sum[:8]), n)
}

func jump(key uint64, n int) int {
	var b, j int64 = -1, 0
	for j < int64(n) {
		b = j
		key = key*2862933555777941757 + 1
		j = int64(float64(b+1) * (float64(int64(1)<<31) / float64((key>>33)+1)))
	}
	return int(b)
}

// Holds reports whether the input with this key belongs to the shard.
func (s Spec) Holds(key string) bool { return Of(key, s.Count) == s.Index }

// Key is the split key of path below root: the relative path with forward
// slashes (root "" or a path outside root: the cleaned path itself).
func Key(root, path string) string {
	if root != "" {
		if rel, err := filepath.Rel(root, path); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return filepath.ToSlash(rel)
		}
	}
	return filepath.ToSlash(filepath.Clean(path))
}

// Select returns the positions, in keys, of the shard's inputs.
func (s Spec) Select(keys []string) []int {
	var idx []int
	for i, k := range keys {
		if s.Holds(k) {
			idx = append(idx, i)
		}
	}
	return idx
}

// ListHash identifies a whole input list (every shard of a run must agree on it).
func ListHash(keys []string) string {
	h := sha256.New()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%x", h.Sum(nil))[:32]
}
