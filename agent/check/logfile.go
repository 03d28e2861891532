package check

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/agent/safefs"
)

// LogMark is what a log file's name led to at one moment, and how long
// that file was then.
type LogMark struct {
	Exists   bool
	Dev, Ino uint64
	Size     int64
}

// MarkLog records the file at path as it is now, for LogOptions.Before. A
// file that is missing, or that cannot be reached without following a
// link a service user made, is recorded as absent: everything found there
// later is then new.
func MarkLog(path string) LogMark {
	d, err := safefs.OpenDir(filepath.Dir(path))
	if err != nil {
		return LogMark{}
	}
	defer d.Close()
	st, err := d.Stat(filepath.Base(path))
	if err != nil {
		return LogMark{}
	}
	return LogMark{Exists: true, Dev: st.Dev, Ino: st.Ino, Size: st.Size}
}

// LogOptions configures a probe that waits for a line in a log file.
type LogOptions struct {
	// Path is the file's absolute path. Deephaven's <Prefix>.log.current
	// is a hard link that its logger moves to a new file every 15 minutes:
	// a new file under the name is read from its start.
	Path string
	// Pattern is the line that makes the check pass, for good: readiness,
	// once announced, is not taken back by later lines.
	Pattern *regexp.Regexp
	// Fatal, when set, is a line that fails the check for good.
	Fatal *regexp.Regexp
	// Since is when the service's process started. When Before is nil, a
	// file last written before then belongs to an earlier run and only
	// what is appended to it from now on is read.
	Since time.Time
	// Before is the file as it was just before the agent started the
	// process: what it held then is skipped, exactly.
	Before *LogMark
	// Owners are the uids the file may belong to (root and the service's
	// user): a hard link a user made to a file of someone else's is not
	// read. Empty: any owner.
	Owners []uint32
	// Seen says the pattern has already matched for this process (the
	// agent remembered it across its own restart): only Fatal is looked
	// for.
	Seen bool
}

const (
	// maxLogLine bounds the part of a line that is matched: a line longer
	// than this is matched on its beginning and the rest skipped, so a
	// service that writes without newlines cannot grow the agent.
	maxLogLine = 64 << 10
	// logChunk is one read.
	logChunk = 64 << 10
	// maxLogRead bounds one probe's reading, so that taking over a
	// service with a huge log spreads the work over several probes.
	maxLogRead = 64 << 20
	// sinceSlack covers the clock-tick granularity of a process's start
	// time: a file written in the same tick counts as this run's.
	sinceSlack = time.Second
)

type logProbe struct {
	opts   LogOptions
	dir    string
	name   string
	target string

	mu       sync.Mutex
	f        *os.File // the file being read; kept open across rotations
	dev, ino uint64
	off      int64
	opened   bool   // a file has been positioned (the first one by Before or Since)
	line     []byte // the line read so far, at most maxLine bytes
	maxLine  int    // maxLogLine; smaller in the fuzz test, to keep its inputs small
	overlong bool   // skipping the rest of a line longer than maxLogLine
	buf      []byte
	matched  bool
	fatal    string // the fatal line, once seen
}

// NewLog returns a probe that succeeds once a line matching Pattern has
// been written to the file at Path since the service started, and fails
// for good once a line matching Fatal has. Each probe reads only what is
// new since the last one. The file is opened with package safefs, so a
// link a service user planted on the way cannot make the root agent read
// another file.
func NewLog(opts LogOptions) (Probe, error) {
	if !filepath.IsAbs(opts.Path) {
		return nil, fmt.Errorf("log path %q is not absolute", opts.Path)
	}
	if opts.Pattern == nil {
		return nil, errors.New("a log check needs a pattern")
	}
	return &logProbe{
		opts:    opts,
		dir:     filepath.Dir(opts.Path),
		name:    filepath.Base(opts.Path),
		target:  "log " + opts.Path,
		buf:     make([]byte, logChunk),
		maxLine: maxLogLine,
		matched: opts.Seen,
	}, nil
}

func (p *logProbe) Probe(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.final() {
		err := p.follow(ctx)
		if err != nil && !p.matched && p.fatal == "" {
			msg := logReason(err)
			if errors.Is(err, fs.ErrNotExist) {
				msg = "no such file yet"
			}
			return &failure{msg: p.target + ": " + msg, cause: err}
		}
	}
	switch {
	case p.fatal != "":
		p.closeFile()
		return &failure{msg: p.target + ": fatal line: " + p.fatal, cause: ErrFatalLine}
	case p.matched:
		if p.opts.Fatal == nil {
			p.closeFile() // nothing more to read
		}
		return nil
	}
	return &failure{msg: fmt.Sprintf("%s: no line matching %q yet", p.target, p.opts.Pattern.String()), cause: ErrNoLine}
}

// ErrNoLine is the cause of a log check that has not seen its line yet;
// ErrFatalLine of one that saw its fatal line.
var (
	ErrNoLine    = errors.New("no matching line yet")
	ErrFatalLine = errors.New("fatal line")
)

