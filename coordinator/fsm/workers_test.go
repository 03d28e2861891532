package fsm

import (
	"bytes"
	"io"
	"strings"
	"testing"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func workerSet(node, disp string, expires int64, names ...string) *pb.Command {
	ws := &pb.WorkerSet{Node: node, Dispatcher: disp, LeaseExpiresUnixMs: expires, DispatcherPid: 42}
	for i, n := range names {
		ws.Workers = append(ws.Workers, &agentpb.Worker{Name: n, EnvoyPrefix: "/worker/" + n, Port: int32(30000 + i)})
	}
	return &pb.Command{AtUnixMs: 500, Cmd: &pb.Command_WorkerSet{WorkerSet: ws}}
}

func lease(kind, node, disp string, expires int64) *pb.Command {
	l := &pb.WorkerLease{Node: node, Dispatcher: disp, LeaseExpiresUnixMs: expires}
	if kind == "renew" {
		return &pb.Command{Cmd: &pb.Command_WorkerRenew{WorkerRenew: l}}
	}
	return &pb.Command{Cmd: &pb.Command_WorkerExpire{WorkerExpire: l}}
}

func TestWorkerSets(t *testing.T) {
	type want struct {
		refused string // a substring of the refusal, "" when applied
		sets    map[string]int64
	}
	tests := []struct {
		name  string
		cmds  []*pb.Command
		wants []want // one per command
	}{
		{"set then replace sorts by name",
			[]*pb.Command{workerSet("q1", "db_query_server", 1000, "w2", "w1"), workerSet("q1", "db_query_server", 2000, "w3")},
			[]want{{sets: map[string]int64{"q1/db_query_server": 1000}}, {sets: map[string]int64{"q1/db_query_server": 2000}}}},
		{"a name is unique in the cluster",
			[]*pb.Command{workerSet("q1", "db_query_server", 1000, "w1"), workerSet("q2", "db_query_server", 1000, "w1")},
			[]want{{sets: map[string]int64{"q1/db_query_server": 1000}}, {refused: `worker "w1" is already registered by db_query_server on q1`, sets: map[string]int64{"q1/db_query_server": 1000}}}},
		{"an empty set removes",
			[]*pb.Command{workerSet("q1", "db_query_server", 1000, "w1"), workerSet("q1", "db_query_server", 1000)},
			[]want{{sets: map[string]int64{"q1/db_query_server": 1000}}, {sets: map[string]int64{}}}},
		{"renew extends, never shortens",
			[]*pb.Command{workerSet("q1", "d", 1000, "w1"), lease("renew", "q1", "d", 5000), lease("renew", "q1", "d", 3000)},
			[]want{{sets: map[string]int64{"q1/d": 1000}}, {sets: map[string]int64{"q1/d": 5000}}, {sets: map[string]int64{"q1/d": 5000}}}},
		{"renew of a set that is gone is refused",
			[]*pb.Command{lease("renew", "q1", "d", 5000)},
			[]want{{refused: "send the whole set", sets: map[string]int64{}}}},
		{"expire after a renewal keeps the set",
			[]*pb.Command{workerSet("q1", "d", 1000, "w1"), lease("renew", "q1", "d", 5000), lease("expire", "q1", "d", 1000), lease("expire", "q1", "d", 5000)},
			[]want{{sets: map[string]int64{"q1/d": 1000}}, {sets: map[string]int64{"q1/d": 5000}}, {sets: map[string]int64{"q1/d": 5000}}, {sets: map[string]int64{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &applier{t: t, f: New()}
			for i, cmd := range tt.cmds {
				res := a.apply(cmd)
				err, _ := res.(error)
				w := tt.wants[i]
				if (err != nil) != (w.refused != "") || (err != nil && !strings.Contains(err.Error(), w.refused)) {
					t.Fatalf("command %d: got %v, want refusal %q", i, res, w.refused)
				}
				got := map[string]int64{}
				for _, l := range a.f.WorkerLeases() {
					got[WorkerKey(l.Node, l.Dispatcher)] = l.LeaseExpiresUnixMs
				}
				if len(got) != len(w.sets) {
					t.Fatalf("command %d: sets %v, want %v", i, got, w.sets)
				}
				for k, v := range w.sets {
					if got[k] != v {
						t.Fatalf("command %d: sets %v, want %v", i, got, w.sets)
					}
				}
			}
		})
	}
}

func TestWorkersSurviveSnapshotAndAreNotAudited(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(workerSet("q1", "db_query_server", 1000, "w2", "w1"))
	if n := len(a.f.Audit(0)); n != 0 {
		t.Errorf("worker registration audited: %d entries", n)
	}
	snap, err := a.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snap.Persist(&sink{Buffer: &buf}); err != nil {
		t.Fatal(err)
	}
	g := New()
	if err := g.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	ws := g.WorkerSet("q1", "db_query_server")
	if ws == nil || len(ws.Workers) != 2 || ws.Workers[0].Name != "w1" || ws.DispatcherPid != 42 || ws.UpdatedUnixMs != 500 {
		t.Fatalf("restored set: %v", ws)
	}
	// The restored state takes new sets (its map is not nil).
	b := &applier{t: t, f: g, index: 10}
	if err, ok := b.apply(workerSet("q2", "db_query_server", 1000, "w3")).(error); ok {
		t.Fatal(err)
	}
}
