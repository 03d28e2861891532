package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
	"github.com/dhvisor/dhvisor/test/syncbuf"
)

// holdEnv makes the test binary a process that holds an address ("tcp
// HOST:PORT" or "unix PATH"), prints it and waits for its stdin to close:
// a port held by some other process, as Deephaven's configuration server
// holds 8124.
const holdEnv = "DHV_E2E_HOLD"

func holdAddress(spec string) int {
	network, addr, _ := strings.Cut(spec, " ")
	l, err := net.Listen(network, addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hold:", err)
		return 1
	}
	defer l.Close()
	fmt.Println(l.Addr().String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// holder starts a process that holds addr and returns its pid and the
// address it got; it ends with the test.
func holder(t *testing.T, network, addr string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), holdEnv+"="+network+" "+addr)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("holder of %s %s: %v", network, addr, err)
	}
	return cmd.Process.Pid, strings.TrimSpace(line)
}

// runDaemon runs a daemon that should refuse to start, and returns its
// exit code and output.
func runDaemon(t *testing.T, bin, config string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, bin), "--config", config)
	cmd.Dir = filepath.Dir(config)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s still running after 60 s; want it to refuse to start:\n%s", bin, out.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

// A coordinator whose xDS port another process holds (the configuration
// server on 8124, before the default moved) exits non-zero, and its error
// names that process.
func TestCoordinatorRefusesAPortInUse(t *testing.T) {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	if err := os.Mkdir(tlsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca, key, err := tlsutil.CreateCA(tlsDir, "e2e CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, certKey, err := tlsutil.CreateCert(ca, key, tlsDir, tlsutil.CertRequest{Role: tlsutil.RoleCoordinator, Name: "c1", Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pid, xds := holder(t, "tcp", "127.0.0.1:0")
	ports := freePorts(t, 3)
	cfg := fmt.Sprintf(`node: c1
data_dir: data
api: {listen: "127.0.0.1:%d"}
raft:
  listen: "127.0.0.1:%d"
  bootstrap: [{id: c1, addr: "127.0.0.1:%d"}]
gossip: {bind: "127.0.0.1:%d"}
tls: {ca: %s, cert: %s, key: %s}
envoy:
  xds: {listen: "%s"}
`, ports[0], ports[1], ports[1], ports[2], ca, cert, certKey, xds)
	file := filepath.Join(dir, "coordinator.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := runDaemon(t, "dhcoord", file)
	want := "envoy.xds.listen: listen " + xds + ": address in use by pid " + strconv.Itoa(pid) + " ("
	if code == 0 || !strings.Contains(out, want) {
		t.Fatalf("exit %d, want non-zero and the output to name pid %d (%q):\n%s", code, pid, want, out)
	}
}

// An agent whose local socket another process answers on exits non-zero
// naming it, starts no service, and leaves the socket alone.
func TestAgentRefusesASocketInUse(t *testing.T) {
	n := newNodeNoStart(t, "services:\n  web: {}\n")
	n.log = &syncbuf.Buffer{} // the agent's output is runDaemon's
	pid, _ := holder(t, "unix", n.socket)
	code, out := runDaemon(t, "dhagent", n.config)
	want := "listen " + n.socket + ": address in use by pid " + strconv.Itoa(pid) + " ("
	if code == 0 || !strings.Contains(out, want) {
		t.Fatalf("exit %d, want non-zero and the output to name pid %d (%q):\n%s", code, pid, want, out)
	}
	if pids := n.servicePIDs(); len(pids) > 0 {
		t.Errorf("services started: %v", pids)
	}
	if c, err := net.Dial("unix", n.socket); err != nil {
		t.Errorf("the holder's socket is gone: %v", err)
	} else {
		c.Close()
	}
}
