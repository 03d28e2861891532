package logwriter

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/safefs"
	"github.com/dhvisor/dhvisor/test/need"
	"github.com/dhvisor/dhvisor/test/waitfor"
)

func TestFileName(t *testing.T) {
	at := time.Date(2025, 3, 9, 23, 59, 59, 0, time.Local)
	if got, want := FileName("db_query_server", at), "db_query_server.log.2025-03-09"; got != want {
		t.Fatalf("FileName = %q, want %q", got, want)
	}
}

// chunks is a reader that yields one chunk per Read, each at its own time.
type chunks struct {
	data  []string
	times []time.Time
	now   time.Time
	// before runs ahead of each chunk: what changes on disk meanwhile.
	before []func()
}

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, os.ErrClosed
	}
	if len(c.before) > 0 {
		f := c.before[0]
		c.before = c.before[1:]
		if f != nil {
			f()
		}
	}
	n := copy(p, c.data[0])
	c.now = c.times[0]
	c.data, c.times = c.data[1:], c.times[1:]
	return n, nil
}

func TestCopy(t *testing.T) {
	day := func(d, h int) time.Time { return time.Date(2026, 12, d, h, 0, 0, 0, time.Local) }
	tests := []struct {
		name   string
		data   []string
		times  []time.Time
		setup  func(dir string)          // what the log directory holds before
		before func(dir string) []func() // what changes ahead of each chunk
		want   map[string]string         // file name → content
	}{
		{
			name:  "the day's file exists before any output",
			data:  []string{},
			times: []time.Time{day(6, 10)},
			want:  map[string]string{"svc.log.2026-12-06": ""},
		},
		{
			name:  "one day",
			data:  []string{"a\n", "b\n"},
			times: []time.Time{day(6, 10), day(6, 23)},
			want:  map[string]string{"svc.log.2026-12-06": "a\nb\n"},
		},
		{
			name:  "a new file from midnight",
			data:  []string{"late\n", "early\n", "later\n"},
			times: []time.Time{day(6, 23), day(7, 0), day(7, 9)},
			want:  map[string]string{"svc.log.2026-12-06": "late\n", "svc.log.2026-12-07": "early\nlater\n"},
		},
		{
			name:  "appends to the file already there",
			data:  []string{"new\n"},
			times: []time.Time{day(6, 10)},
			setup: func(dir string) { write(t, filepath.Join(dir, "svc.log.2026-12-06"), "old\n") },
			want:  map[string]string{"svc.log.2026-12-06": "old\nnew\n"},
		},
		{
			// A link planted as the next day's file is refused; what
			// came meanwhile is dropped, and said so once a file opens.
			name:  "lost output is reported",
			data:  []string{"a\n", "dropped\n", "b\n"},
			times: []time.Time{day(6, 10), day(7, 1), day(8, 1)},
			before: func(dir string) []func() {
				return []func(){nil, func() {
					if err := os.Symlink("/etc/passwd", filepath.Join(dir, "svc.log.2026-12-07")); err != nil {
						t.Fatal(err)
					}
				}}
			},
			want: map[string]string{
				"svc.log.2026-12-06": "a\n",
				"svc.log.2026-12-08": ProcessName + ": 8 bytes of svc's output lost from " + day(7, 1).Format(time.RFC3339) + ": open " + "DIR/svc.log.2026-12-07: unsafe path: it is a symbolic link\nb\n",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d, err := safefs.OpenDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if tc.setup != nil {
				tc.setup(dir)
			}
			in := &chunks{data: tc.data, times: tc.times, now: tc.times[0]}
			if tc.before != nil {
				in.before = tc.before(dir)
			}
			err = Copy(in, d, "svc", func() time.Time { return in.now })
			if err != os.ErrClosed {
				t.Fatalf("Copy: %v, want the reader's error", err)
			}
			for name, want := range tc.want {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.ReplaceAll(string(b), dir, "DIR"); got != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestStart runs the writer as its own process (this test binary
// re-executed), as the agent does, and as another user when root.
func TestStart(t *testing.T) {
	need.Root(t, "the writer runs as the service's user")
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	dir := t.TempDir()
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	d, err := safefs.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := Pipe(d, "svc", &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)})
	if err != nil {
		t.Fatal(err)
	}
	// Written before the writer runs, as a restarted service may.
	if _, err := out.File.WriteString("hello from the service\n"); err != nil {
		t.Fatal(err)
	}
	if err := out.Start(); err != nil {
		t.Fatal(err)
	}
	out.Close()
	file := filepath.Join(dir, FileName("svc", time.Now()))
	waitfor.File(t, file, "hello from the service\n", 20*time.Second)
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err != nil || int(st.Uid) != uid {
		t.Fatalf("the file is %d's (%v), want the service user %d's", st.Uid, err, uid)
	}
}

// BenchmarkStart is the writer's fork and exec (of this test binary),
// which the agent does after a foreground service has started; Pipe is
// what comes before the service's start. BenchmarkOpenFile is the direct
// open of the day's file that a start program still gets.
func BenchmarkStart(b *testing.B) {
	d, err := safefs.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for b.Loop() {
		out, err := Pipe(d, "svc", nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := out.Start(); err != nil {
			b.Fatal(err)
		}
		out.Close()
	}
}

func BenchmarkPipe(b *testing.B) {
	d, err := safefs.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for b.Loop() {
		out, err := Pipe(d, "svc", nil)
		if err != nil {
			b.Fatal(err)
		}
		out.Close()
	}
}

func BenchmarkOpenFile(b *testing.B) {
	d, err := safefs.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for b.Loop() {
		f, err := d.OpenAppend(FileName("svc", time.Now()), 0o644, -1, -1)
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}
