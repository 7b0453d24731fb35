package main

import (
	"testing"

	"github.com/urfave/cli/v2"
)

// Every numeric flag of every command has a range, so that no value of it can
// take all the memory or the time.
func TestEveryNumericFlagHasARange(t *testing.T) {
	for _, c := range newApp().Commands {
		for _, f := range c.Flags {
			name := f.Names()[0]
			switch f.(type) {
			case *cli.IntFlag, *cli.Float64Flag, *cli.Uint64Flag:
			default:
				continue
			}
			if _, ok := flagRanges[name]; ok {
				continue
			}
			if _, ok := sizeRanges[c.Name]; ok && name == "size" {
				continue
			}
			t.Errorf("padim %s --%s has no range in flagRanges", c.Name, name)
		}
	}
}
