package daemon

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
)

func sleeper(t *testing.T) Proc {
	t.Helper()
	cmd := exec.Command("/bin/sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	p, err := Inspect(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTrust(t *testing.T) {
	me := uint32(os.Getuid())
	p := sleeper(t)
	self, err := Inspect(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	initProc, err := Inspect(1)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		want Want
		proc Proc
		why  string // empty: trusted
	}{
		{name: "the service's process", want: Want{UID: me}, proc: p},
		{name: "matching its pattern", want: Want{UID: me, Match: regexp.MustCompile(`^/bin/sleep 30$`)}, proc: p},
		{name: "pattern does not match", want: Want{UID: me, Match: regexp.MustCompile(`java`)}, proc: p, why: "does not match"},
		{name: "another user", want: Want{UID: me + 1}, proc: p, why: "does not run as the service's user"},
		{name: "started before the start program", want: Want{UID: me, After: p.ID.StartTicks + 1}, proc: p, why: "started before the start program"},
		{name: "started after it", want: Want{UID: me, After: p.ID.StartTicks}, proc: p},
		{name: "init", want: Want{UID: initProc.Owner.UID}, proc: initProc, why: "is init"},
		{name: "the agent", want: Want{UID: me}, proc: self, why: "is the agent itself"},
		{name: "a kernel thread", want: Want{UID: 0}, proc: Proc{ID: procfs.Identity{PID: 99}, PPID: 2}, why: "is a kernel thread"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.want.Trust(tt.proc)
			switch {
			case tt.why == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.why != "" && (err == nil || !strings.Contains(err.Error(), tt.why)):
				t.Fatalf("error %v, want %q", err, tt.why)
			}
		})
	}
}

func TestClear(t *testing.T) {
	me := uint32(os.Getuid())
	live := sleeper(t)
	dead := exec.Command("/bin/true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		content string
		age     time.Duration // how long before the check the pidfile was written
		removed bool
		err     any // nil, *RunningError or *ForeignError
	}{
		{name: "no pidfile"},
		{name: "garbage", content: "not-a-pid\n", removed: true},
		{name: "empty", content: "", removed: true},
		{name: "a dead pid", content: strconv.Itoa(dead.Process.Pid) + "\n", removed: true},
		{name: "the service's live process", content: strconv.Itoa(live.ID.PID) + "\n", err: new(*RunningError)},
		{name: "pid and launcher's extra words", content: strconv.Itoa(live.ID.PID) + " java\n", err: new(*RunningError)},
		{name: "a pid reused by a newer process", content: strconv.Itoa(live.ID.PID) + "\n", age: time.Hour, removed: true},
		{name: "someone else's older process", content: "1\n", err: new(*ForeignError)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.pid")
			if tt.name != "no pidfile" {
				if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
					t.Fatal(err)
				}
				mt := time.Now().Add(-tt.age)
				_ = os.Chtimes(path, mt, mt)
			}
			note, err := Clear(path, Want{UID: me})
			switch target := tt.err.(type) {
			case nil:
				if err != nil {
					t.Fatalf("error %v", err)
				}
			case **RunningError:
				if !errors.As(err, target) {
					t.Fatalf("error %v, want running", err)
				}
			case **ForeignError:
				if !errors.As(err, target) {
					t.Fatalf("error %v, want foreign", err)
				}
			}
			_, statErr := os.Stat(path)
			if gone := os.IsNotExist(statErr); tt.name != "no pidfile" && gone != tt.removed {
				t.Fatalf("removed %v, want %v (note %q)", gone, tt.removed, note)
			}
			if tt.removed && note == "" {
				t.Fatal("a removed pidfile needs a note for the log")
			}
		})
	}
}

// A pidfile that is a link the service's user planted is not followed.
func TestReadPidfileRefusesLinks(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "x.pid")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		// Root's own links are followed; make it someone else's.
		if err := os.Lchown(link, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ReadPidfile(link); err == nil {
		t.Fatal("read through a link")
	}
}

func TestFindMatchOldest(t *testing.T) {
	a := sleeper(t)
	time.Sleep(20 * time.Millisecond)
	sleeper(t)
	p, err := FindMatch(Want{UID: uint32(os.Getuid()), Match: regexp.MustCompile(`^/bin/sleep 30$`)})
	if err != nil {
		t.Fatal(err)
	}
	if p.ID.StartTicks > a.ID.StartTicks {
		t.Fatalf("found %v, want the oldest (%v or older)", p, a)
	}
}

func TestParsePid(t *testing.T) {
	for in, want := range map[string]int{"42\n": 42, " 42 extra\nnext": 42, "42": 42, "4194304": 4194304} {
		if got, err := parsePid([]byte(in)); err != nil || got != want {
			t.Errorf("parsePid(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "\n42", "-1", "0", "4194305", "99999999999999999999", "abc", "0x10"} {
		if got, err := parsePid([]byte(in)); err == nil {
			t.Errorf("parsePid(%q) = %d, want an error", in, got)
		}
	}
}

// FuzzParsePid: a pidfile is the service user's to write.
func FuzzParsePid(f *testing.F) {
	for _, s := range []string{"42\n", "", " 1 2", "\x00", "4194304", "+7"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pid, err := parsePid(b)
		if err == nil && (pid <= 0 || pid > maxPid) {
			t.Fatalf("parsePid(%q) = %d", b, pid)
		}
	})
}

// A launcher may write its child's pid before the child calls setsid: the
// members are those of the session the process leads when asked.
func TestMembersOfASessionLedLater(t *testing.T) {
	dir := t.TempDir()
	// The shell is a plain child of the test (no session of its own)
	// until the file "go" appears; then it becomes a session leader
	// and puts a helper in it.
	cmd := exec.Command("/bin/sh", "-c", `while [ ! -e "$0/go" ]; do sleep 0.01; done
exec setsid -w /bin/sh -c 'sleep 30 & wait'`, dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	before, err := Inspect(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if before.SID == before.ID.PID {
		t.Fatal("the shell leads a session before it called setsid")
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The stale Proc still finds the session's sleep once it runs.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ms := Members(before, uint32(os.Getuid()))
		i := slices.IndexFunc(ms, func(m Proc) bool { return m.Cmdline[0] == "sleep" })
		if i >= 0 {
			_ = Signal(ms[i].ID, 9)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("members %v, want the session's sleep", ms)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestParseCgroup(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"unified", "0::/system.slice/dhagent.service\n", "/system.slice/dhagent.service"},
		{"hybrid: systemd's named hierarchy wins", "12:memory:/x\n1:name=systemd:/system.slice/monit.service\n0::/\n", "/system.slice/monit.service"},
		{"v1 only", "4:pids:/a\n1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n", "/user.slice/user-1000.slice/session-3.scope"},
		{"a path with colons", "0::/a:b\n", "/a:b"},
		{"none", "4:pids:/a\n", ""},
		{"empty", "", ""},
	} {
		got, err := parseCgroup([]byte(tc.in))
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("%s: parseCgroup = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func FuzzParseCgroup(f *testing.F) {
	f.Add([]byte("0::/system.slice/dhagent.service\n"))
	f.Add([]byte("1:name=systemd:/x\n0::/\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseCgroup(b)
		if err == nil && !strings.Contains(string(b), got) {
			t.Fatalf("parseCgroup(%q) = %q, not in its input", b, got)
		}
	})
}
