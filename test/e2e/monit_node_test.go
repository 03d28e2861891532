package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/need"
	"github.com/dhvisor/dhvisor/test/syncbuf"
	"github.com/dhvisor/dhvisor/test/sysdbox"
)

// A Deephaven-shaped node as monit runs it: one control file per service
// under one directory, as Deephaven's installer lays them out, each
// starting its service through a launcher that daemonizes and leaves the
// JVM (here the stand-in) to write its own pidfile.
var dhServices = []struct {
	name  string
	deps  []string
	group string
}{
	{"configuration_server", nil, "infra"},
	{"authentication_server", []string{"configuration_server"}, "infra"},
	{"log_aggregator_service", []string{"configuration_server"}, "infra"},
	{"db_acl_write_server", []string{"authentication_server"}, "infra"},
	{"iris_controller", []string{"authentication_server", "db_acl_write_server"}, "infra"},
	{"db_query_server", []string{"authentication_server", "log_aggregator_service"}, "query"},
	{"web_api_service", []string{"iris_controller"}, "web"},
}

// launcherScript is a TEST FIXTURE playing Deephaven's launcher: "start"
// returns once the stand-in runs in the background (it writes its own
// pidfile and refuses to start while one exists), "stop" ends the process
// the pidfile names and says so in stops.log.
const launcherScript = `#!/bin/sh
name=$1 port=$3 pidfile=%[1]s/$1.pid
case "$2" in
start) exec %[2]s --launcher --pidfile "$pidfile" --name "$name" --ports "$port" --record=%[3]s ;;
stop)
	echo "$name" >> %[4]s
	pid=$(cat "$pidfile" 2>/dev/null) || exit 0
	kill "$pid" 2>/dev/null || exit 0
	n=0
	while kill -0 "$pid" 2>/dev/null; do n=$((n+1)); [ $n -gt 300 ] && exit 1; sleep 0.1; done ;;
*) echo "usage: $0 NAME start|stop PORT" >&2; exit 2 ;;
esac
`

// dhNode is the node's files: its monit control files, the launcher, the
// pidfiles, and the record of every start and stop the stand-ins made.
type dhNode struct {
	t                          *testing.T
	dir, monitDir, pidDir, bin string
	record, stops              string
	ports                      map[string]int
}

