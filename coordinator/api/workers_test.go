package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/raftnode"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is the FSM with a record of the worker commands raft applied.
// meddle, if set, runs before a worker diff is applied: a write that
// reached the log first.
type recorder struct {
	*fsm.FSM
	mu     sync.Mutex
	kinds  []string
	meddle func(f *fsm.FSM)
}

func (r *recorder) Apply(l *raft.Log) any {
	cmd := &pb.Command{}
	if proto.Unmarshal(l.Data, cmd) == nil {
		r.mu.Lock()
		switch c := cmd.Cmd.(type) {
		case *pb.Command_WorkerSet:
			r.kinds = append(r.kinds, fmt.Sprintf("set(%d)", len(c.WorkerSet.Workers)))
		case *pb.Command_WorkerDiff:
			r.kinds = append(r.kinds, fmt.Sprintf("diff(+%d -%d)", len(c.WorkerDiff.Upsert), len(c.WorkerDiff.Remove)))
			if r.meddle != nil {
				r.meddle(r.FSM)
				r.meddle = nil
			}
		case *pb.Command_WorkerRenew:
			r.kinds = append(r.kinds, "renew")
		}
		r.mu.Unlock()
	}
	return r.FSM.Apply(l)
}

func (r *recorder) commands() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.kinds)
}

