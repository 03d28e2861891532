package check

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/test/need"
)

// readPID reads the pid a test script wrote to path.
func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// waitGone waits until pid, started before notAfter, has exited. Orphans
// are reaped by whoever adopts them, which in a container may never happen,
// so a zombie counts as gone; so does a process started after notAfter (the
// pid reused). A process still running under another name (a subshell that
// has not exec'd sleep yet) does not.
func waitGone(t *testing.T, pid int, notAfter time.Time) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := procfs.ReadStat(pid)
		if err != nil || s.State == 'Z' {
			return
		}
		if started, err := s.StartTime(); err == nil && started.After(notAfter) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d (%s) still running", pid, s.Comm)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExec(t *testing.T) {
	t.Setenv("DHVISOR_TEST_AGENT_ONLY", "1")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "marker"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("é", 150) // 300 bytes

	tests := []struct {
		name    string
		opts    ExecOptions
		timeout time.Duration
		want    expect
		// leftover: the script starts a background sleep and writes its
		// pid to $PIDFILE; that sleep must be dead after the probe.
		leftover bool
		needRoot bool
	}{
		{name: "true", opts: ExecOptions{Argv: []string{"true"}}},
		{name: "false", opts: ExecOptions{Argv: []string{"false"}}, want: expect{msg: "exec false: exit status 1"}},
		{name: "absolute path", opts: ExecOptions{Argv: []string{"/bin/sh", "-c", "exit 0"}}},
		{name: "first non-blank output line", opts: ExecOptions{Argv: []string{"sh", "-c", "echo; echo '  db down  '; echo more >&2; exit 3"}},
			want: expect{msg: "exec sh: exit status 3: db down"}},
		{name: "stderr counts", opts: ExecOptions{Argv: []string{"sh", "-c", "echo oops >&2; exit 2"}},
			want: expect{msg: "exec sh: exit status 2: oops"}},
		{name: "long line is cut at a character boundary", opts: ExecOptions{Argv: []string{"sh", "-c", "echo " + long + "; exit 1"}},
			want: expect{msg: "exec sh: exit status 1: " + strings.Repeat("é", 100) + "…"}},
		{name: "killed by signal", opts: ExecOptions{Argv: []string{"sh", "-c", "kill -TERM $$"}},
			want: expect{msg: "exec sh: signal: terminated"}},
		{name: "env added", opts: ExecOptions{Argv: []string{"sh", "-c", `test "$FOO" = bar`}, Env: []string{"FOO=bar"}}},
		{name: "agent env not inherited", opts: ExecOptions{Argv: []string{"sh", "-c", `test -z "$DHVISOR_TEST_AGENT_ONLY"`}}},
		{name: "PATH from env", opts: ExecOptions{Argv: []string{"true"}, Env: []string{"PATH=/nonexistent"}},
			want: expect{msg: "exec true: true not found in PATH"}},
		{name: "dir", opts: ExecOptions{Argv: []string{"test", "-f", "marker"}, Dir: dir}},
		{name: "missing dir", opts: ExecOptions{Argv: []string{"true"}, Dir: filepath.Join(dir, "none")},
			want: expect{msg: "exec true: stat " + filepath.Join(dir, "none") + ": no such file or directory"}},
		{name: "missing command", opts: ExecOptions{Argv: []string{"/nonexistent/check"}},
			want: expect{msg: "exec /nonexistent/check: no such file or directory"}},
		{name: "no command", want: expect{msg: "exec: no command"}},
		{name: "uid and gid", needRoot: true,
			opts: ExecOptions{Argv: []string{"sh", "-c", `test "$(id -u):$(id -g):$(id -G)" = 65534:65533:65533`}, Uid: new(uint32(65534)), Gid: new(uint32(65533))}},
		{name: "uid only keeps the agent's gid", needRoot: true,
			opts: ExecOptions{Argv: []string{"sh", "-c", `test "$(id -u):$(id -g)" = 65534:` + strconv.Itoa(os.Getgid())}, Uid: new(uint32(65534))}},
		{name: "timeout kills the process group", timeout: 300 * time.Millisecond, leftover: true,
			opts: ExecOptions{Argv: []string{"sh", "-c", `sleep 30 & echo $! >"$PIDFILE"; echo waiting; wait`}},
			want: expect{msg: "exec sh: timed out, killed: waiting"}},
		// The sleep also holds the output pipe open after sh exits.
		{name: "leftover child is killed after success", leftover: true,
			opts: ExecOptions{Argv: []string{"sh", "-c", `sleep 30 & echo $! >"$PIDFILE"`}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needRoot {
				need.Root(t, "to change user")
			}
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			pidFile := filepath.Join(t.TempDir(), "pid")
			if tt.leftover {
				tt.opts.Env = append(tt.opts.Env, "PIDFILE="+pidFile)
			}
			p := NewExec(tt.opts)
			start := time.Now()
			err := p.Probe(ctx)
			if elapsed := time.Since(start); elapsed > timeout+time.Second {
				t.Errorf("probe took %v with a %v timeout", elapsed, timeout)
			}
			tt.want.check(t, err)
			if tt.leftover {
				waitGone(t, readPID(t, pidFile), time.Now())
			}
		})
	}
}
