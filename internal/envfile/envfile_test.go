package envfile

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []Var
	}{
		{"plain", "A=1\nB=two words\n", []Var{{"A", "1"}, {"B", "two words"}}},
		{"no final newline", "A=1", []Var{{"A", "1"}}},
		{"comments and blanks", "# c\n; c\n\n  \nA=1\n", []Var{{"A", "1"}}},
		{"spaces around", "  A  =   x y   \n", []Var{{"A", "x y"}}},
		{"empty value", "A=\nB=", []Var{{"A", ""}, {"B", ""}}},
		{"single quotes are literal", `A='a \" $b # c'`, []Var{{"A", `a \" $b # c`}}},
		{"double quote escapes", `A="q\" bs\\ bt\` + "`" + ` d\$ other\n"`, []Var{{"A", `q" bs\ bt` + "`" + ` d$ other\n`}}},
		{"newline inside quotes", "A=\"one\ntwo\"\nB='x\ny'", []Var{{"A", "one\ntwo"}, {"B", "x\ny"}}},
		{"continuation unquoted", "A=one\\\ntwo\n", []Var{{"A", "onetwo"}}},
		{"continuation in double quotes", "A=\"one\\\ntwo\"", []Var{{"A", "onetwo"}}},
		{"unquoted backslash drops", `A=a\b\\c`, []Var{{"A", `ab\c`}}},
		{"quotes concatenate", `A='x' "y"z`, []Var{{"A", "xyz"}}},
		{"quote inside unquoted is literal", `A=it's`, []Var{{"A", "it's"}}},
		{"hash inside value", "A=x#y", []Var{{"A", "x#y"}}},
		{"CRLF", "A=1\r\nB=2\r\n", []Var{{"A", "1"}, {"B", "2"}}},
		{"later wins, first place", "A=1\nB=2\nA=3\n", []Var{{"A", "3"}, {"B", "2"}}},
		{"unicode", "A=héllo ✓", []Var{{"A", "héllo ✓"}}},
		{"trailing backslash at EOF", `A=x\`, []Var{{"A", "x"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse("f.env", []byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"no equals", "A=1\nhunter2\n", "f.env:2: no = on the line"},
		{"no equals at EOF", "hunter2", "f.env:1: no = on the line"},
		{"bad name", "1A=x", `f.env:1: "1A" is not a variable name`},
		{"name with dash", "A-B=x", `"A-B" is not a variable name`},
		{"export", "export A=x", "no export"},
		{"empty name", "=x", "needs a name"},
		{"unterminated double", "A=1\nB=\"open\n\nC=3\n", "f.env:2: the quote opened here is never closed"},
		{"unterminated single", "B='open", "f.env:1: the quote opened here is never closed"},
		{"control character", "A=a\x01b", "f.env:1: A: the value holds the control character U+0001"},
		{"bad utf8", "A=\xff", "A: the value is not valid UTF-8"},
		{"NUL", "A=1\nB=\x00", "f.env:2: a NUL byte"},
		{"comment continued", "# note \\\nA=1", "f.env:1: a comment ends in a backslash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.env", []byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "open") && tc.name != "unterminated double" && tc.name != "unterminated single" {
				t.Errorf("error quotes a value: %v", err)
			}
		})
	}
}

func TestFormatRoundTrip(t *testing.T) {
	vars := []Var{{"A", ""}, {"B", `q" bs\ bt` + "` d$ x\\\nnl\ttab"}, {"C", "  spaces  "}, {"D", "'single'"}, {"E", "# not a comment"}}
	got, err := Parse("f.env", Format(vars))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, vars) {
		t.Fatalf("round trip: got %q, want %q", got, vars)
	}
}

// FuzzParse: no input panics the parser, and whatever it accepts is
// written by Format in a form it reads back to the same variables.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"A=1\n", `A="x\"y"`, "A='x\ny'", "# c\\\nA=1", "A=x\\\ny", " A = b c \r\n", "A=\"\\\n\"", "x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		vars, err := Parse("fuzz", data)
		if err != nil {
			return
		}
		again, err := Parse("formatted", Format(vars))
		if err != nil {
			t.Fatalf("Format's output does not parse: %v\n%q", err, Format(vars))
		}
		if len(vars) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(vars, again) {
			t.Fatalf("round trip changed the variables:\n%q\n%q", vars, again)
		}
	})
}
