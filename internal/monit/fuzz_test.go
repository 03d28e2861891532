package monit

import (
	"os"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"
)

// noFS makes includes match nothing, so fuzzing reads no real files.
var noFS = fsys{
	glob: func(string) ([]string, error) { return nil, nil },
	read: func(string) ([]byte, error) { return nil, os.ErrNotExist },
	dir:  func(string) bool { return false },
}

// FuzzParse feeds arbitrary control files to the parser: it must never
// panic, every refusal must be positioned, and an accepted file's YAML
// must read back.
func FuzzParse(f *testing.F) {
	for _, kind := range []string{"good", "bad", "strict", "deephaven"} {
		files, _ := filepath.Glob(filepath.Join("testdata", "corpus", kind, "*.conf"))
		for _, file := range files {
			if b, err := os.ReadFile(file); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		im, err := parseWith(noFS, "fuzz.conf", data)
		if err != nil {
			for _, e := range err.(Errors) {
				if e.File != "fuzz.conf" || e.Line < 1 || e.Msg == "" {
					t.Fatalf("unpositioned error %+v", e)
				}
			}
			return
		}
		out, err := im.YAML()
		if err != nil {
			t.Fatal(err)
		}
		var back map[string]any
		if err := yaml.Unmarshal(out, &back); err != nil {
			t.Fatalf("YAML() does not read back: %v\n%s", err, out)
		}
	})
}
