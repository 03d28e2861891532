package main

import (
	"github.com/dhvisor/dhvisor/agent/procfs"

	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dhvisor/dhvisor/internal/config"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// The bench's restart policy: a process that ran at least min_uptime is
// restarted at once; limit 0 never gives up. The crash loop only kills
// processes older than min_uptime, so every restart is an immediate one.
const (
	benchMinUptime   = time.Second
	benchRestartYAML = "restart: {min_uptime: 1s, limit: 0}"
)

// extraServices are the three services the footprint test adds to the
// twelve of the single-node role, to supervise fifteen.
var extraServices = []target{
	{name: "bench_extra_1", ports: []int{23101}, checkPort: 23101},
	{name: "bench_extra_2", ports: []int{23102}, checkPort: 23102},
	{name: "bench_extra_3", ports: []int{23103}, checkPort: 23103},
}

// agentYAML is a node configuration like scripts/demo.sh writes: the
// shipped single-node role with stand-ins for the JVMs, run as the current
// user, with everything in dir. For the footprint test (fast) every check
// runs each second, resources are sampled each second, and three more
// services are added.
func agentYAML(root, dir string, fast bool, catalogue []target) string {
	var b strings.Builder
	fmt.Fprintf(&b, `node: bench
roles: [single-node]
state_dir: %[1]s/state
socket: %[1]s/agent.sock
log_root: %[1]s/logs
roles_dir: %[1]s/roles.d   # absent: only the shipped roles, never the host's
vars:
  standin: %[2]s/bin/dh-standin
defaults:
  user: ""
  command: ['{{var "standin"}}', '--name={{.Name}}', '--ports={{.Ports}}', '--app-log={{.LogDir}}']
  %[3]s
`, dir, root, benchRestartYAML)
	if !fast {
		return b.String()
	}
	b.WriteString("  limits: {interval: 1s}\nservices:\n")
	for _, t := range catalogue {
		fmt.Fprintf(&b, "  %s:\n    checks: [%s]\n", t.name, fastCheck(t))
	}
	for _, t := range extraServices {
		fmt.Fprintf(&b, "  %s:\n    description: benchmark filler\n    ports: {http: %d}\n    checks: [%s]\n", t.name, t.checkPort, fastCheck(t))
	}
	return b.String()
}

func fastCheck(t target) string {
	if t.checkPort == 0 {
		return "{type: process}" // tailer1 listens on nothing; its exit is the event
	}
	return fmt.Sprintf("{type: tcp, port: %q, interval: 1s, timeout: 500ms}", fmt.Sprint(t.checkPort))
}

// loadTargets resolves an agent configuration as dhagent will and returns
// its services with their ports, in start order.
func loadTargets(file string) ([]target, error) {
	node, err := config.LoadAgent(file)
	if err != nil {
		return nil, fmt.Errorf("bench agent configuration refused:\n%v", err)
	}
	var out []target
	for _, name := range node.Names() {
		s := node.Services[name]
		t := target{name: name, ports: s.PortNumbers(), daemon: s.Daemonizing()}
		for _, c := range s.Checks {
			if c.Port != "" {
				t.checkPort, _ = s.ResolvePort(c.Port)
				break
			}
		}
		// A service without a port check but with ports (none in the
		// shipped roles) is still probed on its first port.
		if t.checkPort == 0 && len(t.ports) > 0 {
			t.checkPort = t.ports[0]
		}
		out = append(out, t)
	}
	return out, nil
}

// agentAPI is dhagent's local API as the bench uses it: the harness on
// the host and its copy inside the systemd container (inside.go) both.
type agentAPI struct {
	conn *grpc.ClientConn
	cli  pb.AgentClient
}

func dialAgent(sock string) (*agentAPI, error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &agentAPI{conn: conn, cli: pb.NewAgentClient(conn)}, nil
}

// waitReady waits until the API at sock answers; alive says why to stop
// waiting early (the agent exited).
func (a *agentAPI) waitReady(ctx context.Context, sock string, alive func() error) error {
	return pollUntil(ctx, 20*time.Millisecond, 15*time.Second, func() (bool, error) {
		if err := alive(); err != nil {
			return false, err
		}
		if _, err := os.Stat(sock); err != nil {
			return false, err
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := a.cli.Status(cctx, &pb.StatusRequest{})
		return err == nil, err
	})
}

// up is `dhctl up --block`: every service started in dependency order
// and OK.
func (a *agentAPI) up(ctx context.Context) error {
	uctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	stream, err := a.cli.Up(uctx, &pb.OrderRequest{Block: true, TimeoutMs: 60000})
	if err != nil {
		return fmt.Errorf("dhagent up: %w", err)
	}
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("dhagent up: %w", err)
		}
		if p.Failed {
			return fmt.Errorf("dhagent up: %s failed: %s %s", p.Service, p.State, p.Message)
		}
	}
}

