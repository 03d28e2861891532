// Package envfile reads and writes environment files in the syntax of
// systemd's EnvironmentFile= (systemd.exec(5)): KEY=VALUE lines, # and ;
// comments, values unquoted, 'single quoted' (literal) or "double quoted"
// (\" \\ \` \$ escaped, other backslashes kept), a backslash at the end of
// a line continuing it. Service secrets come from such files (env_files:),
// so a file written for systemd reads the same under dhvisor.
//
// Parse follows systemd's own parser (src/basic/env-file.c) but refuses
// what systemd would skip with only a log line, or read differently
// between versions: a line without =, a name that is not a variable name,
// invalid UTF-8, a control character, an unterminated quote, a comment
// continued by a backslash (systemd 254 changed what follows it). An
// operator learns of the mistake at the start instead of finding a
// variable missing. Errors name the file and line, never a value: values
// are secrets.
package envfile

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Var is one variable.
type Var struct {
	Name  string
	Value string
}

// Parse reads data, the content of the file name (for errors), and returns
// its variables in order; a name set twice keeps its last value, in the
// place of its first, as systemd does.
func Parse(name string, data []byte) ([]Var, error) {
	p := parser{file: name, line: 1}
	return p.parse(string(data))
}

const (
	whitespace = " \t\n\r"
	newline    = "\n\r"
	// needEscape are the characters a backslash escapes in double quotes;
	// before any other it stays (systemd's SHELL_NEED_ESCAPE).
	needEscape = "\"\\`$"
)

type state int

const (
	preKey state = iota
	inKey
	preValue
	inValue
	valueEscape
	singleQuote
	doubleQuote
	doubleQuoteEscape
	inComment
	commentEscape
)

type parser struct {
	file string
	line int // of the character being read
	// start is the line the variable being read began on.
	start int
	out   []Var
	index map[string]int
}

func (p *parser) errorf(line int, format string, args ...any) error {
	return fmt.Errorf("%s:%d: %s", p.file, line, fmt.Sprintf(format, args...))
}

func (p *parser) parse(s string) ([]Var, error) {
	if i := strings.IndexByte(s, 0); i >= 0 {
		// systemd stops reading at a NUL: what follows would be lost.
		return nil, p.errorf(1+strings.Count(s[:i], "\n"), "a NUL byte (not a text file)")
	}
	var key, value strings.Builder
	// trimKey and trimValue are where trailing unquoted whitespace
	// began (-1: none), which systemd drops.
	trimKey, trimValue := -1, -1
	quoteLine := 0
	st := preKey
	push := func() error {
		k := key.String()
		if trimKey >= 0 {
			k = k[:trimKey]
		}
		v := value.String()
		if trimValue >= 0 {
			v = v[:trimValue]
		}
		key.Reset()
		value.Reset()
		trimKey, trimValue = -1, -1
		return p.add(k, v)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch st {
		case preKey:
			switch {
			case c == '#' || c == ';':
				st = inComment
			case c == '=':
				// systemd would take = as the name's first character.
				return nil, p.errorf(p.line, "a variable needs a name before =")
			case strings.IndexByte(whitespace, c) < 0:
				st, p.start, trimKey = inKey, p.line, -1
				key.WriteByte(c)
			}
		case inKey:
			switch {
			case strings.IndexByte(newline, c) >= 0:
				return nil, p.errorf(p.start, "no = on the line (expected NAME=VALUE)")
			case c == '=':
				st, trimValue = preValue, -1
			default:
				if strings.IndexByte(whitespace, c) < 0 {
					trimKey = -1
				} else if trimKey < 0 {
					trimKey = key.Len()
				}
				key.WriteByte(c)
			}
		case preValue:
			switch {
			case strings.IndexByte(newline, c) >= 0:
				if err := push(); err != nil {
					return nil, err
				}
				st = preKey
			case c == '\'':
				st, quoteLine = singleQuote, p.line
			case c == '"':
				st, quoteLine = doubleQuote, p.line
			case c == '\\':
				st = valueEscape
			case strings.IndexByte(whitespace, c) < 0:
				st = inValue
				value.WriteByte(c)
			}
		case inValue:
			switch {
			case strings.IndexByte(newline, c) >= 0:
				if err := push(); err != nil {
					return nil, err
				}
				st = preKey
			case c == '\\':
				st, trimValue = valueEscape, -1
			default:
				if strings.IndexByte(whitespace, c) < 0 {
					trimValue = -1
				} else if trimValue < 0 {
					trimValue = value.Len()
				}
				value.WriteByte(c)
			}
		case valueEscape:
			st = inValue
			if strings.IndexByte(newline, c) < 0 {
				value.WriteByte(c)
			}
		case singleQuote:
			if c == '\'' {
				st = preValue
			} else {
				value.WriteByte(c)
			}
		case doubleQuote:
			switch c {
			case '"':
				st = preValue
			case '\\':
				st = doubleQuoteEscape
			default:
				value.WriteByte(c)
			}
		case doubleQuoteEscape:
			st = doubleQuote
			switch {
			case strings.IndexByte(needEscape, c) >= 0:
				value.WriteByte(c)
			case c != '\n':
				value.WriteByte('\\')
				value.WriteByte(c)
			}
		case inComment:
			switch {
			case c == '\\':
				st = commentEscape
			case strings.IndexByte(newline, c) >= 0:
				st = preKey
			}
		case commentEscape:
			if strings.IndexByte(newline, c) >= 0 {
				return nil, p.errorf(p.line, "a comment ends in a backslash: systemd before 254 continues the comment on the next line, later versions do not; remove the backslash")
			}
			st = inComment
		}
		if c == '\n' {
			p.line++
		}
	}
	switch st {
	case inKey:
		return nil, p.errorf(p.start, "no = on the line (expected NAME=VALUE)")
	case singleQuote, doubleQuote, doubleQuoteEscape:
		return nil, p.errorf(quoteLine, "the quote opened here is never closed")
	case preValue, inValue, valueEscape:
		if st == valueEscape {
			// A backslash as the file's last character escapes nothing.
			trimValue = -1
		}
		if err := push(); err != nil {
			return nil, err
		}
	}
	return p.out, nil
}

