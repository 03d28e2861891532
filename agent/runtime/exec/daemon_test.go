package exec

import (
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/runtime/daemon"
	"github.com/dhvisor/dhvisor/test/need"
)

// daemonScript is a start program that puts `sleep` in the background in
// a session of its own and writes its pid, as a launcher does; it
// refuses to start while the pidfile exists, as Deephaven's JVM does.
// $1 is the pidfile, $2 what the daemon runs.
const daemonScript = `[ -e "$1" ] && { echo "pidfile $1 exists" >&2; exit 3; }
(exec setsid /bin/sh -c "$2" </dev/null >/dev/null 2>&1 &
 echo $! > "$1.tmp" && mv "$1.tmp" "$1")`

type daemonCase struct {
	dir, pidfile string
	spec         runtime.Spec
}

func newDaemonCase(t *testing.T, run string) *daemonCase {
	t.Helper()
	dir := t.TempDir()
	c := &daemonCase{dir: dir, pidfile: filepath.Join(dir, "svc.pid")}
	c.spec = runtime.Spec{Name: "svc", LogDir: dir, StopTimeout: 2 * time.Second, Daemon: &runtime.Daemon{
		Start:        runtime.Program{Command: []string{"/bin/sh", "-c", daemonScript, "start", c.pidfile, run}, Timeout: 5 * time.Second},
		Pidfile:      c.pidfile,
		StartTimeout: 3 * time.Second,
	}}
	t.Cleanup(func() {
		if pid, err := c.pid(); err == nil && pid > 1 && pid != os.Getpid() {
			if st, err := procfs.ReadStat(pid); err == nil && st.SID == pid {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return c
}

func (c *daemonCase) pid() (int, error) {
	b, err := os.ReadFile(c.pidfile)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func (c *daemonCase) writePidfile(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(c.pidfile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (c *daemonCase) start(t *testing.T) runtime.Process {
	t.Helper()
	p, err := Runtime{}.Start(context.Background(), c.spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); <-p.Done() })
	return p
}

func TestDaemonFollowsPidfile(t *testing.T) {
	c := newDaemonCase(t, "exec sleep 30")
	p := c.start(t)
	pid, err := c.pid()
	if err != nil || p.Identity().PID != pid {
		t.Fatalf("following pid %d, pidfile names %d (%v)", p.Identity().PID, pid, err)
	}
	// Not a child: its exit is seen through the pidfd, without a status.
	killed := time.Now()
	_ = syscall.Kill(pid, syscall.SIGKILL)
	exit := waitDone(t, p)
	if exit.Code != -1 || exit.Signal != "" {
		t.Fatalf("exit %+v, want unknown status", exit)
	}
	if d := exit.At.Sub(killed); d > 10*time.Second {
		t.Fatalf("exit seen %v after the kill", d)
	}
	// The stale pidfile left behind is removed before the next start, or
	// the start program would refuse.
	if _, err := os.Stat(c.pidfile); err != nil {
		t.Fatalf("the killed daemon should have left its pidfile: %v", err)
	}
	p2 := c.start(t)
	if p2.Identity().PID == pid {
		t.Fatal("the next start followed the dead pid")
	}
}

func TestDaemonStop(t *testing.T) {
	tests := []struct {
		name      string
		run       string
		stop      []string // nil: signals only
		maxStop   time.Duration
		minStop   time.Duration
		stopTimer time.Duration
	}{
		{name: "SIGTERM without a stop program", run: "exec sleep 30", maxStop: 10 * time.Second},
		{name: "stop program", run: "trap '' TERM; sleep 30 & wait", stop: []string{"/bin/sh", "-c", `kill -KILL $(cat "$0")`, "{pidfile}"}, maxStop: 10 * time.Second},
		{name: "SIGKILL after stop_timeout", run: "trap '' TERM; sleep 30 & wait; sleep 30", minStop: 400 * time.Millisecond, maxStop: 15 * time.Second, stopTimer: 500 * time.Millisecond},
		{name: "failing stop program, then signals", run: "exec sleep 30", stop: []string{"/bin/false"}, maxStop: 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newDaemonCase(t, tt.run)
			if tt.stop != nil {
				argv := append([]string(nil), tt.stop...)
				for i := range argv {
					argv[i] = strings.ReplaceAll(argv[i], "{pidfile}", c.pidfile)
				}
				c.spec.Daemon.Stop = &runtime.Program{Command: argv, Timeout: 2 * time.Second}
			}
			// Far above maxStop: a stop that took the timeout escalated.
			timeout := 30 * time.Second
			if tt.stopTimer != 0 {
				timeout = tt.stopTimer
			}
			p := c.start(t)
			// The daemon's helpers (its session) go with it.
			var helpers []procfs.Identity
			time.Sleep(50 * time.Millisecond)
			if me, err := daemon.Inspect(p.Identity().PID); err == nil {
				for _, m := range daemon.Members(me, uint32(os.Getuid())) {
					helpers = append(helpers, m.ID)
				}
			}
			began := time.Now()
			if _, err := p.Stop(context.Background(), timeout); err != nil {
				t.Fatal(err)
			}
			took := time.Since(began)
			if took > tt.maxStop || took < tt.minStop {
				t.Fatalf("stop took %v, want %v..%v", took, tt.minStop, tt.maxStop)
			}
			select {
			case <-p.Done():
			default:
				t.Fatal("Stop returned before the process ended")
			}
			for _, h := range helpers {
				deadline := time.Now().Add(10 * time.Second)
				for {
					now, err := procfs.IdentityOf(h.PID)
					if err != nil || now != h {
						break
					}
					if st, _ := procfs.ReadStat(h.PID); st.State == 'Z' {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("helper pid %d of the daemon outlived its stop", h.PID)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
}

func TestDaemonRestartProgram(t *testing.T) {
	c := newDaemonCase(t, "exec sleep 30")
	marker := filepath.Join(c.dir, "restarted")
	// As Deephaven's "restart program": stop the old one, start anew.
	c.spec.Daemon.Restart = &runtime.Program{Command: []string{"/bin/sh", "-c",
		`touch "$3"; kill $(cat "$1"); while kill -0 $(cat "$1") 2>/dev/null; do sleep 0.01; done; rm -f "$1"; ` + daemonScript,
		"restart", c.pidfile, "exec sleep 30", marker}, Timeout: 5 * time.Second}
	p := c.start(t)
	old := p.Identity()
	np, err := p.(runtime.Restarter).Restart(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = np.Kill(); <-np.Done() })
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the restart program did not run: %v", err)
	}
	pid, _ := c.pid()
	if np.Identity() == old || np.Identity().PID != pid {
		t.Fatalf("after the restart following %+v, pidfile names %d, old %+v", np.Identity(), pid, old)
	}
	if old.Alive() {
		t.Fatal("the old process survived its restart")
	}

	// Without a restart program, a restart is the supervisor's stop and start.
	c2 := newDaemonCase(t, "exec sleep 30")
	if _, err := c2.start(t).(runtime.Restarter).Restart(context.Background()); !errors.Is(err, runtime.ErrNoRestartProgram) {
		t.Fatalf("restart without a program: %v, want ErrNoRestartProgram", err)
	}
}

func TestDaemonStartFailures(t *testing.T) {
	tests := []struct {
		name  string
		setup func(c *daemonCase)
		want  string
	}{
		{
			name: "start program exits non-zero: its output is in the error",
			setup: func(c *daemonCase) {
				c.spec.Daemon.Start.Command = []string{"/bin/sh", "-c", "echo launcher: no java found >&2; exit 4"}
			},
			want: "start program /bin/sh failed (exit status 4): launcher: no java found",
		},
		{
			name: "start program hangs: killed at its timeout",
			setup: func(c *daemonCase) {
				c.spec.Daemon.Start = runtime.Program{Command: []string{"/bin/sleep", "30"}, Timeout: 200 * time.Millisecond}
			},
			want: "did not return within 200ms (killed)",
		},
		{
			name: "no pidfile within start_timeout",
			setup: func(c *daemonCase) {
				c.spec.Daemon.Start.Command = []string{"/bin/true"}
				c.spec.Daemon.StartTimeout = 200 * time.Millisecond
			},
			want: "named no process of the service within 200ms",
		},
		{
			name: "start program names a process that ran before it (pid 1)",
			setup: func(c *daemonCase) {
				c.spec.Daemon.Start.Command = []string{"/bin/sh", "-c", `echo 1 > "$0"`, c.pidfile}
				c.spec.Daemon.StartTimeout = 200 * time.Millisecond
			},
			want: "is init",
		},
		{
			name: "program user unknown",
			setup: func(c *daemonCase) {
				c.spec.Daemon.Start.User = "no-such-user-dhvisor"
			},
			want: `run user "no-such-user-dhvisor"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newDaemonCase(t, "exec sleep 30")
			tt.setup(c)
			began := time.Now()
			p, err := Runtime{}.Start(context.Background(), c.spec)
			if err == nil {
				_ = p.Kill()
				<-p.Done()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want it to contain %q", err, tt.want)
			}
			if d := time.Since(began); d > 20*time.Second {
				t.Fatalf("failed after %v", d)
			}
		})
	}
}

// A service user who writes another process's pid into the pidfile gets a
// refusal, and that process is never signalled.
func TestDaemonForeignPidfile(t *testing.T) {
	// A process that runs as someone else (nobody), started before the
	// pidfile is written, and one of the service's user started before.
	other := osexec.Command("/bin/sleep", "30")
	if os.Getuid() == 0 {
		other.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	time.Sleep(20 * time.Millisecond)

	tests := []struct {
		name string
		pid  int
		want string
	}{
		{name: "init", pid: 1, want: "is init"},
		{name: "the agent itself", pid: os.Getpid(), want: "is the agent itself"},
	}
	if os.Getuid() == 0 {
		tests = append(tests, struct {
			name string
			pid  int
			want string
		}{name: "another user's process", pid: other.Process.Pid, want: "does not run as the service's user"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newDaemonCase(t, "exec sleep 30")
			time.Sleep(1100 * time.Millisecond) // the pidfile is newer than the process: not a reused pid
			c.writePidfile(t, tt.pid)
			_, err := Runtime{}.Start(context.Background(), c.spec)
			var fe *daemon.ForeignError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want a refusal saying %q", err, tt.want)
			}
			if got, _ := c.pid(); got != tt.pid {
				t.Fatalf("the pidfile was changed to %d", got)
			}
			if _, ok := (Runtime{}).Find(c.spec); ok {
				t.Fatal("Find offered the foreign process for adoption")
			}
		})
	}
	if other.ProcessState != nil {
		t.Fatal("the other user's process was signalled")
	}
	if err := syscall.Kill(other.Process.Pid, 0); err != nil {
		t.Fatalf("the other user's process is gone: %v", err)
	}
}

// A daemon started by someone else (monit, an operator) is found through
// its pidfile and followed without a new start.
func TestDaemonFindAndAdopt(t *testing.T) {
	c := newDaemonCase(t, "exec sleep 30")
	if out, err := osexec.Command(c.spec.Daemon.Start.Command[0], c.spec.Daemon.Start.Command[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	pid, err := c.pid()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := Runtime{}.Find(c.spec)
	if !ok || id.PID != pid {
		t.Fatalf("found %v %v, want pid %d", id, ok, pid)
	}
	p, err := Runtime{}.Adopt(context.Background(), c.spec, id)
	if err != nil {
		t.Fatal(err)
	}
	// Starting it again would refuse: Prepare says it runs.
	if _, err := (Runtime{}).Start(context.Background(), c.spec); !errors.As(err, new(*daemon.RunningError)) {
		t.Fatalf("second start: %v, want already running", err)
	}
	if _, err := p.Stop(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
}

// A pidfile the service's user wrote is believed only for a process in
// the agent's control group (or monit's): one the user started elsewhere,
// in a login session say, is not adopted nor started over; a pidfile
// root wrote vouches for a process anywhere.
func TestDaemonPidfileOutsideTheAgentsCgroup(t *testing.T) {
	need.Root(t, "to make control groups and run as nobody")
	mount, own := cgroupMount(t)
	for _, tc := range []struct {
		name, group string
		rootFile    bool
		adopted     bool
	}{
		{name: "a user's own cgroup", group: "session-9.scope"},
		{name: "monit's unit", group: "monit.service", adopted: true},
		{name: "a pidfile root wrote", group: "session-9.scope", rootFile: true, adopted: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(mount, own, fmt.Sprintf("dhvtest-%d", os.Getpid()), tc.group)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Remove(dir); _ = os.Remove(filepath.Dir(dir)) })
			p := osexec.Command("/bin/sleep", "30")
			p.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			if err := p.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = p.Process.Kill(); _ = p.Wait() })
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p.Process.Pid)), 0o644); err != nil {
				t.Fatal(err)
			}
			c := newDaemonCase(t, "exec sleep 30")
			c.spec.User = "nobody"
			time.Sleep(1100 * time.Millisecond) // the pidfile is newer than the process: not a reused pid
			c.writePidfile(t, p.Process.Pid)
			if !tc.rootFile {
				if err := os.Chown(c.pidfile, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
			id, found := Runtime{}.Find(c.spec)
			if found != tc.adopted || found && id.PID != p.Process.Pid {
				t.Fatalf("Find = %v %v, want found %v", id, found, tc.adopted)
			}
			_, err := Runtime{}.Start(context.Background(), c.spec)
			if tc.adopted {
				var re *daemon.RunningError
				if !errors.As(err, &re) || re.Proc.ID.PID != p.Process.Pid {
					t.Fatalf("Start = %v, want it running already", err)
				}
				return
			}
			var fe *daemon.ForeignError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), `runs in control group "`+strings.TrimPrefix(dir, mount)) {
				t.Fatalf("Start = %v, want a refusal naming the control group", err)
			}
			if err := syscall.Kill(p.Process.Pid, 0); err != nil {
				t.Fatalf("the process was signalled: %v", err)
			}
		})
	}
}

// cgroupMount is where the hierarchy daemon.CgroupOf reads is mounted,
// and the test's own place in it.
func cgroupMount(t *testing.T) (mount, own string) {
	t.Helper()
	own, err := daemon.OwnCgroup()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile("/proc/self/cgroup")
	if strings.Contains(string(b), ":name=systemd:") {
		return "/sys/fs/cgroup/systemd", own
	}
	return "/sys/fs/cgroup", own
}
