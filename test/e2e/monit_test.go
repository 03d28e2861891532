package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/need"
)

// monitBin is Debian's monit 5.33, the command line dhctl monit stands in for.
const monitBin = "/usr/bin/monit"

// monitServices is a small Deephaven-shaped node: a chain of dependencies,
// declared in dependency order so monit's order (declaration) and the
// agent's (start order) are the same, and two groups.
var monitServices = []struct{ name, dependsOn, group string }{
	{"configuration_server", "", "dhinfra"},
	{"authentication_server", "configuration_server", "dhinfra"},
	{"db_query_server", "authentication_server", "dhquery"},
}

// monitNode is one node's services under real monit, then under dhagent.
type monitNode struct {
	*node
	rc      string // monit's control file
	runDir  string // the services' pidfiles
	monitPd string // monit's own pidfile
}

func (m *monitNode) pidfile(name string) string { return filepath.Join(m.runDir, name+".pid") }

func (m *monitNode) startProgram(name string, port int) []string {
	return []string{filepath.Join(binDir, "dh-standin"), "--name=" + name, "--ports=" + strconv.Itoa(port),
		"--record=" + m.record, "--launcher", "--pidfile=" + m.pidfile(name),
		// Where the catalogue's log check looks for the RUNNING line.
		"--app-log=" + filepath.Join(m.dir, "logs", name)}
}

