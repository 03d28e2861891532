package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

// startWorker runs a stand-in query worker answering gRPC as name.
func startWorker(t *testing.T, name string) int {
	t.Helper()
	port := freePorts(t, 1)[0]
	cmd := exec.Command(filepath.Join(binDir, "dh-standin"), "--worker", name, "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return port
}

// register PUTs a dispatcher's worker set to an agent's workers socket, as
// a dispatcher's hook (or curl --unix-socket) does, retrying while no coordinator can take
// it (during an election) or the dispatcher is not running.
func register(t *testing.T, agent *http.Client, dispatcher, body string) string {
	t.Helper()
	var last string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequest("PUT", "http://workers/v1/workers/"+dispatcher, strings.NewReader(body))
		resp, err := agent.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		switch resp.StatusCode {
		case http.StatusOK:
			return string(b)
		case http.StatusServiceUnavailable, http.StatusConflict: // an election; a dispatcher restarting
			continue
		}
		t.Fatalf("register %s: %s", body, last)
	}
	t.Fatalf("register %s: %s", body, last)
	return ""
}

func workerJSON(name string, port int, lease time.Duration) string {
	// An envoy prefix of the dispatcher's own, as Deephaven's send.
	return fmt.Sprintf(`{"leaseTtlMs": %d, "workers": [{"name": %q, "port": %d, "kind": "DeephavenCommunity", "nonce": "n-%s", "envoyPrefix": "/worker/%s"}]}`, lease.Milliseconds(), name, port, name, name)
}

func xdsClient(t *testing.T, c *devcluster.Cluster, xdsAddr string) *grpc.ClientConn {
	t.Helper()
	conn, err := c.GRPCXDSClient(xdsAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// servedBy makes an RPC (with the envoy-prefix header when prefix is set)
// and says which stand-in answered: the worker's name, else the service's.
func servedBy(conn *grpc.ClientConn, method, prefix string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if prefix != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "envoy-prefix", prefix)
	}
	var h metadata.MD
	if err := conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&h)); err != nil {
		return "", err
	}
	if w := h.Get("x-standin-worker"); len(w) > 0 {
		return "worker " + w[0], nil
	}
	return strings.Join(h.Get("x-standin"), ","), nil
}

func waitServedBy(t *testing.T, conn *grpc.ClientConn, method, prefix, want string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var got string
	var err error
	for time.Since(start) < limit {
		if got, err = servedBy(conn, method, prefix); err == nil && got == want {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s (envoy-prefix %q): served by %q (%v), want %q within %s", method, prefix, got, err, want, limit)
	return 0
}

const tableMethod = "/io.deephaven.proto.backplane.grpc.TableService/ExportedTableUpdates"

// A worker registered through an agent's HTTP endpoint is routed by grpc-go's
// xDS client; clients of a follower keep their routes when the leader is
// killed and receive the next change; a restarted coordinator serves the
// current configuration at once; a dispatcher that dies or stops renewing
// takes its workers out of Envoy.
func TestXDSWorkerRoutes(t *testing.T) {
	c := startClusterWith(t, devcluster.Options{Coordinators: 3, Nodes: []devcluster.NodeSpec{
		{Name: "infra", Roles: []string{"infra"}},
		{Name: "query-1", Roles: []string{"query"}},
	}, Standin: []string{"--grpc"}})
	ctx := context.Background()
	leader := c.Leader(ctx)
	follower, other := (leader+1)%3, (leader+2)%3
	queryAgent := c.WorkersClient(1)

	w1a, w1b := startWorker(t, "w1-first"), startWorker(t, "w1-second")
	register(t, queryAgent, "db_query_server", workerJSON("w1", w1a, 30*time.Second))

	conn := xdsClient(t, c, c.XDSAddrs[follower])
	waitServedBy(t, conn, tableMethod, "/worker/w1", "worker w1-first", 15*time.Second)
	// The built-in routes: gRPC services by path, everything else to the web API.
	waitServedBy(t, conn, "/io.deephaven.proto.auth.grpc.AuthApi/getAuthenticatedUser", "", "infra/authentication_server", 5*time.Second)
	waitServedBy(t, conn, "/io.deephaven.proto.controller.grpc.ControllerApi/subscribe", "", "infra/iris_controller", 5*time.Second)
	waitServedBy(t, conn, tableMethod, "", "infra/web_api_service", 5*time.Second)
	out, err := c.Ctl(ctx, "--coordinator", c.APIAddrs[follower], "routes")
	if err != nil || !strings.Contains(out, "header envoy-prefix=/worker/w1") || !strings.Contains(out, fmt.Sprintf("127.0.0.1:%d", w1a)) {
		t.Fatalf("dhctl routes: %v\n%s", err, out)
	}
	out, err = c.Ctl(ctx, "workers")
	if err != nil || !strings.Contains(out, "query-1  db_query_server  w1") {
		t.Fatalf("dhctl workers: %v\n%s", err, out)
	}

	// Leader killed: the follower's clients keep their routes...
	c.Coords[leader].Kill()
	if got, err := servedBy(conn, tableMethod, "/worker/w1"); err != nil || got != "worker w1-first" {
		t.Fatalf("after the leader died: %q, %v", got, err)
	}
	// ...and get the next change: w1 replaced by another process.
	register(t, queryAgent, "db_query_server", workerJSON("w1", w1b, 30*time.Second))
	d := waitServedBy(t, conn, tableMethod, "/worker/w1", "worker w1-second", 10*time.Second)
	t.Logf("replaced worker routed %s after its registration, through a follower, leader dead", d)

	// A coordinator restarted: a client that only knows it gets the
	// current configuration. The change is made while it is down.
	conn2 := xdsClient(t, c, c.XDSAddrs[other])
	waitServedBy(t, conn2, tableMethod, "/worker/w1", "worker w1-second", 10*time.Second)
	before := edsFirstResponse(t, c, c.XDSAddrs[other], "")
	c.Coords[other].Kill()
	if err := c.Coords[leader].Start(); err != nil { // the quorum needs two of three
		t.Fatal(err)
	}
	register(t, queryAgent, "db_query_server", workerJSON("w1", w1a, 30*time.Second))
	if err := c.Coords[other].Start(); err != nil {
		t.Fatal(err)
	}
	// What an Envoy reconnecting with the version it had gets first: the
	// current routes, never the old ones again or an empty table.
	after := edsFirstResponse(t, c, c.XDSAddrs[other], before.version)
	if want := fmt.Sprintf("127.0.0.1:%d", w1a); after.version == before.version || after.endpoints != want {
		t.Fatalf("restarted coordinator answered %+v (before the restart: %+v), want endpoints %s", after, before, want)
	}
	waitServedBy(t, conn2, tableMethod, "/worker/w1", "worker w1-first", 15*time.Second)

	// The dispatcher dies (the agent restarts it with another pid): its
	// workers die with it, so they leave Envoy; the envoy-prefix header no
	// longer matches and the call goes to the default route.
	killService(t, c, "query-1/db_query_server")
	waitServedBy(t, conn, tableMethod, "/worker/w1", "infra/web_api_service", 10*time.Second)

	// A lease not renewed ends: the workers leave Envoy.
	w2 := startWorker(t, "w2")
	register(t, queryAgent, "db_query_server", workerJSON("w2", w2, 2*time.Second))
	waitServedBy(t, conn, tableMethod, "/worker/w2", "worker w2", 10*time.Second)
	waitServedBy(t, conn, tableMethod, "/worker/w2", "infra/web_api_service", 10*time.Second)
	// The leader removes the ended set from the state too.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, err = c.Ctl(ctx, "workers")
		if err == nil && !strings.Contains(out, " w2 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an ended lease is still listed: %v\n%s", err, out)
		}
	}
}

