// Package e2e starts real dhagent processes supervising real stand-in
// services and drives them with the real dhctl.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
	"github.com/dhvisor/dhvisor/test/devcluster"
	"github.com/dhvisor/dhvisor/test/syncbuf"
)

var binDir string

func TestMain(m *testing.M) {
	if hold := os.Getenv(holdEnv); hold != "" {
		os.Exit(holdAddress(hold))
	}
	if dir := os.Getenv("DHV_E2E_BIN"); dir != "" {
		// Inside a systemd container: the binaries were copied in.
		binDir = dir
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "dhvisor-e2e-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	for name, pkg := range map[string]string{"dhagent": "./cmd/dhagent", "dhcoord": "./cmd/dhcoord", "dhctl": "./cmd/dhctl", "dh-standin": "./test/standin"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	goleak.VerifyTestMain(&wrapped{m: m, cleanup: func() { os.RemoveAll(dir) }},
		// grpc-go's xDS client reads "tls" channel credentials from its
		// bootstrap into a certificate file watcher that nothing can close
		// (credential bundles are not closable; grpc/grpc-go#6757).
		goleak.IgnoreTopFunction("google.golang.org/grpc/credentials/tls/certprovider/pemfile.(*watcher).run"))
}

type wrapped struct {
	m       *testing.M
	cleanup func()
}

func (w *wrapped) Run() int { defer w.cleanup(); return w.m.Run() }

// node is one running dhagent with its own directory, socket and services.
type node struct {
	t      *testing.T
	dir    string
	config string
	socket string
	record string
	alerts string
	agent  *exec.Cmd
	log    *syncbuf.Buffer
	// nodeName is the node's name in agent.yaml.
	nodeName string
}

// standinDefaults makes every service a stand-in run as the test's user,
// recording its starts and stops.
func standinDefaults(dir string) string {
	return fmt.Sprintf(`
state_dir: state
socket: agent.sock
log_root: logs
alert:
  command: [/bin/sh, -c, 'echo "$MONIT_SERVICE $MONIT_EVENT $MONIT_DESCRIPTION" >> %s']
defaults:
  user: ""
  command: ['%s', '--name={{.Name}}', '--ports={{.Ports}}', '--app-log={{.LogDir}}', '--record=%s']
`, filepath.Join(dir, "alerts.log"), filepath.Join(binDir, "dh-standin"), filepath.Join(dir, "record.log"))
}

// newNode writes agent.yaml (the stand-in defaults followed by extra) and
// starts an agent on it.
func newNode(t *testing.T, extra string) *node {
	t.Helper()
	n := newNodeNoStart(t, extra)
	n.startAgent()
	return n
}

// newNodeNoStart prepares a node's directory and config without starting
// its agent.
func newNodeNoStart(t *testing.T, extra string) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, dir: dir, config: filepath.Join(dir, "agent.yaml"), socket: filepath.Join(dir, "agent.sock"),
		record: filepath.Join(dir, "record.log"), alerts: filepath.Join(dir, "alerts.log"), nodeName: "e2e"}
	n.writeConfig(extra)
	t.Cleanup(n.teardown)
	return n
}

