package check

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/need"
)

const (
	logName   = "AuthenticationServer.log.current"
	runLine   = "[2025-01-02 10:00:00.000] INFO authentication_server RUNNING\n"
	initLine  = "[2025-01-02 09:59:58.000] INFO authentication_server INITIALIZING\n"
	fatalLine = "[2025-01-02 10:00:01.000] FATAL cannot bind 22050\n"
)

var (
	runPattern   = regexp.MustCompile(`authentication_server RUNNING$`)
	fatalPattern = regexp.MustCompile(`\] FATAL `)
)

// logEnv is a service's log directory with the operations a service and
// its logger perform on it.
type logEnv struct {
	t   *testing.T
	dir string
}

func (e logEnv) path(name string) string { return filepath.Join(e.dir, name) }

func (e logEnv) write(name, s string) {
	e.t.Helper()
	f, err := os.OpenFile(e.path(name), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		e.t.Fatal(err)
	}
	f.Close()
}

func (e logEnv) rename(from, to string) { e.t.Helper(); must(e.t, os.Rename(e.path(from), e.path(to))) }
func (e logEnv) remove(name string)     { e.t.Helper(); must(e.t, os.Remove(e.path(name))) }
func (e logEnv) truncate(name string)   { e.t.Helper(); must(e.t, os.Truncate(e.path(name), 0)) }

// relink points name at the file target, as Deephaven's logger moves
// <prefix>.log.current to each new file.
func (e logEnv) relink(target, name string) {
	e.t.Helper()
	_ = os.Remove(e.path(name))
	must(e.t, os.Link(e.path(target), e.path(name)))
}

