package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/shard"
)

// flagsFirst puts every command's flags (with their values) before its
// arguments, keeps the order of both, honours a user's --, and moves padim's
// own flags given after the command before it.
func TestFlagsFirst(t *testing.T) {
	app := newApp()
	for _, c := range []struct{ in, want string }{
		{"collect DIR --json", "collect --json -- DIR"},
		{"score --model m.padim DIR --json", "score --model m.padim --json -- DIR"},
		{"score DIR1 --threshold -5 DIR2 --maps=png", "score --threshold -5 --maps=png -- DIR1 DIR2"},
		{"score --model m -- -x.png --json", "score --model m -- -x.png --json"},
		{"score --model m A -- --json", "score --model m -- A --json"},
		{"score A --json=false B", "score --json=false -- A B"},
		{"score A -q --model m", "-q score --model m -- A"},
		{"--max-memory 4G score A --max-memory 8G", "--max-memory 4G --max-memory 8G score -- A"},
		{"-q train --data D --out M", "-q train --data D --out M"},
		{"experiment --data D samples --repeats 2 --json", "experiment samples --data D --repeats 2 --json"},
		{"experiment samples --data D", "experiment samples --data D"},
		{"experiment bogus --data D", "experiment bogus --data D"},
		{"merge S1.stats --out M S2.stats --eps 0.01", "merge --out M --eps 0.01 -- S1.stats S2.stats"},
		{"serve --model a=A --model B --addr :0", "serve --model a=A --model B --addr :0"},
		{"loadtest IMG --concurrency 1,2 --insecure DIR", "loadtest --concurrency 1,2 --insecure -- IMG DIR"},
		{"score IMG --help", "score --help -- IMG"},
		{"score IMG --unknown value", "score --unknown -- IMG value"},
		{"scroe A --json", "scroe A --json"},
		{"score - --json", "score --json -- -"},
		{"score --model", "score --model"},
		{"", ""},
	} {
		in := append([]string{"padim"}, strings.Fields(c.in)...)
		got := strings.Join(flagsFirst(app, in)[1:], " ")
		if got != c.want {
			t.Errorf("%q → %q, want %q", c.in, got, c.want)
		}
		if c.in == c.want && !slices.Equal(flagsFirst(app, in), in) {
			t.Errorf("%q changed", c.in)
		}
	}
}

// shardError adds the flag that changes a sharded run's refusal: results of
// another run are a usage error naming --out and --restart; a damaged file
// names --restart (the library's errors name no flag).
func TestShardErrorAdvice(t *testing.T) {
	mm := shardError(fmt.Errorf("%w: r.jsonl holds results of another model", shard.ErrMismatch))
	var ec cli.ExitCoder
	if !errors.As(mm, &ec) || ec.ExitCode() != exitUsage || !strings.Contains(mm.Error(), "give another --out, or --restart") {
		t.Errorf("mismatch: %v", mm)
	}
	dm := shardError(fmt.Errorf("%w: r.jsonl is cut short in line 3", shard.ErrDamaged))
	if !errors.Is(dm, shard.ErrDamaged) || !strings.Contains(dm.Error(), "give --restart to score the shard again") {
		t.Errorf("damaged: %v", dm)
	}
	if other := errors.New("locked"); shardError(other) != other {
		t.Error("other errors pass unchanged")
	}
}