func (n *node) writeConfig(extra string) {
	n.t.Helper()
	if err := os.WriteFile(n.config, []byte("node: "+n.nodeName+"\n"+standinDefaults(n.dir)+extra), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) startAgent() {
	n.t.Helper()
	n.log = &syncbuf.Buffer{}
	cmd := exec.Command(filepath.Join(binDir, "dhagent"), "--config", n.config)
	cmd.Stdout, cmd.Stderr = n.log, n.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.agent = cmd
	n.waitAnswering()
}

func (n *node) waitAnswering() {
	n.t.Helper()
	var lastErr error
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, lastErr = n.status(); lastErr == nil {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("agent does not answer on %s: %v", n.socket, lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killAgent kills the agent with SIGKILL, as a crash or the OOM killer would.
func (n *node) killAgent() {
	n.t.Helper()
	_ = n.agent.Process.Kill()
	_ = n.agent.Wait()
}

func (n *node) teardown() {
	if n.agent != nil && n.agent.ProcessState == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = exec.CommandContext(ctx, filepath.Join(binDir, "dhctl"), "--socket", n.socket, "down", "--block", "--timeout", "20s").Run()
		cancel()
		_ = n.agent.Process.Signal(syscall.SIGTERM)
		_ = n.agent.Wait()
	}
	// Whatever survived (a test that failed half-way) must not leak into
	// the next test: kill every process started for this node.
	for _, pid := range n.servicePIDs() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	if n.t.Failed() {
		n.t.Logf("agent log:\n%s", n.log.String())
	}
}

// servicePIDs lists live stand-ins started for this node (found by their
// record file argument), so duplicates cannot hide.
func (n *node) servicePIDs() []int { return devcluster.StandinPIDs(n.record) }

func (n *node) client() (pb.AgentClient, func()) {
	conn, err := grpc.NewClient("unix://"+n.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		n.t.Fatal(err)
	}
	return pb.NewAgentClient(conn), func() { conn.Close() }
}

// ctx bounds one API call.
func (n *node) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	n.t.Cleanup(cancel)
	return ctx
}

func (n *node) status() (map[string]*pb.ServiceStatus, error) {
	c, done := n.client()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := c.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]*pb.ServiceStatus{}
	for _, s := range resp.Services {
		out[s.Name] = s
	}
	return out, nil
}

func (n *node) mustStatus() map[string]*pb.ServiceStatus {
	n.t.Helper()
	st, err := n.status()
	if err != nil {
		n.t.Fatal(err)
	}
	return st
}

// dhctl runs the real CLI against this node and returns its output and exit code.
func (n *node) dhctl(args ...string) (string, int) {
	n.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "dhctl"), append([]string{"--socket", n.socket}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		n.t.Fatal(err)
	}
	return string(out), code
}

func (n *node) eventually(limit time.Duration, what string, cond func() bool) {
	n.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			st, _ := n.status()
			var b strings.Builder
			for name, s := range st {
				fmt.Fprintf(&b, "  %s: %s pid %d restarts %d: %s\n", name, s.State, s.Pid, s.Restarts, s.Message)
			}
			n.t.Fatalf("timed out after %s waiting for %s; status:\n%s", limit, what, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *node) allOK(count int) func() bool {
	return func() bool {
		st, err := n.status()
		if err != nil || len(st) != count {
			return false
		}
		for _, s := range st {
			if s.State != "OK" {
				return false
			}
		}
		return true
	}
}

// event is one line of the stand-ins' record file.
type event struct {
	at   int64
	kind string // start or stop
	name string
	pid  int
}

func (n *node) events() []event {
	n.t.Helper()
	f, err := os.Open(n.record)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	var out []event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e event
		if _, err := fmt.Sscanf(sc.Text(), "%d %s %s %d", &e.at, &e.kind, &e.name, &e.pid); err == nil {
			out = append(out, e)
		}
	}
	return out
}

func count(evs []event, kind, name string) int {
	c := 0
	for _, e := range evs {
		if e.kind == kind && (name == "" || e.name == name) {
			c++
		}
	}
	return c
}

// servingPID asks a stand-in on port which process answers.
func servingPID(port int) int {
	c := http.Client{Timeout: 200 * time.Millisecond}
	resp, err := c.Get("http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) + "/")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	s := buf.String()
	i := strings.Index(s, `"pid":`)
	if i < 0 {
		return 0
	}
	j := i + len(`"pid":`)
	k := j
	for k < len(s) && s[k] >= '0' && s[k] <= '9' {
		k++
	}
	pid, _ := strconv.Atoi(s[j:k])
	return pid
}

// freePorts reserves n distinct free TCP ports on loopback.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

var httpClient = http.Client{Timeout: time.Second}
