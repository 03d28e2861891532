package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/graph"
)

// singleNode is the shipped single-node role with the shipped ports, so
// these tests cannot run beside `make demo`.
const singleNode = "roles: [single-node]\n"

func requireShippedPortsFree(t *testing.T) {
	t.Helper()
	for _, p := range []int{22054, 22050, 8123} {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Fatalf("port %d is in use (is `make demo` running? `make demo-stop`): %v", p, err)
		}
		l.Close()
	}
}

// shippedGraph is the single-node dependency graph from the shipped roles.
func shippedGraph(t *testing.T) *graph.Graph {
	t.Helper()
	dir := t.TempDir()
	f := dir + "/agent.yaml"
	if err := os.WriteFile(f, []byte(singleNode+"defaults: {command: [x]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := config.LoadAgent(f)
	if err != nil {
		t.Fatal(err)
	}
	return n.Graph()
}

// TestUpDownOrder: `dhctl up --block` starts configuration_server, waits for
// it to be OK, then authentication_server, then the rest; `dhctl down`
// stops in reverse. configuration_server takes 400 ms to listen, so starting
// anything before it is OK would show in the recorded times.
func TestUpDownOrder(t *testing.T) {
	requireShippedPortsFree(t)
	const delay = 400 * time.Millisecond
	n := newNode(t, singleNode+`services:
  configuration_server:
    env: {DH_STANDIN_FAULT: "start-delay:400ms"}
`)
	n.eventually(15*time.Second, "all 12 services OK after agent start", n.allOK(12))

	out, code := n.dhctl("down", "--block")
	if code != 0 {
		t.Fatalf("dhctl down --block: exit %d\n%s", code, out)
	}
	if pids := n.servicePIDs(); len(pids) != 0 {
		t.Fatalf("processes left after down: %v", pids)
	}
	g := shippedGraph(t)
	stops := map[string]int64{}
	for _, e := range n.events() {
		if e.kind == "stop" {
			stops[e.name] = e.at
		}
	}
	if len(stops) != 12 {
		t.Fatalf("recorded %d stops, want 12: %v", len(stops), stops)
	}
	for svc, at := range stops {
		for _, dep := range g.DependsOn(svc) {
			if stops[dep] < at {
				t.Errorf("%s stopped before its dependant %s", dep, svc)
			}
		}
	}

	before := len(n.events())
	out, code = n.dhctl("up", "--block")
	if code != 0 {
		t.Fatalf("dhctl up --block: exit %d\n%s", code, out)
	}
	st := n.mustStatus()
	for name, s := range st {
		if s.State != "OK" {
			t.Errorf("%s is %s after up --block", name, s.State)
		}
	}
	starts := map[string]int64{}
	for _, e := range n.events()[before:] {
		if e.kind == "start" {
			starts[e.name] = e.at
		}
	}
	if len(starts) != 12 {
		t.Fatalf("recorded %d starts, want 12", len(starts))
	}
	for svc, at := range starts {
		for _, dep := range g.DependsOn(svc) {
			if starts[dep] >= at {
				t.Errorf("%s started before its dependency %s", svc, dep)
			}
		}
	}
	if gap := time.Duration(starts["authentication_server"] - starts["configuration_server"]); gap < delay {
		t.Errorf("authentication_server started %s after configuration_server, before it could be OK (it listens after %s)", gap, delay)
	}
	for svc, at := range starts {
		if svc != "configuration_server" && svc != "authentication_server" && at < starts["authentication_server"] {
			t.Errorf("%s started before authentication_server", svc)
		}
	}
	if !strings.Contains(out, "configuration_server") || !strings.Contains(out, "running and healthy") {
		t.Errorf("up --block output does not show progress:\n%s", out)
	}
}

// TestAgentKill9Readopt: kill -9 of dhagent, then a new dhagent: no service
// restarted, no duplicate process, same pids in status.
func TestAgentKill9Readopt(t *testing.T) {
	requireShippedPortsFree(t)
	n := newNode(t, singleNode)
	n.eventually(15*time.Second, "all services OK", n.allOK(12))
	// One restart before the agent dies: its counter must survive too.
	victim := n.mustStatus()["db_tdcp"].Pid
	_ = syscall.Kill(int(victim), syscall.SIGKILL)
	n.eventually(10*time.Second, "db_tdcp restarted", func() bool {
		s := n.mustStatus()["db_tdcp"]
		return s.State == "OK" && s.Pid != victim
	})
	before := n.mustStatus()
	startsBefore := count(n.events(), "start", "")

	n.killAgent()
	time.Sleep(300 * time.Millisecond)
	if got := n.servicePIDs(); len(got) != 12 {
		t.Fatalf("%d services running with the agent dead, want 12: %v; status before: %v", len(got), got, before)
	}
	n.startAgent()
	n.eventually(10*time.Second, "all services OK again", n.allOK(12))
	time.Sleep(500 * time.Millisecond) // a late duplicate start would show now
	after := n.mustStatus()
	for name, b := range before {
		a := after[name]
		if a.Pid != b.Pid {
			t.Errorf("%s: pid %d before, %d after the agent restart", name, b.Pid, a.Pid)
		}
		if a.Restarts != b.Restarts {
			t.Errorf("%s: restarts %d before, %d after", name, b.Restarts, a.Restarts)
		}
	}
	if after["db_tdcp"].Restarts != 1 {
		t.Errorf("db_tdcp restart counter = %d, want 1 (kept across the agent restart)", after["db_tdcp"].Restarts)
	}
	if got := count(n.events(), "start", ""); got != startsBefore {
		t.Errorf("%d services started by the new agent, want none", got-startsBefore)
	}
	if got := len(n.servicePIDs()); got != 12 {
		t.Errorf("%d service processes, want 12 (no duplicates)", got)
	}
	// The adopted processes are still supervised: a crash is restarted.
	victim = after["configuration_server"].Pid
	_ = syscall.Kill(int(victim), syscall.SIGKILL)
	n.eventually(10*time.Second, "adopted configuration_server restarted", func() bool {
		s := n.mustStatus()["configuration_server"]
		return s.State == "OK" && s.Pid != victim && s.Restarts == 1
	})
}

// TestCrashRestart: kill -9 of a service that has run longer than
// min_uptime: serving again at once with the restart counted.
func TestCrashRestart(t *testing.T) {
	t.Parallel()
	p := freePorts(t, 1)[0]
	n := newNode(t, fmt.Sprintf(`services:
  svc:
    ports: {http: %d}
    checks: [{type: http, port: http, path: /health, interval: 1s}]
    restart: {min_uptime: 200ms}
`, p))
	n.eventually(10*time.Second, "svc OK", n.allOK(1))
	time.Sleep(300 * time.Millisecond)
	old := n.mustStatus()["svc"].Pid
	killed := time.Now()
	_ = syscall.Kill(int(old), syscall.SIGKILL)
	n.eventually(5*time.Second, "new process serving", func() bool {
		pid := servingPID(p)
		return pid != 0 && pid != int(old)
	})
	t.Logf("kill -9 to serving again: %s", time.Since(killed))
	n.eventually(5*time.Second, "restart shown in status", func() bool {
		s := n.mustStatus()["svc"]
		return s.Restarts == 1 && s.Pid != old && s.State == "OK" && s.LastExit != nil && s.LastExit.Signal == "SIGKILL"
	})
	out, code := n.dhctl("status")
	if code != 0 || !strings.Contains(out, "svc") || !strings.Contains(out, "OK") {
		t.Errorf("dhctl status exit %d:\n%s", code, out)
	}
}

// TestExitAtStartFails: a service that exits at start is retried with
// backoff, lands in Failed after its limit, runs the alert hook once, and
// stops being restarted.
func TestExitAtStartFails(t *testing.T) {
	t.Parallel()
	n := newNode(t, `services:
  broken:
    env: {DH_STANDIN_FAULT: "exit-at-start:3"}
    restart: {min_uptime: 1s, backoff_initial: 20ms, backoff_max: 100ms, limit: 3, window: 1m}
`)
	n.eventually(10*time.Second, "broken Failed", func() bool { return n.mustStatus()["broken"].State == "Failed" })
	time.Sleep(time.Second)
	s := n.mustStatus()["broken"]
	if s.State != "Failed" || s.Monitored || s.Pid != 0 {
		t.Fatalf("status %+v; want Failed, not monitored, no process", s)
	}
	if !strings.Contains(s.Message, "exited with code 3") || !strings.Contains(s.Message, "3 restarts within 1m0s") {
		t.Errorf("message %q does not explain the failure", s.Message)
	}
	if got := count(n.events(), "start", "broken"); got != 4 {
		t.Errorf("started %d times, want 4 (first start + 3 restarts)", got)
	}
	alerts, _ := os.ReadFile(n.alerts)
	if lines := strings.Split(strings.TrimSpace(string(alerts)), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "broken Failed") {
		t.Errorf("alert hook output %q; want exactly one 'broken Failed ...' line", alerts)
	}
	out, code := n.dhctl("status")
	if code != 1 || !strings.Contains(out, "Failed") {
		t.Errorf("dhctl status exit %d (want 1):\n%s", code, out)
	}
	// An operator's start is a fresh start: it is tried again.
	if _, code := n.dhctl("start", "broken"); code != 0 {
		t.Errorf("dhctl start broken: exit %d", code)
	}
	n.eventually(5*time.Second, "retried after operator start", func() bool { return count(n.events(), "start", "broken") > 4 })
}

// TestPermanentExitCode: an exit code marked permanent is not restarted.
func TestPermanentExitCode(t *testing.T) {
	t.Parallel()
	n := newNode(t, `services:
  oneshot:
    env: {DH_STANDIN_FAULT: "exit-at-start:78"}
    restart: {permanent_exit_codes: [78], backoff_initial: 10ms}
`)
	n.eventually(5*time.Second, "oneshot Failed", func() bool { return n.mustStatus()["oneshot"].State == "Failed" })
	time.Sleep(300 * time.Millisecond)
	if got := count(n.events(), "start", "oneshot"); got != 1 {
		t.Errorf("started %d times, want 1", got)
	}
}

// TestHealthAndResourceChecks: a failing HTTP check and a memory limit
// each restart the service; a hung service is killed after stop_timeout.
func TestHealthAndResourceChecks(t *testing.T) {
	t.Parallel()
	ports := freePorts(t, 3)
	n := newNode(t, fmt.Sprintf(`services:
  unhealthy:
    ports: {http: %d}
    checks: [{type: http, port: http, path: /health, interval: 100ms, timeout: 100ms, failures: 2}]
    start_grace: 100ms
    restart: {min_uptime: 100ms}
  hog:
    ports: {http: %d}
    env: {DH_STANDIN_FAULT: "grow:100MiB/s,300MiB"}
    limits: {memory: 64MiB, memory_cycles: 2, interval: 100ms}
    restart: {min_uptime: 100ms}
  hung:
    ports: {http: %d}
    checks: [{type: http, port: http, path: /health, interval: 100ms, timeout: 100ms, failures: 2}]
    start_grace: 100ms
    stop_timeout: 300ms
    restart: {min_uptime: 100ms}
`, ports[0], ports[1], ports[2]))
	n.eventually(10*time.Second, "unhealthy and hung OK", func() bool {
		st := n.mustStatus()
		return st["unhealthy"].State == "OK" && st["hung"].State == "OK"
	})
	first := n.mustStatus()
	post := func(port int, fault string) {
		resp, err := (&httpClient).Post(fmt.Sprintf("http://127.0.0.1:%d/fault/%s", port, fault), "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	post(ports[0], "unhealthy")
	post(ports[2], "hang")
	n.eventually(10*time.Second, "unhealthy restarted after failed checks", func() bool {
		s := n.mustStatus()["unhealthy"]
		return s.Restarts >= 1 && s.Pid != first["unhealthy"].Pid
	})
	n.eventually(10*time.Second, "hung service killed and restarted", func() bool {
		s := n.mustStatus()["hung"]
		return s.Restarts >= 1 && s.Pid != first["hung"].Pid && s.LastExit != nil && s.LastExit.Signal == "SIGKILL"
	})
	n.eventually(10*time.Second, "hog restarted for memory", func() bool {
		s := n.mustStatus()["hog"]
		return s.Restarts >= 1 && s.Pid != first["hog"].Pid
	})
	if log := n.log.String(); !strings.Contains(log, `state="Resource limit matched"`) || !strings.Contains(log, "above limit 64.0MiB for 2 checks") {
		t.Errorf("agent log does not show the restart for the memory limit:\n%s", log)
	}
}

// TestBadInputChangesNothing: an unknown service name, an invalid config on
// reload (dhctl reload and SIGHUP) and dhctl validate on bad files each get
// a clear error and change nothing.
func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	ports := freePorts(t, 2)
	good := fmt.Sprintf("services:\n  a: {ports: {http: %d}}\n  b: {ports: {http: %d}, depends_on: [a]}\n", ports[0], ports[1])
	n := newNode(t, good)
	n.eventually(10*time.Second, "a and b OK", n.allOK(2))
	before := n.mustStatus()
	same := func(step string) {
		t.Helper()
		time.Sleep(200 * time.Millisecond)
		after := n.mustStatus()
		if len(after) != 2 || after["a"].Pid != before["a"].Pid || after["b"].Pid != before["b"].Pid || after["a"].State != "OK" {
			t.Fatalf("%s changed the services: before %v after %v", step, before, after)
		}
	}

	out, code := n.dhctl("restart", "a", "nosuch")
	if code == 0 || !strings.Contains(out, `unknown service "nosuch"`) || !strings.Contains(out, "this node runs: a, b") {
		t.Errorf("restart with unknown name: exit %d\n%s", code, out)
	}
	same("restart with an unknown name")
	// A node without the envoy role: said plainly, for status and logs alike.
	for _, cmd := range []string{"status", "logs"} {
		if out, code := n.dhctl("envoy", cmd); code != 2 || !strings.Contains(out, "this node runs no Envoy container") {
			t.Errorf("envoy %s on a node without Envoy: exit %d\n%s", cmd, code, out)
		}
	}

	out, code = n.dhctl("stop")
	if code != 2 {
		t.Errorf("stop without names: exit %d, want 2\n%s", code, out)
	}

	bad := map[string]string{
		"malformed":     good + "services: [\n",
		"unknown field": good + "  c: {comand: [x]}\n",
		"cycle":         strings.Replace(good, "a: {ports", "a: {depends_on: [b], ports", 1),
		"port clash":    strings.Replace(good, fmt.Sprint(ports[1]), fmt.Sprint(ports[0]), 1),
	}
	for name, body := range bad {
		n.writeConfig(body)
		out, code := n.dhctl("reload")
		if code != 2 || !strings.Contains(out, "agent.yaml:") || !strings.Contains(out, "refused") {
			t.Errorf("reload of %s config: exit %d, want 2 with file:line\n%s", name, code, out)
		}
		out, code = n.dhctl("validate", n.config)
		if code != 2 || !strings.Contains(out, "agent.yaml:") {
			t.Errorf("validate of %s config: exit %d\n%s", name, code, out)
		}
		_ = n.agent.Process.Signal(syscall.SIGHUP)
		same("reload of a " + name + " config")
	}
	if !strings.Contains(n.log.String(), "reload refused") {
		t.Error("agent log does not record the refused SIGHUP reload")
	}

	// A valid change applies live: a new service is added and started.
	extra := freePorts(t, 1)[0]
	n.writeConfig(good + fmt.Sprintf("  c: {ports: {http: %d}, depends_on: [b]}\n", extra))
	if out, code := n.dhctl("reload"); code != 0 || !strings.Contains(out, "added:") {
		t.Fatalf("valid reload: exit %d\n%s", code, out)
	}
	n.eventually(10*time.Second, "c added and OK", n.allOK(3))
	after := n.mustStatus()
	if after["a"].Pid != before["a"].Pid {
		t.Error("valid reload restarted a")
	}
}

// TestStatusOutput: the table, --json and the exit status.
func TestStatusOutput(t *testing.T) {
	t.Parallel()
	p := freePorts(t, 1)[0]
	n := newNode(t, fmt.Sprintf("services:\n  web: {ports: {http: %d}, checks: [{type: http, port: http, path: /health}]}\n", p))
	n.eventually(10*time.Second, "web OK", n.allOK(1))
	out, code := n.dhctl("status")
	for _, want := range []string{"SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "CPU", "MEMORY", "LAST CHECK", "web", "OK", "http:http ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Errorf("exit %d with everything OK", code)
	}
	out, code = n.dhctl("status", "--json")
	var parsed struct {
		Services []struct {
			Name, State string
			Pid         int
			MemoryBytes string
		}
	}
	if err := json.Unmarshal([]byte(out), &parsed); err != nil || code != 0 || len(parsed.Services) != 1 || parsed.Services[0].State != "OK" || parsed.Services[0].MemoryBytes == "" {
		t.Errorf("status --json exit %d:\n%s", code, out)
	}
	if _, code := n.dhctl("stop", "web", "--block"); code != 0 {
		t.Fatal("stop failed")
	}
	out, code = n.dhctl("status")
	if code != 1 || !strings.Contains(out, "Stopped") {
		t.Errorf("status with a stopped service: exit %d, want 1\n%s", code, out)
	}
	if pids := n.servicePIDs(); len(pids) != 0 {
		t.Errorf("stopped service still running: %v", pids)
	}
	out, _ = n.dhctl("unmonitor", "all")
	if !strings.Contains(out, "Not monitored") {
		t.Errorf("unmonitor output:\n%s", out)
	}
}

// TestDhctlPassThroughAndSocket: Deephaven's own dhctl subcommands reach
// Deephaven's tool unchanged, and the agent's socket is not world-writable.
func TestDhctlPassThroughAndSocket(t *testing.T) {
	t.Parallel()
	n := newNode(t, fmt.Sprintf("services:\n  a: {ports: {http: %d}}\n", freePorts(t, 1)[0]))
	fake := filepath.Join(n.dir, "deephaven-dhctl")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"deephaven dhctl: $*\"\nexit 4\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "dhctl"), "intraday", "truncate", "--namespace", "X")
	cmd.Env = append(os.Environ(), "DHVISOR_DEEPHAVEN_DHCTL="+fake)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 4 || string(out) != "deephaven dhctl: intraday truncate --namespace X\n" {
		t.Errorf("pass-through: %v %q; want Deephaven's output and exit status 4", err, out)
	}
	cmd = exec.Command(filepath.Join(binDir, "dhctl"), "metadata", "list")
	cmd.Env = append(os.Environ(), "DHVISOR_DEEPHAVEN_DHCTL="+filepath.Join(n.dir, "absent"))
	out, _ = cmd.CombinedOutput()
	if !strings.Contains(string(out), `unknown command "metadata"`) {
		t.Errorf("without Deephaven's dhctl: %q", out)
	}
	st, err := os.Stat(n.socket)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o660 {
		t.Errorf("socket mode %o, want 660 (root and the admin group only)", perm)
	}
}
