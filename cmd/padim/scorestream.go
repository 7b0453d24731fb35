package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"
	"golang.org/x/sync/semaphore"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/picture"
	"github.com/padim/padim/shard"
)

// score --stdin-jsonl: a filter for stream processors (Spark's RDD.pipe(), a
// shell pipeline, any job that feeds lines to a process and reads lines
// back). Each input line is one request; each gets exactly one output line,
// in the same order, and the output is flushed as soon as the requests that
// have arrived are scored, so a caller may also send one line and wait.

// streamRequest is one input line.
type streamRequest struct {
	ID   json.RawMessage `json:"id,omitempty"`   // echoed in the result
	Path string          `json:"path,omitempty"` // an image file
	Data string          `json:"data,omitempty"` // or the image's bytes, base64 (standard encoding)
	Name string          `json:"name,omitempty"` // a name for data in messages and the result (default "line N")
}

// streamResult is one output line.
type streamResult struct {
	ID   json.RawMessage `json:"id,omitempty"`
	Line int             `json:"line"` // the request's line number (1-based)
	scoredImage
}

// maxStreamLine bounds one request line (a base64 image of up to 48 MiB): a
// longer one is read to its end without being kept and answered with an
// error line.
const maxStreamLine = 64 << 20

// streamReadAhead bounds the bytes of request lines read ahead of the
// scoring (besides the line being read): the stream's memory does not grow
// with a fast producer's lines.
const streamReadAhead = 64 << 20

func scoreStream(c *cli.Context) error {
	switch {
	case c.NArg() > 0 || c.IsSet("manifest"):
		return usageError("--stdin-jsonl reads its requests from stdin: give no images, folders or --manifest")
	case c.IsSet("shard") || c.IsSet("restart") || c.IsSet("flush-every"):
		return usageError("--stdin-jsonl does not go with --shard (split the stream instead)")
	case c.IsSet("out") || c.IsSet("maps") && c.String("maps") != "none":
		return usageError("--stdin-jsonl writes no maps: its results (scores, verdicts, boxes) are the output lines")
	case c.Bool("json") || c.Bool("fail-on-defect"):
		return usageError("--stdin-jsonl answers each line with a line: --json and --fail-on-defect do not apply")
	}
	_, sc, closeAll, err := loadScorer(c, thresholdFlag(c), c.Int("open-radius"), false)
	if err != nil {
		return err
	}
	defer closeAll()
	if sc.Thresholds() == nil {
		notef(c, "note: %s has no calibrated thresholds: scores only; give --threshold for verdicts", c.String("model"))
	}
	ctx := c.Context
	type line struct {
		n      int
		text   []byte
		long   int64 // the length of an over-long line (text is nil)
		weight int64 // its share of the read-ahead budget
	}
	ahead := semaphore.NewWeighted(streamReadAhead)
	lines := make(chan line, 1024) // bounded by ahead's bytes; the count only bounds empty lines
	readErr := make(chan error, 1)
	go func() {
		defer close(lines)
		br := bufio.NewReaderSize(os.Stdin, 1<<20)
		for n := 1; ; n++ {
			b, long, err := shard.ReadLine(br, maxStreamLine)
			if n := len(b); n > 0 && b[n-1] == '\r' {
				b = b[:n-1]
			}
			if len(b) > 0 || long > 0 || err == nil {
				w := min(int64(len(b)), streamReadAhead)
				if err := ahead.Acquire(ctx, w); err != nil {
					return
				}
				select {
				case lines <- line{n: n, text: b, long: long, weight: w}:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				if err != io.EOF {
					readErr <- fmt.Errorf("reading the requests on stdin after line %d: %w", n-1, err)
				}
				return
			}
		}
	}()
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	enc := json.NewEncoder(out)
	maxBatch := 4 * sc.Pipeline().Batch()
	nBad := 0
	for {
		var first line
		var ok bool
		select {
		case first, ok = <-lines:
		case <-ctx.Done(): // a signal ends the wait for the next request
			return ctx.Err()
		}
		if !ok {
			break
		}
		batch := []line{first}
	drain: // whatever has arrived, up to a few backbone batches
		for len(batch) < maxBatch {
			select {
			case l, ok := <-lines:
				if !ok {
					break drain
				}
				batch = append(batch, l)
			default:
				break drain
			}
		}
		results := make([]streamResult, len(batch))
		var inputs []detector.Input
		var at []int
		for i, l := range batch {
			results[i].Line = l.n
			if l.long > 0 {
				results[i].Error = fmt.Sprintf("line %d is %d bytes, longer than the %d MiB a request may have (an image of up to %d MiB, base64): skipped", l.n, l.long, maxStreamLine>>20, maxStreamLine/4*3>>20)
				nBad++
				continue
			}
			in, id, err := parseRequest(l.n, l.text)
			results[i].ID = id
			batch[i].text = nil // parsed: its bytes are in the input now
			if err != nil {
				results[i].Error = err.Error()
				nBad++
				continue
			}
			results[i].Path, results[i].PathBase64 = jsonPath(in.Name)
			inputs = append(inputs, in)
			at = append(at, i)
		}
		if len(inputs) > 0 {
			err := sc.Score(ctx, inputs, func(r *detector.Result) error {
				s, err := scored(c, sc, target{}, r, "none", "image", picture.Range{})
				if err != nil {
					return err
				}
				if s.Error != "" {
					nBad++
				}
				res := &results[at[r.Index]]
				res.scoredImage = s
				return nil
			})
			if err != nil {
				return err
			}
		}
		for _, l := range batch {
			ahead.Release(l.weight)
		}
		for _, r := range results {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
	select {
	case err := <-readErr:
		return err
	default:
	}
	if nBad > 0 {
		notef(c, "note: %d request(s) answered with an error (each is on its output line)", nBad)
	}
	return ctx.Err()
}

// parseRequest reads one request line into a pipeline input: one JSON
// object, each key once, nothing after it.
func parseRequest(n int, text []byte) (detector.Input, json.RawMessage, error) {
	var q streamRequest
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
