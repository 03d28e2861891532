package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentruntime "github.com/dhvisor/dhvisor/agent/runtime"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// svcName is the one service every bench node supervises.
const svcName = "svc"

// agentNode is one real dhagent: its directory, configuration, process and
// API client.
type agentNode struct {
	name    string
	dir     string
	sock    string
	bind    string // gossip host:port
	svcPort int
	netns   string // "" on the host's loopback
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the dhagent process has been waited for
	conn    *grpc.ClientConn
	cli     pb.AgentClient
}

func (n *agentNode) config() string   { return filepath.Join(n.dir, "agent.yaml") }
func (n *agentNode) logFile() string  { return filepath.Join(n.dir, "dhagent.log") }
func (n *agentNode) stateDir() string { return filepath.Join(n.dir, "state") }

// newGossipKey makes a fresh gossip key for one bench cluster (base64, as
// key files hold it). Encryption is on as in production: it is part of
// every packet's cost.
func newGossipKey() (string, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(k), nil
}

// writeConfig writes the node's agent.yaml and its own copy of the key
// file (the key manager may rewrite it; mode 0600, as the agent requires):
// one stand-in with a TCP check and a restart policy that restarts at once
// any run of 100 ms or more (the crash loop only kills older processes).
func (n *agentNode) writeConfig(standin string, seeds []string, key string) error {
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		return err
	}
	keyFile := filepath.Join(n.dir, "gossip.key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		return err
	}
	yaml := fmt.Sprintf(`node: %[1]s
state_dir: %[2]s
socket: %[3]s
log_root: %[4]s/logs
roles_dir: %[4]s/roles.d   # absent: only the shipped roles, never the host's
gossip:
  bind: %[5]s
  seeds: [%[6]s]
  key_file: %[7]s
defaults:
  user: ""
  command: [%[8]q, '--name={{.Name}}', '--ports={{.Ports}}', '--app-log={{.LogDir}}']
services:
  %[9]s:
    ports: {http: %[10]d}
    checks: [{type: tcp, port: http}]
    restart: {min_uptime: 100ms}
`, n.name, n.stateDir(), n.sock, n.dir, n.bind, strings.Join(seeds, ", "), keyFile, standin, svcName, n.svcPort)
	return os.WriteFile(n.config(), []byte(yaml), 0o644)
}

// start runs dhagent on the node's configuration (inside its network
// namespace if it has one) and waits until its API answers.
func (n *agentNode) start(ctx context.Context, dhagent string) error {
	argv := []string{dhagent, "--config", n.config()}
	if n.netns != "" {
		// ip netns exec execs the command in place (no fork), so the pid
		// we hold is dhagent's own and signals reach it directly.
		argv = append([]string{"ip", "netns", "exec", n.netns}, argv...)
	}
	logf, err := os.OpenFile(n.logFile(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a terminal's ctrl-C reaches only the harness,
	// which then stops everything in order. Pdeathsig: if the harness
	// itself is killed, its agents do not gossip on forever.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dhagent for %s: %w", n.name, err)
	}
	n.cmd, n.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(n.exited) }()

	// Connect only once the socket exists: a refused first connection
	// would put gRPC into its reconnect backoff (1 s).
	err = pollUntil(ctx, 10*time.Millisecond, 15*time.Second, func() (bool, error) {
		if !n.running() {
			return false, errors.New("dhagent exited")
		}
		_, err := os.Stat(n.sock)
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("%s: dhagent socket did not appear: %w\n(log %s:)\n%s", n.name, err, n.logFile(), tail(n.logFile(), 15))
	}
	n.conn, err = grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	n.cli = pb.NewAgentClient(n.conn)
	err = pollUntil(ctx, 20*time.Millisecond, 15*time.Second, func() (bool, error) {
		if !n.running() {
			return false, errors.New("dhagent exited")
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := n.cli.Status(cctx, &pb.StatusRequest{})
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("%s: dhagent API did not come up: %w\n(log %s:)\n%s", n.name, err, n.logFile(), tail(n.logFile(), 15))
	}
	return nil
}

func (n *agentNode) running() bool {
	if n.exited == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// cluster is the node's Cluster view, of one node or (node "") all.
func (n *agentNode) cluster(ctx context.Context, node string, timeout time.Duration) (*pb.ClusterResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return n.cli.Cluster(cctx, &pb.ClusterRequest{Node: node})
}

// local is the node's own status of its service, from its supervisor.
func (n *agentNode) local(ctx context.Context) (*pb.ServiceStatus, error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := n.cli.Status(cctx, &pb.StatusRequest{Services: []string{svcName}})
	if err != nil {
		return nil, err
	}
	if len(r.Services) != 1 {
		return nil, fmt.Errorf("%s: status of %s: %d answers", n.name, svcName, len(r.Services))
	}
	return r.Services[0], nil
}

// stop stops the node's service (dhagent leaves services running when it
// exits, for the next agent to adopt), then the agent: SIGTERM, which
// makes it leave the cluster gracefully, SIGKILL after 10 s. Bounded
// throughout; a failure only means the sweep has more to do.
func (n *agentNode) stop() {
	if n.running() && n.cli != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if stream, err := n.cli.Down(ctx, &pb.OrderRequest{Block: true, TimeoutMs: 15000}); err == nil {
			_ = drain(stream.Recv) // an error only leaves more for the sweep
		}
		cancel()
	}
	if n.conn != nil {
		n.conn.Close()
	}
	if n.running() {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(10 * time.Second):
			_ = n.cmd.Process.Kill()
			select {
			case <-n.exited:
			case <-time.After(5 * time.Second):
			}
		}
	}
}

// sweepServices kills (SIGKILL, whole process group) every process marked
// as started by an agent whose state directory is under root: the net under
// stop(), so that not even a failed or interrupted run leaves a stand-in
// holding a port. Agents mark their services with their state directory
// (runtime/exec's OwnerEnv), which makes the match exact: nobody else's
// processes are touched. It returns what it killed.
func sweepServices(root string) []string {
	prefix := []byte(agentruntime.OwnerEnv + "=" + root + string(filepath.Separator))
	var killed []string
	for round := 0; round < 3; round++ {
		found := false
		dirs, _ := filepath.Glob("/proc/[0-9]*")
		for _, d := range dirs {
			pid, err := strconv.Atoi(filepath.Base(d))
			if err != nil || pid == os.Getpid() {
				continue
			}
			env, err := os.ReadFile(filepath.Join(d, "environ"))
			if err != nil {
				continue
			}
			for _, kv := range bytes.Split(env, []byte{0}) {
				if bytes.HasPrefix(kv, prefix) {
					if round == 0 {
						killed = append(killed, fmt.Sprintf("%s (pid %d)", comm(pid), pid))
					}
					_ = unix.Kill(-pid, unix.SIGKILL) // its group: services are group leaders
					_ = unix.Kill(pid, unix.SIGKILL)
					found = true
					break
				}
			}
		}
		if !found {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return killed
}

func comm(pid int) string {
	return strings.TrimSpace(readFile(fmt.Sprintf("/proc/%d/comm", pid)))
}

// ownedBy reports whether pid is a live service process of the agent with
// stateDir, so a kill can never hit a pid that was reused by someone else.
func ownedBy(pid int, stateDir string) bool {
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	want := []byte(agentruntime.OwnerEnv + "=" + stateDir)
	for _, kv := range bytes.Split(env, []byte{0}) {
		if bytes.Equal(kv, want) {
			return true
		}
	}
	return false
}

// drain discards a server stream to its end (bounded by the stream's
// context).
func drain[T any](recv func() (T, error)) error {
	for {
		if _, err := recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
