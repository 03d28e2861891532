package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/sysdbox"
)

// TestPackageInstallsAWorkingNode builds the packages with `make packages`,
// checks the .rpm with rpm -qp, and installs the .deb with dpkg in a
// container whose PID 1 is a real systemd: the agent supervises stand-ins
// as units of dhvisor.slice, restarts a killed one, leaves them alone when
// it is restarted itself, is killed by systemd's watchdog when its
// supervisor is stuck, and leaves nothing running when the package goes.
func TestPackageInstallsAWorkingNode(t *testing.T) {
	sysdbox.Need(t)
	root := sysdbox.RepoRoot(t)
	mk := exec.Command("make", "-s", "packages")
	mk.Dir = root
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make packages: %v\n%s", err, out)
	}
	deb := one(t, filepath.Join(root, "dist/dhvisor_*_amd64.deb"))
	rpm := one(t, filepath.Join(root, "dist/dhvisor-*.x86_64.rpm"))
	checkRPM(t, rpm)

	// With CAP_SYS_ADMIN, so that dhcoord's sandbox is real.
	box := sysdbox.Start(t, sysdbox.Sandboxing...)
	box.Copy(deb, "/tmp/dhvisor.deb")
	box.Copy(filepath.Join(binDir, "dh-standin"), "/usr/local/bin/dh-standin")
	box.Must("dpkg", "-i", "/tmp/dhvisor.deb")
	// Installed, not enabled, not started: that is the operator's call.
	if out, _ := box.Exec("systemctl", "is-enabled", "dhagent.service"); strings.TrimSpace(out) != "disabled" {
		t.Fatalf("dhagent after install: is-enabled %q, want disabled", out)
	}
	if out, _ := box.Exec("systemctl", "is-active", "dhagent.service"); strings.TrimSpace(out) != "inactive" {
		t.Fatalf("dhagent after install: is-active %q, want inactive", out)
	}

	ports := freePorts(t, 4)
	config := fmt.Sprintf(`# edited by the operator
node: pkgtest
roles: []
defaults:
  runtime: systemd
  user: ""
  log_dir: /var/log/dhvisor-test
  command: [/usr/local/bin/dh-standin, "--name={{.Name}}", "--ports={{.Ports}}", "--app-log={{.LogDir}}"]
  start_grace: 10s
  checks: [{type: tcp, port: main, interval: 1s}]
services:
  alpha: {ports: {main: %d}}
  beta: {ports: {main: %d}, depends_on: [alpha]}
  gamma: {ports: {main: %d}}
  delta: {ports: {main: %d}, runtime: exec}
`, ports[0], ports[1], ports[2], ports[3])
	writeIn(t, box, "/etc/dhvisor/agent.yaml", config)
	box.Must("systemctl", "enable", "--now", "dhagent.service")
	// Type=notify: active means the agent said READY.
	if out := box.Must("systemctl", "is-active", "dhagent.service"); strings.TrimSpace(out) != "active" {
		t.Fatalf("dhagent not active: %s", out)
	}
	// delta runs on the exec runtime: a child of dhagent, in its control
	// group (KillMode=process keeps it there across agent restarts).
	names := []string{"alpha", "beta", "gamma", "delta"}
	pids := waitAllOK(t, box, names)
	for _, n := range names[:3] {
		show := box.Must("systemctl", "show", "dhvisor-"+n+".service", "-p", "MainPID", "-p", "Slice", "-p", "ActiveState", "-p", "Restart")
		want := fmt.Sprintf("MainPID=%d\n", pids[n])
		for _, w := range []string{want, "Slice=dhvisor.slice", "ActiveState=active", "Restart=no"} {
			if !strings.Contains(show, w) {
				t.Fatalf("unit of %s lacks %q:\n%s", n, w, show)
			}
		}
	}

	// A killed service is restarted by dhvisor, as a new run of its unit.
	box.Must("sh", "-c", "kill -9 "+strconv.Itoa(pids["beta"]))
	box.WaitFor(15*time.Second, "beta restarted", func() (bool, string) {
		st := statusOf(box)
		b := st["beta"]
		return b.State == "OK" && b.Pid != 0 && b.Pid != pids["beta"] && b.Restarts == 1, fmt.Sprintf("%+v", b)
	})
	pids = waitAllOK(t, box, names)

	// Under systemd the agent logs to the journal with its attributes as
	// fields: one service's lines are found by its name.
	if j := box.Must("journalctl", "-u", "dhagent.service", "SERVICE=beta", "-o", "cat", "--no-pager"); !strings.Contains(j, "process ended unexpectedly") {
		t.Errorf("journalctl SERVICE=beta lacks the crash:\n%s", j)
	}

	// systemctl restart dhagent: a new agent, the same services.
	agentPID := mainPID(t, box, "dhagent.service")
	box.Must("systemctl", "restart", "dhagent.service")
	if mainPID(t, box, "dhagent.service") == agentPID {
		t.Fatal("dhagent was not restarted")
	}
	assertSamePIDs(t, pids, waitAllOK(t, box, names))

	// The watchdog: a healthy agent outlives WatchdogSec many times over;
	// one whose supervisor is frozen (the test hook; its other goroutines
	// run on) is killed by systemd and started again, services untouched.
	writeIn(t, box, "/etc/systemd/system/dhagent.service.d/test.conf", "[Service]\nEnvironment=DHVISOR_TEST_HOOKS=1\nWatchdogSec=2s\n")
	box.Must("systemctl", "daemon-reload")
	box.Must("systemctl", "restart", "dhagent.service")
	assertSamePIDs(t, pids, waitAllOK(t, box, names))
	agentPID = mainPID(t, box, "dhagent.service")
	restartsBefore := nRestarts(t, box)
	time.Sleep(5 * time.Second)
	if mainPID(t, box, "dhagent.service") != agentPID {
		t.Fatal("a healthy agent was killed: the watchdog is not fed")
	}
	box.Must("sh", "-c", "kill -USR2 "+strconv.Itoa(agentPID))
	box.WaitFor(20*time.Second, "frozen agent killed by the watchdog and restarted", func() (bool, string) {
		p, _ := box.Exec("systemctl", "show", "-p", "MainPID", "--value", "dhagent.service")
		p = strings.TrimSpace(p)
		return p != "0" && p != strconv.Itoa(agentPID), "MainPID " + p
	})
	if n := nRestarts(t, box); n != restartsBefore+1 {
		t.Errorf("NRestarts %d, want %d", n, restartsBefore+1)
	}
	if j := box.Must("journalctl", "-u", "dhagent.service", "--no-pager"); !strings.Contains(j, "Watchdog timeout") {
		t.Errorf("journal has no watchdog timeout:\n%s", j)
	}
	assertSamePIDs(t, pids, waitAllOK(t, box, names))
	box.Must("rm", "-r", "/etc/systemd/system/dhagent.service.d")
	box.Must("systemctl", "daemon-reload")

	// dhcoord is a Type=notify unit too: systemctl start returns once the
	// replica has its state and serves. It runs as dhvisor, so its key is
	// root:dhvisor 0640; the CA key stays off the node's directory.
	box.Must("dhctl", "tls", "ca", "create", "--dir", "/root/dhvisor-ca")
	box.Must("cp", "-p", "/root/dhvisor-ca/ca.pem", "/etc/dhvisor/tls/ca.pem")
	box.Must("dhctl", "tls", "cert", "create", "--coordinator", "--name", "c1", "--ca-dir", "/root/dhvisor-ca", "--dir", "/etc/dhvisor/tls", "--key-group", "dhvisor")
	cp := freePorts(t, 4)
	writeIn(t, box, "/etc/dhvisor/coordinator.yaml", fmt.Sprintf(`node: c1
api: {listen: 127.0.0.1:%d}
raft:
  listen: 127.0.0.1:%d
  bootstrap: [{id: c1, addr: "127.0.0.1:%d"}]
gossip: {bind: 127.0.0.1:%d, seeds: ["127.0.0.1:%d"]}
tls: {ca: tls/ca.pem, cert: tls/coordinator-c1.pem, key: tls/coordinator-c1-key.pem}
envoy: {xds: {listen: 127.0.0.1:%d}}
`, cp[0], cp[1], cp[1], cp[2], cp[2], cp[3]))
	box.Must("systemctl", "start", "dhcoord.service")
	if out := box.Must("systemctl", "show", "dhcoord.service", "-p", "ActiveState", "-p", "WatchdogUSec"); !strings.Contains(out, "ActiveState=active") || !strings.Contains(out, "WatchdogUSec=30s") {
		t.Fatalf("dhcoord after start:\n%s", out)
	}
	checkCoordinatorUnprivileged(t, box)

	// Reinstalling (an upgrade path) keeps the edited config and restarts
	// the running agent; the services keep running.
	agentPID = mainPID(t, box, "dhagent.service")
	box.Must("dpkg", "-i", "/tmp/dhvisor.deb")
	if got := box.Must("cat", "/etc/dhvisor/agent.yaml"); got != config {
		t.Fatalf("reinstall changed the edited agent.yaml:\n%s", got)
	}
	if mainPID(t, box, "dhagent.service") == agentPID {
		t.Error("reinstall did not restart the running agent")
	}
	assertSamePIDs(t, pids, waitAllOK(t, box, names))

	// Removal: nothing of dhvisor runs; configuration and state stay.
	box.Must("dpkg", "-r", "dhvisor")
	if left := box.Must("sh", "-c", "cat /proc/[0-9]*/comm 2>/dev/null | grep -E '^(dhagent|dhcoord|dh-standin)$' || true"); strings.TrimSpace(left) != "" {
		t.Fatalf("left running after dpkg -r: %s", left)
	}
	if units := box.Must("systemctl", "list-units", "--no-legend", "dhvisor-*"); strings.TrimSpace(units) != "" {
		t.Fatalf("units left after dpkg -r:\n%s", units)
	}
	if got := box.Must("cat", "/etc/dhvisor/agent.yaml"); got != config {
		t.Fatal("dpkg -r did not keep the configuration")
	}
	box.Must("test", "-s", "/var/lib/dhvisor/agent-state.json")
	box.Must("dpkg", "-P", "dhvisor")
	if _, err := box.Exec("test", "-e", "/etc/dhvisor"); err == nil {
		t.Error("dpkg -P left /etc/dhvisor")
	}
}