func (a *agentAPI) close() {
	if a != nil && a.conn != nil {
		a.conn.Close()
	}
}

type agentSup struct {
	*agentAPI
	b    *bench
	dir  string
	sock string
	proc *child
	// foreign: dhagent adopted a process it did not start, so `dhctl down`
	// would stop someone else's service and is skipped.
	foreign bool
}

// startAgent runs bin/dhagent on the configuration in dir/agent.yaml and
// brings every service up.
func startAgent(ctx context.Context, b *bench, dir string, targets []target) (*agentSup, error) {
	if err := portsFree(targets); err != nil {
		return nil, err
	}
	a := &agentSup{b: b, dir: dir, sock: filepath.Join(dir, "agent.sock")}
	var err error
	a.proc, err = b.reaper.start("dhagent", filepath.Join(dir, "dhagent.log"), b.bin("dhagent"), "--config", filepath.Join(dir, "agent.yaml"))
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*agentSup, error) {
		_ = a.stop()
		return nil, fmt.Errorf("%w\n(dhagent log %s:)\n%s", err, filepath.Join(dir, "dhagent.log"), tail(filepath.Join(dir, "dhagent.log"), 15))
	}
	if a.agentAPI, err = dialAgent(a.sock); err != nil {
		return fail(err)
	}
	err = a.waitReady(ctx, a.sock, func() error {
		if !a.proc.running() {
			return fmt.Errorf("dhagent exited: %s", describe(a.proc.status))
		}
		return nil
	})
	if err != nil {
		return fail(fmt.Errorf("dhagent API did not come up: %w", err))
	}
	if err := a.up(ctx); err != nil {
		return fail(err)
	}
	agent, err := procfs.ReadStat(a.proc.pid)
	if err != nil {
		return fail(err)
	}
	// Every service must be a process this dhagent started: the kill-to-
	// restart figures are about its own starts. A foreground service is
	// its child; a daemonized one has left it (its launcher exited), so
	// it must at least have started after the agent did.
	for _, t := range targets {
		st, err := a.status(ctx, t.name)
		if err != nil {
			return fail(err)
		}
		ps, err := procfs.ReadStat(st.pid)
		if err == nil && t.daemon && ps.StartTicks >= agent.StartTicks {
			continue
		}
		if err != nil || ps.PPID != a.proc.pid {
			a.foreign = true
			return fail(fmt.Errorf("dhagent runs %s as pid %d, which it did not start (parent %d): it adopted another agent's process", t.name, st.pid, ps.PPID))
		}
	}
	return a, nil
}

func (a *agentAPI) status(ctx context.Context, svc string) (svcStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := a.cli.Status(ctx, &pb.StatusRequest{Services: []string{svc}})
	if err != nil {
		return svcStatus{}, err
	}
	if len(r.Services) != 1 {
		return svcStatus{}, fmt.Errorf("status of %s: %d answers", svc, len(r.Services))
	}
	s := r.Services[0]
	st := svcStatus{pid: int(s.Pid), restarts: int(s.Restarts), ok: s.State == "OK"}
	if s.LastExit != nil && s.LastExit.AtUnixMs > 0 {
		st.exitAt = time.UnixMilli(s.LastExit.AtUnixMs)
	}
	if s.StartedUnixMs > 0 {
		st.startedAt = time.UnixMilli(s.StartedUnixMs)
	}
	return st, nil
}

// statusPoll: the gRPC Status call costs well under a millisecond.
func (a *agentAPI) statusPoll() time.Duration { return time.Millisecond }

func (a *agentSup) pid() int { return a.proc.pid }

// stop is `dhctl down --block`, then SIGTERM: dhagent leaves its services
// running when it exits (the next agent adopts them), so they are stopped
// first.
func (a *agentSup) stop() error {
	var errs []error
	if a.proc.running() && !a.foreign {
		if _, err := os.Stat(a.sock); err == nil {
			err := a.b.reaper.run("dhctl down", filepath.Join(a.dir, "dhctl.log"), 75*time.Second,
				a.b.bin("dhctl"), "--socket", a.sock, "down", "--block", "--timeout", "60s")
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	a.agentAPI.close()
	a.proc.terminate(10 * time.Second)
	if a.proc.status.Signaled() {
		errs = append(errs, fmt.Errorf("dhagent did not exit on SIGTERM within 10s; killed"))
	}
	return errors.Join(errs...)
}