func (e logEnv) age(name string, d time.Duration) {
	e.t.Helper()
	old := time.Now().Add(-d)
	must(e.t, os.Chtimes(e.path(name), old, old))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// logStep changes the directory, then probes and expects a result.
type logStep struct {
	do   func(e logEnv)
	want expect
}

var (
	notYet  = expect{contains: "no line matching"}
	noFile  = expect{contains: "no such file yet"}
	isFatal = expect{contains: "fatal line: " + strings.TrimSuffix(fatalLine, "\n")}
	ok      = expect{}
)

func TestLog(t *testing.T) {
	need.Root(t, "files and links owned by another user")
	tests := []struct {
		name string
		// setup runs before the service starts; Before is marked after it
		// unless since is set, which is then the only clue.
		setup   func(e logEnv)
		noMark  bool          // an adopted process: Since decides
		since   time.Duration // before now
		fatal   bool
		owners  []uint32
		seen    bool
		path    string // relative to the directory; logName by default
		steps   []logStep
		maxLine bool // the line kept never grew past maxLogLine
	}{
		{
			name: "append",
			steps: []logStep{
				{want: noFile},
				{do: func(e logEnv) { e.write(logName, initLine) }, want: notYet},
				{do: func(e logEnv) { e.write(logName, runLine) }, want: ok},
				{do: func(e logEnv) { e.write(logName, "more\n") }, want: ok},
			},
		},
		{
			name:  "lines from before the start are skipped",
			setup: func(e logEnv) { e.write(logName, initLine+runLine) },
			steps: []logStep{
				{want: notYet},
				{do: func(e logEnv) { e.write(logName, initLine) }, want: notYet},
				{do: func(e logEnv) { e.write(logName, runLine) }, want: ok},
			},
		},
		{
			name: "a line split across two writes",
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, initLine+"[x] INFO authentication_server RUNNING") }, want: notYet},
				// Not the line it seemed: the rest of it arrives now.
				{do: func(e logEnv) { e.write(logName, "_NOT\n[x] INFO authentication_server RUN") }, want: notYet},
				{do: func(e logEnv) { e.write(logName, "NING\n") }, want: ok},
			},
		},
		{
			name:  "rotated by rename: the old file's last lines are read",
			setup: func(e logEnv) { e.write(logName, "old run\n") },
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, initLine) }, want: notYet},
				{do: func(e logEnv) {
					e.rename(logName, logName+".1")
					e.write(logName+".1", runLine) // written before the service reopened
					e.write(logName, "next file\n")
				}, want: ok},
			},
		},
		{
			name: "rotated by rename: the line in the new file",
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, initLine) }, want: notYet},
				{do: func(e logEnv) { e.rename(logName, logName+".1") }, want: notYet},
				{do: func(e logEnv) { e.write(logName, runLine) }, want: ok},
			},
		},
		{
			name:  "truncated in place",
			setup: func(e logEnv) { e.write(logName, strings.Repeat("old run line\n", 20)) },
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, strings.Repeat("padding\n", 20)) }, want: notYet},
				{do: func(e logEnv) { e.truncate(logName); e.write(logName, runLine) }, want: ok},
			},
		},
		{
			name: "truncated before the start, then written",
			setup: func(e logEnv) {
				e.write(logName, strings.Repeat("old run line\n", 20))
			},
			steps: []logStep{
				{do: func(e logEnv) { e.truncate(logName); e.write(logName, runLine) }, want: ok},
			},
		},
		{
			name: "hard link moved to a new file",
			setup: func(e logEnv) {
				e.write("AuthenticationServer.log.2025-01-02-094500.000+0000", initLine+runLine)
				e.relink("AuthenticationServer.log.2025-01-02-094500.000+0000", logName)
			},
			steps: []logStep{
				{want: notYet},
				{do: func(e logEnv) {
					e.write("AuthenticationServer.log.2025-01-02-100000.000+0000", initLine)
					e.relink("AuthenticationServer.log.2025-01-02-100000.000+0000", logName)
				}, want: notYet},
				{do: func(e logEnv) { e.write("AuthenticationServer.log.2025-01-02-100000.000+0000", runLine) }, want: ok},
			},
		},
		{
			name: "hard link moved on after the line: the old file is finished first",
			steps: []logStep{
				{do: func(e logEnv) {
					e.write("A.log.1", initLine)
					e.relink("A.log.1", logName)
				}, want: notYet},
				{do: func(e logEnv) {
					e.write("A.log.1", runLine)
					e.write("A.log.2", "ALIVE\n")
					e.relink("A.log.2", logName)
				}, want: ok},
			},
		},
		{
			name: "the name missing between the steps of a switch",
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, initLine) }, want: notYet},
				{do: func(e logEnv) { e.remove(logName) }, want: notYet},
				{do: func(e logEnv) { e.write("A.log.2", runLine); e.relink("A.log.2", logName) }, want: ok},
			},
		},
		{
			name:  "fatal line",
			fatal: true,
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, initLine) }, want: notYet},
				{do: func(e logEnv) { e.write(logName, fatalLine) }, want: isFatal},
				{do: func(e logEnv) { e.write(logName, runLine) }, want: isFatal},
			},
		},
		{
			name:  "fatal after running",
			fatal: true,
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, initLine+runLine) }, want: ok},
				{do: func(e logEnv) { e.write(logName, fatalLine) }, want: isFatal},
			},
		},
		{
			name:  "fatal in the same read as running",
			fatal: true,
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, runLine+fatalLine) }, want: isFatal},
			},
		},
		{
			name:  "a fatal line from before the start is not this run's",
			fatal: true,
			setup: func(e logEnv) { e.write(logName, fatalLine) },
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, runLine) }, want: ok},
			},
		},
		{
			name:    "a huge line is matched on its beginning only",
			maxLine: true,
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, strings.Repeat("x", 3*maxLogLine)+runLine) }, want: notYet},
				{do: func(e logEnv) { e.write(logName, strings.Repeat("y", 2*maxLogLine)) }, want: notYet},
				{do: func(e logEnv) { e.write(logName, "\n"+runLine) }, want: ok},
			},
		},
		{
			name:   "adopted: a file last written before the start is an earlier run's",
			noMark: true,
			since:  time.Minute,
			setup: func(e logEnv) {
				e.write(logName, runLine)
				e.age(logName, time.Hour)
			},
			steps: []logStep{
				{want: notYet},
				{do: func(e logEnv) { e.write(logName, runLine) }, want: ok},
			},
		},
		{
			name:   "adopted: a file written since the start is read whole",
			noMark: true,
			since:  time.Hour,
			setup:  func(e logEnv) { e.write(logName, initLine+runLine) },
			steps:  []logStep{{want: ok}},
		},
		{
			name:  "seen before the agent restarted",
			seen:  true,
			steps: []logStep{{want: ok}},
		},
		{
			name:  "seen, then fatal",
			seen:  true,
			fatal: true,
			steps: []logStep{
				{want: ok},
				{do: func(e logEnv) { e.write(logName, fatalLine) }, want: isFatal},
			},
		},
		{
			name: "the name is a link a user planted",
			steps: []logStep{{do: func(e logEnv) {
				e.write("secret", runLine)
				must(e.t, os.Symlink(e.path("secret"), e.path(logName)))
				must(e.t, os.Lchown(e.path(logName), 1234, 1234))
			}, want: expect{contains: "unsafe path"}}},
		},
		{
			name: "the directory is reached through a user's link",
			path: "userlink/" + logName,
			steps: []logStep{{do: func(e logEnv) {
				must(e.t, os.Mkdir(e.path("real"), 0o755))
				e.write("real/"+logName, runLine)
				must(e.t, os.Symlink(e.path("real"), e.path("userlink")))
				must(e.t, os.Lchown(e.path("userlink"), 1234, 1234))
			}, want: expect{contains: "unsafe path"}}},
		},
		{
			name:   "a file of another owner",
			owners: []uint32{0, 1234},
			steps: []logStep{
				{do: func(e logEnv) { e.write(logName, runLine); must(e.t, os.Chown(e.path(logName), 4321, 4321)) }, want: expect{contains: "belongs to uid 4321"}},
				{do: func(e logEnv) { must(e.t, os.Chown(e.path(logName), 1234, 1234)) }, want: ok},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := logEnv{t: t, dir: t.TempDir()}
			if tc.setup != nil {
				tc.setup(e)
			}
			rel := tc.path
			if rel == "" {
				rel = logName
			}
			opts := LogOptions{Path: e.path(rel), Pattern: runPattern, Owners: tc.owners, Seen: tc.seen, Since: time.Now().Add(-tc.since)}
			if !tc.noMark {
				m := MarkLog(opts.Path)
				opts.Before = &m
			}
			if tc.fatal {
				opts.Fatal = fatalPattern
			}
			p, err := NewLog(opts)
			must(t, err)
			defer Close(p)
			for i, s := range tc.steps {
				if s.do != nil {
					s.do(e)
				}
				err := p.Probe(context.Background())
				t.Logf("step %d: %v", i, err)
				s.want.check(t, err)
				if lp := p.(*logProbe); tc.maxLine && cap(lp.line) > maxLogLine {
					t.Fatalf("step %d: line buffer grew to %d bytes", i, cap(lp.line))
				}
			}
			if got, want := LogSeen(p), tc.steps[len(tc.steps)-1].want == ok && !tc.fatal; want && !got {
				t.Fatal("LogSeen is false after the line was seen")
			}
		})
	}
}

func TestLogProbeErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewLog(LogOptions{Path: "relative.log", Pattern: runPattern}); err == nil {
		t.Fatal("a relative path was accepted")
	}
	if _, err := NewLog(LogOptions{Path: filepath.Join(dir, logName)}); err == nil {
		t.Fatal("no pattern was accepted")
	}
	p, err := NewLog(LogOptions{Path: filepath.Join(dir, logName), Pattern: runPattern})
	must(t, err)
	err = p.Probe(context.Background())
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v, want ErrNotExist in the chain", err)
	}
	must(t, os.WriteFile(filepath.Join(dir, logName), []byte(initLine), 0o644))
	if err := p.Probe(context.Background()); !errors.Is(err, ErrNoLine) {
		t.Fatalf("no line yet: %v, want ErrNoLine", err)
	}
	if !strings.Contains(p.Probe(canceled()).Error(), "no line matching") {
		t.Fatal("a canceled probe gave another verdict")
	}
	if LogSeen(NewTCP("127.0.0.1:1")) {
		t.Fatal("a tcp probe claims a log line")
	}
}

func TestMarkLog(t *testing.T) {
	dir := t.TempDir()
	if m := MarkLog(filepath.Join(dir, "none")); m.Exists {
		t.Fatalf("a missing file marked %+v", m)
	}
	must(t, os.WriteFile(filepath.Join(dir, "a"), []byte("12345"), 0o644))
	if m := MarkLog(filepath.Join(dir, "a")); !m.Exists || m.Size != 5 || m.Ino == 0 {
		t.Fatalf("mark %+v", m)
	}
}

// fuzzMaxLine stands for maxLogLine in FuzzLogScan: inputs of 64 KiB
// would make the fuzzer crawl.
const fuzzMaxLine = 16

// FuzzLogScan feeds a log in two writes cut anywhere and compares the
// verdict with the lines as a whole file has them.
func FuzzLogScan(f *testing.F) {
	f.Add([]byte(initLine+runLine), uint16(10))
	f.Add([]byte("a RUN\r\nb\n"), uint16(4))
	f.Add([]byte(strings.Repeat("z", fuzzMaxLine+3)+"RUN\nRUN"), uint16(7))
	f.Add([]byte("FATAL\nRUN\n"), uint16(0))
	pattern, fatal := regexp.MustCompile(`RUN$`), regexp.MustCompile(`^FATAL`)
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		p, err := NewLog(LogOptions{Path: "/nonexistent/x.log", Pattern: pattern, Fatal: fatal})
		if err != nil {
			t.Fatal(err)
		}
		lp := p.(*logProbe)
		lp.maxLine = fuzzMaxLine
		at := int(cut) % (len(data) + 1)
		lp.scan(data[:at])
		lp.scan(data[at:])
		var wantSeen, wantFatal bool
		lines := strings.Split(string(data), "\n")
		for _, l := range lines[:len(lines)-1] { // the last has no newline yet
			if len(l) > fuzzMaxLine {
				l = l[:fuzzMaxLine]
			}
			l = strings.TrimSuffix(l, "\r")
			if l == "" {
				continue
			}
			if fatal.MatchString(l) {
				wantFatal = true
				break
			}
			wantSeen = wantSeen || pattern.MatchString(l)
		}
		if lp.matched != wantSeen || (lp.fatal != "") != wantFatal {
			t.Fatalf("matched %v fatal %q, want %v %v", lp.matched, lp.fatal, wantSeen, wantFatal)
		}
		if len(lp.line) > fuzzMaxLine {
			t.Fatalf("line buffer grew to %d", cap(lp.line))
		}
	})
}