// killService kill -9s a stand-in by its --name (node/service).
func killService(t *testing.T, c *devcluster.Cluster, name string) {
	t.Helper()
	out, err := exec.Command("pgrep", "-f", "--", "--name="+name+" ").Output()
	if err != nil {
		t.Fatalf("pgrep %s: %v", name, err)
	}
	for _, f := range strings.Fields(string(out)) {
		var pid int
		fmt.Sscan(f, &pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

type eds struct{ version, endpoints string }

// edsFirstResponse asks a coordinator over a raw ADS stream for the
// endpoints of worker w1's cluster, as an Envoy that reconnects with the
// version it had, and returns the first answer.
func edsFirstResponse(t *testing.T, c *devcluster.Cluster, addr, have string) eds {
	t.Helper()
	tc, err := tlsutil.ClientConfig(tlsutil.Files{CA: filepath.Join(c.TLS, "ca.pem"), Cert: filepath.Join(c.TLS, "operator-tester.pem"), Key: filepath.Join(c.TLS, "operator-tester-key.pem")}, tlsutil.RoleCoordinator)
	if err != nil {
		t.Fatal(err)
	}
	var last error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		r, err := func() (eds, error) {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
			if err != nil {
				return eds{}, err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
			if err != nil {
				return eds{}, err
			}
			meta, _ := structpb.NewStruct(map[string]any{"dhvisor_xds_flavour": "ads"})
			if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "e2e-envoy", Metadata: meta}, TypeUrl: resource.EndpointType, ResourceNames: []string{"worker_w1:db_query_server:query-1"}, VersionInfo: have}); err != nil {
				return eds{}, err
			}
			resp, err := stream.Recv()
			if err != nil {
				return eds{}, err
			}
			var eps []string
			for _, a := range resp.Resources {
				var cla endpoint.ClusterLoadAssignment
				if err := a.UnmarshalTo(&cla); err != nil {
					return eds{}, err
				}
				for _, l := range cla.Endpoints {
					for _, e := range l.LbEndpoints {
						sa := e.GetEndpoint().GetAddress().GetSocketAddress()
						eps = append(eps, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
					}
				}
			}
			return eds{version: resp.VersionInfo, endpoints: strings.Join(eps, ",")}, nil
		}()
		if err == nil {
			return r
		}
		last = err
	}
	t.Fatalf("EDS from %s: %v", addr, last)
	return eds{}
}
