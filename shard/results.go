package shard

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/detector/fileio/readfile"
)

// Common are the fields every per-shard result record starts with.
type Common struct {
	Index       int      `json:"index"`        // position in the whole input list
	Key         string   `json:"key"`          // the split key (path relative to the data root)
	ModelSHA256 string   `json:"model_sha256"` // sha256 of the model file that scored it
	Settings    string   `json:"settings"`     // hash of the scoring settings (thresholds, opening, maps)
	Pixels      *BlobRef `json:"pixels,omitempty"`
}

// BlobRef locates an image's exact pixel material (eval: map and mask) in a
// block file beside the results.
type BlobRef struct {
	Block  string `json:"block"` // relative to the results folder
	Offset int64  `json:"offset"`
	Bytes  int64  `json:"bytes"`
	CRC32  uint32 `json:"crc32"` // IEEE, of the bytes
}

// Identity says what a shard's results are of; every record and the shard's
// completion marker carry it, and collect checks that all shards agree.
type Identity struct {
	Command     string         `json:"command"` // "score" or "eval"
	ModelSHA256 string         `json:"model_sha256"`
	Settings    string         `json:"settings"`
	ListHash    string         `json:"list_hash"` // the whole input list's (ListHash)
	Total       int            `json:"n_total"`   // inputs in the whole list
	Extra       map[string]any `json:"extra,omitempty"`
}

// Marker is the completion marker of one shard, written once every input of
// the shard has a record.
type Marker struct {
	Identity
	Shard    string    `json:"shard"` // "I/N"
	Index    int       `json:"index"`
	Count    int       `json:"count"`
	Inputs   int       `json:"n_shard"`   // inputs of this shard
	Records  int       `json:"n_records"` // = Inputs
	Errors   int       `json:"n_errors"`  // records of unreadable inputs
	Finished time.Time `json:"finished"`
}

// Flush policy of Results: a block is flushed when FlushEvery records are
// pending (when set), else when at least max(flushMin, written/flushFraction)
// are, or flushInterval has passed since the last flush, or the pending pixel
// material reaches flushMaxBlob. The file is rewritten on every flush, so the
// growing blocks keep the total rewriting linear in the file's size, and a
// killed run loses at most the pending block.
const (
	flushMin      = 16
	flushFraction = 8
	flushInterval = 30 * time.Second
	flushMaxBlob  = 64 << 20
)

// Results is one shard's resumable result file, OUT/results-I-of-N.jsonl:
// one JSON record per input, always a complete file (every flush writes a
// temporary file and renames it over the last one), with the records of a
// previous run of the same shard kept and their inputs skipped.
type Results struct {
	Path       string // OUT/results-I-of-N.jsonl
	dir        string
	spec       Spec
	id         Identity
	FlushEvery int // records per block; 0: the adaptive policy

	done      map[string]bool // keys with a good record on file
	written   int             // records on file
	errs      int             // records of unreadable inputs (pending or written)
	pending   [][]byte
	blob      []byte
	seq       int // next block number
	lastFlush time.Time
	lock      *atomicfile.Lock
}

// ResultsPath is a shard's result file in dir.
func ResultsPath(dir string, s Spec) string {
	return filepath.Join(dir, "results-"+s.Name()+".jsonl")
}

// MarkerPath is a shard's completion marker in dir.
func MarkerPath(dir string, s Spec) string {
	return filepath.Join(dir, "results-"+s.Name()+".done")
}

func blockDir(s Spec) string { return "maps-" + s.Name() }

// ErrMismatch is wrapped by OpenResults' refusal to mix results of another
// model, other settings or another input list into a shard's file.
var ErrMismatch = errors.New("the results on file are of another run")

// ErrDamaged is wrapped by the refusal of a results file that is not as
// padim wrote it: cut short, or a record changed (its checksum fails).
var ErrDamaged = errors.New("the results file is damaged")

// ErrRunning is wrapped by OpenResults' refusal of a shard that another
// process is running now (it holds the shard's lock).
var ErrRunning = errors.New("the shard is already running")

// checkField ends every record: a checksum of the record without it (the
// first 16 bytes of its SHA-256, hex), so that a record changed after padim
// wrote it is caught on resume and by collect.
const checkField = `,"check":"`