// checkCoordinatorUnprivileged: the package made the dhvisor user, and
// dhcoord runs as it, in its sandbox, writing its data directory only.
func checkCoordinatorUnprivileged(t *testing.T, box *sysdbox.Box) {
	t.Helper()
	uid := strings.TrimSpace(box.Must("id", "-u", "dhvisor"))
	if uid == "0" || uid == "" {
		t.Fatalf("dhvisor user: uid %q", uid)
	}
	pid := mainPID(t, box, "dhcoord.service")
	status := box.Must("cat", "/proc/"+strconv.Itoa(pid)+"/status")
	for _, line := range strings.Split(status, "\n") {
		f := strings.Fields(line)
		if len(f) == 5 && f[0] == "Uid:" {
			if f[1] != uid || f[2] != uid || f[3] != uid || f[4] != uid {
				t.Fatalf("dhcoord (pid %d) runs as %s, want dhvisor (uid %s) throughout", pid, line, uid)
			}
		}
		if len(f) == 2 && f[0] == "NoNewPrivs:" && f[1] != "1" {
			t.Errorf("dhcoord: %s, want 1", line)
		}
		if len(f) == 2 && f[0] == "CapBnd:" && f[1] != "0000000000000000" {
			t.Errorf("dhcoord: %s, want no capabilities", line)
		}
	}
	if owner := strings.TrimSpace(box.Must("stat", "-c", "%U %a", "/var/lib/dhvisor/coordinator")); owner != "dhvisor 750" {
		t.Errorf("/var/lib/dhvisor/coordinator: %s, want dhvisor 750", owner)
	}
	if files := box.Must("find", "/var/lib/dhvisor/coordinator", "-type", "f", "!", "-user", "dhvisor"); strings.TrimSpace(files) != "" {
		t.Errorf("files of the data directory not dhvisor's:\n%s", files)
	}
	// ProtectSystem=strict, for real: nothing outside the data directory
	// is writable, even where dhvisor's permissions would allow it.
	box.Must("install", "-d", "-o", "dhvisor", "-m", "0755", "/opt/dhvisor-owned")
	if out, err := box.Exec("nsenter", "-t", strconv.Itoa(pid), "-m", "-S", uid, "-G", uid, "touch", "/opt/dhvisor-owned/x"); err == nil {
		t.Errorf("dhcoord's mount namespace lets it write /opt: %s", out)
	}
	for _, u := range []string{"dhcoord.service", "dhagent.service"} {
		out, _ := box.Exec("systemd-analyze", "security", "--no-pager", u)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		t.Logf("systemd-analyze security %s: %s", u, lines[len(lines)-1])
	}
}

