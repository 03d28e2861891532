package properties

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// files is an Opener over an in-memory directory.
func files(m map[string]string) Opener {
	return func(name string) ([]byte, string, error) {
		s, ok := m[name]
		if !ok {
			return nil, "", &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		return []byte(s), name, nil
	}
}

// values flattens an evaluation to key -> value.
func values(m map[string]Value) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v.Value
	}
	return out
}

var (
	configServer = Context{Hosts: []string{"Infra-1.example.com", "infra-1", "10.0.0.5"}, Props: map[string]string{"service.name": "configuration_server", "process.name": "configuration_server"}}
	queryServer  = Context{Hosts: []string{"query-1.example.com", "query-1", "10.0.0.7"}, Props: map[string]string{"service.name": "db_query_server", "process.name": "db_query_server"}}
)

// The acceptance sample (testdata/sample; every value of it, with its rule,
// is stated by dhctl's TestPropertiesShow): where each value was assigned
// and which are final, for two processes on two hosts.
func TestSample(t *testing.T) {
	dir := filepath.Join("testdata", "sample")
	load := func(name string) (*File, error) {
		name = filepath.Join(dir, name)
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return Parse(name, data, OpenFile)
	}
	f, err := load("iris-common.prop")
	if err != nil {
		t.Fatal(err)
	}
	env, defaults := filepath.Join(dir, "iris-environment.prop"), filepath.Join(dir, "iris-defaults.prop")
	tests := []struct {
		ctx   Context
		key   string
		pos   Pos
		final bool
	}{
		{configServer, "overridden", Pos{env, 1, 1}, false},
		{configServer, "locked", Pos{defaults, 5, 7}, true},       // final key=value
		{configServer, "secret.token", Pos{defaults, 6, 1}, true}, // finalize secret.* after it
		{configServer, "continued", Pos{env, 8, 1}, false},        // its first line
		{configServer, "nested", Pos{env, 16, 23}, false},         // after the { on its line
		{configServer, "query.only", Pos{env, 32, 5}, false},      // finalize query.* is the query server's
		{queryServer, "locked", Pos{defaults, 5, 7}, true},
		{queryServer, "scoped", Pos{env, 20, 5}, false},
	}
	for _, tt := range tests {
		got, err := f.Eval(tt.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v := got[tt.key]; v.Pos != tt.pos || v.Final != tt.final {
			t.Errorf("%s for %s: at %v final %v, want at %v final %v", tt.key, tt.ctx.Props["process.name"], v.Pos, v.Final, tt.pos, tt.final)
		}
	}
	// A final key assigned again, in a file that includes the sample.
	f, err = load("final-again.prop")
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "final-again.prop") + `:2:1: "locked" is final (made final at ` + defaults + `:5:7) and cannot be assigned again`
	if _, err := f.Eval(queryServer); err == nil || err.Error() != want {
		t.Errorf("error\n%v\nwant\n%s", err, want)
	}
}