// seal appends the checksum field to a marshalled record (a JSON object).
func seal(b []byte) []byte {
	sum := sha256.Sum256(b)
	out := make([]byte, 0, len(b)+len(checkField)+34)
	out = append(out, b[:len(b)-1]...)
	out = append(out, checkField...)
	out = append(out, hex.EncodeToString(sum[:16])...)
	return append(out, '"', '}')
}

// unseal checks a record's checksum field.
func unseal(line []byte) error {
	n := len(checkField) + 32 + 2
	if len(line) < n+2 || !bytes.Equal(line[len(line)-n:len(line)-34], []byte(checkField)) || !bytes.HasSuffix(line, []byte(`"}`)) {
		return errors.New("it has no checksum (written by an older padim, or by hand)")
	}
	body := append(slices.Clone(line[:len(line)-n]), '}')
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:16]) != string(line[len(line)-34:len(line)-2]) {
		return errors.New("it was changed after padim wrote it (its checksum does not match)")
	}
	return nil
}

// checkLines checks the records of a results file (b, its bytes): each line
// a record with a valid checksum. A last line without its newline that
// fails is the file cut short.
func checkLines(path string, b []byte, fn func(n int, line []byte) error) error {
	n := 0
	for len(b) > 0 {
		n++
		i := bytes.IndexByte(b, '\n')
		line := b
		if i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if err := unseal(line); err != nil {
			if i < 0 {
				return fmt.Errorf("%w: %s is cut short in line %d (truncated: a full disk, or a copy that stopped early)", ErrDamaged, path, n)
			}
			return fmt.Errorf("%w: %s line %d: %v", ErrDamaged, path, n, err)
		}
		if err := fn(n, line); err != nil {
			return err
		}
	}
	return nil
}

