package config

import (
	"fmt"
	"strings"
)

// Error is one problem in a configuration file, located as precisely as the
// file allows so an operator can go straight to it.
type Error struct {
	File  string // path as given, or "roles/<file>" for shipped definitions
	Line  int    // 0 when unknown
	Field string // dotted path, e.g. services.db_query_server.ports.websocket
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors collects every problem found, so one run of `dhctl validate` shows
// them all instead of one per edit.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func (es *Errors) add(file string, line int, field, format string, args ...any) {
	*es = append(*es, &Error{File: file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (es Errors) err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}
