package runtime

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/dhvisor/dhvisor/internal/envfile"
)

func TestServiceVars(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := write("first.env", "# the database\nDB_PASSWORD='s3cr$t'\nSHARED=first\n", 0o600)
	second := write("second.env", "SHARED=\"second\"\nTOKEN=abc\n", 0o640)
	spec := Spec{Name: "svc", Env: map[string]string{"SHARED": "env", "PLAIN": "p"}, EnvFiles: []string{first, second}}
	got, err := ServiceVars(spec)
	if err != nil {
		t.Fatal(err)
	}
	// env: by name, then the files in order; a later value of a name wins.
	want := []envfile.Var{{Name: "PLAIN", Value: "p"}, {Name: "SHARED", Value: "second"}, {Name: "DB_PASSWORD", Value: "s3cr$t"}, {Name: "TOKEN", Value: "abc"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	env, err := Environment(spec, "/home/x")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"DB_PASSWORD=s3cr$t", "SHARED=second", "DHVISOR_SERVICE=svc", "HOME=/home/x"} {
		if !slices.Contains(env, w) {
			t.Errorf("environment lacks %s: %q", w, env)
		}
	}
	for _, v := range BaseEnvironment(spec, "/home/x") {
		if strings.Contains(v, "s3cr") || strings.HasPrefix(v, "PLAIN=") {
			t.Errorf("the base environment holds the service's own %s", v)
		}
	}

	if err := os.Symlink(first, filepath.Join(dir, "link.env")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, want string
	}{
		{"readable by others", write("loose.env", "A=1\n", 0o644), "loose.env has mode 0644"},
		{"a link", filepath.Join(dir, "link.env"), "symbolic link"},
		{"missing", filepath.Join(dir, "none.env"), "none.env: no such file"},
		{"syntax", write("bad.env", "A=1\nhunter2\n", 0o600), "bad.env:2: no = on the line"},
		{"a mark", write("mark.env", "DHVISOR_AGENT=/elsewhere\n", 0o600), "DHVISOR_AGENT is dhvisor's own mark"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ServiceVars(Spec{Name: "svc", EnvFiles: []string{first, tc.file}})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "env file ") {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error quotes the file: %v", err)
			}
			if _, err := Environment(Spec{Name: "svc", EnvFiles: []string{tc.file}}, "/"); err == nil {
				t.Error("Environment accepted it")
			}
		})
	}

	if err := CheckCredentials(Spec{Credentials: map[string]string{"db": first}}); err != nil {
		t.Errorf("a 0600 credential refused: %v", err)
	}
	if err := CheckCredentials(Spec{Credentials: map[string]string{"db": filepath.Join(dir, "loose.env")}}); err == nil || !strings.Contains(err.Error(), "credential db: ") {
		t.Errorf("a 0644 credential: %v", err)
	}
}
