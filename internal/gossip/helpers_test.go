package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/test/syncbuf"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTiming is DefaultTiming with quicker join retries, so tests that
// start nodes out of order do not wait for production backoffs.
func testTiming() Timing {
	t := DefaultTiming()
	t.JoinBackoffMin = 50 * time.Millisecond
	t.JoinBackoffMax = 500 * time.Millisecond
	return t
}

type node struct {
	*Gossip
	name string
	logs *syncbuf.Buffer // one node's log lines; printed if the test fails
}

// startNode starts a node on 127.0.0.1 (port 0 unless set by opts) and
// registers its Shutdown with the test.
func startNode(t testing.TB, name string, opts ...func(*Config)) *node {
	t.Helper()
	logs := &syncbuf.Buffer{}
	cfg := Config{
		NodeName: name,
		BindAddr: "127.0.0.1",
		Timing:   testTiming(),
		Meta:     NodeMeta{Roles: []string{"query"}, APIAddr: "127.0.0.1:9000", DhvisorVersion: "test"},
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(&cfg)
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", name, err)
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatalf("Start(%s): %v", name, err)
	}
	n := &node{Gossip: g, name: name, logs: logs}
	t.Cleanup(func() {
		_ = g.Shutdown()
		if (t.Failed() && testing.Verbose()) || os.Getenv("DHVISOR_GOSSIP_LOGS") != "" {
			t.Logf("---- log of %s ----\n%s", name, logs.String())
		}
	})
	return n
}

func withSeeds(seeds ...string) func(*Config) {
	return func(c *Config) { c.Seeds = seeds }
}

func withPort(p int) func(*Config) {
	return func(c *Config) { c.BindPort = p }
}

func withKeys(keys ...[]byte) func(*Config) {
	return func(c *Config) {
		ring, err := memberlist.NewKeyring(keys[1:], keys[0])
		if err != nil {
			panic(err)
		}
		c.Keyring = ring
	}
}

func withKeyFile(path string) func(*Config) {
	return func(c *Config) { c.KeyFile = path }
}

// startCluster starts n nodes named prefix-0.. that all seed from node 0.
func startCluster(t *testing.T, prefix string, n int, opts ...func(*Config)) []*node {
	t.Helper()
	return startClusterWithin(t, 5*time.Second, prefix, n, opts...)
}

// startClusterWithin is startCluster waiting up to wait for the cluster to
// form (memberlist's own timing can take a push-pull interval).
func startClusterWithin(t testing.TB, wait time.Duration, prefix string, n int, opts ...func(*Config)) []*node {
	t.Helper()
	first := startNode(t, prefix+"-0", opts...)
	nodes := []*node{first}
	for i := 1; i < n; i++ {
		o := append([]func(*Config){withSeeds(first.Addr())}, opts...)
		nodes = append(nodes, startNode(t, fmt.Sprintf("%s-%d", prefix, i), o...))
	}
	waitFor(t, wait, func() (bool, string) {
		for _, nd := range nodes {
			if c := countState(nd.View(), NodeAlive); c != n {
				return false, fmt.Sprintf("%s sees %d alive of %d", nd.name, c, n)
			}
		}
		return true, ""
	})
	return nodes
}

func countState(v []NodeView, state string) int {
	c := 0
	for _, nv := range v {
		if nv.State == state {
			c++
		}
	}
	return c
}

func viewOf(g *Gossip, name string) (NodeView, bool) {
	for _, nv := range g.View() {
		if nv.Name == name {
			return nv, true
		}
	}
	return NodeView{}, false
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", timeout, why)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freePort returns a port free for both TCP and UDP on 127.0.0.1 (memberlist
// binds both), for a node that must be known before it starts.
func freePort(t *testing.T) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func newKey(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, KeySize)
	for i := range b {
		b[i] = byte(rand.IntN(256))
	}
	return b
}

func writeKeys(t *testing.T, dir string, mode os.FileMode, lines ...string) string {
	t.Helper()
	p := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// lossyTransport drops a fraction of outgoing UDP packets and fails the
// same fraction of TCP dials, for measuring failure detection under packet
// loss. (A lost SYN is retransmitted after 1 s, later than any probe
// deadline, so for memberlist's TCP fallback ping it is as good as a failed
// dial; established streams are left alone, the kernel retransmits those.)
type lossyTransport struct {
	memberlist.NodeAwareTransport
	loss float64
}

func (t *lossyTransport) DialAddressTimeout(a memberlist.Address, d time.Duration) (net.Conn, error) {
	if rand.Float64() < t.loss {
		return nil, errors.New("simulated SYN loss")
	}
	return t.NodeAwareTransport.DialAddressTimeout(a, d)
}

func (t *lossyTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if rand.Float64() < t.loss {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *lossyTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if rand.Float64() < t.loss {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteToAddress(b, a)
}

func withLoss(loss float64) func(*Config) {
	return func(c *Config) {
		c.wrapTransport = func(nt memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
			return &lossyTransport{NodeAwareTransport: nt, loss: loss}
		}
	}
}

func withTiming(tm Timing) func(*Config) {
	return func(c *Config) { c.Timing = tm }
}

func svc(name, state string, pid int32) ServiceHealth {
	return ServiceHealth{Name: name, State: state, PID: pid, Since: time.UnixMilli(1_700_000_000_123), Message: "msg " + name}
}