func newMonitNode(t *testing.T) *monitNode {
	t.Helper()
	need.Root(t, "monit and dhagent run the stand-ins as root, as on a node")
	if _, err := os.Stat(monitBin); err != nil {
		need.Missing(t, "monit 5.33 ("+monitBin+")")
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	n := newNodeNoStart(t, "")
	// The node is named as the host, because monit names its system
	// service after the host and dhctl monit after the node.
	n.nodeName = host
	m := &monitNode{node: n, rc: filepath.Join(n.dir, "monitrc"), runDir: filepath.Join(n.dir, "run"), monitPd: filepath.Join(n.dir, "monit.pid")}
	if err := os.Mkdir(m.runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, len(monitServices)+1)
	var rc strings.Builder
	fmt.Fprintf(&rc, "set daemon 1\nset pidfile %s\nset idfile %s\nset statefile %s\nset logfile %s\n",
		m.monitPd, filepath.Join(n.dir, "monit.id"), filepath.Join(n.dir, "monit.state"), filepath.Join(n.dir, "monit.log"))
	// Deephaven's monitrc: the command line reaches the daemon over http.
	fmt.Fprintf(&rc, "set httpd port %d and use address localhost allow localhost\n", ports[len(monitServices)])
	var agent strings.Builder
	fmt.Fprintf(&agent, "node: %s\nstate_dir: state\nsocket: agent.sock\nlog_root: logs\nservices:\n", host)
	for i, s := range monitServices {
		// The roles' health check for these services is a TCP check of
		// their websocket port, which the stand-in serves.
		argv := m.startProgram(s.name, ports[i])
		stop := []string{"/bin/sh", "-c", "kill $(cat " + m.pidfile(s.name) + ")"}
		// monit never stops them here: the take-over leaves them running.
		fmt.Fprintf(&rc, "check process %s with pidfile %s\n  start program = \"%s\"\n  group %s\n",
			s.name, m.pidfile(s.name), strings.Join(argv, " "), s.group)
		fmt.Fprintf(&agent, "  %s:\n    user: \"\"\n    command: []\n    start: {command: %s}\n    stop: {command: %s}\n    pidfile: %s\n    groups: [%s]\n    ports: {websocket: %d}\n",
			s.name, yamlList(argv), yamlList(stop), m.pidfile(s.name), s.group, ports[i])
		if s.dependsOn != "" {
			fmt.Fprintf(&rc, "  depends on %s\n", s.dependsOn)
			fmt.Fprintf(&agent, "    depends_on: [%s]\n", s.dependsOn)
		}
	}
	if err := os.WriteFile(m.rc, []byte(rc.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.config, []byte(agent.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.quitMonit)
	return m
}

func yamlList(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = strconv.Quote(a)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// run runs a command line and returns its stdout, stderr and exit code.
func run(t *testing.T, env []string, name string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %q: %v", name, args, err)
	}
	return out.String(), errOut.String(), code
}

func (m *monitNode) monit(args ...string) (string, string, int) {
	m.t.Helper()
	return run(m.t, nil, monitBin, append([]string{"-c", m.rc}, args...)...)
}

func (m *monitNode) dhctlMonit(args ...string) (string, string, int) {
	m.t.Helper()
	return run(m.t, nil, filepath.Join(binDir, "dhctl"), append([]string{"--socket", m.socket, "monit"}, args...)...)
}

func (m *monitNode) quitMonit() {
	data, err := os.ReadFile(m.monitPd)
	if err != nil {
		return
	}
	_, _, _ = m.monit("quit")
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	for deadline := time.Now().Add(10 * time.Second); pid > 0 && syscall.Kill(pid, 0) == nil; {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = os.Remove(m.monitPd)
}

func (m *monitNode) pids() map[string]int {
	out := map[string]int{}
	for _, s := range monitServices {
		data, err := os.ReadFile(m.pidfile(s.name))
		if err == nil {
			out[s.name], _ = strconv.Atoi(strings.TrimSpace(string(data)))
		}
	}
	return out
}

// allOKIn reports whether a summary shows every service and the system
// service OK, nothing pending.
func allOKIn(summary string) bool {
	ok := 0
	for _, line := range strings.Split(summary, "\n") {
		if len(line) > 34 && strings.HasPrefix(line[34:], "OK ") {
			ok++
		}
	}
	return ok == len(monitServices)+1
}

// What legitimately differs between monit's output and dhctl monit's on the
// same services: the banner (program, version, uptime), and in status the
// values measured at different moments or not carried by the agent.
var (
	bannerRE = regexp.MustCompile(`(?m)^(Monit 5\.33\.0|dhagent \S+) uptime: .*$`)
	// Values that change between two looks: uptime, cpu, memory, thread
	// count (the Go runtime's threads come and go), collection time.
	volatileRE = regexp.MustCompile(`(?m)^(  (uptime|cpu|cpu total|memory|memory total|threads|data collected) +).*$`)
	// Lines monit prints that dhctl monit leaves out (file descriptors, I/O,
	// security attribute: the agent does not measure them).
	monitOnlyRE = regexp.MustCompile(`(?m)^  (security attribute|filedescriptors|total filedescriptors|read bytes|disk read bytes|disk read operations|write bytes|disk write bytes|disk write operations) .*\n`)
)

func normalise(s string) string {
	s = bannerRE.ReplaceAllString(s, "BANNER uptime: X")
	s = monitOnlyRE.ReplaceAllString(s, "")
	return volatileRE.ReplaceAllString(s, "${1}X")
}

// monitCases are command lines whose output and exit code must be the
// same from monit and from dhctl monit. out: compare stdout too.
var monitCases = []struct {
	args []string
	out  bool
}{
	{[]string{"summary"}, true},
	{[]string{"-B", "summary"}, true},
	{[]string{"summary", "authentication_server"}, true},
	{[]string{"-g", "dhinfra", "summary"}, true},
	{[]string{"status", "db_query_server"}, true},
	{[]string{"-g", "dhinfra", "status"}, true},
	{[]string{"summary", "nosuch"}, false},
	{[]string{"status", "nosuch"}, false},
	{[]string{"-g", "nogroup", "summary"}, false},
	{[]string{"-g", "nogroup", "start"}, false},
	{[]string{"start", "nosuch"}, false},
	{[]string{"start"}, false},
	{[]string{"bogus"}, false},
	{[]string{"-x", "summary"}, false},
	{[]string{"monitor", "all"}, false},
	{[]string{"-t"}, true},
}

type monitAnswer struct {
	out, errOut string
	code        int
}

// TestMonitCommandLineMatchesMonit runs real monit on stand-in services,
// records its answers, hands the same running services to dhagent and asks
// dhctl monit the same questions: the same output (normalised as above) and
// the same exit codes.
func TestMonitCommandLineMatchesMonit(t *testing.T) {
	m := newMonitNode(t)
	if out, errOut, code := m.monit("-t"); code != 0 {
		t.Fatalf("monit -t refuses the control file: %s%s", out, errOut)
	}
	if out, errOut, code := m.monit(); code != 0 {
		t.Fatalf("monit does not start: %s%s", out, errOut)
	}
	m.eventually(90*time.Second, "monit to show every service OK", func() bool {
		out, _, code := m.monit("-B", "summary")
		return code == 0 && allOKIn(out)
	})
	want := map[string]monitAnswer{}
	for _, c := range monitCases {
		out, errOut, code := m.monit(c.args...)
		want[strings.Join(c.args, " ")] = monitAnswer{out, errOut, code}
	}
	before := m.pids()
	m.quitMonit()
	// monit's command line without its daemon.
	noDaemon := map[string]int{}
	for _, args := range [][]string{{"summary"}, {"status", "db_query_server"}, {"reload"}} {
		_, _, noDaemon[strings.Join(args, " ")] = m.monit(args...)
	}

	m.startAgent()
	m.eventually(30*time.Second, "dhagent to adopt every service", func() bool {
		out, _, code := m.dhctlMonit("-B", "summary")
		return code == 0 && allOKIn(out)
	})
	if after := m.pids(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("the take-over changed processes: under monit %v, under dhagent %v", before, after)
	}
	for _, c := range monitCases {
		key := strings.Join(c.args, " ")
		got := monitAnswer{}
		got.out, got.errOut, got.code = m.dhctlMonit(c.args...)
		w := want[key]
		if got.code != w.code {
			t.Errorf("monit %s: dhctl monit exits %d (stderr %q), monit %d (stderr %q)", key, got.code, got.errOut, w.code, w.errOut)
		}
		if c.out && normalise(got.out) != normalise(w.out) {
			t.Errorf("monit %s: dhctl monit prints\n%s\nmonit 5.33 printed\n%s", key, got.out, w.out)
		}
		if w.errOut != "" && got.errOut == "" {
			t.Errorf("monit %s: monit explained on stderr (%q), dhctl monit said nothing", key, w.errOut)
		}
	}
	// The agent did not start anything: every service ran since monit.
	if starts := count(m.events(), "start", ""); starts != len(monitServices) {
		t.Errorf("%d starts recorded, want the %d monit made", starts, len(monitServices))
	}

	m.killAgent()
	m.agent = nil
	for key, wantCode := range noDaemon {
		if _, errOut, code := m.dhctlMonit(strings.Fields(key)...); code != wantCode {
			t.Errorf("monit %s without a daemon: dhctl monit exits %d (%s), monit %d", key, code, errOut, wantCode)
		}
	}
}

// TestDhMonitThroughDhctl drives a dh_monit-shaped script (testdata/dh_monit)
// through dhctl installed as monit (a symlink named monit, as a site puts
// it in monit's place): down --block stops every service, up --block starts
// configuration_server, waits for it, then authentication_server, then the
// rest, reading monit's summary by column.
func TestDhMonitThroughDhctl(t *testing.T) {
	m := newMonitNode(t)
	m.startAgent()
	m.eventually(30*time.Second, "the agent to start every service", m.allOK(len(monitServices)))

	bin := t.TempDir()
	if err := os.Symlink(filepath.Join(binDir, "dhctl"), filepath.Join(bin, "monit")); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs(filepath.Join("testdata", "dh_monit"))
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"), "DHVISOR_SOCKET=" + m.socket, "DH_MONIT_TIMEOUT=60"}

	out, errOut, code := run(t, env, script, "down", "--block")
	if code != 0 {
		t.Fatalf("dh_monit down --block exits %d:\n%s%s", code, out, errOut)
	}
	if pids := m.servicePIDs(); len(pids) != 0 {
		t.Fatalf("dh_monit down --block returned with stand-ins still running: %v", pids)
	}
	if stops := count(m.events(), "stop", ""); stops != len(monitServices) {
		t.Errorf("%d stops recorded, want %d", stops, len(monitServices))
	}

	startsBefore := len(m.events())
	out, errOut, code = run(t, env, script, "up", "--block")
	if code != 0 {
		t.Fatalf("dh_monit up --block exits %d:\n%s%s", code, out, errOut)
	}
	if !m.allOK(len(monitServices))() {
		t.Fatalf("dh_monit up --block returned before every service was OK:\n%s", out)
	}
	var order []string
	for _, e := range m.events()[startsBefore:] {
		if e.kind == "start" {
			order = append(order, e.name)
		}
	}
	if want := "configuration_server authentication_server db_query_server"; strings.Join(order, " ") != want {
		t.Errorf("dh_monit up started %q, want %q", order, want)
	}
	// The script waited where Deephaven's does: each wait's line in turn.
	waits := []string{"configuration_server: OK", "authentication_server: OK", "all services: OK"}
	last := -1
	for _, w := range waits {
		i := strings.Index(out, w)
		if i <= last {
			t.Errorf("dh_monit up --block output lacks %q after the previous wait:\n%s", w, out)
		}
		last = i
	}
}
