package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// Flags anywhere: urfave/cli v2 stops reading flags at a command's first
// argument (urfave/cli#427, #976, #1950), so `padim collect DIR --json`
// took --json for a second folder. flagsFirst rewrites the command line
// before urfave/cli reads it: each command's flags (with their values) go
// first, then `--`, then its arguments, in the order given. A `--` given by
// the user ends the flags: what follows is an argument even if it starts
// with `-`. padim's own flags (--quiet, --max-memory, …) given after the
// command name move before it. The commands and their flags come from the
// app itself, so a new flag needs nothing here; boolean flags take no value
// (write --json=false to give one).

// flagsFirst returns args (args[0] the program) with every command's flags
// ahead of its arguments.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	global := flagSet(app.Flags)
	out := []string{args[0]}
	rest := args[1:]
	// padim's own flags, up to the command name
	for len(rest) > 0 && isFlag(rest[0]) {
		n := flagLen(global, rest)
		out = append(out, rest[:n]...)
		rest = rest[n:]
	}
	if len(rest) == 0 || rest[0] == "--" {
		return append(out, rest...)
	}
	cmd := findCommand(app.Commands, rest[0])
	if cmd == nil {
		return append(out, rest...) // an unknown command: urfave/cli reports it
	}
	cargs := rest[1:]
	words := []string{rest[0]}
	// a command of sub-commands (experiment): its first argument names the
	// sub-command, wherever it stands among the flags
	for len(cmd.Subcommands) > 0 {
		union := flagSet(cmd.Flags)
		for _, s := range cmd.Subcommands {
			for n, v := range flagSet(s.Flags) {
				union[n] = v
			}
		}
		_, pos, _ := split(union, global, cargs)
		if len(pos) == 0 {
			break
		}
		sub := findCommand(cmd.Subcommands, cargs[pos[0]])
		if sub == nil {
			break
		}
		words = append(words, cargs[pos[0]])
		cargs = append(cargs[:pos[0]:pos[0]], cargs[pos[0]+1:]...)
		cmd = sub
	}
	if len(cmd.Subcommands) > 0 {
		return append(out, rest...) // no sub-command named: urfave/cli says so
	}
	flags, pos, globals := split(flagSet(cmd.Flags), global, cargs)
	for _, g := range globals {
		out = append(out, cargs[g[0]:g[1]]...)
	}
	for _, f := range flags {
		words = append(words, cargs[f[0]:f[1]]...)
	}
	if len(pos) > 0 {
		words = append(words, "--")
		for _, p := range pos {
			words = append(words, cargs[p])
		}
	}
	return append(out, words...)
}

// split sorts a command's arguments by position: its flags (with their
// values; spans [from, to)), its positional arguments, and padim's own flags
// given among them (spans).
func split(own, global map[string]bool, args []string) (flags [][2]int, pos []int, globals [][2]int) {
	own["help"], own["h"] = false, false
	for i := 0; i < len(args); {
		a := args[i]
		switch {
		case a == "--":
			for j := i + 1; j < len(args); j++ {
				pos = append(pos, j)
			}
			return flags, pos, globals
		case !isFlag(a):
			pos = append(pos, i)
			i++
		default:
			name := flagName(a)
			if _, ok := own[name]; !ok {
				if _, ok := global[name]; ok {
					n := flagLen(global, args[i:])
					globals = append(globals, [2]int{i, i + n})
					i += n
					continue
				}
			}
			n := flagLen(own, args[i:])
			flags = append(flags, [2]int{i, i + n})
			i += n
		}
	}
	return flags, pos, globals
}

// flagSet maps each flag name and alias to whether it takes a value.
func flagSet(fs []cli.Flag) map[string]bool {
	m := map[string]bool{}
	for _, f := range fs {
		takes := true
		if v, ok := f.(cli.DocGenerationFlag); ok {
			takes = v.TakesValue()
		}
		for _, n := range f.Names() {
			m[n] = takes
		}
	}
	return m
}

// isFlag reports whether a word is a flag: it starts with - and is not - alone.
func isFlag(a string) bool { return len(a) > 1 && a[0] == '-' && a != "--" }

// flagName is a flag's name without its dashes and any =value.
func flagName(a string) string {
	name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
	return name
}

// flagLen is how many words the flag at args[0] spans: two when it takes a
// value not given with =, else one. An unknown flag spans one (urfave/cli
// reports it).
func flagLen(known map[string]bool, args []string) int {
	if strings.Contains(args[0], "=") || !known[flagName(args[0])] || len(args) < 2 {
		return 1
	}
	return 2
}

// findCommand finds a command by name or alias.
func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}
