package job

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"

	"golang.org/x/sync/semaphore"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/shard"
)

// A stream of requests (score --stdin-jsonl): a filter for stream
// processors (Spark's RDD.pipe(), a shell pipeline, any job that feeds lines
// to a process and reads lines back). Each input line is one request; each
// gets exactly one output line, in the same order, and the output is flushed
// as soon as the requests that have arrived are scored, so a caller may also
// send one line and wait.

// StreamRequest is one input line.
type StreamRequest struct {
	ID   json.RawMessage `json:"id,omitempty"`   // echoed in the result
	Path string          `json:"path,omitempty"` // an image file
	Data string          `json:"data,omitempty"` // or the image's bytes, base64 (standard encoding)
	Name string          `json:"name,omitempty"` // a name for data in messages and the result (default "line N")
}

// StreamResult is one output line.
type StreamResult struct {
	ID   json.RawMessage `json:"id,omitempty"`
	Line int             `json:"line"` // the request's line number (1-based)
	shard.ScoredImage
}

// MaxStreamLine bounds one request line (a base64 image of up to 48 MiB): a
// longer one is read to its end without being kept and answered with an
// error line.
const MaxStreamLine = 64 << 20

// StreamReadAhead bounds the bytes of request lines read ahead of the
// scoring (besides the line being read): the stream's memory does not grow
// with a fast producer's lines.
const StreamReadAhead = 64 << 20

// StreamConfig is a stream of requests in and results out.
type StreamConfig struct {
	Scorer *detector.Scorer
	In     io.Reader
	InName string // what In is, for messages ("stdin")
	Out    io.Writer
}

// streamLine is one request line read.
type streamLine struct {
	n      int
	text   []byte
	long   int64 // the length of an over-long line (text is nil)
	weight int64 // its share of the read-ahead budget
}

// Stream answers each request line of cfg.In with a result line on
// cfg.Out until the input ends or ctx is done (a signal ends the wait for
// the next request); it returns the number of requests answered with an
// error.
func Stream(ctx context.Context, cfg StreamConfig) (int, error) {
	ahead := semaphore.NewWeighted(StreamReadAhead)
	lines := make(chan streamLine, 1024) // bounded by ahead's bytes; the count only bounds empty lines
	readErr := make(chan error, 1)
	go readRequests(ctx, cfg.In, cfg.InName, ahead, lines, readErr)
	out := bufio.NewWriterSize(cfg.Out, 1<<16)
	enc := json.NewEncoder(out)
	maxBatch := 4 * cfg.Scorer.Pipeline().Batch()
	nBad := 0
	for {
		var first streamLine
		var ok bool
		select {
		case first, ok = <-lines:
		case <-ctx.Done():
			return nBad, ctx.Err()
		}
		if !ok {
			break
		}
		batch := drain(first, lines, maxBatch)
		results, bad, err := answer(ctx, cfg.Scorer, batch)
		nBad += bad
		if err != nil {
			return nBad, err
		}
		for _, l := range batch {
			ahead.Release(l.weight)
		}
		for _, r := range results {
			if err := enc.Encode(r); err != nil {
				return nBad, err
			}
		}
		if err := out.Flush(); err != nil {
			return nBad, err
		}
	}
	select {
	case err := <-readErr:
		return nBad, err
	default:
	}
	return nBad, ctx.Err()
}

// readRequests reads request lines into lines, within the read-ahead budget.
func readRequests(ctx context.Context, in io.Reader, name string, ahead *semaphore.Weighted, lines chan<- streamLine, readErr chan<- error) {
	defer close(lines)
	br := bufio.NewReaderSize(in, 1<<20)
	for n := 1; ; n++ {
		b, long, err := shard.ReadLine(br, MaxStreamLine)
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
		if len(b) > 0 || long > 0 || err == nil {
			w := min(int64(len(b)), StreamReadAhead)
			if err := ahead.Acquire(ctx, w); err != nil {
				return
			}
			select {
			case lines <- streamLine{n: n, text: b, long: long, weight: w}:
			case <-ctx.Done():
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				readErr <- fmt.Errorf("reading the requests on %s after line %d: %w", name, n-1, err)
			}
			return
		}
	}
}

// drain takes whatever has arrived after first, up to max lines.
func drain(first streamLine, lines <-chan streamLine, max int) []streamLine {
	batch := []streamLine{first}
	for len(batch) < max {
		select {
		case l, ok := <-lines:
			if !ok {
				return batch
			}
			batch = append(batch, l)
		default:
			return batch
		}
	}
	return batch
}

// answer scores a batch of request lines into one result each.
func answer(ctx context.Context, sc *detector.Scorer, batch []streamLine) ([]StreamResult, int, error) {
	results := make([]StreamResult, len(batch))
	var inputs []detector.Input
	var at []int
	nBad := 0
	for i, l := range batch {
		results[i].Line = l.n
		if l.long > 0 {
			results[i].Error = fmt.Sprintf("line %d is %d bytes, longer than the %d MiB a request may have (an image of up to %d MiB, base64): skipped", l.n, l.long, MaxStreamLine>>20, MaxStreamLine/4*3>>20)
			nBad++
			continue
		}
		in, id, err := ParseRequest(l.n, l.text)
		results[i].ID = id
		batch[i].text = nil // parsed: its bytes are in the input now
		if err != nil {
			results[i].Error = err.Error()
			nBad++
			continue
		}
		results[i].Path, results[i].PathBase64 = JSONPath(in.Name)
		inputs = append(inputs, in)
		at = append(at, i)
	}
	if len(inputs) == 0 {
		return results, nBad, nil
	}
	err := sc.Score(ctx, inputs, func(r *detector.Result) error {
		s, err := Maps{}.Scored(sc, Target{}, r)
		if err != nil {
			return err
		}
		if s.Error != "" {
			nBad++
		}
		results[at[r.Index]].ScoredImage = s
		return nil
	})
	return results, nBad, err
}

// ParseRequest reads request line n into a pipeline input: one JSON
// object, each key once, nothing after it; a path or base64 image data.
func ParseRequest(n int, text []byte) (detector.Input, json.RawMessage, error) {
	var q StreamRequest
	if len(bytes.TrimSpace(text)) == 0 {
		return detector.Input{}, nil, fmt.Errorf("line %d is empty: want {\"path\": FILE} or {\"data\": BASE64}", n)
	}
	if err := shard.DecodeLine(text, &q); err != nil {
		return detector.Input{}, nil, fmt.Errorf("line %d: %v (want {\"path\": FILE} or {\"data\": BASE64, \"name\": N}, optional \"id\")", n, err)
	}
	switch {
	case q.Path != "" && q.Data != "":
		return detector.Input{}, q.ID, fmt.Errorf("line %d: give \"path\" or \"data\", not both", n)
	case q.Path != "":
		return detector.Input{Name: q.Path}, q.ID, nil
	case q.Data != "":
		b, err := base64.StdEncoding.DecodeString(q.Data)
		if err != nil {
			return detector.Input{}, q.ID, fmt.Errorf("line %d: \"data\" is not base64: %v", n, err)
		}
		name := q.Name
		if name == "" {
			name = fmt.Sprintf("line %d", n)
		}
		return detector.Input{Name: name, Data: b}, q.ID, nil
	}
	return detector.Input{}, q.ID, fmt.Errorf("line %d: no \"path\" or \"data\"", n)
}
