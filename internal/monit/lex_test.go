package monit

import (
	"reflect"
	"testing"
)

// TestProgramArgv checks that a program string is split as monit's lexer
// splits it: on blanks and newlines, '...' one argument, no shell.
func TestProgramArgv(t *testing.T) {
	for _, tc := range []struct {
		program string
		want    []string
	}{
		{`"/bin/true"`, []string{"/bin/true"}},
		{`"/bin/sh -c 'echo a; sleep 1'"`, []string{"/bin/sh", "-c", "echo a; sleep 1"}},
		{"\"/bin/x\t a\n b\"", []string{"/bin/x", "a", "b"}},
		{`"/bin/x a'b c"`, []string{"/bin/x", "a'b", "c"}},
		{`"/bin/x $HOME > /tmp/out"`, []string{"/bin/x", "$HOME", ">", "/tmp/out"}},
	} {
		im, err := parseWith(noFS, "t.conf", []byte("check process a with pidfile /run/a.pid\n start program = "+tc.program+"\n"))
		if err != nil {
			t.Errorf("%s: %v", tc.program, err)
			continue
		}
		var got struct {
			Start struct {
				Command []string `yaml:"command"`
			} `yaml:"start"`
		}
		if err := im.Services[0].Node.Decode(&got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Start.Command, tc.want) {
			t.Errorf("%s: argv %q; want %q", tc.program, got.Start.Command, tc.want)
		}
	}
}

// TestDependsList checks where monit's dependency list ends.
func TestDependsList(t *testing.T) {
	const tail = "check process b with pidfile /b\ncheck process c with pidfile /c\n"
	for _, tc := range []struct {
		line string
		want []string
		ok   bool
	}{
		{"depends on b, c", []string{"b", "c"}, true},
		{"depends on b,c", []string{"b", "c"}, true},
		{"depend b ,c", []string{"b", "c"}, true},
		{"depends on b,\n   c", []string{"b", "c"}, true},
		{"depends on \"b\", 'c'", []string{"b", "c"}, true},
		{"depends on b c", nil, false}, // the list ends at b; c is a stray word
	} {
		im, err := parseWith(noFS, "t.conf", []byte("check process a with pidfile /a\n "+tc.line+"\n"+tail))
		if (err == nil) != tc.ok {
			t.Errorf("%q: error %v; want ok=%v", tc.line, err, tc.ok)
			continue
		}
		if err != nil {
			continue
		}
		var got struct {
			DependsOn []string `yaml:"depends_on"`
		}
		if err := im.Services[0].Node.Decode(&got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.DependsOn, tc.want) {
			t.Errorf("%q: depends_on %q; want %q", tc.line, got.DependsOn, tc.want)
		}
	}
}

// TestErrorsPerStatement checks that one run reports every bad statement.
func TestErrorsPerStatement(t *testing.T) {
	_, err := parseWith(noFS, "t.conf", []byte("check process a with pidfile /a\n mode x\ncheck process b with pidfile /b\n onreboot y\n"))
	es, _ := err.(Errors)
	if len(es) != 2 || es[0].Line != 2 || es[1].Line != 4 || es[0].Column != 7 {
		t.Errorf("errors %v; want two, at 2:7 and line 4", err)
	}
}
