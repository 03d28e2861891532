// Package devcluster is a test fixture: a whole dhvisor cluster of real
// processes on one host (coordinators, agents, and stand-ins playing the
// Deephaven services), with its own CA and certificates. The end-to-end
// tests and the coordinator benchmark run on it.
//
// Nodes share the loopback address, so every node gets its services' ports
// moved by a per-node offset (node i: PortOffset + 1000·i) in its
// agent.yaml; ordering and health do not depend on port numbers.
package devcluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/xds"

	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// NodeSpec is one agent node.
type NodeSpec struct {
	Name  string
	Roles []string
	// Extra is appended to the node's agent.yaml (an envoy: section).
	Extra string
}

// Options shape a cluster.
type Options struct {
	Dir          string // everything lives here
	Bin          string // holds dhagent, dhcoord, dhctl and dh-standin
	Coordinators int
	Nodes        []NodeSpec
	// MinHealthyTime is the coordinators' default health hold.
	MinHealthyTime time.Duration
	// Standin adds arguments to every stand-in's command line.
	Standin []string
	// PortOffset moves every node's service ports (on top of the per-node
	// offset), so two clusters can run on one host at once.
	PortOffset int
	// Program replaces the stand-in binary in every service's command (a
	// template such as {{.LauncherDir}}/launch: the launcher a package
	// installed).
	Program string
	// XDS is added to every coordinator's envoy.xds section, e.g.
	// "upstream: {address: ..., plaintext: true}\nupstream_grace: 3s".
	XDS string
}

// Proc is one running daemon.
type Proc struct {
	Name   string
	Dir    string
	Config string
	cmd    *exec.Cmd
	bin    string
	log    *os.File
	exited chan struct{}
}

// Cluster is a running cluster.
type Cluster struct {
	Opt Options
	// Record is the file every stand-in appends its start and stop lines to:
	// "<unix-nanos> start|stop <service> <pid>" with the node in the
	// service name as <node>/<service>.
	Record    string
	CtlConfig string
	Coords    []*Proc
	Agents    []*Proc
	APIAddrs  []string // coordinators' cluster API addresses
	RaftAddrs []string
	XDSAddrs  []string // coordinators' xDS addresses (mutual TLS, the default)
	// WorkerAddrs are the agents' worker registry endpoints (loopback HTTP).
	WorkerAddrs []string
	TLS         string // the tls directory
}