func newDHNode(t *testing.T) *dhNode {
	t.Helper()
	dir := t.TempDir()
	// Start programs may run as other users: they must reach their files.
	for _, p := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d := &dhNode{t: t, dir: dir, monitDir: filepath.Join(dir, "illumon.d", "monit"), pidDir: filepath.Join(dir, "run"),
		bin: filepath.Join(dir, "launch"), record: filepath.Join(dir, "record.log"), stops: filepath.Join(dir, "stops.log"), ports: map[string]int{}}
	for _, p := range []string{d.monitDir, d.pidDir} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := fmt.Sprintf(launcherScript, d.pidDir, filepath.Join(binDir, "dh-standin"), d.record, d.stops)
	if err := os.WriteFile(d.bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, len(dhServices))
	for i, s := range dhServices {
		d.ports[s.name] = ports[i]
		var b strings.Builder
		fmt.Fprintf(&b, "# %s: written as Deephaven's monit_init.sh lays a service out (test fixture)\n", s.name)
		fmt.Fprintf(&b, "check process %s with pidfile %s\n", s.name, d.pidfile(s.name))
		fmt.Fprintf(&b, "    start program = \"%s %s start %d\" with timeout 60 seconds\n", d.bin, s.name, ports[i])
		fmt.Fprintf(&b, "    stop program = \"%s %s stop %d\"\n", d.bin, s.name, ports[i])
		fmt.Fprintf(&b, "    if failed host 127.0.0.1 port %d type tcp for 3 cycles then restart\n", ports[i])
		fmt.Fprintf(&b, "    group %s\n", s.group)
		if len(s.deps) > 0 {
			fmt.Fprintf(&b, "    depends on %s\n", strings.Join(s.deps, ", "))
		}
		if err := os.WriteFile(filepath.Join(d.monitDir, s.name+".conf"), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(d.killAll)
	return d
}

func (d *dhNode) pidfile(name string) string { return filepath.Join(d.pidDir, name+".pid") }

func (d *dhNode) names() []string {
	var out []string
	for _, s := range dhServices {
		out = append(out, s.name)
	}
	return out
}

// pid is what the service's pidfile names now (0: none).
func (d *dhNode) pid(name string) int {
	b, err := os.ReadFile(d.pidfile(name))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// serving maps each service to the pid that answers on its port, once
// every service answers; nil before.
func (d *dhNode) serving() map[string]int {
	out := map[string]int{}
	for name, port := range d.ports {
		pid := servingPID(port)
		if pid == 0 || pid != d.pid(name) {
			return nil
		}
		out[name] = pid
	}
	return out
}

func (d *dhNode) waitServing(limit time.Duration) map[string]int {
	d.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if s := d.serving(); s != nil {
			return s
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("not every service answers on its port with its pidfile's pid within %s", limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *dhNode) events() []event {
	n := &node{t: d.t, record: d.record}
	return n.events()
}

func (d *dhNode) killAll() {
	for _, pid := range (&node{record: d.record}).servicePIDs() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// agentConfig is an agent.yaml with no services of its own: everything
// comes from the monit control files.
func (d *dhNode) agentConfig(extra string) string {
	return fmt.Sprintf(`node: dh-e2e
state_dir: state
socket: agent.sock
log_root: logs
roles_dir: none
alert:
  command: [/bin/sh, -c, 'echo "$MONIT_SERVICE $MONIT_EVENT $MONIT_DESCRIPTION" >> %s']
monit:
  include: ['%s/*.conf']
%s`, filepath.Join(d.dir, "alerts.log"), d.monitDir, extra)
}

// startAgent runs dhagent on the node's monit files.
func (d *dhNode) startAgent(extra string) *node {
	d.t.Helper()
	n := &node{t: d.t, dir: d.dir, config: filepath.Join(d.dir, "agent.yaml"), socket: filepath.Join(d.dir, "agent.sock"),
		record: d.record, alerts: filepath.Join(d.dir, "alerts.log"), nodeName: "dh-e2e"}
	if err := os.WriteFile(n.config, []byte(d.agentConfig(extra)), 0o644); err != nil {
		d.t.Fatal(err)
	}
	n.startAgent()
	d.t.Cleanup(func() {
		if n.agent.ProcessState == nil {
			_ = n.agent.Process.Signal(syscall.SIGTERM)
			_ = n.agent.Wait()
		}
		if d.t.Failed() {
			d.t.Logf("agent log:\n%s", n.log.String())
		}
	})
	return n
}

// stopAgent ends the agent the way systemctl stop does; services stay.
func stopAgent(n *node) {
	n.t.Helper()
	_ = n.agent.Process.Signal(syscall.SIGTERM)
	if err := n.agent.Wait(); err != nil {
		n.t.Fatalf("agent exit: %v", err)
	}
}

// startOrderOK reports whether every service's first start came after
// its dependencies' first starts.
func startOrderOK(evs []event) (bool, string) {
	first := map[string]int64{}
	for _, e := range evs {
		if _, ok := first[e.name]; e.kind == "start" && !ok {
			first[e.name] = e.at
		}
	}
	for _, s := range dhServices {
		for _, dep := range s.deps {
			if first[s.name] < first[dep] {
				return false, fmt.Sprintf("%s started before its dependency %s", s.name, dep)
			}
		}
	}
	return true, ""
}

// TestDeephavenNodeFromMonitFiles runs a node defined only by monit
// control files: on the exec runtime here, on the systemd runtime inside
// a real systemd.
func TestDeephavenNodeFromMonitFiles(t *testing.T) {
	rt := os.Getenv("DHV_E2E_RUNTIME")
	if rt == "" {
		t.Run("exec", func(t *testing.T) { testDeephavenNode(t, "") })
		t.Run("systemd", func(t *testing.T) {
			box := sysdbox.Start(t)
			box.Copy(binDir, binDir)
			box.RunInside("TestDeephavenNodeFromMonitFiles", "DHV_E2E_RUNTIME=systemd", "DHV_E2E_BIN="+binDir)
		})
		return
	}
	testDeephavenNode(t, "defaults: {runtime: "+rt+"}\n")
	// The services ran as units, Type=forking with their pidfiles.
	out, err := exec.Command("systemctl", "show", "dhvisor-configuration_server.service", "-p", "Type", "-p", "PIDFile").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Type=forking") || !strings.Contains(string(out), "configuration_server.pid") {
		t.Fatalf("configuration_server's unit: %v\n%s", err, out)
	}
}

func testDeephavenNode(t *testing.T, extra string) {
	d := newDHNode(t)
	// A pidfile left by a crash before the agent ran: the stand-in, as
	// Deephaven's JVM, would refuse to start while it is there.
	dead := exec.Command("/bin/true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.pidfile("configuration_server"), []byte(strconv.Itoa(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	n := d.startAgent(extra)
	n.eventually(90*time.Second, "every service OK", n.allOK(len(dhServices)))
	pids := d.waitServing(30 * time.Second)
	if ok, why := startOrderOK(d.events()); !ok {
		t.Fatalf("start order: %s; events %v", why, d.events())
	}
	if !strings.Contains(n.log.String(), "stale pidfile") {
		t.Errorf("the stale pidfile's removal is not in the agent's log")
	}
	st := n.mustStatus()
	for name, pid := range pids {
		if int(st[name].Pid) != pid {
			t.Errorf("%s: agent follows pid %d, the pidfile and the port say %d", name, st[name].Pid, pid)
		}
	}

	// A crash is restarted through the start program: a new daemon, its
	// pid from its pidfile.
	victim := "authentication_server"
	old := pids[victim]
	_ = syscall.Kill(old, syscall.SIGKILL)
	n.eventually(60*time.Second, victim+" restarted", func() bool {
		s, err := n.status()
		return err == nil && s[victim].State == "OK" && s[victim].Pid != 0 && int(s[victim].Pid) != old && int(s[victim].Pid) == d.pid(victim)
	})
	if got := count(d.events(), "start", victim); got != 2 {
		t.Errorf("%s started %d times, want 2 (once, then after the kill)", victim, got)
	}
	if e := n.mustStatus()[victim].GetLastExit(); e.GetCode() != -1 && e.GetSignal() != "SIGKILL" {
		t.Errorf("last exit %+v: a process that is not the agent's child has no exit status (systemd knows the signal)", e)
	}

	// The stop program stops a service, chosen by its monit group.
	if out, code := n.dhctl("stop", "-g", "web"); code != 0 {
		t.Fatalf("dhctl stop: %d %s", code, out)
	}
	n.eventually(30*time.Second, "web_api_service stopped", func() bool {
		s, err := n.status()
		return err == nil && s["web_api_service"].State == "Stopped"
	})
	stops, _ := os.ReadFile(d.stops)
	if !strings.Contains(string(stops), "web_api_service") {
		t.Errorf("the stop program did not run (stops.log: %q)", stops)
	}
	if syscall.Kill(pids["web_api_service"], 0) == nil {
		t.Errorf("web_api_service pid %d still runs after its stop", pids["web_api_service"])
	}
}

// monit runs real monit on the node's control files.
type monit struct {
	t   *testing.T
	rc  string
	cmd *exec.Cmd
	log *syncbuf.Buffer
}

func startMonit(t *testing.T, d *dhNode) *monit {
	t.Helper()
	need.Monit(t)
	rc := filepath.Join(d.dir, "monitrc")
	body := fmt.Sprintf(`set daemon 1
set pidfile %[1]s/monit.pid
set idfile %[1]s/monit.id
set statefile %[1]s/monit.state
set httpd unixsocket %[1]s/monit.sock
    allow localhost
include %[2]s/*.conf
`, d.dir, d.monitDir)
	if err := os.WriteFile(rc, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &monit{t: t, rc: rc, log: &syncbuf.Buffer{}}
	m.cmd = exec.Command("monit", "-c", rc, "-I")
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m.cmd.ProcessState == nil {
			_ = m.cmd.Process.Kill()
			_ = m.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("monit log:\n%s", m.log.String())
		}
	})
	return m
}

// quit stops monit as an operator would; its services stay.
func (m *monit) quit() {
	m.t.Helper()
	if out, err := exec.Command("monit", "-c", m.rc, "quit").CombinedOutput(); err != nil {
		m.t.Fatalf("monit quit: %v: %s", err, out)
	}
	done := make(chan error, 1)
	go func() { done <- m.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		m.t.Fatal("monit did not quit")
	}
}

func (m *monit) summary() string {
	out, _ := exec.Command("monit", "-c", m.rc, "-B", "summary").CombinedOutput()
	return string(out)
}

// TestTakeOverFromMonit: a node that monit runs is taken over by dhagent
// on the same control files without one start, and handed back.
func TestTakeOverFromMonit(t *testing.T) {
	d := newDHNode(t)
	m := startMonit(t, d)
	before := d.waitServing(120 * time.Second)
	starts := count(d.events(), "start", "")
	if starts != len(dhServices) {
		t.Fatalf("monit made %d starts, want %d", starts, len(dhServices))
	}
	m.quit()

	n := d.startAgent("")
	n.eventually(60*time.Second, "every service OK under dhagent", n.allOK(len(dhServices)))
	st := n.mustStatus()
	for name, pid := range before {
		if int(st[name].Pid) != pid {
			t.Errorf("%s: dhagent follows pid %d, monit's process was %d", name, st[name].Pid, pid)
		}
	}
	if got := count(d.events(), "start", ""); got != starts {
		t.Fatalf("the take-over made %d starts; want none", got-starts)
	}
	if now := d.serving(); !mapsEqual(now, before) {
		t.Fatalf("services after the take-over %v, before %v", now, before)
	}

	// A crash after the take-over is restarted through the start program.
	victim := "iris_controller"
	_ = syscall.Kill(before[victim], syscall.SIGKILL)
	n.eventually(60*time.Second, victim+" restarted by dhagent", func() bool {
		s, err := n.status()
		return err == nil && s[victim].State == "OK" && int(s[victim].Pid) != before[victim] && int(s[victim].Pid) == d.pid(victim)
	})
	after := d.waitServing(30 * time.Second)
	starts = count(d.events(), "start", "")

	// And back: dhagent stops, monit starts on the same files, nothing
	// is started again.
	stopAgent(n)
	m = startMonit(t, d)
	deadline := time.Now().Add(60 * time.Second)
	for !monitAllOK(m.summary(), d.names()) {
		if time.Now().After(deadline) {
			t.Fatalf("monit does not show every service OK after the hand-back:\n%s", m.summary())
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // three monit cycles: a start would show now
	if got := count(d.events(), "start", ""); got != starts {
		t.Fatalf("monit made %d starts after the hand-back; want none\n%s", got-starts, m.summary())
	}
	if now := d.serving(); !mapsEqual(now, after) {
		t.Fatalf("services after the hand-back %v, before %v", now, after)
	}
	m.quit()
}

// monitAllOK reads monit's summary: every service's row says OK.
func monitAllOK(summary string, names []string) bool {
	for _, name := range names {
		ok := false
		for _, line := range strings.Split(summary, "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == name && slices.Contains(f[1:], "OK") {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestForeignPidfileRefused: a service user who writes the agent's pid
// into its pidfile gets a refusal, and the agent no signal.
func TestForeignPidfileRefused(t *testing.T) {
	need.Root(t, "to run a service as another user")
	d := newDHNode(t)
	for _, s := range dhServices {
		_ = os.Remove(filepath.Join(d.monitDir, s.name+".conf"))
	}
	if err := os.Chmod(d.pidDir, 0o777); err != nil {
		t.Fatal(err)
	}
	// The "service" writes the pid of the process that started it (the
	// agent's start program's parent) and the agent's own pid.
	rogue := filepath.Join(d.dir, "rogue.sh")
	script := "#!/bin/sh\necho $(cat " + filepath.Join(d.dir, "agent.pid") + ") > " + d.pidfile("rogue") + "\n"
	if err := os.WriteFile(rogue, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("check process rogue with pidfile %s\n    start program = \"%s\" as uid nobody and gid nogroup with timeout 5 seconds\n", d.pidfile("rogue"), rogue)
	if err := os.WriteFile(filepath.Join(d.monitDir, "rogue.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The agent's pid is known only once it runs: the start program reads
	// it from a file the test writes as soon as the agent is up.
	n := d.startAgentWithPIDFile(filepath.Join(d.dir, "agent.pid"))
	agentPID := strconv.Itoa(n.agent.Process.Pid)
	n.eventually(60*time.Second, "rogue refused naming the agent's pid", func() bool {
		s, err := n.status()
		return err == nil && s["rogue"] != nil && s["rogue"].State == "Execution failed" && strings.Contains(s["rogue"].Message, "pid "+agentPID)
	})
	if err := n.agent.Process.Signal(syscall.Signal(0)); err != nil || n.agent.ProcessState != nil {
		t.Fatalf("the agent is gone: %v", err)
	}
	t.Logf("refusal: %s", n.mustStatus()["rogue"].Message)
}

// startAgentWithPIDFile starts the agent and writes its pid to file.
func (d *dhNode) startAgentWithPIDFile(file string) *node {
	d.t.Helper()
	// An empty file: the rogue's first start writes an empty pid, which
	// is refused as garbage; every later one names the agent.
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		d.t.Fatal(err)
	}
	n := d.startAgent("")
	if err := os.WriteFile(file, []byte(strconv.Itoa(n.agent.Process.Pid)), 0o644); err != nil {
		d.t.Fatal(err)
	}
	return n
}
