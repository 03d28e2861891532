package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

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

func manyWorkers(node, disp string, n int) *pb.Command {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("w%05d", i)
	}
	return workerSet(node, disp, 1000, names...)
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
		// Squatting: names are scoped to their dispatcher, and a prefix
		// claimed by another set is routed by neither; the set is taken.
		{"a name another dispatcher registered first does not refuse the set",
			[]*pb.Command{workerSet("q1", "db_merge_server", 1000, "w1"), workerSet("q1", "db_query_server", 1000, "w1")},
			[]want{{sets: map[string]int64{"q1/db_merge_server": 1000}}, {sets: map[string]int64{"q1/db_merge_server": 1000, "q1/db_query_server": 1000}}}},
		{"a name another node registered first does not refuse the set",
			[]*pb.Command{workerSet("q2", "db_query_server", 1000, "w1"), workerSet("q1", "db_query_server", 1000, "w1")},
			[]want{{sets: map[string]int64{"q2/db_query_server": 1000}}, {sets: map[string]int64{"q1/db_query_server": 1000, "q2/db_query_server": 1000}}}},
		{"a node's dispatchers together stay under the node's cap",
			[]*pb.Command{manyWorkers("q1", "a", agentpb.MaxWorkersPerSet), manyWorkers("q1", "b", agentpb.MaxWorkersPerNode-agentpb.MaxWorkersPerSet), manyWorkers("q1", "c", 1), manyWorkers("q2", "c", 1)},
			[]want{{sets: map[string]int64{"q1/a": 1000}}, {sets: map[string]int64{"q1/a": 1000, "q1/b": 1000}},
				{refused: "1 workers for node q1: its other dispatchers have 40000, and a node may route at most 40000", sets: map[string]int64{"q1/a": 1000, "q1/b": 1000}},
				{sets: map[string]int64{"q1/a": 1000, "q1/b": 1000, "q2/c": 1000}}}},
		{"a set replaced within the node's cap",
			[]*pb.Command{manyWorkers("q1", "a", agentpb.MaxWorkersPerSet), manyWorkers("q1", "b", agentpb.MaxWorkersPerNode-agentpb.MaxWorkersPerSet), manyWorkers("q1", "b", 10)},
			[]want{{sets: map[string]int64{"q1/a": 1000}}, {sets: map[string]int64{"q1/a": 1000, "q1/b": 1000}}, {sets: map[string]int64{"q1/a": 1000, "q1/b": 1000}}}},
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
	// The restored state takes new sets (its map is not nil), and knows
	// the prefixes the restored ones claim (the index came back).
	b := &applier{t: t, f: g, index: 10}
	if err, ok := b.apply(workerSet("q2", "db_query_server", 1000, "w1", "w3")).(error); ok {
		t.Fatal(err)
	}
	shared := g.SharedPrefixes("q2", "db_query_server", g.WorkerSet("q2", "db_query_server").Workers)
	if len(shared) != 1 || len(shared["/worker/w1"]) != 1 || shared["/worker/w1"][0] != "db_query_server on q1" {
		t.Fatalf("shared prefixes after a restore: %v", shared)
	}
}

func workers(names ...string) []*agentpb.Worker {
	var out []*agentpb.Worker
	for i, n := range names {
		out = append(out, &agentpb.Worker{Name: n, EnvoyPrefix: "/worker/" + n, Port: int32(30000 + i)})
	}
	return out
}

func diff(node, disp string, base uint64, upsert []*agentpb.Worker, remove ...string) *pb.Command {
	return &pb.Command{AtUnixMs: 700, Cmd: &pb.Command_WorkerDiff{WorkerDiff: &pb.WorkerDiff{
		Node: node, Dispatcher: disp, BaseRevision: base, Upsert: upsert, Remove: remove, LeaseExpiresUnixMs: 9000, DispatcherPid: 43,
	}}}
}

// setSummary is a set's workers as "name:port" in order, and its revision.
func setSummary(ws *pb.WorkerSet) (string, uint64) {
	if ws == nil {
		return "gone", 0
	}
	var parts []string
	for _, w := range ws.Workers {
		parts = append(parts, fmt.Sprintf("%s:%d", w.Name, w.Port))
	}
	return strings.Join(parts, ","), ws.Revision
}

