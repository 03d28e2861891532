package ctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dhvisor/dhvisor/internal/properties"
)

const sampleDir = "../properties/testdata/sample"

var sampleRoot = filepath.Join(sampleDir, "iris-common.prop")

// Two processes on two hosts, as Deephaven would start them there.
var (
	configOnInfra = []string{"--process", "configuration_server", "--host", "infra-1.example.com", "--host", "10.0.0.5", "--dns=false"}
	queryOnQuery  = []string{"--process", "db_query_server", "--host", "query-1.example.com", "--host", "10.0.0.7", "--dns=false"}
)

// dhctlRun runs dhctl with args and returns its exit code, stdout and
// stderr.
func dhctlRun(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := Execute(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// The acceptance sample: every property each process sees, with the rule
// of Deephaven's that gives it. A key absent from a column is one that
// process must not see.
func TestPropertiesShow(t *testing.T) {
	const (
		config = "configuration_server on infra-1"
		query  = "db_query_server on query-1"
	)
	both := func(v string) map[string]string { return map[string]string{config: v, query: v} }
	tests := []struct {
		key  string
		want map[string]string // by process
		rule string
	}{
		{"defaulted", both("from defaults"), "included files are read before the including file's own lines"},
		{"overridden", both("from environment"), "the last assignment wins: endpoints (included by defaults), then defaults, then environment"},
		{"endpoint.config", both("infra-1.example.com:22054"), "an included file's includes are read first, relative to it; ! starts a comment"},
		{"locked", both("yes"), "final key=value assigns"},
		{"secret.token", both("from defaults"), "finalize after the assignment keeps the value"},
		{"role", map[string]string{config: "config"}, "a scope's { may be on the next line; service.name comes from --process"},
		{"trailing", both("kept   "), "a value's trailing blanks are kept"},
		{"spaced", both("left trimmed only"), "key trimmed, value left-trimmed, : separates like ="},
		{"no.separator", both(""), "a line without = or : is a key with an empty value"},
		{"a b", both("whitespace alone does not separate"), "only = and : end a key"},
		{"escaped", both("tab\tnewline\nunicodeé colon: equals= backslash\\ space end"), "Java escapes, \\uXXXX included, undone on the whole line"},
		{"split", both("key=the escape is undone before the split"), "\\= is unescaped before the key is split off, so it separates"},
		{"continued", both("one two three"), "a trailing \\ continues onto the next line, left-trimmed"},
		{"comment.swallowed", both("before"), "a comment ending in \\ swallows the next line"},
		{"scoped", map[string]string{config: "config on infra-1", query: "query"}, "commas AND, | OR; host matches a short name; process is process.name"},
		{"nested", map[string]string{config: "both hold"}, "a nested scope holds only inside a holding one; host matches an address; a statement may follow { on its line"},
		{"upper", nil, "host values are compared as written, against lower-cased names"},
		{"query.only", map[string]string{config: "the finalize was in the query server's scope only"}, "finalize is honoured only in a scope that matches"},
		{"shard.scoped", nil, "a scope on a property the process lacks never matches"},
		{"process.name", map[string]string{config: "configuration_server", query: "db_query_server"}, "the process's own properties override the file, as -D does"},
		{"service.name", map[string]string{config: "configuration_server", query: "db_query_server"}, "Deephaven's launcher sets service.name with process.name"},
	}
	for who, args := range map[string][]string{config: configOnInfra, query: queryOnQuery} {
		t.Run(who, func(t *testing.T) {
			code, out, errOut := dhctlRun(append([]string{"properties", "show", sampleRoot}, args...)...)
			if code != ExitOK {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			// The listing is a properties file: read back, it gives what
			// the process sees.
			listed, err := propertiesView("out", []byte(out), nil, properties.Context{})
			if err != nil {
				t.Fatalf("show's output does not parse: %v\n%s", err, out)
			}
			got := maps.Clone(listed)
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if !slices.IsSorted(lines) || len(lines) != len(got) {
				t.Errorf("want one line a property, sorted:\n%s", out)
			}
			for _, tt := range tests {
				want, ok := tt.want[who]
				if v, have := got[tt.key]; have != ok || v != want {
					t.Errorf("%s = %q (set: %v), want %q (set: %v): %s", tt.key, v, have, want, ok, tt.rule)
				}
				delete(got, tt.key)
			}
			if len(got) > 0 {
				t.Errorf("properties the table does not state: %q", got)
			}

			code, js, errOut := dhctlRun(append([]string{"properties", "show", "-o", "json", sampleRoot}, args...)...)
			var fromJSON map[string]string
			if err := json.Unmarshal([]byte(js), &fromJSON); code != ExitOK || err != nil {
				t.Fatalf("-o json: exit %d, %v: %s%s", code, err, js, errOut)
			}
			if !maps.Equal(fromJSON, listed) {
				t.Errorf("-o json gives\n%q\ntext gives\n%q", fromJSON, listed)
			}
		})
	}
}

func TestPropertiesGet(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		out  string // stdout, exactly
		err  string // a part of stderr
	}{
		{"values one a line, in the order asked", append([]string{"get", sampleRoot, "trailing", "scoped", "locked"}, queryOnQuery...), ExitOK, "kept   \nquery\nyes\n", ""},
		{"a value as it is", append([]string{"get", sampleRoot, "escaped"}, configOnInfra...), ExitOK, "tab\tnewline\nunicodeé colon: equals= backslash\\ space end\n", ""},
		{"json", append([]string{"get", "-o", "json", sampleRoot, "role"}, configOnInfra...), ExitOK, "{\n  \"role\": \"config\"\n}\n", ""},
		{"--set is compared by scopes", append([]string{"get", sampleRoot, "shard.scoped", "shard"}, append(queryOnQuery, "--set", "shard=2")...), ExitOK, "only with --set shard=2\n2\n", ""},
		{"--set service.name over --process", append([]string{"get", sampleRoot, "role", "process.name"}, append(queryOnQuery, "--set", "service.name=configuration_server")...), ExitOK, "config\ndb_query_server\n", ""},
		{"a missing key names every one, prints none", append([]string{"get", sampleRoot, "locked", "role", "nope"}, queryOnQuery...), ExitNotOK, "", "not set for db_query_server on query-1.example.com, 10.0.0.7: role, nope"},
		{"final assigned again names both lines", []string{"get", filepath.Join(sampleDir, "final-again.prop"), "locked"}, ExitError, "",
			filepath.Join(sampleDir, "final-again.prop") + `:2:1: "locked" is final (made final at ` + filepath.Join(sampleDir, "iris-defaults.prop") + `:5:7) and cannot be assigned again`},
		{"a line holding only a backslash", []string{"get", filepath.Join(sampleDir, "backslash.prop"), "a"}, ExitError, "",
			filepath.Join(sampleDir, "backslash.prop") + `:2:1: the line ends in a continuation \ but the file ends here`},
		{"no file", []string{"get", "/nonexistent/x.prop", "a"}, ExitError, "", "cannot read open /nonexistent/x.prop: no such file or directory"},
		{"--set without =", []string{"get", sampleRoot, "a", "--set", "shard"}, ExitError, "", `--set "shard": expected key=value`},
		{"--set without a key", []string{"get", sampleRoot, "a", "--set", "=2"}, ExitError, "", `--set "=2": expected key=value`},
		{"--set twice", []string{"get", sampleRoot, "a", "--set", "a=1", "--set", "a=2"}, ExitError, "", `--set "a=2": a is already set by --set "a=1"`},
		{"--set contradicting --process", []string{"get", sampleRoot, "a", "--process", "x", "--set", "process.name=y"}, ExitError, "", `--set "process.name=y" contradicts --process x`},
		{"bad --host", []string{"get", sampleRoot, "a", "--host", "a b"}, ExitError, "", `--host "a b": expected a host name`},
		{"bad -o", []string{"get", sampleRoot, "a", "-o", "yaml"}, ExitError, "", `-o yaml: expected text or json`},
		{"no key", []string{"get", sampleRoot}, ExitError, "", "requires at least 2 arg(s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := dhctlRun(append([]string{"properties"}, tt.args...)...)
			if code != tt.code || out != tt.out || !strings.Contains(errOut, tt.err) {
				t.Errorf("exit %d, stdout %q, stderr %q\nwant exit %d, stdout %q, stderr with %q", code, out, errOut, tt.code, tt.out, tt.err)
			}
		})
	}
}

// Without --host the process runs here: [host=...] matches this host's
// names as Deephaven finds them.
func TestPropertiesThisHost(t *testing.T) {
	name, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "x.prop")
	data := "[host=" + strings.ToLower(name) + "] {\nhere=yes\n}\n[host=not-" + strings.ToLower(name) + "] {\nthere=yes\n}\n"
	if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := dhctlRun("properties", "show", f)
	if code != ExitOK || out != "here=yes\n" {
		t.Errorf("exit %d, %q %s; want here=yes alone", code, out, errOut)
	}
}

