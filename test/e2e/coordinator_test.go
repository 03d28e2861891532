package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

func startCluster(t *testing.T, coords int, nodes []devcluster.NodeSpec, hold time.Duration) *devcluster.Cluster {
	t.Helper()
	return startClusterWith(t, devcluster.Options{Coordinators: coords, Nodes: nodes, MinHealthyTime: hold})
}

// startClusterWith starts a dev cluster in a temporary directory, its
// services' ports clear of the shipped ones (the benchmarks' clusters use
// those), and stops it when the test ends.
func startClusterWith(t *testing.T, opt devcluster.Options) *devcluster.Cluster {
	t.Helper()
	opt.Dir, opt.Bin, opt.PortOffset = t.TempDir(), binDir, 5000
	c, err := devcluster.Start(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range append(append([]*devcluster.Proc{}, c.Coords...), c.Agents...) {
				t.Logf("---- %s log (tail):\n%s", p.Name, tail(p.Log(), 60))
			}
		}
		c.Stop()
	})
	if err := c.WaitReady(context.Background(), 60*time.Second); err != nil {
		t.Fatal(err)
	}
	return c
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var classicNodes = []devcluster.NodeSpec{
	{Name: "infra", Roles: []string{"infra"}},
	{Name: "query-1", Roles: []string{"query"}},
	{Name: "query-2", Roles: []string{"query"}},
	{Name: "merge-1", Roles: []string{"batch"}},
}

// `dhctl restart all` on four nodes, sent to a follower, with the leader
// killed mid-operation: the operation completes, every service is restarted
// exactly once, in an order the dependency graph allows, and in Deephaven's
// documented order.
func TestClusterRestartAllSurvivesLeaderKill(t *testing.T) {
	c := startCluster(t, 3, classicNodes, 400*time.Millisecond)
	ctx := context.Background()
	leader := c.Leader(ctx)
	follower := (leader + 1) % 3

	// A follower answers reads.
	out, err := c.Ctl(ctx, "--coordinator", c.APIAddrs[follower], "status")
	if err != nil || !strings.Contains(out, "answered by c") || !strings.Contains(out, "22/22 services OK") {
		t.Fatalf("status from a follower: %v\n%s", err, out)
	}
	if out, err := c.Ctl(ctx, "--coordinator", c.APIAddrs[follower], "ops", "list"); err != nil || !strings.Contains(out, "ID") {
		t.Fatalf("ops list from a follower: %v\n%s", err, out)
	}
	graph := instanceDeps(t, c, follower)

	if err := os.Truncate(c.Record, 0); err != nil {
		t.Fatal(err)
	}
	// The write goes to the follower, which forwards it to the leader.
	cl, closeConn, err := c.Client(follower)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	op, err := cl.StartOp(ctx, &pb.OpRequest{Action: "restart", Label: "restart all"})
	if err != nil {
		t.Fatalf("StartOp through a follower: %v", err)
	}
	if op.CreatedBy != "operator:tester" && !strings.HasPrefix(op.CreatedBy, "operator:tester ") {
		t.Errorf("created by %q: the forwarded write lost the operator's identity", op.CreatedBy)
	}

	// Kill the leader once the query nodes' stage is under way.
	waitOp(t, cl, op.Id, 60*time.Second, func(o *pb.Operation) bool { return o.Stages[2].Steps[0].State != "pending" })
	c.Coords[leader].Kill()
	t.Logf("killed leader %s during stage 3", c.Coords[leader].Name)

	survivor := follower
	cl2, close2, err := c.Client(survivor)
	if err != nil {
		t.Fatal(err)
	}
	defer close2()
	done := waitOp(t, cl2, op.Id, 120*time.Second, func(o *pb.Operation) bool { return o.State != "running" })
	if done.State != "done" {
		t.Fatalf("operation %s: %s", done.State, done.Message)
	}
	t.Logf("steps resumed by the new leader: %d", resumedSteps(done))

	events, err := c.Events()
	if err != nil {
		t.Fatal(err)
	}
	checkRestartedOnceInOrder(t, done, events, graph)

	// The killed replica comes back and catches up.
	if err := c.Coords[leader].Start(); err != nil {
		t.Fatal(err)
	}
	back, closeBack, err := c.Client(leader)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBack()
	waitOp(t, back, op.Id, 30*time.Second, func(o *pb.Operation) bool { return o.State == "done" })
}