// add checks one variable and records it.
func (p *parser) add(name, value string) error {
	if err := CheckName(name); err != nil {
		return p.errorf(p.start, "%v", err)
	}
	if err := CheckValue(value); err != nil {
		return p.errorf(p.start, "%s: %v", name, err)
	}
	if p.index == nil {
		p.index = map[string]int{}
	}
	if i, ok := p.index[name]; ok {
		p.out[i].Value = value
		return nil
	}
	p.index[name] = len(p.out)
	p.out = append(p.out, Var{Name: name, Value: value})
	return nil
}

// CheckName accepts a variable name as systemd and POSIX shells do:
// letters, digits and _, not starting with a digit.
func CheckName(name string) error {
	if name == "" {
		return fmt.Errorf("a variable needs a name before =")
	}
	if strings.HasPrefix(name, "export ") {
		return fmt.Errorf("%q: no export (systemd reads NAME=VALUE lines, not shell)", clip(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return fmt.Errorf("%q is not a variable name (letters, digits and _, not starting with a digit)", clip(name))
	}
	return nil
}

// CheckValue accepts what systemd passes on: valid UTF-8 without control
// characters other than tab and newline. The value is not quoted in the
// error.
func CheckValue(v string) error {
	if !utf8.ValidString(v) {
		return fmt.Errorf("the value is not valid UTF-8")
	}
	for _, r := range v {
		if r < 0x20 && r != '\t' && r != '\n' || r == 0x7f {
			return fmt.Errorf("the value holds the control character %U", r)
		}
	}
	return nil
}

// clip shortens the name an error quotes: a line whose = is misplaced
// may have a secret where its name should be.
func clip(s string) string {
	const max = 16
	if len(s) <= max {
		return s
	}
	r := []rune(s)
	if len(r) <= max {
		return s
	}
	return string(r[:max]) + "…"
}

// Format writes vars in a form Parse (and systemd) read back to the same
// variables: every value double quoted, its \ " ` $ escaped. The caller
// checks names and values (CheckName, CheckValue) first.
func Format(vars []Var) []byte {
	var b strings.Builder
	for _, v := range vars {
		b.WriteString(v.Name)
		b.WriteString(`="`)
		for i := 0; i < len(v.Value); i++ {
			c := v.Value[i]
			if strings.IndexByte(needEscape, c) >= 0 {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteString("\"\n")
	}
	return []byte(b.String())
}
