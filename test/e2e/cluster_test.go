package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
	"github.com/dhvisor/dhvisor/test/need"
	"github.com/dhvisor/dhvisor/test/syncbuf"
)

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// netLab is a few hosts, each a network namespace with its own address,
// cabled to a bridge in a hub namespace, so that a link can be cut.
type netLab struct {
	t     *testing.T
	id    string
	hub   string
	hosts []string
}

func newNetLab(t *testing.T, n int) *netLab {
	t.Helper()
	need.Root(t, "network namespaces")
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("iproute2 (ip) is required: apt-get install iproute2")
	}
	l := &netLab{t: t, id: fmt.Sprintf("%x", os.Getpid()&0xffff), hub: fmt.Sprintf("dhvhub%x", os.Getpid()&0xffff)}
	t.Cleanup(l.destroy)
	ipCmd(t, "netns", "add", l.hub)
	ipCmd(t, "-n", l.hub, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", l.hub, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		ns := fmt.Sprintf("dhv%s-%d", l.id, i)
		l.hosts = append(l.hosts, ns)
		ipCmd(t, "netns", "add", ns)
		ipCmd(t, "-n", ns, "link", "set", "lo", "up")
		ipCmd(t, "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", l.port(i), "netns", l.hub)
		ipCmd(t, "-n", ns, "addr", "add", l.addr(i)+"/24", "dev", "eth0")
		ipCmd(t, "-n", ns, "link", "set", "eth0", "up")
		ipCmd(t, "-n", l.hub, "link", "set", l.port(i), "master", "br0")
		ipCmd(t, "-n", l.hub, "link", "set", l.port(i), "up")
	}
	return l
}

func (l *netLab) port(i int) string { return fmt.Sprintf("p%d", i) }

// addr is host i's address: inside the lab's own namespaces only.
func (l *netLab) addr(i int) string { return fmt.Sprintf("10.213.7.%d", i) }

func (l *netLab) cut(i int)     { ipCmd(l.t, "-n", l.hub, "link", "set", l.port(i), "down") }
func (l *netLab) restore(i int) { ipCmd(l.t, "-n", l.hub, "link", "set", l.port(i), "up") }

func (l *netLab) destroy() {
	for _, ns := range append(l.hosts, l.hub) {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

// startIn starts an agent for n inside namespace ns.
func (n *node) startIn(ns string) {
	n.t.Helper()
	n.log = &syncbuf.Buffer{}
	cmd := exec.Command("ip", "netns", "exec", ns, filepath.Join(binDir, "dhagent"), "--config", n.config)
	cmd.Stdout, cmd.Stderr = n.log, n.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.agent = cmd
	n.waitAnswering()
}

func (n *node) cluster() map[string]*pb.NodeInfo {
	n.t.Helper()
	c, done := n.client()
	defer done()
	resp, err := c.Cluster(n.ctx(), &pb.ClusterRequest{})
	if err != nil {
		return nil
	}
	out := map[string]*pb.NodeInfo{}
	for _, ni := range resp.Nodes {
		out[ni.Name] = ni
	}
	return out
}

// TestClusterPartitionAndRejoin: three agents, each in its own network
// namespace, gossip their services. One host's link is cut: the others see
// it dead and its services unknown, and a crash on a connected host still
// reaches the other. The link comes back: every node converges on the
// same view, including what happened during the partition.
func TestClusterPartitionAndRejoin(t *testing.T) {
	lab := newNetLab(t, 3)
	var nodes []*node
	for i := 1; i <= 3; i++ {
		extra := fmt.Sprintf(`gossip:
  bind: %s:7946
  seeds: [%s:7946, %s:7946]
services:
  svc: {ports: {http: 23400}, checks: [{type: tcp, port: http}], restart: {min_uptime: 100ms}}
`, lab.addr(i), lab.addr(1), lab.addr(2))
		n := newNodeNoStart(t, strings.Replace(extra, "node: e2e", "", 1))
		n.nodeName = fmt.Sprintf("host%d", i)
		n.writeConfig(extra)
		n.startIn(lab.hosts[i-1])
		nodes = append(nodes, n)
	}
	allSee := func(what string, cond func(view map[string]*pb.NodeInfo) bool, among ...*node) {
		t.Helper()
		for _, n := range among {
			deadline := time.Now().Add(15 * time.Second)
			for !cond(n.cluster()) {
				if time.Now().After(deadline) {
					var b strings.Builder
					for name, ni := range n.cluster() {
						fmt.Fprintf(&b, "  %s %s v%d %v\n", name, ni.State, ni.Version, ni.Services)
					}
					t.Fatalf("timed out waiting for %s, seen from %s:\n%s", what, n.nodeName, b.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	healthy := func(names ...string) func(map[string]*pb.NodeInfo) bool {
		return func(v map[string]*pb.NodeInfo) bool {
			for _, name := range names {
				ni := v[name]
				if ni == nil || ni.State != "alive" || len(ni.Services) != 1 || ni.Services[0].State != "OK" {
					return false
				}
			}
			return true
		}
	}
	allSee("all three hosts alive with svc OK", healthy("host1", "host2", "host3"), nodes...)

	lab.cut(3)
	allSee("host3 dead, its service unknown", func(v map[string]*pb.NodeInfo) bool {
		ni := v["host3"]
		return ni != nil && ni.State == "dead" && ni.Services[0].State == "unknown" && ni.Services[0].LastKnownState == "OK"
	}, nodes[0], nodes[1])
	allSee("host3 sees the others dead", func(v map[string]*pb.NodeInfo) bool {
		return v["host1"] != nil && v["host1"].State == "dead" && v["host2"].State == "dead"
	}, nodes[2])

	// News during the partition: a crash on host1 reaches host2, not host3.
	victim := nodes[0].mustStatus()["svc"].Pid
	_ = syscall.Kill(int(victim), syscall.SIGKILL)
	allSee("host1's restart known to host2", func(v map[string]*pb.NodeInfo) bool {
		s := v["host1"].Services[0]
		return s.Restarts == 1 && s.State == "OK" && s.Pid != victim
	}, nodes[0], nodes[1])

	lab.restore(3)
	allSee("everyone alive again, host1's restart known everywhere", func(v map[string]*pb.NodeInfo) bool {
		return healthy("host1", "host2", "host3")(v) && v["host1"].Services[0].Restarts == 1
	}, nodes...)
	// The same view everywhere: every node holds the same version of every
	// node's list (rejoins republish, so wait for the last one to spread).
	same := func() (string, bool) {
		ref := nodes[0].cluster()
		for _, n := range nodes[1:] {
			v := n.cluster()
			for name, ni := range ref {
				if v[name] == nil || v[name].Version != ni.Version || v[name].State != ni.State {
					return fmt.Sprintf("%s sees %s as %v, host1 as %v", n.nodeName, name, v[name], ni), false
				}
			}
		}
		return "", true
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		diff, ok := same()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("views did not converge: %s", diff)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, code := nodes[2].dhctl("status")
	if code != 0 || strings.Count(out, "  alive for ") != 3 {
		t.Errorf("dhctl status on host3: exit %d\n%s", code, out)
	}
}