// resumedSteps counts the steps a new leader sent again.
func resumedSteps(op *pb.Operation) int {
	n := 0
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			if s.Attempts > 1 {
				n++
			}
		}
	}
	return n
}

// waitOp polls until cond holds for the operation, tolerating a replica
// that is briefly unavailable.
func waitOp(t *testing.T, cl pb.CoordinatorClient, id string, timeout time.Duration, cond func(*pb.Operation) bool) *pb.Operation {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last *pb.Operation
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		op, err := cl.GetOp(ctx, &pb.GetOpRequest{Id: id})
		cancel()
		if err == nil {
			last = op
			if cond(op) {
				return op
			}
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("operation %s: condition not met in %v; last %v (err %v)", id, timeout, last, lastErr)
	return nil
}

// instanceDeps is the cluster-wide dependency graph over node/service, as
// the coordinator recorded the nodes: a dependency the node runs is the
// local instance, else every instance in the cluster.
func instanceDeps(t *testing.T, c *devcluster.Cluster, i int) map[string][]string {
	t.Helper()
	cl, closeConn, err := c.Client(i)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	resp, err := cl.Nodes(context.Background(), &pb.NodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	where := map[string][]string{}
	for _, n := range resp.Nodes {
		for _, s := range n.Services {
			where[s.Name] = append(where[s.Name], n.Name)
		}
	}
	deps := map[string][]string{}
	for _, n := range resp.Nodes {
		local := map[string]bool{}
		for _, s := range n.Services {
			local[s.Name] = true
		}
		for _, s := range n.Services {
			id := n.Name + "/" + s.Name
			deps[id] = []string{}
			for _, d := range s.DependsOn {
				if local[d] {
					deps[id] = append(deps[id], n.Name+"/"+d)
					continue
				}
				for _, other := range where[d] {
					deps[id] = append(deps[id], other+"/"+d)
				}
			}
		}
	}
	if len(deps) != 22 {
		t.Fatalf("the coordinator knows %d service instances, want 22", len(deps))
	}
	return deps
}

func checkRestartedOnceInOrder(t *testing.T, op *pb.Operation, events []devcluster.Event, deps map[string][]string) {
	t.Helper()
	stops, starts := map[string][]time.Time{}, map[string][]time.Time{}
	for _, e := range events {
		id := e.Node + "/" + e.Service
		switch e.Kind {
		case "stop":
			stops[id] = append(stops[id], e.At)
		case "start":
			starts[id] = append(starts[id], e.At)
		}
	}
	for id := range deps {
		if len(starts[id]) != 1 || len(stops[id]) != 1 {
			t.Errorf("%s: %d stops and %d starts, want exactly one restart", id, len(stops[id]), len(starts[id]))
		}
	}
	if t.Failed() {
		return
	}
	for id, ds := range deps {
		for _, d := range ds {
			node, dnode := strings.Split(id, "/")[0], strings.Split(d, "/")[0]
			// Within one node's step the agent stops the services together
			// and starts them in order; across nodes, a service is taken
			// down only once its dependency is back.
			if !starts[d][0].Before(starts[id][0]) {
				t.Errorf("%s started before its dependency %s", id, d)
			}
			if node != dnode && !starts[d][0].Before(stops[id][0]) {
				t.Errorf("%s was stopped before its dependency %s on another node was back", id, d)
			}
		}
	}
	// Deephaven's documented order, as it falls out of the graph.
	before := func(a, b string) {
		t.Helper()
		if !starts[a][0].Before(stops[b][0]) {
			t.Errorf("%s was not restarted before %s", a, b)
		}
	}
	before("infra/configuration_server", "infra/authentication_server")
	for _, q := range []string{"query-1", "query-2", "merge-1"} {
		before("infra/authentication_server", q+"/db_tdcp")
		for _, s := range []string{"db_tdcp", "log_aggregator_service", "tailer1"} {
			before(q+"/"+s, "infra/iris_controller")
			before(q+"/"+s, "infra/db_acl_write_server")
		}
	}
}

// Every TCP port (coordinator API, raft, agent API, xDS) refuses plain TCP,
// a certificate from another CA, and a role that has no business there. On
// the coordinator API, agents may only register their own node's workers.
func TestEveryPortRequiresMutualTLS(t *testing.T) {
	c := startCluster(t, 1, []devcluster.NodeSpec{{Name: "solo", Roles: []string{"infra"}}}, 0)
	other := t.TempDir()
	oca, okey, err := tlsutil.CreateCA(other, "another CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tlsutil.CreateCert(oca, okey, other, tlsutil.CertRequest{Role: tlsutil.RoleCoordinator, Name: "c1"}); err != nil {
		t.Fatal(err)
	}
	own := func(role, name string) tlsutil.Files {
		return tlsutil.Files{CA: filepath.Join(c.TLS, "ca.pem"), Cert: filepath.Join(c.TLS, role+"-"+name+".pem"), Key: filepath.Join(c.TLS, role+"-"+name+"-key.pem")}
	}
	foreign := tlsutil.Files{CA: filepath.Join(c.TLS, "ca.pem"), Cert: filepath.Join(other, "coordinator-c1.pem"), Key: filepath.Join(other, "coordinator-c1-key.pem")}
	agentAPI := agentAddr(t, c)
	ports := []struct {
		name   string
		addr   string
		server tlsutil.Role
		good   tlsutil.Files
		wrong  tlsutil.Files // a valid certificate of a role not allowed here
	}{
		{"coordinator API", c.APIAddrs[0], tlsutil.RoleCoordinator, own("operator", "tester"), tlsutil.Files{}},
		{"raft", c.RaftAddrs[0], tlsutil.RoleCoordinator, own("coordinator", "c1"), own("operator", "tester")},
		{"agent API", agentAPI, tlsutil.RoleAgent, own("coordinator", "c1"), own("agent", "solo")},
		{"xDS", c.XDSAddrs[0], tlsutil.RoleCoordinator, own("agent", "solo"), tlsutil.Files{}},
	}
	for _, p := range ports {
		t.Run(p.name, func(t *testing.T) {
			if err := dialTLS(t, p.addr, p.server, p.good); err != nil {
				t.Fatalf("the right certificate is refused: %v", err)
			}
			if err := dialPlain(p.addr); err == nil {
				t.Error("plain TCP was not refused")
			}
			if err := dialTLS(t, p.addr, p.server, foreign); err == nil {
				t.Error("a certificate from another CA was not refused")
			}
			if p.wrong != (tlsutil.Files{}) {
				if err := dialTLS(t, p.addr, p.server, p.wrong); err == nil {
					t.Error("a certificate of a role not allowed here was not refused")
				}
			}
		})
	}
	t.Run("agent on the coordinator API", func(t *testing.T) {
		tc, err := tlsutil.ClientConfig(own("agent", "solo"), tlsutil.RoleCoordinator)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(c.APIAddrs[0], grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cl := pb.NewCoordinatorClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cl.Status(ctx, &pb.StatusRequest{}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("an agent read the cluster status: %v", err)
		}
		if _, err := cl.StartOp(ctx, &pb.OpRequest{Action: "restart"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("an agent started an operation: %v", err)
		}
		if _, err := cl.RegisterWorkers(ctx, &agentpb.RegisterWorkersRequest{Node: "elsewhere", Dispatcher: "db_query_server"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("an agent registered workers for another node: %v", err)
		}
	})
}

func agentAddr(t *testing.T, c *devcluster.Cluster) string {
	t.Helper()
	b, err := os.ReadFile(c.Agents[0].Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, `api: {listen: "`); ok {
			return strings.TrimSuffix(rest, `"}`)
		}
	}
	t.Fatal("no api.listen in the agent's config")
	return ""
}

// dialTLS completes a handshake and waits briefly: a refused client sees the
// server's alert (TLS 1.3 verifies the client after the client's side of
// the handshake), an accepted one sees the server waiting for a request.
func dialTLS(t *testing.T, addr string, server tlsutil.Role, f tlsutil.Files) error {
	t.Helper()
	cfg, err := tlsutil.ClientConfig(f, server)
	if err != nil {
		// A certificate from another CA does not load against our CA file;
		// present it without the local check, as an attacker would.
		cert, lerr := tls.LoadX509KeyPair(f.Cert, f.Key)
		if lerr != nil {
			t.Fatal(lerr)
		}
		cfg = &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	}
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	if err == nil {
		return nil // the server spoke first (gRPC's settings frame): accepted
	}
	return err
}

func dialPlain(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	for {
		n, err := conn.Read(buf)
		if n > 0 && !strings.Contains(string(buf[:n]), "\x15\x03") {
			return nil // the server answered plain HTTP/2: not refused
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil // kept open: not refused
			}
			return err
		}
	}
}
