package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	coordpb "github.com/dhvisor/dhvisor/proto/coordpb"
	"github.com/dhvisor/dhvisor/test/need"
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(clientEnv); sock != "" {
		os.Exit(client(sock))
	}
	goleak.VerifyTestMain(m)
}

// clientEnv makes the test binary a client of the socket it names: it waits
// for a byte on stdin, sends the request in os.Args, prints the status
// code and body. The tests run it as other users.
const clientEnv = "DHV_WORKERS_TEST_CLIENT"

func client(sock string) int {
	var b [1]byte
	_, _ = os.Stdin.Read(b[:])
	method, path, body := os.Args[1], os.Args[2], os.Args[3]
	code, out, err := unixDo(sock, method, path, body)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Printf("%d %s", code, out)
	return 0
}

// unixDo sends one request to the HTTP endpoint on the unix socket sock.
func unixDo(sock, method, path, body string) (int, string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://workers"+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// serveUnix serves reg on a unix socket in a directory anyone may enter.
func serveUnix(t *testing.T, reg *Registry) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(dir); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		_ = os.Chmod(d, 0o755) // t.TempDir's parent is 0700
	}
	sock := filepath.Join(dir, "workers.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = reg.Serve(ctx, l, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

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

func (c *coordinator) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got)
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
	reg := New(insecure.NewCredentials(), testLocal(nil), func() map[string]string { return map[string]string{"c0": deadAddr, "c1": addr} })
	defer reg.Close()
	sock := serveUnix(t, reg)

	// The test runs as root, who may register any dispatcher's workers.
	do := func(method, path, body string) (int, string) {
		t.Helper()
		code, out, err := unixDo(sock, method, path, body)
		if err != nil {
			t.Fatal(err)
		}
		return code, out
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
		{"a host that is not the node's", "PUT", "/v1/workers/db_query_server", `{"workers": [{"name": "w1", "port": 24001, "host": "10.99.0.1"}]}`, 400, "workers[0].host: 10.99.0.1 is not an address of this node (q1)"},
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
	if first.Node != "q1" || first.Workers[0].EnvoyPrefix != "/worker/w1" || first.Dispatcher != "db_query_server" || first.DispatcherPid != 4242 || first.LeaseTtlMs != 5000 || len(first.Workers) != 1 || first.Workers[0].Nonce != "n1" || first.Workers[0].Protocol != "http2" {
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
	reg := New(insecure.NewCredentials(), testLocal(nil), func() map[string]string { return nil })
	defer reg.Close()
	_, err := reg.Register(context.Background(), &agentpb.RegisterWorkersRequest{Dispatcher: "db_query_server"})
	if err == nil || !strings.Contains(err.Error(), "no coordinator known") {
		t.Fatalf("err = %v", err)
	}
}

// testLocal is a node q1 with a running db_query_server (pid 4242) and a
// stopped db_merge_server; owners maps the pids of processes of services.
func testLocal(owners map[int]string) Local {
	return Local{
		Node: "q1",
		Dispatcher: func(name string) (int, bool) {
			switch name {
			case "db_query_server":
				return 4242, true
			case "db_merge_server":
				return 0, true // a service of the node, not running
			}
			return 0, false
		},
		OwnerOf: func(pid int) (string, bool) {
			s, ok := owners[pid]
			return s, ok
		},
		Addrs: func() ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("10.0.0.9")}, nil
		},
	}
}

// Only a dispatcher's own processes (or root) register its workers: a
// process of another user, or of another service, is refused, and told
// who may.
func TestRegistrationNeedsTheDispatcher(t *testing.T) {
	need.Root(t, "to run a client as another user")
	c1, addr := startCoordinator(t, "c1")
	var mu sync.Mutex
	owners := map[int]string{}
	local := testLocal(nil)
	local.OwnerOf = func(pid int) (string, bool) {
		mu.Lock()
		defer mu.Unlock()
		s, ok := owners[pid]
		return s, ok
	}
	reg := New(insecure.NewCredentials(), local, func() map[string]string { return map[string]string{"c1": addr} })
	defer reg.Close()
	sock := serveUnix(t, reg)
	bin := clientBinary(t)

	const body = `{"workers": [{"name": "w1", "port": 24001}]}`
	tests := []struct {
		name       string
		owner      string // the service the client's process belongs to; "" none
		method     string
		dispatcher string
		want       string // the response's start
	}{
		{"a foreign process", "", "PUT", "db_query_server", `403 {"error":"caller pid `},
		{"a foreign process deleting", "", "DELETE", "db_query_server", `403 {"error":"caller pid `},
		{"another service's process", "db_merge_server", "PUT", "db_query_server", `403 {"error":"caller pid `},
		{"the dispatcher's process", "db_query_server", "PUT", "db_query_server", `200 {"workers":1`},
		{"the dispatcher's process deleting", "db_query_server", "DELETE", "db_query_server", `200 {`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := c1.count()
			cmd := exec.Command(bin, tt.method, "/v1/workers/"+tt.dispatcher, body)
			cmd.Env = []string{clientEnv + "=" + sock}
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			in, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			cmd.Stdout = &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if tt.owner != "" {
				mu.Lock()
				owners[cmd.Process.Pid] = tt.owner
				mu.Unlock()
			}
			_, _ = in.Write([]byte{1})
			in.Close()
			if err := cmd.Wait(); err != nil {
				t.Fatalf("client: %v: %s", err, out.String())
			}
			got := out.String()
			if !strings.HasPrefix(got, tt.want) {
				t.Fatalf("got %s, want %s...", got, tt.want)
			}
			if strings.HasPrefix(got, "403") {
				wants := []string{"uid 65534", "may register", "or root"}
				if tt.owner != "" {
					wants = append(wants, "is a process of "+tt.owner)
				}
				for _, w := range wants {
					if !strings.Contains(got, w) {
						t.Errorf("refusal %s does not say %q", got, w)
					}
				}
				if c1.count() != before {
					t.Errorf("a refused registration reached the coordinator")
				}
			}
		})
	}
}

// clientBinary is a copy of the test binary that other users may run.
func clientBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}