// OpenResults opens a shard's result file in dir for this run: keys maps
// each input of the shard to its index in the whole list. Records of a
// previous run are kept when they match the identity and the inputs (records
// of unreadable inputs are dropped, to be tried again); a mismatch is
// refused (ErrMismatch). With restart the shard's old results are removed
// first. note says what was found.
func OpenResults(dir string, spec Spec, id Identity, keys map[string]int, restart bool) (res *Results, note string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	r := &Results{Path: ResultsPath(dir, spec), dir: dir, spec: spec, id: id, done: map[string]bool{}, lastFlush: time.Now()}
	// one process per shard: a second would interleave its records with
	// the first's (the system releases a killed holder's lock)
	lock, stale, err := atomicfile.Acquire(r.Path)
	if err != nil {
		var he *atomicfile.HeldError
		if errors.As(err, &he) {
			pid := ""
			if he.PID > 0 {
				pid = fmt.Sprintf(" (pid %d)", he.PID)
			}
			return nil, "", fmt.Errorf("%w: shard %s is already running%s: %s is locked by it; wait for it to finish, or stop it first", ErrRunning, spec, pid, r.Path)
		}
		return nil, "", err
	}
	r.lock = lock
	defer func() {
		if err != nil {
			lock.Release()
		}
	}()
	var lockNote string
	if stale > 0 {
		lockNote = fmt.Sprintf("shard %s was last run by process %d, which is gone (killed?): its lock is taken over", spec, stale)
	}
	defer func() {
		if lockNote != "" {
			note = strings.TrimPrefix(note+"; "+lockNote, "; ")
		}
	}()
	var kept []loaded
	var dropped int
	if restart {
		// start over: this shard's previous results and pixel blocks go
		if _, err := os.Stat(r.Path); err == nil {
			note = fmt.Sprintf("starting %s over (--restart): its previous results are discarded", r.Path)
		}
		if err := os.Remove(r.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, "", err
		}
		if err := os.RemoveAll(filepath.Join(dir, blockDir(spec))); err != nil {
			return nil, "", err
		}
	} else {
		var err error
		if kept, dropped, note, err = r.load(keys); err != nil {
			return nil, "", err
		}
	}
	// a rerun is not complete until it says so (a refused one leaves the
	// marker: nothing changed)
	if err := os.Remove(MarkerPath(dir, spec)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, "", err
	}
	r.done = map[string]bool{}
	refs := map[string]bool{}
	for _, k := range kept {
		r.done[k.Key] = true
		if k.Pixels != nil {
			refs[k.Pixels.Block] = true
		}
	}
	if err := r.tidyBlocks(refs); err != nil {
		return nil, "", err
	}
	r.written = len(kept)
	if dropped > 0 {
		// rewrite now without what was dropped
		lines := make([][]byte, len(kept))
		for i, k := range kept {
			lines[i] = k.line
		}
		if err := atomicfile.Write(r.Path, func(w io.Writer) error {
			for _, l := range lines {
				if _, err := w.Write(append(l, '\n')); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, "", err
		}
	}
	return r, note, nil
}

type loaded struct {
	Common
	Error string `json:"error"`
	line  []byte
}

// Close releases the shard's lock (a process's exit does too).
func (r *Results) Close() {
	r.lock.Release()
	r.lock = nil
}

// load reads the records of a previous run.
func (r *Results) load(keys map[string]int) (kept []loaded, dropped int, note string, err error) {
	b, err := readfile.ReadFile(r.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, "", nil
	}
	if err != nil {
		return nil, 0, "", err
	}
	seen := map[string]bool{}
	err = checkLines(r.Path, b, func(n int, l []byte) error {
		line := slices.Clone(l)
		var rec loaded
		if err := json.Unmarshal(line, &rec); err != nil {
			return fmt.Errorf("%w: %s line %d is not a result record (%v)", ErrDamaged, r.Path, n, err)
		}
		switch idx, ok := keys[rec.Key]; {
		case rec.ModelSHA256 != r.id.ModelSHA256:
			return fmt.Errorf("%w: %s holds results of the model with sha256 %.12s…, this run's model is %.12s…", ErrMismatch, r.Path, rec.ModelSHA256, r.id.ModelSHA256)
		case rec.Settings != r.id.Settings:
			return fmt.Errorf("%w: %s holds results scored with other settings (thresholds, opening or maps: %s, now %s)", ErrMismatch, r.Path, rec.Settings, r.id.Settings)
		case !ok || idx != rec.Index:
			return fmt.Errorf("%w: %s holds %s at position %d, which this run's input list does not have there (the inputs changed)", ErrMismatch, r.Path, rec.Key, rec.Index)
		case seen[rec.Key]:
			return fmt.Errorf("%w: %s holds %s twice", ErrDamaged, r.Path, rec.Key)
		}
		seen[rec.Key] = true
		if rec.Error != "" {
			dropped++
			return nil
		}
		if rec.Pixels != nil && !r.blobOK(rec.Pixels) {
			dropped++ // its pixel block is gone or damaged: score it again
			return nil
		}
		rec.line = line
		kept = append(kept, rec)
		return nil
	})
	if err != nil {
		return nil, 0, "", err
	}
	note = fmt.Sprintf("resuming %s: %d of the shard's %d inputs already done", r.Path, len(kept), len(keys))
	if dropped > 0 {
		note += fmt.Sprintf(", %d tried again", dropped)
	}
	return kept, dropped, note, nil
}

// blobOK checks a record's pixel material on disk.
func (r *Results) blobOK(ref *BlobRef) bool {
	b, err := ReadBlob(r.dir, ref)
	return err == nil && b != nil
}

// ReadBlob reads and checks the pixel material a record points to.
func ReadBlob(dir string, ref *BlobRef) ([]byte, error) {
	if strings.Contains(ref.Block, "..") || filepath.IsAbs(ref.Block) {
		return nil, fmt.Errorf("block %q is outside the results folder", ref.Block)
	}
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(ref.Block)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if ref.Bytes < 0 || ref.Bytes > 1<<34 || ref.Offset < 0 {
		return nil, fmt.Errorf("block %s: bad extent %d+%d", ref.Block, ref.Offset, ref.Bytes)
	}
	b := make([]byte, ref.Bytes)
	if _, err := f.ReadAt(b, ref.Offset); err != nil {
		return nil, fmt.Errorf("block %s: %w", ref.Block, err)
	}
	if crc32.ChecksumIEEE(b) != ref.CRC32 {
		return nil, fmt.Errorf("block %s at %d: checksum mismatch", ref.Block, ref.Offset)
	}
	return b, nil
}

// tidyBlocks removes block files no kept record points to (written by a run
// killed before its records were) and sets the next block number.
func (r *Results) tidyBlocks(refs map[string]bool) error {
	bd := blockDir(r.spec)
	ents, err := os.ReadDir(filepath.Join(r.dir, bd))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		num, ok := strings.CutSuffix(name, ".bin")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			continue
		}
		r.seq = max(r.seq, v+1)
		if !refs[bd+"/"+name] {
			os.Remove(filepath.Join(r.dir, bd, name))
		}
	}
	return nil
}

