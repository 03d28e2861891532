package systemd

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/runtime/logwriter"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/test/sysdbox"
	"github.com/dhvisor/dhvisor/test/waitfor"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// insideEnv is set when the test binary runs inside the systemd container.
const insideEnv = "DHVISOR_TEST_INSIDE_SYSTEMD"

const owner = "/var/lib/dhvisor-test"

func TestUnitName(t *testing.T) {
	for in, want := range map[string]string{
		"configuration_server": "dhvisor-configuration_server.service",
		"db-merge.2":           "dhvisor-db-merge.2.service",
		"a b/c":                `dhvisor-a\x20b\x2fc.service`,
		".hidden":              `dhvisor-\x2ehidden.service`,
	} {
		if got := UnitName(in); got != want {
			t.Errorf("UnitName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestVersionAtLeast(t *testing.T) {
	for v, want := range map[string]bool{`"252.39-1~deb12u2"`: true, "239 (239-74.el8_8)": false, "240": true, "": false} {
		if got := versionAtLeast(v, 240); got != want {
			t.Errorf("versionAtLeast(%q) = %v", v, got)
		}
	}
}

// TestStaleSignalsOfAnEndedRun: the last signals of a unit's run that
// ended (systemd sends "failed" and "inactive" again as it collects the
// unit) can still wait to be read when the service is started again under
// the same unit name; they must neither end the new run's process nor count
// as its start, before or after systemd reports it started. The first run
// ends, as a service that crashes at once does, before Start has read it.
func TestStaleSignalsOfAnEndedRun(t *testing.T) {
	r := &Runtime{log: slog.New(slog.NewTextHandler(io.Discard, nil)), watched: map[dbus.ObjectPath]*process{}, retired: map[dbus.ObjectPath]string{}}
	unit := UnitName("svc")
	send := func(iface string, changed map[string]any) {
		vs := map[string]dbus.Variant{}
		for k, v := range changed {
			vs[k] = dbus.MakeVariant(v)
		}
		r.handle(&dbus.Signal{Path: unitPath(unit), Name: ifaceProps + ".PropertiesChanged", Body: []any{iface, vs, []string{}}})
	}
	state := func(st string, inv []byte) { send(ifaceUnit, map[string]any{"ActiveState": st, "InvocationID": inv}) }
	exit := func(pid uint32, code, status int32) {
		send(ifaceService, map[string]any{"ExecMainPID": pid, "ExecMainCode": code, "ExecMainStatus": status})
	}
	trailing := func(inv []byte) {
		exit(100, cldKilled, int32(syscall.SIGKILL))
		state("failed", inv)
		state("inactive", inv)
	}
	first, second := []byte("run-1-invocation"), []byte("run-2-invocation")

	p1 := r.newProcess(unit)
	r.watch(p1)
	state("inactive", first)
	state("activating", first)
	exit(100, cldKilled, int32(syscall.SIGKILL))
	state("failed", first)
	if e := waitDone(t, p1); e.Signal != "SIGKILL" {
		t.Fatalf("first run's exit %+v, want SIGKILL", e)
	}

	p2 := r.newProcess(unit)
	r.watch(p2)
	trailing(first)
	if p2.hasRun() {
		t.Fatal("the first run's signals count as the second run's start")
	}
	state("inactive", second)
	state("activating", second)
	trailing(first)
	p2.arm(procfs.Identity{PID: 200}, string(second), nil)
	trailing(first)
	select {
	case <-p2.Done():
		t.Fatalf("the first run's end ended the second run: %+v", p2.Exit())
	default:
	}
	exit(200, cldExited, 3)
	state("failed", second)
	if e := waitDone(t, p2); e.Code != 3 {
		t.Fatalf("second run's exit %+v, want code 3", e)
	}
}

// TestSystemdRuntime drives a real systemd: on the host it starts a
// systemd container and runs itself in there.
func TestSystemdRuntime(t *testing.T) {
	if os.Getenv(insideEnv) == "" {
		sysdbox.Start(t).RunInside("TestSystemdRuntime", insideEnv+"=1")
		return
	}
	ctx := context.Background()
	r, err := New(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), owner)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Service users must reach their log directory and stand-in files.
	logs := t.TempDir()
	if err := os.Chmod(filepath.Dir(logs), 0o755); err != nil {
		t.Fatal(err)
	}
	start := func(t *testing.T, spec runtime.Spec) runtime.Process {
		t.Helper()
		spec.Owner = owner
		if spec.LogDir == "" {
			spec.LogDir = logs
		}
		if spec.StopTimeout == 0 {
			spec.StopTimeout = 5 * time.Second
		}
		p, err := r.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Kill(); waitDone(t, p) })
		return p
	}

	t.Run("exit events", func(t *testing.T) {
		tests := []struct {
			name   string
			argv   []string
			kill   bool
			code   int
			signal string
		}{
			{name: "exit code", argv: []string{"/bin/sh", "-c", "sleep 0.2; exit 7"}, code: 7},
			{name: "clean exit", argv: []string{"/bin/sh", "-c", "sleep 0.2"}, code: 0},
			{name: "kill -9", argv: []string{"/bin/sleep", "30"}, kill: true, code: -1, signal: "SIGKILL"},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				p := start(t, runtime.Spec{Name: "exit" + strconv.Itoa(i), Command: tt.argv})
				if tt.kill {
					_ = syscall.Kill(p.Identity().PID, syscall.SIGKILL)
				}
				e := waitDone(t, p)
				if e.Code != tt.code || e.Signal != tt.signal {
					t.Fatalf("exit %+v, want code %d signal %q", e, tt.code, tt.signal)
				}
			})
		}
	})

	t.Run("unit in the slice with environment, directory and output file", func(t *testing.T) {
		dir := t.TempDir()
		p := start(t, runtime.Spec{Name: "env", Dir: dir, Env: map[string]string{"FOO": "bar"},
			Command: []string{"/bin/sh", "-c", `echo "$FOO $DHVISOR_SERVICE $DHVISOR_AGENT $(pwd)"; exec sleep 30`}})
		want := "bar env " + owner + " " + dir + "\n"
		waitfor.File(t, filepath.Join(logs, logwriter.FileName("env", time.Now())), want, 5*time.Second)
		cg, err := os.ReadFile("/proc/" + strconv.Itoa(p.Identity().PID) + "/cgroup")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(cg), "/dhvisor.slice/dhvisor-env.service") {
			t.Fatalf("not in dhvisor.slice:\n%s", cg)
		}
		pr := p.(*process)
		pr.mu.Lock()
		inv := pr.invocation
		pr.mu.Unlock()
		if len(inv) != 16 {
			t.Errorf("invocation id %x, want systemd's 16 bytes: a later run could take this run's last signals for its own", inv)
		}
		show, _ := exec.Command("systemctl", "show", "dhvisor-env.service", "-p", "Restart", "-p", "Slice", "-p", "TimeoutStopUSec").Output()
		for _, w := range []string{"Restart=no", "Slice=dhvisor.slice", "TimeoutStopUSec=5s"} {
			if !strings.Contains(string(show), w) {
				t.Errorf("systemctl show lacks %s:\n%s", w, show)
			}
		}
	})

	t.Run("the service's variables reach it, not systemctl show", func(t *testing.T) {
		secrets := filepath.Join(t.TempDir(), "secret.env")
		if err := os.WriteFile(secrets, []byte("DB_PASSWORD='pa$$ \"w\\ord\"'\nMULTI=\"one\ntwo\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p := start(t, runtime.Spec{Name: "secret", Env: map[string]string{"PLAIN_SETTING": "env-value-123"}, EnvFiles: []string{secrets},
			Command: []string{"/bin/sleep", "30"}})
		environ, err := os.ReadFile("/proc/" + strconv.Itoa(p.Identity().PID) + "/environ")
		if err != nil {
			t.Fatal(err)
		}
		vars := strings.Split(string(environ), "\x00")
		for _, w := range []string{`DB_PASSWORD=pa$$ "w\ord"`, "MULTI=one\ntwo", "PLAIN_SETTING=env-value-123", "DHVISOR_SERVICE=secret"} {
			if !slices.Contains(vars, w) {
				t.Errorf("the service's environment lacks %q: %q", w, vars)
			}
		}
		// What any local user sees of the unit: the marks, nothing of the
		// service's own.
		show, err := exec.Command("runuser", "-u", "nobody", "--", "systemctl", "show", "dhvisor-secret.service", "-p", "Environment", "-p", "EnvironmentFiles").CombinedOutput()
		if err != nil {
			t.Fatalf("systemctl show as nobody: %v: %s", err, show)
		}
		if !strings.Contains(string(show), "DHVISOR_SERVICE=secret") {
			t.Fatalf("systemctl show as nobody does not show the unit's environment at all:\n%s", show)
		}
		for _, leak := range []string{"pa$$", "env-value-123", "MULTI"} {
			if strings.Contains(string(show), leak) {
				t.Errorf("systemctl show as nobody shows %q:\n%s", leak, show)
			}
		}
		file := filepath.Join(EnvDir, "dhvisor-secret.service.env")
		for path, want := range map[string]os.FileMode{EnvDir: os.ModeDir | 0o700, file: 0o600} {
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode() != want || st.Sys().(*syscall.Stat_t).Uid != 0 {
				t.Errorf("%s: mode %v uid %d, want %v root's", path, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, want)
			}
		}
		if out, err := exec.Command("runuser", "-u", "nobody", "--", "cat", file).CombinedOutput(); err == nil {
			t.Errorf("nobody reads the environment file: %s", out)
		}
		// A secrets file that others may read is refused, and no unit starts.
		if err := os.Chmod(secrets, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Start(ctx, runtime.Spec{Name: "secret-loose", Owner: owner, LogDir: logs, StopTimeout: time.Second, EnvFiles: []string{secrets}, Command: []string{"/bin/sleep", "30"}}); err == nil || !strings.Contains(err.Error(), "has mode 0644") {
			t.Fatalf("start with a world-readable env file: %v", err)
		}
	})

	t.Run("stop escalates and takes everything in the unit", func(t *testing.T) {
		pidFile := filepath.Join(t.TempDir(), "child.pid")
		p := start(t, runtime.Spec{Name: "stubborn", StopTimeout: 300 * time.Millisecond,
			Command: []string{"/bin/sh", "-c", "trap '' TERM; sh -c 'trap \"\" TERM; echo $$ > " + pidFile + "; sleep 30' & wait"}})
		child := waitPID(t, pidFile)
		began := time.Now()
		e, err := p.Stop(ctx, 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if e.Signal != "SIGKILL" {
			t.Errorf("stop ended with %+v, want SIGKILL", e)
		}
		if took := time.Since(began); took > 5*time.Second {
			t.Errorf("stop took %s", took)
		}
		if (procfs.Identity{PID: child.PID, StartTicks: child.StartTicks}).Alive() {
			t.Fatal("the launcher's child survived the stop")
		}
	})

	t.Run("a unit that ended is restarted at once under its name", func(t *testing.T) {
		for i := range 20 {
			p, err := r.Start(ctx, runtime.Spec{Name: "again", Owner: owner, LogDir: logs, StopTimeout: time.Second, Command: []string{"/bin/sh", "-c", "exit 3"}})
			if err != nil {
				t.Fatalf("start %d: %v", i, err)
			}
			if e := waitDone(t, p); e.Code != 3 {
				t.Fatalf("run %d: exit %+v, want code 3", i, e)
			}
		}
	})

	t.Run("a new agent adopts the unit; others' units are not its", func(t *testing.T) {
		// Not start(): its cleanup would wait for a released process.
		p, err := r.Start(ctx, runtime.Spec{Name: "adopt", Owner: owner, LogDir: logs, StopTimeout: time.Second, Command: []string{"/bin/sleep", "30"}})
		if err != nil {
			t.Fatal(err)
		}
		id := p.Identity()
		p.Release()
		r2, err := New(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), owner)
		if err != nil {
			t.Fatal(err)
		}
		defer r2.Close()
		if got, ok := r2.Find(runtime.Spec{Owner: owner, Name: "adopt"}); !ok || got != id {
			t.Fatalf("Find = %+v %v, want %+v", got, ok, id)
		}
		if _, ok := r2.Find(runtime.Spec{Owner: "/other/agent", Name: "adopt"}); ok {
			t.Fatal("Find matched another agent's unit")
		}
		other, err := New(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), "/other/agent")
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if _, err := other.Adopt(ctx, runtime.Spec{}, id); err == nil {
			t.Fatal("adopted another agent's unit")
		}
		if _, err := r2.Adopt(ctx, runtime.Spec{}, procfs.Identity{PID: id.PID, StartTicks: id.StartTicks + 1}); err == nil {
			t.Fatal("adopted with the wrong start time")
		}
		if _, err := r2.Adopt(ctx, runtime.Spec{}, procfs.Identity{PID: os.Getpid()}); err == nil {
			t.Fatal("adopted a process outside dhvisor's units")
		}
		q, err := r2.Adopt(ctx, runtime.Spec{}, id)
		if err != nil {
			t.Fatal(err)
		}
		_ = syscall.Kill(id.PID, syscall.SIGKILL)
		if e := waitDone(t, q); e.Signal != "SIGKILL" {
			t.Fatalf("adopted unit's exit %+v", e)
		}
	})

	t.Run("usage counts everything in the unit's cgroup", func(t *testing.T) {
		p := start(t, runtime.Spec{Name: "usage", Command: []string{"/bin/sh", "-c", "sleep 30 & sleep 30 & while :; do :; done"}})
		// Until the shell has forked both sleeps and spun long enough for a
		// tick of CPU: no fixed wait is enough on a loaded machine.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			u, err := p.(runtime.Metered).Usage()
			if err != nil {
				t.Fatal(err)
			}
			if u.Procs == 3 && u.RSSBytes > 0 && u.CPUTicks > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("usage %+v, want 3 processes with memory and CPU", u)
			}
		}
	})

	t.Run("runs as the service user", func(t *testing.T) {
		start(t, runtime.Spec{Name: "user", User: "nobody", Command: []string{"/bin/sh", "-c", "id -un; exec sleep 30"}})
		waitfor.File(t, filepath.Join(logs, logwriter.FileName("user", time.Now())), "nobody\n", 5*time.Second)
	})

	t.Run("output to the journal", func(t *testing.T) {
		start(t, runtime.Spec{Name: "journal", Output: config.OutputJournal, Command: []string{"/bin/sh", "-c", "echo journal-marker-42; exec sleep 30"}})
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, _ := exec.Command("journalctl", "-u", "dhvisor-journal.service", "-o", "cat", "--no-pager").Output()
			if strings.Contains(string(out), "journal-marker-42") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not in the journal:\n%s", out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("daemonizing service: followed through its pidfile, stopped by its stop program", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		pidfile, stopped := filepath.Join(dir, "d.pid"), filepath.Join(dir, "stopped")
		// The start program daemonizes the way Deephaven's launcher does:
		// the service runs on in its own session and writes its pidfile.
		launch := []string{"/bin/sh", "-c", "setsid /bin/sh -c 'echo $$ > " + pidfile + "; exec sleep 30' </dev/null >/dev/null 2>&1 &"}
		daemonSpec := func(name, user string, start []string) runtime.Spec {
			return runtime.Spec{Name: name, User: user, Daemon: &runtime.Daemon{
				Start:        runtime.Program{Command: start},
				Stop:         &runtime.Program{Command: []string{"/bin/sh", "-c", "touch " + stopped + "; kill $(cat " + pidfile + ")"}},
				Pidfile:      pidfile,
				StartTimeout: 10 * time.Second,
			}}
		}
		// A stale pidfile naming a dead pid is removed before the start.
		dead := exec.Command("/bin/true")
		if err := dead.Run(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(pidfile, []byte(strconv.Itoa(dead.Process.Pid)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		p := start(t, daemonSpec("daemon", "", launch))
		want := waitPID(t, pidfile)
		if p.Identity() != want {
			t.Fatalf("following %+v, want the pidfile's %+v", p.Identity(), want)
		}
		show, _ := exec.Command("systemctl", "show", "dhvisor-daemon.service", "-p", "Type", "-p", "PIDFile", "-p", "MainPID").Output()
		for _, w := range []string{"Type=forking", "PIDFile=" + pidfile, "MainPID=" + strconv.Itoa(want.PID)} {
			if !strings.Contains(string(show), w) {
				t.Errorf("systemctl show lacks %s:\n%s", w, show)
			}
		}
		if _, err := p.Stop(ctx, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(stopped); err != nil {
			t.Errorf("the stop program did not run: %v", err)
		}
		if want.Alive() {
			t.Fatal("the daemon survived the stop")
		}

		// kill -9 of the daemon ends the unit's run, seen as such.
		_ = os.Remove(pidfile)
		p = start(t, daemonSpec("daemon", "", launch))
		_ = syscall.Kill(p.Identity().PID, syscall.SIGKILL)
		if e := waitDone(t, p); e.Signal != "SIGKILL" {
			t.Fatalf("exit %+v, want SIGKILL", e)
		}

		// A service user who names another process in its pidfile gets a
		// refusal, and that process no signal.
		self := strconv.Itoa(os.Getpid())
		for _, foreign := range []string{"1", self} {
			_ = os.Remove(pidfile)
			spec := daemonSpec("foreign", "nobody", []string{"/bin/sh", "-c", "echo " + foreign + " > " + pidfile + "; sleep 30 & "})
			spec.Owner, spec.LogDir, spec.StopTimeout = owner, logs, time.Second
			spec.Daemon.StartTimeout = 2 * time.Second
			p, err := r.Start(ctx, spec)
			if err == nil {
				_ = p.Kill()
				t.Fatalf("pidfile naming pid %s: started, following %+v", foreign, p.Identity())
			}
			t.Logf("pidfile naming pid %s: %v", foreign, err)
			if _, err := os.Stat(stopped); err == nil && foreign == "1" {
				// The stop program is the service's: it may run, but
				// nothing reached the foreign process (we are alive).
				_ = os.Remove(stopped)
			}
			_ = exec.Command("systemctl", "stop", "dhvisor-foreign.service").Run()
			_ = exec.Command("systemctl", "reset-failed", "dhvisor-foreign.service").Run()
		}

		// A start program that fails is the start's failure.
		_ = os.Remove(pidfile)
		spec := daemonSpec("daemonfail", "", []string{"/bin/sh", "-c", "echo cannot start; exit 3"})
		spec.Owner, spec.LogDir, spec.StopTimeout = owner, logs, time.Second
		_, err := r.Start(ctx, spec)
		if err == nil {
			t.Fatal("a start program that exits 3 started")
		}
		t.Logf("failing start program: %v", err)
	})

	t.Run("start errors", func(t *testing.T) {
		for _, tt := range []struct {
			spec runtime.Spec
			want string
		}{
			{runtime.Spec{Name: "nobin", Command: []string{"/no/such/binary"}}, "203"},
			{runtime.Spec{Name: "nouser", User: "no-such-user", Command: []string{"/bin/true"}}, "run user"},
		} {
			tt.spec.Owner, tt.spec.LogDir = owner, logs
			if _, err := r.Start(ctx, tt.spec); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: err %v, want one mentioning %q", tt.spec.Name, err, tt.want)
			}
		}
	})
}

func waitDone(t *testing.T, p runtime.Process) runtime.Exit {
	t.Helper()
	select {
	case <-p.Done():
		return p.Exit()
	case <-time.After(10 * time.Second):
		t.Fatal("unit did not end")
	}
	return runtime.Exit{}
}

func waitPID(t *testing.T, file string) procfs.Identity {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(file)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			id, err := procfs.IdentityOf(pid)
			if err != nil {
				t.Fatal(err)
			}
			return id
		}
		if time.Now().After(deadline) {
			t.Fatal("no pid written")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
