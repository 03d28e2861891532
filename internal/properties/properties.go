// Package properties reads Deephaven's .prop files as Deephaven's own
// Configuration (io.deephaven.configuration.ParsedProperties) reads them:
// Java escapes, continuations, scopes evaluated for one process on one
// host, includefiles, final and finalize. A file is parsed once (Parse) and
// evaluated for each process that would read it (Eval), because the same
// file gives each process different values.
package properties

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Pos is where something was written: file, line and byte column (1-based;
// 0 when not known).
type Pos struct {
	File      string
	Line, Col int
}

func (p Pos) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Col == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// Error is one broken rule, at the place it was broken.
type Error struct {
	Pos Pos
	Msg string
}

func (e *Error) Error() string { return e.Pos.String() + ": " + e.Msg }

// Errors are every problem found, one a line, so one run shows them all.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Value is one property's value as a process sees it, with where it was
// assigned.
type Value struct {
	Value string
	Pos   Pos
	// Final: the key was made final (final key=value, or finalize with a
	// pattern it matches) in a scope this process is in.
	Final bool
	// Seq orders the values as they were assigned (included files first),
	// which positions alone cannot across files.
	Seq int
}

// Opener reads an included file. name is already resolved against the
// including file's directory; the returned name is how positions name the
// file (and what its own includes are resolved against).
type Opener func(name string) (data []byte, resolved string, err error)

// OpenFile is the Opener that reads the file system.
func OpenFile(name string) ([]byte, string, error) {
	data, err := os.ReadFile(name)
	return data, name, err
}

// Limits that keep hostile input from costing unbounded time or memory: a
// chain of includes this deep, or a file whose includes expand to this many
// files in all (a file included twice is evaluated twice, as Deephaven
// does), is refused; parsing stops after maxErrors problems.
const (
	maxIncludeDepth = 32
	maxExpanded     = 1000
	maxErrors       = 100
)

// Keywords of Deephaven's syntax. final and finalize are followed by a
// space; a key may start with either word (final.countdown).
const (
	keyInclude      = "includefiles"
	wordFinal       = "final"
	wordFinalize    = "finalize"
	prefixFinal     = wordFinal + " "
	prefixFinalize  = wordFinalize + " "
	hostKey         = "host"
	processKey      = "process"
	processNameProp = "process.name"
)

type stmtKind uint8

const (
	stmtSet      stmtKind = iota // key=value
	stmtFinalSet                 // final key=value
	stmtFinalize                 // finalize k1, k2*
	stmtPush                     // [conditions] {
	stmtPop                      // }
	stmtInclude                  // includefiles = a.prop, b.prop
)

type stmt struct {
	kind     stmtKind
	pos      Pos
	key, val string
	names    []string // finalize
	scope    []cond   // push: all must hold
	includes []*File
}

// cond is one scope item, key=v1|v2: one of the values must match.
type cond struct {
	key    string
	values []string
}

// File is a parsed properties file and, already parsed, the files it
// includes.
type File struct {
	Name  string
	stmts []stmt
	// expanded counts this file and every file its includes pull in.
	expanded int
}

type parser struct {
	file  string
	open  Opener
	stack []string         // files being parsed, to refuse include cycles
	cache map[string]*File // a file included twice is parsed once
	errs  *Errors

	stmts     []stmt
	scopes    []Pos // open scopes, innermost last
	expecting *Pos  // a scope declared and not yet opened with {
	firstDone bool  // a non-comment line has been read
}

// Parse reads a properties file (file names it in errors) and every file
// its includefiles line names, each opened through open with its name
// resolved against the including file's directory. Every syntax error is
// returned, each with its file, line and column; errors that depend on
// the process (a final key assigned again) are Eval's.
func Parse(file string, data []byte, open Opener) (*File, error) {
	var es Errors
	f := parse(file, data, open, nil, map[string]*File{}, &es)
	if len(es) > 0 {
		return nil, es
	}
	return f, nil
}

func parse(file string, data []byte, open Opener, stack []string, cache map[string]*File, es *Errors) *File {
	p := &parser{file: file, open: open, stack: append(stack, file), cache: cache, errs: es}
	for _, l := range logicalLines(file, data) {
		if len(*es) >= maxErrors {
			break
		}
		if l.err != nil {
			p.fail(l.err.Pos, "%s", l.err.Msg)
			continue
		}
		p.line(l, 0)
	}
	if p.expecting != nil {
		p.fail(*p.expecting, "the scope is never opened (expected { after it)")
	}
	for _, at := range p.scopes {
		p.fail(at, "the scope opened here is never closed (expected } before the end of %s)", file)
	}
	f := &File{Name: file, stmts: p.stmts, expanded: 1}
	for _, s := range f.stmts {
		for _, inc := range s.includes {
			f.expanded += inc.expanded
		}
		if f.expanded > maxExpanded {
			p.fail(s.pos, "includes expand to more than %d files (a file included twice counts twice)", maxExpanded)
			f.stmts = nil
			break
		}
	}
	return f
}

func (p *parser) fail(at Pos, format string, args ...any) {
	if len(*p.errs) < maxErrors {
		*p.errs = append(*p.errs, &Error{Pos: at, Msg: fmt.Sprintf(format, args...)})
	}
}

func (p *parser) pos(l logical, off int) Pos {
	at := l.locs[off]
	return Pos{File: p.file, Line: at.line, Col: at.col}
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// line reads the logical line l from byte off, as ParsedProperties.parseLine
// does; what follows a scope's ], a { or a } on the same line is read as a
// line of its own. Deephaven recurses for that; a loop keeps a line of a
// million braces from growing the stack.
func (p *parser) line(l logical, off int) {
	read := false
	for off >= 0 {
		s := l.text[off:]
		if s == "" || s[0] == '#' || s[0] == '!' {
			break
		}
		read = true
		off = p.statement(l, off, s)
	}
	// Only now, as Deephaven does: [k=v] { includefiles=... on the first
	// line is allowed.
	if read {
		p.firstDone = true
	}
}

// statement reads one statement of the line at off (s is the line from
// there) and returns where the rest of the line starts, or -1 if the
// statement took the rest.
func (p *parser) statement(l logical, off int, s string) int {
	at := p.pos(l, off)
	next := func(o int) int { return o + ltrimLen(l.text[o:]) }
	switch {
	case p.expecting != nil && s[0] != '{':
		p.fail(at, "expected { to open the scope declared at %s, found %s", *p.expecting, quote(s))
		// Taken as opened, so its } does not count as unmatched too.
		p.scopes = append(p.scopes, *p.expecting)
		p.expecting = nil
		return off
	case p.expecting == nil && s[0] == '{':
		p.fail(at, "unexpected { (expected it only after a scope declaration [key=value])")
	case hasPrefixFold(s, prefixFinalize):
		p.finalize(l, off+len(prefixFinalize))
	case hasPrefixFold(s, prefixFinal):
		p.assign(l, next(off+len(prefixFinal)), true)
	case s[0] == '[':
		if end := p.declareScope(l, off); end >= 0 {
			return next(end)
		}
	case s[0] == '{':
		p.scopes = append(p.scopes, *p.expecting)
		p.expecting = nil
		return next(off + 1)
	case s[0] == '}':
		if len(p.scopes) == 0 {
			p.fail(at, "} closes no scope (expected a [key=value] { before it)")
		} else {
			p.scopes = p.scopes[:len(p.scopes)-1]
			p.stmts = append(p.stmts, stmt{kind: stmtPop, pos: at})
		}
		return next(off + 1)
	default:
		p.assign(l, off, false)
	}
	return -1
}

// declareScope reads [k1=v1|v2, k2=v3]: commas AND, | OR. Keys are
// trimmed; values only left-trimmed and never split at blanks, as
// Deephaven compares them ([host=a| b] matches "a" and " b", not "b").
//
// It returns where the line goes on after the ], or -1 if it has none.
func (p *parser) declareScope(l logical, off int) int {
	s := l.text[off:]
	at := p.pos(l, off)
	end := strings.IndexByte(s, ']')
	if end < 0 {
		p.fail(at, "the scope has no ] (expected [key=value, ...] on one line)")
		return -1
	}
	section := s[1:end]
	items := javaSplit(section, ",")
	var conds []cond
	switch {
	case !slices.ContainsFunc(items, func(i string) bool { return strings.TrimSpace(i) != "" }):
		p.fail(at, "empty scope [] (expected [key=value, ...])")
	default:
		base := off + 1
		for _, item := range items {
			k, v, ok := strings.Cut(item, "=")
			if !ok {
				p.fail(p.pos(l, base), "scope item %s has no = (expected key=value or key=v1|v2)", quote(item))
			} else {
				conds = append(conds, cond{key: javaTrim(k), values: javaSplit(v[ltrimLen(v):], "|")})
			}
			base += len(item) + 1
		}
	}
	if len(conds) != len(items) || len(conds) == 0 {
		conds = []cond{{key: "", values: nil}} // matches nothing; keeps { and } balanced
	}
	p.stmts = append(p.stmts, stmt{kind: stmtPush, pos: at, scope: conds})
	p.expecting = &at
	return off + end + 1
}

// javaSplit is Java's String.split for a literal separator: trailing empty
// strings are dropped, and a string without the separator is itself.
func javaSplit(s, sep string) []string {
	if !strings.Contains(s, sep) {
		return []string{s}
	}
	parts := strings.Split(s, sep)
	for len(parts) > 0 && parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	return parts
}

// reserved says whether key is one of the words a key cannot be.
func reserved(key string) bool {
	return strings.EqualFold(key, wordFinal) || strings.EqualFold(key, wordFinalize)
}

// assign reads key=value or key:value: the key ends at the first = or :
// (blanks alone do not end it) and is trimmed; the value is left-trimmed
// only, so trailing blanks stay; no separator means an empty value.
func (p *parser) assign(l logical, off int, final bool) {
	s := l.text[off:]
	at := p.pos(l, off)
	i := strings.IndexAny(s, ":=")
	key, val := s, ""
	if i >= 0 {
		key, val = s[:i], s[i+1:]
		val = val[ltrimLen(val):]
	}
	key = javaTrim(key)
	switch {
	case key == keyInclude: // final includefiles= includes all the same
		p.include(at, val)
	case reserved(key):
		p.fail(at, "%s is a reserved word and cannot be a property's name", quote(key))
	default:
		kind := stmtSet
		if final {
			kind = stmtFinalSet
		}
		p.stmts = append(p.stmts, stmt{kind: kind, pos: at, key: key, val: val})
	}
}

// finalize reads finalize k1, k2: each name trimmed, * matching any run of
// characters. A name never assigned is final all the same: assigning it
// later is an error.
func (p *parser) finalize(l logical, off int) {
	var names []string
	for _, n := range javaSplit(l.text[off:], ",") {
		names = append(names, javaTrim(n))
	}
	p.stmts = append(p.stmts, stmt{kind: stmtFinalize, pos: p.pos(l, off-len(prefixFinalize)), names: names})
}

// include reads includefiles = a.prop, b.prop, allowed only as the first
// non-comment line. Names are resolved against the including file's
// directory and each file is parsed now; Eval reads them before the rest
// of this file, at the top scope, sharing its finals.
func (p *parser) include(at Pos, val string) {
	if p.firstDone {
		p.fail(at, "%s must be the first line that is not a comment or blank", keyInclude)
		return
	}
	st := stmt{kind: stmtInclude, pos: at}
	for _, name := range javaSplit(val, ",") {
		name = javaTrim(name)
		if name == "" {
			p.fail(at, "%s lists an empty file name (expected a.prop, b.prop)", keyInclude)
			continue
		}
		if !filepath.IsAbs(name) {
			name = filepath.Join(filepath.Dir(p.file), name)
		}
		if f := p.includeFile(at, name); f != nil {
			st.includes = append(st.includes, f)
		}
	}
	p.stmts = append(p.stmts, st)
}

func (p *parser) includeFile(at Pos, name string) *File {
	for _, s := range p.stack {
		if s == name {
			p.fail(at, "%s includes itself (through %s)", name, strings.Join(p.stack, " -> "))
			return nil
		}
	}
	if f, ok := p.cache[name]; ok {
		return f
	}
	if len(p.stack) >= maxIncludeDepth {
		p.fail(at, "includes nested more than %d deep", maxIncludeDepth)
		return nil
	}
	if p.open == nil {
		p.fail(at, "cannot read %s: no way to open included files here", name)
		return nil
	}
	data, resolved, err := p.open(name)
	if err != nil {
		p.fail(at, "cannot read included file: %v", err)
		return nil
	}
	for _, s := range p.stack {
		if s == resolved {
			p.fail(at, "%s includes itself (through %s)", resolved, strings.Join(p.stack, " -> "))
			return nil
		}
	}
	f := parse(resolved, data, p.open, p.stack, p.cache, p.errs)
	p.cache[name] = f
	return f
}

func quote(s string) string {
	const max = 60
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strconv.Quote(s)
}
