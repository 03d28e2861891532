// Package monit reads monit 5.33 control files, as Deephaven's installer
// writes them under /etc/sysconfig/illumon.d/monit/, and maps each
// "check process" to a dhvisor service: a YAML mapping with agent.yaml's
// service fields, every node positioned at the monit statement it came
// from. It follows monit's own lexer and grammar (src/l.l and src/p.y)
// for what it accepts, refuses what monit -t refuses, and refuses a few
// things monit takes but that make no sense to supervise (port 99999, a
// zero timeout); see the strictness list in the tests.
//
// The package knows nothing of internal/config; config decodes the nodes.
package monit

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// DefaultInterval is monit's poll cycle when no set daemon gives one.
const DefaultInterval = 30 * time.Second

// Import is what a set of monit control files defines.
type Import struct {
	Services   []Service
	NotApplied []Statement
	// Interval is the poll cycle (set daemon N, else DefaultInterval);
	// every count of cycles became a duration with it.
	Interval time.Duration
	// StartDelay is set daemon's "with start delay N" (not applied).
	StartDelay time.Duration
	// Files are the files read, includes too, in the order monit reads them.
	Files []string
}

// Service is one imported "check process".
type Service struct {
	Name string
	File string
	Line int
	// Node is a mapping of agent.yaml service fields (start, pidfile,
	// checks, ...). Each node's Line and Column are those of the monit
	// statement it came from; Origins names that statement's file.
	Node    *yaml.Node
	Origins map[*yaml.Node]string
}

// Statement is a statement accepted but not applied: it has no bearing on
// supervision (set httpd, alert, check file, ...) or no dhvisor mapping.
type Statement struct {
	File string
	Line int
	Text string
}

func (s Statement) String() string { return fmt.Sprintf("%s:%d: %s", s.File, s.Line, s.Text) }

// fsys is how includes reach files; fuzzing replaces it.
type fsys struct {
	glob func(pattern string) ([]string, error)
	read func(name string) ([]byte, error)
	dir  func(name string) bool
}

var osFS = fsys{
	glob: filepath.Glob,
	read: os.ReadFile,
	dir: func(name string) bool {
		fi, err := os.Stat(name)
		return err == nil && fi.IsDir()
	},
}

type loader struct {
	fs    fsys
	errs  Errors
	toks  []token
	stack []string
	files []string
	notes []Statement
}

func (l *loader) lexFile(name string, data []byte) {
	l.files = append(l.files, name)
	if !utf8.Valid(data) {
		// monit takes any bytes, but services named or run with bytes
		// that are not text cannot be written to agent.yaml or shown.
		line, col := 1, 1
		for i := 0; i < len(data); {
			r, n := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			if data[i] == '\n' {
				line, col = line+1, 0
			}
			i += n
			col++
		}
		l.errs.add(name, line, col, "the file is not UTF-8 text (expected UTF-8; monit takes any bytes, dhvisor refuses them)")
		return
	}
	l.stack = append(l.stack, name)
	lx := &lexer{f: &srcFile{name: name, data: data}, d: data, line: 1, out: &l.toks, errs: &l.errs}
	lx.include = func(glob string, at token) { l.include(glob, at, name) }
	lx.lex()
	l.stack = l.stack[:len(l.stack)-1]
}

const maxIncludeDepth = 1024 // monit's MAX_STACK_DEPTH

// include follows "include GLOB" as monit does: every match in glob(3)'s
// order, skipping directories and backup copies (name~), ignoring an
// include loop. A relative pattern is taken from the including file's
// directory (monit takes it from its working directory, which for the
// monit daemon is /; the file's directory is what an operator means).
func (l *loader) include(glob string, at token, from string) {
	pattern := glob
	if !filepath.IsAbs(pattern) {
		pattern = filepath.Join(filepath.Dir(from), pattern)
	}
	matches, err := l.fs.glob(pattern)
	if err != nil {
		l.errs.add(from, at.line, at.col, "include %q: %v", glob, err)
		return
	}
	sort.Strings(matches)
	if len(matches) == 0 {
		l.notes = append(l.notes, Statement{File: from, Line: at.line, Text: "include " + glob + " (no file matches)"})
	}
	if len(l.stack) >= maxIncludeDepth {
		l.errs.add(from, at.line, at.col, "include files limit reached (%d)", maxIncludeDepth)
		return
	}
outer:
	for _, m := range matches {
		if strings.HasSuffix(m, "~") || l.fs.dir(m) {
			continue
		}
		for _, s := range l.stack {
			if s == m {
				l.notes = append(l.notes, Statement{File: from, Line: at.line, Text: "include " + m + " (include loop, skipped as monit skips it)"})
				continue outer
			}
		}
		data, err := l.fs.read(m)
		if err != nil {
			l.errs.add(from, at.line, at.col, "cannot include file %q: %v", m, err)
			continue
		}
		l.lexFile(m, data)
	}
}

// Load reads monit control files: each argument is a file, a directory
// (all its files, as include DIR/* would) or a glob; includes are followed.
func Load(globs []string) (*Import, error) {
	l := &loader{fs: osFS}
	var names []string
	seen := map[string]bool{}
	for _, g := range globs {
		var ms []string
		switch {
		case osFS.dir(g):
			ms, _ = filepath.Glob(filepath.Join(g, "*"))
		case strings.ContainsAny(g, "*?["):
			var err error
			if ms, err = filepath.Glob(g); err != nil {
				l.errs = append(l.errs, Error{File: g, Msg: fmt.Sprintf("bad pattern: %v", err)})
			}
		default:
			ms = []string{g}
		}
		sort.Strings(ms)
		for _, m := range ms {
			if !seen[m] && !strings.HasSuffix(m, "~") && !osFS.dir(m) {
				seen[m] = true
				names = append(names, m)
			}
		}
	}
	if len(names) == 0 && len(l.errs) == 0 {
		return nil, Errors{{File: strings.Join(globs, " "), Msg: "no monit control file matches"}}
	}
	for _, n := range names {
		data, err := os.ReadFile(n)
		if err != nil {
			l.errs = append(l.errs, Error{File: n, Msg: err.Error()})
			continue
		}
		l.lexFile(n, data)
	}
	return l.finish()
}

// Parse reads one control file's text; its includes are read from disk.
func Parse(file string, data []byte) (*Import, error) {
	return parseWith(osFS, file, data)
}

func parseWith(fs fsys, file string, data []byte) (*Import, error) {
	l := &loader{fs: fs}
	l.lexFile(file, data)
	return l.finish()
}

func (l *loader) finish() (*Import, error) {
	p := &parser{toks: l.toks, errs: &l.errs, names: map[string]*declared{}}
	p.parse()
	if err := l.errs.err(); err != nil {
		return nil, err
	}
	im := &Import{Interval: DefaultInterval, Files: l.files, StartDelay: time.Duration(p.startDelay) * time.Second}
	if p.interval > 0 {
		im.Interval = time.Duration(p.interval) * time.Second
	}
	im.NotApplied = append(l.notes, p.notApplied...)
	m := &mapper{im: im, p: p}
	for _, s := range p.services {
		im.Services = append(im.Services, m.service(s))
	}
	im.NotApplied = append(im.NotApplied, m.notes...)
	return im, nil
}

// hostCPUs is how many CPUs monit divides a process's CPU time by here.
var hostCPUs = runtime.NumCPU