// Start creates the certificates and configurations and starts every
// coordinator and agent. The caller waits for what it needs (WaitReady).
func Start(opt Options) (*Cluster, error) {
	c := &Cluster{Opt: opt, Record: filepath.Join(opt.Dir, "record.log"), CtlConfig: filepath.Join(opt.Dir, "dhctl.yaml"), TLS: filepath.Join(opt.Dir, "tls")}
	if err := c.certificates(); err != nil {
		return nil, err
	}
	ports, err := FreePorts(4*opt.Coordinators + 3*len(opt.Nodes))
	if err != nil {
		return nil, err
	}
	next := func() string { p := ports[0]; ports = ports[1:]; return fmt.Sprintf("127.0.0.1:%d", p) }
	var gossipSeeds []string
	agentGossip := make([]string, len(opt.Nodes))
	agentAPI := make([]string, len(opt.Nodes))
	for i := range opt.Nodes {
		agentGossip[i], agentAPI[i] = next(), next()
		c.WorkerAddrs = append(c.WorkerAddrs, next())
		if i < 2 {
			gossipSeeds = append(gossipSeeds, agentGossip[i])
		}
	}
	coordGossip := make([]string, opt.Coordinators)
	for i := 0; i < opt.Coordinators; i++ {
		c.APIAddrs = append(c.APIAddrs, next())
		c.RaftAddrs = append(c.RaftAddrs, next())
		c.XDSAddrs = append(c.XDSAddrs, next())
		coordGossip[i] = next()
	}
	for i, n := range opt.Nodes {
		p, err := c.writeAgent(i, n, agentGossip[i], agentAPI[i], gossipSeeds)
		if err != nil {
			return nil, err
		}
		c.Agents = append(c.Agents, p)
	}
	for i := 0; i < opt.Coordinators; i++ {
		p, err := c.writeCoordinator(i, coordGossip[i], gossipSeeds)
		if err != nil {
			return nil, err
		}
		c.Coords = append(c.Coords, p)
	}
	ctl := fmt.Sprintf("coordinators: [%s]\ntls: {ca: %s, cert: %s, key: %s}\n", strings.Join(c.APIAddrs, ", "),
		filepath.Join(c.TLS, "ca.pem"), filepath.Join(c.TLS, "operator-tester.pem"), filepath.Join(c.TLS, "operator-tester-key.pem"))
	if err := os.WriteFile(c.CtlConfig, []byte(ctl), 0o644); err != nil {
		return nil, err
	}
	for _, p := range append(append([]*Proc{}, c.Agents...), c.Coords...) {
		if err := p.Start(); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) certificates() error {
	if err := os.MkdirAll(c.TLS, 0o755); err != nil {
		return err
	}
	ca, key, err := tlsutil.CreateCA(c.TLS, "devcluster CA", 24*time.Hour)
	if err != nil {
		return err
	}
	reqs := []tlsutil.CertRequest{{Role: tlsutil.RoleOperator, Name: "tester"}}
	for i := 0; i < c.Opt.Coordinators; i++ {
		reqs = append(reqs, tlsutil.CertRequest{Role: tlsutil.RoleCoordinator, Name: coordName(i)})
	}
	for _, n := range c.Opt.Nodes {
		reqs = append(reqs, tlsutil.CertRequest{Role: tlsutil.RoleAgent, Name: n.Name})
	}
	for _, r := range reqs {
		r.Validity = 24 * time.Hour
		if _, _, err := tlsutil.CreateCert(ca, key, c.TLS, r); err != nil {
			return err
		}
	}
	return nil
}

func coordName(i int) string { return fmt.Sprintf("c%d", i+1) }

func (c *Cluster) tlsYAML(role, name string) string {
	return fmt.Sprintf("{ca: %s, cert: %s, key: %s}", filepath.Join(c.TLS, "ca.pem"),
		filepath.Join(c.TLS, role+"-"+name+".pem"), filepath.Join(c.TLS, role+"-"+name+"-key.pem"))
}

func (c *Cluster) writeAgent(i int, n NodeSpec, gossipAddr, apiAddr string, seeds []string) (*Proc, error) {
	dir := filepath.Join(c.Opt.Dir, n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	program := filepath.Join(c.Opt.Bin, "dh-standin")
	if c.Opt.Program != "" {
		program = c.Opt.Program
	}
	cmd := []string{program, "--name=" + n.Name + "/{{.Name}}", "--ports={{.Ports}}", "--app-log={{.LogDir}}", "--record=" + c.Record}
	cmd = append(cmd, c.Opt.Standin...)
	quoted := make([]string, len(cmd))
	for j, a := range cmd {
		quoted[j] = "'" + a + "'"
	}
	base := fmt.Sprintf(`node: %s
roles: [%s]
state_dir: state
socket: agent.sock
log_root: logs
api: {listen: "%s"}
workers: {listen: "%s"}
tls: %s
gossip: {bind: "%s", seeds: ["%s"]}
defaults:
  user: ""
  command: [%s]
`, n.Name, strings.Join(n.Roles, ", "), apiAddr, c.WorkerAddrs[i], c.tlsYAML("agent", n.Name), gossipAddr, strings.Join(seeds, `", "`), strings.Join(quoted, ", ")) + n.Extra
	file := filepath.Join(dir, "agent.yaml")
	overrides, err := serviceOverrides(file, base, c.Opt.PortOffset+i*1000)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(file, []byte(base+overrides), 0o644); err != nil {
		return nil, err
	}
	return &Proc{Name: n.Name, Dir: dir, Config: file, bin: filepath.Join(c.Opt.Bin, "dhagent")}, nil
}

// serviceOverrides moves every service port of the node by offset, and
// has Envoy reach the routed services without TLS: the stand-ins speak plain
// HTTP (and gRPC over h2c), where the shipped definitions say TLS.
func serviceOverrides(file, base string, offset int) (string, error) {
	node, err := config.ParseAgent(file, []byte(base))
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, name := range node.ServiceNames() {
		s := node.Services[name]
		if s.Container != nil {
			continue // the Envoy container: its ports are in its envoy: section
		}
		var fields []string
		if len(s.Ports) > 0 && offset != 0 {
			var ports []string
			for pn, p := range s.Ports {
				ports = append(ports, fmt.Sprintf("%s: %d", pn, p+offset))
			}
			sort.Strings(ports)
			fields = append(fields, "ports: {"+strings.Join(ports, ", ")+"}")
		}
		if s.Envoy != nil {
			fields = append(fields, "envoy: {tls: false}")
		}
		if len(fields) > 0 {
			fmt.Fprintf(&b, "  %s: {%s}\n", name, strings.Join(fields, ", "))
		}
	}
	if b.Len() == 0 {
		return "", nil
	}
	return "services:\n" + b.String(), nil
}

func (c *Cluster) writeCoordinator(i int, gossipAddr string, seeds []string) (*Proc, error) {
	name := coordName(i)
	dir := filepath.Join(c.Opt.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var boot []string
	for j, a := range c.RaftAddrs {
		boot = append(boot, fmt.Sprintf(`{id: %s, addr: "%s"}`, coordName(j), a))
	}
	mht := c.Opt.MinHealthyTime
	if mht == 0 {
		mht = time.Millisecond // the smallest hold: 0 would mean the default
	}
	cfg := fmt.Sprintf(`node: %s
data_dir: data
api: {listen: "%s"}
raft:
  listen: "%s"
  bootstrap: [%s]
gossip: {bind: "%s", seeds: ["%s"]}
tls: %s
operations: {min_healthy_time: %s, healthy_deadline: 60s, progress_deadline: 120s}
envoy:
  xds:
    listen: "%s"
`, name, c.APIAddrs[i], c.RaftAddrs[i], strings.Join(boot, ", "), gossipAddr, strings.Join(seeds, `", "`), c.tlsYAML("coordinator", name), mht, c.XDSAddrs[i])
	for _, l := range strings.Split(strings.TrimSpace(c.Opt.XDS), "\n") {
		if l != "" {
			cfg += "    " + l + "\n"
		}
	}
	file := filepath.Join(dir, "coordinator.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	return &Proc{Name: name, Dir: dir, Config: file, bin: filepath.Join(c.Opt.Bin, "dhcoord")}, nil
}

// Start starts the daemon, appending its output to <dir>/daemon.log.
func (p *Proc) Start() error {
	log, err := os.OpenFile(filepath.Join(p.Dir, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, "--config", p.Config)
	cmd.Dir = p.Dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	p.cmd, p.log, p.exited = cmd, log, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(p.exited)
	}()
	return nil
}

// PID is the daemon's process id, 0 if it was never started.
func (p *Proc) PID() int {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the daemon has been started and not exited.
func (p *Proc) Running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL, as a crash would, and waits for the exit. The
// daemon's children (an agent's services) keep running.
func (p *Proc) Kill() {
	if p.Running() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// Stop sends SIGTERM and waits up to 15 s, then kills.
func (p *Proc) Stop() {
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.Kill()
	}
}

// Log returns the daemon's output so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "daemon.log"))
	return string(b)
}

// Stop stops every daemon and every stand-in of the cluster.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, p := range c.Coords {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop() }()
	}
	wg.Wait()
	for _, a := range c.Agents {
		if a.Running() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = exec.CommandContext(ctx, filepath.Join(c.Opt.Bin, "dhctl"), "--socket", filepath.Join(a.Dir, "agent.sock"), "down", "--local", "--block", "--timeout", "20s").Run()
			cancel()
		}
		a.Stop()
	}
	c.KillStandins()
}

// KillStandins kills whatever stand-in of this cluster still runs, so
// nothing leaks past a failed test.
func (c *Cluster) KillStandins() {
	for _, pid := range StandinPIDs(c.Record) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// StandinPIDs lists the live stand-ins (zombies left out) that record to
// the file record: the stand-ins of one cluster or test node, found even
// when no supervisor knows them.
func StandinPIDs(record string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte("--record="+record)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// Ctl runs dhctl against the cluster's coordinators.
func (c *Cluster) Ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Opt.Bin, "dhctl"), append([]string{"--config", c.CtlConfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Client connects to coordinator i with the operator certificate.
func (c *Cluster) Client(i int) (pb.CoordinatorClient, func(), error) {
	tc, err := tlsutil.ClientConfig(tlsutil.Files{CA: filepath.Join(c.TLS, "ca.pem"), Cert: filepath.Join(c.TLS, "operator-tester.pem"), Key: filepath.Join(c.TLS, "operator-tester-key.pem")}, tlsutil.RoleCoordinator)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(c.APIAddrs[i], grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, nil, err
	}
	return pb.NewCoordinatorClient(conn), func() { conn.Close() }, nil
}

// Leader returns the index of the leading coordinator as the running ones
// see it, or -1.
func (c *Cluster) Leader(ctx context.Context) int {
	for i, p := range c.Coords {
		if !p.Running() {
			continue
		}
		cl, closeConn, err := c.Client(i)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := cl.Peers(cctx, &pb.PeersRequest{})
		cancel()
		closeConn()
		if err != nil || resp.Leader == "" {
			continue
		}
		for j := range c.Coords {
			if coordName(j) == resp.Leader && c.Coords[j].Running() {
				return j
			}
		}
	}
	return -1
}

// WaitReady waits until there is a leader that knows every node with its
// services, and every service is OK.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		last = c.ready(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not ready: %v", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) ready(ctx context.Context) error {
	l := c.Leader(ctx)
	if l < 0 {
		return errors.New("no leader")
	}
	cl, closeConn, err := c.Client(l)
	if err != nil {
		return err
	}
	defer closeConn()
	peers, err := cl.Peers(ctx, &pb.PeersRequest{})
	if err != nil {
		return err
	}
	for _, p := range peers.Peers {
		if p.Peer.ApiAddr == "" {
			return fmt.Errorf("coordinator %s has not published its API address", p.Peer.Id)
		}
	}
	nodes, err := cl.Nodes(ctx, &pb.NodesRequest{})
	if err != nil {
		return err
	}
	known := map[string]int{}
	for _, n := range nodes.Nodes {
		known[n.Name] = len(n.Services)
	}
	for _, n := range c.Opt.Nodes {
		if known[n.Name] == 0 {
			return fmt.Errorf("node %s not yet in the inventory", n.Name)
		}
	}
	st, err := cl.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return err
	}
	for _, n := range st.Cluster.Nodes {
		for _, s := range n.Services {
			if s.State != "OK" {
				return fmt.Errorf("%s/%s is %s", n.Name, s.Name, s.State)
			}
		}
	}
	return nil
}

// Event is one line of the record file.
type Event struct {
	At      time.Time
	Kind    string // start or stop
	Node    string
	Service string
	PID     int
	Release string // the stand-in's --release: the package it came from
}

// Events reads the record file.
func (c *Cluster) Events() ([]Event, error) {
	f, err := os.Open(c.Record)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ns int64
		var e Event
		var who string
		f := strings.Fields(sc.Text())
		if len(f) == 5 {
			e.Release = f[4]
		}
		if _, err := fmt.Sscanf(strings.Join(f[:min(len(f), 4)], " "), "%d %s %s %d", &ns, &e.Kind, &who, &e.PID); err != nil {
			return nil, fmt.Errorf("record line %q: %v", sc.Text(), err)
		}
		e.At = time.Unix(0, ns)
		e.Node, e.Service, _ = strings.Cut(who, "/")
		out = append(out, e)
	}
	return out, sc.Err()
}

// FreePorts returns n loopback ports free a moment ago, each different.
func FreePorts(n int) ([]int, error) {
	var out []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// GRPCXDSClient is a grpc-go channel to xds:///deephaven whose own xDS
// client talks to the coordinator at xdsAddr over mutual TLS, with the
// operator's certificate: a real xDS client, as Core+ clients use.
func (c *Cluster) GRPCXDSClient(xdsAddr string) (*grpc.ClientConn, error) {
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": %q, "certificate_file": %q, "private_key_file": %q}}], "server_features": ["xds_v3"]}],
		"node": {"id": "devcluster-grpc-client"}
	}`, xdsAddr, filepath.Join(c.TLS, "ca.pem"), filepath.Join(c.TLS, "operator-tester.pem"), filepath.Join(c.TLS, "operator-tester-key.pem"))
	res, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		return nil, err
	}
	return grpc.NewClient("xds:///deephaven", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(res))
}
