package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
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
	rec := &recorder{FSM: fsm.New()}
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
