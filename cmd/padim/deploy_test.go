package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
	"sigs.k8s.io/yaml"

	"github.com/padim/padim/shard"
)

// Every padim command line in deploy/k8s names a command of this binary and
// only its flags.
func TestDeployManifestsUseRealFlags(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "..", "deploy", "k8s", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no manifests")
	}
	app := newApp()
	global := map[string]bool{}
	for _, f := range app.Flags {
		for _, n := range f.Names() {
			global[n] = true
		}
	}
	checked := 0
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
			var m map[string]any
			if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			for _, argv := range padimInvocations(m) {
				name := argv[0]
				var cmd *cli.Command
				for _, c := range app.Commands {
					if c.Name == name {
						cmd = c
					}
				}
				if cmd == nil {
					t.Errorf("%s: padim has no command %q", filepath.Base(f), name)
					continue
				}
				flags := map[string]bool{}
				for _, fl := range cmd.Flags {
					for _, n := range fl.Names() {
						flags[n] = true
					}
				}
				for i, a := range argv[1:] {
					n, ok := strings.CutPrefix(a, "--")
					if !ok {
						continue
					}
					n, _, _ = strings.Cut(n, "=")
					if !flags[n] && !global[n] {
						t.Errorf("%s: padim %s has no flag --%s", filepath.Base(f), name, n)
					}
					if n == "shard" && i+2 < len(argv) {
						if _, err := shard.Parse(argv[i+2], func(string) string { return "0" }); err != nil {
							t.Errorf("%s: --shard %s: %v", filepath.Base(f), argv[i+2], err)
						}
					}
				}
				checked++
			}
		}
	}
	if checked < 7 {
		t.Fatalf("checked %d padim command lines, want the 6 jobs' and serve's", checked)
	}
}

// padimInvocations finds the padim command lines of a manifest's containers:
// their args (the image's entrypoint is padim), or what a shell runs.
func padimInvocations(m map[string]any) [][]string {
	var out [][]string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if cs, ok := x["containers"].([]any); ok {
				for _, c := range cs {
					cm, _ := c.(map[string]any)
					cmd, args := strs(cm["command"]), strs(cm["args"])
					if len(cmd) == 0 {
						out = append(out, args)
						continue
					}
					if slices.Equal(cmd, []string{"/bin/sh", "-c"}) && len(args) == 1 {
						f := strings.Fields(args[0])
						if i := slices.Index(f, "padim"); i >= 0 {
							out = append(out, f[i+1:])
						}
					}
				}
				return
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(m)
	return out
}

func strs(v any) []string {
	l, _ := v.([]any)
	var s []string
	for _, e := range l {
		if x, ok := e.(string); ok {
			s = append(s, x)
		}
	}
	return s
}
