package workers

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	coordpb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// coordinator records what it is sent; the real one is tested in test/e2e.
type coordinator struct {
	coordpb.UnimplementedCoordinatorServer
	id  string
	mu  sync.Mutex
	got []*agentpb.RegisterWorkersRequest
}

func (c *coordinator) RegisterWorkers(_ context.Context, req *agentpb.RegisterWorkersRequest) (*agentpb.RegisterWorkersResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, proto.Clone(req).(*agentpb.RegisterWorkersRequest))
	return &agentpb.RegisterWorkersResponse{Workers: int32(len(req.Workers)), Changed: true, Coordinator: c.id}, nil
}

func (c *coordinator) last() *agentpb.RegisterWorkersRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) == 0 {
		return nil
	}
	return c.got[len(c.got)-1]
}

func startCoordinator(t *testing.T, id string) (*coordinator, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &coordinator{id: id}
	s := grpc.NewServer()
	coordpb.RegisterCoordinatorServer(s, c)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return c, l.Addr().String()
}

func TestHTTPRegistration(t *testing.T) {
	c1, addr := startCoordinator(t, "c1")
	// c0 sorts first and is down: the registry must move on to c1.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	reg := New(insecure.NewCredentials(),
		func(name string) (int, bool) {
			switch name {
			case "db_query_server":
				return 4242, true
			case "db_merge_server":
				return 0, true // a service of the node, not running
			}
			return 0, false
		},
		func() map[string]string { return map[string]string{"c0": deadAddr, "c1": addr} })
	defer reg.Close()
	srv := httptest.NewServer(reg.Handler())
	defer srv.Close()

	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	tests := []struct {
		name, method, path, body string
		code                     int
		want                     string // substring of the response body
	}{
		{"register", "PUT", "/v1/workers/db_query_server", `{"leaseTtlMs": 5000, "workers": [{"name": "w1", "port": 24001, "nonce": "n1", "kind": "DeephavenCommunity", "envoy_prefix": "/worker/w1"}]}`, 200, `"coordinator":"c1"`},
		{"bad port names the field", "PUT", "/v1/workers/db_query_server", `{"workers": [{"name": "w1", "port": 0}]}`, 400, "workers[0].port: 0 is not a port"},
		{"unknown field", "PUT", "/v1/workers/db_query_server", `{"workerz": []}`, 400, "workerz"},
		{"not JSON", "PUT", "/v1/workers/db_query_server", `workers=1`, 400, "body:"},
		{"unknown dispatcher", "PUT", "/v1/workers/nope", `{"workers": [{"name": "w1", "port": 1}]}`, 400, `is not a service of this node`},
		{"dispatcher not running", "PUT", "/v1/workers/db_merge_server", `{"workers": [{"name": "w1", "port": 1}]}`, 409, "not running"},
		{"path and body disagree", "PUT", "/v1/workers/db_query_server", `{"dispatcher": "db_merge_server"}`, 400, "in the path"},
		{"node is not settable", "PUT", "/v1/workers/db_query_server", `{"node": "other"}`, 400, "node:"},
		{"a host name is resolved here", "PUT", "/v1/workers/db_query_server", `{"workers": [{"name": "w1", "port": 24001, "host": "localhost"}]}`, 200, `"coordinator":"c1"`},
		{"a host that does not resolve", "PUT", "/v1/workers/db_query_server", `{"workers": [{"name": "w1", "port": 24001, "host": "no-such-host.invalid"}]}`, 400, "does not resolve here"},
		{"delete", "DELETE", "/v1/workers/db_query_server", "", 200, `"coordinator":"c1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := do(tt.method, tt.path, tt.body)
			if code != tt.code || !strings.Contains(body, tt.want) {
				t.Fatalf("%s %s: %d %s, want %d with %q", tt.method, tt.path, code, body, tt.code, tt.want)
			}
		})
	}
	// The registration reached the coordinator whole, with the dispatcher's
	// pid and the defaults filled in; the delete sent an empty set.
	first := c1.got[0]
	if first.Dispatcher != "db_query_server" || first.DispatcherPid != 4242 || first.LeaseTtlMs != 5000 || len(first.Workers) != 1 || first.Workers[0].Nonce != "n1" || first.Workers[0].Protocol != "http2" {
		t.Errorf("forwarded: %v", first)
	}
	if l := c1.last(); l.Dispatcher != "db_query_server" || len(l.Workers) != 0 {
		t.Errorf("delete forwarded as %v", l)
	}
	if len(c1.got) != 3 {
		t.Errorf("coordinator got %d calls, want 3 (refused requests must not reach it)", len(c1.got))
	}
	if h := c1.got[1].Workers[0].Host; h != "127.0.0.1" && h != "::1" {
		t.Errorf("localhost passed on as %q, want its address", h)
	}
	// The replica that answered is tried first from now on.
	if got := reg.order(map[string]string{"c0": deadAddr, "c1": addr}); got[0] != "c1" {
		t.Errorf("order after c1 answered: %v", got)
	}
	code, body := do("GET", "/v1/workers", "")
	var last map[string]json.RawMessage
	if code != 200 || json.Unmarshal([]byte(body), &last) != nil || len(last) != 0 {
		t.Errorf("GET after delete: %d %s", code, body)
	}
}

func TestNoCoordinator(t *testing.T) {
	reg := New(insecure.NewCredentials(), func(string) (int, bool) { return 1, true }, func() map[string]string { return nil })
	defer reg.Close()
	_, err := reg.Register(context.Background(), &agentpb.RegisterWorkersRequest{Dispatcher: "db_query_server"})
	if err == nil || !strings.Contains(err.Error(), "no coordinator known") {
		t.Fatalf("err = %v", err)
	}
}
