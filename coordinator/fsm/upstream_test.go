package fsm

import (
	"strings"
	"testing"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

const upstreamAddr = "10.0.0.5:8124"

func importedSet(expires int64, names ...string) *pb.Command {
	cmd := workerSet(upstreamAddr, UpstreamDispatcher, expires, names...)
	cmd.GetWorkerSet().Upstream = upstreamAddr
	cmd.GetWorkerSet().DispatcherPid = 0
	return cmd
}

func upstreamRecord(state string, withdraw int64, err string) *pb.Command {
	return &pb.Command{Who: "coordinator:c1", Cmd: &pb.Command_UpstreamImport{UpstreamImport: &pb.UpstreamImport{
		Address: upstreamAddr, State: state, WithdrawUnixMs: withdraw, Error: err,
	}}}
}

func TestUpstreamImport(t *testing.T) {
	key := WorkerKey(upstreamAddr, UpstreamDispatcher)
	tests := []struct {
		name    string
		cmds    []*pb.Command
		refused string // of the last command; "" when every command applies
		lease   int64  // the imported set's lease after the commands; 0: no set
		audited int    // entries the commands added to the audit log
	}{
		{"an imported set is stored with its source",
			[]*pb.Command{importedSet(1000, "w1")}, "", 1000, 0},
		{"a live record moves the lease, both ways",
			[]*pb.Command{importedSet(5000, "w1"), upstreamRecord(pb.UpstreamLive, 9000, ""), upstreamRecord(pb.UpstreamLive, 7000, "")}, "", 7000, 1},
		{"renewals are not audited, a change of state is",
			[]*pb.Command{importedSet(5000, "w1"), upstreamRecord(pb.UpstreamLive, 6000, ""), upstreamRecord(pb.UpstreamLive, 7000, ""), upstreamRecord(pb.UpstreamStale, 8000, "stream lost: EOF")}, "", 8000, 2},
		{"withdrawn takes the set away",
			[]*pb.Command{importedSet(5000, "w1"), upstreamRecord(pb.UpstreamStale, 8000, "EOF"), upstreamRecord(pb.UpstreamWithdrawn, 8000, "EOF")}, "", 0, 2},
		{"a registration cannot replace an imported set",
			[]*pb.Command{importedSet(5000, "w1"), workerSet(upstreamAddr, UpstreamDispatcher, 9000, "w2")}, "imported from the configuration server at " + upstreamAddr, 5000, 1},
		{"an import cannot replace a registered set",
			[]*pb.Command{workerSet(upstreamAddr, UpstreamDispatcher, 9000, "w2"), importedSet(5000, "w1")}, "registered by a dispatcher", 9000, 1},
		{"an imported worker's name is unique in the cluster",
			[]*pb.Command{workerSet("q1", "db_query_server", 9000, "w1"), importedSet(5000, "w1")}, `worker "w1" is already registered by db_query_server on q1`, 0, 1},
		{"unknown state refused",
			[]*pb.Command{upstreamRecord("dead", 1, "")}, `state "dead"`, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &applier{t: t, f: New()}
			var res any
			for _, cmd := range tt.cmds {
				res = a.apply(cmd)
			}
			err, _ := res.(error)
			if (err != nil) != (tt.refused != "") || (err != nil && !strings.Contains(err.Error(), tt.refused)) {
				t.Fatalf("last command: %v, want refusal %q", res, tt.refused)
			}
			ws := a.f.WorkerSet(upstreamAddr, UpstreamDispatcher)
			switch {
			case tt.lease == 0 && ws != nil:
				t.Fatalf("set %s still there: %v", key, ws)
			case tt.lease != 0 && (ws == nil || ws.LeaseExpiresUnixMs != tt.lease):
				t.Fatalf("set %s: %v, want lease %d", key, ws, tt.lease)
			}
			if n := len(a.f.Audit(0)); n != tt.audited {
				t.Errorf("audit: %d entries %v, want %d", n, a.f.Audit(0), tt.audited)
			}
		})
	}
}

// A diff keeps the set's source, and the index still finds its workers.
func TestUpstreamDiffKeepsSource(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(importedSet(5000, "w1", "w2"))
	cur := a.f.WorkerSet(upstreamAddr, UpstreamDispatcher)
	res := a.apply(&pb.Command{Cmd: &pb.Command_WorkerDiff{WorkerDiff: &pb.WorkerDiff{
		Node: upstreamAddr, Dispatcher: UpstreamDispatcher, BaseRevision: cur.Revision, Upstream: upstreamAddr,
		Remove: []string{"w1"}, Upsert: []*agentpb.Worker{{Name: "w3", EnvoyPrefix: "/worker/w3", Port: 1}}, LeaseExpiresUnixMs: 6000,
	}}})
	if err, ok := res.(error); ok {
		t.Fatal(err)
	}
	ws := a.f.WorkerSet(upstreamAddr, UpstreamDispatcher)
	if ws.Upstream != upstreamAddr || len(ws.Workers) != 2 || ws.Workers[1].Name != "w3" {
		t.Fatalf("after the diff: %v", ws)
	}
	if err := a.f.WorkerConflict("q1", "db_query_server", &agentpb.Worker{Name: "x", EnvoyPrefix: "/worker/w3"}); err == nil || !strings.Contains(err.Error(), "configuration_server") {
		t.Fatalf("conflict with an imported prefix: %v", err)
	}
	// A diff without the source (a registration) is refused.
	res = a.apply(&pb.Command{Cmd: &pb.Command_WorkerDiff{WorkerDiff: &pb.WorkerDiff{
		Node: upstreamAddr, Dispatcher: UpstreamDispatcher, BaseRevision: ws.Revision, Remove: []string{"w2"},
	}}})
	if err, ok := res.(error); !ok || !strings.Contains(err.Error(), "imported") {
		t.Fatalf("a registration's diff of an imported set: %v", res)
	}
}
