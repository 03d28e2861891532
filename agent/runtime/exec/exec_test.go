package exec

import (
	"context"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/runtime/logwriter"
	"github.com/dhvisor/dhvisor/test/need"
	"github.com/dhvisor/dhvisor/test/waitfor"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func start(t *testing.T, name string, argv ...string) runtime.Process {
	t.Helper()
	p, err := Runtime{}.Start(context.Background(), runtime.Spec{Name: name, Command: argv, LogDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); <-p.Done() })
	return p
}

func waitDone(t *testing.T, p runtime.Process) runtime.Exit {
	t.Helper()
	select {
	case <-p.Done():
		return p.Exit()
	case <-time.After(5 * time.Second):
		t.Fatal("process did not end")
	}
	return runtime.Exit{}
}

func TestExitEvents(t *testing.T) {
	tests := []struct {
		name   string
		argv   []string
		kill   bool
		code   int
		signal string
	}{
		{name: "exit code", argv: []string{"/bin/sh", "-c", "exit 7"}, code: 7},
		{name: "clean exit", argv: []string{"/bin/true"}, code: 0},
		{name: "kill -9", argv: []string{"/bin/sleep", "30"}, kill: true, code: -1, signal: "SIGKILL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := start(t, "svc", tt.argv...)
			if tt.kill {
				_ = syscall.Kill(p.Identity().PID, syscall.SIGKILL)
			}
			e := waitDone(t, p)
			if e.Code != tt.code || e.Signal != tt.signal {
				t.Fatalf("exit %+v, want code %d signal %q", e, tt.code, tt.signal)
			}
		})
	}
}

func TestStopKillsTheGroup(t *testing.T) {
	// A launcher script whose child (the "JVM") ignores SIGTERM: stop must
	// escalate to SIGKILL and take the child too.
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	p := start(t, "svc", "/bin/sh", "-c", "trap '' TERM; sh -c 'echo $$ > "+pidFile+"; sleep 30' & wait")
	var child int
	for i := 0; i < 100 && child == 0; i++ {
		b, _ := os.ReadFile(pidFile)
		child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(10 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("child did not start")
	}
	begin := time.Now()
	if _, err := p.Stop(context.Background(), 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < 200*time.Millisecond {
		t.Errorf("stop took %s; the child ignores SIGTERM so it needed the timeout", took)
	}
	time.Sleep(50 * time.Millisecond)
	if id, err := procfs.IdentityOf(child); err == nil && id.Alive() {
		t.Fatalf("child %d survived the stop", child)
	}
}

func TestReleaseAndAdopt(t *testing.T) {
	p, err := Runtime{}.Start(context.Background(), runtime.Spec{Name: "adoptee", Owner: "/var/lib/test-agent", Command: []string{"/bin/sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	id := p.Identity()
	defer syscall.Kill(id.PID, syscall.SIGKILL)
	p.Release() // the agent goes away; the process stays
	if !id.Alive() {
		t.Fatal("process died on release")
	}
	found, ok := Runtime{}.Find(runtime.Spec{Owner: "/var/lib/test-agent", Name: "adoptee"})
	if !ok || found != id {
		t.Fatalf("Find = %v %v, want %v", found, ok, id)
	}
	if _, ok := (Runtime{}).Find(runtime.Spec{Owner: "/var/lib/test-agent", Name: "nosuch-service"}); ok {
		t.Fatal("found a process for an unknown service")
	}
	if _, ok := (Runtime{}).Find(runtime.Spec{Owner: "/var/lib/other-agent", Name: "adoptee"}); ok {
		t.Fatal("found another agent's process")
	}
	q, err := Runtime{}.Adopt(context.Background(), runtime.Spec{}, id)
	if err != nil {
		t.Fatal(err)
	}
	_ = syscall.Kill(id.PID, syscall.SIGKILL)
	if e := waitDone(t, q); e.Code != -1 {
		t.Fatalf("adopted exit %+v; the code of a non-child is unknown", e)
	}
	// The exit was reaped by the first watcher's owner: here, the test's
	// process is still the parent, so reap it to avoid a zombie.
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(id.PID, &ws, 0, nil)
	if _, err := (Runtime{}).Adopt(context.Background(), runtime.Spec{}, id); err == nil {
		t.Fatal("adopted a dead process")
	}
	if _, err := (Runtime{}).Adopt(context.Background(), runtime.Spec{}, procfs.Identity{PID: os.Getpid(), StartTicks: 1}); err == nil {
		t.Fatal("adopted a process whose start time does not match (pid reuse)")
	}
}

func TestStartErrors(t *testing.T) {
	for name, spec := range map[string]runtime.Spec{
		"missing binary": {Name: "x", Command: []string{"/nonexistent/java"}},
		"unknown user":   {Name: "x", Command: []string{"/bin/true"}, User: "no-such-user-dhv"},
		"no command":     {Name: "x"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := (Runtime{}).Start(context.Background(), spec); err == nil {
				t.Fatal("started")
			}
		})
	}
}

// TestRunsAsServiceUser needs root, as the agent has in production; in CI it
// must run, not skip.
func TestRunsAsServiceUser(t *testing.T) {
	need.Root(t, "to run a service as its user")
	// The service user must reach its log directory, and t.TempDir's
	// parents are private.
	dir, err := os.MkdirTemp("", "dhv-user-test")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(dir, "logs")
	p, err := Runtime{}.Start(context.Background(), runtime.Spec{Name: "svc", Command: []string{"/bin/sleep", "30"}, User: "nobody", LogDir: logDir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Kill(); <-p.Done() }()
	status, err := os.ReadFile("/proc/" + strconv.Itoa(p.Identity().PID) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "\nUid:\t65534\t65534\t65534\t65534\n") {
		t.Fatalf("not running as nobody:\n%s", status)
	}
	// The logwriter, a process of its own, creates the day's file.
	file := filepath.Join(logDir, logwriter.FileName("svc", time.Now()))
	waitfor.File(t, file, "", 20*time.Second)
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Error("log file not owned by the service user")
	}
}

// TestFindRefusesImpostors: the service marks are environment variables
// anyone can set. A process of another user carrying them is never the
// service's, so a lost state file cannot make the agent adopt (and
// gossip as OK, and route to) a service user's impostor of a root
// service.
func TestFindRefusesImpostors(t *testing.T) {
	need.Root(t, "to run the impostor as another user")
	const owner = "/var/lib/test-agent"
	impostor := osexec.Command("/bin/sleep", "30")
	impostor.Env = []string{runtime.ServiceEnv + "=configuration_server", runtime.OwnerEnv + "=" + owner}
	impostor.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := impostor.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = impostor.Process.Kill(); _ = impostor.Wait() }()
	if id, ok := (Runtime{}).Find(runtime.Spec{Owner: owner, Name: "configuration_server"}); ok {
		t.Fatalf("adopted pid %d, nobody's process, for a root service", id.PID)
	}
	// The same marks on a process of the service's own user are found.
	p, err := Runtime{}.Start(context.Background(), runtime.Spec{Name: "as_nobody", Owner: owner, User: "nobody", Command: []string{"/bin/sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Kill(); <-p.Done() }()
	if id, ok := (Runtime{}).Find(runtime.Spec{Owner: owner, Name: "as_nobody", User: "nobody"}); !ok || id != p.Identity() {
		t.Fatalf("Find = %v %v, want the service's own %v", id, ok, p.Identity())
	}
	if _, ok := (Runtime{}).Find(runtime.Spec{Owner: owner, Name: "as_nobody"}); ok {
		t.Fatal("a root service's Find took nobody's process")
	}
}