func TestEval(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ctx  Context
		want map[string]string
	}{
		{"scope on one line with its statement", "[service.name=configuration_server] { a=1\n}\n", configServer, map[string]string{"a": "1"}},
		{"a } then a statement", "[service.name=x] {\na=1\n} b=2\n", configServer, map[string]string{"b": "2"}},
		{"a value runs to the end of the line", "[service.name=configuration_server] { a=1 }\n}\n", configServer, map[string]string{"a": "1 }"}},
		{"commas and", "[service.name=configuration_server, host=query-1] {\na=1\n}\n", configServer, map[string]string{}},
		{"bars or", "[host=query-1|infra-1.example.com] {\na=1\n}\n", configServer, map[string]string{"a": "1"}},
		{"the host's address", "[host=10.0.0.5] {\na=1\n}\n", configServer, map[string]string{"a": "1"}},
		{"a HOST key is host", "[HOST=infra-1] {\na=1\n}\n", configServer, map[string]string{"a": "1"}},
		{"values are not trimmed on the right", "[host=infra-1 ] {\na=1\n}\n", configServer, map[string]string{}},
		{"a key the process does not have", "[shard=1] {\na=1\n}\n", configServer, map[string]string{}},
		{"process.name written out", "[process.name=db_query_server] {\na=1\n}\n", queryServer, map[string]string{"a": "1"}},
		{"comments between the scope and {", "[host=infra-1]\n# why\n\n{\na=1\n}\n", configServer, map[string]string{"a": "1"}},
		{"nested, outer fails", "[host=query-1] {\n[service.name=configuration_server] {\na=1\n}\nb=2\n}\nc=3\n", configServer, map[string]string{"c": "3"}},
		{"finalize honoured only in scope", "[host=query-1] {\nfinalize a\n}\na=2\n", configServer, map[string]string{"a": "2"}},
		{"finalize again is harmless", "final a=1\nfinalize a\nfinalize a\n", configServer, map[string]string{"a": "1"}},
		{"key starting with final", "final.countdown=3\nfinalize.this=4\n", configServer, map[string]string{"final.countdown": "3", "finalize.this": "4"}},
		{"FINAL in capitals", "FINAL a=1\n", configServer, map[string]string{"a": "1"}},
		{"colon before equals", "a:b=c\n", configServer, map[string]string{"a": "b=c"}},
		{"empty key", "=x\n", configServer, map[string]string{"": "x"}},
		{"octal and lone low surrogate", `a=\101\0\477\udc00` + "\n", configServer, map[string]string{"a": "A\x00'7\uFFFD"}},
		{"surrogate pair", `a=\ud83d\ude00` + "\n", configServer, map[string]string{"a": "😀"}},
		{"more u's and a plus", `a=\uuu0041\u+0042` + "\n", configServer, map[string]string{"a": "AB"}},
		{"three backslashes do not continue", "a=x\\\\\\\nb=2\n", configServer, map[string]string{"a": `x\`, "b": "2"}},
		{"a lone backslash line in the middle continues", "a=1\\\n\\\nb=2\n", configServer, map[string]string{"a": "1b=2"}},
		{"a blank line ends a continuation", "a=1\\\n\nb=2\n", configServer, map[string]string{"a": "1", "b": "2"}},
		{"CR and CRLF end lines", "a=1\rb=2\r\nc=3", configServer, map[string]string{"a": "1", "b": "2", "c": "3"}},
		{"unicode blank is left-trimmed", "\u2003a=\u2003x", configServer, map[string]string{"a": "x"}},
		{"non-breaking space is not", "a=\u00a0x", configServer, map[string]string{"a": "\u00a0x"}},
		{"deep scopes on one line", strings.Repeat("[host=infra-1] { ", 100000) + "a=1\n" + strings.Repeat("}", 100000) + " b=2\n", configServer, map[string]string{"a": "1", "b": "2"}},
		{"escaped [ is a scope", `\u005bhost=infra-1] {` + "\na=1\n}\n", configServer, map[string]string{"a": "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("x.prop", []byte(tt.in), nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.Eval(tt.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if g := values(got); !maps.Equal(g, tt.want) {
				t.Errorf("got  %q\nwant %q", g, tt.want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	inc := files(map[string]string{
		"a.prop":     "includefiles=b.prop\n",
		"b.prop":     "includefiles=a.prop\n",
		"final.prop": "final x=1\nfinalize y.*\n",
		"bad.prop":   "[host=x\n",
	})
	tests := []struct {
		name string
		in   string
		// parse: the errors Parse gives, else eval: Eval's (for configServer).
		parse, eval []string
	}{
		{"lone backslash at the end", "a=1\n\\", []string{`x.prop:2:1: the line ends in a continuation \ but the file ends here`}, nil},
		{"lone backslash line, newline after", "a=1\n\\\n", []string{`x.prop:2:1: the line ends in a continuation \`}, nil},
		{"continuation at the end", "a=1\\", []string{`x.prop:1:4: the line ends in a continuation`}, nil},
		{"short unicode", `a=\u12`, []string{`x.prop:1:3: \u escape has fewer than 4 hex digits`}, nil},
		{"bad unicode", `  a=x\uZZZZ`, []string{`x.prop:1:6: \u escape "\\uZZZZ" is not 4 hex digits`}, nil},
		{"missing ]", "[host=x {\n", []string{`x.prop:1:1: the scope has no ]`}, nil},
		{"empty scope", "[] {\n}\n", []string{`x.prop:1:1: empty scope []`}, nil},
		{"empty scope of commas", "[ , ] {\n}\n", []string{`x.prop:1:1: empty scope []`}, nil},
		{"item without =", "[host=x, service.name] {\n}\n", []string{`x.prop:1:9: scope item " service.name" has no =`}, nil},
		{"unexpected {", "a=1\n{\n", []string{`x.prop:2:1: unexpected {`}, nil},
		{"unmatched }", "a=1\n  }\n", []string{`x.prop:2:3: } closes no scope`}, nil},
		{"statement before {", "[host=x]\na=1\n}\n", []string{`x.prop:2:1: expected { to open the scope declared at x.prop:1:1, found "a=1"`}, nil},
		{"never opened", "[host=x]\n", []string{`x.prop:1:1: the scope is never opened`}, nil},
		{"never closed", "a=1\n[host=x] {\n[host=y] {\n}\n", []string{`x.prop:2:1: the scope opened here is never closed`}, nil},
		{"reserved final", "final=1\n", []string{`x.prop:1:1: "final" is a reserved word`}, nil},
		{"reserved finalize", "final Finalize = 2\n", []string{`x.prop:1:7: "Finalize" is a reserved word`}, nil},
		{"includefiles not first", "# ok\na=1\nincludefiles=a.prop\n", []string{`x.prop:3:1: includefiles must be the first line`}, nil},
		{"include cycle", "includefiles=a.prop\n", []string{`b.prop:1:1: a.prop includes itself (through x.prop -> a.prop -> b.prop)`}, nil},
		{"include missing", "includefiles=nope.prop\n", []string{`x.prop:1:1: cannot read included file: open nope.prop: file does not exist`}, nil},
		{"include empty name", "includefiles=final.prop,,final.prop\n", []string{`x.prop:1:1: includefiles lists an empty file name`}, nil},
		{"error in an included file", "includefiles=bad.prop\n", []string{`bad.prop:1:1: the scope has no ]`}, nil},
		{"final assigned again", "final a=1\n\na = 2\n", nil, []string{`x.prop:3:1: "a" is final (made final at x.prop:1:7) and cannot be assigned again`}},
		{"finalized then assigned", "a=1\nfinalize b, a\na=2\n", nil, []string{`x.prop:3:1: "a" is final (made final at x.prop:2:1, assigned at x.prop:1:1) and cannot be assigned again`}},
		{"final again", "final a=1\nfinal a=2\n", nil, []string{`x.prop:2:7: "a" is final (made final at x.prop:1:7) and cannot be assigned again`}},
		{"wildcard", "finalize envoy.*.host\nenvoy.xds.host=h\nenvoy.host=h\n", nil, []string{`x.prop:2:1: "envoy.xds.host" is final (made final by finalize envoy.*.host at x.prop:1:1)`}},
		{"final from an included file", "includefiles=final.prop\nx=2\ny.z=3\n", nil, []string{`x.prop:2:1: "x" is final (made final at final.prop:1:7)`, `x.prop:3:1: "y.z" is final (made final by finalize y.* at final.prop:2:1)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("x.prop", []byte(tt.in), inc)
			want := tt.parse
			if err == nil {
				if tt.parse != nil {
					t.Fatalf("parsed; want errors %q", tt.parse)
				}
				_, err = f.Eval(configServer)
				want = tt.eval
			}
			if err == nil {
				t.Fatalf("no error; want %q", want)
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error is a %T, want Errors", err)
			}
			lines := strings.Split(err.Error(), "\n")
			for _, w := range want {
				if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, w) }) {
					t.Errorf("error\n%v\nhas no line starting %q", err, w)
				}
			}
			if len(lines) != len(want) {
				t.Errorf("%d errors, want %d:\n%v", len(lines), len(want), err)
			}
		})
	}
}