func one(t *testing.T, pattern string) string {
	t.Helper()
	m, _ := filepath.Glob(pattern)
	if len(m) != 1 {
		t.Fatalf("%s: %d files, want 1", pattern, len(m))
	}
	return m[0]
}

// checkRPM reads the .rpm as a RHEL operator would.
func checkRPM(t *testing.T, rpm string) {
	t.Helper()
	q := func(args ...string) string {
		out, err := exec.Command("rpm", append([]string{"-qp"}, append(args, rpm)...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("rpm -qp %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	files := q("-l")
	for _, f := range []string{"/usr/bin/dhagent", "/usr/bin/dhcoord", "/usr/bin/dhctl", "/etc/dhvisor/agent.yaml",
		"/usr/lib/systemd/system/dhagent.service", "/usr/lib/systemd/system/dhcoord.service", "/usr/lib/systemd/system/dhvisor.slice",
		"/usr/share/dhvisor/roles/services.yaml", "/usr/share/man/man1/dhctl.1.gz", "/usr/share/man/man1/dhctl-status.1.gz",
		"/usr/share/bash-completion/completions/dhctl", "/usr/share/zsh/site-functions/_dhctl"} {
		if !strings.Contains(files, f+"\n") {
			t.Errorf("rpm -qpl lacks %s", f)
		}
	}
	if c := q("-c"); c != "/etc/dhvisor/agent.yaml\n" {
		t.Errorf("rpm -qpc = %q, want only /etc/dhvisor/agent.yaml", c)
	}
	if !strings.Contains(q("--dump"), "/etc/dhvisor/agent.yaml ") {
		t.Error("rpm --dump lacks the config file")
	}
	scripts := q("--scripts")
	for _, w := range []string{"postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet", "systemctl daemon-reload", "disable --now dhagent.service"} {
		if !strings.Contains(scripts, w) {
			t.Errorf("rpm --scripts lacks %q", w)
		}
	}
	for _, line := range strings.Split(scripts, "\n") {
		if code, _, _ := strings.Cut(line, "#"); strings.Contains(code, "systemctl start") || strings.Contains(code, "systemctl enable") {
			t.Errorf("a scriptlet starts or enables something: %s", line)
		}
	}
	if !strings.Contains(q("--requires"), "systemd") {
		t.Error("rpm --requires lacks systemd")
	}
	info := q("-i")
	for _, w := range []string{"License     : ", "Summary     : Supervisor for Deephaven", "Description :"} {
		if !strings.Contains(info, w) {
			t.Errorf("rpm -qpi lacks %q", w)
		}
	}
}

func writeIn(t *testing.T, box *sysdbox.Box, path, content string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	box.Copy(f, path)
}

type boxStatus struct {
	Name, State string
	Pid         int
	Restarts    int
}

func statusOf(box *sysdbox.Box) map[string]boxStatus {
	out, _ := box.Exec("dhctl", "status", "--local", "--json")
	var parsed struct{ Services []boxStatus }
	_ = json.Unmarshal([]byte(out), &parsed)
	m := map[string]boxStatus{}
	for _, s := range parsed.Services {
		m[s.Name] = s
	}
	return m
}

func waitAllOK(t *testing.T, box *sysdbox.Box, names []string) map[string]int {
	t.Helper()
	var pids map[string]int
	box.WaitFor(30*time.Second, "every service OK", func() (bool, string) {
		st := statusOf(box)
		pids = map[string]int{}
		for _, n := range names {
			if st[n].State != "OK" || st[n].Pid == 0 {
				return false, fmt.Sprintf("%+v", st)
			}
			pids[n] = st[n].Pid
		}
		return true, ""
	})
	return pids
}

func assertSamePIDs(t *testing.T, before, after map[string]int) {
	t.Helper()
	for n, p := range before {
		if after[n] != p {
			t.Errorf("%s: pid %d, was %d", n, after[n], p)
		}
	}
}

func mainPID(t *testing.T, box *sysdbox.Box, unit string) int {
	t.Helper()
	p, err := strconv.Atoi(strings.TrimSpace(box.Must("systemctl", "show", "-p", "MainPID", "--value", unit)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func nRestarts(t *testing.T, box *sysdbox.Box) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(box.Must("systemctl", "show", "-p", "NRestarts", "--value", "dhagent.service")))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
