package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// testPKI is a cluster CA in a test's directory, issuing certificates.
type testPKI struct {
	t         *testing.T
	dir       string
	cert, key string
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	cert, key, err := tlsutil.CreateCA(dir, name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, dir: dir, cert: cert, key: key}
}

func (p *testPKI) issue(role tlsutil.Role, name string) tlsutil.Files {
	p.t.Helper()
	cert, key, err := tlsutil.CreateCert(p.cert, p.key, p.dir, tlsutil.CertRequest{Role: role, Name: name, Validity: time.Hour})
	if err != nil {
		p.t.Fatal(err)
	}
	return tlsutil.Files{CA: p.cert, Cert: cert, Key: key}
}

// tcpClient dials the agent's TCP API at addr with creds.
func tcpClient(t *testing.T, addr string, creds credentials.TransportCredentials) pb.AgentClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewAgentClient(conn)
}

func clientCreds(t *testing.T, f tlsutil.Files) credentials.TransportCredentials {
	t.Helper()
	cfg, err := tlsutil.ClientConfig(f, tlsutil.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewTLS(cfg)
}

// control runs a blocking Control call to its end and returns its progress.
func control(ctx context.Context, c pb.AgentClient, req *pb.ControlRequest) ([]*pb.Progress, error) {
	stream, err := c.Control(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*pb.Progress
	for {
		p, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, p)
	}
}

// TestAgentTCPAPIMutualTLS: the agent's API on TCP answers coordinators and
// operators holding a certificate from the cluster CA, and nobody else: not
// plain TCP, not a certificate from another CA, not another agent. The
// address is published over gossip. A coordinator's step sent twice with
// one op_token restarts the service once.
func TestAgentTCPAPIMutualTLS(t *testing.T) {
	t.Parallel()
	ports := freePorts(t, 4)
	apiAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	ca := newTestPKI(t, "cluster-ca")
	agentFiles := ca.issue(tlsutil.RoleAgent, "e2e")
	n := newNode(t, fmt.Sprintf(`gossip:
  bind: 127.0.0.1:%d
api:
  listen: %s
tls:
  ca: %s
  cert: %s
  key: %s
services:
  a: {ports: {http: %d}}
  b: {ports: {http: %d}, depends_on: [a]}
`, ports[1], apiAddr, agentFiles.CA, agentFiles.Cert, agentFiles.Key, ports[2], ports[3]))
	n.eventually(10*time.Second, "a and b OK", n.allOK(2))

	coord := tcpClient(t, apiAddr, clientCreds(t, ca.issue(tlsutil.RoleCoordinator, "coord1")))
	resp, err := coord.Status(n.ctx(), &pb.StatusRequest{})
	if err != nil {
		t.Fatalf("coordinator Status over TCP: %v", err)
	}
	var b *pb.ServiceStatus
	for _, s := range resp.Services {
		if s.Name == "b" {
			b = s
		}
	}
	if resp.Node != "e2e" || b == nil || !slices.Equal(b.DependsOn, []string{"a"}) {
		t.Fatalf("status over TCP: node %q, b %v; want b depending on a", resp.Node, b)
	}

	oper := tcpClient(t, apiAddr, clientCreds(t, ca.issue(tlsutil.RoleOperator, "alice")))
	if _, err := oper.Status(n.ctx(), &pb.StatusRequest{}); err != nil {
		t.Errorf("operator Status over TCP: %v", err)
	}

	// Refused callers: each must fail the call, none may reach the API.
	foreign := newTestPKI(t, "other-ca").issue(tlsutil.RoleCoordinator, "coord1")
	pair, err := tls.LoadX509KeyPair(foreign.Cert, foreign.Key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(ca.cert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	refused := map[string]credentials.TransportCredentials{
		"plain TCP": insecure.NewCredentials(),
		// It trusts the agent, but its own certificate is another CA's.
		"certificate from another CA": credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: tlsutil.ServerName(tlsutil.RoleAgent), MinVersion: tls.VersionTLS13}),
		"agent certificate":           clientCreds(t, ca.issue(tlsutil.RoleAgent, "node2")),
	}
	for name, creds := range refused {
		c := tcpClient(t, apiAddr, creds)
		_, err := c.Status(n.ctx(), &pb.StatusRequest{})
		if err == nil {
			t.Errorf("%s: Status succeeded, want refused", name)
			continue
		}
		if code := status.Code(err); code != codes.Unavailable {
			t.Errorf("%s: %v, want Unavailable (handshake refused)", name, err)
		}
		if _, err := control(n.ctx(), c, &pb.ControlRequest{Action: pb.Action_ACTION_STOP, Services: []string{"all"}}); err == nil {
			t.Errorf("%s: Control succeeded, want refused", name)
		}
	}
	if st := n.mustStatus(); st["a"].State != "OK" || st["b"].State != "OK" {
		t.Fatalf("a refused caller changed the services: %v", st)
	}

	// The coordinator's restart step, sent again as a new leader would.
	before := n.mustStatus()["b"]
	startsBefore := count(n.events(), "start", "b")
	req := &pb.ControlRequest{Action: pb.Action_ACTION_RESTART, Services: []string{"b"}, Block: true, TimeoutMs: 10000, OpToken: "op-1/step-1"}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := control(ctx, coord, req); err != nil {
		t.Fatalf("restart step over TCP: %v", err)
	}
	first := n.mustStatus()["b"]
	if first.Pid == before.Pid || first.State != "OK" || first.LastOpToken != "op-1/step-1" {
		t.Fatalf("after the step: pid %d (was %d), state %s, token %q", first.Pid, before.Pid, first.State, first.LastOpToken)
	}
	progress, err := control(ctx, coord, req)
	if err != nil {
		t.Fatalf("repeated step: %v", err)
	}
	var said []string
	for _, p := range progress {
		said = append(said, p.Service+": "+p.Message)
	}
	if !strings.Contains(strings.Join(said, "\n"), "already done by this operation step") {
		t.Errorf("repeated step's progress does not say it was done:\n%s", strings.Join(said, "\n"))
	}
	if again := n.mustStatus()["b"]; again.Pid != first.Pid {
		t.Errorf("repeated step restarted b again: pid %d -> %d", first.Pid, again.Pid)
	}
	// The stand-in records its start a moment after it runs.
	n.eventually(5*time.Second, "b's restart recorded", func() bool { return count(n.events(), "start", "b") > startsBefore })
	time.Sleep(200 * time.Millisecond)
	if got := count(n.events(), "start", "b") - startsBefore; got != 1 {
		t.Errorf("b started %d times by the step sent twice, want 1", got)
	}

	// The node publishes where its API is, for coordinators to find it.
	view, err := coord.Cluster(n.ctx(), &pb.ClusterRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !view.GossipEnabled || len(view.Nodes) != 1 || view.Nodes[0].ApiAddr != apiAddr {
		t.Fatalf("cluster view %v; want node e2e with api_addr %s from gossip", view.Nodes, apiAddr)
	}
}

// TestAgentTCPAPIListenError: an api.listen the agent cannot bind stops it
// with an error naming the field.
func TestAgentTCPAPIListenError(t *testing.T) {
	t.Parallel()
	ca := newTestPKI(t, "cluster-ca")
	f := ca.issue(tlsutil.RoleAgent, "e2e")
	n := newNodeNoStart(t, fmt.Sprintf("api: {listen: '192.0.2.1:%d'}\ntls: {ca: %s, cert: %s, key: %s}\nservices:\n  a: {ports: {http: %d}}\n",
		freePorts(t, 1)[0], f.CA, f.Cert, f.Key, freePorts(t, 1)[0]))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "dhagent"), "--config", n.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "api.listen: listen tcp 192.0.2.1:") {
		t.Fatalf("dhagent with an address it cannot bind: %v\n%s", err, out)
	}
	if got := n.servicePIDs(); len(got) != 0 {
		t.Errorf("services started by an agent that could not serve: %v", got)
	}
}