func TestWorkerDiffs(t *testing.T) {
	changed := &agentpb.Worker{Name: "b", EnvoyPrefix: "/worker/b", Port: 1}
	tests := []struct {
		name     string
		cmds     []*pb.Command
		refused  string // the last command's refusal, "" when applied
		want     string // q1/d's workers after the last command
		revision uint64
	}{
		{"add, change and remove", []*pb.Command{workerSet("q1", "d", 1, "a", "b", "c"), diff("q1", "d", 1, append(workers("0new"), changed), "c")},
			"", "0new:30000,a:30000,b:1", 2},
		{"a renewal keeps the revision", []*pb.Command{workerSet("q1", "d", 1, "a"), lease("renew", "q1", "d", 5), diff("q1", "d", 1, nil, "a")},
			"", "gone", 0},
		{"made from an older revision", []*pb.Command{workerSet("q1", "d", 1, "a"), workerSet("q1", "d", 1, "a", "b"), diff("q1", "d", 1, workers("c"))},
			"no longer at revision 1", "a:30000,b:30001", 2},
		{"of a set that is gone", []*pb.Command{diff("q1", "d", 0, workers("a"))},
			"no longer at revision 0", "gone", 0},
		{"a name another set routes", []*pb.Command{workerSet("q2", "d", 1, "x"), workerSet("q1", "d", 1, "a"), diff("q1", "d", 1, workers("x"))},
			"", "a:30000,x:30000", 2},
		{"a prefix another set routes", []*pb.Command{workerSet("q2", "d", 1, "x"), workerSet("q1", "d", 1, "a"),
			diff("q1", "d", 1, []*agentpb.Worker{{Name: "y", EnvoyPrefix: "/worker/x", Port: 2}})},
			"", "a:30000,y:2", 2},
		{"a name its old set let go", []*pb.Command{workerSet("q2", "d", 1, "x", "z"), workerSet("q2", "d", 1, "z"), workerSet("q1", "d", 1, "a"), diff("q1", "d", 1, workers("x"))},
			"", "a:30000,x:30000", 2},
		{"a name of an expired set", []*pb.Command{workerSet("q2", "d", 1, "x"), lease("expire", "q2", "d", 1), workerSet("q1", "d", 1, "x")},
			"", "x:30000", 1},
		{"moving a worker between its own set's entries", []*pb.Command{workerSet("q1", "d", 1, "a", "b"), diff("q1", "d", 1, []*agentpb.Worker{{Name: "c", EnvoyPrefix: "/worker/a", Port: 3}}, "a")},
			"", "b:30001,c:3", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := applyAll(t, tt.cmds, tt.refused)
			if stale := strings.Contains(tt.refused, "no longer at revision"); stale != errors.Is(err, ErrStaleDiff) {
				t.Fatalf("%v: a stale diff's refusal must be ErrStaleDiff (the leader sends the whole set)", err)
			}
			got, rev := setSummary(a.f.WorkerSet("q1", "d"))
			if got != tt.want || rev != tt.revision {
				t.Fatalf("set %s revision %d, want %s revision %d", got, rev, tt.want, tt.revision)
			}
		})
	}
}

// A diff applied to a stored set gives the set it was made from, whatever
// the two sets hold.
func TestDiffWorkersRebuildsTheNewSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randomSet := func() []*agentpb.Worker {
		var out []*agentpb.Worker
		for i := range 30 {
			if rng.IntN(2) == 0 {
				n := fmt.Sprintf("w%02d", i)
				out = append(out, &agentpb.Worker{Name: n, EnvoyPrefix: "/worker/" + n, Port: int32(1 + rng.IntN(3)), Kind: []string{"a", "b"}[rng.IntN(2)]})
			}
		}
		return out
	}
	for i := range 200 {
		old, next := randomSet(), randomSet()
		a := &applier{t: t, f: New()}
		a.apply(&pb.Command{Cmd: &pb.Command_WorkerSet{WorkerSet: &pb.WorkerSet{Node: "q", Dispatcher: "d", Workers: old}}})
		upsert, remove := DiffWorkers(old, next)
		if len(old) == 0 {
			continue // nothing to diff from: the whole set is sent
		}
		if res := a.apply(diff("q", "d", 1, upsert, remove...)); res != nil {
			t.Fatalf("case %d: %v", i, res)
		}
		got := a.f.WorkerSet("q", "d")
		g, _ := setSummary(got)
		if w, _ := setSummary(&pb.WorkerSet{Workers: next}); len(next) > 0 && g != w || len(next) == 0 && got != nil {
			t.Fatalf("case %d: diff gave %s, want %s", i, g, w)
		}
		for j := range next {
			if !proto.Equal(got.Workers[j], next[j]) {
				t.Fatalf("case %d: worker %d is %v, want %v", i, j, got.Workers[j], next[j])
			}
		}
	}
}
