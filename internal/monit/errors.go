package monit

import (
	"fmt"
	"strings"
)

// Error is one refused statement: where it is and what was expected.
type Error struct {
	File   string
	Line   int
	Column int // 0 when only the line is known
	Msg    string
}

func (e Error) Error() string {
	if e.Column > 0 {
		return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// Errors are all the refusals of one import, in the order found.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func (es *Errors) add(file string, line, col int, format string, args ...any) {
	*es = append(*es, Error{File: file, Line: line, Column: col, Msg: fmt.Sprintf(format, args...)})
}

func (es Errors) err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}