// singleReplica is a one-replica raft cluster, its leader elected.
func singleReplica(t *testing.T, state raftnode.FSM) *raftnode.Node {
	t.Helper()
	dir := t.TempDir()
	ca, key, err := tlsutil.CreateCA(dir, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, ckey, err := tlsutil.CreateCert(ca, key, dir, tlsutil.CertRequest{Role: tlsutil.RoleCoordinator, Name: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	n, err := raftnode.Open(raftnode.Config{
		ID: "c1", DataDir: filepath.Join(dir, "c1"), Bind: addr, TLS: tlsutil.Files{CA: ca, Cert: cert, Key: ckey},
		Bootstrap: []raftnode.Peer{{ID: "c1", Addr: addr}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown() })
	for deadline := time.Now().Add(10 * time.Second); !n.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no leader elected")
		}
	}
	return n
}

func registration(names ...string) *agentpb.RegisterWorkersRequest {
	req := &agentpb.RegisterWorkersRequest{Node: "q1", Dispatcher: "db_query_server", DispatcherPid: 7}
	for _, n := range names {
		req.Workers = append(req.Workers, &agentpb.Worker{Name: n, Port: 24000, Host: "10.0.0.9"})
	}
	return req
}

// withNode is f knowing node name at host, as the inventory records nodes.
func withNode(t *testing.T, f *fsm.FSM, name, host string) *fsm.FSM {
	t.Helper()
	data, err := fsm.Encode(&pb.Command{Cmd: &pb.Command_NodeUpsert{NodeUpsert: &pb.Node{Name: name, Host: host, ApiAddr: net.JoinHostPort(host, "8130"), State: "alive"}}})
	if err != nil {
		t.Fatal(err)
	}
	if res := f.Apply(&raft.Log{Type: raft.LogCommand, Data: data}); res != nil {
		if err, ok := res.(error); ok {
			t.Fatal(err)
		}
	}
	return f
}

func storedNames(f *fsm.FSM) []string {
	var out []string
	if ws := f.WorkerSet("q1", "db_query_server"); ws != nil {
		for _, w := range ws.Workers {
			out = append(out, w.Name)
		}
	}
	return out
}

// The leader stores a new set whole, a changed one as a diff and an
// unchanged one as a lease renewal; a diff made from a revision that
// changed meanwhile is refused and the whole set sent instead.
func TestRegisterWorkersSendsDiffs(t *testing.T) {
	rec := &recorder{FSM: withNode(t, fsm.New(), "q1", "10.0.0.9")}
	s := &Server{FSM: rec.FSM, Raft: singleReplica(t, rec)}
	ctx := context.Background()
	steps := []struct {
		req     *agentpb.RegisterWorkersRequest
		meddle  func(f *fsm.FSM)
		command string
		changed bool
	}{
		{registration("a", "b", "c"), nil, "set(3)", true},
		{registration("a", "b", "c"), nil, "renew", false},
		{registration("a", "c", "d", "e"), nil, "diff(+2 -1)", true},
		{registration("e"), func(f *fsm.FSM) {
			// Another leader's registration, committed before this diff.
			data, _ := fsm.Encode(&pb.Command{Cmd: &pb.Command_WorkerSet{WorkerSet: &pb.WorkerSet{Node: "q1", Dispatcher: "db_query_server", Workers: registration("x").Workers}}})
			f.Apply(&raft.Log{Type: raft.LogCommand, Data: data})
		}, "diff(+0 -3) set(1)", true},
		{registration(), nil, "set(0)", true},
	}
	for i, st := range steps {
		before := len(rec.commands())
		rec.mu.Lock()
		rec.meddle = st.meddle
		rec.mu.Unlock()
		resp, err := s.RegisterWorkers(ctx, proto.Clone(st.req).(*agentpb.RegisterWorkersRequest))
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := fmt.Sprint(rec.commands()[before:]); got != "["+st.command+"]" {
			t.Errorf("step %d: raft got %s, want [%s]", i, got, st.command)
		}
		if resp.Changed != st.changed {
			t.Errorf("step %d: changed %v, want %v", i, resp.Changed, st.changed)
		}
		var want []string
		for _, w := range st.req.Workers {
			want = append(want, w.Name)
		}
		if got := storedNames(rec.FSM); !slices.Equal(got, want) {
			t.Errorf("step %d: stored %v, want %v", i, got, want)
		}
	}
}

// Envoy is sent only to a worker's own node: never to its own host's
// loopback, a link-local or unspecified address, or another node.
func TestRegisterWorkersPolicy(t *testing.T) {
	f := withNode(t, withNode(t, withNode(t, fsm.New(), "q1", "10.0.0.9"), "local", "127.0.0.1"), "q2", "10.0.0.10")
	rn := singleReplica(t, f)
	strict := &Server{FSM: f, Raft: rn}
	devel := &Server{FSM: f, Raft: rn, WorkerPolicy: WorkerPolicy{AllowLoopback: true}}
	at := func(node, host string) *agentpb.RegisterWorkersRequest {
		return &agentpb.RegisterWorkersRequest{Node: node, Dispatcher: "db_query_server", Workers: []*agentpb.Worker{{Name: "w1", Port: 24000, Host: host}}}
	}
	tests := []struct {
		name string
		s    *Server
		req  *agentpb.RegisterWorkersRequest
		code codes.Code
		want string // substring of the refusal; "" = taken
	}{
		{"the node's address", strict, at("q1", "10.0.0.9"), codes.OK, ""},
		{"the node's address by default", strict, at("q1", ""), codes.OK, ""},
		{"IPv4-mapped node address", strict, at("q1", "::ffff:10.0.0.9"), codes.OK, ""},
		{"loopback", strict, at("q1", "127.0.0.1"), codes.InvalidArgument, "workers[0].host: 127.0.0.1 is loopback"},
		{"IPv6 loopback", strict, at("q1", "::1"), codes.InvalidArgument, "is loopback"},
		{"link-local", strict, at("q1", "169.254.169.254"), codes.InvalidArgument, "workers[0].host: 169.254.169.254 is link-local"},
		{"IPv6 link-local", strict, at("q1", "fe80::1"), codes.InvalidArgument, "is link-local"},
		{"unspecified", strict, at("q1", "0.0.0.0"), codes.InvalidArgument, "is unspecified"},
		{"multicast", strict, at("q1", "224.0.0.1"), codes.InvalidArgument, "multicast"},
		{"another node's address", strict, at("q1", "10.0.0.10"), codes.InvalidArgument, "10.0.0.10 is not an address of node q1"},
		{"a node on loopback by default", strict, at("local", ""), codes.InvalidArgument, "local's address 127.0.0.1, which is loopback"},
		{"loopback allowed for a one-host cluster", devel, at("local", "127.0.0.1"), codes.OK, ""},
		{"link-local even then", devel, at("local", "169.254.1.1"), codes.InvalidArgument, "link-local"},
		{"another node's loopback is not this node's", devel, at("q1", "127.0.0.1"), codes.InvalidArgument, "not an address of node q1"},
		{"a node the coordinators do not know yet", strict, at("q9", "10.0.0.99"), codes.Unavailable, "not in the coordinators' inventory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.s.RegisterWorkers(context.Background(), tt.req)
			if status.Code(err) != tt.code || (tt.want != "" && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("got %v, want %v %q", err, tt.code, tt.want)
			}
		})
	}
}

// A dispatcher cannot squat another's workers: a set naming workers, or
// claiming prefixes, that another dispatcher registered first is taken;
// the name is routed for each (scoped to its dispatcher), a shared prefix
// for neither, and the response says so.
func TestRegisterWorkersNoSquatting(t *testing.T) {
	f := withNode(t, fsm.New(), "q1", "10.0.0.9")
	s := &Server{FSM: f, Raft: singleReplica(t, f)}
	ctx := context.Background()
	squat := &agentpb.RegisterWorkersRequest{Node: "q1", Dispatcher: "db_merge_server", Workers: []*agentpb.Worker{
		{Name: "w1", Port: 25000}, {Name: "w2", Port: 25001, EnvoyPrefix: "/worker/w2:db_query_server:q1"}}}
	if resp, err := s.RegisterWorkers(ctx, squat); err != nil || len(resp.Warnings) != 0 {
		t.Fatalf("squatter: %v %v", resp, err)
	}
	resp, err := s.RegisterWorkers(ctx, &agentpb.RegisterWorkersRequest{Node: "q1", Dispatcher: "db_query_server", Workers: []*agentpb.Worker{{Name: "w1", Port: 24000}, {Name: "w2", Port: 24001}}})
	if err != nil {
		t.Fatalf("the real dispatcher's set refused: %v", err)
	}
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], `envoy prefix "/worker/w2:db_query_server:q1" is claimed by db_merge_server on q1 too`) {
		t.Fatalf("warnings %q", resp.Warnings)
	}
	if got := storedNames(f); !slices.Equal(got, []string{"w1", "w2"}) {
		t.Fatalf("stored %v", got)
	}
	if ws := f.WorkerSet("q1", "db_query_server"); ws.Workers[0].EnvoyPrefix != "/worker/w1:db_query_server:q1" {
		t.Fatalf("default prefix %q: not scoped to the dispatcher", ws.Workers[0].EnvoyPrefix)
	}
}
