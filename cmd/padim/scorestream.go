package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/picture"
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

// maxStreamLine bounds one request line (a base64 image).
const maxStreamLine = 256 << 20

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
	type line struct {
		n    int
		text []byte
		err  error
	}
	lines := make(chan line, 256)
	go func() {
		defer close(lines)
		br := bufio.NewReaderSize(os.Stdin, 1<<20)
		for n := 1; ; n++ {
			b, err := readLine(br)
			if len(b) > 0 || err == nil {
				lines <- line{n: n, text: b}
			}
			if err != nil {
				if err != io.EOF {
					lines <- line{n: n, err: err}
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
		first, ok := <-lines
		if !ok {
			break
		}
		if first.err != nil {
			return first.err
		}
		batch := []line{first}
	drain: // whatever has arrived, up to a few backbone batches
		for len(batch) < maxBatch {
			select {
			case l, ok := <-lines:
				if !ok {
					break drain
				}
				if l.err != nil {
					return l.err
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
			in, id, err := parseRequest(l.n, l.text)
			results[i].ID = id
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
			err := sc.Score(c.Context, inputs, func(r *detector.Result) error {
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
		for _, r := range results {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
	if nBad > 0 {
		notef(c, "note: %d request(s) answered with an error (each is on its output line)", nBad)
	}
	return nil
}

// readLine reads one line without its newline, refusing lines over maxStreamLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxStreamLine {
			return nil, fmt.Errorf("an input line is longer than %d MiB", maxStreamLine>>20)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return []byte(strings.TrimRight(string(buf), "\r\n")), err
	}
}

// parseRequest reads one request line into a pipeline input.
func parseRequest(n int, text []byte) (detector.Input, json.RawMessage, error) {
	var q streamRequest
	if strings.TrimSpace(string(text)) == "" {
		return detector.Input{}, nil, fmt.Errorf("line %d is empty: want {\"path\": FILE} or {\"data\": BASE64}", n)
	}
	dec := json.NewDecoder(strings.NewReader(string(text)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&q); err != nil {
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
