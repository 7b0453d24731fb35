// Package job runs padim's jobs from inputs to written outputs: scoring a
// list of images (results, maps and pictures), a stream of requests (score
// --stdin-jsonl), an evaluation with its report, and the sharded forms of
// score and eval (a shard's resumable results file, see package shard). The
// command line (cmd/padim) reads flags into a job's Config, makes one call
// and prints what comes back; the job composes the library: detector for
// the scoring, data/dataset for the listings, evaluate and report for the
// metrics, detector/fileio for the files written, shard for the records.
//
// It is a package of its own because nothing below it may hold these runs:
// detector never imports the data sets or the picture writers, evaluate is
// imported by report (so cannot write one), and shard is the file-format
// layer the runs write through.
package job