// What show prints parses back to what the process saw, whatever the file
// holds, and no file makes it panic.
func FuzzPropertiesShow(f *testing.F) {
	for _, name := range []string{"iris-environment.prop", "iris-defaults.prop", "backslash.prop", "final-again.prop"} {
		data, err := os.ReadFile(filepath.Join(sampleDir, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{"\\", "a=\\u2003x\\\\", "\\u2003k=v", "k\\n=\\u0000\\r", "[host=h] {\nx=\\t \n}\n"} {
		f.Add([]byte(s))
	}
	open := func(name string) ([]byte, string, error) {
		if filepath.Base(name) == "inc.prop" {
			return []byte("final inc=1\n[host=h] {\nfinalize x*\n}\n"), name, nil
		}
		return nil, "", fs.ErrNotExist
	}
	contexts := []properties.Context{
		{},
		{Hosts: []string{"h", "10.0.0.5"}, Props: properties.ProcessProps("configuration_server")},
		{Hosts: []string{"q"}, Props: map[string]string{"process.name": "db_query_server", "shard": "2"}},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, pctx := range contexts {
			view, err := propertiesView("f.prop", data, open, pctx)
			if err != nil {
				var es properties.Errors
				if !errors.As(err, &es) {
					t.Fatalf("error %v is not properties.Errors", err)
				}
				continue
			}
			var b strings.Builder
			for _, k := range slices.Sorted(maps.Keys(view)) {
				b.WriteString(properties.Line(k, view[k]) + "\n")
			}
			back, err := propertiesView("out", []byte(b.String()), nil, properties.Context{})
			if err != nil {
				t.Fatalf("listing does not parse: %v\n%q", err, b.String())
			}
			if !maps.Equal(back, view) {
				t.Fatalf("listing\n%q\nreads back as\n%q\nnot\n%q", b.String(), back, view)
			}
		}
	})
}