// LogSeen reports whether p is a log probe whose pattern has matched, for
// the agent to remember across its own restart.
func LogSeen(p Probe) bool {
	lp, ok := p.(*logProbe)
	if !ok {
		return false
	}
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return lp.matched
}

// final reports whether nothing in the log can change the verdict any
// more.
func (p *logProbe) final() bool {
	return p.fatal != "" || (p.matched && p.opts.Fatal == nil)
}

func logReason(err error) string {
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		// The target already names the file.
		return pe.Err.Error()
	}
	return reason(err)
}

// follow reads what is new: the rest of the file being read (lines written
// to it before it was renamed or the name moved on are this run's too),
// then, when the name now leads to another file, that file from its start.
func (p *logProbe) follow(ctx context.Context) error {
	if p.f != nil {
		if err := p.read(ctx); err != nil || p.final() {
			return err
		}
	}
	f, st, err := p.open()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && p.f != nil {
			return nil // between the steps of a rotation
		}
		return err
	}
	if p.f != nil && st.Dev == p.dev && st.Ino == p.ino {
		f.Close()
		return nil
	}
	if p.f != nil {
		// The old file is finished: a last line without its newline
		// will not get one.
		p.endLine()
		p.f.Close()
	}
	first := !p.opened
	p.f, p.dev, p.ino, p.opened, p.off = f, st.Dev, st.Ino, true, 0
	p.line, p.overlong = p.line[:0], false
	if first {
		p.off = p.startOffset(st)
	}
	return p.read(ctx)
}

// open opens the file the name leads to now, refusing links on the way
// that root does not own and files of another owner.
func (p *logProbe) open() (*os.File, *syscall.Stat_t, error) {
	d, err := safefs.OpenDir(p.dir)
	if err != nil {
		return nil, nil, err
	}
	defer d.Close()
	f, err := d.Open(p.name)
	if err != nil {
		return nil, nil, err
	}
	st, err := fstat(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if len(p.opts.Owners) > 0 && !slices.Contains(p.opts.Owners, st.Uid) {
		f.Close()
		return nil, nil, fmt.Errorf("%w: the file belongs to uid %d, not to the service's user or root", safefs.ErrUnsafe, st.Uid)
	}
	return f, st, nil
}

func fstat(f *os.File) (*syscall.Stat_t, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("%s: no stat data", f.Name())
	}
	return st, nil
}

// startOffset is where the first file seen is read from: past what it
// held before the service started.
func (p *logProbe) startOffset(st *syscall.Stat_t) int64 {
	if b := p.opts.Before; b != nil {
		if b.Exists && b.Dev == st.Dev && b.Ino == st.Ino && st.Size >= b.Size {
			return b.Size
		}
		return 0 // a new file, or the old one truncated since
	}
	if time.Unix(st.Mtim.Unix()).Before(p.opts.Since.Add(-sinceSlack)) {
		return st.Size
	}
	return 0
}

// read scans the open file from the offset reached, up to maxLogRead
// bytes, stopping early once the verdict is final or ctx ends (the
// offset is kept: the next probe goes on from there).
func (p *logProbe) read(ctx context.Context) error {
	st, err := fstat(p.f)
	if err != nil {
		return err
	}
	if st.Size < p.off {
		// Truncated in place (copytruncate): it starts over.
		p.off, p.line, p.overlong = 0, p.line[:0], false
	}
	for budget := maxLogRead; budget > 0 && !p.final(); {
		if ctx.Err() != nil {
			return nil
		}
		n, err := p.f.ReadAt(p.buf, p.off)
		if n > 0 {
			p.off += int64(n)
			budget -= n
			p.scan(p.buf[:n])
		}
		if errors.Is(err, io.EOF) || n == 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// scan splits b into lines; the part after the last newline waits for the
// rest of its line (a line the service wrote in two writes).
func (p *logProbe) scan(b []byte) {
	for len(b) > 0 && p.fatal == "" {
		i := bytes.IndexByte(b, '\n')
		part := b
		if i >= 0 {
			part = b[:i]
		}
		if !p.overlong {
			if room := p.maxLine - len(p.line); len(part) > room {
				p.line = append(p.line, part[:room]...)
				p.overlong = true
			} else {
				p.line = append(p.line, part...)
			}
		}
		if i < 0 {
			return
		}
		p.endLine()
		b = b[i+1:]
	}
}

// endLine matches the line read so far and starts the next. A fatal line
// wins over a matching one.
func (p *logProbe) endLine() {
	line := bytes.TrimSuffix(p.line, []byte("\r"))
	p.line, p.overlong = p.line[:0], false
	if len(line) == 0 {
		return
	}
	if p.opts.Fatal != nil && p.opts.Fatal.Match(line) {
		p.fatal = shorten(string(line))
		return
	}
	if !p.matched && p.opts.Pattern.Match(line) {
		p.matched = true
	}
}

func (p *logProbe) closeFile() {
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
}

// Close releases the file the probe holds open.
func (p *logProbe) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeFile()
	return nil
}