// Done reports whether the input with this key already has a good record.
func (r *Results) Done(key string) bool { return r.done[key] }

// Written is the number of records on file.
func (r *Results) Written() int { return r.written }

// AddBlob queues pixel material for the next flush and returns where it will be.
func (r *Results) AddBlob(b []byte) *BlobRef {
	ref := &BlobRef{Block: fmt.Sprintf("%s/%06d.bin", blockDir(r.spec), r.seq), Offset: int64(len(r.blob)), Bytes: int64(len(b)), CRC32: crc32.ChecksumIEEE(b)}
	r.blob = append(r.blob, b...)
	return ref
}

// Add queues one record (a JSON object whose first fields are Common's);
// failed marks the record of an unreadable input. It flushes by the policy.
func (r *Results) Add(rec any, failed bool) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	r.pending = append(r.pending, seal(b))
	if failed {
		r.errs++
	}
	np := len(r.pending)
	switch {
	case r.FlushEvery > 0:
		if np >= r.FlushEvery {
			return r.Flush()
		}
	case np >= max(flushMin, r.written/flushFraction), time.Since(r.lastFlush) >= flushInterval, len(r.blob) >= flushMaxBlob:
		return r.Flush()
	}
	return nil
}

// Flush writes the pending block: its pixel material first, then the result
// file with the block appended, through a temporary file renamed over it.
func (r *Results) Flush() error {
	if len(r.pending) == 0 {
		return nil
	}
	if len(r.blob) > 0 {
		p := filepath.Join(r.dir, blockDir(r.spec), fmt.Sprintf("%06d.bin", r.seq))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		// a stopping shard still flushes (WriteWhileStopping): its rerun resumes
		if err := atomicfile.WriteWhileStopping(p, func(w io.Writer) error { _, err := w.Write(r.blob); return err }); err != nil {
			return err
		}
	}
	err := atomicfile.WriteWhileStopping(r.Path, func(w io.Writer) error {
		if f, err := readfile.Open(r.Path); err == nil {
			_, err = io.Copy(w, f)
			f.Close()
			if err != nil {
				return err
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		for _, l := range r.pending {
			if _, err := w.Write(append(l, '\n')); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	r.written += len(r.pending)
	r.pending, r.blob = r.pending[:0], r.blob[:0]
	r.seq++
	r.lastFlush = time.Now()
	return nil
}

// Finish flushes what is pending and writes the completion marker: inputs is
// the number of the shard's inputs, errors those of them that were unreadable
// in this run or before.
func (r *Results) Finish(inputs int) (*Marker, error) {
	if err := r.Flush(); err != nil {
		return nil, err
	}
	if r.written != inputs {
		return nil, fmt.Errorf("%s holds %d records for the shard's %d inputs", r.Path, r.written, inputs)
	}
	if _, err := os.Stat(r.Path); errors.Is(err, os.ErrNotExist) { // an empty shard still says it is done
		if err := atomicfile.Write(r.Path, func(io.Writer) error { return nil }); err != nil {
			return nil, err
		}
	}
	m := &Marker{Identity: r.id, Shard: r.spec.String(), Index: r.spec.Index, Count: r.spec.Count, Inputs: inputs, Records: r.written, Errors: r.errs, Finished: time.Now().UTC().Truncate(time.Second)}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return m, atomicfile.Write(MarkerPath(r.dir, r.spec), func(w io.Writer) error { _, err := w.Write(append(b, '\n')); return err })
}