// Included files are named relative to the including one, and a file
// included from two places is read at each.
func TestIncludeResolution(t *testing.T) {
	var opened []string
	m := map[string]string{
		"/a/root.prop":      "includefiles=sub/one.prop, /abs/two.prop\nroot=1\n",
		"/a/sub/one.prop":   "includefiles=three.prop\none=1\nshared=one\n",
		"/a/sub/three.prop": "three=1\n",
		"/abs/two.prop":     "includefiles=../a/sub/three.prop\ntwo=1\nshared=two\n",
	}
	open := func(name string) ([]byte, string, error) {
		opened = append(opened, name)
		return files(m)(path.Clean(name))
	}
	f, err := Parse("/a/root.prop", []byte(m["/a/root.prop"]), open)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.Eval(Context{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"root": "1", "one": "1", "two": "1", "three": "1", "shared": "two"}
	if !maps.Equal(values(got), want) {
		t.Errorf("got %q, want %q", values(got), want)
	}
	if want := []string{"/a/sub/one.prop", "/a/sub/three.prop", "/abs/two.prop"}; !slices.Equal(opened, want) {
		t.Errorf("opened %q, want %q (three.prop once)", opened, want)
	}
}

func TestWildcard(t *testing.T) {
	tests := []struct {
		pattern, key string
		want         bool
	}{
		{"a", "a", true}, {"a", "ab", false}, {"*", "", true}, {"a*", "abc", true},
		{"*c", "abc", true}, {"a*c", "ac", true}, {"a*a", "a", false}, {"a*b*c", "aXbYc", true},
		{"a*b*c", "aXcYb", false}, {"*ab*b", "ab", false}, {"*ab*b", "abb", true}, {"a.*", "a.", true},
	}
	for _, tt := range tests {
		if got := wildcard(tt.pattern, tt.key); got != tt.want {
			t.Errorf("wildcard(%q, %q) = %v, want %v", tt.pattern, tt.key, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"a=1\n", "\\", "a=1\\", "[host=x|y, service.name=z] {\na=\\u00e9\\\n  b\n}\n",
		"includefiles=a.prop\nfinal x=1\nfinalize y*\n", "} {", "[a=b] { [c=d] { } } x", `\u+-123`, "\\uD83D\\uDE00\\0\\777",
	} {
		f.Add([]byte(s))
	}
	open := func(name string) ([]byte, string, error) {
		switch path.Base(name) {
		case "a.prop":
			return []byte("includefiles=b.prop\n[host=x] {\nfinal a=1\n}\n"), name, nil
		case "b.prop":
			return []byte("b=1\nfinalize a*\n"), name, nil
		}
		return nil, "", fs.ErrNotExist
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("f.prop", data, open)
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error %v is not Errors", err)
			}
			for _, e := range es {
				if e.Pos.File == "" || e.Pos.Line < 1 {
					t.Fatalf("error without a position: %v", e)
				}
			}
			return
		}
		for _, ctx := range []Context{{}, configServer, {Hosts: []string{"x"}, Props: map[string]string{"c": "d", "service.name": "z"}}} {
			m, err := file.Eval(ctx)
			if err != nil {
				continue
			}
			for k, v := range m {
				if v.Pos.Line < 1 {
					t.Fatalf("%q without a position", k)
				}
			}
		}
	})
}

func TestLine(t *testing.T) {
	tests := []struct{ key, value, want string }{
		{"a", "b", "a=b"},
		{"a b", "trailing  ", "a b=trailing  "},
		{"", "x", "=x"},
		{"k", `ends in \`, `k=ends in \\`},
		{"k", "tab\tnl\ncr\rff\fbs\bnul\x00", `k=tab\tnl\ncr\rff\fbs\bnul\u0000`},
		{"\u2003k", "é\xff", `\u2003k=é` + "\xff"},
		{"!", "", `\u0000!=`},
		{"[a", "b]", `\u0000[a=b]`},
		{"Final x", "1", `\u0000Final x=1`},
		{"finalize.x", "1", `finalize.x=1`},
	}
	for _, tt := range tests {
		got := Line(tt.key, tt.value)
		if got != tt.want {
			t.Errorf("Line(%q, %q) = %q, want %q", tt.key, tt.value, got, tt.want)
		}
		f, err := Parse("x", []byte(got), nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := f.Eval(Context{})
		if v, ok := m[tt.key]; err != nil || !ok || v.Value != tt.value || len(m) != 1 {
			t.Errorf("%q reads back as %q, %v", got, values(m), err)
		}
	}
}
